//! Configuration: one serde tree, read from `--config FILE`, overridden by `LOGSPHERE_*`
//! environment variables and then by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

pub mod cluster;

/// The whole configuration of `logsphere serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the WAL, the cold tier and the catalog.
    pub data_dir: PathBuf,
    /// The PostgreSQL protocol endpoint.
    pub pg: PgConfig,
    /// The HTTP ingest endpoint.
    pub http: HttpConfig,
    /// Hot buffer and tiering knobs.
    pub storage: StorageConfig,
    /// Where the cold tier's Parquet files live.
    pub cold: ColdConfig,
    /// Delivery of continuous queries' NOTIFY channels.
    pub notify: NotifyConfig,
    /// Cluster mode: this node.
    pub cluster: cluster::ClusterSection,
    /// Cluster mode: the Kafka topics consumed.
    pub kafka: cluster::KafkaSection,
    /// Cluster mode: the Cassandra hot tier.
    pub cassandra: cluster::CassandraSection,
    /// syslog over TCP and UDP (off unless a listen address is set).
    pub syslog: SyslogConfig,
    /// Which `attributes` keys tiering writes as typed columns.
    pub fields: FieldsConfig,
}

/// `[fields]`: promotion of frequent `attributes` keys to typed columns of `logs`
/// (embedded mode; see docs/fields.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldsConfig {
    /// Whether tiering promotes fields at all.
    pub promote: bool,
    /// Most promoted fields (columns added to `logs`).
    pub max_promoted: usize,
    /// Share of a cold file's rows, in (0, 1], that must carry a key for it to be promoted.
    pub min_share: f64,
    /// Keys never promoted.
    pub never: Vec<String>,
    /// Keys promoted whenever a file carries them, whatever their share.
    pub always: Vec<String>,
}

impl Default for FieldsConfig {
    fn default() -> Self {
        let d = logsphere_engine::fields::FieldsConfig::default();
        Self {
            promote: d.promote,
            max_promoted: d.max_promoted,
            min_share: d.min_share,
            never: d.never,
            always: d.always,
        }
    }
}

impl FieldsConfig {
    /// The engine's promotion settings.
    pub fn to_engine(&self) -> logsphere_engine::fields::FieldsConfig {
        logsphere_engine::fields::FieldsConfig {
            promote: self.promote,
            max_promoted: self.max_promoted,
            min_share: self.min_share,
            never: self.never.clone(),
            always: self.always.clone(),
        }
    }
}

/// `[syslog]`: syslog receivers (rsyslog, syslog-ng, network devices), off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// TCP address; framing per connection: octet-counting (RFC 6587/5425 `LEN SP MSG`) or
    /// LF/NUL-terminated lines.
    pub tcp_listen: Option<SocketAddr>,
    /// UDP address; one message per datagram (RFC 5426).
    pub udp_listen: Option<SocketAddr>,
    /// Messages read are stored together at most this many ms after the first of them
    /// (one WAL write and fsync per batch).
    pub batch_ms: u64,
    /// TCP connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            tcp_listen: None,
            udp_listen: None,
            batch_ms: 200,
            max_connections: 1024,
        }
    }
}

/// `[pg]`: the PostgreSQL wire protocol listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Users allowed in with SCRAM-SHA-256. Empty: anyone, on a loopback address only.
    pub users: Vec<PgUser>,
    /// TLS certificate chain, PEM (server certificate first). Set with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (PKCS#8, PKCS#1 or SEC1). Set with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Connections served at once; one more is refused with SQLSTATE 53300, as
    /// PostgreSQL's `max_connections` does.
    pub max_connections: usize,
    /// MiB all running queries may hold together (sorts, aggregations and joins spill to
    /// disk beyond it; what cannot spill fails with 53200). Absent: half of the machine's
    /// memory; 0: no limit.
    pub query_memory_mb: Option<u64>,
    /// Every session's initial `statement_timeout` in ms (0: none); a session may `SET`
    /// another, and `RESET` returns to this.
    pub statement_timeout_ms: u64,
    /// MiB of rows one `SCROLL` cursor may keep to move back over them; reading past it
    /// fails with 54000.
    pub scroll_cursor_memory_mb: u64,
    /// The OS scheduling priority (nice, 0–19) of the threads that execute queries: above
    /// 0, ingest and the continuous queries win the cores while a heavy query runs, which
    /// still gets every core the rest leaves idle. 0: the same priority as ingest.
    pub query_nice: i32,
}

impl PgConfig {
    /// The query memory limit in bytes (`None`: unlimited).
    pub fn query_memory_bytes(&self) -> Option<usize> {
        let mb = match self.query_memory_mb {
            Some(0) => return None,
            Some(mb) => mb,
            None => physical_memory_mb().map_or(4096, |total| (total / 2).max(256)),
        };
        usize::try_from(mb.saturating_mul(1024 * 1024)).ok()
    }
}

/// MemTotal of /proc/meminfo, in MiB.
fn physical_memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// One `[[pg.users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUser {
    /// Login name.
    pub name: String,
    /// Password (stored hashed in memory, checked with SCRAM-SHA-256).
    pub password: String,
}

/// `[http]`: the ingest and metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted single record (one NDJSON line or array element), in bytes.
    pub max_record_bytes: usize,
    /// Ingest requests (`POST /v1/logs`, `_bulk`, Loki push) handled at once; more get `429`
    /// with `Retry-After`.
    pub max_concurrent_requests: usize,
}

/// `[storage]`: when the hot buffer is flushed to Parquet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Flush the hot buffer once its oldest record is this many seconds old.
    pub flush_interval_secs: u64,
    /// Flush the hot buffer once it holds this many rows.
    pub flush_max_rows: usize,
    /// Roll over to a new WAL segment past this size.
    pub wal_segment_bytes: u64,
    /// Compaction merges the small files of a partition directory once at least this many
    /// can become one.
    pub compact_min_files: usize,
    /// At most this many files go into one merge.
    pub compact_max_files: usize,
    /// A merged file holds about this many bytes at most; files of half of it are big
    /// already and never merged again.
    pub compact_target_bytes: u64,
    /// A merged file holds at most this many rows.
    pub compact_max_rows: u64,
    /// How often the flusher looks for compaction work; 0: only `POST /v1/compact`.
    pub compact_interval_secs: u64,
    /// Files a compaction replaced are deleted this long after it (queries planned before
    /// it may still read them).
    pub retired_grace_secs: u64,
}

impl StorageConfig {
    /// The engine's compaction settings.
    pub fn compaction(&self) -> logsphere_engine::compaction::CompactionConfig {
        use std::time::Duration;
        logsphere_engine::compaction::CompactionConfig {
            policy: logsphere_engine::compaction::CompactionPolicy {
                min_files: self.compact_min_files,
                max_files: self.compact_max_files,
                target_bytes: self.compact_target_bytes,
                max_rows: self.compact_max_rows,
            },
            interval: Duration::from_secs(self.compact_interval_secs),
            retired_grace: Duration::from_secs(self.retired_grace_secs),
        }
    }
}

/// `[cold]`: the cold tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColdConfig {
    /// `file:///path` or `hdfs://namenode:port/path`. Embedded default: `<data_dir>/cold`.
    /// Cluster mode needs it: every node reads the files the manifest in Cassandra names.
    pub url: Option<String>,
    /// Seconds one write to the cold store may take before the flush or tiering round
    /// fails and is retried (a hung namenode must not hang tiering), and one read before
    /// the query reading it fails (nor a query and its client).
    pub timeout_secs: u64,
}

impl Default for ColdConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout_secs: logsphere_engine::cold::DEFAULT_TIMEOUT.as_secs(),
        }
    }
}

/// `[notify]`: how NOTIFY (WEBHOOK, KAFKA) events are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Brokers (`host:port,…`) for `KAFKA 'topic'` channels without `WITH (brokers = …)`.
    pub kafka_brokers: Option<String>,
    /// Delivery threads shared by every continuous query.
    pub workers: usize,
    /// Attempts waiting for a thread; beyond it events wait in `alert_events`.
    pub queue_capacity: usize,
    /// After a channel's fast retries fail: first re-queue delay (doubling)...
    pub requeue_after_secs: u64,
    /// ...up to this delay...
    pub requeue_max_secs: u64,
    /// ...until this long after the event was recorded; then it is failed for good.
    pub give_up_after_secs: u64,
    /// Settled events' attempt rows are removed this long after their last change.
    pub event_retention_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        let d = logsphere_engine::continuous::NotifyConfig::default();
        Self {
            kafka_brokers: None,
            workers: d.workers,
            queue_capacity: d.queue,
            requeue_after_secs: d.requeue_after.as_secs(),
            requeue_max_secs: d.requeue_max.as_secs(),
            give_up_after_secs: d.give_up_after.as_secs(),
            event_retention_secs: d.retention.as_secs(),
        }
    }
}

impl NotifyConfig {
    /// The engine's delivery settings.
    pub fn to_engine(&self) -> logsphere_engine::continuous::NotifyConfig {
        use std::time::Duration;
        logsphere_engine::continuous::NotifyConfig {
            workers: self.workers,
            queue: self.queue_capacity,
            kafka_brokers: self.kafka_brokers.clone(),
            requeue_after: Duration::from_secs(self.requeue_after_secs),
            requeue_max: Duration::from_secs(self.requeue_max_secs),
            give_up_after: Duration::from_secs(self.give_up_after_secs),
            retention: Duration::from_secs(self.event_retention_secs),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./logsphere-data"),
            pg: PgConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            cold: ColdConfig::default(),
            notify: NotifyConfig::default(),
            cluster: cluster::ClusterSection::default(),
            kafka: cluster::KafkaSection::default(),
            cassandra: cluster::CassandraSection::default(),
            syslog: SyslogConfig::default(),
            fields: FieldsConfig::default(),
        }
    }
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            users: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_connections: 100,
            query_memory_mb: None,
            statement_timeout_ms: 0,
            scroll_cursor_memory_mb: 256,
            query_nice: 10,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            max_concurrent_requests: 128,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let c = logsphere_engine::compaction::CompactionConfig::default();
        Self {
            flush_interval_secs: 300,
            flush_max_rows: 1_000_000,
            wal_segment_bytes: 64 * 1024 * 1024,
            compact_min_files: c.policy.min_files,
            compact_max_files: c.policy.max_files,
            compact_target_bytes: c.policy.target_bytes,
            compact_max_rows: c.policy.max_rows,
            compact_interval_secs: c.interval.as_secs(),
            retired_grace_secs: c.retired_grace.as_secs(),
        }
    }
}

impl Config {
    /// Reads a TOML file; an unknown key or a bad value names the key and the line.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Checks what serde cannot: values that parse but cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.pg.max_connections == 0 {
            bail!("pg.max_connections must be at least 1");
        }
        if self.pg.scroll_cursor_memory_mb == 0 {
            bail!("pg.scroll_cursor_memory_mb must be at least 1");
        }
        if !(0..=19).contains(&self.pg.query_nice) {
            bail!(
                "pg.query_nice = {} is not a nice value from 0 (as ingest) to 19 (lowest)",
                self.pg.query_nice
            );
        }
        if self.pg.users.is_empty() && !self.pg.listen.ip().is_loopback() {
            bail!(
                "pg.listen = {} is not a loopback address, but no pg.users are configured: \
                 anyone could connect without a password. Add [[pg.users]] entries \
                 (name, password) or listen on 127.0.0.1",
                self.pg.listen
            );
        }
        match (&self.pg.tls_cert, &self.pg.tls_key) {
            (Some(_), None) => {
                bail!("pg.tls_cert is set but pg.tls_key is not: set both, or neither")
            }
            (None, Some(_)) => {
                bail!("pg.tls_key is set but pg.tls_cert is not: set both, or neither")
            }
            _ => {}
        }
        for (i, u) in self.pg.users.iter().enumerate() {
            if u.name.is_empty() || u.password.is_empty() {
                bail!("pg.users[{i}]: name and password must both be non-empty");
            }
        }
        if self.storage.flush_max_rows == 0 {
            bail!("storage.flush_max_rows must be at least 1");
        }
        if self.storage.wal_segment_bytes < 4096 {
            bail!("storage.wal_segment_bytes must be at least 4096");
        }
        let st = &self.storage;
        if st.compact_min_files < 2 {
            bail!(
                "storage.compact_min_files = {} must be at least 2 (a merge of one file \
                 gains nothing)",
                st.compact_min_files
            );
        }
        if st.compact_max_files < st.compact_min_files {
            bail!(
                "storage.compact_max_files = {} must be at least storage.compact_min_files = {}",
                st.compact_max_files,
                st.compact_min_files
            );
        }
        if st.compact_target_bytes < 1024 * 1024 {
            bail!(
                "storage.compact_target_bytes = {} must be at least 1048576 (1 MiB)",
                st.compact_target_bytes
            );
        }
        if st.compact_max_rows < 2 {
            bail!(
                "storage.compact_max_rows = {} must be at least 2",
                st.compact_max_rows
            );
        }
        if st.retired_grace_secs > 7 * 24 * 3600 {
            bail!(
                "storage.retired_grace_secs = {} is more than a week; retired files would \
                 pile up (the longest query only needs minutes)",
                st.retired_grace_secs
            );
        }
        if self.http.max_concurrent_requests == 0 {
            bail!("http.max_concurrent_requests must be at least 1");
        }
        if self.http.max_record_bytes == 0 || self.http.max_body_bytes == 0 {
            bail!("http.max_record_bytes and http.max_body_bytes must be at least 1");
        }
        let n = &self.notify;
        if !(1..=256).contains(&n.workers) {
            bail!("notify.workers = {} must be between 1 and 256", n.workers);
        }
        if n.queue_capacity == 0 {
            bail!("notify.queue_capacity must be at least 1");
        }
        if n.requeue_after_secs == 0 || n.requeue_max_secs < n.requeue_after_secs {
            bail!(
                "notify.requeue_after_secs must be at least 1 and notify.requeue_max_secs at \
                 least notify.requeue_after_secs"
            );
        }
        if n.kafka_brokers
            .as_deref()
            .is_some_and(|b| b.trim().is_empty())
        {
            bail!("notify.kafka_brokers is empty: give host:port[,host:port…] or leave it out");
        }
        let cluster = cluster::validate(&self.cluster, &self.kafka, &self.cassandra)?;
        self.validate_syslog()?;
        self.fields.to_engine().validate()?;
        if self.cold.timeout_secs == 0 {
            bail!("cold.timeout_secs must be at least 1");
        }
        match self.cold.url.as_deref().map(str::trim) {
            Some(url) => {
                let scheme = url.split("://").next().unwrap_or_default();
                if !url.contains("://") || !["file", "hdfs", "viewfs"].contains(&scheme) {
                    bail!("cold.url = {url:?} must be file:///path or hdfs://namenode:port/path");
                }
            }
            None if cluster => bail!(
                "cold.url is not set: cluster mode keeps the cold tier where every node reads \
                 it, e.g. hdfs://namenode:9000/logsphere (--cold / LOGSPHERE_COLD)"
            ),
            None => {}
        }
        Ok(())
    }

    fn validate_syslog(&self) -> anyhow::Result<()> {
        let s = &self.syslog;
        if !(1..=60_000).contains(&s.batch_ms) {
            bail!(
                "syslog.batch_ms = {} must be between 1 and 60000",
                s.batch_ms
            );
        }
        if s.max_connections == 0 {
            bail!("syslog.max_connections must be at least 1");
        }
        if let Some(a) = s.tcp_listen
            && (a == self.http.listen || a == self.pg.listen)
        {
            bail!("syslog.tcp_listen = {a} is the address of http.listen or pg.listen");
        }
        Ok(())
    }

    /// Cluster mode's settings when `kafka.brokers` and `cassandra.contact_points` are set
    /// (call after [`Config::validate`]).
    pub fn cluster_mode(&self) -> Option<logsphere_engine::cluster::ClusterConfig> {
        let on = cluster::validate(&self.cluster, &self.kafka, &self.cassandra).ok()?;
        on.then(|| {
            cluster::to_engine(
                &self.cluster,
                &self.kafka,
                &self.cassandra,
                self.http.max_record_bytes,
            )
        })
    }
}

#[cfg(test)]
mod tests;
