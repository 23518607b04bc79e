//! Every shipper path in cluster mode: two nodes on one ingest topic of several partitions;
//! the real clients of `tests/it/shippers.rs` (the OpenTelemetry Python SDK, elasticsearch-py,
//! rsyslogd fed by `logger`) and its hand-written requests (OTLP JSON, `_bulk` with every
//! action, Loki JSON and snappy protobuf, raw syslog frames) go to node A, retries to node B,
//! and everything is read back over SQL on B after A was SIGKILLed right after its last
//! answer. Each path answers after the brokers' acknowledgement, so what A answered is in
//! Kafka: A is set to hold what it consumes for a minute before writing it to Cassandra, so
//! A's partitions reach SQL only through B taking them over. The rows are those the
//! embedded tests assert, field by field, with the Kafka topic as `topic`.

use std::time::{Duration, Instant};

use logsphere_tests::services::unique_name;
use logsphere_tests::{Server, ServerOptions};
use serde_json::Value;

use super::idempotency::{PARTITIONS, topic_messages};
use super::{Names, SERIAL, create_topics, wait_for_count};
use crate::shippers::rows::{
    Row, check_es_client_rows, check_loki_json_rows, check_loki_protobuf_rows, check_otel_sdk_rows,
    check_otlp_json_rows, check_syslog_rows, dead_letter_reasons, one_dead_letter, query_rows,
};
use crate::shippers::send::{
    BULK_CHUNK, BULK_EVERY_ACTION, MAX_RECORD_BYTES, check_bulk_every_action_answer,
    loki_json_body, loki_protobuf_fixture, otel_ids, otlp_json_body, post, run_http_client,
    send_syslog, untimed,
};

/// Rows every path stores: the SDK's 3, OTLP JSON's 1, elasticsearch-py's 3, one of the
/// `_bulk` with every action, one of the Fluent Bit chunk, Loki JSON's 2 and protobuf's 2,
/// syslog's 4.
const ROWS: i64 = 17;
/// Dead letters: OTLP JSON's oversized record, elasticsearch-py's bad time, 4 of the `_bulk`
/// with every action, the chunk's bad time, Loki's bad time, syslog's oversized message.
const DEAD_LETTERS: i64 = 9;

/// A node of `names` on `topic`, with `[kafka]` keys added and syslog listeners when given.
fn node(
    names: &Names,
    id: &str,
    topic: &str,
    kafka_keys: &str,
    syslog: Option<(u16, u16)>,
) -> Server {
    let mut extra = format!("\n[http]\nmax_record_bytes = {MAX_RECORD_BYTES}\n");
    if let Some((tcp, udp)) = syslog {
        extra += &format!(
            "[syslog]\ntcp_listen = \"127.0.0.1:{tcp}\"\nudp_listen = \"127.0.0.1:{udp}\"\n\
             batch_ms = 50\n"
        );
    }
    let config = names.config(id, &[topic], &extra).replacen(
        "[kafka]\n",
        &format!("[kafka]\n{kafka_keys}\n"),
        1,
    );
    Server::start_with(ServerOptions {
        config: Some(config),
        env: Vec::new(),
    })
}

/// `rows` (read in cluster mode) as embedded mode stores them, to check them alike: the
/// Kafka coordinates the consumer adds dropped from `attributes`, and the shipper's topic
/// (an index; `logs` for OTLP, Loki and syslog), which cluster mode keeps in
/// `attributes.topic`, back in `topic`. Asserts first that the `topic` column is the
/// ingest topic and that each row names its Kafka partition and offset.
fn as_embedded(rows: Vec<Row>, ingest_topic: &str) -> Vec<Row> {
    rows.into_iter()
        .map(|(ts, level, source, topic, message, mut attrs)| {
            assert_eq!(topic, ingest_topic, "{message}: {attrs}");
            let map = attrs.as_object_mut().expect("attributes are an object");
            for kafka in ["kafka_partition", "kafka_offset"] {
                assert!(map.remove(kafka).is_some(), "{message}: no {kafka}");
            }
            map.remove("kafka_key");
            map.remove("kafka_timestamp_ms");
            let shipped_topic = match map.remove("topic") {
                Some(Value::String(t)) => t,
                _ => "logs".to_string(),
            };
            (ts, level, source, shipped_topic, message, attrs)
        })
        .collect()
}

/// The reasons in a `_bulk` answer's 400 items, without the `stored in dead_letters: `.
fn bulk_item_reasons(answer: &[u8]) -> Vec<String> {
    let answer: Value = serde_json::from_slice(answer).expect("_bulk answer is JSON");
    answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item.as_object().and_then(|o| o.values().next()))
        .filter_map(|r| r["error"]["reason"].as_str())
        .map(|r| r.trim_start_matches("stored in dead_letters: ").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipper_path_answered_by_a_killed_node_is_stored_once_through_the_other() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("shippers");
    create_topics(&names.brokers, &[&topic], PARTITIONS).await;
    let (tcp, udp) = (logsphere_tests::free_port(), logsphere_tests::free_port());
    // kafka.format stays json: the syslog lines say they are syslog.
    let mut a = node(&names, "a", &topic, "linger_ms = 60000", Some((tcp, udp)));
    let b = node(&names, "b", &topic, "", None);
    wait_for_count(
        &b,
        &format!("SELECT count(DISTINCT owner) FROM kafka_partitions WHERE topic = '{topic}'"),
        2,
        Duration::from_secs(90),
    )
    .await;

    // syslog has no answer: what A read is in Kafka once A produced it (batch_ms).
    let dir = tempfile::tempdir().expect("tempdir");
    let rsyslog = send_syslog(dir.path(), tcp, udp);
    let deadline = Instant::now() + Duration::from_secs(30);
    while topic_messages(&names.brokers, &topic) < 5 {
        assert!(
            Instant::now() < deadline,
            "syslog messages not produced:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(rsyslog);
    let metrics = ureq::get(&format!("{}/metrics", a.http_url()))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics");
    for line in [
        "logsphere_syslog_tcp_messages_total 4\n",
        "logsphere_syslog_udp_messages_total 1\n",
        "logsphere_syslog_store_failures_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // OTLP/HTTP from the SDK's protobuf and JSON exporters.
    let (trace_id, span_id) = otel_ids(&run_http_client(&a, "otel_logs.py", "otel ok"));
    // OTLP JSON with an Idempotency-Key, answered by A, retried on B: a replay.
    let otlp = otlp_json_body();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "otlp-1"),
    ];
    let first = post(&a, "/v1/logs", &headers, otlp.as_bytes());
    let again = post(&b, "/v1/logs", &headers, otlp.as_bytes());
    let answer: Value = serde_json::from_slice(&first.1).expect("OTLP JSON answer");
    assert_eq!((first.0, first.2.as_deref()), (200, None), "{answer}");
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "the consumers' dead letter is counted: {answer}"
    );
    assert_eq!(
        (again.0, again.1.as_slice(), again.2.as_deref()),
        (200, first.1.as_slice(), Some("true")),
        "B answers A's answer"
    );

    // Elasticsearch `_bulk`: elasticsearch-py (a 400 item among 201s), every action by hand,
    // and a Fluent Bit chunk without a key resent to B.
    run_http_client(&a, "es_bulk.py", "es ok");
    let every = post(
        &a,
        "/web/_bulk",
        &[("Idempotency-Key", "bulk-1")],
        BULK_EVERY_ACTION,
    );
    assert_eq!(every.0, 200, "{}", String::from_utf8_lossy(&every.1));
    check_bulk_every_action_answer(&serde_json::from_slice(&every.1).expect("JSON"));
    let chunk = post(&a, "/fb/_bulk", &[], BULK_CHUNK);
    let resent = post(&b, "/fb/_bulk", &[], BULK_CHUNK);
    assert_eq!((chunk.0, chunk.2.as_deref()), (200, None));
    assert_eq!(
        (resent.0, resent.2.as_deref()),
        (200, Some("true")),
        "the chunk resent to the other node is a replay"
    );
    assert_eq!(untimed(&chunk.1), untimed(&resent.1), "answered alike");

    // Loki push: JSON with a key, retried on B; snappy protobuf.
    let loki = loki_json_body();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "loki-1"),
    ];
    let first = post(&a, "/loki/api/v1/push", &headers, loki.as_bytes());
    let again = post(&b, "/loki/api/v1/push", &headers, loki.as_bytes());
    assert_eq!(
        (first.0, again.0, again.2.as_deref()),
        (204, 204, Some("true"))
    );
    let proto = post(
        &a,
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        &loki_protobuf_fixture(),
    );
    assert_eq!(proto.0, 204, "{}", String::from_utf8_lossy(&proto.1));

    // A's last answer is in: kill it. Nothing it answered may be lost.
    a.kill();
    let messages = topic_messages(&names.brokers, &topic);
    assert_eq!(
        messages,
        ROWS + DEAD_LETTERS,
        "one message per record, none produced twice by a retry on B"
    );
    let visible = b.query_i64("SELECT count(*) FROM logs").await
        + b.query_i64("SELECT count(*) FROM dead_letters").await;
    eprintln!("at the kill, {visible} of {messages} records were visible through B");
    assert!(
        visible < messages,
        "A held its partitions' records unwritten when it was killed ({visible} of {messages} \
         visible), so the rest can only come from Kafka through B"
    );
    let progress = format!(
        "SELECT coalesce(sum(next_offset), 0) FROM kafka_partitions WHERE topic = '{topic}'"
    );
    wait_for_count(&b, &progress, messages, Duration::from_secs(120)).await;
    wait_for_count(
        &b,
        "SELECT count(*) FROM logs",
        ROWS,
        Duration::from_secs(30),
    )
    .await;
    wait_for_count(
        &b,
        "SELECT count(*) FROM dead_letters",
        DEAD_LETTERS,
        Duration::from_secs(30),
    )
    .await;

    // Every row as the embedded tests check it.
    let rows = |filter: &'static str| {
        let (b, topic) = (&b, topic.as_str());
        async move { as_embedded(query_rows(b, filter).await, topic) }
    };
    check_otel_sdk_rows(
        &rows("source = 'otel-host-1'").await,
        &rows("source = 'json-svc'").await,
        &trace_id,
        &span_id,
    );
    check_otlp_json_rows(&rows("source = 'billing'").await);
    check_es_client_rows(&rows("source LIKE 'es-host-%'").await);
    let web = rows("message = 'a'").await;
    assert_eq!(
        web.iter().map(|r| r.3.as_str()).collect::<Vec<_>>(),
        ["web"],
        "the index in the URL: {web:?}"
    );
    let chunk_rows = rows("message = 'c'").await;
    assert_eq!(
        chunk_rows.len(),
        1,
        "the resent chunk stored once: {chunk_rows:?}"
    );
    check_loki_json_rows(&rows("source LIKE 'loki-host-%'").await);
    check_loki_protobuf_rows(&rows("source = 'loki-proto'").await);
    check_syslog_rows(&rows("attributes ? 'program'").await);

    // Dead letters are stored where every node reads them, named after the request and the
    // Kafka message, with the reason the answer gave.
    one_dead_letter(&b, "otlp http %", "max_record_bytes").await;
    one_dead_letter(&b, "loki http %", "timestamp").await;
    one_dead_letter(&b, "syslog %", "max_record_bytes").await;
    let mut stored = dead_letter_reasons(&b, "_bulk http %").await;
    for reason in bulk_item_reasons(&every.1)
        .into_iter()
        .chain(bulk_item_reasons(&chunk.1))
    {
        let i = stored
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_else(|| panic!("answered {reason:?}, stored {stored:?}"));
        stored.remove(i);
    }
    assert!(
        stored.len() == 1 && stored[0].contains("timestamp"),
        "left: elasticsearch-py's document with a bad time: {stored:?}"
    );
    let client = b.pg_client().await;
    let origins = client
        .query("SELECT origin FROM dead_letters", &[])
        .await
        .expect("dead letter origins");
    for row in &origins {
        let origin: String = row.get(0);
        assert!(origin.contains(&format!(" via kafka {topic}/")), "{origin}");
    }
    let update = client
        .query_one(
            "SELECT raw_text FROM dead_letters WHERE reason LIKE '%\"update\" is not supported%'",
            &[],
        )
        .await
        .expect("the update's dead letter");
    assert_eq!(
        update.get::<_, String>(0),
        "{\"update\":{\"_id\":\"8\"}}\n{\"doc\":{\"message\":\"b\"}}",
        "the action and its document as sent"
    );
}
