//! Shippers that work unchanged: OTLP/HTTP logs from the OpenTelemetry Python SDK's exporter
//! and as OTLP JSON, the Elasticsearch `_bulk` API from elasticsearch-py's `helpers.bulk`,
//! Loki's push API (JSON and snappy protobuf), and syslog over TCP and UDP from rsyslog —
//! each checked over SQL, with the same dead-letter and `Idempotency-Key` rules as
//! `POST /v1/logs`. How each is sent (`send`) and what its records become (`rows`) are
//! shared with the cluster-mode tests (`cluster/shippers.rs`).

pub(crate) mod rows;
pub(crate) mod send;

use std::process::Command;
use std::time::Duration;

use logsphere_tests::Server;
use serde_json::Value;

use self::rows::{
    check_es_client_rows, check_loki_json_rows, check_loki_protobuf_rows, check_otel_sdk_rows,
    check_otlp_json_rows, check_syslog_rows, one_dead_letter, query_rows,
};
use self::send::{
    BULK_CHUNK, BULK_EVERY_ACTION, MAX_RECORD_BYTES, check_bulk_every_action_answer, gzip,
    loki_json_body, loki_protobuf_fixture, otel_ids, otlp_json_body, post, run_http_client,
    send_syslog, untimed,
};

/// `GET <server><path>`: the body.
fn get_text(server: &Server, path: &str) -> String {
    ureq::get(&format!("{}{path}", server.http_url()))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap_or_default()
}

#[tokio::test]
async fn otlp_sdk_exporter_logs_land_with_time_level_source_and_attributes() {
    let server = Server::start();
    let out = run_http_client(&server, "otel_logs.py", "otel ok");
    let (trace_id, span_id) = otel_ids(&out);
    let host = query_rows(&server, "source = 'otel-host-1'").await;
    let json = query_rows(&server, "source = 'json-svc'").await;
    check_otel_sdk_rows(&host, &json, &trace_id, &span_id);
}

#[tokio::test]
async fn otlp_json_by_shape_partial_success_and_idempotency() {
    let server =
        Server::start_with_config(&format!("[http]\nmax_record_bytes = {MAX_RECORD_BYTES}\n"));
    let body = otlp_json_body();
    // Plain `application/json`, as the OTLP JSON exporters send: told apart by its shape.
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "otlp-1"),
    ];
    let (status, answer, replayed) = post(&server, "/v1/logs", &headers, body.as_bytes());
    let answer: Value = serde_json::from_slice(&answer).expect("JSON answer");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "{answer}"
    );
    assert_eq!(replayed, None);
    let again = post(&server, "/v1/logs", &headers, body.as_bytes());
    assert_eq!(
        (again.0, again.2.as_deref()),
        (200, Some("true")),
        "a retry is a replay"
    );

    check_otlp_json_rows(&query_rows(&server, "source = 'billing'").await);
    one_dead_letter(&server, "otlp http %", "max_record_bytes").await;

    // Our own JSON on the same path is unchanged, and a broken OTLP body is a 400.
    let native = post(
        &server,
        "/v1/logs",
        &[],
        br#"{"message":"native","host":"h"}"#,
    );
    assert_eq!(
        (native.0, native.1.as_slice()),
        (200, &br#"{"accepted":1,"rejected":0}"#[..])
    );
    let broken = post(
        &server,
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        b"\xff\xff\xff",
    );
    assert_eq!(broken.0, 400, "{}", String::from_utf8_lossy(&broken.1));
    let empty = post(
        &server,
        "/v1/logs",
        &[("Content-Type", "application/x-protobuf")],
        b"",
    );
    assert_eq!(
        (empty.0, empty.1.as_slice()),
        (200, &b""[..]),
        "an export of nothing"
    );
    let broken = post(&server, "/v1/logs", &[], br#"{"resourceLogs": 7}"#);
    assert_eq!(broken.0, 400, "{}", String::from_utf8_lossy(&broken.1));
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 2);

    // gzip, as the OpenTelemetry Collector's otlphttp exporter sends by default: OTLP JSON
    // is still told by its shape once inflated, and our own JSON may come gzipped too.
    let gz = [("Content-Encoding", "gzip")];
    let (status, answer, _) = post(&server, "/v1/logs", &gz, &gzip(body.as_bytes()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs WHERE source = 'billing'")
            .await,
        2,
        "no key this time: stored again"
    );
    let (status, answer, _) = post(&server, "/v1/logs", &gz, &gzip(br#"{"message":"zipped"}"#));
    assert_eq!(
        (status, answer.as_slice()),
        (200, &br#"{"accepted":1,"rejected":0}"#[..])
    );
    let (status, _, _) = post(&server, "/v1/logs", &[("Content-Encoding", "br")], b"x");
    assert_eq!(
        status, 400,
        "an encoding we cannot read is refused, not stored as garbage"
    );
}

#[tokio::test]
async fn elasticsearch_client_bulk_lands_with_index_as_topic() {
    let server = Server::start();
    run_http_client(&server, "es_bulk.py", "es ok");
    check_es_client_rows(&query_rows(&server, "source LIKE 'es-host-%'").await);
    one_dead_letter(&server, "_bulk http %", "timestamp").await;
}

#[tokio::test]
async fn bulk_answers_per_item_and_refuses_what_is_not_bulk() {
    let server = Server::start();
    let body = BULK_EVERY_ACTION;
    let headers = [
        ("Content-Type", "application/x-ndjson"),
        ("Idempotency-Key", "bulk-1"),
    ];
    let (status, answer, _) = post(&server, "/web/_bulk", &headers, body);
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(status, 200, "{answer}");
    check_bulk_every_action_answer(&answer);
    // The same answer on a retry, and nothing stored twice.
    let again = post(&server, "/web/_bulk", &headers, body);
    assert_eq!(again.2.as_deref(), Some("true"));
    let again: Value = serde_json::from_slice(&again.1).expect("JSON");
    assert_eq!(again["errors"], true);
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs WHERE topic = 'web'")
            .await,
        1
    );
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM dead_letters WHERE origin LIKE '_bulk http %'")
            .await,
        4
    );
    // Without a key, a request is keyed by its body (and index): Fluent Bit sends the same
    // chunk again after an answer with errors, and that is a replay, not a second copy.
    let nokey = BULK_CHUNK;
    let first = post(&server, "/fb/_bulk", &[], nokey);
    let again = post(&server, "/fb/_bulk", &[], nokey);
    assert_eq!((first.0, first.2.as_deref()), (200, None));
    assert_eq!((again.0, again.2.as_deref()), (200, Some("true")));
    assert_eq!(
        untimed(&first.1),
        untimed(&again.1),
        "answered alike, ids too"
    );
    let elsewhere = post(&server, "/fb2/_bulk", &[], nokey);
    assert_eq!(elsewhere.2, None, "another index is another request");
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs WHERE topic LIKE 'fb%'")
            .await,
        2
    );
    // A line that is not an action is the whole request's error, as Elasticsearch answers.
    let (status, answer, _) = post(&server, "/_bulk", &[], b"{\"frobnicate\":{}}\n{}\n");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    // The probes shippers make first, with the product header clients check.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for path in ["/", "/_license", "/_xpack", "/_cluster/health"] {
        let resp = agent
            .get(&format!("{}{path}", server.http_url()))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        assert_eq!(
            resp.headers()
                .get("x-elastic-product")
                .and_then(|v| v.to_str().ok()),
            Some("Elasticsearch"),
            "GET {path}"
        );
    }
    let head = agent.head(&server.http_url()).call().expect("HEAD /");
    assert_eq!(head.status().as_u16(), 200);
}

#[tokio::test]
async fn loki_push_json_and_snappy_protobuf_labels_become_columns_and_attributes() {
    let server = Server::start();
    let body = loki_json_body();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "loki-1"),
    ];
    let (status, answer, _) = post(&server, "/loki/api/v1/push", &headers, body.as_bytes());
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&answer));
    let again = post(&server, "/loki/api/v1/push", &headers, body.as_bytes());
    assert_eq!((again.0, again.2.as_deref()), (204, Some("true")));

    check_loki_json_rows(&query_rows(&server, "source LIKE 'loki-host-%'").await);
    one_dead_letter(&server, "loki http %", "timestamp").await;

    let (status, answer, _) = post(
        &server,
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        &loki_protobuf_fixture(),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&answer));
    check_loki_protobuf_rows(&query_rows(&server, "source = 'loki-proto'").await);
    assert!(
        get_text(&server, "/metrics").contains("logsphere_loki_requests_total 3\n"),
        "pushes that decoded are counted"
    );
    let broken = post(
        &server,
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        b"not snappy",
    );
    assert_eq!(broken.0, 400);
}

/// Polls until `sql` counts `want`, for up to 20 s; the last count.
async fn wait_count(server: &Server, sql: &str, want: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = server.query_i64(sql).await;
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rsyslog_forwards_over_tcp_octet_counted_and_udp() {
    let (tcp, udp) = (logsphere_tests::free_port(), logsphere_tests::free_port());
    let server = Server::start_with_config(&format!(
        "[http]\nmax_record_bytes = {MAX_RECORD_BYTES}\n[syslog]\n\
         tcp_listen = \"127.0.0.1:{tcp}\"\nudp_listen = \"127.0.0.1:{udp}\"\nbatch_ms = 50\n"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let _rsyslog = send_syslog(dir.path(), tcp, udp);
    let n = wait_count(&server, "SELECT count(*) FROM logs", 4).await;
    assert_eq!(n, 4, "--- server log ---\n{}", server.log());
    check_syslog_rows(&query_rows(&server, "true").await);
    one_dead_letter(&server, "syslog%", "max_record_bytes").await;
    let metrics = get_text(&server, "/metrics");
    for line in [
        "logsphere_syslog_tcp_messages_total 4\n",
        "logsphere_syslog_udp_messages_total 1\n",
        "logsphere_syslog_store_failures_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn syslog_messages_read_before_shutdown_are_stored() {
    use std::io::Write;
    let tcp = logsphere_tests::free_port();
    let mut server = Server::start_with_config(&format!(
        "[syslog]\ntcp_listen = \"127.0.0.1:{tcp}\"\nbatch_ms = 60000\n"
    ));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
    s.write_all(b"<11>Dec  7 10:00:00 h1 app[1]: one\n<11>Dec  7 10:00:01 h1 app[1]: two\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs").await,
        0,
        "still batching"
    );
    assert!(server.stop(), "clean exit:\n{}", server.log());
    server.restart();
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs WHERE source = 'h1'")
            .await,
        2
    );
}

#[test]
fn syslog_settings_that_cannot_work_stop_startup_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let cases = [
        (
            format!("[syslog]\ntcp_listen = \"127.0.0.1:{port}\"\n"),
            "syslog.tcp_listen",
        ),
        (
            "[syslog]\nudp_listen = \"not an address\"\n".to_string(),
            "udp_listen",
        ),
        ("[syslog]\nbatch_ms = 0\n".to_string(), "syslog.batch_ms"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        let data = dir.path().join(format!("d{i}"));
        let text = format!(
            "data_dir = \"{}\"\n[pg]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n{toml}",
            data.display(),
            logsphere_tests::free_port(),
            logsphere_tests::free_port()
        );
        std::fs::write(&cfg, text).expect("write config");
        let out = Command::new(logsphere_tests::binary())
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run logsphere");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{toml}: {err}");
    }
}
