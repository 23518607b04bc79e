//! PostgreSQL's datetime template patterns (`YYYY-MM-DD HH24:MI:SS.US`), compiled once and
//! used both ways: [`Pattern::format`] for `to_char`, [`Pattern::read`] for `to_timestamp`.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use super::FormatError;
use super::zone::ZoneAt;

/// How a name is capitalised: `MONTH`, `Month` or `month`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Upper,
    Capital,
    Lower,
}

/// One template pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Year4,
    Year2,
    Month,
    Day,
    DayOfYear,
    Hour24,
    Hour12,
    Minute,
    Second,
    SecondsOfDay,
    Milli,
    Micro,
    /// `AM`/`PM` (`dots`: `A.M.`/`P.M.`).
    Meridiem {
        case: Case,
        dots: bool,
    },
    /// `Month` (`short`: `Mon`).
    MonthName {
        case: Case,
        short: bool,
    },
    /// `Day` (`short`: `Dy`).
    DayName {
        case: Case,
        short: bool,
    },
    /// `D`: 1 for Sunday … 7 for Saturday.
    DayOfWeek,
    IsoWeek,
    Quarter,
    /// `TZ` (`upper`) or `tz`.
    TimeZone {
        upper: bool,
    },
    /// `OF`: the offset from UTC (`+02`, `-03:30`).
    Offset,
    /// `TZH`: the offset's sign and hours.
    OffsetHours,
    /// `TZM`: the offset's minutes.
    OffsetMinutes,
}

impl Field {
    /// The pattern as written, for error messages.
    fn name(self) -> &'static str {
        match self {
            Field::Year4 => "YYYY",
            Field::Year2 => "YY",
            Field::Month => "MM",
            Field::Day => "DD",
            Field::DayOfYear => "DDD",
            Field::Hour24 => "HH24",
            Field::Hour12 => "HH12",
            Field::Minute => "MI",
            Field::Second => "SS",
            Field::SecondsOfDay => "SSSS",
            Field::Milli => "MS",
            Field::Micro => "US",
            Field::Meridiem { .. } => "AM",
            Field::MonthName { short: false, .. } => "Month",
            Field::MonthName { short: true, .. } => "Mon",
            Field::DayName { short: false, .. } => "Day",
            Field::DayName { short: true, .. } => "Dy",
            Field::DayOfWeek => "D",
            Field::IsoWeek => "IW",
            Field::Quarter => "Q",
            Field::TimeZone { .. } => "TZ",
            Field::Offset => "OF",
            Field::OffsetHours => "TZH",
            Field::OffsetMinutes => "TZM",
        }
    }

    /// The zero-padded width of a numeric field; `None` for names.
    fn width(self) -> Option<usize> {
        Some(match self {
            Field::Year4 => 4,
            Field::Year2
            | Field::Month
            | Field::Day
            | Field::Hour24
            | Field::Hour12
            | Field::Minute
            | Field::Second
            | Field::IsoWeek
            | Field::OffsetMinutes => 2,
            Field::DayOfYear | Field::Milli => 3,
            Field::SecondsOfDay => 5,
            Field::Micro => 6,
            Field::DayOfWeek | Field::Quarter => 1,
            Field::Meridiem { .. }
            | Field::MonthName { .. }
            | Field::DayName { .. }
            | Field::TimeZone { .. }
            | Field::Offset
            | Field::OffsetHours => return None,
        })
    }
}

/// Name patterns, matched case-sensitively (the case of the pattern is the case of the
/// output), longest first.
const NAMED: &[(&str, Field)] = &[
    ("MONTH", month_name(Case::Upper, false)),
    ("Month", month_name(Case::Capital, false)),
    ("month", month_name(Case::Lower, false)),
    ("MON", month_name(Case::Upper, true)),
    ("Mon", month_name(Case::Capital, true)),
    ("mon", month_name(Case::Lower, true)),
    ("DAY", day_name(Case::Upper, false)),
    ("Day", day_name(Case::Capital, false)),
    ("day", day_name(Case::Lower, false)),
    ("DY", day_name(Case::Upper, true)),
    ("Dy", day_name(Case::Capital, true)),
    ("dy", day_name(Case::Lower, true)),
    ("A.M.", meridiem(Case::Upper, true)),
    ("P.M.", meridiem(Case::Upper, true)),
    ("a.m.", meridiem(Case::Lower, true)),
    ("p.m.", meridiem(Case::Lower, true)),
    ("AM", meridiem(Case::Upper, false)),
    ("PM", meridiem(Case::Upper, false)),
    ("am", meridiem(Case::Lower, false)),
    ("pm", meridiem(Case::Lower, false)),
    ("TZH", Field::OffsetHours),
    ("TZM", Field::OffsetMinutes),
    ("OF", Field::Offset),
    ("TZ", Field::TimeZone { upper: true }),
    ("tz", Field::TimeZone { upper: false }),
];

/// Numeric patterns, matched case-insensitively, longest first.
const NUMERIC: &[(&str, Field)] = &[
    ("HH24", Field::Hour24),
    ("HH12", Field::Hour12),
    ("HH", Field::Hour12),
    ("MI", Field::Minute),
    ("SSSS", Field::SecondsOfDay),
    ("SS", Field::Second),
    ("MS", Field::Milli),
    ("US", Field::Micro),
    ("YYYY", Field::Year4),
    ("YY", Field::Year2),
    ("MM", Field::Month),
    ("DDD", Field::DayOfYear),
    ("DD", Field::Day),
    ("D", Field::DayOfWeek),
    ("IW", Field::IsoWeek),
    ("Q", Field::Quarter),
];

const fn month_name(case: Case, short: bool) -> Field {
    Field::MonthName { case, short }
}

const fn day_name(case: Case, short: bool) -> Field {
    Field::DayName { case, short }
}

const fn meridiem(case: Case, dots: bool) -> Field {
    Field::Meridiem { case, dots }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// The patterns that mark a template as PostgreSQL's rather than chrono's `%Y-%m-%d`.
const MARKERS: &[&str] = &[
    "YYYY", "YY", "MM", "DD", "HH", "MI", "SS", "MS", "US", "MON", "DAY", "DY", "DDD", "IW", "AM",
    "PM", "TZ", "OF",
];

/// Whether `template` is a PostgreSQL template: it has no `%` (so it is no chrono format)
/// and names at least one PostgreSQL pattern.
pub fn is_postgres_template(template: &str) -> bool {
    if template.contains('%') {
        return false;
    }
    let upper = template.to_ascii_uppercase();
    MARKERS.iter().any(|m| upper.contains(m))
}

/// A part of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// A pattern; `fill`: the `FM` prefix (no padding).
    Field { field: Field, fill: bool },
    /// Text copied as is (quoted text, punctuation, anything not a pattern).
    Literal(String),
}

/// A compiled PostgreSQL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    items: Vec<Item>,
    text: String,
}

/// The fields `to_timestamp` read, before they are combined into a time.
#[derive(Debug, Default)]
struct Read {
    year: Option<i32>,
    year2: Option<i32>,
    month: Option<u32>,
    day: Option<u32>,
    day_of_year: Option<u32>,
    hour: Option<u32>,
    hour12: Option<u32>,
    pm: Option<bool>,
    minute: Option<u32>,
    second: Option<u32>,
    seconds_of_day: Option<u32>,
    /// Fractional second from `MS` and `US`, in microseconds.
    micros: u32,
    /// Offset east of UTC, in seconds, from `TZ` or `OF`.
    offset: Option<i32>,
    /// `TZH` (with its sign, -1 or 1) and `TZM`.
    offset_hours: Option<(i32, i32)>,
    offset_minutes: Option<i32>,
}

impl Pattern {
    /// Compiles `template`. Every template compiles: what is not a pattern is literal text.
    pub fn new(template: &str) -> Self {
        let mut items = Vec::new();
        let mut rest = template;
        let mut fill = false;
        while !rest.is_empty() {
            if starts_with_ignore_case(rest, "FM") {
                fill = true;
                rest = &rest[2..];
                continue;
            }
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut text = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                text.push(next);
                            }
                        }
                        other => text.push(other),
                    }
                }
                push_literal(&mut items, &text);
                rest = &quoted[end.min(quoted.len())..];
                continue;
            }
            let pattern = NAMED.iter().find(|(t, _)| rest.starts_with(t)).or_else(|| {
                NUMERIC
                    .iter()
                    .find(|(t, _)| starts_with_ignore_case(rest, t))
            });
            if let Some((token, field)) = pattern {
                items.push(Item::Field {
                    field: *field,
                    fill,
                });
                fill = false;
                rest = &rest[token.len()..];
                continue;
            }
            let c = rest.chars().next().unwrap_or_default();
            let len = c.len_utf8();
            push_literal(&mut items, &rest[..len]);
            rest = &rest[len..];
        }
        Self {
            items,
            text: template.to_owned(),
        }
    }

    /// The template as written.
    pub fn template(&self) -> &str {
        &self.text
    }

    /// `to_char`: the local date and time `t` written out as the template says. `zone` is
    /// the zone of a `timestamptz` at that time; for a `timestamp` it is `None`, and `TZ`
    /// writes nothing and `OF` `+00`, as in PostgreSQL.
    pub fn format(&self, t: &NaiveDateTime, zone: Option<&ZoneAt>) -> String {
        let mut out = String::new();
        for item in &self.items {
            match item {
                Item::Literal(text) => out.push_str(text),
                Item::Field { field, fill } => format_field(&mut out, *field, *fill, t, zone),
            }
        }
        out
    }

    /// `to_timestamp`: reads `input` as the template says. The time is in UTC unless the
    /// input carries a `TZ`; the result is `(local date and time, offset east of UTC in
    /// seconds when the input named one)`.
    pub fn read(&self, input: &str) -> Result<(NaiveDateTime, Option<i32>), FormatError> {
        let mut read = Read::default();
        let mut rest = input;
        for item in &self.items {
            match item {
                Item::Literal(text) => {
                    for expected in text.chars() {
                        rest = self.skip_literal(rest, expected, input)?;
                    }
                }
                Item::Field { field, .. } => {
                    rest = self.read_field(*field, rest, &mut read)?;
                }
            }
        }
        self.combine(&read)
    }

    /// Consumes one literal template character. Like PostgreSQL, a separator in the
    /// template matches any one separator in the input, and a space matches any run of
    /// spaces (or none).
    fn skip_literal<'a>(
        &self,
        rest: &'a str,
        expected: char,
        input: &str,
    ) -> Result<&'a str, FormatError> {
        if expected.is_whitespace() {
            return Ok(rest.trim_start());
        }
        match rest.chars().next() {
            None => Ok(rest),
            Some(c) if c == expected || (!c.is_alphanumeric() && !expected.is_alphanumeric()) => {
                Ok(&rest[c.len_utf8()..])
            }
            Some(c) if expected.is_alphanumeric() => Ok(&rest[c.len_utf8()..]),
            Some(_) => Err(self.error(format!(
                "expected \"{expected}\" in \"{input}\" at \"{}\"",
                preview(rest)
            ))),
        }
    }

    fn read_field<'a>(
        &self,
        field: Field,
        rest: &'a str,
        read: &mut Read,
    ) -> Result<&'a str, FormatError> {
        let rest = rest.trim_start();
        match field {
            Field::MonthName { short, .. } => {
                let (n, rest) = self.read_name(rest, &MONTHS, short, field)?;
                read.month = Some(n as u32 + 1);
                Ok(rest)
            }
            Field::DayName { short, .. } => {
                // The day of the week is implied by the date; PostgreSQL ignores it too.
                let (_, rest) = self.read_name(rest, &DAYS, short, field)?;
                Ok(rest)
            }
            Field::Meridiem { dots, .. } => {
                let len = if dots { 4 } else { 2 };
                let word = rest.get(..len).unwrap_or(rest);
                let upper = word.to_ascii_uppercase();
                let pm = match upper.as_str() {
                    "AM" | "A.M." => false,
                    "PM" | "P.M." => true,
                    _ => return Err(self.invalid(field, rest)),
                };
                read.pm = Some(pm);
                Ok(&rest[len..])
            }
            Field::TimeZone { .. } | Field::Offset => {
                let (offset, rest) = self.read_zone(rest)?;
                read.offset = Some(offset);
                Ok(rest)
            }
            Field::OffsetHours => {
                let (sign, body) = match rest.chars().next() {
                    Some('-') => (-1, &rest[1..]),
                    Some('+') => (1, &rest[1..]),
                    _ => (1, rest),
                };
                let len = body.bytes().take(2).take_while(u8::is_ascii_digit).count();
                let hours: i32 = body[..len].parse().map_err(|_| self.invalid(field, rest))?;
                if hours > 15 {
                    return Err(self.invalid(field, rest));
                }
                read.offset_hours = Some((sign, hours));
                Ok(&body[len..])
            }
            Field::IsoWeek => Err(self.error(
                "IW (ISO week) is not supported in to_timestamp; use YYYY-MM-DD or DDD".to_owned(),
            )),
            numeric => {
                let width = numeric.width().unwrap_or(1);
                let (negative, digits_from) = match rest.strip_prefix('-') {
                    Some(r) if numeric == Field::Year4 => (true, r),
                    _ => (false, rest),
                };
                let len = digits_from
                    .bytes()
                    .take(width)
                    .take_while(u8::is_ascii_digit)
                    .count();
                if len == 0 {
                    return Err(self.invalid(field, rest));
                }
                let digits = &digits_from[..len];
                let value: u32 = digits.parse().map_err(|_| self.invalid(field, rest))?;
                let after = &digits_from[len..];
                match numeric {
                    Field::Year4 => {
                        let year = value as i32;
                        read.year = Some(if negative { -year } else { year });
                    }
                    Field::Year2 => read.year2 = Some(value as i32),
                    Field::Month => read.month = Some(value),
                    Field::Day => read.day = Some(value),
                    Field::DayOfYear => read.day_of_year = Some(value),
                    Field::Hour24 => read.hour = Some(value),
                    Field::Hour12 => read.hour12 = Some(value),
                    Field::Minute => read.minute = Some(value),
                    Field::Second => read.second = Some(value),
                    Field::SecondsOfDay => read.seconds_of_day = Some(value),
                    Field::OffsetMinutes if value < 60 => {
                        read.offset_minutes = Some(value as i32);
                    }
                    // A fraction: `SS.MS` with "12.3" is 12 s 300 ms, as in PostgreSQL.
                    Field::Milli => read.micros += value * 10u32.pow((3 - len) as u32) * 1000,
                    Field::Micro => read.micros += value * 10u32.pow((6 - len) as u32),
                    // Implied by the date.
                    Field::DayOfWeek | Field::Quarter => {}
                    _ => return Err(self.invalid(field, rest)),
                }
                Ok(after)
            }
        }
    }

    fn read_name<'a>(
        &self,
        rest: &'a str,
        names: &[&str],
        short: bool,
        field: Field,
    ) -> Result<(usize, &'a str), FormatError> {
        for (i, name) in names.iter().enumerate() {
            let candidate = if short { &name[..3] } else { name };
            if starts_with_ignore_case(rest, candidate) {
                return Ok((i, &rest[candidate.len()..]));
            }
        }
        Err(self.invalid(field, rest))
    }

    /// `UTC`, `GMT`, `Z`, or a numeric offset `+HH`, `+HH:MM`, `-HHMM`.
    fn read_zone<'a>(&self, rest: &'a str) -> Result<(i32, &'a str), FormatError> {
        for name in ["UTC", "GMT", "Z"] {
            if starts_with_ignore_case(rest, name) {
                return Ok((0, &rest[name.len()..]));
            }
        }
        let sign = match rest.chars().next() {
            Some('+') => 1,
            Some('-') => -1,
            _ => return Err(self.invalid(Field::TimeZone { upper: true }, rest)),
        };
        let body = &rest[1..];
        let digits: String = body
            .chars()
            .take(5)
            .take_while(|c| c.is_ascii_digit() || *c == ':')
            .collect();
        let plain: String = digits.chars().filter(char::is_ascii_digit).collect();
        let (hours, minutes) = match plain.len() {
            1 | 2 => (plain.parse::<i32>().ok(), Some(0)),
            3 | 4 => (
                plain[..plain.len() - 2].parse::<i32>().ok(),
                plain[plain.len() - 2..].parse::<i32>().ok(),
            ),
            _ => (None, None),
        };
        match (hours, minutes) {
            (Some(h), Some(m)) if h <= 15 && m < 60 => {
                Ok((sign * (h * 3600 + m * 60), &body[digits.len()..]))
            }
            _ => Err(self.invalid(Field::TimeZone { upper: true }, rest)),
        }
    }

    fn combine(&self, read: &Read) -> Result<(NaiveDateTime, Option<i32>), FormatError> {
        let year = match (read.year, read.year2) {
            (Some(y), _) => y,
            // PostgreSQL: two-digit years are the one nearest 2020.
            (None, Some(y)) if y < 70 => 2000 + y,
            (None, Some(y)) => 1900 + y,
            (None, None) => 1,
        };
        let date = match (read.day_of_year, read.month, read.day) {
            (Some(doy), None, None) => NaiveDate::from_yo_opt(year, doy),
            (_, month, day) => NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1)),
        }
        .ok_or_else(|| self.out_of_range("date"))?;
        let hour = match (read.hour, read.hour12, read.pm) {
            (Some(h), _, _) => h,
            (None, Some(h), pm) => {
                if !(1..=12).contains(&h) {
                    return Err(self.error(format!(
                        "hour \"{h}\" is invalid for the 12-hour clock; use HH24 for the 24-hour clock"
                    )));
                }
                (h % 12) + if pm == Some(true) { 12 } else { 0 }
            }
            (None, None, Some(true)) => 12,
            (None, None, _) => 0,
        };
        let (hour, minute, second) = match read.seconds_of_day {
            Some(s) => (s / 3600, (s / 60) % 60, s % 60),
            None => (hour, read.minute.unwrap_or(0), read.second.unwrap_or(0)),
        };
        let time = NaiveTime::from_hms_micro_opt(hour, minute, second, read.micros)
            .ok_or_else(|| self.out_of_range("time"))?;
        let offset = match (read.offset, read.offset_hours, read.offset_minutes) {
            (Some(offset), _, _) => Some(offset),
            (None, Some((sign, hours)), minutes) => {
                Some(sign * (hours * 3600 + minutes.unwrap_or(0) * 60))
            }
            (None, None, Some(minutes)) => Some(minutes * 60),
            (None, None, None) => None,
        };
        Ok((NaiveDateTime::new(date, time), offset))
    }

    fn invalid(&self, field: Field, at: &str) -> FormatError {
        self.error(format!(
            "invalid value \"{}\" for \"{}\"",
            preview(at),
            field.name()
        ))
    }

    fn out_of_range(&self, what: &str) -> FormatError {
        self.error(format!("{what} field value out of range"))
    }

    fn error(&self, message: String) -> FormatError {
        FormatError {
            message,
            pattern: self.text.clone(),
        }
    }
}

/// Whether `text` starts with the ASCII `prefix`, in any case.
fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn push_literal(items: &mut Vec<Item>, text: &str) {
    if let Some(Item::Literal(last)) = items.last_mut() {
        last.push_str(text);
    } else {
        items.push(Item::Literal(text.to_owned()));
    }
}

/// The start of `rest`, for an error message.
fn preview(rest: &str) -> String {
    let word: String = rest.chars().take(8).collect();
    if word.is_empty() {
        "(end of input)".to_owned()
    } else {
        word
    }
}

fn cased(out: &mut String, name: &str, case: Case) {
    match case {
        Case::Upper => out.push_str(&name.to_uppercase()),
        Case::Lower => out.push_str(&name.to_lowercase()),
        Case::Capital => out.push_str(name),
    }
}

fn number(out: &mut String, value: i64, width: usize, fill: bool) {
    if fill {
        out.push_str(&value.to_string());
    } else {
        out.push_str(&format!("{value:0width$}"));
    }
}

fn format_field(
    out: &mut String,
    field: Field,
    fill: bool,
    t: &NaiveDateTime,
    zone: Option<&ZoneAt>,
) {
    let width = field.width().unwrap_or(0);
    match field {
        Field::Year4 => number(out, i64::from(t.year()), width, fill),
        Field::Year2 => number(out, i64::from(t.year().rem_euclid(100)), width, fill),
        Field::Month => number(out, i64::from(t.month()), width, fill),
        Field::Day => number(out, i64::from(t.day()), width, fill),
        Field::DayOfYear => number(out, i64::from(t.ordinal()), width, fill),
        Field::Hour24 => number(out, i64::from(t.hour()), width, fill),
        Field::Hour12 => number(out, i64::from(t.hour12().1), width, fill),
        Field::Minute => number(out, i64::from(t.minute()), width, fill),
        Field::Second => number(out, i64::from(t.second()), width, fill),
        Field::SecondsOfDay => number(out, i64::from(t.num_seconds_from_midnight()), width, fill),
        Field::Milli => number(out, i64::from(t.nanosecond() / 1_000_000), width, fill),
        Field::Micro => number(out, i64::from(t.nanosecond() / 1_000), width, fill),
        Field::DayOfWeek => number(
            out,
            i64::from(t.weekday().num_days_from_sunday() + 1),
            width,
            fill,
        ),
        Field::IsoWeek => number(out, i64::from(t.iso_week().week()), width, fill),
        Field::Quarter => number(out, i64::from((t.month() - 1) / 3 + 1), width, fill),
        Field::Meridiem { case, dots } => {
            let pm = t.hour() >= 12;
            let text = match (pm, dots) {
                (false, false) => "AM",
                (true, false) => "PM",
                (false, true) => "A.M.",
                (true, true) => "P.M.",
            };
            cased(
                out,
                text,
                if case == Case::Lower {
                    case
                } else {
                    Case::Upper
                },
            );
        }
        Field::MonthName { case, short } => {
            let name = MONTHS[t.month0() as usize];
            named(out, name, case, short, fill);
        }
        Field::DayName { case, short } => {
            let name = DAYS[t.weekday().num_days_from_sunday() as usize];
            named(out, name, case, short, fill);
        }
        Field::TimeZone { upper } => {
            let name = zone.map_or("", |z| z.abbreviation.as_str());
            if upper {
                out.push_str(name);
            } else {
                out.push_str(&name.to_lowercase());
            }
        }
        Field::Offset | Field::OffsetHours => {
            let seconds = zone.map_or(0, |z| z.offset);
            out.push(if seconds < 0 { '-' } else { '+' });
            let abs = seconds.unsigned_abs();
            number(out, i64::from(abs / 3600), 2, fill);
            if field == Field::Offset && !abs.is_multiple_of(3600) {
                out.push_str(&format!(":{:02}", (abs % 3600) / 60));
            }
        }
        Field::OffsetMinutes => {
            let abs = zone.map_or(0, |z| z.offset).unsigned_abs();
            number(out, i64::from((abs % 3600) / 60), width, fill);
        }
    }
}

/// A month or day name; full names are padded to 9 characters unless `FM` is given.
fn named(out: &mut String, name: &str, case: Case, short: bool, fill: bool) {
    if short {
        cased(out, &name[..3], case);
        return;
    }
    cased(out, name, case);
    if !fill {
        out.extend(std::iter::repeat_n(' ', 9 - name.len()));
    }
}
