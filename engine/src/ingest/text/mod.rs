//! The line formats servers write — syslog (RFC 3164 and 5424), Apache/nginx access logs,
//! logfmt, and the usual application layouts — parsed by hand, one line at a time, into a
//! row: event time, level, source, message, and the rest as `attributes`.
//!
//! A parser either returns a [`Row`] borrowing from the line (only a message with escapes
//! is copied) with its attributes written straight into a reused JSON buffer, or `None`
//! after looking at a few bytes; `auto` tries them cheapest-rejecting first.

mod access;
mod app;
mod attrs;
mod logfmt;
mod scan;
mod syslog;

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

pub(crate) use attrs::Attrs;

/// How a record's bytes are read: chosen by `?format=` on `POST /v1/logs`, by
/// `logsphere ship --format`, or by `kafka.format` for the topics consumed in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// NDJSON or a JSON array of objects; anything else is a dead letter (the default).
    #[default]
    Json,
    /// Per line: a JSON object when it starts with `{`, else the first text format that
    /// matches, else the line as the message.
    Auto,
    /// The line is the message; nothing is parsed.
    Text,
    /// RFC 5424 or RFC 3164 syslog (with or without `<PRI>`, with or without the host).
    Syslog,
    /// Apache/nginx common or combined access log.
    Access,
    /// `key=value key="quoted value"` pairs (Go kit, logrus, Heroku).
    Logfmt,
    /// Application layouts: log4j/logback, Python logging, glog, Spark, HDFS, OpenStack,
    /// Zookeeper, Android logcat, Apache error log.
    App,
}

impl Format {
    /// Every format, in the order they are documented.
    pub const ALL: [Format; 7] = [
        Format::Json,
        Format::Auto,
        Format::Text,
        Format::Syslog,
        Format::Access,
        Format::Logfmt,
        Format::App,
    ];

    /// The name used in `?format=` and `--format`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Auto => "auto",
            Format::Text => "text",
            Format::Syslog => "syslog",
            Format::Access => "access",
            Format::Logfmt => "logfmt",
            Format::App => "app",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// One parsed line; what is not here went into the [`Attrs`] buffer.
#[derive(Debug, PartialEq)]
pub(crate) struct Row<'a> {
    /// Event time in µs since the epoch; `None` → the ingest time.
    pub ts: Option<i64>,
    /// One of the six normalised levels.
    pub level: &'static str,
    /// The level as written, when it is not exactly `level` (kept as `raw_level`).
    pub raw_level: Option<&'a str>,
    /// The host that wrote the line; empty when the format does not say.
    pub source: &'a str,
    /// The message: borrowed from the line unless unescaping copied it.
    pub message: Cow<'a, str>,
}

impl<'a> Row<'a> {
    /// A row of `message` at the ingest time, level INFO, no source.
    pub(crate) fn new(message: impl Into<Cow<'a, str>>) -> Self {
        Self {
            ts: None,
            level: "INFO",
            raw_level: None,
            source: "",
            message: message.into(),
        }
    }

    /// Sets the level from a name as written (`warning`, `E`, `notice`…); `None` if it
    /// names no level.
    fn level_named(&mut self, raw: &'a str) -> Option<()> {
        let level = super::level::level_by_name(raw)?;
        self.level = level;
        self.raw_level = (!level.eq_ignore_ascii_case(raw)).then_some(raw);
        Some(())
    }
}

/// Parses `line` as `format` (any but `Json`, which the caller handles). `None`: the line
/// does not match (in `Auto`, no text format matched); the caller stores it as is.
/// `attrs` must be empty; on `None` it may hold a partial object and must be cleared.
pub(crate) fn parse_line<'a>(
    format: Format,
    line: &'a str,
    ingest_us: i64,
    attrs: &mut Attrs,
) -> Option<Row<'a>> {
    let row = match format {
        Format::Json | Format::Text => None,
        Format::Syslog => syslog::parse(line, ingest_us, attrs),
        Format::Access => access::parse(line, attrs),
        Format::Logfmt => logfmt::parse(line, attrs),
        Format::App => app::parse(line, ingest_us, attrs),
        Format::Auto => auto(line, ingest_us, attrs),
    };
    row.map(|mut r| {
        if let Cow::Borrowed(m) = r.message {
            r.message = Cow::Borrowed(m.trim_end());
        }
        r
    })
}

/// Tries the formats whose first bytes fit, cheapest first; each rejects in a few bytes.
fn auto<'a>(line: &'a str, ingest_us: i64, attrs: &mut Attrs) -> Option<Row<'a>> {
    let first = *line.as_bytes().first()?;
    let mut attempt = |f: fn(&'a str, i64, &mut Attrs) -> Option<Row<'a>>| {
        let row = f(line, ingest_us, attrs);
        if row.is_none() {
            attrs.clear();
        }
        row
    };
    match first {
        b'<' => attempt(syslog::parse),
        b'[' => attempt(app::parse),
        b'0'..=b'9' => attempt(app::parse)
            .or_else(|| attempt(syslog::parse))
            .or_else(|| attempt(|l, _, a| access::parse(l, a))),
        _ => attempt(syslog::parse)
            .or_else(|| attempt(app::parse))
            .or_else(|| attempt(|l, _, a| access::parse(l, a)))
            .or_else(|| attempt(|l, _, a| logfmt::parse(l, a))),
    }
}

#[cfg(test)]
mod accuracy;
#[cfg(test)]
mod tests;
