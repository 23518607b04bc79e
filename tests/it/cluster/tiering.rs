//! Cluster tiering: Cassandra's hot rows move to Parquet on the real HDFS, committed by an
//! LWT on the manifest, while ingest and queries go on, with kills at every step of a round
//! and two nodes racing for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use logsphere_tests::services::unique_name;
use logsphere_tests::{Server, ServerOptions, flush_rows, post_flush};
use rdkafka::producer::FutureProducer;

use super::{
    Names, SERIAL, SOURCES, create_topics, per_source, produce_records, producer, service_pid,
    signal, source_counts, wait_for_count,
};

use super::MANUAL_TIERING as MANUAL;

/// Record `seq`: its time is `base_s` seconds plus `seq` × 250 ms, so a run spans hours.
fn record(seq: u64, base_s: u64) -> String {
    serde_json::json!({
        "timestamp": (base_s * 1_000_000 + seq * 250_000),
        "level": if seq.is_multiple_of(10) { "ERROR" } else { "INFO" },
        "source": SOURCES[(seq % SOURCES.len() as u64) as usize],
        "message": format!("tiered record {seq}"),
    })
    .to_string()
}

/// Produces records `range` round-robin over `topics` (see [`record`]), waiting for every ack.
async fn produce(p: &FutureProducer, topics: &[&str], range: std::ops::Range<u64>, base_s: u64) {
    produce_records(p, topics, range, |seq| record(seq, base_s)).await;
}

/// `POST /v1/flush` off the async runtime; the rows the round moved.
async fn flush(node: &Server) -> u64 {
    let url = node.http_url();
    tokio::task::spawn_blocking(move || flush_rows(&url, Duration::from_secs(240)))
        .await
        .expect("flush thread")
}

/// (version, cold_rows, rounds, lease_busy) from the `tiering` table.
async fn tiering_state(node: &Server) -> (i64, i64, i64, i64) {
    let client = node.pg_client().await;
    let row = client
        .query_one(
            "SELECT version, cold_rows, rounds, lease_busy FROM tiering",
            &[],
        )
        .await
        .expect("tiering table");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Waits until the node's copy of the manifest reaches `version`.
async fn wait_for_version(node: &Server, version: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tiering_state(node).await.0 < version {
        assert!(
            Instant::now() < deadline,
            "manifest version {version} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tiering rounds while records stream in and a query loop watches `logs`: the count never
/// goes down (no row missed) and never has a duplicate; late records (behind the horizon)
/// are visible exactly once, first hot, then cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_under_ingest_never_double_or_miss_a_row() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let (a, b) = (unique_name("tier_a"), unique_name("tier_b"));
    let topics = [a.as_str(), b.as_str()];
    create_topics(&names.brokers, &topics, 2).await;
    let node = names.node("n1", &topics, MANUAL);
    let p = producer(&names.brokers);
    const BASE_S: u64 = 1_764_000_000; // 2025-11-24T16:00Z
    const N: u64 = 24_000;
    produce(&p, &topics, 0..N / 4, BASE_S).await;
    wait_for_count(
        &node,
        "SELECT count(*) FROM logs",
        (N / 4) as i64,
        Duration::from_secs(120),
    )
    .await;

    // The watcher: count(*) only grows and always equals the distinct messages.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicI64::new(0));
    let client = node.pg_client().await;
    let watcher = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        tokio::spawn(async move {
            let mut checks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let row = client
                    .query_one("SELECT count(*), count(DISTINCT message) FROM logs", &[])
                    .await
                    .expect("watcher query");
                let (all, distinct): (i64, i64) = (row.get(0), row.get(1));
                assert_eq!(all, distinct, "a row is visible twice");
                let before = seen.swap(all, Ordering::Relaxed);
                assert!(all >= before, "rows went missing: {before} then {all}");
                checks += 1;
            }
            checks
        })
    };
    for chunk in 1..4 {
        let round = flush(&node);
        let more = produce(&p, &topics, chunk * N / 4..(chunk + 1) * N / 4, BASE_S);
        let (moved, ()) = tokio::join!(round, more);
        if chunk == 1 {
            assert!(
                moved >= N / 4,
                "the first round moves at least what was visible"
            );
        }
    }
    wait_for_count(
        &node,
        "SELECT count(*) FROM logs",
        N as i64,
        Duration::from_secs(120),
    )
    .await;
    flush(&node).await;
    // Late records: times before the horizon, offsets after the cut. Visible once, hot.
    const LATE: u64 = 700;
    produce(&p, &topics, N..N + LATE, BASE_S - 86_400 * 30).await;
    wait_for_count(
        &node,
        "SELECT count(*) FROM logs",
        (N + LATE) as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        node.query_i64("SELECT count(*) FROM logs_hot").await,
        LATE as i64,
        "late records are hot"
    );
    assert_eq!(
        flush(&node).await,
        LATE,
        "the next round moves the late records"
    );
    stop.store(true, Ordering::Relaxed);
    let checks = watcher.await.expect("watcher");
    assert!(checks > 3, "the watcher ran ({checks} checks)");
    assert_eq!(
        node.query_i64("SELECT count(*) FROM logs").await,
        (N + LATE) as i64
    );
    assert_eq!(node.query_i64("SELECT count(*) FROM logs_hot").await, 0);
    assert_eq!(
        node.query_i64("SELECT count(*) FROM logs_cold").await,
        (N + LATE) as i64
    );
    assert_eq!(per_source(&node, "logs").await, source_counts(N + LATE));
    let (version, cold_rows, rounds, _) = tiering_state(&node).await;
    assert_eq!(
        cold_rows,
        (N + LATE) as i64,
        "the manifest names every row once"
    );
    assert_eq!(
        version, rounds,
        "every committed round is one manifest version"
    );
    // Time filters still prune both tiers and see the same rows.
    let hour = node
        .query_i64(
            "SELECT count(*) FROM logs WHERE timestamp >= TIMESTAMP '2025-11-24 17:00:00' \
             AND timestamp < TIMESTAMP '2025-11-24 18:00:00'",
        )
        .await;
    assert_eq!(
        hour,
        (N - 3600 * 4) as i64,
        "17:00 to the last record, 4 per second"
    );
    let client = node.pg_client().await;
    let plan: Vec<String> = client
        .query("EXPLAIN SELECT count(*) FROM logs WHERE timestamp >= TIMESTAMP '2025-11-24 17:00:00' AND timestamp < TIMESTAMP '2025-11-24 18:00:00'", &[])
        .await
        .expect("EXPLAIN")
        .iter()
        .map(|r| r.get::<_, String>(1))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("hour=17") && !plan.contains("hour=16"),
        "cold files pruned to the hour: {plan}"
    );
    assert!(plan.contains("CassandraScanExec"), "{plan}");
}

/// SIGKILL inside a round: while its files are written, after they are written and before
/// the commit, and right after the commit. After each restart every count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_step_of_a_round_loses_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("tier_kill");
    create_topics(&names.brokers, &[&topic], 2).await;
    let mut node = Server::start_with(ServerOptions {
        config: Some(names.config("n1", &[&topic], MANUAL)),
        env: vec![("LOGSPHERE_FAULT_FLUSH_PAUSE_MS".into(), "3000".into())],
    });
    let p = producer(&names.brokers);
    const BASE_S: u64 = 1_764_100_000;
    const STEP: u64 = 6_000;
    let mut produced = 0;
    let mut cold = 0;
    for (step, kill_after) in [
        ("while writing files", Duration::from_millis(150)),
        ("before the commit", Duration::from_millis(2_000)),
        ("after the commit", Duration::from_secs(30)),
    ] {
        produce(&p, &[&topic], produced..produced + STEP, BASE_S).await;
        produced += STEP;
        wait_for_count(
            &node,
            "SELECT count(*) FROM logs",
            produced as i64,
            Duration::from_secs(120),
        )
        .await;
        let url = node.http_url();
        let round = std::thread::spawn(move || post_flush(&url, Duration::from_secs(60)).is_ok());
        let started = Instant::now();
        while !round.is_finished() && started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(20));
        }
        let committed = round.is_finished();
        node.kill();
        let _ = round.join();
        node.restart();
        if committed {
            cold = produced;
        }
        // The first answer after a restart already knows the committed manifest.
        assert_eq!(
            first_answer(&node, "SELECT count(*) FROM logs_cold").await,
            cold as i64,
            "logs_cold right after a restart following a kill {step}"
        );
        wait_for_count(
            &node,
            "SELECT count(*) FROM logs",
            produced as i64,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(
            per_source(&node, "logs").await,
            source_counts(produced),
            "per-source counts after a kill {step}"
        );
        let client = node.pg_client().await;
        let row = client
            .query_one("SELECT count(DISTINCT message) FROM logs", &[])
            .await
            .expect("distinct");
        assert_eq!(
            row.get::<_, i64>(0),
            produced as i64,
            "no duplicate after a kill {step}"
        );
        assert_eq!(
            node.query_i64("SELECT count(*) FROM logs_cold").await,
            cold as i64,
            "the cold tier after a kill {step}"
        );
    }
    // The debris of the killed rounds is never listed, and the next round commits cleanly.
    flush(&node).await;
    assert_eq!(
        node.query_i64("SELECT count(*) FROM logs_cold").await,
        produced as i64
    );
    assert_eq!(node.query_i64("SELECT count(*) FROM logs_hot").await, 0);
}

/// Two nodes asked to tier at the same moment: the lease lets one round run at a time,
/// every row lands in exactly one committed file, and both nodes answer the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_to_tier_commit_each_row_once() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("tier_race");
    create_topics(&names.brokers, &[&topic], 4).await;
    let options = |id: &str| ServerOptions {
        config: Some(names.config(id, &[&topic], MANUAL)),
        env: vec![("LOGSPHERE_FAULT_FLUSH_PAUSE_MS".into(), "1500".into())],
    };
    let n1 = Server::start_with(options("n1"));
    let n2 = Server::start_with(options("n2"));
    let p = producer(&names.brokers);
    const BASE_S: u64 = 1_764_200_000;
    let mut produced = 0;
    for _ in 0..2 {
        produce(&p, &[&topic], produced..produced + 8_000, BASE_S).await;
        produced += 8_000;
        for n in [&n1, &n2] {
            wait_for_count(
                n,
                "SELECT count(*) FROM logs",
                produced as i64,
                Duration::from_secs(120),
            )
            .await;
        }
        let (m1, m2) = tokio::join!(flush(&n1), flush(&n2));
        assert_eq!(m1 + m2, 8_000, "the rows moved once between the two rounds");
    }
    let newest = tiering_state(&n1).await.0.max(tiering_state(&n2).await.0);
    wait_for_version(&n1, newest).await;
    wait_for_version(&n2, newest).await;
    let (v1, rows1, r1, busy1) = tiering_state(&n1).await;
    let (v2, rows2, r2, busy2) = tiering_state(&n2).await;
    assert_eq!(v1, v2, "both nodes see the same manifest");
    assert_eq!(rows1, produced as i64);
    assert_eq!(rows2, produced as i64);
    assert_eq!(r1 + r2, v1, "each committed version is one node's round");
    assert!(
        busy1 + busy2 >= 2,
        "the rounds waited for each other's lease"
    );
    for n in [&n1, &n2] {
        assert_eq!(
            n.query_i64("SELECT count(*) FROM logs").await,
            produced as i64
        );
        assert_eq!(
            n.query_i64("SELECT count(*) FROM logs_cold").await,
            produced as i64
        );
        assert_eq!(per_source(n, "logs").await, source_counts(produced));
    }
}

/// Resumes a SIGSTOPped process when dropped, even when the test fails first.
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// HDFS frozen (SIGSTOP: a hung namenode and datanodes) during a round: the round fails
/// within the cold store's timeout and says so, ingest into Cassandra goes on, nothing is
/// lost; once HDFS answers again the next round moves everything exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hdfs_down_during_a_round_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("tier_hdfs");
    create_topics(&names.brokers, &[&topic], 2).await;
    // `timeout_secs` lands in the [cold] section the config ends with.
    let node = names.node("n1", &[&topic], &format!("timeout_secs = 5\n{MANUAL}"));
    let p = producer(&names.brokers);
    const BASE_S: u64 = 1_764_300_000;
    produce(&p, &[&topic], 0..5_000, BASE_S).await;
    wait_for_count(
        &node,
        "SELECT count(*) FROM logs",
        5_000,
        Duration::from_secs(120),
    )
    .await;
    let frozen = Frozen(service_pid("hdfs"));
    signal(frozen.0, "STOP");
    let url = node.http_url();
    let round = tokio::task::spawn_blocking(move || {
        post_flush(&url, Duration::from_secs(120)).expect("POST /v1/flush")
    });
    // Ingest goes on while the round hangs on HDFS.
    produce(&p, &[&topic], 5_000..8_000, BASE_S).await;
    wait_for_count(
        &node,
        "SELECT count(*) FROM logs_hot",
        8_000,
        Duration::from_secs(120),
    )
    .await;
    let (status, body) = round.await.expect("flush thread");
    assert_eq!(status, 503, "the round fails while HDFS hangs: {body}");
    assert!(body.contains("no answer within"), "{body}");
    let client = node.pg_client().await;
    let row = client
        .query_one("SELECT failures, last_error, cold_rows FROM tiering", &[])
        .await
        .expect("tiering table");
    assert!(row.get::<_, i64>(0) >= 1, "the failure is counted");
    assert!(row.get::<_, Option<String>>(1).is_some(), "and shown");
    assert_eq!(row.get::<_, i64>(2), 0, "nothing was committed");
    drop(frozen);
    assert_eq!(flush(&node).await, 8_000, "the next round moves everything");
    assert_eq!(node.query_i64("SELECT count(*) FROM logs").await, 8_000);
    assert_eq!(
        node.query_i64("SELECT count(*) FROM logs_cold").await,
        8_000
    );
    assert_eq!(per_source(&node, "logs").await, source_counts(8_000));
    let row = client
        .query_one("SELECT last_error FROM tiering", &[])
        .await
        .expect("tiering table");
    assert_eq!(row.get::<_, Option<String>>(0), None, "recovered");

    // A query over cold files while HDFS hangs fails within the timeout and says why,
    // rather than hanging with its client; once HDFS answers, the same query works.
    let data = "SELECT max(message) FROM logs_cold";
    let frozen = Frozen(service_pid("hdfs"));
    signal(frozen.0, "STOP");
    let answer = tokio::time::timeout(Duration::from_secs(90), client.query_one(data, &[]))
        .await
        .expect("a query over a hung HDFS gave up within 90 s (cold.timeout_secs = 5)");
    let err = answer.expect_err("no answer from a frozen HDFS");
    let text = err
        .as_db_error()
        .map_or_else(|| err.to_string(), |e| e.message().to_string());
    assert!(text.contains("no answer within"), "{text}");
    drop(frozen);
    let row = client.query_one(data, &[]).await.expect("the query again");
    assert!(row.get::<_, Option<String>>(0).is_some());
}

/// HDFS shut down (connections refused, not a hang as above) while rounds run every two
/// seconds, then started again on its data: rounds fail and back off, ingest into Cassandra
/// goes on, `tiering` shows the failures, and once HDFS is back the rounds resume by
/// themselves and move every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hdfs_restart_mid_tiering() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("tier_hdfs_restart");
    create_topics(&names.brokers, &[&topic], 2).await;
    // `timeout_secs` lands in the [cold] section the config ends with.
    let node = names.node(
        "n1",
        &[&topic],
        "timeout_secs = 5\n[storage]\nflush_interval_secs = 2\n",
    );
    let p = producer(&names.brokers);
    const BASE_S: u64 = 1_764_500_000;
    produce(&p, &[&topic], 0..3_000, BASE_S).await;
    let cold = "SELECT count(*) FROM logs_cold";
    wait_for_count(&node, cold, 3_000, Duration::from_secs(120)).await;

    // Started again even when an assertion below fails: the other tests need HDFS.
    struct Resume;
    impl Drop for Resume {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let _ = super::services(&["resume", "hdfs"]);
            }
        }
    }
    super::services(&["down", "hdfs"]).expect("scripts/services down hdfs");
    let _resume = Resume;
    produce(&p, &[&topic], 3_000..6_000, BASE_S).await;
    // Ingest goes on: the new rows are hot, and stay hot while rounds fail.
    wait_for_count(
        &node,
        "SELECT count(*) FROM logs_hot",
        3_000,
        Duration::from_secs(120),
    )
    .await;
    let client = node.pg_client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one("SELECT failures, last_error FROM tiering", &[])
            .await
            .expect("tiering table");
        if row.get::<_, i64>(0) >= 2 && row.get::<_, Option<String>>(1).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed round shown while HDFS was down:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(node.query_i64("SELECT count(*) FROM logs_hot").await, 3_000);
    let resumed = tokio::task::spawn_blocking(|| super::services(&["resume", "hdfs"]))
        .await
        .expect("resume thread");
    resumed.expect("scripts/services resume hdfs");

    // No flush asked: the retrying rounds move the rest, once.
    wait_for_count(&node, cold, 6_000, Duration::from_secs(240)).await;
    assert_eq!(node.query_i64("SELECT count(*) FROM logs").await, 6_000);
    assert_eq!(per_source(&node, "logs").await, source_counts(6_000));
    let row = client
        .query_one("SELECT last_error FROM tiering", &[])
        .await
        .expect("tiering table");
    assert_eq!(row.get::<_, Option<String>>(0), None, "recovered");
}

/// Compaction in cluster mode: rounds leave one file per hour each; `POST /v1/compact`
/// merges them under the lease and commits by compare-and-set, and no answer changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_compaction_merges_files_and_changes_no_answer() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("tier_compact");
    create_topics(&names.brokers, &[&topic], 2).await;
    let node = names.node(
        "n1",
        &[&topic],
        &format!("{MANUAL}compact_interval_secs = 0\nretired_grace_secs = 1\n"),
    );
    let p = producer(&names.brokers);
    // 1200 records a round, 4 a second: every round writes into the same hour.
    const BASE_S: u64 = 1_764_403_200; // 08:00Z
    const ROUND: u64 = 1_200;
    for r in 0..4 {
        produce(&p, &[&topic], r * ROUND..(r + 1) * ROUND, BASE_S).await;
        wait_for_count(
            &node,
            "SELECT count(*) FROM logs",
            ((r + 1) * ROUND) as i64,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(flush(&node).await, ROUND);
    }
    let before = cold_files(&node).await;
    assert!(before >= 4, "one file per round: {before}");
    let answer = crate::compaction::compact(&node.http_url());
    assert!(answer["groups"].as_u64() >= Some(1), "{answer}");
    let after = cold_files(&node).await;
    assert!(after < before, "files {before} → {after}: {answer}");
    const N: u64 = 4 * ROUND;
    assert_eq!(node.query_i64("SELECT count(*) FROM logs").await, N as i64);
    assert_eq!(
        node.query_i64("SELECT count(*) FROM logs_cold").await,
        N as i64
    );
    let client = node.pg_client().await;
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT message) FROM logs", &[])
        .await
        .expect("distinct")
        .get(0);
    assert_eq!(distinct, N as i64);
    assert_eq!(per_source(&node, "logs").await, source_counts(N));
    // The retired files go after their grace, by the next compaction round.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answer = crate::compaction::compact(&node.http_url());
    assert!(answer["retired_removed"].as_u64() >= Some(1), "{answer}");
    assert_eq!(node.query_i64("SELECT count(*) FROM logs").await, N as i64);
}

async fn cold_files(node: &Server) -> i64 {
    node.query_i64("SELECT cold_files FROM tiering").await
}

/// The first successful answer of a one-number query (the node may still be connecting).
async fn first_answer(node: &Server, sql: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(client) = node.pg_client_as("logsphere", None).await
            && let Ok(row) = client.query_one(sql, &[]).await
        {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: no answer\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
