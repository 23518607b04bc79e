//! The Cassandra hot tier (cluster mode): log rows, dead letters and partition progress.
//!
//! - [`schema`]: the keyspace and tables, created idempotently at connect.
//! - [`write`]: [`HotStore::append`], idempotent by each row's Kafka identity.
//! - [`progress`]: [`ProgressStore`], fenced by an epoch bumped with lightweight transactions.
//! - [`keys`]: the `Idempotency-Key`s of HTTP ingest, claimed and answered by LWT.
//! - [`scan`]: `logs` and `dead_letters` as DataFusion tables, reading only the
//!   (bucket, shard) partitions a time filter allows; [`exec`] reads them.
//!
//! Timestamps are stored as `bigint` microseconds: CQL `timestamp` has only millisecond
//! precision and the model's timestamps must round-trip exactly. The layout, with a worked
//! example, is in `cassandra.md` beside this module.

mod catalog;
mod cq;
mod exec;
mod keys;
mod progress;
mod scan;
mod schema;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use tokio::sync::Semaphore;

pub use catalog::Lease;
pub use cq::{DeliveryClaim, NodeQuery, SharedDefinition, SharedTableDef};
pub use exec::{CassandraScanExec, Keep};
pub use keys::{KeyClaim, KeyFinish};
pub use scan::CassandraTable;

use crate::EngineError;
use crate::cluster::CassandraConfig;
use crate::hot::HotStore;
use crate::query::tables::TableKind;
use crate::source::{PartitionClaim, PartitionId, PartitionProgress, ProgressStore, SourcedBatch};

/// Counters of what the store did since it connected.
#[derive(Debug, Default)]
pub struct CassandraMetrics {
    /// `logs` rows written (a redelivered row counts again).
    pub rows_written: AtomicU64,
    /// `dead_letters` rows written.
    pub dead_letters_written: AtomicU64,
    /// Appends that failed (the caller retries them).
    pub write_errors: AtomicU64,
    /// Rows read by scans.
    pub rows_read: AtomicU64,
    /// Lightweight transactions that lost a race (not applied).
    pub lwt_conflicts: AtomicU64,
}

impl CassandraMetrics {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The hot tier and progress store of cluster mode, over one Cassandra session.
pub struct CassandraStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CassandraStore")
            .field("keyspace", &self.shared.keyspace)
            .field("group", &self.shared.group)
            .finish()
    }
}

/// What the store, its tables and their scans share.
struct Shared {
    session: Session,
    keyspace: String,
    group: String,
    layout: Layout,
    write_consistency: Consistency,
    read_consistency: Consistency,
    page_size: i32,
    max_in_flight: usize,
    /// Bounds the statements in flight across all concurrent appends.
    in_flight: Semaphore,
    writes: write::WriteStatements,
    progress: progress::ProgressStatements,
    keys: keys::KeyStatements,
    ping: PreparedStatement,
    /// Scan statements, prepared once per CQL text.
    scan_statements: Mutex<HashMap<String, PreparedStatement>>,
    metrics: CassandraMetrics,
}

/// How rows map to Cassandra partitions.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Bucket width in µs.
    bucket_us: i64,
    /// Shards per bucket.
    shards: i16,
}

impl Layout {
    fn new(config: &CassandraConfig) -> Result<Self, EngineError> {
        let bucket_us = i64::try_from(config.bucket.as_micros())
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| {
                err(
                    "cassandra.bucket",
                    format!("bucket width {:?} must be positive", config.bucket),
                )
            })?;
        let shards = i16::try_from(config.shards)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                err(
                    "cassandra.shards",
                    format!("{} shards: must be 1..=32767", config.shards),
                )
            })?;
        Ok(Self { bucket_us, shards })
    }

    /// The bucket holding time `us`: its start, in µs.
    fn bucket(&self, us: i64) -> i64 {
        us.div_euclid(self.bucket_us).saturating_mul(self.bucket_us)
    }

    /// The shard a Kafka partition writes: stable across processes and versions.
    fn shard(&self, partition: &PartitionId) -> i16 {
        let mut h = crc32fast::Hasher::new();
        h.update(partition.topic.as_bytes());
        h.update(&partition.partition.to_be_bytes());
        (h.finalize() % self.shards as u32) as i16
    }
}

/// An [`EngineError::Cassandra`] with what was being done.
fn err(context: impl Into<String>, reason: impl fmt::Display) -> EngineError {
    EngineError::Cassandra {
        context: context.into(),
        reason: reason.to_string(),
    }
}

/// Parses a consistency level as written in the configuration (`LOCAL_QUORUM`, `one`, …).
fn parse_consistency(key: &str, value: &str) -> Result<Consistency, EngineError> {
    let c = match value.trim().to_ascii_uppercase().replace('-', "_").as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(err(
                key,
                format!(
                    "unknown consistency level {value:?} (expected ONE, TWO, THREE, QUORUM, \
                     ALL, LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE or ANY)"
                ),
            ));
        }
    };
    Ok(c)
}

impl CassandraStore {
    /// Connects, creates or migrates the keyspace and tables, and prepares every statement.
    /// `group` is the consumer group whose progress rows [`ProgressStore`] reads and writes.
    pub async fn connect(
        config: &CassandraConfig,
        group: &str,
    ) -> Result<Arc<CassandraStore>, EngineError> {
        let write_consistency =
            parse_consistency("cassandra.write_consistency", &config.write_consistency)?;
        let read_consistency =
            parse_consistency("cassandra.read_consistency", &config.read_consistency)?;
        let layout = Layout::new(config)?;
        if config.page_size <= 0 {
            return Err(err(
                "cassandra.page_size",
                format!("{} rows per page: must be positive", config.page_size),
            ));
        }
        let session = open_session(config, write_consistency).await?;
        let keyspace = schema::migrate(&session, config).await?;
        let writes =
            write::WriteStatements::prepare(&session, &keyspace, write_consistency, config.ttl)
                .await?;
        let progress = progress::ProgressStatements::prepare(
            &session,
            &keyspace,
            write_consistency,
            read_consistency,
        )
        .await?;
        let keys = keys::KeyStatements::prepare(&session, &keyspace, write_consistency).await?;
        let mut ping = prepare(&session, "SELECT release_version FROM system.local").await?;
        ping.set_consistency(Consistency::One);
        let max_in_flight = config.max_in_flight.max(1);
        Ok(Arc::new(CassandraStore {
            shared: Arc::new(Shared {
                session,
                keyspace,
                group: group.to_string(),
                layout,
                write_consistency,
                read_consistency,
                page_size: config.page_size,
                max_in_flight,
                in_flight: Semaphore::new(max_in_flight),
                writes,
                progress,
                keys,
                ping,
                scan_statements: Mutex::new(HashMap::new()),
                metrics: CassandraMetrics::default(),
            }),
        }))
    }

    /// Checks that a node answers (for `/healthz`).
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.shared
            .session
            .execute_unpaged(&self.shared.ping, ())
            .await
            .map_err(|e| err("ping", e))?;
        Ok(())
    }

    /// The store's counters.
    pub fn metrics(&self) -> &CassandraMetrics {
        &self.shared.metrics
    }

    /// The hot rows of `kind` as a table whose scans can be told which rows to keep.
    pub fn cassandra_table(&self, kind: TableKind) -> CassandraTable {
        CassandraTable::new(Arc::clone(&self.shared), kind)
    }

    /// The cold tier's committed manifest (the cluster catalog), read linearizably: what a
    /// compare-and-set starts from.
    pub async fn load_manifest(&self) -> Result<crate::catalog::Manifest, EngineError> {
        catalog::load(&self.shared, true).await
    }

    /// The committed manifest at the read consistency, without a Paxos round: for keeping a
    /// node's copy current.
    pub async fn read_manifest(&self) -> Result<crate::catalog::Manifest, EngineError> {
        catalog::load(&self.shared, false).await
    }

    /// Commits `next` if the stored manifest is still at version `expected`.
    pub async fn commit_manifest(
        &self,
        expected: u64,
        next: &crate::catalog::Manifest,
    ) -> Result<bool, EngineError> {
        catalog::commit(&self.shared, expected, next).await
    }

    /// Takes or renews the tiering lease for `owner`.
    pub async fn tiering_lease(&self, owner: &str, ttl_secs: i32) -> Result<Lease, EngineError> {
        catalog::lease(&self.shared, owner, ttl_secs).await
    }

    /// Claims the `Idempotency-Key` `key` for the request `token` for `lease` (see
    /// `keys.rs`): whether this request stores the records, or what answered it before.
    pub async fn claim_ingest_key(
        &self,
        key: &str,
        token: &str,
        lease: std::time::Duration,
    ) -> Result<KeyClaim, EngineError> {
        keys::claim(&self.shared, key, token, lease).await
    }

    /// Records `answer` to `key` for `retention`, once its records are acknowledged.
    pub async fn finish_ingest_key(
        &self,
        key: &str,
        token: &str,
        answer: &str,
        retention: std::time::Duration,
    ) -> Result<KeyFinish, EngineError> {
        keys::finish(&self.shared, key, token, answer, retention).await
    }

    /// Where `key`'s records go (partition, offset before the first attempt), if recorded.
    pub async fn ingest_key_start(&self, key: &str) -> Result<Option<(i32, i64)>, EngineError> {
        keys::start(&self.shared, key).await
    }

    /// Records where `key`'s records go, for `retention`.
    pub async fn record_ingest_key_start(
        &self,
        key: &str,
        partition: i32,
        from_offset: i64,
        retention: std::time::Duration,
    ) -> Result<(), EngineError> {
        keys::record_start(&self.shared, key, partition, from_offset, retention).await
    }

    /// Gives `key` up if `token` holds it, so a retry can store the records.
    pub async fn release_ingest_key(&self, key: &str, token: &str) -> Result<(), EngineError> {
        keys::release(&self.shared, key, token).await
    }

    /// The continuous query definitions every node runs (`cq.rs`).
    pub async fn cq_definitions(&self) -> Result<Vec<SharedDefinition>, EngineError> {
        cq::definitions(&self.shared).await
    }

    /// Stores `def` if the stored version is still `expected` (`None`: not defined yet).
    pub async fn put_cq_definition(
        &self,
        def: &SharedDefinition,
        expected: Option<i64>,
    ) -> Result<bool, EngineError> {
        cq::put_definition(&self.shared, def, expected).await
    }

    /// Sets a continuous query's state; `false` when it is not defined.
    pub async fn set_cq_state(&self, name: &str, state: &str) -> Result<bool, EngineError> {
        cq::set_definition_state(&self.shared, name, state).await
    }

    /// Drops a continuous query's definition; `false` when there was none.
    pub async fn delete_cq_definition(&self, name: &str) -> Result<bool, EngineError> {
        cq::delete_definition(&self.shared, name).await
    }

    /// Creates alert `id` unless it exists: `None` when this call created it, else the
    /// stored body.
    pub async fn insert_alert(
        &self,
        id: &str,
        cq_name: &str,
        body: &str,
        writer: &str,
    ) -> Result<Option<String>, EngineError> {
        cq::insert_alert(&self.shared, id, cq_name, body, writer).await
    }

    /// Replaces the stored body of alert `id`.
    pub async fn update_alert(&self, id: &str, body: &str) -> Result<(), EngineError> {
        cq::update_alert(&self.shared, id, body).await
    }

    /// Every stored alert (JSON bodies).
    pub async fn alerts(&self) -> Result<Vec<String>, EngineError> {
        cq::alerts(&self.shared).await
    }

    /// Defines a continuous-query table unless it exists (see `cq.rs`): `None` when it is
    /// defined as `def` says, else the kind and schema another definition gave it.
    pub async fn define_cq_table(
        &self,
        def: &SharedTableDef,
        node: &str,
    ) -> Result<Option<(String, String)>, EngineError> {
        cq::define_table(&self.shared, def, node).await
    }

    /// Records that `node` runs `queries` (name, version, state) for the next `ttl_secs`.
    pub async fn report_cq_running(
        &self,
        node: &str,
        queries: &[NodeQuery],
        ttl_secs: i32,
    ) -> Result<(), EngineError> {
        cq::report_running(&self.shared, node, queries, ttl_secs).await
    }

    /// Every query some node reported running, with that node's progress.
    pub async fn cq_running(&self) -> Result<Vec<NodeQuery>, EngineError> {
        cq::running(&self.shared).await
    }

    /// Every continuous-query table.
    pub async fn cq_tables(&self) -> Result<Vec<SharedTableDef>, EngineError> {
        cq::table_defs(&self.shared).await
    }

    /// Writes rows of an `INTO` table (key, JSON row, version).
    pub async fn put_cq_table_rows(
        &self,
        table: &str,
        rows: &[(Vec<u8>, String, i64)],
    ) -> Result<(), EngineError> {
        cq::put_table_rows(&self.shared, table, rows).await
    }

    /// Every row of an `INTO` table, as JSON.
    pub async fn cq_table_rows(&self, table: &str) -> Result<Vec<String>, EngineError> {
        cq::table_rows(&self.shared, table).await
    }

    /// Claims the delivery of a notification event for `owner`.
    pub async fn claim_delivery(
        &self,
        event_id: &str,
        owner: &str,
        lease_secs: i32,
    ) -> Result<DeliveryClaim, EngineError> {
        cq::claim_delivery(&self.shared, event_id, owner, lease_secs).await
    }

    /// Records that `owner` delivered `event_id`.
    pub async fn delivery_done(
        &self,
        event_id: &str,
        owner: &str,
        retention_secs: i32,
    ) -> Result<(), EngineError> {
        cq::delivery_done(&self.shared, event_id, owner, retention_secs).await
    }

    /// Lets go of the tiering lease if `owner` holds it.
    pub async fn release_tiering_lease(&self, owner: &str) -> Result<(), EngineError> {
        catalog::release(&self.shared, owner).await
    }
}

/// A session with token-aware (and, given a datacenter, DC-local) routing.
async fn open_session(
    config: &CassandraConfig,
    consistency: Consistency,
) -> Result<Session, EngineError> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .request_timeout(Some(config.request_timeout))
        .consistency(consistency)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .build();
    SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(config.request_timeout)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(|e| {
            err(
                format!("connecting to {}", config.contact_points.join(",")),
                e,
            )
        })
}

/// `[applied]` of a lightweight transaction's answer and, when it did not apply, the text
/// columns `names` of the row Cassandra returns with it (`None`: absent or null).
fn lwt_answer<const N: usize>(
    result: scylla::response::query_result::QueryResult,
    names: [&str; N],
) -> Result<(bool, [Option<String>; N]), String> {
    use scylla::value::{CqlValue, Row};
    let rows = result.into_rows_result().map_err(|e| e.to_string())?;
    let positions = names.map(|name| rows.column_specs().iter().position(|c| c.name() == name));
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| e.to_string())?
        .ok_or("the lightweight transaction returned no row")?;
    let applied = match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => *b,
        other => return Err(format!("unexpected [applied] column: {other:?}")),
    };
    let text = positions.map(
        |i| match i.and_then(|i| row.columns.get(i).cloned().flatten()) {
            Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Some(s),
            _ => None,
        },
    );
    Ok((applied, text))
}

/// Prepares `cql`, naming it in the error.
async fn prepare(session: &Session, cql: &str) -> Result<PreparedStatement, EngineError> {
    session
        .prepare(cql)
        .await
        .map_err(|e| err(format!("preparing `{cql}`"), e))
}

#[async_trait]
impl HotStore for CassandraStore {
    async fn append(&self, batch: &SourcedBatch) -> Result<(), EngineError> {
        let result = write::append(&self.shared, batch).await;
        if result.is_err() {
            CassandraMetrics::add(&self.shared.metrics.write_errors, 1);
        }
        result
    }

    fn table(&self, kind: TableKind) -> Arc<dyn TableProvider> {
        Arc::new(CassandraTable::new(Arc::clone(&self.shared), kind))
    }
}

#[async_trait]
impl ProgressStore for CassandraStore {
    async fn claim(
        &self,
        partition: &PartitionId,
        owner: &str,
    ) -> Result<PartitionClaim, EngineError> {
        progress::claim(&self.shared, partition, owner).await
    }

    async fn advance(
        &self,
        partition: &PartitionId,
        epoch: i64,
        next_offset: i64,
    ) -> Result<bool, EngineError> {
        progress::advance(&self.shared, partition, epoch, next_offset).await
    }

    async fn list(&self) -> Result<Vec<PartitionProgress>, EngineError> {
        progress::list(&self.shared).await
    }
}
