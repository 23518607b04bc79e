//! The wire formats log shippers speak — OTLP/HTTP logs, the Elasticsearch `_bulk` API,
//! Loki's push API — read into LogSphere's own JSON records, one per line. That NDJSON body
//! then takes exactly the path of a `POST /v1/logs` body: the same decoder (timestamps,
//! levels, attributes, dead letters), the same WAL or Kafka durability and the same
//! `Idempotency-Key` handling.
//!
//! Every record written here names all five row fields (`timestamp`, `level`, `message`,
//! `source`, `topic`), so a shipper's attribute that happens to be called `ts`, `msg` or
//! `host` stays an attribute. An attribute named like a row field itself (or `raw_level`)
//! is kept with a leading underscore (`_message`).
//!
//! A request whose envelope does not decode (not protobuf, not JSON of the expected shape)
//! is refused whole by the caller with a 400 and nothing stored, as the shippers expect; a
//! record inside a decodable envelope that cannot become a row is a dead letter.

pub mod bulk;
pub mod loki;
pub mod otlp;

use serde_json::{Map, Value};

use super::Rejected;

/// A shipper's request read into records.
#[derive(Debug, Default)]
pub struct Shipped {
    /// LogSphere JSON records, one per line (what `POST /v1/logs` takes).
    pub body: Vec<u8>,
    /// Lines in `body`.
    pub records: usize,
    /// Records that cannot be stored as rows, with the reason: dead letters.
    pub rejected: Vec<Rejected>,
}

impl Shipped {
    /// Appends one record.
    pub(crate) fn push(&mut self, record: Record) {
        let start = self.body.len();
        match serde_json::to_writer(&mut self.body, &record.0) {
            Ok(()) => {
                self.body.push(b'\n');
                self.records += 1;
            }
            Err(e) => {
                // A map of strings and JSON values serialises; should that ever change, the
                // record is still kept, as a dead letter.
                self.body.truncate(start);
                let raw = format!("{:?}", record.0);
                let position = format!("record {}", self.records + self.rejected.len() + 1);
                self.reject(
                    raw.as_bytes(),
                    position,
                    format!("record does not serialise: {e}"),
                );
            }
        }
    }

    /// Appends a line as sent (it must hold no newline): the decoder judges it, so a line
    /// that is not a JSON object becomes a dead letter with the decoder's reason.
    pub(crate) fn push_line(&mut self, line: &[u8]) {
        self.body.extend_from_slice(line);
        self.body.push(b'\n');
        self.records += 1;
    }

    /// Notes a record that cannot become a row.
    pub(crate) fn reject(&mut self, raw: &[u8], position: String, reason: String) {
        self.rejected.push(Rejected {
            raw: raw.to_vec(),
            position,
            reason,
        });
    }
}

/// One record in LogSphere's JSON shape.
#[derive(Debug)]
pub(crate) struct Record(Map<String, Value>);

/// The row fields every record names, and `raw_level`, which the decoder adds.
const RESERVED: [&str; 6] = [
    "timestamp",
    "level",
    "message",
    "source",
    "topic",
    "raw_level",
];

impl Record {
    /// A record of `topic` with no time (→ the ingest time), no level (→ INFO), an empty
    /// message and no source (→ `?source=` or empty).
    pub(crate) fn new(topic: &str) -> Self {
        let mut m = Map::new();
        m.insert("timestamp".into(), Value::Null);
        m.insert("level".into(), Value::Null);
        m.insert("message".into(), Value::String(String::new()));
        m.insert("source".into(), Value::String(String::new()));
        m.insert("topic".into(), Value::String(topic.into()));
        Self(m)
    }

    /// The event time, in nanoseconds since the epoch, written as RFC 3339 so its unit is
    /// never guessed from its magnitude.
    pub(crate) fn time_ns(&mut self, ns: i64) {
        let t = chrono::DateTime::from_timestamp_nanos(ns);
        self.0.insert(
            "timestamp".into(),
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        );
    }

    /// The event time as sent (a string or number the decoder parses).
    pub(crate) fn time(&mut self, v: Value) {
        self.0.insert("timestamp".into(), v);
    }

    pub(crate) fn level(&mut self, v: Value) {
        self.0.insert("level".into(), v);
    }

    pub(crate) fn message(&mut self, m: String) {
        self.0.insert("message".into(), Value::String(m));
    }

    pub(crate) fn source(&mut self, s: String) {
        self.0.insert("source".into(), Value::String(s));
    }

    /// An attribute; one named like a row field gets a leading underscore.
    pub(crate) fn attr(&mut self, key: &str, v: Value) {
        if RESERVED.contains(&key) {
            self.0.insert(format!("_{key}"), v);
        } else {
            self.0.insert(key.to_string(), v);
        }
    }
}

/// Lowercase hex of `bytes` (trace and span ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A JSON value as message text: a string as is, anything else as JSON.
pub(crate) fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
