//! Loki's push API: `POST /loki/api/v1/push` as JSON
//! (`{"streams":[{"stream":{labels},"values":[["<ns>","line",{metadata}]]}]}`) or as a
//! snappy-compressed protobuf `logproto.PushRequest` (what Promtail, Grafana Alloy, the
//! Docker driver and Fluent Bit's `loki` output send).
//!
//! Mapping: the entry's time → timestamp; the line → message; label `host`, else `hostname`
//! → source; label (or structured metadata) `level`, else `detected_level` → level; every
//! other label and structured metadata pair (`job`, `service_name`, …) → attributes, as
//! strings.

use prost::Message;
use serde_json::Value;

use super::{Record, Shipped};

/// `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`: labels in selector form, `{job="app", host="web-1"}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
}

/// `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Reads a snappy-compressed (block format) protobuf `PushRequest` that decompresses to at
/// most `max_len` bytes (checked from the snappy header before anything is allocated).
pub fn from_snappy_protobuf(body: &[u8], topic: &str, max_len: usize) -> Result<Shipped, String> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| format!("body is not snappy-compressed (block format): {e}"))?;
    if len > max_len {
        return Err(format!(
            "body decompresses to {len} bytes, over http.max_body_bytes ({max_len})"
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("body is not snappy-compressed (block format): {e}"))?;
    let req = PushRequest::decode(raw.as_slice())
        .map_err(|e| format!("body is not a protobuf PushRequest: {e}"))?;
    let mut out = Shipped::default();
    for (si, stream) in req.streams.into_iter().enumerate() {
        let labels = parse_labels(&stream.labels)
            .map_err(|e| format!("streams[{si}].labels {:?}: {e}", stream.labels))?;
        for e in stream.entries {
            let ns = e.timestamp.map(|t| {
                t.seconds
                    .saturating_mul(1_000_000_000)
                    .saturating_add(i64::from(t.nanos))
            });
            let meta = e
                .structured_metadata
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect::<Vec<_>>();
            let mut r = Record::new(topic);
            if let Some(ns) = ns.filter(|ns| *ns != 0) {
                r.time_ns(ns);
            }
            entry(&mut r, &labels, &meta, e.line);
            out.push(r);
        }
    }
    Ok(out)
}

/// Reads a JSON push body.
pub fn from_json(body: &[u8], topic: &str) -> Result<Shipped, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let Some(streams) = v.get("streams").and_then(Value::as_array) else {
        return Err("body has no \"streams\" array".into());
    };
    let mut out = Shipped::default();
    for (si, stream) in streams.iter().enumerate() {
        let labels =
            string_pairs(stream.get("stream")).map_err(|e| format!("streams[{si}].stream: {e}"))?;
        let values = match stream.get("values") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a,
            Some(_) => return Err(format!("streams[{si}].values must be an array")),
        };
        for (vi, value) in values.iter().enumerate() {
            let at = || format!("streams[{si}].values[{vi}]");
            let Some(parts) = value.as_array().filter(|p| (2..=3).contains(&p.len())) else {
                return Err(format!(
                    "{} must be [\"<ns>\", \"line\", {{metadata}}?]",
                    at()
                ));
            };
            let line = match &parts[1] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let meta = string_pairs(parts.get(2)).map_err(|e| format!("{}[2]: {e}", at()))?;
            let mut r = Record::new(topic);
            // Nanoseconds as a string: parsed here, so the unit is never guessed; anything
            // else goes to the decoder, which dead-letters a time it cannot read.
            match parts[0].as_str().map(|s| s.trim().parse::<i64>()) {
                Some(Ok(ns)) => r.time_ns(ns),
                _ => r.time(parts[0].clone()),
            }
            entry(&mut r, &labels, &meta, line);
            out.push(r);
        }
    }
    Ok(out)
}

fn entry(r: &mut Record, labels: &[(String, String)], meta: &[(String, String)], line: String) {
    // Structured metadata after the labels: it is the more specific, so it wins.
    let mut pairs: Vec<&(String, String)> = labels.iter().chain(meta).collect();
    let mut take = |keys: &[&str]| {
        keys.iter().find_map(|k| {
            let i = pairs.iter().rposition(|(n, _)| n == k)?;
            Some(pairs.remove(i).1.clone())
        })
    };
    if let Some(s) = take(&["host", "hostname"]) {
        r.source(s);
    }
    if let Some(l) = take(&["level", "detected_level"]) {
        r.level(Value::String(l));
    }
    for (k, v) in pairs {
        r.attr(k, Value::String(v.clone()));
    }
    r.message(line);
}

/// A JSON object of string values (labels, structured metadata); absent → empty.
fn string_pairs(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(o)) => Ok(o
            .iter()
            .map(|(k, v)| (k.clone(), super::text(v.clone())))
            .collect()),
        Some(other) => Err(format!("must be an object of strings, got {other}")),
    }
}

/// Parses labels in selector form: `{a="x", b="y \"q\""}` (Prometheus string escapes).
pub fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("labels must be {name=\"value\", …}")?;
    let mut out = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("a label has no '='")?;
        let name = rest[..eq].trim();
        if name.is_empty() {
            return Err("a label has no name".into());
        }
        let after = rest[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if !matches!(chars.next(), Some((_, '"'))) {
            return Err(format!("label {name}: value must be quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("label {name}: unterminated value"))?;
        out.push((name.to_string(), value));
        rest = after[end..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(out)
}
