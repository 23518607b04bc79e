//! OTLP/HTTP logs: an `ExportLogsServiceRequest` as protobuf (`application/x-protobuf`) or
//! as OTLP JSON (a top-level `resourceLogs`), and the `ExportLogsServiceResponse` answer.
//!
//! The messages are the few of `opentelemetry/proto/{collector/logs,logs,common,resource}/v1`
//! that logs use, written by hand for prost (the `opentelemetry-proto` crate would bring
//! tonic along). Field numbers are the proto files'.
//!
//! Mapping: `timeUnixNano` (else `observedTimeUnixNano`, else the ingest time) → timestamp;
//! `severityText` when it names a level, else `severityNumber` (1–4 TRACE … 21–24 CRITICAL)
//! → level; resource attribute `host.name`, else `service.name` → source; body → message (a
//! string as is, any other value as JSON); resource, scope and record attributes (in that
//! order, the later winning), `trace_id`, `span_id` (hex), `scope.name`, `scope.version`,
//! `event_name` and an unused `severity_text` → attributes.

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value};

use super::{Record, Shipped, hex, text};

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

/// `opentelemetry.proto.logs.v1.ResourceLogs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

/// `opentelemetry.proto.resource.v1.Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.logs.v1.ScopeLogs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// `opentelemetry.proto.common.v1.InstrumentationScope`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.logs.v1.LogRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    #[prost(string, tag = "3")]
    pub severity_text: String,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed32, tag = "8")]
    pub flags: u32,
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "12")]
    pub event_name: String,
}

/// `opentelemetry.proto.common.v1.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `opentelemetry.proto.common.v1.AnyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(oneof = "Any", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Any>,
}

/// The `value` oneof of `AnyValue`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Any {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    Kvlist(KeyValueList),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

/// `opentelemetry.proto.common.v1.ArrayValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

/// `opentelemetry.proto.common.v1.KeyValueList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

/// `opentelemetry.proto.collector.logs.v1.ExportLogsPartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportLogsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// Whether a JSON body is OTLP rather than LogSphere's own JSON: an object whose first key
/// is `resourceLogs` (checked without parsing the body).
pub fn is_otlp_json(body: &[u8]) -> bool {
    let rest = body.trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b"{") else {
        return false;
    };
    let rest = rest.trim_ascii_start();
    rest.starts_with(b"\"resourceLogs\"") || rest.starts_with(b"\"resource_logs\"")
}

/// Reads a protobuf `ExportLogsServiceRequest`.
pub fn from_protobuf(body: &[u8], topic: &str) -> Result<Shipped, String> {
    let req = ExportLogsServiceRequest::decode(body)
        .map_err(|e| format!("body is not a protobuf ExportLogsServiceRequest: {e}"))?;
    Ok(convert(req, topic))
}

/// Reads an OTLP JSON `ExportLogsServiceRequest`.
pub fn from_json(body: &[u8], topic: &str) -> Result<Shipped, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not valid OTLP JSON: {e}"))?;
    let req = json::request(&v)
        .map_err(|e| format!("body is not an OTLP ExportLogsServiceRequest: {e}"))?;
    Ok(convert(req, topic))
}

/// The success answer; `rejected` records went to `dead_letters`.
pub fn response(rejected: usize, protobuf: bool) -> Vec<u8> {
    let partial = (rejected > 0).then(|| ExportLogsPartialSuccess {
        rejected_log_records: rejected as i64,
        error_message: format!(
            "{rejected} log records could not be stored as rows; they are in dead_letters"
        ),
    });
    if protobuf {
        ExportLogsServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec()
    } else {
        let body = match partial {
            None => serde_json::json!({}),
            Some(p) => serde_json::json!({"partialSuccess": {
                "rejectedLogRecords": p.rejected_log_records.to_string(),
                "errorMessage": p.error_message,
            }}),
        };
        body.to_string().into_bytes()
    }
}

fn convert(req: ExportLogsServiceRequest, topic: &str) -> Shipped {
    let mut out = Shipped::default();
    for rl in req.resource_logs {
        let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
        let resource: Vec<(String, Value)> = resource.into_iter().map(kv).collect();
        let source = ["host.name", "service.name"]
            .iter()
            .find_map(|k| resource.iter().find(|(rk, _)| rk == k))
            .map(|(_, v)| text(v.clone()))
            .unwrap_or_default();
        for sl in rl.scope_logs {
            let scope = sl.scope.unwrap_or_default();
            let scope_attrs: Vec<(String, Value)> = scope.attributes.into_iter().map(kv).collect();
            for lr in sl.log_records {
                let mut r = Record::new(topic);
                for (k, v) in resource.iter().chain(&scope_attrs) {
                    r.attr(k, v.clone());
                }
                if !scope.name.is_empty() {
                    r.attr("scope.name", Value::String(scope.name.clone()));
                }
                if !scope.version.is_empty() {
                    r.attr("scope.version", Value::String(scope.version.clone()));
                }
                record(&mut r, lr);
                r.source(source.clone());
                out.push(r);
            }
        }
    }
    out
}

fn record(r: &mut Record, lr: LogRecord) {
    let ns = if lr.time_unix_nano != 0 {
        lr.time_unix_nano
    } else {
        lr.observed_time_unix_nano
    };
    if ns != 0 {
        r.time_ns(i64::try_from(ns).unwrap_or(i64::MAX));
    }
    let text_names_level = crate::ingest::level::level_by_name(lr.severity_text.trim()).is_some();
    match severity_name(lr.severity_number) {
        Some(name) if !text_names_level => {
            r.level(Value::String(name.into()));
            if !lr.severity_text.is_empty() {
                r.attr("severity_text", Value::String(lr.severity_text));
            }
        }
        _ if !lr.severity_text.is_empty() => r.level(Value::String(lr.severity_text)),
        _ => {}
    }
    for (k, v) in lr.attributes.into_iter().map(kv) {
        r.attr(&k, v);
    }
    if !lr.trace_id.is_empty() {
        r.attr("trace_id", Value::String(hex(&lr.trace_id)));
    }
    if !lr.span_id.is_empty() {
        r.attr("span_id", Value::String(hex(&lr.span_id)));
    }
    if !lr.event_name.is_empty() {
        r.attr("event_name", Value::String(lr.event_name));
    }
    r.message(lr.body.map(any).map(text).unwrap_or_default());
}

/// OTLP severity numbers: 1–4 TRACE, 5–8 DEBUG, 9–12 INFO, 13–16 WARN, 17–20 ERROR,
/// 21–24 FATAL (CRITICAL here); 0 is unspecified.
fn severity_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "CRITICAL",
        _ => return None,
    })
}

fn kv(kv: KeyValue) -> (String, Value) {
    (kv.key, kv.value.map(any).unwrap_or(Value::Null))
}

/// An `AnyValue` as JSON: bytes as base64, as OTLP JSON writes them.
fn any(v: AnyValue) -> Value {
    match v.value {
        None => Value::Null,
        Some(Any::String(s)) => Value::String(s),
        Some(Any::Bool(b)) => Value::Bool(b),
        Some(Any::Int(i)) => Value::from(i),
        Some(Any::Double(d)) => serde_json::Number::from_f64(d)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(d.to_string())),
        Some(Any::Array(a)) => Value::Array(a.values.into_iter().map(any).collect()),
        Some(Any::Kvlist(l)) => Value::Object(l.values.into_iter().map(kv).collect::<Map<_, _>>()),
        Some(Any::Bytes(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// OTLP JSON (the proto3 JSON mapping with OTLP's exceptions: hex trace and span ids,
/// integer enums) read into the protobuf messages, so both encodings share one mapping.
/// Field names are lowerCamelCase; the proto names (`resource_logs`) are accepted too.
mod json {
    use base64::Engine as _;
    use serde_json::Value;

    use super::*;

    type R<T> = Result<T, String>;

    /// `obj[camel]` or `obj[snake]`.
    fn get<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
        v.get(camel)
            .or_else(|| v.get(snake))
            .filter(|v| !v.is_null())
    }

    fn list<'a>(v: &'a Value, camel: &str, snake: &str) -> R<&'a [Value]> {
        match get(v, camel, snake) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(format!("{camel} must be an array")),
        }
    }

    fn string(v: &Value, camel: &str, snake: &str) -> R<String> {
        match get(v, camel, snake) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("{camel} must be a string")),
        }
    }

    /// A 64-bit integer: a JSON number or a decimal string.
    fn int(v: &Value, camel: &str, snake: &str) -> R<i64> {
        match get(v, camel, snake) {
            None => Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
                .ok_or_else(|| format!("{camel} must be an integer")),
            Some(Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .or_else(|_| {
                    s.trim()
                        .parse::<u64>()
                        .map(|u| i64::try_from(u).unwrap_or(i64::MAX))
                })
                .map_err(|_| format!("{camel} must be an integer, got {s:?}")),
            Some(_) => Err(format!("{camel} must be an integer")),
        }
    }

    fn hex_id(v: &Value, camel: &str, snake: &str) -> R<Vec<u8>> {
        let s = string(v, camel, snake)?;
        if s.len() % 2 != 0 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{camel} must be hex, got {s:?}"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect()
    }

    pub(super) fn request(v: &Value) -> R<ExportLogsServiceRequest> {
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        let resource_logs = list(v, "resourceLogs", "resource_logs")?
            .iter()
            .map(resource_logs)
            .collect::<R<_>>()?;
        Ok(ExportLogsServiceRequest { resource_logs })
    }

    fn resource_logs(v: &Value) -> R<ResourceLogs> {
        let resource = match get(v, "resource", "resource") {
            None => None,
            Some(r) => Some(Resource {
                attributes: attributes(r)?,
            }),
        };
        let scope_logs = list(v, "scopeLogs", "scope_logs")?
            .iter()
            .map(scope_logs)
            .collect::<R<_>>()?;
        Ok(ResourceLogs {
            resource,
            scope_logs,
        })
    }

    fn scope_logs(v: &Value) -> R<ScopeLogs> {
        let scope = match get(v, "scope", "scope") {
            None => None,
            Some(s) => Some(InstrumentationScope {
                name: string(s, "name", "name")?,
                version: string(s, "version", "version")?,
                attributes: attributes(s)?,
            }),
        };
        let log_records = list(v, "logRecords", "log_records")?
            .iter()
            .map(log_record)
            .collect::<R<_>>()?;
        Ok(ScopeLogs { scope, log_records })
    }

    fn log_record(v: &Value) -> R<LogRecord> {
        Ok(LogRecord {
            time_unix_nano: int(v, "timeUnixNano", "time_unix_nano")? as u64,
            observed_time_unix_nano: int(v, "observedTimeUnixNano", "observed_time_unix_nano")?
                as u64,
            severity_number: severity_number(v)?,
            severity_text: string(v, "severityText", "severity_text")?,
            body: get(v, "body", "body").map(any_value).transpose()?,
            attributes: attributes(v)?,
            flags: int(v, "flags", "flags")? as u32,
            trace_id: hex_id(v, "traceId", "trace_id")?,
            span_id: hex_id(v, "spanId", "span_id")?,
            event_name: string(v, "eventName", "event_name")?,
        })
    }

    /// An integer, or the enum's name (`SEVERITY_NUMBER_WARN`), which some senders write.
    fn severity_number(v: &Value) -> R<i32> {
        const NAMES: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
        if let Some(Value::String(s)) = get(v, "severityNumber", "severity_number")
            && let Some(rest) = s.strip_prefix("SEVERITY_NUMBER_")
        {
            let (name, n) = rest.split_at(
                rest.find(|c: char| c.is_ascii_digit())
                    .unwrap_or(rest.len()),
            );
            let base = NAMES.iter().position(|x| *x == name);
            let step = if n.is_empty() {
                Some(1)
            } else {
                n.parse::<i32>().ok()
            };
            return match (base, step) {
                (Some(b), Some(s)) if (1..=4).contains(&s) => Ok(b as i32 * 4 + s),
                _ if rest == "UNSPECIFIED" => Ok(0),
                _ => Err(format!("severityNumber {s:?} is not a severity")),
            };
        }
        let n = int(v, "severityNumber", "severity_number")?;
        i32::try_from(n).map_err(|_| format!("severityNumber {n} is out of range"))
    }

    fn attributes(v: &Value) -> R<Vec<KeyValue>> {
        list(v, "attributes", "attributes")?
            .iter()
            .map(key_value)
            .collect()
    }

    fn key_value(v: &Value) -> R<KeyValue> {
        Ok(KeyValue {
            key: string(v, "key", "key")?,
            value: get(v, "value", "value").map(any_value).transpose()?,
        })
    }

    fn any_value(v: &Value) -> R<AnyValue> {
        let Value::Object(o) = v else {
            return Err(format!("an AnyValue must be an object, got {v}"));
        };
        let Some((k, x)) = o.iter().next() else {
            return Ok(AnyValue { value: None });
        };
        let value = match (k.as_str(), x) {
            ("stringValue" | "string_value", Value::String(s)) => Any::String(s.clone()),
            ("boolValue" | "bool_value", Value::Bool(b)) => Any::Bool(*b),
            ("intValue" | "int_value", _) => Any::Int(int(v, k, k)?),
            ("doubleValue" | "double_value", Value::Number(n)) => {
                Any::Double(n.as_f64().unwrap_or_default())
            }
            ("doubleValue" | "double_value", Value::String(s)) => Any::Double(
                s.parse()
                    .map_err(|_| format!("doubleValue {s:?} is not a number"))?,
            ),
            ("arrayValue" | "array_value", a) => Any::Array(ArrayValue {
                values: list(a, "values", "values")?
                    .iter()
                    .map(any_value)
                    .collect::<R<_>>()?,
            }),
            ("kvlistValue" | "kvlist_value", l) => Any::Kvlist(KeyValueList {
                values: list(l, "values", "values")?
                    .iter()
                    .map(key_value)
                    .collect::<R<_>>()?,
            }),
            ("bytesValue" | "bytes_value", Value::String(s)) => Any::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("bytesValue is not base64: {e}"))?,
            ),
            (k, x) => return Err(format!("unknown AnyValue {k:?}: {x}")),
        };
        Ok(AnyValue { value: Some(value) })
    }
}
