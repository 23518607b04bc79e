use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use serde_json::json;

use super::*;

fn opts() -> DecodeOptions {
    DecodeOptions {
        max_record_bytes: 1000,
        ..Default::default()
    }
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::StringArray {
    b.column_by_name(name).expect("column").as_string::<i32>()
}

#[test]
fn ndjson_with_aliases() {
    let body = br#"{"ts":"2026-11-24T13:00:00Z","severity":"warning","msg":"disk","host":"web-1","extra":1}
{"@timestamp":1700000000123,"level":"ERROR","message":"boom","source":"api","topic":"logs.error"}

"#;
    let d = decode_body(body, 42, &opts());
    assert_eq!((d.accepted(), d.rejected()), (2, 0));
    let ts = d.logs.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_795_525_200_000_000);
    assert_eq!(ts.value(1), 1_700_000_000_123_000);
    assert_eq!(col(&d.logs, "log_level").value(0), "WARN");
    assert_eq!(col(&d.logs, "log_level").value(1), "ERROR");
    assert_eq!(col(&d.logs, "source").value(0), "web-1");
    assert_eq!(col(&d.logs, "topic").value(0), "logs");
    assert_eq!(col(&d.logs, "topic").value(1), "logs.error");
    let attrs: serde_json::Value =
        serde_json::from_str(col(&d.logs, "attributes").value(0)).unwrap();
    assert_eq!(attrs, json!({"extra": 1, "raw_level": "warning"}));
    let attrs1: serde_json::Value =
        serde_json::from_str(col(&d.logs, "attributes").value(1)).unwrap();
    assert_eq!(attrs1, json!({}), "ERROR is already normalised");
}

#[test]
fn json_array_and_missing_timestamp() {
    let d = decode_body(
        br#"[{"message":"a"}, {"message":"b","level":"fatal"}, 3]"#,
        77,
        &opts(),
    );
    assert_eq!((d.accepted(), d.rejected()), (2, 1));
    let ts = d.logs.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 77);
    assert_eq!(col(&d.logs, "log_level").value(1), "CRITICAL");
    assert!(
        col(&d.dead_letters, "reason")
            .value(0)
            .contains("number, not an object")
    );
    assert!(
        col(&d.dead_letters, "origin")
            .value(0)
            .contains("array element 2")
    );
}

#[test]
fn malformed_records_become_dead_letters() {
    let mut body = Vec::new();
    body.extend_from_slice(b"not json\n");
    body.extend_from_slice(b"{\"ts\":\"yesterday\"}\n");
    body.extend_from_slice(b"{\"message\":\"\xff\xfe\"}\n");
    body.extend_from_slice(&vec![b'x'; 2000]);
    body.extend_from_slice(b"\n{\"message\":\"fine\"}\n");
    let d = decode_body(&body, 1, &opts());
    assert_eq!((d.accepted(), d.rejected()), (1, 4));
    let reasons = col(&d.dead_letters, "reason");
    assert!(
        reasons.value(0).contains("not valid JSON"),
        "{}",
        reasons.value(0)
    );
    assert!(
        reasons.value(1).contains("\"yesterday\" does not parse"),
        "{}",
        reasons.value(1)
    );
    assert!(reasons.value(2).contains("UTF-8"), "{}", reasons.value(2));
    assert!(
        reasons.value(3).contains("2000 bytes"),
        "{}",
        reasons.value(3)
    );
    let raw = d
        .dead_letters
        .column_by_name("raw")
        .unwrap()
        .as_binary::<i32>();
    assert_eq!(raw.value(0), b"not json");
    assert_eq!(raw.value(2), b"{\"message\":\"\xff\xfe\"}");
    assert_eq!(raw.value(3).len(), 2000.min(DEAD_LETTER_RAW_KEEP));
    assert!(col(&d.dead_letters, "origin").value(1).ends_with("line 2"));
}

#[test]
fn empty_body_has_no_records() {
    let d = decode_body(b"  \n ", 1, &opts());
    assert_eq!((d.accepted(), d.rejected()), (0, 0));
    assert_eq!(d.logs.column(0).len(), 0);
}

#[test]
fn timestamps_in_every_unit() {
    let us = |v: serde_json::Value| parse_timestamp(&v).unwrap();
    assert_eq!(us(json!(1_700_000_000)), 1_700_000_000_000_000);
    assert_eq!(us(json!(1_700_000_000.5)), 1_700_000_000_500_000);
    assert_eq!(us(json!(1_700_000_000_000u64)), 1_700_000_000_000_000);
    assert_eq!(us(json!(1_700_000_000_000_000u64)), 1_700_000_000_000_000);
    assert_eq!(
        us(json!(1_700_000_000_000_000_000u64)),
        1_700_000_000_000_000
    );
    assert_eq!(us(json!("1700000000")), 1_700_000_000_000_000);
    assert_eq!(
        us(json!("2023-11-14T22:13:20+00:00")),
        1_700_000_000_000_000
    );
    assert_eq!(
        us(json!("2023-11-14 23:13:20+01:00")),
        1_700_000_000_000_000
    );
    assert_eq!(us(json!("2023-11-14 22:13:20")), 1_700_000_000_000_000);
    assert_eq!(us(json!("2023-11-14T22:13:20.25")), 1_700_000_000_250_000);
    assert!(parse_timestamp(&json!(true)).is_err());
}

#[test]
fn levels() {
    for (raw, want) in [
        (json!("warn"), "WARN"),
        (json!("Warning"), "WARN"),
        (json!("err"), "ERROR"),
        (json!("FATAL"), "CRITICAL"),
        (json!("notice"), "INFO"),
        (json!(3), "ERROR"),
        (json!(50), "ERROR"),
        (json!(60), "CRITICAL"),
        (json!("whatever"), "INFO"),
    ] {
        assert_eq!(normalize_level(&raw).0, want, "{raw}");
    }
    assert!(normalize_level(&json!("ERROR")).1);
    assert!(
        normalize_level(&json!("error")).1,
        "case alone is not worth keeping"
    );
    assert!(!normalize_level(&json!("err")).1);
}

#[test]
fn ndjson_starting_with_an_array_line_is_still_ndjson() {
    let d = decode_body(b"[1,2]\n{\"message\":\"ok\"}\n", 1, &opts());
    assert_eq!((d.accepted(), d.rejected()), (1, 1));
    let d = decode_body(
        b"[{\"message\":\"a\"},\n {\"message\":\"b\"}]\n",
        1,
        &opts(),
    );
    assert_eq!(
        (d.accepted(), d.rejected()),
        (2, 0),
        "a pretty-printed array stays an array"
    );
}

/// The Kafka source stamps each record with its message's time: a record without a
/// timestamp takes it as its time, so decoding the same message again gives the same row.
#[test]
fn each_record_keeps_the_ingest_time_it_was_decoded_with() {
    let opts = opts();
    let mut d = RecordDecoder::new(5, &opts);
    d.set_ingest_time(1_000);
    assert_eq!(
        d.record(br#"{"msg":"no time"}"#, "m0", None, Vec::new()),
        RecordFate::Accepted
    );
    d.set_ingest_time(2_000);
    assert_eq!(
        d.record(br#"{"msg":"timed","ts":3}"#, "m1", None, Vec::new()),
        RecordFate::Accepted
    );
    d.set_ingest_time(4_000);
    assert_eq!(
        d.record(b"not json", "m2", None, Vec::new()),
        RecordFate::Rejected
    );
    let out = d.finish();
    let times = |b: &RecordBatch, name: &str| -> Vec<i64> {
        let c = b.column_by_name(name).expect("column");
        c.as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    };
    assert_eq!(times(&out.logs, "ingest_time"), vec![1_000, 2_000]);
    assert_eq!(times(&out.logs, "timestamp")[0], 1_000);
    assert_eq!(times(&out.dead_letters, "ingest_time"), vec![4_000]);
}

#[test]
fn text_formats_store_every_line_and_dead_letter_only_bad_bytes() {
    let opts = DecodeOptions {
        format: Format::Auto,
        default_source: Some("shipper".into()),
        ..opts()
    };
    let mut body = b"<13>Oct  3 12:00:00 web-1 nginx[7]: started\r\n\
{\"msg\":\"json still works\",\"level\":\"warn\"}\n\
{not json at all\n\
level=error msg=\"quoted \\\"x\\\"\"\n\
just some words\n\n"
        .to_vec();
    body.extend_from_slice(b"bad \xff bytes\n");
    body.extend_from_slice(&[b'x'; 1001]);
    let d = decode_body(&body, 1_796_619_600_000_000, &opts);
    assert_eq!((d.accepted(), d.rejected()), (5, 2));
    let msg = col(&d.logs, "message");
    let src = col(&d.logs, "source");
    let lvl = col(&d.logs, "log_level");
    assert_eq!((msg.value(0), src.value(0)), ("started", "web-1"));
    assert_eq!(
        (msg.value(1), src.value(1), lvl.value(1)),
        ("json still works", "shipper", "WARN")
    );
    assert_eq!(
        (msg.value(2), col(&d.logs, "attributes").value(2)),
        ("{not json at all", "{}")
    );
    assert_eq!((msg.value(3), lvl.value(3)), ("quoted \"x\"", "ERROR"));
    assert_eq!((msg.value(4), src.value(4)), ("just some words", "shipper"));
    let reasons = col(&d.dead_letters, "reason");
    assert!(reasons.value(0).contains("UTF-8"), "{}", reasons.value(0));
    assert!(
        reasons.value(1).contains("over the limit"),
        "{}",
        reasons.value(1)
    );
}

#[test]
fn explicit_text_format_marks_lines_it_cannot_parse() {
    let opts = DecodeOptions {
        format: Format::Syslog,
        ..opts()
    };
    let d = decode_body(b"[1,2]\nnot syslog\n", 5, &opts);
    assert_eq!(
        (d.accepted(), d.rejected()),
        (2, 0),
        "a [ body is lines, not an array"
    );
    assert_eq!(col(&d.logs, "message").value(1), "not syslog");
    assert_eq!(col(&d.logs, "attributes").value(1), r#"{"unparsed":true}"#);
    let ts = d.logs.column(0).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(1), 5);
}

#[test]
fn record_decoder_parses_text_and_keeps_kafka_attributes() {
    let opts = DecodeOptions {
        format: Format::Auto,
        ..opts()
    };
    let mut dec = RecordDecoder::new(0, &opts);
    let fate = dec.record(
        b"level=info msg=hi\n",
        "p0 offset 1",
        Some("raw"),
        vec![("kafka_offset".into(), json!(1))],
    );
    assert_eq!(fate, RecordFate::Accepted);
    let d = dec.finish();
    assert_eq!(col(&d.logs, "topic").value(0), "raw");
    assert_eq!(col(&d.logs, "message").value(0), "hi");
    assert_eq!(col(&d.logs, "attributes").value(0), r#"{"kafka_offset":1}"#);
}

/// Decodes `records` through the borrowed-fields path and through the `Value` path the
/// row decoder used before, with the same options and extras: every column must agree.
fn both_paths(records: &[String], forced_topic: Option<&str>) -> (Decoded, Decoded) {
    let opts = DecodeOptions {
        default_source: Some("fallback-host".into()),
        ..opts()
    };
    let extra = vec![
        ("kafka_offset".to_string(), json!(17)),
        ("kafka_key".to_string(), json!("k\"1")),
    ];
    let mut fast = Builders::new(9, &opts);
    let mut slow = Builders::new(9, &opts);
    for (i, r) in records.iter().enumerate() {
        for b in [&mut fast, &mut slow] {
            b.forced_topic = forced_topic.map(str::to_string);
            b.extra = extra.clone();
        }
        fast.record(r.as_bytes(), &i);
        let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(r) else {
            panic!("test records are JSON objects: {r}");
        };
        if let Err(reason) = slow.row(obj) {
            slow.dead(r.as_bytes(), &i, reason);
        }
    }
    (fast.finish(), slow.finish())
}

fn assert_same(records: &[String], forced_topic: Option<&str>) {
    let (fast, slow) = both_paths(records, forced_topic);
    assert_eq!(fast.logs, slow.logs, "logs differ for {records:?}");
    assert_eq!(
        fast.dead_letters, slow.dead_letters,
        "dead letters differ for {records:?}"
    );
}

#[test]
fn borrowed_fields_decode_exactly_as_values_did() {
    let cases = [
        r#"{"ts":"2026-11-24T13:00:00Z","level":"warning","msg":"disk","host":"web-1","n":1}"#,
        r#"{"b":2,"a":1,"b":3,"a":{"z":1,"y":[1.50,2e3,"x"]}}"#,
        r#"{"message":"tab\there \u00e9 \/ \"q\"","key\\with\"escapes":"v\u0001","é":"ü"}"#,
        r#"{"n":-0,"m":0,"big":123456789012345678901234,"f":1.0,"e":1E2,"neg":-12}"#,
        r#"{"level":3,"timestamp":1700000000.5,"source":null,"message":null,"topic":"t"}"#,
        r#"{"level":null,"ts":null,"raw_level":"kept?","kafka_offset":"mine","message":42}"#,
        r#"{"severity":"ERROR","time":"2026-11-24 13:00:00","hostname":{"a":1},"msg":[1, 2]}"#,
        r#"{ "spaced" : [ 1 , { "b" : 2 , "a" : 1 } ] , "t" : true , "f" : false }"#,
        r#"{"ts":"not a time","message":"dead"}"#,
        r#"{"ts":true}"#,
        r#"{"level":"Warn","source":"","topic":7}"#,
        r#"{}"#,
        r#"{"":"empty key","\u0000":"nul key"}"#,
    ];
    let records: Vec<String> = cases.iter().map(|c| c.to_string()).collect();
    assert_same(&records, None);
    assert_same(&records, Some("forced.topic"));
}

/// Random objects (seeded): nesting, escapes, duplicates, every number form.
#[test]
fn borrowed_fields_match_values_on_random_objects() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let keys = [
        "ts",
        "level",
        "msg",
        "message",
        "host",
        "source",
        "topic",
        "a",
        "b",
        "é",
        "k\\\"",
        "raw_level",
    ];
    let scalars = [
        "1",
        "-1",
        "0",
        "-0",
        "1.5",
        "1e3",
        "99999999999999999999",
        "true",
        "null",
        "\"plain\"",
        "\"esc\\n\\u00e9\"",
        "\"WARN\"",
        "\"2026-11-24T13:00:00Z\"",
        "1700000000",
    ];
    let mut records = Vec::new();
    for _ in 0..2000 {
        let fields = 1 + next(8);
        let mut r = String::from("{");
        for i in 0..fields {
            if i > 0 {
                r.push(',');
            }
            r.push_str(&format!("\"{}\":", keys[next(keys.len() as u64) as usize]));
            match next(5) {
                0 => r.push_str(&format!(
                    "[{},{{\"y\":{},\"x\":1}}]",
                    scalars[next(scalars.len() as u64) as usize],
                    scalars[next(scalars.len() as u64) as usize]
                )),
                _ => r.push_str(scalars[next(scalars.len() as u64) as usize]),
            }
        }
        r.push('}');
        records.push(r);
    }
    assert_same(&records, None);
}

/// What cluster mode produces of a request (one message per record, with its provenance) is
/// decoded by the consuming node — whatever its own `kafka.format` — into the rows and dead
/// letters the receiving node would have stored itself, the dead letters named after the
/// request and then the Kafka message.
#[test]
fn produced_records_decode_where_consumed_as_where_received() {
    let requests = [
        (
            &b"{\"message\":\"a\",\"level\":\"warn\"}\n\n{\"timestamp\":\"never\"}\nnot json\n"[..],
            Format::Json,
        ),
        (
            &b"[{\"message\":\"b\"},{\"message\":\"c\",\"ts\":\"x\"}]"[..],
            Format::Json,
        ),
        (
            &b"<11>Dec  7 10:00:00 h1 app[1]: one\n<13>Dec  7 10:00:01 h1 app: two\n"[..],
            Format::Syslog,
        ),
    ];
    for (body, format) in requests {
        let received = DecodeOptions {
            origin: "_bulk http 10.0.0.7:5123".into(),
            format,
            default_source: Some("from-url".into()),
            rejected: vec![Rejected {
                raw: b"{\"delete\":{}}".to_vec(),
                position: "_bulk line 9".into(),
                reason: "delete is not supported".into(),
            }],
            ..opts()
        };
        let embedded = decode_body(body, 7, &received);
        for consumed_as in [Format::Json, Format::Auto, Format::Syslog] {
            let consumer = DecodeOptions {
                origin: "kafka".into(),
                format: consumed_as,
                ..opts()
            };
            let mut d = RecordDecoder::new(7, &consumer);
            for (i, (raw, p)) in produced_records(body, &received).into_iter().enumerate() {
                d.produced_record(raw, p, format_args!("t/0 offset {i}"), None, Vec::new());
            }
            let cluster = d.finish();
            let what = format!("{format} request consumed as {consumed_as}");
            assert_eq!(cluster.logs, embedded.logs, "{what}");
            assert_eq!(
                col(&cluster.dead_letters, "reason"),
                col(&embedded.dead_letters, "reason"),
                "{what}"
            );
            let origins = |b: &RecordBatch| -> Vec<String> {
                col(b, "origin")
                    .iter()
                    .flatten()
                    .map(str::to_string)
                    .collect()
            };
            let want: Vec<String> = origins(&embedded.dead_letters);
            let got = origins(&cluster.dead_letters);
            assert_eq!(got.len(), want.len(), "{what}: {got:?}");
            for (got, want) in got.iter().zip(&want) {
                assert!(
                    got.starts_with(&format!("{want} via kafka t/0 offset ")),
                    "{what}: {got:?} for {want:?}"
                );
            }
        }
    }
}
