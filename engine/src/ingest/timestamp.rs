//! Event-time parsing: RFC 3339 and friends, or epoch seconds/ms/µs/ns.

use chrono::{DateTime, NaiveDateTime};
use serde_json::Value;

/// Parses a record's timestamp into microseconds since the epoch (UTC).
///
/// Strings: RFC 3339 (`2026-11-24T13:00:00.5Z`, `+02:00` offsets), the same with a space
/// instead of `T`, and zone-less forms, read as UTC. Numbers (or numeric strings) are epoch
/// time whose unit is told by magnitude: below 1e11 seconds (fractions kept), below 1e14
/// milliseconds, below 1e17 microseconds, else nanoseconds.
pub fn parse_timestamp(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(from_epoch_int(i))
            } else if let Some(f) = n.as_f64() {
                from_epoch_float(f)
            } else {
                Err(format!("timestamp {n} is out of range"))
            }
        }
        Value::String(s) => parse_str(s.trim()),
        other => Err(format!(
            "timestamp must be a string or a number, got {other}"
        )),
    }
}

pub(crate) fn parse_str(s: &str) -> Result<i64, String> {
    if let Ok(i) = s.parse::<i64>() {
        return Ok(from_epoch_int(i));
    }
    if s.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && s.contains('.')
        && let Ok(f) = s.parse::<f64>()
    {
        return from_epoch_float(f);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Ok(dt.timestamp_micros());
        }
    }
    let naive = s.strip_suffix(" UTC").unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    Err(format!(
        "timestamp {s:?} does not parse: expected RFC 3339 (2026-11-24T13:00:00Z) \
         or epoch seconds/milliseconds/microseconds/nanoseconds"
    ))
}

fn from_epoch_int(i: i64) -> i64 {
    let a = i.unsigned_abs();
    if a < 100_000_000_000 {
        i.saturating_mul(1_000_000)
    } else if a < 100_000_000_000_000 {
        i.saturating_mul(1_000)
    } else if a < 100_000_000_000_000_000 {
        i
    } else {
        i / 1_000
    }
}

fn from_epoch_float(f: f64) -> Result<i64, String> {
    if !f.is_finite() {
        return Err(format!("timestamp {f} is not a finite number"));
    }
    let a = f.abs();
    let us = if a < 1e11 {
        f * 1e6
    } else if a < 1e14 {
        f * 1e3
    } else if a < 1e17 {
        f
    } else {
        f / 1e3
    };
    Ok(us.round() as i64)
}
