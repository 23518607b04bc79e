use std::path::PathBuf;

use prost::Message;
use serde_json::{Value, json};

use super::*;

fn lines(s: &Shipped) -> Vec<Value> {
    s.body
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON record"))
        .collect()
}

fn kv(key: &str, v: otlp::Any) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.into(),
        value: Some(otlp::AnyValue { value: Some(v) }),
    }
}

/// An OTLP request with every kind of value (the fuzzer's protobuf seed too).
pub(crate) fn otlp_request() -> otlp::ExportLogsServiceRequest {
    use otlp::*;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Any::String("svc".into())),
                    kv("host.name", Any::String("h1".into())),
                ],
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "lib".into(),
                    ..Default::default()
                }),
                log_records: vec![LogRecord {
                    time_unix_nano: 1_796_619_600_000_000_001,
                    severity_number: 13,
                    severity_text: "custom".into(),
                    body: Some(AnyValue {
                        value: Some(Any::Kvlist(KeyValueList {
                            values: vec![kv("k", Any::Int(7)), kv("b", Any::Bytes(vec![1, 2]))],
                        })),
                    }),
                    attributes: vec![kv("level", Any::Double(1.5)), kv("ts", Any::Bool(true))],
                    trace_id: vec![0xab; 16],
                    span_id: vec![0x01; 8],
                    ..Default::default()
                }],
            }],
        }],
    }
}

#[test]
fn otlp_protobuf_and_json_map_alike() {
    let req = otlp_request();
    let proto = otlp::from_protobuf(&req.encode_to_vec(), "t").expect("decodes");
    let json_body = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "svc"}},
            {"key": "host.name", "value": {"stringValue": "h1"}}]},
        "scopeLogs": [{"scope": {"name": "lib"}, "logRecords": [{
            "timeUnixNano": "1796619600000000001", "severityNumber": "SEVERITY_NUMBER_WARN",
            "severityText": "custom",
            "body": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": 7}},
                                                 {"key": "b", "value": {"bytesValue": "AQI="}}]}},
            "attributes": [{"key": "level", "value": {"doubleValue": 1.5}},
                           {"key": "ts", "value": {"boolValue": true}}],
            "traceId": "abababababababababababababababab", "spanId": "0101010101010101"}]}]}]});
    assert!(otlp::is_otlp_json(json_body.to_string().as_bytes()));
    assert!(!otlp::is_otlp_json(br#"{"message":"resourceLogs"}"#));
    let from_json = otlp::from_json(json_body.to_string().as_bytes(), "t").expect("decodes");
    assert_eq!(proto.body, from_json.body, "one mapping for both encodings");
    assert_eq!(
        lines(&proto),
        vec![json!({
            "timestamp": "2026-12-07T05:00:00.000000001Z", "level": "WARN", "source": "h1",
            "topic": "t", "message": r#"{"b":"AQI=","k":7}"#,
            "service.name": "svc", "host.name": "h1", "scope.name": "lib",
            "severity_text": "custom", "_level": 1.5, "ts": true,
            "trace_id": "abababababababababababababababab", "span_id": "0101010101010101",
        })]
    );
    // Through the decoder: the attribute `ts` stays an attribute.
    let opts = crate::ingest::DecodeOptions::default();
    let d = crate::ingest::decode_body(&proto.body, 0, &opts);
    assert_eq!((d.accepted(), d.rejected()), (1, 0));
    assert!(otlp::from_protobuf(b"\xff\xff", "t").is_err());
    assert!(
        otlp::from_json(
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"nope":1}}]}]}]}"#,
            "t"
        )
        .is_err()
    );
}

#[test]
fn otlp_response_reports_rejections() {
    let r =
        otlp::ExportLogsServiceResponse::decode(otlp::response(2, true).as_slice()).expect("pb");
    assert_eq!(r.partial_success.map(|p| p.rejected_log_records), Some(2));
    assert!(otlp::response(0, true).is_empty());
    assert_eq!(otlp::response(0, false), b"{}");
}

/// The snappy protobuf push the integration test posts (tests/clients/loki_push.pb.snappy),
/// built here from the same messages the server decodes, and decoded back.
fn loki_fixture() -> Vec<u8> {
    use loki::*;
    let req = PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{job="promtail", host="loki-proto", path="/var/log/a \"b\".log"}"#.into(),
            entries: vec![
                EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: 1_796_619_600,
                        nanos: 1_000,
                    }),
                    line: "first \"quoted\" line".into(),
                    structured_metadata: vec![],
                },
                EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: 1_796_619_601,
                        nanos: 0,
                    }),
                    line: "second line".into(),
                    structured_metadata: vec![
                        LabelPairAdapter {
                            name: "trace_id".into(),
                            value: "t-1".into(),
                        },
                        LabelPairAdapter {
                            name: "level".into(),
                            value: "error".into(),
                        },
                    ],
                },
            ],
        }],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy")
}

#[test]
fn loki_snappy_protobuf_round_trip_matches_the_fixture() {
    let built = loki_fixture();
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/loki_push.pb.snappy");
    if std::env::var_os("LOGSPHERE_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, &built).expect("write fixture");
    }
    let fixture = std::fs::read(&path).expect("fixture (LOGSPHERE_WRITE_FIXTURES=1 writes it)");
    assert_eq!(
        fixture, built,
        "the fixture is what these messages encode to"
    );
    let shipped = loki::from_snappy_protobuf(&fixture, "logs", 1 << 20).expect("decodes");
    let err = loki::from_snappy_protobuf(&fixture, "logs", 10).expect_err("over the limit");
    assert!(err.contains("max_body_bytes"), "{err}");
    assert_eq!(
        lines(&shipped),
        vec![
            json!({"timestamp": "2026-12-07T05:00:00.000001Z", "level": null, "message": "first \"quoted\" line",
                   "source": "loki-proto", "topic": "logs", "job": "promtail", "path": "/var/log/a \"b\".log"}),
            json!({"timestamp": "2026-12-07T05:00:01Z", "level": "error", "message": "second line",
                   "source": "loki-proto", "topic": "logs", "job": "promtail", "path": "/var/log/a \"b\".log",
                   "trace_id": "t-1"}),
        ]
    );
    assert!(loki::from_snappy_protobuf(b"plain", "logs", 1 << 20).is_err());
}

#[test]
fn loki_labels_parse_with_escapes_and_refuse_garbage() {
    assert_eq!(
        loki::parse_labels(r#"{a="x", b="y \"q\" \\ z",c="",}"#).expect("parses"),
        vec![
            ("a".to_string(), "x".to_string()),
            ("b".to_string(), r#"y "q" \ z"#.to_string()),
            ("c".to_string(), String::new()),
        ]
    );
    assert_eq!(loki::parse_labels("{}").expect("empty"), vec![]);
    for bad in ["a=\"x\"", "{a=x}", "{a=\"x}", "{=\"x\"}"] {
        assert!(loki::parse_labels(bad).is_err(), "{bad}");
    }
}

#[test]
fn bulk_maps_ecs_and_fluent_bit_documents() {
    let body = b"{\"index\":{\"_index\":\"fb\"}}\n{\"@timestamp\":\"2026-12-07T10:00:00Z\",\"log\":\"line\",\"host\":\"h\",\"topic\":\"t\"}\n\
{\"create\":{}}\n{\"message\":\"m\",\"log.level\":\"warn\",\"host.name\":\"h2\",\"log\":{\"file\":{\"path\":\"/x\"}}}\n";
    let bulk = bulk::parse(body, Some("url-index"), "logs").expect("parses");
    assert_eq!(
        lines(&bulk.shipped),
        vec![
            json!({"timestamp": "2026-12-07T10:00:00Z", "level": null, "message": "line", "source": "h",
                   "topic": "fb", "_topic": "t"}),
            json!({"timestamp": null, "level": "warn", "message": "m", "source": "h2",
                   "topic": "url-index", "log": {"file": {"path": "/x"}}}),
        ]
    );
    assert!(
        bulk::parse(b"{\"index\":{}}\n", None, "logs").is_err(),
        "no document"
    );
    assert!(bulk::parse(b"\n\n", None, "logs").is_err(), "no actions");
}
