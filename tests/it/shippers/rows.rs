//! What the shippers' records become: the rows read back over SQL and the checks of their
//! fields, shared by the embedded tests (`tests/it/shippers.rs`) and the cluster ones
//! (`tests/it/cluster/shippers.rs`, which send to one node and read on another).

use std::process::Command;

use logsphere_tests::Server;
use serde_json::{Value, json};

/// `(timestamp as RFC 3339 UTC µs, log_level, source, topic, message, attributes)`.
pub(crate) type Row = (String, String, String, String, String, Value);

/// The rows `filter` selects, ordered by message.
pub(crate) async fn query_rows(server: &Server, filter: &str) -> Vec<Row> {
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
pub(crate) async fn one_dead_letter(server: &Server, origin_like: &str, reason_has: &str) {
    let reasons = dead_letter_reasons(server, origin_like).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains(reason_has), "{reasons:?}");
}

/// The reasons of the dead letters whose origin is `LIKE origin_like`.
pub(crate) async fn dead_letter_reasons(server: &Server, origin_like: &str) -> Vec<String> {
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

/// Today as `YYYY-MM-DD` in UTC, from the machine's clock.
pub(crate) fn today() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The rows of `otel_logs.py`: `host` those of source `otel-host-1` (the protobuf
/// exporter's), `json` those of `json-svc` (the JSON exporter's); the ids it printed.
pub(crate) fn check_otel_sdk_rows(host: &[Row], json: &[Row], trace_id: &str, span_id: &str) {
    assert_eq!(host.len(), 2, "{host:?}");
    // The logs API record: exact time, ERROR2 → ERROR, a kvlist body as JSON.
    let (ts, level, _, topic, message, attrs) = &host[1];
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
    let (ts, level, _, _, message, attrs) = &host[0];
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
    assert_eq!(&ts[..10], today(), "the logging record's own time, today");
    // The JSON exporter's record: no host.name, so service.name is the source; 64-bit
    // integers arrive as strings in OTLP JSON and are numbers again.
    assert_eq!(json.len(), 1, "{json:?}");
    let (ts, level, _, _, message, attrs) = &json[0];
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

/// The row of `send::otlp_json_body` (source `billing`), stored once.
pub(crate) fn check_otlp_json_rows(rows: &[Row]) {
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
}

/// The rows `es_bulk.py` stores (sources `es-host-%`): the index is the topic.
pub(crate) fn check_es_client_rows(rows: &[Row]) {
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
    assert_eq!(&ts[..4], &today()[..4], "no time: the ingest time");
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
}

/// The rows of `send::loki_json_body` (sources `loki-host-%`): labels become the source,
/// the level and attributes; structured metadata wins over a label.
pub(crate) fn check_loki_json_rows(rows: &[Row]) {
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
}

/// The rows of `send::loki_protobuf_fixture` (source `loki-proto`).
pub(crate) fn check_loki_protobuf_rows(rows: &[Row]) {
    let fields: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(ts, level, _, _, message, _)| (ts.as_str(), level.as_str(), message.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            (
                "2026-12-07T05:00:00.000001",
                "INFO",
                "first \"quoted\" line"
            ),
            ("2026-12-07T05:00:01.000000", "ERROR", "second line"),
        ]
    );
    assert_eq!(
        rows[0].5,
        json!({"job": "promtail", "path": "/var/log/a \"b\".log"})
    );
    assert_eq!(
        rows[1].5,
        json!({"job": "promtail", "path": "/var/log/a \"b\".log", "trace_id": "t-1"})
    );
}

/// The rows of `send::send_syslog`, every row of `logs`: the host is the source, the
/// severity the level, the program and pid attributes.
pub(crate) fn check_syslog_rows(rows: &[Row]) {
    let host = Command::new("hostname").output().expect("hostname").stdout;
    let host = String::from_utf8_lossy(&host).trim().to_string();
    // logger names the host as gethostname() or its canonical (longer) name: either is it.
    let this_host = |s: &str| s == host || s.starts_with(&format!("{host}."));
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
}
