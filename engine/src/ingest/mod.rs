//! Decoding log records — NDJSON or a JSON array, or text lines in the formats servers
//! write (syslog, access logs, logfmt, application layouts; see [`Format`]) — into Arrow,
//! once. HTTP and the Kafka source share this one path.
//!
//! A record that cannot become a row is never dropped: it becomes a dead letter with its
//! raw bytes, its origin and a reason, and decoding goes on with the next record.

mod fields;
#[cfg(test)]
mod fuzz;
mod level;
mod provenance;
pub mod shippers;
mod text;
mod timestamp;

use std::borrow::Cow;
use std::fmt::Display;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use serde_json::{Map, Value};

use self::fields::{FieldValue, Fields, Raw, Scalar};
use crate::model::{UTC, dead_letters_schema, logs_schema};

pub use level::normalize_level;
pub use provenance::{Provenance, produced_records};
pub use text::Format;
pub use timestamp::parse_timestamp;

/// Limits and defaults applied while decoding.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Records larger than this become dead letters.
    pub max_record_bytes: usize,
    /// `topic` of records that name none.
    pub default_topic: String,
    /// Where the records came from, recorded on dead letters (e.g. `http 127.0.0.1:5555`).
    pub origin: String,
    /// How records are read: JSON (the default) or a text format.
    pub format: Format,
    /// `source` of records that name none (`?source=`).
    pub default_source: Option<String>,
    /// Records a shipper's envelope held that cannot become rows (see [`shippers`]):
    /// stored as dead letters with the body's.
    pub rejected: Vec<Rejected>,
}

/// A record refused before decoding, with its raw bytes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// The record as sent.
    pub raw: Vec<u8>,
    /// Where it was in the request (`_bulk line 7`).
    pub position: String,
    /// Why it is not a row.
    pub reason: String,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            default_topic: "logs".into(),
            origin: "http".into(),
            format: Format::Json,
            default_source: None,
            rejected: Vec::new(),
        }
    }
}

/// How many bytes of an oversized record are kept in its dead letter.
const DEAD_LETTER_RAW_KEEP: usize = 4096;

/// The result of decoding one request body.
#[derive(Debug)]
pub struct Decoded {
    /// The accepted records, in `logs` schema (may have zero rows).
    pub logs: RecordBatch,
    /// The rejected records, in `dead_letters` schema (may have zero rows).
    pub dead_letters: RecordBatch,
}

impl Decoded {
    /// Number of accepted records.
    pub fn accepted(&self) -> usize {
        self.logs.num_rows()
    }
    /// Number of rejected records.
    pub fn rejected(&self) -> usize {
        self.dead_letters.num_rows()
    }
}

/// Decodes a body of NDJSON (one object per line) or a JSON array of objects, or, in a
/// text format, one record per line. `ingest_time_us` stamps every row and is the
/// timestamp of records that carry none.
pub fn decode_body(body: &[u8], ingest_time_us: i64, opts: &DecodeOptions) -> Decoded {
    let mut b = Builders::new(ingest_time_us, opts);
    for r in &opts.rejected {
        b.dead(&r.raw, &r.position, r.reason.clone());
    }
    let first = body.iter().position(|c| !c.is_ascii_whitespace());
    if opts.format != Format::Json {
        decode_lines(body, &mut b);
        return b.finish();
    }
    match first.map(|i| body[i]) {
        Some(b'[') if !first_line_is_json(body) => decode_array(body, &mut b),
        Some(_) => decode_lines(body, &mut b),
        None => {}
    }
    b.finish()
}

/// NDJSON whose first line happens to be an array (`[1,2]\n{...}`) is still NDJSON.
pub(crate) fn first_line_is_json(body: &[u8]) -> bool {
    let Some(end) = body.iter().position(|c| *c == b'\n') else {
        return false;
    };
    let rest_has_content = body[end..].iter().any(|c| !c.is_ascii_whitespace());
    rest_has_content && serde_json::from_slice::<&serde_json::value::RawValue>(&body[..end]).is_ok()
}

fn decode_lines(body: &[u8], b: &mut Builders<'_>) {
    for (lineno, line) in body.split(|c| *c == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|c| c.is_ascii_whitespace()) {
            continue;
        }
        b.record(line, &format_args!("line {}", lineno + 1));
    }
}

fn decode_array(body: &[u8], b: &mut Builders<'_>) {
    if body.len() > b.opts.max_record_bytes.saturating_mul(1024) {
        // A JSON array is parsed whole; refuse absurd ones rather than allocate for them.
        b.dead(
            body,
            &"JSON array body",
            "JSON array body too large; send NDJSON".into(),
        );
        return;
    }
    let items: Vec<&serde_json::value::RawValue> = match serde_json::from_slice(body) {
        Ok(items) => items,
        Err(e) => {
            let reason = match std::str::from_utf8(body) {
                Err(u) => format!("body is not valid UTF-8 (at byte {})", u.valid_up_to()),
                Ok(_) => format!("body is not a valid JSON array: {e}"),
            };
            b.dead(body, &"JSON array body", reason);
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        b.record(item.get().as_bytes(), &format_args!("array element {i}"));
    }
}

/// Decodes records one at a time (a Kafka message each), with metadata to keep.
pub struct RecordDecoder<'a> {
    b: Builders<'a>,
}

/// What became of one record given to [`RecordDecoder::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFate {
    /// It is a row of `logs`.
    Accepted,
    /// It is a row of `dead_letters`.
    Rejected,
}

impl<'a> RecordDecoder<'a> {
    /// A decoder stamping `ingest_time_us` on every row until [`Self::set_ingest_time`].
    pub fn new(ingest_time_us: i64, opts: &'a DecodeOptions) -> Self {
        Self {
            b: Builders::new(ingest_time_us, opts),
        }
    }

    /// Stamps the records decoded from now on with `ingest_time_us` (which is also the
    /// timestamp of those that carry none). The Kafka source passes each message's own
    /// Kafka timestamp, so a redelivered record decodes to the same row.
    pub fn set_ingest_time(&mut self, ingest_time_us: i64) {
        self.b.ingest_time_us = ingest_time_us;
    }

    /// Decodes one record. `topic`, when given, is the `topic` column whatever the record
    /// says (a `topic` field then stays in `attributes`); `extra` fields are added to
    /// `attributes` (e.g. the Kafka partition and offset). `position` names the record on
    /// its dead letter.
    pub fn record(
        &mut self,
        raw: &[u8],
        position: impl Display,
        topic: Option<&str>,
        extra: Vec<(String, Value)>,
    ) -> RecordFate {
        let before = self.b.dl_origin.len();
        self.b.forced_topic = topic.map(str::to_string);
        self.b.extra = extra;
        self.b.record(raw, &position);
        self.b.forced_topic = None;
        self.b.extra = Vec::new();
        if self.b.dl_origin.len() > before {
            RecordFate::Rejected
        } else {
            RecordFate::Accepted
        }
    }

    /// [`Self::record`] for a record LogSphere's own ingest produced to Kafka: read in the
    /// request's format, a dead letter when the receiving node found it one, and a dead
    /// letter's origin is the request's (`otlp http 10.0.0.7:51234 line 2 via kafka
    /// logs/1 offset 42`), so it is stored as the receiving node would have stored it.
    pub fn produced_record(
        &mut self,
        raw: &[u8],
        provenance: Provenance,
        position: impl Display,
        topic: Option<&str>,
        extra: Vec<(String, Value)>,
    ) -> RecordFate {
        self.b.format = provenance.format;
        self.b.origin_prefix = Some(provenance.origin);
        self.b.default_source = provenance.default_source;
        let fate = match provenance.rejected {
            Some(reason) => {
                self.b.dead(raw, &position, reason);
                RecordFate::Rejected
            }
            None => self.record(raw, position, topic, extra),
        };
        self.b.format = self.b.opts.format;
        self.b.origin_prefix = None;
        self.b
            .default_source
            .clone_from(&self.b.opts.default_source);
        fate
    }

    /// The decoded batches.
    pub fn finish(self) -> Decoded {
        self.b.finish()
    }
}

struct Builders<'a> {
    opts: &'a DecodeOptions,
    /// How the record being decoded is read: `opts.format` unless its producer said.
    format: Format,
    /// Where the record being decoded came from before it reached `opts.origin`.
    origin_prefix: Option<String>,
    /// `source` of the records being decoded that name none: `opts.default_source` unless
    /// their producer said.
    default_source: Option<String>,
    forced_topic: Option<String>,
    extra: Vec<(String, Value)>,
    /// The ingest time of the records being decoded now.
    ingest_time_us: i64,
    /// Each row's ingest time, and each dead letter's.
    ingest_times: Vec<i64>,
    dl_ingest_times: Vec<i64>,
    ts: TimestampMicrosecondBuilder,
    level: StringBuilder,
    message: StringBuilder,
    source: StringBuilder,
    topic: StringBuilder,
    attributes: StringBuilder,
    dl_origin: StringBuilder,
    dl_reason: StringBuilder,
    dl_raw: BinaryBuilder,
    dl_raw_text: StringBuilder,
    /// The attributes of a text line, reused from row to row.
    attrs: text::Attrs,
    /// The attributes of a JSON record, reused from row to row.
    json: String,
}

impl<'a> Builders<'a> {
    fn new(ingest_time_us: i64, opts: &'a DecodeOptions) -> Self {
        Self {
            opts,
            format: opts.format,
            origin_prefix: None,
            default_source: opts.default_source.clone(),
            forced_topic: None,
            extra: Vec::new(),
            ingest_time_us,
            ingest_times: Vec::new(),
            dl_ingest_times: Vec::new(),
            ts: TimestampMicrosecondBuilder::new(),
            level: StringBuilder::new(),
            message: StringBuilder::new(),
            source: StringBuilder::new(),
            topic: StringBuilder::new(),
            attributes: StringBuilder::new(),
            dl_origin: StringBuilder::new(),
            dl_reason: StringBuilder::new(),
            dl_raw: BinaryBuilder::new(),
            dl_raw_text: StringBuilder::new(),
            attrs: text::Attrs::default(),
            json: String::new(),
        }
    }

    fn record(&mut self, raw: &[u8], position: &dyn Display) {
        if raw.len() > self.opts.max_record_bytes {
            let reason = format!(
                "record is {} bytes, over the limit of {} (http.max_record_bytes); \
                 raw keeps the first {} bytes",
                raw.len(),
                self.opts.max_record_bytes,
                DEAD_LETTER_RAW_KEEP
            );
            self.dead(
                &raw[..DEAD_LETTER_RAW_KEEP.min(raw.len())],
                position,
                reason,
            );
            return;
        }
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("record is not valid UTF-8 (at byte {})", e.valid_up_to());
                self.dead(raw, position, reason);
                return;
            }
        };
        if self.format != Format::Json {
            self.text_record(text);
            return;
        }
        if let Some(fields) = Fields::parse(text) {
            if let Err(reason) = self.row_fields(fields) {
                self.dead(raw, position, reason);
            }
            return;
        }
        // Not an object, or not JSON: the `Value` path says which.
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.dead(raw, position, format!("record is not valid JSON: {e}"));
                return;
            }
        };
        let Value::Object(obj) = value else {
            let kind = json_kind(&value);
            self.dead(
                raw,
                position,
                format!("record is a JSON {kind}, not an object"),
            );
            return;
        };
        if let Err(reason) = self.row(obj) {
            self.dead(raw, position, reason);
        }
    }

    /// A record in a text format: parsed into a row, or stored whole as the message when
    /// it matches no format; never a dead letter.
    fn text_record(&mut self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        let format = self.format;
        if format == Format::Auto
            && line.trim_start().starts_with('{')
            && let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line)
            && self.row(obj).is_ok()
        {
            return;
        }
        self.attrs.clear();
        let row = match text::parse_line(format, line, self.ingest_time_us, &mut self.attrs) {
            Some(row) => row,
            None => {
                self.attrs.clear();
                if !matches!(format, Format::Auto | Format::Text) {
                    // Findable: `WHERE attributes ? 'unparsed'`.
                    self.attrs.raw_json("unparsed", "true");
                }
                text::Row::new(line)
            }
        };
        if let Some(raw) = row.raw_level {
            self.attrs.str("raw_level", raw);
        }
        for (k, v) in &self.extra {
            self.attrs.raw_json(k, &v.to_string());
        }
        let source = match (row.source, &self.default_source) {
            ("", Some(d)) => d.as_str(),
            (s, _) => s,
        };
        self.ts.append_value(row.ts.unwrap_or(self.ingest_time_us));
        self.level.append_value(row.level);
        self.message.append_value(&row.message);
        self.source.append_value(source);
        match &self.forced_topic {
            Some(t) => self.topic.append_value(t),
            None => self.topic.append_value(&self.opts.default_topic),
        }
        self.attributes.append_value(self.attrs.finish());
        self.ingest_times.push(self.ingest_time_us);
    }

    fn row(&mut self, mut obj: Map<String, Value>) -> Result<(), String> {
        let ts = match take_first(&mut obj, &["timestamp", "ts", "@timestamp", "time"]) {
            None | Some((_, Value::Null)) => self.ingest_time_us,
            Some((key, v)) => parse_timestamp(&v).map_err(|e| format!("field {key:?}: {e}"))?,
        };
        let (level, raw_level) = match take_first(&mut obj, &["level", "log_level", "severity"]) {
            None | Some((_, Value::Null)) => ("INFO", None),
            Some((_, v)) => {
                let (norm, exact) = normalize_level(&v);
                (norm, if exact { None } else { Some(v) })
            }
        };
        let message = take_text(&mut obj, &["message", "msg"]);
        let mut source = take_text(&mut obj, &["source", "host", "hostname"]);
        if source.is_empty()
            && let Some(d) = &self.default_source
        {
            source.clone_from(d);
        }
        let topic = match &self.forced_topic {
            Some(t) => t.clone(),
            None => take_first(&mut obj, &["topic"])
                .map(|(_, v)| value_text(v))
                .unwrap_or_else(|| self.opts.default_topic.clone()),
        };
        if let Some(raw) = raw_level {
            obj.insert("raw_level".into(), raw);
        }
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        let attributes = serde_json::to_string(&obj).map_err(|e| format!("attributes: {e}"))?;
        self.ts.append_value(ts);
        self.level.append_value(level);
        self.message.append_value(message);
        self.source.append_value(source);
        self.topic.append_value(topic);
        self.attributes.append_value(attributes);
        self.ingest_times.push(self.ingest_time_us);
        Ok(())
    }

    /// [`Self::row`] over borrowed fields: the same row and the same `attributes` text.
    fn row_fields(&mut self, mut f: Fields<'_>) -> Result<(), String> {
        let ts = match f.take_first(&["timestamp", "ts", "@timestamp", "time"]) {
            None => self.ingest_time_us,
            Some((_, raw)) if raw.is_null() => self.ingest_time_us,
            Some((key, raw)) => {
                let parsed = match raw.scalar()? {
                    Scalar::Str(s) => timestamp::parse_str(s.trim()),
                    Scalar::Value(v) => parse_timestamp(&v),
                };
                parsed.map_err(|e| format!("field {key:?}: {e}"))?
            }
        };
        let (level, raw_level) = match f.take_first(&["level", "log_level", "severity"]) {
            None => ("INFO", None),
            Some((_, raw)) if raw.is_null() => ("INFO", None),
            Some((_, raw)) => {
                let (norm, exact) = match raw.scalar()? {
                    Scalar::Str(s) => level::normalize_level_str(s),
                    Scalar::Value(v) => normalize_level(&v),
                };
                (norm, if exact { None } else { Some(raw) })
            }
        };
        let message = field_text(f.take_first(&["message", "msg"]))?;
        let mut source = field_text(f.take_first(&["source", "host", "hostname"]))?;
        if source.is_empty()
            && let Some(d) = &self.default_source
        {
            source = Cow::Borrowed(d.as_str());
        }
        let topic = match &self.forced_topic {
            Some(t) => Cow::Borrowed(t.as_str()),
            None => match f.take_first(&["topic"]) {
                Some(field) => field_text(Some(field))?,
                None => Cow::Borrowed(self.opts.default_topic.as_str()),
            },
        };
        if let Some(Raw(raw)) = raw_level {
            f.insert(Cow::Borrowed("raw_level"), FieldValue::Raw(raw));
        }
        let extra: Vec<(&str, String)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        // Shorter-lived from here on (the fields are covariant): the added ones borrow `extra`.
        let mut f: Fields<'_> = f;
        for (k, v) in &extra {
            f.insert(Cow::Borrowed(k), FieldValue::Json(v));
        }
        self.json.clear();
        f.write_json(&mut self.json)?;
        self.ts.append_value(ts);
        self.level.append_value(level);
        self.message.append_value(message);
        self.source.append_value(source);
        self.topic.append_value(topic);
        self.attributes.append_value(&self.json);
        self.ingest_times.push(self.ingest_time_us);
        Ok(())
    }

    fn dead(&mut self, raw: &[u8], position: &dyn Display, reason: String) {
        match &self.origin_prefix {
            Some(prefix) => self
                .dl_origin
                .append_value(format!("{prefix} via {} {position}", self.opts.origin)),
            None => self
                .dl_origin
                .append_value(format!("{} {position}", self.opts.origin)),
        }
        self.dl_reason.append_value(reason);
        self.dl_raw.append_value(raw);
        self.dl_raw_text.append_value(String::from_utf8_lossy(raw));
        self.dl_ingest_times.push(self.ingest_time_us);
    }

    fn finish(mut self) -> Decoded {
        let ingest = timestamps(std::mem::take(&mut self.ingest_times));
        let ts: ArrayRef = Arc::new(self.ts.finish().with_timezone(UTC));
        let logs = RecordBatch::try_new(
            logs_schema(),
            vec![
                ts,
                Arc::new(self.level.finish()),
                Arc::new(self.message.finish()),
                Arc::new(self.source.finish()),
                Arc::new(self.topic.finish()),
                Arc::new(self.attributes.finish()),
                ingest,
            ],
        );
        let dead = RecordBatch::try_new(
            dead_letters_schema(),
            vec![
                timestamps(std::mem::take(&mut self.dl_ingest_times)),
                Arc::new(self.dl_origin.finish()),
                Arc::new(self.dl_reason.finish()),
                Arc::new(self.dl_raw.finish()),
                Arc::new(self.dl_raw_text.finish()),
            ],
        );
        // Every column above is built to the schema's types and lengths, so try_new cannot
        // fail; fall back to empty batches rather than panic if that ever changes.
        Decoded {
            logs: logs.unwrap_or_else(|_| RecordBatch::new_empty(logs_schema())),
            dead_letters: dead.unwrap_or_else(|_| RecordBatch::new_empty(dead_letters_schema())),
        }
    }
}

fn timestamps(values: Vec<i64>) -> ArrayRef {
    Arc::new(arrow::array::TimestampMicrosecondArray::from(values).with_timezone(UTC))
}

/// Removes and returns the first of `keys` present in `obj`; the others stay as attributes.
fn take_first(
    obj: &mut Map<String, Value>,
    keys: &[&'static str],
) -> Option<(&'static str, Value)> {
    keys.iter().find_map(|k| obj.remove(*k).map(|v| (*k, v)))
}

fn take_text(obj: &mut Map<String, Value>, keys: &[&'static str]) -> String {
    take_first(obj, keys)
        .map(|(_, v)| value_text(v))
        .unwrap_or_default()
}

/// [`value_text`] of a borrowed field (empty when absent).
fn field_text<'a>(field: Option<(&'static str, Raw<'a>)>) -> Result<Cow<'a, str>, String> {
    let Some((_, raw)) = field else {
        return Ok(Cow::Borrowed(""));
    };
    Ok(match raw.scalar()? {
        Scalar::Str(s) => Cow::Borrowed(s),
        Scalar::Value(v) => Cow::Owned(value_text(v)),
    })
}

fn value_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests;
