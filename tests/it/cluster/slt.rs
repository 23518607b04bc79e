//! The `.slt` files against a cluster-mode node: the same fixture as the embedded run
//! (`crate::slt`), produced to Kafka instead of posted, hours 10 and 11 tiered to Parquet
//! on HDFS, hour 12 left in Cassandra. Where the modes differ on purpose (a dead letter's
//! origin, the `kafka_*` attributes) the files say so with `onlyif cluster` /
//! `skipif cluster`. `continuous.slt` waits for continuous queries in cluster mode.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{MANUAL_TIERING, Names, SERIAL, producer, wait_for_count};
use crate::slt::{fixture, run_files};

/// The fixture's topics. The files name them, so unlike the other cluster tests this one
/// cannot give them unique names: it deletes and recreates them (one partition each, so
/// offsets, and with them the `kafka_*` attributes, are the same on every run).
const TOPICS: [&str; 2] = ["logs.activity", "logs.error"];

/// 2026-11-24T00:00:00Z in ms since the epoch.
const DAY_MS: i64 = 1_795_478_400_000;

/// Deletes `topics` if they exist and creates them again, empty.
async fn fresh_topics(brokers: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("kafka admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let _ = admin.delete_topics(&TOPICS, &opts).await;
    // Deletion completes asynchronously: creation succeeds once the old topic is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<&str> = TOPICS.to_vec();
    while !missing.is_empty() {
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        let results = admin
            .create_topics(&new, &opts)
            .await
            .expect("create topics");
        missing.clear();
        for r in results {
            match r {
                Ok(_) => {}
                Err((t, RDKafkaErrorCode::TopicAlreadyExists)) if Instant::now() < deadline => {
                    missing.push(TOPICS.iter().find(|x| **x == t).copied().unwrap_or("?"));
                }
                Err((t, e)) => panic!("create topic {t}: {e}"),
            }
        }
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The event time of a fixture line (`"ts":"2026-11-24THH:MM:SSZ"`) in ms, used as the
/// Kafka timestamp so `kafka_timestamp_ms` is the same on every run.
fn ts_ms(line: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
    let ts = v["ts"].as_str().expect("fixture ts");
    let field = |a: usize| ts[a..a + 2].parse::<i64>().expect("fixture ts digits");
    DAY_MS + ((field(11) * 60 + field(14)) * 60 + field(17)) * 1_000
}

/// Produces one message and waits for its ack (one at a time: offsets follow the fixture).
async fn send(p: &FutureProducer, topic: &str, payload: &[u8], ts_ms: i64) {
    p.send(
        FutureRecord::<(), [u8]>::to(topic)
            .payload(payload)
            .timestamp(ts_ms),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
}

/// Each fixture line to the topic it names.
async fn send_fixture(p: &FutureProducer, hour: u32, n: usize) {
    for line in fixture(hour, n).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
        let topic = v["topic"].as_str().expect("fixture topic");
        send(p, topic, line.as_bytes(), ts_ms(line)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_in_cluster_mode() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    fresh_topics(&names.brokers).await;
    let node = names.node("slt-1", &TOPICS, MANUAL_TIERING);
    let p = producer(&names.brokers);

    send_fixture(&p, 10, 100).await;
    send_fixture(&p, 11, 100).await;
    for bad in [&b"not json"[..], b"[1,2]", b"{\"ts\":\"soon\"}"] {
        send(&p, TOPICS[0], bad, DAY_MS + 11 * 3_600_000).await;
    }
    let within = Duration::from_secs(120);
    wait_for_count(&node, "SELECT count(*) FROM logs", 200, within).await;
    wait_for_count(&node, "SELECT count(*) FROM dead_letters", 3, within).await;
    let url = node.http_url();
    let moved = tokio::task::spawn_blocking(move || {
        logsphere_tests::flush_rows(&url, Duration::from_secs(240))
    })
    .await
    .expect("flush thread");
    assert_eq!(
        moved, 203,
        "the first tiering round moves hours 10 and 11 and 3 dead letters"
    );

    send_fixture(&p, 12, 50).await;
    send(
        &p,
        TOPICS[0],
        b"{\"message\":\"\xff\"}",
        DAY_MS + 12 * 3_600_000,
    )
    .await;
    wait_for_count(&node, "SELECT count(*) FROM logs", 250, within).await;
    wait_for_count(&node, "SELECT count(*) FROM dead_letters", 4, within).await;

    run_files(node.pg_port(), "cluster", &["continuous.slt"], || {
        node.log()
    })
    .await;
}
