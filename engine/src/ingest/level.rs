//! Log level normalisation onto TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL.

use serde_json::Value;

/// Maps a level as sent (a name in any case, a syslog severity 0–7, or a pino/bunyan
/// number 10–60) onto one of the six levels. The flag says whether the input was already
/// exactly that level name; when it is not, the caller keeps the raw value.
pub fn normalize_level(v: &Value) -> (&'static str, bool) {
    match v {
        Value::String(s) => normalize_level_str(s),
        Value::Number(n) => (n.as_i64().map(by_number).unwrap_or("INFO"), false),
        _ => ("INFO", false),
    }
}

/// [`normalize_level`] of a string value.
pub fn normalize_level_str(s: &str) -> (&'static str, bool) {
    let norm = by_name(s.trim()).unwrap_or("INFO");
    (norm, norm.eq_ignore_ascii_case(s.trim()))
}

fn by_name(s: &str) -> Option<&'static str> {
    level_by_name(s).or_else(|| s.parse::<i64>().ok().map(by_number))
}

/// Syslog severities 0–7, then pino/bunyan levels 10–60.
fn by_number(n: i64) -> &'static str {
    match n {
        0..=2 => "CRITICAL",
        3 => "ERROR",
        4 => "WARN",
        5 | 6 => "INFO",
        7 => "DEBUG",
        8..=10 => "TRACE",
        11..=20 => "DEBUG",
        21..=30 => "INFO",
        31..=40 => "WARN",
        41..=50 => "ERROR",
        _ if n > 50 => "CRITICAL",
        _ => "INFO",
    }
}

/// The level a name as written means (any case; `warning`, `err`, `notice`, …), without
/// allocating; `None` when it names none.
pub(crate) fn level_by_name(s: &str) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(s)))
        .map(|(_, level)| *level)
}

const NAMES: [(&[&str], &str); 6] = [
    (
        &[
            "info",
            "inf",
            "information",
            "informational",
            "notice",
            "log",
        ],
        "INFO",
    ),
    (&["debug", "dbg", "fine", "verbose", "config"], "DEBUG"),
    (&["warn", "warning", "wrn"], "WARN"),
    (&["error", "err", "eror", "severe"], "ERROR"),
    (&["trace", "trc", "finest", "finer"], "TRACE"),
    (
        &[
            "critical",
            "crit",
            "fatal",
            "emerg",
            "emergency",
            "alert",
            "panic",
        ],
        "CRITICAL",
    ),
];

/// The level of a syslog severity 0–7.
pub(crate) fn syslog_severity(severity: u8) -> &'static str {
    by_number(i64::from(severity))
}
