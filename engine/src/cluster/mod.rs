//! Cluster mode: Kafka in, Cassandra as the hot tier (see `docs/cluster.md`).
//!
//! The settings here are the engine's view of `[cluster]`, `[kafka]` and `[cassandra]` in
//! `logsphere.toml`; the server validates them and names the key of a bad value.

pub mod continuous;
mod idempotency;
pub mod produce;
pub mod runtime;
pub mod tiering;

pub use idempotency::{INGEST_KEY_LEASE, INGEST_KEY_RETENTION};
pub use runtime::Cluster;

use std::time::Duration;

/// Everything cluster mode needs to run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's name: the owner shown in `kafka_partitions`, and the fencing identity.
    pub node_id: String,
    /// The Kafka source.
    pub kafka: KafkaConfig,
    /// The Cassandra hot tier and progress store.
    pub cassandra: CassandraConfig,
    /// How long a request's claim on an `Idempotency-Key` lasts ([`INGEST_KEY_LEASE`]).
    pub ingest_key_lease: Duration,
    /// How long an answered `Idempotency-Key` is remembered ([`INGEST_KEY_RETENTION`]).
    pub ingest_key_retention: Duration,
    /// Crash tests: a pause between claiming an `Idempotency-Key` and producing, so a kill
    /// lands there (`LOGSPHERE_FAULT_INGEST_CLAIM_PAUSE_MS`).
    pub fault_claim_pause: Option<Duration>,
    /// Crash tests: a keyed produce sends this many records, then fails as a broker
    /// timeout would (`LOGSPHERE_FAULT_INGEST_PRODUCE_FAIL_AFTER`).
    pub fault_produce_fail_after: Option<usize>,
    /// Crash tests: a pause between a keyed produce's acknowledgements and marking the key
    /// done, so a kill lands there (`LOGSPHERE_FAULT_INGEST_ACKED_PAUSE_MS`).
    pub fault_acked_pause: Option<Duration>,
}

/// `[kafka]`: the consumer group LogSphere reads and the producer HTTP ingest writes to.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,…`.
    pub brokers: String,
    /// Topic names, or regexes starting with `^` (new matching topics are discovered).
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Where a partition without progress starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// librdkafka's prefetch cap per partition (`queued.max.messages.kbytes`).
    pub fetch_queue_kbytes: usize,
    /// LogSphere's buffer per partition; past it the partition is paused (not dropped).
    pub partition_buffer_bytes: usize,
    /// Records written to Cassandra in one batch per partition, at most.
    pub batch_records: usize,
    /// How long a partition waits for more records before writing a partial batch.
    pub linger: Duration,
    /// Records over this size become dead letters.
    pub max_record_bytes: usize,
    /// Dead letters are also produced here, when set.
    pub dead_letter_topic: Option<String>,
    /// Consumer group session timeout: how soon a dead node's partitions move.
    pub session_timeout: Duration,
    /// How often topic metadata is refreshed (new topics and partitions are found).
    pub metadata_refresh: Duration,
    /// Topic `POST /v1/logs` produces to in cluster mode.
    pub ingest_topic: String,
}

impl KafkaConfig {
    /// Defaults for everything but the brokers and topics.
    pub fn new(brokers: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topics,
            group: "logsphere".into(),
            auto_offset_reset: "earliest".into(),
            fetch_queue_kbytes: 8 * 1024,
            partition_buffer_bytes: 8 * 1024 * 1024,
            batch_records: 5_000,
            linger: Duration::from_millis(20),
            max_record_bytes: 1024 * 1024,
            dead_letter_topic: None,
            session_timeout: Duration::from_secs(10),
            metadata_refresh: Duration::from_secs(10),
            ingest_topic: "logs".into(),
        }
    }
}

/// `[cassandra]`: the hot tier.
#[derive(Debug, Clone)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    /// Keyspace holding the hot tables and the progress rows.
    pub keyspace: String,
    /// `SimpleStrategy` or `NetworkTopologyStrategy`.
    pub replication_strategy: String,
    /// Replicas per datacenter.
    pub replication_factor: u32,
    /// Datacenter name, for `NetworkTopologyStrategy`.
    pub datacenter: Option<String>,
    /// Consistency of data writes, e.g. `LOCAL_QUORUM`.
    pub write_consistency: String,
    /// Consistency of reads.
    pub read_consistency: String,
    /// Hot rows expire this long after they are written (must exceed the tiering lag).
    pub ttl: Duration,
    /// Width of a time bucket: rows of one bucket and shard form one Cassandra partition.
    pub bucket: Duration,
    /// Shards per bucket (a Kafka partition always writes the same shard).
    pub shards: u16,
    /// Concurrent statements in flight per node.
    pub max_in_flight: usize,
    /// Rows per page when reading.
    pub page_size: i32,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl CassandraConfig {
    /// Defaults for everything but the contact points.
    pub fn new(contact_points: Vec<String>) -> Self {
        Self {
            contact_points,
            keyspace: "logsphere".into(),
            replication_strategy: "SimpleStrategy".into(),
            replication_factor: 1,
            datacenter: None,
            write_consistency: "LOCAL_QUORUM".into(),
            read_consistency: "LOCAL_QUORUM".into(),
            ttl: Duration::from_secs(7 * 24 * 3600),
            bucket: Duration::from_secs(600),
            shards: 8,
            max_in_flight: 256,
            page_size: 5_000,
            request_timeout: Duration::from_secs(10),
        }
    }
}
