//! `[cluster]`, `[kafka]` and `[cassandra]`: naming Kafka brokers and Cassandra contact
//! points switches `logsphere serve` into cluster mode.

use std::time::Duration;

use anyhow::bail;
use logsphere_engine::cluster::{CassandraConfig, ClusterConfig, KafkaConfig};
use serde::Deserialize;

/// `[cluster]`: this node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's name in `kafka_partitions` and in partition claims [default: host name].
    pub node_id: Option<String>,
    /// How long a request's claim on an `Idempotency-Key` lasts, seconds: the longest a
    /// key stays blocked (409) after the node storing it died.
    pub ingest_key_lease_secs: u64,
    /// How long an answered `Idempotency-Key` is remembered, seconds.
    pub ingest_key_retention_secs: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            node_id: None,
            ingest_key_lease_secs: logsphere_engine::cluster::INGEST_KEY_LEASE.as_secs(),
            ingest_key_retention_secs: logsphere_engine::cluster::INGEST_KEY_RETENTION.as_secs(),
        }
    }
}

/// `[kafka]`: the topics LogSphere consumes in cluster mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// Bootstrap brokers, `host:port,…`. Set with `cassandra.contact_points` for cluster mode.
    pub brokers: Option<String>,
    /// Topic names, or regexes starting with `^` (new matching topics are picked up).
    pub topics: Vec<String>,
    /// Consumer group: every node of one cluster uses the same.
    pub group: String,
    /// Where a partition without stored progress starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// librdkafka prefetch per partition, KiB (`queued.max.messages.kbytes`).
    pub fetch_queue_kbytes: usize,
    /// LogSphere's buffer per partition, bytes; a partition past it pauses.
    pub partition_buffer_bytes: usize,
    /// Records written to Cassandra per batch and partition, at most.
    pub batch_records: usize,
    /// How long a partition waits to fill a batch, ms.
    pub linger_ms: u64,
    /// Undecodable records are also produced to this topic, when set.
    pub dead_letter_topic: Option<String>,
    /// Group session timeout, ms: how soon a dead node's partitions move to the others.
    pub session_timeout_ms: u64,
    /// How often topic metadata is refreshed (new topics and partitions), ms.
    pub metadata_refresh_ms: u64,
    /// The topic `POST /v1/logs` produces to in cluster mode.
    pub ingest_topic: String,
    /// How consumed records are read: `json` (the default), `auto`, `syslog`, `access`,
    /// `logfmt`, `app` or `text` (see the README's Text formats).
    pub format: String,
}

impl Default for KafkaSection {
    fn default() -> Self {
        let d = KafkaConfig::new("", Vec::new());
        Self {
            brokers: None,
            topics: vec!["logs".into()],
            group: d.group,
            auto_offset_reset: d.auto_offset_reset,
            fetch_queue_kbytes: d.fetch_queue_kbytes,
            partition_buffer_bytes: d.partition_buffer_bytes,
            batch_records: d.batch_records,
            linger_ms: d.linger.as_millis() as u64,
            dead_letter_topic: None,
            session_timeout_ms: d.session_timeout.as_millis() as u64,
            metadata_refresh_ms: d.metadata_refresh.as_millis() as u64,
            ingest_topic: d.ingest_topic,
            format: "json".into(),
        }
    }
}

/// `[cassandra]`: the hot tier in cluster mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraSection {
    /// Contact points, `host:port`. Set with `kafka.brokers` for cluster mode.
    pub contact_points: Vec<String>,
    /// Keyspace for the hot tables and the consumer progress.
    pub keyspace: String,
    /// `SimpleStrategy` or `NetworkTopologyStrategy`.
    pub replication_strategy: String,
    /// Replicas (per datacenter with `NetworkTopologyStrategy`).
    pub replication_factor: u32,
    /// Local datacenter: used for `NetworkTopologyStrategy` and DC-aware routing.
    pub datacenter: Option<String>,
    /// Consistency of writes.
    pub write_consistency: String,
    /// Consistency of reads.
    pub read_consistency: String,
    /// Hot rows expire this long after they are written, seconds.
    pub ttl_secs: u64,
    /// Width of a time bucket (one Cassandra partition per bucket and shard), seconds.
    pub bucket_secs: u64,
    /// Shards per bucket.
    pub shards: u16,
    /// Statements in flight at once.
    pub max_in_flight: usize,
    /// Rows per page when reading.
    pub page_size: i32,
    /// Per-request timeout, ms.
    pub request_timeout_ms: u64,
}

impl Default for CassandraSection {
    fn default() -> Self {
        let d = CassandraConfig::new(Vec::new());
        Self {
            contact_points: Vec::new(),
            keyspace: d.keyspace,
            replication_strategy: d.replication_strategy,
            replication_factor: d.replication_factor,
            datacenter: None,
            write_consistency: d.write_consistency,
            read_consistency: d.read_consistency,
            ttl_secs: d.ttl.as_secs(),
            bucket_secs: d.bucket.as_secs(),
            shards: d.shards,
            max_in_flight: d.max_in_flight,
            page_size: d.page_size,
            request_timeout_ms: d.request_timeout.as_millis() as u64,
        }
    }
}

const CONSISTENCY: [&str; 9] = [
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
];

/// Checks the three sections; `Ok(false)` means embedded mode (neither Kafka nor Cassandra
/// named).
pub fn validate(
    cluster: &ClusterSection,
    kafka: &KafkaSection,
    cassandra: &CassandraSection,
) -> anyhow::Result<bool> {
    let brokers = kafka.brokers.as_deref().map(str::trim);
    match (brokers, cassandra.contact_points.is_empty()) {
        (None, true) => return Ok(false),
        (Some(""), _) => bail!("kafka.brokers is empty: give host:port[,host:port…]"),
        (Some(_), true) => bail!(
            "kafka.brokers is set but cassandra.contact_points is not: cluster mode needs both \
             (--cassandra / LOGSPHERE_CASSANDRA)"
        ),
        (None, false) => bail!(
            "cassandra.contact_points is set but kafka.brokers is not: cluster mode needs both \
             (--kafka-brokers / LOGSPHERE_KAFKA_BROKERS)"
        ),
        (Some(_), false) => {}
    }
    if cluster
        .node_id
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        bail!("cluster.node_id is empty: name this node or leave the key out (host name)");
    }
    if !(2..=3600).contains(&cluster.ingest_key_lease_secs) {
        bail!(
            "cluster.ingest_key_lease_secs = {} must be between 2 and 3600",
            cluster.ingest_key_lease_secs
        );
    }
    if cluster.ingest_key_retention_secs < cluster.ingest_key_lease_secs
        || cluster.ingest_key_retention_secs > 30 * 24 * 3600
    {
        bail!(
            "cluster.ingest_key_retention_secs = {} must be at least cluster.ingest_key_lease_secs \
             ({}) and at most 2592000 (30 days)",
            cluster.ingest_key_retention_secs,
            cluster.ingest_key_lease_secs
        );
    }
    validate_kafka(kafka)?;
    validate_cassandra(cassandra)?;
    Ok(true)
}

fn validate_kafka(k: &KafkaSection) -> anyhow::Result<()> {
    if k.topics.is_empty() || k.topics.iter().any(|t| t.trim().is_empty()) {
        bail!("kafka.topics must name at least one topic (or a regex starting with ^), none empty");
    }
    if k.group.trim().is_empty() {
        bail!("kafka.group is empty");
    }
    if !["earliest", "latest"].contains(&k.auto_offset_reset.as_str()) {
        bail!(
            "kafka.auto_offset_reset = {:?} must be \"earliest\" or \"latest\"",
            k.auto_offset_reset
        );
    }
    if !(64..=1024 * 1024).contains(&k.fetch_queue_kbytes) {
        bail!(
            "kafka.fetch_queue_kbytes = {} must be between 64 and 1048576 (KiB per partition)",
            k.fetch_queue_kbytes
        );
    }
    if k.partition_buffer_bytes < 64 * 1024 {
        bail!(
            "kafka.partition_buffer_bytes = {} must be at least 65536",
            k.partition_buffer_bytes
        );
    }
    if !(1..=100_000).contains(&k.batch_records) {
        bail!(
            "kafka.batch_records = {} must be between 1 and 100000",
            k.batch_records
        );
    }
    if k.linger_ms > 60_000 {
        bail!("kafka.linger_ms = {} must be at most 60000", k.linger_ms);
    }
    if !(1_000..=3_600_000).contains(&k.session_timeout_ms) {
        bail!(
            "kafka.session_timeout_ms = {} must be between 1000 and 3600000",
            k.session_timeout_ms
        );
    }
    if k.metadata_refresh_ms < 100 {
        bail!(
            "kafka.metadata_refresh_ms = {} must be at least 100",
            k.metadata_refresh_ms
        );
    }
    if k.ingest_topic.trim().is_empty() || k.ingest_topic.starts_with('^') {
        bail!(
            "kafka.ingest_topic = {:?} must be a topic name (not a regex)",
            k.ingest_topic
        );
    }
    if let Err(e) = k.format.parse::<logsphere_engine::ingest::Format>() {
        bail!("kafka.format: {e}");
    }
    if k.dead_letter_topic
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        bail!("kafka.dead_letter_topic is empty: name a topic or leave the key out");
    }
    Ok(())
}

fn validate_cassandra(c: &CassandraSection) -> anyhow::Result<()> {
    if c.contact_points.iter().any(|p| p.trim().is_empty()) {
        bail!("cassandra.contact_points has an empty entry");
    }
    let ks = &c.keyspace;
    let ks_ok = ks.len() <= 48
        && ks.chars().next().is_some_and(|ch| ch.is_ascii_alphabetic())
        && ks.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !ks_ok {
        bail!(
            "cassandra.keyspace = {ks:?} must start with a letter and hold only letters, digits \
             and _ (at most 48)"
        );
    }
    match c.replication_strategy.as_str() {
        "SimpleStrategy" => {}
        "NetworkTopologyStrategy" if c.datacenter.is_some() => {}
        "NetworkTopologyStrategy" => bail!(
            "cassandra.replication_strategy = \"NetworkTopologyStrategy\" needs \
             cassandra.datacenter"
        ),
        other => bail!(
            "cassandra.replication_strategy = {other:?} must be \"SimpleStrategy\" or \
             \"NetworkTopologyStrategy\""
        ),
    }
    if !(1..=10).contains(&c.replication_factor) {
        bail!(
            "cassandra.replication_factor = {} must be between 1 and 10",
            c.replication_factor
        );
    }
    for (key, value, refused) in [
        ("write_consistency", &c.write_consistency, &[][..]),
        (
            "read_consistency",
            &c.read_consistency,
            &["ANY", "EACH_QUORUM"][..],
        ),
    ] {
        let upper = value.to_ascii_uppercase();
        if !CONSISTENCY.contains(&upper.as_str()) || refused.contains(&upper.as_str()) {
            bail!(
                "cassandra.{key} = {value:?} is not a consistency level for this (use e.g. \
                 LOCAL_QUORUM, QUORUM, ONE)"
            );
        }
    }
    if c.bucket_secs < 60 || c.bucket_secs > 86_400 {
        bail!(
            "cassandra.bucket_secs = {} must be between 60 and 86400",
            c.bucket_secs
        );
    }
    if c.ttl_secs < c.bucket_secs {
        bail!(
            "cassandra.ttl_secs = {} must be at least cassandra.bucket_secs ({})",
            c.ttl_secs,
            c.bucket_secs
        );
    }
    if !(1..=1024).contains(&c.shards) {
        bail!("cassandra.shards = {} must be between 1 and 1024", c.shards);
    }
    if !(1..=4096).contains(&c.max_in_flight) {
        bail!(
            "cassandra.max_in_flight = {} must be between 1 and 4096",
            c.max_in_flight
        );
    }
    if !(100..=100_000).contains(&c.page_size) {
        bail!(
            "cassandra.page_size = {} must be between 100 and 100000",
            c.page_size
        );
    }
    if c.request_timeout_ms < 100 {
        bail!(
            "cassandra.request_timeout_ms = {} must be at least 100",
            c.request_timeout_ms
        );
    }
    Ok(())
}

/// The engine's cluster settings (after [`validate`] said cluster mode).
pub fn to_engine(
    cluster: &ClusterSection,
    kafka: &KafkaSection,
    cassandra: &CassandraSection,
    max_record_bytes: usize,
) -> ClusterConfig {
    let mut k = KafkaConfig::new(
        kafka.brokers.clone().unwrap_or_default(),
        kafka.topics.clone(),
    );
    k.group = kafka.group.clone();
    k.auto_offset_reset = kafka.auto_offset_reset.clone();
    k.fetch_queue_kbytes = kafka.fetch_queue_kbytes;
    k.partition_buffer_bytes = kafka.partition_buffer_bytes;
    k.batch_records = kafka.batch_records;
    k.linger = Duration::from_millis(kafka.linger_ms);
    k.max_record_bytes = max_record_bytes;
    k.dead_letter_topic = kafka.dead_letter_topic.clone();
    k.session_timeout = Duration::from_millis(kafka.session_timeout_ms);
    k.metadata_refresh = Duration::from_millis(kafka.metadata_refresh_ms);
    k.ingest_topic = kafka.ingest_topic.clone();
    let mut c = CassandraConfig::new(cassandra.contact_points.clone());
    c.keyspace = cassandra.keyspace.clone();
    c.replication_strategy = cassandra.replication_strategy.clone();
    c.replication_factor = cassandra.replication_factor;
    c.datacenter = cassandra.datacenter.clone();
    c.write_consistency = cassandra.write_consistency.to_ascii_uppercase();
    c.read_consistency = cassandra.read_consistency.to_ascii_uppercase();
    c.ttl = Duration::from_secs(cassandra.ttl_secs);
    c.bucket = Duration::from_secs(cassandra.bucket_secs);
    c.shards = cassandra.shards;
    c.max_in_flight = cassandra.max_in_flight;
    c.page_size = cassandra.page_size;
    c.request_timeout = Duration::from_millis(cassandra.request_timeout_ms);
    ClusterConfig {
        node_id: cluster.node_id.clone().unwrap_or_else(host_name),
        kafka: k,
        cassandra: c,
        ingest_key_lease: Duration::from_secs(cluster.ingest_key_lease_secs),
        ingest_key_retention: Duration::from_secs(cluster.ingest_key_retention_secs),
        fault_claim_pause: None,
        fault_produce_fail_after: None,
        fault_acked_pause: None,
    }
}

/// The machine's host name, the default node id.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "logsphere".into())
}
