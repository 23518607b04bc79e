//! Log level normalisation onto TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL.

use serde_json::Value;

/// Maps a level as sent (a name in any case, a syslog severity 0–7, or a pino/bunyan
/// number 10–60) onto one of the six levels. The flag says whether the input was already
/// exactly that level name; when it is not, the caller keeps the raw value.
pub fn normalize_level(v: &Value) -> (&'static str, bool) {
    match v {
        Value::String(s) => {
            let norm = by_name(s.trim()).unwrap_or("INFO");
            (norm, norm.eq_ignore_ascii_case(s.trim()))
        }
        Value::Number(n) => (n.as_i64().map(by_number).unwrap_or("INFO"), false),
        _ => ("INFO", false),
    }
}

fn by_name(s: &str) -> Option<&'static str> {
    let lower = s.to_ascii_lowercase();
    Some(match lower.as_str() {
        "trace" | "trc" | "finest" | "finer" => "TRACE",
        "debug" | "dbg" | "fine" | "verbose" | "config" => "DEBUG",
        "info" | "inf" | "information" | "informational" | "notice" | "log" => "INFO",
        "warn" | "warning" | "wrn" => "WARN",
        "error" | "err" | "eror" | "severe" => "ERROR",
        "critical" | "crit" | "fatal" | "emerg" | "emergency" | "alert" | "panic" => "CRITICAL",
        _ => {
            if let Ok(n) = lower.parse::<i64>() {
                return Some(by_number(n));
            }
            return None;
        }
    })
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
