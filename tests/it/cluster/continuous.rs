//! Continuous queries in cluster mode: three nodes in one consumer group over a topic of
//! six partitions, the seed rules defined on one node, one source's records spread over
//! every partition. Each alert exists once cluster-wide and each notification reaches the
//! receiver under one id, also when a node is SIGKILLed mid-window, another joins
//! mid-window, and the killed one restarts from its checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::Server;
use logsphere_tests::services::unique_name;
use rdkafka::producer::FutureRecord;

use super::{Names, SERIAL, create_topics, produce_records, producer};
use crate::continuous_equivalence::{Facts, facts};
use crate::webhook_receiver::{Delivery, WebhookReceiver};

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

/// Runs each `CREATE` on `node`, retrying while it answers 40001 (Cassandra not connected
/// yet) for up to two minutes.
async fn create_rules(node: &Server, rules: &[String]) {
    let client = node.pg_client().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for rule in rules {
        while let Err(e) = client.batch_execute(rule).await {
            let message = e.as_db_error().map(|d| d.message().to_string());
            assert!(
                Instant::now() < deadline,
                "create rule: {e} {message:?}\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The event ids of the `firing` notifications received.
fn firing_keys(deliveries: &[Delivery]) -> BTreeSet<String> {
    deliveries
        .iter()
        .filter(|d| d.body["status"] == "firing")
        .map(|d| d.key.clone())
        .collect()
}

/// Creates on `creator` a per-row CRITICAL rule `crit` (with `notify`) and a per-minute
/// ERROR count `per_minute` into `errors_per_minute`, and waits until `other` runs both;
/// returns the query listing them and its answer.
async fn crit_and_per_minute(
    creator: &Server,
    other: &Server,
    notify: &str,
) -> (&'static str, BTreeMap<String, i64>) {
    create_rules(
        creator,
        &[
            "CREATE CONTINUOUS QUERY per_minute INTO errors_per_minute \
               WATERMARK INTERVAL '1 second' WITH (idle_timeout = '5s') \
             AS SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, count(*) AS n \
                FROM logs WHERE log_level = 'ERROR' GROUP BY 1, 2"
                .to_string(),
            format!(
                "CREATE CONTINUOUS QUERY crit \
                   ALERT (SEVERITY 'critical', DEDUP BY (source, message)) {notify} \
                 AS SELECT timestamp, source, log_level, message FROM logs \
                    WHERE log_level = 'CRITICAL'"
            ),
        ],
    )
    .await;
    let defs = "SELECT name, version FROM continuous_queries ORDER BY name";
    let defined = BTreeMap::from([("crit".to_string(), 1), ("per_minute".to_string(), 1)]);
    wait_for_pairs(other, defs, &defined, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    (defs, defined)
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
    // With no rule defined, no node reads the stream a second time for rules.
    let feeding = "continuous-query feeder reading every partition";
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in [&n1, &n2, &n3] {
        assert!(!node.log().contains(feeding), "{}", node.log());
    }

    // Defined on n1; every node runs them within seconds.
    create_rules(
        &n1,
        &[
            rule_critical(&receiver.url("/pager")),
            rule_burst(&receiver.url("/slack")),
        ],
    )
    .await;
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
    for node in [&n1, &n2, &n3] {
        assert!(node.log().contains(feeding), "{}", node.log());
    }

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
    receiver
        .wait(Duration::from_secs(60), |d| firing_keys(d).len() >= 4)
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
        firing_keys(&deliveries).len(),
        4,
        "3 CRITICAL alerts and 1 burst alert fired: {deliveries:?}"
    );
    drop(n4);
}

/// The rules of the kill test: shape A per source, and more than 40 ERRORs per source per
/// minute. Event time alone closes windows (`max_ingest_delay` is out of the way), so the
/// live alerts can be compared with BACKTEST over the stored rows.
fn kill_rules(url: &str) -> Vec<(&'static str, String)> {
    let opts = "WATERMARK INTERVAL '10 seconds' \
                WITH (max_ingest_delay = '3650 days', idle_timeout = '5s')";
    vec![
        (
            "k_crit",
            format!(
                "CREATE CONTINUOUS QUERY k_crit {opts} \
                 ALERT (SEVERITY 'critical', DEDUP BY (source)) NOTIFY (WEBHOOK '{url}') \
                 AS SELECT timestamp, source, log_level FROM logs WHERE log_level = 'CRITICAL'"
            ),
        ),
        (
            "k_burst",
            format!(
                "CREATE CONTINUOUS QUERY k_burst {opts} EMIT ON THRESHOLD \
                 ALERT (SEVERITY 'warning') NOTIFY (WEBHOOK '{url}') \
                 AS SELECT window_start, source, count(*) AS n \
                 FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
                 GROUP BY window_start, source HAVING count(*) > 40"
            ),
        ),
    ]
}

/// The fired alerts of `cq` on `node`, comparable with BACKTEST's (continuous_equivalence.rs).
async fn live_facts(node: &Server, cq: &str, per_row: bool) -> Option<Facts> {
    let client = node.pg_client_as("logsphere", None).await.ok()?;
    let rows = client
        .query(
            "SELECT alert_id, fingerprint FROM alerts WHERE cq_name = $1 AND state <> 'pending' \
             ORDER BY fired_at, alert_id",
            &[&cq],
        )
        .await
        .ok()?;
    Some(facts(&rows, per_row, false))
}

/// A seeded stream over six partitions while random nodes are SIGKILLed and restarted ten
/// times: on every node `alerts` equals BACKTEST over the stored rows, and the webhook saw
/// every fired alert under one event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_equal_backtest_across_ten_kills() {
    use rand::{Rng, SeedableRng};
    let _serial = SERIAL.lock().await;
    let seed: u64 = std::env::var("LOGSPHERE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random_range(0..1_000_000));
    eprintln!("cluster CQ kill test: LOGSPHERE_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let names = Names::new();
    let topic = unique_name("cqk");
    create_topics(&names.brokers, &[&topic], 6).await;
    let receiver = WebhookReceiver::start();
    let mut nodes = vec![
        names.node("n1", &[&topic], ""),
        names.node("n2", &[&topic], ""),
        names.node("n3", &[&topic], ""),
    ];
    let rules = kill_rules(&receiver.url("/hook"));
    let sqls: Vec<String> = rules.iter().map(|(_, sql)| sql.clone()).collect();
    create_rules(&nodes[0], &sqls).await;
    let defined = BTreeMap::from([("k_burst".to_string(), 1), ("k_crit".to_string(), 1)]);
    for node in &nodes {
        wait_for_pairs(
            node,
            "SELECT name, version FROM continuous_queries ORDER BY name",
            &defined,
            Duration::from_secs(60),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 20 rounds of 15 s of event time (5 minutes) in the past; per round and source 0–20
    // ERRORs (so some minutes cross 40 and some do not), now and then a CRITICAL, and a
    // heartbeat per partition so every partition's watermark moves.
    let base = (now_ms() / 60_000 - 10) * 60_000;
    let sources = ["api", "db", "web", "queue"];
    let p = producer(&names.brokers);
    let mut total = 0u64;
    let mut kills = 0;
    for round in 0..20i64 {
        let start = base + round * 15_000;
        let mut lines: Vec<(i64, String)> = Vec::new();
        for source in sources {
            for _ in 0..rng.random_range(0..=20) {
                let ts = start + rng.random_range(0..14_000);
                lines.push((ts, line(ts, "ERROR", source, "boom")));
            }
            for _ in 0..rng.random_range(0..10) {
                let ts = start + rng.random_range(0..14_000);
                lines.push((ts, line(ts, "INFO", source, "fine")));
            }
        }
        if rng.random_range(0..3) == 0 {
            let ts = start + rng.random_range(0..14_000);
            let source = sources[rng.random_range(0..sources.len())];
            lines.push((ts, line(ts, "CRITICAL", source, "down")));
        }
        lines.sort();
        let mut sends = Vec::new();
        for (ts, body) in &lines {
            let partition = rng.random_range(0..6);
            let record = FutureRecord::<(), String>::to(&topic)
                .partition(partition)
                .payload(body);
            sends.push(p.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
            let _ = ts;
        }
        for partition in 0..6 {
            let body = line(start + 14_500, "INFO", "heartbeat", "beat");
            let record = FutureRecord::<(), String>::to(&topic)
                .partition(partition)
                .payload(&body);
            sends.push(p.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
        }
        total += sends.len() as u64;
        for s in sends {
            s.await.expect("delivery").expect("delivered");
        }
        if round % 2 == 1 {
            let victim = rng.random_range(0..nodes.len());
            nodes[victim].restart();
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(kills, 10);
    // Five minutes past the stream, outside the backtest range: every window closes.
    let mut sends = Vec::new();
    for partition in 0..6 {
        let body = line(base + 10 * 60_000, "INFO", "closer", "close");
        let record = FutureRecord::<(), String>::to(&topic)
            .partition(partition)
            .payload(&body);
        sends.push(p.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
    }
    total += sends.len() as u64;
    for s in sends {
        s.await.expect("delivery").expect("delivered");
    }
    super::wait_for_count(
        &nodes[0],
        "SELECT count(*) FROM logs",
        total as i64,
        Duration::from_secs(180),
    )
    .await;

    // A fresh connection: the first node may have been restarted during the stream.
    let client = nodes[0].pg_client().await;
    let mut fired_alerts = 0;
    for (name, _) in &rules {
        let per_row = *name == "k_crit";
        let sql = format!(
            "BACKTEST CONTINUOUS QUERY {name} FROM to_timestamp_millis({base}) \
             TO to_timestamp_millis({})",
            base + 5 * 60_000
        );
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let batch = facts(&rows, per_row, false);
        let rows_bt = rows;
        fired_alerts += rows_bt
            .iter()
            .filter(|r| r.get::<_, String>("transition") == "fired")
            .count();
        for node in &nodes {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut got = live_facts(node, name, per_row).await;
            while got.as_ref() != Some(&batch) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                got = live_facts(node, name, per_row).await;
            }
            if got.as_ref() != Some(&batch) {
                let rows = client
                    .query(
                        "SELECT alert_id, fingerprint, state, labels, value, observation_count, \
                         resolved_reason FROM alerts WHERE cq_name = $1",
                        &[name],
                    )
                    .await
                    .map(|rows| {
                        rows.iter()
                            .map(|r| {
                                let c: Vec<String> = (0..7)
                                    .map(|i| match i {
                                        5 => r.get::<_, i64>(i).to_string(),
                                        6 => r.get::<_, Option<String>>(i).unwrap_or_default(),
                                        _ => r.get::<_, String>(i),
                                    })
                                    .collect();
                                c.join(" | ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                let crit = client
                    .query(
                        "SELECT CAST(timestamp AS TEXT) AS t, source, CAST(ingest_time AS TEXT) AS i \
                         FROM logs WHERE log_level = 'CRITICAL' ORDER BY timestamp",
                        &[],
                    )
                    .await
                    .map(|rows| {
                        rows.iter()
                            .map(|r| {
                                format!(
                                    "{} {} ingested {}",
                                    r.get::<_, String>(0),
                                    r.get::<_, String>(1),
                                    r.get::<_, String>(2)
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                eprintln!("CRITICAL rows:\n{crit:?}");
                for (i, n) in nodes.iter().enumerate() {
                    let q = query_pairs(n, "SELECT name, rows_in FROM continuous_queries").await;
                    eprintln!("n{} rows_in {q:?} (total {total})", i + 1);
                }
                let mut feeders: Vec<String> = Vec::new();
                for (i, n) in nodes.iter().enumerate() {
                    let Some(dir) = n.data_dir().parent().map(|p| p.to_path_buf()) else {
                        continue;
                    };
                    for start in 0..20 {
                        let Ok(text) =
                            std::fs::read_to_string(dir.join(format!("server-{start}.log")))
                        else {
                            continue;
                        };
                        feeders.extend(
                            text.lines()
                                .filter(|l| l.contains("cluster::continuous"))
                                .map(|l| {
                                    format!("n{} life {start}: {}", i + 1, &l[..l.len().min(260)])
                                }),
                        );
                    }
                }
                panic!(
                    "seed {seed}, {name}: live alerts {got:?} differ from {sql}: {batch:?}\n\
                     alerts:\n{rows:?}\nbacktest:\n{}\nfeeders:\n{}",
                    backtest_rows(&rows_bt),
                    feeders.join("\n")
                );
            }
        }
    }
    assert!(
        fired_alerts >= 3,
        "seed {seed}: only {fired_alerts} alerts fired"
    );
    // Every fired alert reached the webhook, under one event id each.
    let deliveries = receiver
        .wait(Duration::from_secs(90), |d| {
            firing_keys(d).len() >= fired_alerts
        })
        .await;
    assert_eq!(
        firing_keys(&deliveries).len(),
        fired_alerts,
        "seed {seed}: one event id per fired alert: {deliveries:?}"
    );
}

/// BACKTEST transitions, one line each, for failure messages.
fn backtest_rows(rows: &[tokio_postgres::Row]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{} | {} | {} | {} | {}",
                r.get::<_, String>("alert_id"),
                r.get::<_, String>("fingerprint"),
                r.get::<_, String>("transition"),
                r.get::<_, String>("state"),
                r.get::<_, String>("value"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `INTO` and `NOTIFY (TABLE …)` in cluster mode: the tables are defined in Cassandra and
/// every node answers from there; a row several nodes derive is one row; the answers stay
/// when the creating node dies, another joins and rebuilds from Kafka, and the dead one
/// restarts and replays; a query writing other columns into a table is refused (42P07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_and_notify_tables_are_shared_by_every_node() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("cqt");
    create_topics(&names.brokers, &[&topic], 4).await;
    let mut n1 = names.node("n1", &[&topic], "");
    let n2 = names.node("n2", &[&topic], "");
    let (defs, defined) = crit_and_per_minute(&n1, &n2, "NOTIFY (TABLE critical_log)").await;

    // Minute A, three minutes back: 80 ERRORs of web-1, 30 of api-1, two CRITICAL lines;
    // then INFO lines in minute B on every partition close it.
    let a = (now_ms() / 60_000 - 3) * 60_000;
    let p = producer(&names.brokers);
    produce_records(&p, &[&topic], 0..112, move |seq| {
        let ts = a + (seq as i64 % 50) * 1000;
        match seq {
            0..80 => line(ts, "ERROR", "web-1", &format!("error {seq}")),
            80..110 => line(ts, "ERROR", "api-1", &format!("error {seq}")),
            110 => line(ts, "CRITICAL", "db-1", "disk full"),
            _ => line(ts, "CRITICAL", "db-2", "disk full"),
        }
    })
    .await;
    produce_records(&p, &[&topic], 0..40, move |seq| {
        line(a + 70_000, "INFO", "tick", &format!("tick {seq}"))
    })
    .await;
    let per_minute = "SELECT source || '/' || CAST(CAST(date_part('epoch', minute) AS BIGINT) AS VARCHAR), n \
                      FROM errors_per_minute";
    let key = |source: &str, minute_ms: i64| format!("{source}/{}", minute_ms / 1000);
    let mut want = BTreeMap::from([(key("web-1", a), 80), (key("api-1", a), 30)]);
    let critical = "SELECT state, count(*) FROM critical_log GROUP BY state";
    let firing = BTreeMap::from([("firing".to_string(), 2)]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, per_minute, &want, Duration::from_secs(60)).await;
        wait_for_pairs(node, critical, &firing, Duration::from_secs(60)).await;
    }

    // Another query may not write other columns into the table: refused on any node, and
    // not stored for the others.
    let client = n2.pg_client().await;
    let refused = client
        .batch_execute(
            "CREATE CONTINUOUS QUERY other INTO errors_per_minute \
             AS SELECT source, message FROM logs",
        )
        .await
        .expect_err("a query writing other columns into errors_per_minute");
    let db = refused.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "42P07", "{db:?}");
    assert!(db.message().contains("errors_per_minute"), "{db:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for_pairs(&n1, defs, &defined, Duration::from_secs(10)).await;

    // The node that created them dies; n3 joins with an empty data directory and rebuilds
    // from Kafka; minute B gets 20 ERRORs of web-1 and is closed by lines in minute C.
    n1.kill();
    let n3 = names.node("n3", &[&topic], "");
    wait_for_pairs(&n3, defs, &defined, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce_records(&p, &[&topic], 0..20, move |seq| {
        line(a + 75_000, "ERROR", "web-1", &format!("error b{seq}"))
    })
    .await;
    produce_records(&p, &[&topic], 0..40, move |seq| {
        line(a + 130_000, "INFO", "tick", &format!("tick c{seq}"))
    })
    .await;
    want.insert(key("web-1", a + 60_000), 20);
    for node in [&n2, &n3] {
        wait_for_pairs(node, per_minute, &want, Duration::from_secs(90)).await;
        wait_for_pairs(node, critical, &firing, Duration::from_secs(30)).await;
    }
    // `continuous_queries.nodes` says who runs a query: the dead node drops out.
    let nodes = "SELECT coalesce(nodes, ''), count(*) FROM continuous_queries WHERE name = 'per_minute' \
                 GROUP BY nodes";
    let two = BTreeMap::from([("n2, n3".to_string(), 1)]);
    wait_for_pairs(&n3, nodes, &two, Duration::from_secs(30)).await;
    // n1 restarts from its checkpoint and replays what it missed: the same rows, once.
    n1.restart();
    wait_for_pairs(&n1, per_minute, &want, Duration::from_secs(90)).await;
    let three = BTreeMap::from([("n1, n2, n3".to_string(), 1)]);
    wait_for_pairs(&n2, nodes, &three, Duration::from_secs(30)).await;
    let rows = BTreeMap::from([("rows".to_string(), 3)]);
    wait_for_pairs(
        &n1,
        "SELECT 'rows', count(*) FROM errors_per_minute",
        &rows,
        Duration::from_secs(10),
    )
    .await;
    // psql's \dt lists them on every node.
    let listed = "SELECT table_name, count(*) FROM information_schema.tables \
                  WHERE table_name IN ('errors_per_minute', 'critical_log') GROUP BY table_name";
    let both = BTreeMap::from([
        ("critical_log".to_string(), 1),
        ("errors_per_minute".to_string(), 1),
    ]);
    for node in [&n1, &n2, &n3] {
        wait_for_pairs(node, listed, &both, Duration::from_secs(10)).await;
    }
    // The table outlives its query, in Cassandra: after the DROP, a node that never ran
    // the query (empty data directory, started afterwards) answers from the shared rows.
    n2.pg_client()
        .await
        .batch_execute("DROP CONTINUOUS QUERY per_minute")
        .await
        .expect("drop per_minute");
    let only_crit = BTreeMap::from([("crit".to_string(), 1)]);
    wait_for_pairs(&n3, defs, &only_crit, Duration::from_secs(30)).await;
    let n4 = names.node("n4", &[&topic], "");
    wait_for_pairs(&n4, defs, &only_crit, Duration::from_secs(60)).await;
    wait_for_pairs(&n4, per_minute, &want, Duration::from_secs(30)).await;
    wait_for_pairs(&n4, critical, &firing, Duration::from_secs(30)).await;
}

/// `START FROM` in cluster mode: a query created after records were stored — some tiered
/// to HDFS, some hot in Cassandra — counts them (the backfill, on every node) and then the
/// records produced after its creation, each once; its `INTO` rows agree on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_backfills_both_tiers_then_counts_live_once() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("cqs");
    create_topics(&names.brokers, &[&topic], 4).await;
    let n1 = names.node("n1", &[&topic], super::MANUAL_TIERING);
    let n2 = names.node("n2", &[&topic], super::MANUAL_TIERING);
    // History: minute OLD in the cold tier, minute OLD + 1 hot.
    const OLD: i64 = 1_764_403_200_000; // 2025-11-29 08:00Z
    let p = producer(&names.brokers);
    produce_records(&p, &[&topic], 0..40, |seq| {
        line(
            OLD + seq as i64 * 1000,
            "ERROR",
            "web-1",
            &format!("old {seq}"),
        )
    })
    .await;
    super::wait_for_count(
        &n1,
        "SELECT count(*) FROM logs",
        40,
        Duration::from_secs(120),
    )
    .await;
    let url = n1.http_url();
    let moved = tokio::task::spawn_blocking(move || {
        logsphere_tests::flush_rows(&url, Duration::from_secs(240))
    })
    .await
    .expect("flush thread");
    assert_eq!(moved, 40);
    produce_records(&p, &[&topic], 0..30, |seq| {
        line(
            OLD + 60_000 + seq as i64 * 1000,
            "ERROR",
            "web-1",
            &format!("hot {seq}"),
        )
    })
    .await;
    super::wait_for_count(
        &n1,
        "SELECT count(*) FROM logs",
        70,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(n1.query_i64("SELECT count(*) FROM logs_cold").await, 40);

    create_rules(
        &n1,
        &["CREATE CONTINUOUS QUERY since_start INTO errors_since \
             START FROM EARLIEST WATERMARK INTERVAL '1 second' WITH (idle_timeout = '5s') \
           AS SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, count(*) AS n \
              FROM logs WHERE log_level = 'ERROR' GROUP BY 1, 2"
            .to_string()],
    )
    .await;
    // Live, right after the CREATE: minute A (three minutes back), closed by lines in A + 1.
    let a = (now_ms() / 60_000 - 3) * 60_000;
    produce_records(&p, &[&topic], 0..25, move |seq| {
        line(
            a + (seq as i64 % 20) * 1000,
            "ERROR",
            "api-1",
            &format!("live {seq}"),
        )
    })
    .await;
    produce_records(&p, &[&topic], 0..40, move |seq| {
        line(a + 70_000, "INFO", "tick", &format!("tick {seq}"))
    })
    .await;
    let per_minute = "SELECT source || '/' || CAST(CAST(date_part('epoch', minute) AS BIGINT) AS VARCHAR), n \
                      FROM errors_since";
    let key = |source: &str, minute_ms: i64| format!("{source}/{}", minute_ms / 1000);
    let want = BTreeMap::from([
        (key("web-1", OLD), 40),
        (key("web-1", OLD + 60_000), 30),
        (key("api-1", a), 25),
    ]);
    let state = "SELECT state, count(*) FROM continuous_queries GROUP BY state";
    let running = BTreeMap::from([("RUNNING".to_string(), 1)]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, per_minute, &want, Duration::from_secs(120)).await;
        wait_for_pairs(node, state, &running, Duration::from_secs(30)).await;
    }
    // Each node's query saw every row once: 70 stored, 65 live (25 + 40 ticks).
    let rows_in = "SELECT name, rows_in FROM continuous_queries";
    let seen = BTreeMap::from([("since_start".to_string(), 135)]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, rows_in, &seen, Duration::from_secs(30)).await;
    }
}

/// `PAUSE` and `RESUME` in cluster mode, as embedded: a paused query takes nothing and
/// alerts on nothing; resumed, it reads what arrived while it was paused, each record once,
/// on every node — also on a node SIGKILLed and restarted while the query was paused, and
/// with the `RESUME` run on another node than the `PAUSE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_reads_what_arrived_while_paused_once_on_every_node() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("cqp");
    create_topics(&names.brokers, &[&topic], 4).await;
    let mut n1 = names.node("n1", &[&topic], "");
    let n2 = names.node("n2", &[&topic], "");
    crit_and_per_minute(&n1, &n2, "").await;

    // Before the pause: 2 CRITICAL lines and 50 ERRORs of web-1 in minute A.
    let a = (now_ms() / 60_000 - 3) * 60_000;
    let p = producer(&names.brokers);
    produce_records(&p, &[&topic], 0..52, move |seq| match seq {
        0..50 => line(a + seq as i64 * 100, "ERROR", "web-1", &format!("e{seq}")),
        _ => line(a, "CRITICAL", "db-1", &format!("c{seq}")),
    })
    .await;
    let alerts = "SELECT 'crit', count(*) FROM alerts WHERE cq_name = 'crit'";
    let observed = "SELECT 'seen', CAST(sum(observation_count) AS BIGINT) FROM alerts \
                    WHERE cq_name = 'crit'";
    let want = |n: i64| BTreeMap::from([("crit".to_string(), n)]);
    let seen = |n: i64| BTreeMap::from([("seen".to_string(), n)]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, alerts, &want(2), Duration::from_secs(60)).await;
    }

    // PAUSE on n2; both nodes show it.
    for q in ["crit", "per_minute"] {
        n2.pg_client()
            .await
            .batch_execute(&format!("ALTER CONTINUOUS QUERY {q} PAUSE"))
            .await
            .expect("pause");
    }
    let states = "SELECT state, count(*) FROM continuous_queries GROUP BY state";
    let paused = BTreeMap::from([("PAUSED".to_string(), 2)]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, states, &paused, Duration::from_secs(30)).await;
    }
    // While paused: 3 more CRITICAL lines, 30 more ERRORs in minute A, and lines in minute
    // A + 1 that would close it. Nothing fires, nothing is written.
    produce_records(&p, &[&topic], 0..73, move |seq| match seq {
        0..30 => line(
            a + 10_000 + seq as i64 * 100,
            "ERROR",
            "web-1",
            &format!("p{seq}"),
        ),
        30..33 => line(a + 20_000, "CRITICAL", "db-1", &format!("c{seq}")),
        _ => line(a + 70_000, "INFO", "tick", &format!("t{seq}")),
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let per_minute = "SELECT source || '/' || CAST(CAST(date_part('epoch', minute) AS BIGINT) AS VARCHAR), n \
                      FROM errors_per_minute";
    for node in [&n1, &n2] {
        assert_eq!(
            query_pairs(node, alerts).await,
            Some(want(2)),
            "{}",
            node.log()
        );
        assert_eq!(
            query_pairs(node, per_minute).await,
            Some(BTreeMap::new()),
            "{}",
            node.log()
        );
    }

    // n1 dies and restarts while the queries are paused, then RESUME runs on it.
    n1.kill();
    n1.restart();
    wait_for_pairs(&n1, states, &paused, Duration::from_secs(60)).await;
    for q in ["crit", "per_minute"] {
        let client = n1.pg_client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = client
            .batch_execute(&format!("ALTER CONTINUOUS QUERY {q} RESUME"))
            .await
        {
            assert!(Instant::now() < deadline, "resume {q}: {e:?}\n{}", n1.log());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Both nodes count the paused records: 80 ERRORs once, 5 alerts each observed once.
    let key = format!("web-1/{}", a / 1000);
    let counted = BTreeMap::from([(key, 80)]);
    let running = BTreeMap::from([("RUNNING".to_string(), 2)]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, states, &running, Duration::from_secs(30)).await;
        wait_for_pairs(node, alerts, &want(5), Duration::from_secs(90)).await;
        wait_for_pairs(node, per_minute, &counted, Duration::from_secs(90)).await;
    }
    // After the resume, live again: one more CRITICAL line fires at once.
    produce_records(&p, &[&topic], 0..1, move |_| {
        line(a + 80_000, "CRITICAL", "db-1", "after")
    })
    .await;
    for node in [&n1, &n2] {
        wait_for_pairs(node, alerts, &want(6), Duration::from_secs(60)).await;
        wait_for_pairs(node, observed, &seen(6), Duration::from_secs(30)).await;
    }
    // Each node's copy of each query took each record once: 126 since their creation.
    let per_node = "SELECT node || '/' || name, rows_in FROM continuous_query_nodes";
    let all: BTreeMap<String, i64> = ["n1/crit", "n1/per_minute", "n2/crit", "n2/per_minute"]
        .into_iter()
        .map(|k| (k.to_string(), 126))
        .collect();
    // And `continuous_queries` answers the same on both nodes.
    let summary = "SELECT name || ' ' || state || ' ' || nodes || ' ' || CAST(rows_in AS VARCHAR)                    || ' ' || CAST(alerts AS VARCHAR) || ' ' || coalesce(error, '-'), version                    FROM continuous_queries";
    let same = BTreeMap::from([
        ("crit RUNNING n1, n2 126 6 -".to_string(), 1),
        ("per_minute RUNNING n1, n2 126 0 -".to_string(), 1),
    ]);
    for node in [&n1, &n2] {
        wait_for_pairs(node, per_node, &all, Duration::from_secs(30)).await;
        wait_for_pairs(node, summary, &same, Duration::from_secs(30)).await;
    }
}
