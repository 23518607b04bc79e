//! The Elasticsearch `_bulk` API subset log shippers use (Fluent Bit's `es` output, Vector's
//! `elasticsearch` sink, Filebeat, Logstash, elasticsearch-py's `helpers.bulk`): NDJSON
//! pairs of an action line (`index` or `create`) and a document.
//!
//! Mapping: the index (the action's `_index`, else the one in the URL) → topic; the first of
//! `@timestamp|timestamp|time|ts` → timestamp; `message|log|msg` → message; `level`,
//! `log.level` (dotted or nested), `log_level|severity` → level; `host.name` (dotted or
//! nested), `host` as a string, `hostname|source` → source; every other field →
//! attributes (what is left of an ECS `host` or `log` object stays under that name).
//!
//! `update` and `delete` actions change documents LogSphere never indexes by id; they are
//! dead letters (`update`'s document with it) and answered 400 in their item.

use arrow::array::Array;
use serde_json::{Map, Value, json};

use super::{Record, Shipped, text};
use crate::ingest::{DecodeOptions, RecordDecoder, RecordFate};

/// A `_bulk` body read into records.
#[derive(Debug)]
pub struct Bulk {
    pub shipped: Shipped,
    items: Vec<Item>,
}

#[derive(Debug)]
struct Item {
    action: String,
    index: String,
    id: Option<String>,
    /// Whether a line of `shipped.body` is this item's record (else it is a dead letter
    /// of `shipped.rejected`).
    stored_as_row_candidate: bool,
}

/// Reads a `_bulk` body. `index`: the one in the URL (`/{index}/_bulk`); with neither it
/// nor `_index`, the topic is `default_topic`. An action line that is not an action is a
/// 400 for the whole request, as Elasticsearch answers.
pub fn parse(body: &[u8], index: Option<&str>, default_topic: &str) -> Result<Bulk, String> {
    let mut shipped = Shipped::default();
    let mut items = Vec::new();
    let mut lines = body
        .split(|c| *c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty());
    while let Some((n, line)) = lines.next() {
        let n = n + 1;
        let (action, meta) = action(line).map_err(|e| format!("line {n}: {e}"))?;
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(index)
            .filter(|i| !i.is_empty())
            .unwrap_or(default_topic)
            .to_string();
        let id = meta.get("_id").map(|v| text(v.clone()));
        let doc =
            match action.as_str() {
                "delete" => None,
                _ => Some(lines.next().ok_or_else(|| {
                    format!("line {n}: the {action} action has no document line")
                })?),
            };
        let stored = match (action.as_str(), doc) {
            ("index" | "create", Some((_, doc))) => {
                document(&mut shipped, doc, &index);
                true
            }
            (_, doc) => {
                let raw = match doc {
                    Some((_, d)) => [line, b"\n", d].concat(),
                    None => line.to_vec(),
                };
                shipped.reject(
                    &raw,
                    format!("_bulk line {n}"),
                    format!(
                        "_bulk action {action:?} is not supported: LogSphere stores log \
                         records (index, create) and does not change them"
                    ),
                );
                false
            }
        };
        items.push(Item {
            action,
            index,
            id,
            stored_as_row_candidate: stored,
        });
    }
    if items.is_empty() {
        return Err("the bulk request holds no actions".into());
    }
    Ok(Bulk { shipped, items })
}

/// An action line: `{"index": {"_index": "…", "_id": "…"}}`.
fn action(line: &[u8]) -> Result<(String, Map<String, Value>), String> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| format!("action line is not JSON: {e}"))?;
    let Value::Object(o) = v else {
        return Err("action line is not a JSON object".into());
    };
    let mut it = o.into_iter();
    match (it.next(), it.next()) {
        (Some((k, meta)), None)
            if ["index", "create", "update", "delete"].contains(&k.as_str()) =>
        {
            let meta = match meta {
                Value::Object(m) => m,
                Value::Null => Map::new(),
                _ => return Err(format!("the {k} action's metadata is not an object")),
            };
            Ok((k, meta))
        }
        (Some((k, _)), None) => Err(format!(
            "malformed action line: expected one of [create, delete, index, update] but found [{k}]"
        )),
        _ => Err("malformed action line: expected one action".into()),
    }
}

/// One document: mapped into a record, or passed on as sent when it is not a JSON object,
/// so the decoder makes it a dead letter with its reason.
fn document(shipped: &mut Shipped, doc: &[u8], index: &str) {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(doc) else {
        shipped.push_line(doc);
        return;
    };
    let mut r = Record::new(index);
    if let Some(t) = take(&mut o, &["@timestamp", "timestamp", "time", "ts"]) {
        r.time(t);
    }
    let message = match o.get("log") {
        Some(Value::String(_)) => take(&mut o, &["message", "log", "msg"]),
        _ => take(&mut o, &["message", "msg"]),
    };
    if let Some(m) = message {
        r.message(text(m));
    }
    let level = take(&mut o, &["level", "log.level"])
        .or_else(|| nested(&mut o, "log", "level"))
        .or_else(|| take(&mut o, &["log_level", "severity"]));
    if let Some(l) = level {
        r.level(l);
    }
    let source = take(&mut o, &["host.name"])
        .or_else(|| nested(&mut o, "host", "name"))
        .or_else(|| match o.get("host") {
            Some(Value::String(_)) => o.remove("host"),
            _ => None,
        })
        .or_else(|| take(&mut o, &["hostname", "source"]));
    if let Some(s) = source {
        r.source(text(s));
    }
    for (k, v) in o {
        r.attr(&k, v);
    }
    shipped.push(r);
}

fn take(o: &mut Map<String, Value>, keys: &[&str]) -> Option<Value> {
    keys.iter()
        .find_map(|k| o.remove(*k))
        .filter(|v| !v.is_null())
}

/// `o[outer][inner]`, removed; an `outer` object left empty goes too.
fn nested(o: &mut Map<String, Value>, outer: &str, inner: &str) -> Option<Value> {
    let Some(Value::Object(m)) = o.get_mut(outer) else {
        return None;
    };
    let v = m.remove(inner);
    if m.is_empty() {
        o.remove(outer);
    }
    v.filter(|v| !v.is_null())
}

impl Bulk {
    /// The bulk response: `took`, `errors`, and per item `status` 201 (a row of `logs`) or
    /// 400 with the dead letter's reason. When some record was rejected, each record's fate
    /// is found by decoding the records again here with `opts` (the stored request was
    /// decoded by the same code with the same options, so they agree; a replay with the
    /// same `Idempotency-Key` answers the same).
    /// `records` is `shipped.body` (which the caller may have taken to store it);
    /// `decoder_rejected` is how many of them the decoder stored as dead letters when that
    /// is known (embedded mode: the request's `rejected` less [`Shipped::rejected`]). When
    /// it is 0 every record is a row and nothing is decoded again. An item without an `_id`
    /// is answered `id_prefix` and its place in the request.
    pub fn response(
        &self,
        records: &[u8],
        opts: &DecodeOptions,
        took_ms: u64,
        decoder_rejected: Option<usize>,
        id_prefix: &str,
    ) -> Value {
        let mut decoder = RecordDecoder::new(0, opts);
        let fates: Vec<RecordFate> = if decoder_rejected == Some(0) {
            vec![RecordFate::Accepted; self.shipped.records]
        } else {
            records
                .split(|c| *c == b'\n')
                .take(self.shipped.records)
                .enumerate()
                .map(|(i, line)| {
                    decoder.record(line, format_args!("line {}", i + 1), None, Vec::new())
                })
                .collect()
        };
        let decoded = decoder.finish();
        let reasons = decoded
            .dead_letters
            .column_by_name("reason")
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>());
        let mut fates = fates.into_iter();
        let mut decoder_rejects = 0;
        let mut own_rejects = self.shipped.rejected.iter();
        let mut errors = false;
        let items: Vec<Value> = self
            .items
            .iter()
            .enumerate()
            .map(|(seq, item)| {
                let id = item
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("{id_prefix}{seq}"));
                let rejected = if item.stored_as_row_candidate {
                    match fates.next() {
                        Some(RecordFate::Rejected) => {
                            let reason = reasons
                                .filter(|r| decoder_rejects < r.len())
                                .map(|r| r.value(decoder_rejects).to_string())
                                .unwrap_or_default();
                            decoder_rejects += 1;
                            Some(reason)
                        }
                        _ => None,
                    }
                } else {
                    Some(
                        own_rejects
                            .next()
                            .map(|r| r.reason.clone())
                            .unwrap_or_default(),
                    )
                };
                let result = match rejected {
                    None => json!({
                        "_index": item.index, "_id": id, "_version": 1, "result": "created",
                        "_shards": {"total": 1, "successful": 1, "failed": 0},
                        "_seq_no": seq, "_primary_term": 1, "status": 201,
                    }),
                    Some(reason) => {
                        errors = true;
                        json!({
                            "_index": item.index, "_id": id, "status": 400,
                            "error": {
                                "type": "document_parsing_exception",
                                "reason": format!("stored in dead_letters: {reason}"),
                            },
                        })
                    }
                };
                json!({ item.action.clone(): result })
            })
            .collect();
        json!({ "took": took_ms, "errors": errors, "items": items })
    }
}
