//! Interval text (`'5 minutes'`, `'1h30m'`, `INTERVAL '10' SECOND`) to [`Duration`]: the
//! one duration grammar of continuous queries — their clauses (WATERMARK, COOLDOWN, …),
//! their `WITH (…)` options and the options of their NOTIFY channels (`timeout`).
//!
//! Continuous-query clauses need fixed lengths of time, so months and years are refused
//! rather than guessed.

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{DateTimeField, Expr, Interval, Value};

/// What an interval may be written as, for error messages.
pub const INTERVAL_FORMS: &str = "INTERVAL '10 seconds' or '10s'";

const UNITS: &str = "ms, s, m, h, d, w, or milliseconds, seconds, minutes, hours, days, weeks";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The duration written by an `INTERVAL '…'` expression or a plain string literal.
pub fn duration_of_expr(expr: &Expr) -> Result<Duration, String> {
    match expr {
        Expr::Interval(interval) => duration_of_interval(interval),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(text) => parse_duration(text),
            Value::Number(n, _) => Err(format!(
                "{n} has no unit; write an interval such as {INTERVAL_FORMS}"
            )),
            other => Err(format!(
                "Expected: an interval such as {INTERVAL_FORMS}, found: {other}"
            )),
        },
        other => Err(format!(
            "Expected: an interval such as {INTERVAL_FORMS}, found: {other}"
        )),
    }
}

fn duration_of_interval(interval: &Interval) -> Result<Duration, String> {
    if interval.last_field.is_some() {
        return Err(format!(
            "range intervals ({interval}) are not supported; write e.g. {INTERVAL_FORMS}"
        ));
    }
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            _ => {
                return Err(format!(
                    "Expected: a quoted interval such as {INTERVAL_FORMS}, found: {interval}"
                ));
            }
        },
        _ => {
            return Err(format!(
                "Expected: a quoted interval such as {INTERVAL_FORMS}, found: {interval}"
            ));
        }
    };
    match &interval.leading_field {
        None => parse_duration(&text),
        Some(field) => parse_duration(&format!("{text} {}", field_unit(field)?)),
    }
}

fn field_unit(field: &DateTimeField) -> Result<&'static str, String> {
    Ok(match field {
        DateTimeField::Week(_) | DateTimeField::Weeks => "weeks",
        DateTimeField::Day | DateTimeField::Days => "days",
        DateTimeField::Hour | DateTimeField::Hours => "hours",
        DateTimeField::Minute | DateTimeField::Minutes => "minutes",
        DateTimeField::Second | DateTimeField::Seconds => "seconds",
        DateTimeField::Millisecond | DateTimeField::Milliseconds => "milliseconds",
        DateTimeField::Microsecond | DateTimeField::Microseconds => "microseconds",
        DateTimeField::Year
        | DateTimeField::Years
        | DateTimeField::Month
        | DateTimeField::Months => {
            return Err(no_calendar_units(&field.to_string()));
        }
        other => return Err(format!("{other} is not a unit of time; use one of {UNITS}")),
    })
}

fn no_calendar_units(unit: &str) -> String {
    format!("{unit} has no fixed length; write the interval in days or weeks instead")
}

/// Parses `'5 minutes'`, `'1 hour 30 minutes'`, `'2m'`, `'1h30m'`, `'1.5s'`, `'250ms'`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: String| format!("invalid interval '{text}': {why}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid(format!("empty; write e.g. {INTERVAL_FORMS}")));
    }
    if rest.starts_with('-') {
        return Err(invalid("must not be negative".to_owned()));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() {
            return Err(invalid(format!("expected a number at '{rest}'")));
        }
        rest = rest[digits..].trim_start();
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..letters];
        if unit.is_empty() {
            return Err(invalid(format!("{number} has no unit; use one of {UNITS}")));
        }
        rest = rest[letters..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
        let unit_nanos = unit_nanos(unit).map_err(invalid)?;
        let nanos =
            scale(number, unit_nanos).ok_or_else(|| invalid(format!("bad number {number}")))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| invalid("too large".to_owned()))?;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| invalid("too large".to_owned()))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

fn unit_nanos(unit: &str) -> Result<u128, String> {
    const SEC: u128 = NANOS_PER_SEC;
    Ok(match unit.to_ascii_lowercase().as_str() {
        "ns" | "nanosecond" | "nanoseconds" => 1,
        "us" | "microsecond" | "microseconds" => 1_000,
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => SEC,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * SEC,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600 * SEC,
        "d" | "day" | "days" => 86_400 * SEC,
        "w" | "week" | "weeks" => 7 * 86_400 * SEC,
        "mon" | "mons" | "month" | "months" | "y" | "yr" | "yrs" | "year" | "years" => {
            return Err(no_calendar_units(unit));
        }
        _ => return Err(format!("unknown unit '{unit}'; use one of {UNITS}")),
    })
}

/// `number × unit` in nanoseconds, exact for decimal fractions.
fn scale(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') || fraction.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        nanos = nanos
            .checked_add(digits.checked_mul(unit_nanos)? / 10u128.pow(fraction.len() as u32))?;
    }
    Some(nanos)
}
