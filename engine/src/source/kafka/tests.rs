//! The Kafka source against a real broker (`LOGSPHERE_TEST_KAFKA`), with in-memory hot and
//! progress stores: exactly-once storage effect across restarts, fencing, failing writes
//! and rebalances between two members.

mod fakes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use self::fakes::{FakeHot, FakeProgress, Identity};
use super::KafkaSource;
use crate::cluster::KafkaConfig;
use crate::ingest::DecodeOptions;
use crate::source::PartitionId;

const MAX_RECORD_BYTES: usize = 2048;

fn brokers() -> String {
    std::env::var("LOGSPHERE_TEST_KAFKA").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_TEST_KAFKA is not set: start the test services (scripts/services) \
             and source target/services/env; these tests need a real Kafka broker"
        )
    })
}

fn unique(what: &str) -> String {
    format!("ls-kafka-{what}-{}", uuid::Uuid::new_v4().simple())
}

fn config(topic: &str, group: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(brokers(), vec![topic.to_string()]);
    c.group = group.to_string();
    c.session_timeout = Duration::from_secs(6);
    c.metadata_refresh = Duration::from_secs(2);
    c.batch_records = 200;
    c.linger = Duration::from_millis(20);
    c.fetch_queue_kbytes = 1024;
    c.partition_buffer_bytes = 256 * 1024;
    c.max_record_bytes = MAX_RECORD_BYTES;
    c
}

async fn start(
    config: &KafkaConfig,
    node: &str,
    hot: &Arc<FakeHot>,
    progress: &Arc<FakeProgress>,
) -> KafkaSource {
    let opts = DecodeOptions {
        origin: "kafka".into(),
        ..DecodeOptions::default()
    };
    KafkaSource::start(config, node, hot.clone(), progress.clone(), opts)
        .await
        .expect("source starts")
}

async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

/// A fresh topic of `partitions`, a fresh group, and empty stores.
struct Fixture {
    topic: String,
    group: String,
    hot: Arc<FakeHot>,
    progress: Arc<FakeProgress>,
}

async fn fixture(what: &str, partitions: i32) -> Fixture {
    let topic = unique(what);
    create_topic(&topic, partitions).await;
    Fixture {
        topic,
        group: unique(&format!("{what}-group")),
        hot: FakeHot::new(),
        progress: FakeProgress::new(),
    }
}

/// What a produced record should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    Bad,
}

/// A record to produce.
struct Rec {
    partition: i32,
    key: Option<String>,
    payload: Vec<u8>,
    kind: Kind,
}

fn good(partition: i32, seq: usize) -> Rec {
    let payload = serde_json::json!({
        "message": format!("m-{seq}"),
        "level": "warning",
        "host": format!("web-{}", seq % 5),
        "topic": "not-the-kafka-topic",
        "seq": seq,
    });
    Rec {
        partition,
        key: Some(format!("k-{seq}")),
        payload: payload.to_string().into_bytes(),
        kind: Kind::Good,
    }
}

fn goods(partitions: i32, per_partition: usize, first_seq: usize) -> Vec<Rec> {
    (0..per_partition * partitions as usize)
        .map(|i| good(i as i32 % partitions, first_seq + i))
        .collect()
}

/// Not JSON, empty, oversized, binary, and a bad timestamp.
fn malformed(partitions: i32) -> Vec<Rec> {
    let oversized = format!(r#"{{"message":"{}"}}"#, "x".repeat(MAX_RECORD_BYTES + 10));
    let payloads: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        Vec::new(),
        oversized.into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x01],
        br#"{"message":"x","timestamp":"not a time"}"#.to_vec(),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Rec {
            partition: i as i32 % partitions,
            key: None,
            payload,
            kind: Kind::Bad,
        })
        .collect()
}

/// Produces `recs` (with a `trace` header) and returns each with its identity.
async fn produce(topic: &str, recs: Vec<Rec>) -> Vec<(Identity, Rec)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = recs.iter().map(|rec| {
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("t-1"),
        });
        let mut record = FutureRecord::<String, Vec<u8>>::to(topic)
            .partition(rec.partition)
            .payload(&rec.payload)
            .headers(headers);
        if let Some(key) = &rec.key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(10))
    });
    let deliveries = futures::future::join_all(sends).await;
    recs.into_iter()
        .zip(deliveries)
        .map(|(rec, d)| {
            let d = d.expect("delivered");
            ((topic.to_string(), d.partition, d.offset), rec)
        })
        .collect()
}

fn pid(topic: &str, partition: i32) -> PartitionId {
    PartitionId {
        topic: topic.to_string(),
        partition,
    }
}

/// The high watermark of each partition.
fn watermarks(topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .expect("watermarks")
                .1
        })
        .collect()
}

/// The group's committed offset of each partition, read by a consumer outside the group.
fn committed(topic: &str, group: &str, partitions: i32) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// Waits until `done()` holds, or panics naming `what`.
async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every partition's durable progress reaches its high watermark.
async fn wait_caught_up(topic: &str, partitions: i32, progress: &FakeProgress) {
    let all: Vec<i32> = (0..partitions).collect();
    wait_partitions_caught_up(topic, &all, progress).await;
}

/// Waits until the durable progress of `partitions` reaches their high watermarks.
async fn wait_partitions_caught_up(topic: &str, partitions: &[i32], progress: &FakeProgress) {
    let n = partitions.iter().max().map_or(0, |p| p + 1);
    let ends = watermarks(topic, n);
    wait_until(
        "progress to reach the high watermarks",
        Duration::from_secs(60),
        || {
            partitions
                .iter()
                .all(|p| progress.next_offset(&pid(topic, *p)) == Some(ends[*p as usize]))
        },
    )
    .await;
}

/// Asserts the hot store holds exactly the produced records, each written once.
fn assert_exact(hot: &FakeHot, produced: &[(Identity, Rec)]) {
    let want_logs: HashSet<&Identity> = produced
        .iter()
        .filter(|(_, r)| r.kind == Kind::Good)
        .map(|(id, _)| id)
        .collect();
    let want_dead: HashSet<&Identity> = produced
        .iter()
        .filter(|(_, r)| r.kind == Kind::Bad)
        .map(|(id, _)| id)
        .collect();
    hot.with_rows(|rows| {
        let logs: HashSet<&Identity> = rows.logs.keys().collect();
        let dead: HashSet<&Identity> = rows.dead.keys().collect();
        assert_eq!(logs, want_logs, "logs rows differ from the good records");
        assert_eq!(
            dead, want_dead,
            "dead letters differ from the malformed records"
        );
        let rewritten: Vec<_> = rows.writes.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            rewritten.is_empty(),
            "identities written more than once: {rewritten:?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_every_record_once_with_kafka_attributes() {
    let Fixture {
        topic,
        group,
        hot,
        progress,
    } = fixture("once", 3).await;
    let mut recs = goods(3, 1000, 0);
    recs.extend(malformed(3));
    let produced = produce(&topic, recs).await;
    let dead_topic = unique("once-dead");
    create_topic(&dead_topic, 1).await;
    let mut config = config(&topic, &group);
    config.dead_letter_topic = Some(dead_topic.clone());
    let source = start(&config, "node-1", &hot, &progress).await;

    wait_caught_up(&topic, 3, &progress).await;
    assert_exact(&hot, &produced);
    wait_until(
        "dead letters in their topic",
        Duration::from_secs(20),
        || watermarks(&dead_topic, 1) == vec![5],
    )
    .await;
    hot.with_rows(|rows| {
        for ((_, partition, offset), rec) in &produced {
            let id = (topic.clone(), *partition, *offset);
            if rec.kind == Kind::Bad {
                continue;
            }
            let row = &rows.logs[&id];
            let a = &row.attributes;
            assert_eq!(row.topic, topic, "topic column is the Kafka topic");
            let sent: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
            assert_eq!(row.message, sent["message"].as_str().unwrap());
            assert_eq!(a["topic"], "not-the-kafka-topic");
            assert_eq!(a["kafka_partition"], *partition);
            assert_eq!(a["kafka_offset"], *offset);
            assert_eq!(a["kafka_key"], rec.key.clone().unwrap());
            assert_eq!(a["kafka_header_trace"], "t-1");
            assert!(
                a["kafka_timestamp_ms"].as_i64().is_some(),
                "timestamp in {a}"
            );
            assert_eq!(a["raw_level"], "warning");
        }
        assert!(rows.largest_append <= 200, "a batch over batch_records");
        let reasons: Vec<&String> = rows.dead.values().collect();
        assert!(
            reasons.iter().any(|r| r.contains("over the limit")),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.contains("UTF-8")), "{reasons:?}");
    });

    let m = source.metrics();
    assert_eq!(
        m.records_written.load(std::sync::atomic::Ordering::Relaxed),
        3000
    );
    assert_eq!(m.dead_letters.load(std::sync::atomic::Ordering::Relaxed), 5);
    let ends = watermarks(&topic, 3);
    wait_until(
        "committed offsets to mirror progress",
        Duration::from_secs(20),
        || committed(&topic, &group, 3) == ends.iter().map(|e| Some(*e)).collect::<Vec<_>>(),
    )
    .await;
    wait_until("status to show no lag", Duration::from_secs(10), || {
        let status = source.status();
        status.len() == 3
            && status.iter().all(|s| {
                s.lag_records == Some(0)
                    && s.lag_seconds == Some(0.0)
                    && s.next_offset == ends[s.partition.partition as usize]
                    && !s.paused
            })
    })
    .await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_stored_progress() {
    let Fixture {
        topic,
        group,
        hot,
        progress,
    } = fixture("restart", 3).await;
    let config = config(&topic, &group);
    let mut produced = produce(&topic, goods(3, 100, 0)).await;
    let source = start(&config, "node-1", &hot, &progress).await;
    wait_caught_up(&topic, 3, &progress).await;
    source.stop().await;
    assert!(source.status().is_empty(), "a stopped source owns nothing");

    let before: HashMap<i32, i64> = (0..3)
        .map(|p| (p, progress.next_offset(&pid(&topic, p)).unwrap()))
        .collect();
    let appends_before = hot.with_rows(|r| r.appends.len());
    produced.extend(produce(&topic, goods(3, 100, 300)).await);
    let source = start(&config, "node-1", &hot, &progress).await;
    wait_caught_up(&topic, 3, &progress).await;

    hot.with_rows(|rows| {
        for (p, first) in &rows.appends[appends_before..] {
            assert!(
                *first >= before[&p.partition],
                "{p} re-read from {first}, progress was {}",
                before[&p.partition]
            );
        }
    });
    assert_exact(&hot, &produced);
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_owner_stops_writing_the_partition() {
    let Fixture {
        topic,
        group,
        hot,
        progress,
    } = fixture("fence", 2).await;
    produce(&topic, goods(2, 50, 0)).await;
    let source = start(&config(&topic, &group), "node-a", &hot, &progress).await;
    wait_caught_up(&topic, 2, &progress).await;

    let (p0, p1) = (pid(&topic, 0), pid(&topic, 1));
    let fenced_at = progress.next_offset(&p0);
    progress.bump_epoch(&p0, "node-b");
    produce(&topic, goods(2, 20, 100)).await;
    wait_until("the fenced advance", Duration::from_secs(20), || {
        source
            .metrics()
            .fenced
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    wait_partitions_caught_up(&topic, &[1], &progress).await;

    let appends = hot.appends_to(&p0);
    produce(&topic, goods(2, 20, 200)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hot.appends_to(&p0), appends, "a fenced owner wrote again");
    assert_eq!(
        progress.next_offset(&p0),
        fenced_at,
        "a fenced owner moved progress"
    );
    let owned: Vec<PartitionId> = source.status().into_iter().map(|s| s.partition).collect();
    assert_eq!(
        owned,
        vec![p1.clone()],
        "status lists only what the node still owns"
    );
    wait_partitions_caught_up(&topic, &[1], &progress).await;
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hot_store_pauses_then_resumes_without_loss() {
    let Fixture {
        topic,
        group,
        hot,
        progress,
    } = fixture("down", 3).await;
    let source = start(&config(&topic, &group), "node-1", &hot, &progress).await;
    wait_until("the assignment", Duration::from_secs(30), || {
        let s = source.status();
        s.len() == 3 && s.iter().all(|s| s.epoch >= 1)
    })
    .await;

    hot.fail_for(Duration::from_secs(3));
    let produced = produce(&topic, goods(3, 200, 0)).await;
    let ends = watermarks(&topic, 3);
    let (mut saw_paused, mut saw_lag) = (false, false);
    let start = Instant::now();
    while !(0..3).all(|p| progress.next_offset(&pid(&topic, p)) == Some(ends[p as usize])) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no catch-up after the outage"
        );
        let status = source.status();
        saw_paused |= status.iter().any(|s| s.paused);
        saw_lag |= status
            .iter()
            .any(|s| s.paused && s.lag_seconds.is_some_and(|l| l >= 1.0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        saw_paused,
        "status never showed a paused partition during the outage"
    );
    assert!(
        saw_lag,
        "status never showed the time lag growing during the outage"
    );
    let m = source.metrics();
    assert!(m.write_retries.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(
        m.paused_partitions
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(source.status().iter().all(|s| !s.paused));
    assert_exact(&hot, &produced);
    source.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_partitions_and_take_over() {
    let Fixture {
        topic,
        group,
        hot,
        progress,
    } = fixture("pair", 4).await;
    let config = config(&topic, &group);
    let a = start(&config, "node-a", &hot, &progress).await;
    wait_until(
        "node-a to own every partition",
        Duration::from_secs(30),
        || a.status().len() == 4,
    )
    .await;
    let b = start(&config, "node-b", &hot, &progress).await;
    wait_until(
        "the partitions to be split",
        Duration::from_secs(40),
        || {
            let (na, nb) = (a.status().len(), b.status().len());
            na > 0 && nb > 0 && na + nb == 4
        },
    )
    .await;
    let mut produced = produce(&topic, goods(4, 100, 0)).await;
    wait_caught_up(&topic, 4, &progress).await;

    b.stop().await;
    wait_until(
        "node-a to take every partition back",
        Duration::from_secs(30),
        || a.status().len() == 4,
    )
    .await;
    produced.extend(produce(&topic, goods(4, 100, 400)).await);
    wait_caught_up(&topic, 4, &progress).await;
    assert_exact(&hot, &produced);
    assert!(
        (0..4).any(|p| progress.epoch(&pid(&topic, p)) >= 3),
        "a partition that moved twice was claimed three times"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regex_subscription_discovers_new_topics() {
    let (prefix, group) = (unique("regex"), unique("regex-group"));
    let (hot, progress) = (FakeHot::new(), FakeProgress::new());
    let source = start(
        &config(&format!("^{prefix}-.*"), &group),
        "node-1",
        &hot,
        &progress,
    )
    .await;
    let topic = format!("{prefix}-late");
    create_topic(&topic, 2).await;
    let produced = produce(&topic, goods(2, 50, 0)).await;
    wait_caught_up(&topic, 2, &progress).await;
    assert_exact(&hot, &produced);
    source.stop().await;
}
