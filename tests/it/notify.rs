//! NOTIFY delivery end to end: https webhooks with a private CA, the bounded delivery
//! service (failed events re-queued without a restart, given up after a maximum age, a dead
//! receiver holding neither the CQ nor threads), the bounded `alert_events` table, and the
//! KAFKA channel against the real Kafka.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::receiver::Receiver;
use logsphere_tests::services::{service_endpoint, unique_name};
use logsphere_tests::{Server, ServerOptions};
use tokio_postgres::Client;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn critical(ts_ms: i64, source: &str) -> Vec<u8> {
    format!(
        "{{\"ts\":{ts_ms},\"level\":\"CRITICAL\",\"source\":\"{source}\",\"message\":\"down\"}}\n"
    )
    .into_bytes()
}

/// A per-row rule paging on CRITICAL logs, one instance per source, with `notify` as its
/// NOTIFY list.
fn rule(name: &str, notify: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY {name}
           ALERT (SEVERITY 'critical', DEDUP BY (source), LABELS (team = 'sre'))
           NOTIFY ({notify})
           WITH (checkpoint_interval = '1s')
         AS SELECT timestamp, source, log_level, message FROM logs WHERE log_level = 'CRITICAL'"
    )
}

/// Polls `sql` (one i64) until `done` holds, for at most `secs`; returns the last value.
async fn wait_i64(client: &Client, sql: &str, secs: u64, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v: i64 = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        if done(v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(status, attempts, last_error, next_attempt IS NOT NULL)` of the one `fired` event of
/// `cq`.
async fn fired_event(client: &Client, cq: &str) -> (String, i64, Option<String>, bool) {
    let row = client
        .query_one(
            "SELECT status, attempts, last_error, next_attempt IS NOT NULL FROM alert_events \
             WHERE kind = 'fired' AND cq_name = $1",
            &[&cq],
        )
        .await
        .unwrap_or_else(|e| panic!("the fired event of {cq}: {e}"));
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn sql_state(result: Result<u64, tokio_postgres::Error>) -> (String, String) {
    let err = result.expect_err("the statement fails");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test]
async fn https_webhook_trusts_its_ca_file_and_refuses_an_unknown_issuer() {
    let receiver = Receiver::start_tls(0);
    let server = Server::start();
    let client = server.pg_client().await;
    let ca = receiver.ca_file();
    let trusted = format!(
        "WEBHOOK '{}' WITH (ca_file = '{}', timeout = '5s')",
        receiver.url,
        ca.display()
    );
    client
        .batch_execute(&rule("pager_tls", &trusted))
        .await
        .unwrap();
    // The same receiver without the private CA: Mozilla's roots do not know it.
    let untrusted = format!("WEBHOOK '{}' WITH (retries = 0)", receiver.url);
    client
        .batch_execute(&rule("pager_webpki", &untrusted))
        .await
        .unwrap();
    // Verification off (testing only): delivered without the CA.
    let insecure = format!("WEBHOOK '{}' WITH (insecure = true)", receiver.url);
    client
        .batch_execute(&rule("pager_insecure", &insecure))
        .await
        .unwrap();

    server.post_expect(&critical(now_ms(), "db-1"), 1, 0);
    let got = receiver.wait(|r| r.len() >= 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let mut receivers: Vec<&str> = got
        .iter()
        .filter_map(|(_, b)| b["receiver"].as_str())
        .collect();
    receivers.sort();
    assert_eq!(receivers, vec!["pager_insecure", "pager_tls"]);
    let (key, body) = got
        .iter()
        .find(|(_, b)| b["receiver"] == "pager_tls")
        .expect("pager_tls was delivered");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["source"], "db-1");
    let delivered = "SELECT count(*) FROM alert_events WHERE cq_name = 'pager_tls' \
                     AND kind = 'fired' AND status = 'delivered'";
    assert_eq!(wait_i64(&client, delivered, 20, |n| n == 1).await, 1);
    let row = client
        .query_one(
            "SELECT event_id, channel FROM alert_events \
             WHERE cq_name = 'pager_tls' AND kind = 'fired'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(&row.get::<_, String>(0), key, "Idempotency-Key = event_id");
    assert_eq!(row.get::<_, String>(1), format!("webhook {}", receiver.url));

    let failed = "SELECT count(*) FROM alert_events WHERE cq_name = 'pager_webpki' \
                  AND kind = 'fired' AND status = 'failed'";
    assert_eq!(wait_i64(&client, failed, 20, |n| n == 1).await, 1);
    let (_, attempts, error, requeued) = fired_event(&client, "pager_webpki").await;
    assert_eq!(attempts, 1);
    let error = error.unwrap_or_default();
    assert!(
        error.to_ascii_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    assert!(requeued, "a failed event is re-queued, not dropped");
    assert_eq!(
        receiver.requests().len(),
        2,
        "pager_webpki passed no handshake"
    );
}

#[tokio::test]
async fn bad_notify_channels_are_refused_at_create_with_the_reason() {
    let server = Server::start();
    let client = server.pg_client().await;
    let cases = [
        ("KAFKA 'alerts'", "kafka_brokers"),
        ("WEBHOOK 'ftp://example.com/x'", "http:// or https://"),
        (
            "WEBHOOK 'http://127.0.0.1:1/x' WITH (color = 'red')",
            "unknown option color",
        ),
        (
            "WEBHOOK 'http://127.0.0.1:1/x' WITH (timeout = 'soon')",
            "not a duration",
        ),
        (
            "WEBHOOK 'http://127.0.0.1:1/x' WITH (ca_file = '/etc/hostname')",
            "https:// URLs only",
        ),
        (
            "WEBHOOK 'https://127.0.0.1:1/x' WITH (ca_file = '/nonexistent/ca.pem')",
            "cannot read ca_file",
        ),
        ("KAFKA 'alerts' WITH (brokers = '')", "no Kafka brokers"),
    ];
    for (notify, reason) in cases {
        let (code, message) = sql_state(client.execute(&rule("bad", notify), &[]).await);
        assert_eq!(code, "22023", "{notify}: {message}");
        assert!(message.contains(reason), "{notify}: {message}");
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM continuous_queries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing was created");
    // Brokers in the channel itself need no config (nothing listens there: the events
    // just stay undelivered).
    client
        .batch_execute(&rule("ok", "KAFKA 'alerts' WITH (brokers = '127.0.0.1:1')"))
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_events_are_requeued_then_delivered_without_a_restart() {
    // One fast retry, then re-queued every second.
    let receiver = Receiver::start(4);
    let server =
        Server::start_with_config("[notify]\nrequeue_after_secs = 1\nrequeue_max_secs = 1\n");
    let client = server.pg_client().await;
    let hook = format!("WEBHOOK '{}' WITH (retries = 1)", receiver.url);
    client.batch_execute(&rule("pager", &hook)).await.unwrap();
    server.post_expect(&critical(now_ms(), "web-1"), 1, 0);

    // Two attempts fail fast: `failed`, with a next attempt.
    let failed = "SELECT count(*) FROM alert_events WHERE kind = 'fired' \
                  AND status = 'failed' AND next_attempt IS NOT NULL";
    assert_eq!(wait_i64(&client, failed, 20, |n| n == 1).await, 1);
    let (_, attempts, error, _) = fired_event(&client, "pager").await;
    assert!(attempts >= 2, "{attempts}");
    assert_eq!(error.as_deref(), Some("HTTP 500 Internal Server Error"));

    // Attempts 3 and 4 fail on the re-queue, the fifth is delivered: no restart.
    let delivered = "SELECT count(*) FROM alert_events WHERE kind = 'fired' \
                     AND status = 'delivered' AND next_attempt IS NULL";
    assert_eq!(wait_i64(&client, delivered, 30, |n| n == 1).await, 1);
    let (_, attempts, error, _) = fired_event(&client, "pager").await;
    assert_eq!((attempts, error), (5, None));
    let got = receiver.requests();
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.iter().all(|(k, _)| k == &got[0].0), "one key for all");

    // Only the last three attempts are kept as rows; the transition row counts all five.
    let rows: Vec<(i64, String)> = client
        .query(
            "SELECT attempts, status FROM alert_events WHERE kind = 'delivery' ORDER BY attempts",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (3, "failed".to_string()),
            (4, "failed".to_string()),
            (5, "delivered".to_string())
        ]
    );
}

#[tokio::test]
async fn an_event_is_failed_for_good_after_the_maximum_age() {
    let receiver = Receiver::start(usize::MAX);
    let server = Server::start_with_config(
        "[notify]\nrequeue_after_secs = 1\nrequeue_max_secs = 1\ngive_up_after_secs = 3\n",
    );
    let client = server.pg_client().await;
    let hook = format!("WEBHOOK '{}' WITH (retries = 0)", receiver.url);
    client.batch_execute(&rule("pager", &hook)).await.unwrap();
    server.post_expect(&critical(now_ms(), "web-1"), 1, 0);

    let gave_up = "SELECT count(*) FROM alert_events WHERE kind = 'fired' \
                   AND status = 'failed' AND next_attempt IS NULL";
    assert_eq!(wait_i64(&client, gave_up, 30, |n| n == 1).await, 1);
    let (_, attempts, _, _) = fired_event(&client, "pager").await;
    assert!(
        (2..=4).contains(&attempts),
        "re-queued within 3 s: {attempts}"
    );
    let sent = receiver.requests().len();
    assert_eq!(sent as i64, attempts);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.requests().len(),
        sent,
        "nothing is sent after giving up"
    );
}

#[tokio::test]
async fn delivered_events_lose_their_attempt_rows_after_the_retention_but_are_not_resent() {
    let receiver = Receiver::start(1);
    let server = Server::start_with_config("[notify]\nevent_retention_secs = 1\n");
    let client = server.pg_client().await;
    let hook = format!("WEBHOOK '{}'", receiver.url);
    client.batch_execute(&rule("pager", &hook)).await.unwrap();
    let t = now_ms();
    server.post_expect(&critical(t, "web-1"), 1, 0);
    let delivered =
        "SELECT count(*) FROM alert_events WHERE kind = 'fired' AND status = 'delivered'";
    assert_eq!(wait_i64(&client, delivered, 20, |n| n == 1).await, 1);
    let attempts = "SELECT count(*) FROM alert_events WHERE kind = 'delivery'";
    assert_eq!(wait_i64(&client, attempts, 20, |n| n == 0).await, 0);
    assert_eq!(fired_event(&client, "pager").await.1, 2, "the count stays");

    // The transition row stays, so the still-firing alert is not sent again.
    server.post_expect(&critical(t + 1000, "web-1"), 1, 0);
    let obs = "SELECT max(observation_count) FROM alerts WHERE cq_name = 'pager'";
    assert_eq!(wait_i64(&client, obs, 20, |n| n == 2).await, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.requests().len(), 2, "{:?}", receiver.requests());
}

/// Threads of process `pid`, from /proc.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads: line for {pid}: {status}"))
}

#[tokio::test]
async fn a_receiver_that_never_answers_holds_neither_alerts_nor_threads() {
    // Accepts connections and never answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&held);
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let server = Server::start();
    let client = server.pg_client().await;
    let hook = format!("WEBHOOK '{url}' WITH (timeout = '30s')");
    client.batch_execute(&rule("pager", &hook)).await.unwrap();
    let pid = server.pid().expect("running");
    let before = threads(pid);

    let t = now_ms();
    let started = Instant::now();
    for i in 0..40 {
        server.post_expect(&critical(t + i, &format!("web-{i}")), 1, 0);
    }
    let count = "SELECT count(*) FROM alerts WHERE cq_name = 'pager'";
    assert_eq!(wait_i64(&client, count, 20, |n| n == 40).await, 40);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "alerts took {took:?}");
    let pending = "SELECT count(*) FROM alert_events WHERE kind = 'fired' AND status = 'pending'";
    assert_eq!(wait_i64(&client, pending, 5, |n| n == 40).await, 40);
    let after = threads(pid);
    eprintln!("threads: {before} before, {after} with 40 undeliverable events; alerts in {took:?}");
    assert!(
        after <= before + 4,
        "threads grew from {before} to {after} with 40 undeliverable events"
    );
    // The default 4 workers each hold one connection.
    let connections = held.lock().unwrap().len();
    assert!((1..=4).contains(&connections), "{connections} connections");
}

#[tokio::test]
async fn kafka_channel_produces_the_alert_keyed_by_fingerprint() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message};

    let bootstrap = service_endpoint("LOGSPHERE_TEST_KAFKA");
    let topic = unique_name("logsphere_alerts");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("kafka admin client for {bootstrap}: {e}"));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(60))),
        )
        .await
        .unwrap_or_else(|e| panic!("kafka at {bootstrap}: create topic {topic}: {e}"));
    for result in created {
        result.unwrap_or_else(|(t, e)| panic!("kafka at {bootstrap}: create topic {t}: {e}"));
    }

    // Brokers from the environment, as an operator would set them.
    let server = Server::start_with(ServerOptions {
        env: vec![("LOGSPHERE_NOTIFY_KAFKA_BROKERS".into(), bootstrap.clone())],
        ..Default::default()
    });
    let client = server.pg_client().await;
    // Seed rule A (CONTINUOUS_QUERIES.md §6 example 1), as written there, to our topic.
    let rule_a = format!(
        "CREATE CONTINUOUS QUERY critical_log_alert
           ALERT (
             SEVERITY 'critical',
             DEDUP BY (source, log_level),
             COOLDOWN INTERVAL '5 minutes',
             RESOLVE AFTER INTERVAL '15 minutes',
             LABELS (team = 'sre'),
             ANNOTATIONS (summary = '{{log_level}} from {{source}}: {{message}}')
           )
           NOTIFY (TABLE alerts, KAFKA '{topic}')
         AS SELECT timestamp, source, log_level, message
            FROM logs
            WHERE log_level IN ('CRITICAL', 'FATAL')"
    );
    client.batch_execute(&rule_a).await.unwrap();
    server.post_expect(&critical(now_ms(), "db-7"), 1, 0);

    let delivered =
        "SELECT count(*) FROM alert_events WHERE kind = 'fired' AND status = 'delivered'";
    let n = wait_i64(&client, delivered, 60, |n| n == 1).await;
    let events = client
        .query(
            "SELECT kind, status, attempts, last_error FROM alert_events",
            &[],
        )
        .await
        .unwrap();
    let events: Vec<(String, String, i64, Option<String>)> = events
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(n, 1, "{events:?}\n{}", server.log());
    let row = client
        .query_one(
            "SELECT a.alert_id, a.fingerprint, e.event_id, e.channel \
             FROM alerts a JOIN alert_events e ON a.alert_id = e.alert_id \
             WHERE e.kind = 'fired'",
            &[],
        )
        .await
        .unwrap();
    let (alert_id, fingerprint, event_id, channel): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(channel, format!("kafka {topic}"));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{topic}_reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("kafka consumer for {bootstrap}: {e}"));
    consumer.subscribe(&[&topic]).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no message on {topic} within 60 s"))
        .unwrap_or_else(|e| panic!("consume from {topic}: {e}"));
    assert_eq!(msg.key(), Some(fingerprint.as_bytes()), "key = fingerprint");
    let headers = msg.headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("event_id"), Some(event_id.clone()));
    assert_eq!(header("transition"), Some("fired".to_string()));
    let value: serde_json::Value =
        serde_json::from_slice(msg.payload().expect("a value")).expect("JSON value");
    assert_eq!(value["event_id"], event_id.as_str());
    assert_eq!(value["transition"], "fired");
    assert_eq!(value["status"], "firing");
    let alert = &value["alert"];
    assert_eq!(alert["alert_id"], alert_id.as_str());
    assert_eq!(alert["fingerprint"], fingerprint.as_str());
    assert_eq!(alert["cq_name"], "critical_log_alert");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["state"], "firing");
    assert_eq!(
        alert["labels"],
        serde_json::json!({"source": "db-7", "log_level": "CRITICAL", "team": "sre"})
    );
    assert_eq!(alert["annotations"]["summary"], "CRITICAL from db-7: down");
    assert_eq!(alert["value"]["message"], "down");

    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
}
