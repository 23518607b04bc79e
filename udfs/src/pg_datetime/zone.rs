//! Time zones as PostgreSQL uses them in `to_char` and `to_timestamp`: the local time of an
//! instant with the zone's abbreviation (`CET`, `EDT`), and the instant of a local time,
//! with PostgreSQL's rule for the hours a daylight-saving change skips or repeats.

use chrono::{Duration, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::OffsetName;
use datafusion::arrow::array::timezone::Tz;

/// A zone: an IANA name, or a fixed offset (`+05:30`).
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

/// A zone at one instant: what `TZ` and `OF` write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneAt {
    /// `CEST`, `EST`, `UTC`; the offset (`+03`, `-03:30`) where the zone has no letters.
    pub abbreviation: String,
    /// Seconds east of UTC.
    pub offset: i32,
}

impl Zone {
    /// The zone an Arrow timestamp type or a session's `TimeZone` names; `None` if it is
    /// neither an IANA name nor an offset.
    pub fn parse(name: &str) -> Option<Zone> {
        if let Ok(named) = name.parse::<chrono_tz::Tz>() {
            return Some(Zone::Named(named));
        }
        // Arrow's own reading of offsets (`+05:30`, `-0800`), fixed at any instant.
        let fixed = name.parse::<Tz>().ok()?;
        let epoch = NaiveDateTime::default();
        Some(Zone::Fixed(fixed.offset_from_utc_datetime(&epoch).fix()))
    }

    /// The local date and time of the instant `utc`, and the zone then.
    pub fn at(&self, utc: &NaiveDateTime) -> (NaiveDateTime, ZoneAt) {
        let (offset, name) = match self {
            Zone::Named(tz) => {
                let offset = tz.offset_from_utc_datetime(utc);
                let name = offset
                    .abbreviation()
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned);
                (offset.fix(), name)
            }
            Zone::Fixed(fixed) => (*fixed, None),
        };
        let seconds = offset.local_minus_utc();
        let local = *utc + Duration::seconds(i64::from(seconds));
        let abbreviation = name.unwrap_or_else(|| offset_abbreviation(seconds));
        (
            local,
            ZoneAt {
                abbreviation,
                offset: seconds,
            },
        )
    }

    /// The instant of the local time `local`. Like PostgreSQL, a time the clocks skipped
    /// (spring forward) is read with the offset before the change, and a time they repeated
    /// (fall back) with the offset after it.
    pub fn instant(&self, local: &NaiveDateTime) -> Option<NaiveDateTime> {
        let tz = match self {
            Zone::Fixed(fixed) => {
                return fixed
                    .from_local_datetime(local)
                    .single()
                    .map(|t| t.naive_utc());
            }
            Zone::Named(tz) => tz,
        };
        match tz.from_local_datetime(local) {
            LocalResult::Single(t) => Some(t.naive_utc()),
            LocalResult::Ambiguous(_, after) => Some(after.naive_utc()),
            LocalResult::None => {
                // In the gap: the offset of a day before, the one in force before the change.
                let day_before = local.checked_sub_signed(Duration::days(1))?;
                let before = tz.offset_from_utc_datetime(&day_before).fix();
                local.checked_sub_signed(Duration::seconds(i64::from(before.local_minus_utc())))
            }
        }
    }
}

/// `UTC` for a zero offset, else the offset as PostgreSQL writes a zone without an
/// abbreviation (`+05`, `-03:30`).
pub fn offset_abbreviation(seconds: i32) -> String {
    if seconds == 0 {
        return "UTC".to_owned();
    }
    let sign = if seconds < 0 { '-' } else { '+' };
    let abs = seconds.unsigned_abs();
    let (hours, minutes) = (abs / 3600, (abs / 60) % 60);
    if minutes == 0 {
        format!("{sign}{hours:02}")
    } else {
        format!("{sign}{hours:02}:{minutes:02}")
    }
}
