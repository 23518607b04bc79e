//! A byte cursor over one line and the date/time pieces the text formats share: fixed-width
//! numbers, month names, fractions, zones, and the year of a date that names none.

use chrono::{Datelike, NaiveDate};

/// A position in a line; every method either consumes what it reads or leaves the
/// position where it was.
#[derive(Clone, Copy)]
pub(super) struct Scan<'a> {
    pub s: &'a str,
    pub i: usize,
}

impl<'a> Scan<'a> {
    pub fn new(s: &'a str) -> Self {
        Self { s, i: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    pub fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    pub fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    pub fn rest(&self) -> &'a str {
        self.s.get(self.i..).unwrap_or("")
    }

    /// Consumes `b` if it is next.
    pub fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `lit` if it is next.
    pub fn eat_str(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// Consumes spaces; returns how many.
    pub fn spaces(&mut self) -> usize {
        let start = self.i;
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
        self.i - start
    }

    /// Exactly `n` ASCII digits as a number.
    pub fn digits(&mut self, n: usize) -> Option<u32> {
        let b = self.bytes().get(self.i..self.i + n)?;
        let mut v = 0u32;
        for c in b {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        self.i += n;
        Some(v)
    }

    /// One to `max` ASCII digits as a number.
    pub fn number(&mut self, max: usize) -> Option<u64> {
        let start = self.i;
        let mut v = 0u64;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if self.i - start == max {
                self.i = start;
                return None;
            }
            v = v * 10 + u64::from(c - b'0');
            self.i += 1;
        }
        (self.i > start).then_some(v)
    }

    /// Up to the next space (or the end); never empty.
    pub fn token(&mut self) -> Option<&'a str> {
        self.until(b' ')
    }

    /// Up to the next `stop` byte (not consumed) or the end; never empty.
    pub fn until(&mut self, stop: u8) -> Option<&'a str> {
        let rest = self.rest();
        let n = rest.bytes().position(|c| c == stop).unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        self.i += n;
        Some(&rest[..n])
    }

    /// After an opening `"`: the raw text up to the closing `"` (consumed; a `\x` escape
    /// never closes), and whether it holds a backslash to unescape. `None` if unclosed.
    pub fn quoted(&mut self) -> Option<(&'a str, bool)> {
        let rest = self.rest();
        let bytes = rest.as_bytes();
        let mut i = 0;
        let mut escaped = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                b'"' => {
                    self.i += i + 1;
                    return Some((&rest[..i], escaped));
                }
                _ => i += 1,
            }
        }
        None
    }

    /// A digit run `d d` that is 1 or 2 wide, the `Oct  3` / `Oct 13` day.
    pub fn day(&mut self) -> Option<u32> {
        self.number(2).map(|d| d as u32)
    }

    /// Three-letter English month name.
    pub fn month_name(&mut self) -> Option<u32> {
        let b = self.bytes().get(self.i..self.i + 3)?;
        let m = month_number(b)?;
        self.i += 3;
        Some(m)
    }

    /// `HH:MM:SS`.
    pub fn hms(&mut self) -> Option<(u32, u32, u32)> {
        let save = *self;
        let r = (|| {
            let h = self.digits(2)?;
            self.eat(b':').then_some(())?;
            let m = self.digits(2)?;
            self.eat(b':').then_some(())?;
            let s = self.digits(2)?;
            (h < 24 && m < 60 && s < 61).then_some((h, m, s))
        })();
        if r.is_none() {
            *self = save;
        }
        r
    }

    /// A fraction of a second after `.` or `,` (the separator included): microseconds.
    pub fn fraction(&mut self) -> u32 {
        let save = *self;
        if !(self.eat(b'.') || self.eat(b',')) {
            return 0;
        }
        let mut us = 0u32;
        let mut n = 0;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if n < 6 {
                us = us * 10 + u32::from(c - b'0');
            }
            n += 1;
            self.i += 1;
        }
        if n == 0 {
            *self = save;
            return 0;
        }
        for _ in n..6 {
            us *= 10;
        }
        us
    }

    /// `Z`, `±hh:mm` or `±hhmm`: the offset east of UTC in seconds.
    pub fn zone(&mut self) -> Option<i64> {
        if self.eat(b'Z') || self.eat(b'z') {
            return Some(0);
        }
        let save = *self;
        let sign = match self.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return None,
        };
        self.i += 1;
        let r = (|| {
            let h = self.digits(2)?;
            self.eat(b':');
            let m = self.digits(2)?;
            Some(sign * i64::from(h * 3600 + m * 60))
        })();
        if r.is_none() {
            *self = save;
        }
        r
    }

    /// `YYYY-MM-DD[T ]HH:MM:SS[.frac][zone]`: microseconds since the epoch, UTC when no
    /// zone is given, and whether one was.
    pub fn iso_datetime(&mut self) -> Option<(i64, bool)> {
        let save = *self;
        let r = (|| {
            let (y, mo, d) = self.ymd_dashed()?;
            if !(self.eat(b'T') || self.eat(b' ')) {
                return None;
            }
            let (h, mi, s) = self.hms()?;
            let us = self.fraction();
            let off = self.zone();
            let t = civil_us(y as i32, mo, d, h, mi, s, us)? - off.unwrap_or(0) * 1_000_000;
            Some((t, off.is_some()))
        })();
        if r.is_none() {
            *self = save;
        }
        r
    }

    /// `YYYY-MM-DD`.
    pub fn ymd_dashed(&mut self) -> Option<(u32, u32, u32)> {
        let save = *self;
        let r = (|| {
            let y = self.digits(4)?;
            self.eat(b'-').then_some(())?;
            let m = self.digits(2)?;
            self.eat(b'-').then_some(())?;
            let d = self.digits(2)?;
            Some((y, m, d))
        })();
        if r.is_none() {
            *self = save;
        }
        r
    }
}

/// `Jan` … `Dec` in any case.
pub(super) fn month_number(b: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let lower = [
        b.first()?.to_ascii_lowercase(),
        b.get(1)?.to_ascii_lowercase(),
        b.get(2)?.to_ascii_lowercase(),
    ];
    MONTHS
        .iter()
        .position(|m| **m == lower)
        .map(|i| i as u32 + 1)
}

/// Microseconds since the epoch of a civil UTC time; `None` for an impossible date.
pub(super) fn civil_us(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> Option<i64> {
    // A leap second (:60) is read as the last microsecond of :59, not an error.
    let (s, us) = if s == 60 { (59, 999_999) } else { (s, us) };
    Some(
        NaiveDate::from_ymd_opt(y, mo, d)?
            .and_hms_micro_opt(h, mi, s, us)?
            .and_utc()
            .timestamp_micros(),
    )
}

/// How far past the ingest time a yearless date may fall and still be read as this year.
const FUTURE_SLACK_US: i64 = 24 * 3600 * 1_000_000;

/// The time of a yearless date (RFC 3164, glog, logcat): of the ingest year and the years
/// either side, the latest that is at most a day after the ingest time, so December lines
/// read in January fall in the year before and a zone-ahead clock still counts as now.
pub(super) fn infer_year(
    mo: u32,
    d: u32,
    (h, mi, s): (u32, u32, u32),
    us: u32,
    ingest_us: i64,
) -> Option<i64> {
    let year = chrono::DateTime::from_timestamp_micros(ingest_us)?.year();
    [year + 1, year, year - 1, year - 2]
        .into_iter()
        .filter_map(|y| civil_us(y, mo, d, h, mi, s, us))
        .find(|t| *t <= ingest_us + FUTURE_SLACK_US)
}

/// A two-digit year: 00–68 is 20xx, 69–99 is 19xx (as POSIX `%y`).
pub(super) fn century(yy: u32) -> i32 {
    if yy < 69 {
        2000 + yy as i32
    } else {
        1900 + yy as i32
    }
}
