//! Continuous queries in cluster mode: three nodes in one consumer group over a topic of
//! six partitions, the seed rules defined on one node, one source's records spread over
//! every partition. Each alert exists once cluster-wide and each notification reaches the
//! receiver under one id, also when a node is SIGKILLed mid-window, another joins
//! mid-window, and the killed one restarts from its checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::Server;
use logsphere_tests::services::unique_name;

use super::{Names, SERIAL, create_topics, produce_records, producer};
use crate::webhook_receiver::WebhookReceiver;

/// Seed rule A: any CRITICAL line is an alert (one instance per source and message).
fn rule_critical(url: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY critical_log_alert
           ALERT (SEVERITY 'critical', DEDUP BY (source, message))
           NOTIFY (WEBHOOK '{url}')
         AS SELECT timestamp, source, log_level, message FROM logs
            WHERE log_level = 'CRITICAL'"
    )
}

/// Seed rule B: more than 100 ERRORs per source per minute.
fn rule_burst(url: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY error_burst_per_source
           WATERMARK INTERVAL '1 second'
           EMIT ON THRESHOLD
           ALERT (SEVERITY 'warning', COOLDOWN INTERVAL '10 minutes')
           NOTIFY (WEBHOOK '{url}')
           WITH (idle_timeout = '5s')
         AS SELECT window_start, window_end, source, count(*) AS error_count
            FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
            WHERE log_level = 'ERROR'
            GROUP BY window_start, window_end, source
            HAVING count(*) > 100"
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `SELECT` of one text column and one bigint, as a sorted map; `None` when the node does
/// not answer.
async fn query_pairs(node: &Server, sql: &str) -> Option<BTreeMap<String, i64>> {
    let client = node.pg_client_as("logsphere", None).await.ok()?;
    let rows = client.query(sql, &[]).await.ok()?;
    Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Waits until `sql` answers `want` on `node`; panics with the last answer and the log.
async fn wait_for_pairs(node: &Server, sql: &str, want: &BTreeMap<String, i64>, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = query_pairs(node, sql).await;
        if last.as_ref() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "{sql}: wanted {want:?}, last answer {last:?}\n--- log ---\n{}",
        node.log()
    );
}

/// One record: `level` from `source` at `ts_ms`, with a findable message.
fn line(ts_ms: i64, level: &str, source: &str, message: &str) -> String {
    serde_json::json!({
        "timestamp": ts_ms * 1000,
        "level": level,
        "source": source,
        "message": message,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_fire_once_across_three_nodes_kills_and_joins() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("cq");
    create_topics(&names.brokers, &[&topic], 6).await;
    let receiver = WebhookReceiver::start();
    let n1 = names.node("n1", &[&topic], "");
    let mut n2 = names.node("n2", &[&topic], "");
    let n3 = names.node("n3", &[&topic], "");

    // Defined on n1; every node runs them within seconds.
    let client = n1.pg_client().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for rule in [
        rule_critical(&receiver.url("/pager")),
        rule_burst(&receiver.url("/slack")),
    ] {
        loop {
            match client.batch_execute(&rule).await {
                Ok(()) => break,
                // Cassandra not connected yet: 40001, try again.
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "create: {:?}",
                        e.as_db_error().map(|d| d.message().to_string())
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("create rule: {e}\n{}", n1.log()),
            }
        }
    }
    let defined = BTreeMap::from([
        ("critical_log_alert".to_string(), 1),
        ("error_burst_per_source".to_string(), 1),
    ]);
    let defs = "SELECT name, version FROM continuous_queries ORDER BY name";
    for node in [&n1, &n2, &n3] {
        wait_for_pairs(node, defs, &defined, Duration::from_secs(60)).await;
    }
    // The feeders read from the rules' creation on; give them a moment to be reading.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // One minute window in the past (within the default max_ingest_delay): web-1 has 150
    // ERRORs in it, api-1 has 60; the records of each are spread over all six partitions.
    let window = (now_ms() / 60_000 - 1) * 60_000;
    let p = producer(&names.brokers);
    let first = move |seq: u64| {
        let ts = window + (seq as i64 % 50) * 1000;
        match seq {
            0..80 => line(ts, "ERROR", "web-1", &format!("error {seq}")),
            80..110 => line(ts, "ERROR", "api-1", &format!("error {seq}")),
            110 => line(ts, "CRITICAL", "db-1", "disk full"),
            _ => line(ts, "CRITICAL", "db-2", "disk full"),
        }
    };
    produce_records(&p, &[&topic], 0..112, first).await;
    let alerts = "SELECT cq_name, count(*) FROM alerts GROUP BY cq_name ORDER BY cq_name";
    let crit_two = BTreeMap::from([("critical_log_alert".to_string(), 2)]);
    wait_for_pairs(&n1, alerts, &crit_two, Duration::from_secs(60)).await;

    // Every node read every partition: each rule saw all 112 records.
    let rows_in = "SELECT name, rows_in FROM continuous_queries ORDER BY name";
    let seen = |n: i64| {
        BTreeMap::from([
            ("critical_log_alert".to_string(), n),
            ("error_burst_per_source".to_string(), n),
        ])
    };
    for node in [&n1, &n2, &n3] {
        wait_for_pairs(node, rows_in, &seen(112), Duration::from_secs(60)).await;
    }
    // Mid-window, after n2 checkpointed them (a cut every 5 s): n2 dies, n4 joins with an
    // empty data directory.
    tokio::time::sleep(Duration::from_secs(7)).await;
    n2.kill();
    let n4 = names.node("n4", &[&topic], "");
    wait_for_pairs(&n4, defs, &defined, Duration::from_secs(60)).await;
    let second = move |seq: u64| {
        let ts = window + 50_000 + (seq as i64 % 9) * 1000;
        match seq {
            0..70 => line(ts, "ERROR", "web-1", &format!("error b{seq}")),
            70..100 => line(ts, "ERROR", "api-1", &format!("error b{seq}")),
            _ => line(ts, "CRITICAL", "cache-1", "evicting everything"),
        }
    };
    produce_records(&p, &[&topic], 0..101, second).await;

    let want = BTreeMap::from([
        ("critical_log_alert".to_string(), 3),
        ("error_burst_per_source".to_string(), 1),
    ]);
    for node in [&n1, &n3, &n4] {
        wait_for_pairs(node, alerts, &want, Duration::from_secs(90)).await;
    }
    // The killed node restarts from its checkpoint and replays what it missed: nothing
    // fires twice.
    n2.restart();
    wait_for_pairs(&n2, alerts, &want, Duration::from_secs(90)).await;
    // It restored its state and replayed from the offsets its checkpoint covers: every
    // record counted once. So did the node that joined, rebuilding from Kafka.
    for node in [&n1, &n2, &n3, &n4] {
        wait_for_pairs(node, rows_in, &seen(213), Duration::from_secs(60)).await;
    }
    let burst = query_pairs(
        &n3,
        "SELECT labels, count(*) FROM alerts WHERE cq_name = 'error_burst_per_source' GROUP BY labels",
    )
    .await
    .expect("burst alerts");
    assert_eq!(burst.len(), 1, "{burst:?}");
    assert!(
        burst.keys().all(|l| l.contains("web-1")),
        "only web-1 crossed 100 errors in the minute: {burst:?}"
    );

    // Each fired event reached the receiver, each under one id, once.
    let firing = |d: &[crate::webhook_receiver::Delivery]| {
        d.iter()
            .filter(|d| d.body["status"] == "firing")
            .map(|d| d.key.clone())
            .collect::<BTreeSet<String>>()
    };
    receiver
        .wait(Duration::from_secs(60), |d| firing(d).len() >= 4)
        .await;
    // Late duplicates would come from the nodes' next delivery sweeps.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let deliveries = receiver.deliveries();
    let mut keys = BTreeSet::new();
    for d in &deliveries {
        assert!(
            keys.insert(d.key.clone()),
            "event {} delivered twice: {deliveries:?}",
            d.key
        );
    }
    assert_eq!(
        firing(&deliveries).len(),
        4,
        "3 CRITICAL alerts and 1 burst alert fired: {deliveries:?}"
    );
    drop(n4);
}
