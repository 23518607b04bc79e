//! Shippers that work unchanged: OTLP/HTTP logs from the OpenTelemetry Python SDK's exporter
//! and as OTLP JSON, the Elasticsearch `_bulk` API from elasticsearch-py's `helpers.bulk`,
//! Loki's push API (JSON and snappy protobuf), and syslog over TCP and UDP from rsyslog —
//! each checked over SQL, with the same dead-letter and `Idempotency-Key` rules as
//! `POST /v1/logs`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use logsphere_tests::Server;
use serde_json::{Value, json};

use crate::clients::python;

/// Runs `tests/clients/<script> <http base>`; asserts it exits 0 printing `ok_line`;
/// returns its stdout.
fn run_http_client(server: &Server, script: &str, ok_line: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let out = Command::new(python())
        .arg(&path)
        .arg(server.http_url())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
    stdout
}

/// POSTs `body` to `<server><path>` with `headers`; the status, the headers asked for in
/// `want_headers` and the body.
pub(crate) fn post(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.post(&format!("{}{path}", server.http_url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req
        .send(body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = resp.status().as_u16();
    let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
    (status, bytes, replayed)
}

/// `GET <server><path>`: the body.
fn get_text(server: &Server, path: &str) -> String {
    ureq::get(&format!("{}{path}", server.http_url()))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap_or_default()
}

/// `(timestamp as RFC 3339 UTC µs, log_level, source, topic, message, attributes)` of the
/// rows `filter` selects, ordered by message.
async fn query_rows(
    server: &Server,
    filter: &str,
) -> Vec<(String, String, String, String, String, Value)> {
    let client = server.pg_client().await;
    let sql = format!(
        "SELECT to_char(timestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), \
         log_level, source, topic, message, attributes FROM logs WHERE {filter} ORDER BY message"
    );
    client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            let attrs: String = r.get(5);
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                serde_json::from_str(&attrs).unwrap_or_else(|e| panic!("attributes {attrs}: {e}")),
            )
        })
        .collect()
}

/// Asserts the dead letters whose origin is `LIKE origin_like` are one, naming `reason_has`.
async fn one_dead_letter(server: &Server, origin_like: &str, reason_has: &str) {
    let reasons = dead_letter_reasons(server, origin_like).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains(reason_has), "{reasons:?}");
}

async fn dead_letter_reasons(server: &Server, origin_like: &str) -> Vec<String> {
    let client = server.pg_client().await;
    client
        .query(
            "SELECT reason FROM dead_letters WHERE origin LIKE $1 ORDER BY reason",
            &[&origin_like],
        )
        .await
        .unwrap_or_else(|e| panic!("dead_letters: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn otlp_sdk_exporter_logs_land_with_time_level_source_and_attributes() {
    let server = Server::start();
    let out = run_http_client(&server, "otel_logs.py", "otel ok");
    let ids = out.lines().next().unwrap_or_default();
    let trace_id = ids
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches("trace_id=");
    let span_id = ids
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .trim_start_matches("span_id=");
    assert_eq!((trace_id.len(), span_id.len()), (32, 16), "{out}");

    let rows = query_rows(&server, "source = 'otel-host-1'").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    // The logs API record: exact time, ERROR2 → ERROR, a kvlist body as JSON.
    let (ts, level, _, topic, message, attrs) = &rows[1];
    assert_eq!(ts, "2026-12-07T05:00:00.123456");
    assert_eq!((level.as_str(), topic.as_str()), ("ERROR", "logs"));
    let body: Value = serde_json::from_str(message).expect("structured body is JSON");
    assert_eq!(
        body,
        json!({"event": "refund", "amount": 12.5, "items": ["a", "b"]})
    );
    assert_eq!(attrs["user"], "u-9");
    assert_eq!(attrs["ok"], false);
    assert_eq!(attrs["count"], 3);
    assert_eq!(attrs["scope.name"], "shop.audit");
    assert_eq!(attrs["scope.version"], "1.2.3");
    assert_eq!(attrs["service.name"], "checkout");
    // The Python logging record, inside a span: WARNING → WARN, trace context kept.
    let (ts, level, _, _, message, attrs) = &rows[0];
    assert_eq!(message, "card declined for order A-17");
    assert_eq!(level, "WARN");
    assert_eq!(
        attrs.get("raw_level"),
        None,
        "the SDK writes WARN, a level's own name: {attrs}"
    );
    assert_eq!(
        attrs["code.function.name"], "<module>",
        "the SDK's own attributes: {attrs}"
    );
    assert_eq!(attrs["trace_id"], trace_id);
    assert_eq!(attrs["span_id"], span_id);
    assert_eq!(attrs["order_id"], "A-17");
    assert_eq!(attrs["attempt"], 2);
    assert_eq!(attrs["deployment.environment"], "test");
    assert_eq!(attrs["scope.name"], "shop.payments");
    let now = chrono_like_now();
    assert_eq!(
        &ts[..10],
        &now[..10],
        "the logging record's own time, today"
    );
    // The JSON exporter's record: no host.name, so service.name is the source; 64-bit
    // integers arrive as strings in OTLP JSON and are numbers again.
    let rows = query_rows(&server, "source = 'json-svc'").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (ts, level, _, _, message, attrs) = &rows[0];
    assert_eq!(
        (ts.as_str(), level.as_str()),
        ("2026-12-07T05:00:02.000000", "INFO")
    );
    assert_eq!(message, "sent as OTLP JSON");
    assert_eq!(attrs["raw_level"], "notice");
    assert_eq!(attrs["big"], json!(9_007_199_254_740_993i64));
    assert_eq!(attrs["ratio"], 0.25);
    assert_eq!(attrs["scope.name"], "json.scope");
}

/// Today as `YYYY-MM-DD` in UTC, from the server's clock.
fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn otlp_json_by_shape_partial_success_and_idempotency() {
    let server = Server::start_with_config("[http]\nmax_record_bytes = 2000\n");
    let big = "x".repeat(3000);
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeLogs": [{"scope": {"name": "billing.jobs"}, "logRecords": [
            {"timeUnixNano": "1796619600000000000", "severityNumber": 17, "severityText": "Err",
             "body": {"stringValue": "invoice failed"},
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "attributes": [{"key": "invoice", "value": {"intValue": "42"}},
                            {"key": "message", "value": {"stringValue": "shadowed"}}]},
            {"observedTimeUnixNano": 1796619601000000000u64, "severityNumber": 10,
             "body": {"stringValue": big}}
        ]}]
    }]})
    .to_string();
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

    let rows = query_rows(&server, "source = 'billing'").await;
    assert_eq!(rows.len(), 1, "stored once: {rows:?}");
    let (ts, level, _, _, message, attrs) = &rows[0];
    assert_eq!(
        (ts.as_str(), level.as_str()),
        ("2026-12-07T05:00:00.000000", "ERROR")
    );
    assert_eq!(message, "invoice failed");
    assert_eq!(attrs["invoice"], 42);
    assert_eq!(
        attrs["_message"], "shadowed",
        "an attribute named like a column: {attrs}"
    );
    assert_eq!(attrs["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(attrs["raw_level"], "Err", "severity text as sent: {attrs}");
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

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[tokio::test]
async fn elasticsearch_client_bulk_lands_with_index_as_topic() {
    let server = Server::start();
    run_http_client(&server, "es_bulk.py", "es ok");
    let rows = query_rows(&server, "source LIKE 'es-host-%'").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (ts, level, source, topic, message, attrs) = &rows[0];
    assert_eq!(message, "plain fluent-bit line");
    assert_eq!(
        (ts.as_str(), level.as_str()),
        ("2026-12-07T10:00:00.000000", "ERROR")
    );
    assert_eq!((source.as_str(), topic.as_str()), ("es-host-2", "app-logs"));
    assert_eq!(attrs, &json!({}));
    let (ts, _, source, topic, message, attrs) = &rows[1];
    assert_eq!(
        (message.as_str(), source.as_str(), topic.as_str()),
        ("third", "es-host-3", "other-index")
    );
    assert_eq!(attrs["tags"], json!(["x", "y"]));
    assert_eq!(
        &ts[..4],
        &chrono_like_now()[..4],
        "no time: the ingest time"
    );
    let (ts, level, source, topic, message, attrs) = &rows[2];
    assert_eq!(message, "user logged in");
    assert_eq!(
        (ts.as_str(), level.as_str()),
        ("2026-12-07T10:00:00.250000", "WARN")
    );
    assert_eq!((source.as_str(), topic.as_str()), ("es-host-1", "app-logs"));
    assert_eq!(attrs["user"], "alice");
    assert_eq!(
        attrs["log"],
        json!({"logger": "auth"}),
        "what is left of log: {attrs}"
    );
    assert_eq!(attrs["host"], json!({"os": {"family": "debian"}}));
    one_dead_letter(&server, "_bulk http %", "timestamp").await;
}

#[tokio::test]
async fn bulk_answers_per_item_and_refuses_what_is_not_bulk() {
    let server = Server::start();
    let body = b"{\"index\":{}}\n{\"message\":\"a\",\"level\":\"info\"}\n\
{\"create\":{\"_index\":\"idx\",\"_id\":\"7\"}}\nnot json\n\
{\"delete\":{\"_index\":\"idx\",\"_id\":\"7\"}}\n\
{\"update\":{\"_id\":\"8\"}}\n{\"doc\":{\"message\":\"b\"}}\n\
{\"index\":{}}\n[1,2]\n";
    let headers = [
        ("Content-Type", "application/x-ndjson"),
        ("Idempotency-Key", "bulk-1"),
    ];
    let (status, answer, _) = post(&server, "/web/_bulk", &headers, body);
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["errors"], true);
    let statuses: Vec<(String, u64)> = answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let (action, r) = i
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("one action");
            (action.clone(), r["status"].as_u64().unwrap_or_default())
        })
        .collect();
    let want = [
        ("index", 201),
        ("create", 400),
        ("delete", 400),
        ("update", 400),
        ("index", 400),
    ];
    let want: Vec<(String, u64)> = want.iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(statuses, want, "{answer}");
    assert!(
        answer["items"][1]["create"]["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not valid JSON")),
        "{answer}"
    );
    assert_eq!(answer["items"][1]["create"]["_id"], "7");
    assert!(
        answer["items"][3]["update"]["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not supported")),
        "{answer}"
    );
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
    let nokey =
        b"{\"index\":{}}\n{\"message\":\"c\"}\n{\"index\":{}}\n{\"@timestamp\":\"never\"}\n";
    let first = post(&server, "/fb/_bulk", &[], nokey);
    let again = post(&server, "/fb/_bulk", &[], nokey);
    assert_eq!((first.0, first.2.as_deref()), (200, None));
    assert_eq!((again.0, again.2.as_deref()), (200, Some("true")));
    let untimed = |b: &[u8]| {
        let mut v: Value = serde_json::from_slice(b).expect("JSON");
        v["took"] = json!(0);
        v
    };
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
    let body = json!({"streams": [
        {"stream": {"job": "nginx", "host": "loki-host-1", "level": "warn", "env": "prod"},
         "values": [["1796619600500000000", "GET /a 200"],
                    ["1796619601000000000", "GET /b 500", {"trace_id": "abc", "level": "error"}]]},
        {"stream": {"service_name": "api", "hostname": "loki-host-2"},
         "values": [["yesterday", "bad time"]]}
    ]})
    .to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "loki-1"),
    ];
    let (status, answer, _) = post(&server, "/loki/api/v1/push", &headers, body.as_bytes());
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&answer));
    let again = post(&server, "/loki/api/v1/push", &headers, body.as_bytes());
    assert_eq!((again.0, again.2.as_deref()), (204, Some("true")));

    let rows = query_rows(&server, "source LIKE 'loki-host-%'").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (ts, level, source, _, message, attrs) = &rows[0];
    assert_eq!(
        (ts.as_str(), level.as_str(), source.as_str()),
        ("2026-12-07T05:00:00.500000", "WARN", "loki-host-1")
    );
    assert_eq!(message, "GET /a 200");
    assert_eq!(attrs, &json!({"job": "nginx", "env": "prod"}));
    let (_, level, _, _, message, attrs) = &rows[1];
    assert_eq!(
        (level.as_str(), message.as_str()),
        ("ERROR", "GET /b 500"),
        "metadata level wins"
    );
    assert_eq!(attrs["trace_id"], "abc");
    one_dead_letter(&server, "loki http %", "timestamp").await;

    // Snappy-compressed protobuf, as Promtail and Alloy send it: the fixture the engine's
    // unit test builds with the same messages and checks byte for byte.
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/loki_push.pb.snappy");
    let proto = std::fs::read(&fixture).expect("fixture");
    let (status, answer, _) = post(
        &server,
        "/loki/api/v1/push",
        &[("Content-Type", "application/x-protobuf")],
        &proto,
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        rows_with_source(&server, "loki-proto").await,
        vec![
            (
                "2026-12-07T05:00:00.000001".to_string(),
                "INFO".to_string(),
                "first \"quoted\" line".to_string()
            ),
            (
                "2026-12-07T05:00:01.000000".to_string(),
                "ERROR".to_string(),
                "second line".to_string()
            ),
        ]
    );
    let rows = query_rows(&server, "source = 'loki-proto'").await;
    assert_eq!(
        rows[0].5,
        json!({"job": "promtail", "path": "/var/log/a \"b\".log"})
    );
    assert_eq!(
        rows[1].5,
        json!({"job": "promtail", "path": "/var/log/a \"b\".log", "trace_id": "t-1"})
    );
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

async fn rows_with_source(server: &Server, source: &str) -> Vec<(String, String, String)> {
    query_rows(server, &format!("source = '{source}'"))
        .await
        .into_iter()
        .map(|(ts, level, _, _, message, _)| (ts, level, message))
        .collect()
}

/// rsyslogd in the foreground, killed when dropped.
struct Rsyslog(std::process::Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts rsyslogd with two TCP inputs: what `logger` sends to the first is forwarded to
/// LogSphere over TCP, octet-counted, in RFC 5424 (`RSYSLOG_SyslogProtocol23Format`); what it
/// sends to the second goes over UDP in rsyslog's RFC 3164 forwarding format.
fn start_rsyslog(dir: &std::path::Path, to_tcp: u16, to_udp: u16) -> (Rsyslog, u16, u16) {
    let (in_tcp, in_udp) = (logsphere_tests::free_port(), logsphere_tests::free_port());
    let conf = dir.join("rsyslog.conf");
    let text = format!(
        r#"global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{in_tcp}" ruleset="to_tcp")
input(type="imtcp" port="{in_udp}" ruleset="to_udp")
ruleset(name="to_tcp") {{
  action(type="omfwd" target="127.0.0.1" port="{to_tcp}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
ruleset(name="to_udp") {{
  action(type="omfwd" target="127.0.0.1" port="{to_udp}" protocol="udp"
         template="RSYSLOG_ForwardFormat")
}}
"#,
        work = dir.display()
    );
    std::fs::write(&conf, text).expect("write rsyslog.conf");
    let child = Command::new("/usr/sbin/rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start rsyslogd (scripts/test installs Debian's rsyslog)");
    let rsyslog = Rsyslog(child);
    for port in [in_tcp, in_udp] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (rsyslog, in_tcp, in_udp)
}

/// `logger` (util-linux) sending one message over TCP to `port`.
fn logger(port: u16, args: &[&str], message: &str) {
    let out = Command::new("logger")
        .args(["--tcp", "-n", "127.0.0.1", "-P", &port.to_string()])
        .args(args)
        .arg(message)
        .output()
        .expect("run logger (util-linux)");
    assert!(
        out.status.success(),
        "logger: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    use std::io::Write;
    let (tcp, udp) = (logsphere_tests::free_port(), logsphere_tests::free_port());
    let server = Server::start_with_config(&format!(
        "[http]\nmax_record_bytes = 2000\n[syslog]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
         udp_listen = \"127.0.0.1:{udp}\"\nbatch_ms = 50\n"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let (_rsyslog, in_tcp, in_udp) = start_rsyslog(dir.path(), tcp, udp);
    logger(
        in_tcp,
        &[
            "--rfc5424",
            "-t",
            "billing",
            "--id=4242",
            "-p",
            "local0.warning",
        ],
        "invoice 7 overdue",
    );
    logger(
        in_udp,
        &["-t", "cron", "--id=77", "-p", "user.err"],
        "job failed: exit 2",
    );
    // Straight to LogSphere: logger's LF framing, a NUL-framed line, and an octet-counted
    // message over http.max_record_bytes (a dead letter; the stream goes on after it).
    logger(
        tcp,
        &["--rfc3164", "-t", "direct", "--id=5", "-p", "daemon.info"],
        "lf framed",
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
    let big = format!("<13>Dec  7 10:00:00 nulhost app: {}", "z".repeat(3000));
    let mut bytes = format!("{} {big}", big.len()).into_bytes();
    bytes.extend_from_slice(b"<13>Dec  7 10:00:01 nulhost app[9]: nul framed\0");
    s.write_all(&bytes).expect("write");
    drop(s);

    let n = wait_count(&server, "SELECT count(*) FROM logs", 4).await;
    assert_eq!(n, 4, "--- server log ---\n{}", server.log());
    let host = Command::new("hostname").output().expect("hostname").stdout;
    let host = String::from_utf8_lossy(&host).trim().to_string();
    // logger names the host as gethostname() or its canonical (longer) name: either is it.
    let this_host = |s: &str| s == host || s.starts_with(&format!("{host}."));
    let rows = query_rows(&server, "true").await;
    let got: Vec<(&str, &str, &str, Value, Value)> = rows
        .iter()
        .map(|(_, level, source, _, message, a)| {
            (
                level.as_str(),
                if this_host(source) {
                    "this host"
                } else {
                    source.as_str()
                },
                message.as_str(),
                a["program"].clone(),
                a["pid"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "WARN",
                "this host",
                "invoice 7 overdue",
                json!("billing"),
                json!(4242)
            ),
            (
                "ERROR",
                "this host",
                "job failed: exit 2",
                json!("cron"),
                json!(77)
            ),
            ("INFO", "this host", "lf framed", json!("direct"), json!(5)),
            ("INFO", "nulhost", "nul framed", json!("app"), json!(9)),
        ]
    );
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
