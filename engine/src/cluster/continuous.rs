//! Continuous queries in cluster mode (see `docs/cluster.md`, "Continuous queries").
//!
//! Every node runs every query over every partition, and what must happen once happens
//! once through Cassandra:
//!
//! - **Definitions** live in `cq_definitions`. A `CREATE`, `ALTER` or `DROP` on any node
//!   changes that table by lightweight transaction; each node reads it every second
//!   ([`sync_definitions`]) and builds, replaces, pauses or drops its own copy, at the
//!   version the table gives, so alert ids agree across nodes.
//! - **Input**: a [`Feeder`] thread reads all partitions outside the consumer group
//!   ([`AllPartitions`]) and feeds each partition's rows under its own name, so watermarks
//!   are per partition as the CQ contract says, and `GROUP BY source` counts a source's
//!   records from all partitions.
//! - **State and offsets together**: the feeder checkpoints every query at *cuts*. It first
//!   writes the next offset of every partition to `continuous/cluster_cuts.json` (fsynced),
//!   then moves every query to the cut's position and checkpoints them all. After a crash a
//!   query restores its checkpoint and the feeder seeks every partition to the offsets of the
//!   cut it is at, so the records after it are replayed once (`continuous/cluster.rs`).
//! - **Alerts**: [`share_alerts`] writes each alert instance to `cq_alerts` by its
//!   deterministic id (`IF NOT EXISTS`, then state changes), and `alerts` on every node reads
//!   that table. **Tables** (`INTO`, `NOTIFY (TABLE …)`): defined in `cq_tables` (`IF NOT
//!   EXISTS`, at `CREATE`); every node writes the `INTO` rows it derives to `cq_table_rows`
//!   versioned by event time ([`share_tables`]), and a `NOTIFY (TABLE t)` table is read
//!   from the shared alerts of the queries writing it. **Notifications**: each event is claimed in `cq_deliveries` before it is
//!   sent ([`Claims`]), so one node sends it, with the event id as its idempotency key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::continuous::{
    Alert, Claim, CqError, CqRegistry, CqState, DeliveryClaims, GENERATION_SHIFT, now_us,
};
use crate::hot::cassandra::{
    CassandraStore, DeliveryClaim, NodeQuery, SharedDefinition, SharedTableDef,
};
use crate::ingest::DecodeOptions;
use crate::source::kafka::reader::{AllPartitions, Start, partition_key};

/// How often definitions and alerts are synchronised with Cassandra.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often the feeder cuts (checkpoints every query with the offsets it covers).
const CUT_INTERVAL: Duration = Duration::from_secs(5);
/// How far back a node with no checkpoint starts reading, so that it has the state of the
/// windows still open when it joins *(design)*.
pub const REBUILD: Duration = Duration::from_secs(600);

/// How often an idle feeder (no continuous query defined) looks for one.
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// How long a delivery claim lasts before another node may send the event.
const CLAIM_LEASE_SECS: i32 = 30;
/// How long a delivered event's id is remembered.
const DELIVERED_RETENTION_SECS: i32 = 7 * 24 * 3600;
/// Records read per poll of the feeder.
const POLL_RECORDS: usize = 20_000;

/// The cluster-mode continuous-query parts of one node.
pub struct ClusterCq {
    node_id: String,
    registry: Arc<CqRegistry>,
    cluster: Arc<Cluster>,
    /// `CREATE`/`ALTER`/`DROP` and a sync round do not interleave.
    ddl: tokio::sync::Mutex<()>,
    /// `cq_alerts` as last read (every [`SYNC_INTERVAL`]).
    alerts: Mutex<Vec<Alert>>,
    /// `cq_tables` as last read: name → definition and columns.
    tables: Mutex<BTreeMap<String, (SharedTableDef, arrow::datatypes::SchemaRef)>>,
    /// Which nodes run each query (at the version this node runs), from `cq_nodes`: name →
    /// (node, its `continuous_queries` row as JSON), by node.
    running: Mutex<Reports>,
    /// `logs` (both tiers), which `START FROM` backfills read.
    logs: Option<Arc<dyn datafusion::catalog::TableProvider>>,
    /// The backfills running here: (query, version).
    backfilling: Mutex<HashSet<(String, u64)>>,
    /// Decoding of the records the backfill's catch-up check reads.
    decode: DecodeOptions,
    /// `PAUSE`/`RESUME` waiting for the feeder, which applies them at a cut (see
    /// [`Feeder::apply_states`]): name → the state wanted.
    pending_states: Mutex<BTreeMap<String, CqState>>,
    /// The definitions were read from Cassandra once: the feeder waits for it, so a
    /// joining node's replay reaches the queries.
    synced: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for ClusterCq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCq")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn storage(e: crate::EngineError) -> CqError {
    CqError::Cluster(e.to_string())
}

impl ClusterCq {
    /// Starts the definition sync, the feeder and the alert sharing; they wait for
    /// Cassandra and Kafka like the rest of the node.
    pub fn start(
        cluster: Arc<Cluster>,
        registry: Arc<CqRegistry>,
        data_dir: &Path,
        decode: DecodeOptions,
        logs: Option<Arc<dyn datafusion::catalog::TableProvider>>,
    ) -> Arc<Self> {
        registry.enter_cluster_mode();
        let node_id = cluster.config().node_id.clone();
        registry.set_delivery_claims(Arc::new(Claims {
            cluster: Arc::clone(&cluster),
            node_id: node_id.clone(),
            handle: tokio::runtime::Handle::current(),
        }));
        let this = Arc::new(Self {
            node_id,
            registry,
            cluster,
            ddl: tokio::sync::Mutex::new(()),
            alerts: Mutex::new(Vec::new()),
            tables: Mutex::new(BTreeMap::new()),
            logs,
            running: Mutex::new(BTreeMap::new()),
            backfilling: Mutex::new(HashSet::new()),
            decode: decode.clone(),
            pending_states: Mutex::new(BTreeMap::new()),
            synced: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let feeder = Feeder {
            cq: Arc::clone(&this),
            cuts_path: data_dir.join("continuous").join("cluster_cuts.json"),
            decode,
        };
        let spawned = std::thread::Builder::new()
            .name("cq-feeder".into())
            .spawn(move || feeder.run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the continuous-query feeder");
        }
        tokio::spawn(sync_loop(Arc::clone(&this)));
        this
    }

    /// Stops the feeder and the sync (the feeder cuts once more first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn store(&self) -> Result<Arc<CassandraStore>, CqError> {
        self.cluster
            .store()
            .ok_or_else(|| CqError::Cluster("not connected to Cassandra yet".into()))
    }

    /// The `alerts` table: every node's alerts, as Cassandra holds them.
    pub fn alerts_batch(&self) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
        let alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
        crate::continuous::alerts_batch(alerts.iter())
    }

    /// The `continuous_queries` table, the same on every node: the definition columns as
    /// the shared catalog has them; `nodes`, the nodes that run the query (each reports
    /// every [`REPORT_INTERVAL`]); the progress columns (`watermark`, `rows_in`, …) as the
    /// first of those nodes by name last reported them; `alerts` and `last_fired` from the
    /// shared alerts; `error`, every node's, prefixed by its name. Each node's own progress
    /// is in `continuous_query_nodes`.
    pub fn queries_batch(&self) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
        use arrow::array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};
        let batch = self.registry.queries_batch()?;
        let schema = batch.schema();
        let column = |name: &str| batch.column_by_name(name).map(Arc::clone);
        let (Some(names), Some(versions)) = (column("name"), column("version")) else {
            return Ok(batch);
        };
        let (Some(names), Some(versions)) = (
            names.as_any().downcast_ref::<StringArray>(),
            versions.as_any().downcast_ref::<Int64Array>(),
        ) else {
            return Ok(batch);
        };
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
        let reporters = |i: usize| running.get(names.value(i)).map_or(&[][..], Vec::as_slice);
        // The reference row of each query: the first reporting node's.
        let mut lines = Vec::new();
        let mut pick = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            match reporters(i).iter().find_map(|(_, p)| p.as_ref()) {
                Some(line) => {
                    pick.push((1, lines.len()));
                    lines.push(line.clone());
                }
                None => pick.push((0, i)),
            }
        }
        let reference = match crate::continuous::rows_from_json(&schema, &lines) {
            Ok(rows) => rows,
            Err(e) => {
                // A node of another release may report other columns: show this node's.
                tracing::warn!(error = %e, "cannot read the progress other nodes reported");
                pick = (0..batch.num_rows()).map(|i| (0, i)).collect();
                arrow::array::RecordBatch::new_empty(Arc::clone(&schema))
            }
        };
        let mut columns = batch.columns().to_vec();
        for name in PROGRESS_COLUMNS {
            let at = schema.index_of(name)?;
            let both: [&dyn Array; 2] = [batch.column(at).as_ref(), reference.column(at).as_ref()];
            columns[at] = arrow::compute::interleave(&both, &pick)?;
        }
        let of = |i: usize| {
            let version = u64::try_from(versions.value(i)).unwrap_or(0);
            alerts
                .iter()
                .filter(move |a| a.cq_name == names.value(i) && a.cq_version == version)
        };
        let count: Int64Array = (0..batch.num_rows())
            .map(|i| Some(of(i).count() as i64))
            .collect();
        let fired: TimestampMicrosecondArray = (0..batch.num_rows())
            .map(|i| of(i).map(|a| a.fired_at).max())
            .collect();
        columns[schema.index_of("alerts")?] = Arc::new(count);
        columns[schema.index_of("last_fired")?] = Arc::new(fired.with_timezone(crate::model::UTC));
        let local_errors = column("error");
        let local_error = |i: usize| {
            local_errors
                .as_ref()
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .filter(|c| c.is_valid(i))
                .map(|c| c.value(i).to_string())
        };
        let errors: StringArray = (0..batch.num_rows())
            .map(|i| {
                let reported: Vec<String> = reporters(i)
                    .iter()
                    .filter_map(|(node, p)| {
                        Some(format!("{node}: {}", reported_error(p.as_deref()?)?))
                    })
                    .collect();
                if reporters(i).is_empty() {
                    local_error(i)
                } else {
                    (!reported.is_empty()).then(|| reported.join("; "))
                }
            })
            .collect();
        columns[schema.index_of("error")?] = Arc::new(errors);
        let nodes: StringArray = (0..batch.num_rows())
            .map(|i| {
                let nodes: Vec<&str> = reporters(i).iter().map(|(n, _)| n.as_str()).collect();
                (!nodes.is_empty()).then(|| nodes.join(", "))
            })
            .collect();
        columns[schema.index_of("nodes")?] = Arc::new(nodes);
        arrow::array::RecordBatch::try_new(schema, columns)
    }

    /// The `continuous_query_nodes` table: each node's own row of `continuous_queries` as
    /// it last reported it (every [`REPORT_INTERVAL`]), for the nodes alive now.
    pub fn nodes_batch(&self) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes = Vec::new();
        let mut lines = Vec::new();
        for (node, line) in running.values().flatten() {
            if let Some(line) = line {
                nodes.push(node.clone());
                lines.push(line.clone());
            }
        }
        let rows = crate::continuous::rows_from_json(&crate::continuous::queries_schema(), &lines)
            .map_err(|e| {
                arrow::error::ArrowError::ExternalError(
                    format!("reading the progress the nodes reported: {e}").into(),
                )
            })?;
        let mut columns: Vec<arrow::array::ArrayRef> =
            vec![Arc::new(arrow::array::StringArray::from(nodes))];
        let source = rows.schema();
        for field in nodes_schema().fields().iter().skip(1) {
            columns.push(Arc::clone(rows.column(source.index_of(field.name())?)));
        }
        arrow::array::RecordBatch::try_new(nodes_schema(), columns)
    }

    /// `CREATE CONTINUOUS QUERY` in cluster mode: checked against the shared catalog, built
    /// here (which validates it), then stored for every node.
    pub async fn create(
        &self,
        cq: &logsphere_sql::CreateContinuousQuery,
    ) -> Result<crate::continuous::Created, CqError> {
        use crate::continuous::Created;
        let _ddl = self.ddl.lock().await;
        let store = self.store()?;
        let name = cq.name.to_string();
        let stored = store.cq_definitions().await.map_err(storage)?;
        let old = stored.iter().find(|d| d.name == name);
        if old.is_some() && !cq.or_replace {
            if cq.if_not_exists {
                return Ok(Created::Exists);
            }
            return Err(CqError::AlreadyExists(name));
        }
        let def = SharedDefinition {
            name: name.clone(),
            version: old.map_or(1, |d| d.version + 1),
            sql: cq.sql_text.clone(),
            state: CqState::Running.as_str().to_string(),
            created_us: now_us(),
        };
        let version = u64::try_from(def.version).unwrap_or(1);
        let created = self
            .registry
            .create_shared(cq, version, def.created_us)
            .await?;
        if let Err(e) = define_tables(&self.registry, &store, &self.node_id, &name).await {
            if old.is_none() {
                // Not stored: no node runs it. (A replaced query's next sync restores the
                // stored version here.)
                let _ = self.registry.drop_query(&name, true);
            }
            return Err(e);
        }
        if !store
            .put_cq_definition(&def, old.map(|d| d.version))
            .await
            .map_err(storage)?
        {
            // The next sync builds whatever won.
            return Err(CqError::Cluster(format!(
                "continuous query {name} was changed on another node at the same time; try again"
            )));
        }
        Ok(if old.is_some() {
            Created::Replaced
        } else {
            created
        })
    }

    /// `DROP CONTINUOUS QUERY [IF EXISTS]` in cluster mode.
    pub async fn drop_query(&self, name: &str, if_exists: bool) -> Result<bool, CqError> {
        let _ddl = self.ddl.lock().await;
        let store = self.store()?;
        let dropped = store.delete_cq_definition(name).await.map_err(storage)?;
        if !dropped && !if_exists {
            return Err(CqError::NotFound(name.to_string()));
        }
        self.registry.drop_query(name, true)?;
        Ok(dropped)
    }

    /// `ALTER CONTINUOUS QUERY … PAUSE | RESUME` in cluster mode: stored for every node,
    /// then applied here by the feeder at its next cut (each node does the same when its
    /// sync reads the change). Answers once this node applied it, or after
    /// [`STATE_APPLY_WAIT`] (a feeder still replaying applies it when it has caught up).
    pub async fn set_state(&self, name: &str, state: CqState) -> Result<(), CqError> {
        {
            let _ddl = self.ddl.lock().await;
            let store = self.store()?;
            if !store
                .set_cq_state(name, state.as_str())
                .await
                .map_err(storage)?
            {
                return Err(CqError::NotFound(name.to_string()));
            }
            self.request_state(name, state);
        }
        let deadline = Instant::now() + STATE_APPLY_WAIT;
        while Instant::now() < deadline {
            let applied = self
                .registry
                .local_definitions()
                .get(name)
                .is_none_or(|d| d.state == state);
            if applied {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Asks the feeder to move `name` to `state` at its next cut.
    fn request_state(&self, name: &str, state: CqState) {
        self.pending_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), state);
    }
}

/// How long `ALTER … PAUSE | RESUME` waits for this node's feeder to apply it.
const STATE_APPLY_WAIT: Duration = Duration::from_secs(5);

/// Definitions and alerts, every [`SYNC_INTERVAL`], until stopped.
async fn sync_loop(cq: Arc<ClusterCq>) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shared = SharedAlerts::default();
    let mut failing = HashSet::new();
    let mut reported: Option<Instant> = None;
    while !cq.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Some(store) = cq.cluster.store() else {
            continue;
        };
        if reported.is_none_or(|at| at.elapsed() >= REPORT_INTERVAL) {
            match report_running(&cq, &store).await {
                Ok(()) => reported = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "cannot report the queries this node runs"),
            }
        }
        match sync_definitions(&cq, &store, &mut failing).await {
            Ok(()) => cq.synced.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot read the continuous query definitions"),
        }
        if let Err(e) = share_alerts(&cq, &store, &mut shared).await {
            tracing::warn!(error = %e, "cannot share alerts");
        }
        if let Err(e) = share_tables(&cq, &store).await {
            tracing::warn!(error = %e, "cannot share the continuous-query tables");
        }
        start_backfills(&cq);
    }
}

/// How often a node records in `cq_nodes` which queries it runs; rows live three times as
/// long.
const REPORT_INTERVAL: Duration = Duration::from_secs(3);

/// The columns of `continuous_queries` that say how far one node's copy of a query is;
/// cluster-wide they are the reference node's (see [`ClusterCq::queries_batch`]).
const PROGRESS_COLUMNS: [&str; 7] = [
    "watermark",
    "rows_in",
    "late_rows_updated",
    "late_rows_dropped",
    "state_keys",
    "last_checkpoint",
    "wal_seq",
];

/// Query name → (node, the node's `continuous_queries` row as JSON), by node.
type Reports = BTreeMap<String, Vec<(String, Option<String>)>>;

/// The `error` a node reported in its row (`None`: none).
fn reported_error(line: &str) -> Option<String> {
    let row: serde_json::Value = serde_json::from_str(line).ok()?;
    row.get("error")?.as_str().map(str::to_string)
}

/// Schema of `continuous_query_nodes`: `node`, then the columns of `continuous_queries`
/// but `nodes`.
pub fn nodes_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let queries = crate::continuous::queries_schema();
    let fields = std::iter::once(Arc::new(Field::new("node", DataType::Utf8, false)))
        .chain(
            queries
                .fields()
                .iter()
                .filter(|f| f.name() != "nodes")
                .cloned(),
        )
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}

/// Records which queries this node runs and how far each is, then reads the same of
/// every node.
async fn report_running(cq: &ClusterCq, store: &CassandraStore) -> Result<(), crate::EngineError> {
    let local = cq.registry.local_definitions();
    let mut progress = cq.registry.progress_lines();
    let mine: Vec<NodeQuery> = local
        .iter()
        .map(|(name, d)| NodeQuery {
            name: name.clone(),
            node: cq.node_id.clone(),
            version: i64::try_from(d.version).unwrap_or(i64::MAX),
            state: d.state.as_str().to_string(),
            progress: progress.remove(name),
        })
        .collect();
    let ttl = (REPORT_INTERVAL.as_secs() * 3) as i32;
    store.report_cq_running(&cq.node_id, &mine, ttl).await?;
    let mut running = Reports::new();
    for q in store.cq_running().await? {
        let here = local
            .get(&q.name)
            .map(|d| i64::try_from(d.version).unwrap_or(i64::MAX));
        if here == Some(q.version) {
            running
                .entry(q.name)
                .or_default()
                .push((q.node, q.progress));
        }
    }
    for nodes in running.values_mut() {
        nodes.sort();
    }
    *cq.running.lock().unwrap_or_else(|p| p.into_inner()) = running;
    Ok(())
}

/// Starts the `START FROM` backfills of this node's queries that are not running yet (new
/// definitions, or ones a restart interrupted).
fn start_backfills(cq: &Arc<ClusterCq>) {
    let mut running = cq.backfilling.lock().unwrap_or_else(|p| p.into_inner());
    for (name, version, from_us, created_at) in cq.registry.backfills_to_run() {
        if running.insert((name.clone(), version)) {
            tokio::spawn(backfill(Arc::clone(cq), name, version, from_us, created_at));
        }
    }
}

/// How long after a query's creation its backfill asks Kafka where the topics end: a record
/// stamped before the creation but still on its way to the broker is appended by then.
const BACKFILL_GRACE: Duration = Duration::from_secs(2);

/// The `START FROM` backfill of query `name` in cluster mode: once every record of the
/// topics up to the creation is stored (ingest progress in Cassandra reached the topics'
/// ends), feeds the query the stored rows (Cassandra and HDFS) from its start that were
/// ingested before its creation, hour by hour in event-time order; the live records since
/// its creation were queued meanwhile and follow. See `docs/cluster.md`.
async fn backfill(cq: Arc<ClusterCq>, name: String, version: u64, from_us: i64, created_at: i64) {
    let started = Instant::now();
    let wanted = || {
        cq.registry
            .backfills_to_run()
            .iter()
            .any(|(n, v, _, _)| *n == name && *v == version)
    };
    let stop = Arc::clone(&cq.stop);
    let stopped = move || stop.load(Ordering::Relaxed);
    let result = backfill_rows(
        &cq, &name, version, from_us, created_at, &wanted, &stopped, started,
    )
    .await;
    if wanted() {
        crate::continuous::conclude_backfill(
            &cq.registry,
            &name,
            version,
            result,
            started,
            &stopped,
        );
    }
    cq.backfilling
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(name, version));
}

#[allow(clippy::too_many_arguments)]
async fn backfill_rows(
    cq: &ClusterCq,
    name: &str,
    version: u64,
    from_us: i64,
    created_at: i64,
    wanted: &impl Fn() -> bool,
    stopped: &impl Fn() -> bool,
    started: Instant,
) -> Result<u64, CqError> {
    let wait = (created_at + BACKFILL_GRACE.as_micros() as i64 - now_us()).max(0);
    tokio::time::sleep(Duration::from_micros(wait as u64)).await;
    wait_until_stored(cq, name, wanted, stopped).await?;
    let logs = cq
        .logs
        .clone()
        .ok_or_else(|| CqError::Cluster("no logs table to backfill from".into()))?;
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("logs", logs)?;
    let filter = format!(" AND ingest_time < to_timestamp_micros({created_at})");
    let from = if from_us == i64::MIN {
        String::new()
    } else {
        format!(" AND timestamp >= to_timestamp_micros({from_us})")
    };
    // The hours that hold rows: a range read of the bounds, then one query per hour.
    let bounds = ctx
        .sql(&format!(
            "SELECT CAST(min(timestamp) AS BIGINT), CAST(max(timestamp) AS BIGINT) FROM logs \
             WHERE true{from}{filter}"
        ))
        .await?
        .collect()
        .await?;
    let pair = bounds.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        use arrow::array::{Array, Int64Array};
        let lo = b.column(0).as_any().downcast_ref::<Int64Array>()?;
        let hi = b.column(1).as_any().downcast_ref::<Int64Array>()?;
        (lo.is_valid(0) && hi.is_valid(0)).then(|| (lo.value(0), hi.value(0)))
    });
    let Some((lo, hi)) = pair else {
        return Ok(0);
    };
    let hours = (crate::continuous::hour_of(lo)..=crate::continuous::hour_of(hi)).collect();
    let input = crate::continuous::Hours {
        hours,
        from_us,
        filter,
    };
    crate::continuous::feed_hours(&cq.registry, name, version, &ctx, &input, stopped, started).await
}

/// Waits until the ingest group stored every record the topics held just after the query's
/// creation (its progress in Cassandra reached the topics' ends then).
async fn wait_until_stored(
    cq: &ClusterCq,
    name: &str,
    wanted: &impl Fn() -> bool,
    stopped: &impl Fn() -> bool,
) -> Result<(), CqError> {
    use crate::source::ProgressStore;
    let config = cq.cluster.config().clone();
    let decode = cq.decode.clone();
    let ends = tokio::task::spawn_blocking(move || {
        let reader = AllPartitions::open(&config.kafka, &config.node_id, decode, |_| {
            Start::Time(now_us() / 1000)
        })?;
        reader.ends()
    })
    .await
    .map_err(|e| CqError::Cluster(format!("reading the topics' ends: {e}")))?
    .map_err(storage)?;
    let mut last_log = Instant::now();
    loop {
        if stopped() || !wanted() {
            return Err(CqError::Cluster("stopped".into()));
        }
        let behind: Vec<String> = match cq.store() {
            Ok(store) => {
                let stored: HashMap<String, i64> = store
                    .list()
                    .await
                    .map_err(storage)?
                    .into_iter()
                    .map(|p| (partition_key(&p.partition), p.next_offset))
                    .collect();
                ends.iter()
                    .filter(|(p, end)| **end > 0 && stored.get(*p).is_none_or(|s| s < *end))
                    .map(|(p, _)| p.clone())
                    .collect()
            }
            Err(_) => vec!["(Cassandra not connected)".to_string()],
        };
        if behind.is_empty() {
            return Ok(());
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(cq = %name, behind = ?behind, "backfill waits for ingest to store the records before the query's creation");
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Defines in `cq_tables` the tables query `name` writes; an error names a table another
/// query defined with other columns.
async fn define_tables(
    registry: &CqRegistry,
    store: &CassandraStore,
    node: &str,
    name: &str,
) -> Result<(), CqError> {
    for t in registry.tables_of(name) {
        let def = SharedTableDef {
            name: t.table.clone(),
            kind: if t.alerts { "alerts" } else { "into" }.to_string(),
            schema: crate::continuous::schema_hex(&t.schema)?,
            writers: vec![t.cq_name.clone()],
        };
        if let Some((kind, schema)) = store.define_cq_table(&def, node).await.map_err(storage)? {
            let theirs = crate::continuous::schema_from_hex(&schema)
                .map(|s| crate::continuous::describe_columns(&s))
                .unwrap_or_else(|_| "unreadable".into());
            return Err(CqError::TableExists(format!(
                "table \"{}\" exists ({} rows of {kind} with columns ({theirs})), but this query \
                 writes ({})",
                t.table,
                if kind == "alerts" { "alert" } else { "output" },
                crate::continuous::describe_columns(&t.schema)
            )));
        }
    }
    Ok(())
}

/// Defines the tables of this node's queries that `cq_tables` lacks, writes the `INTO` rows
/// that changed here, then reads `cq_tables` back for the sessions.
async fn share_tables(cq: &ClusterCq, store: &CassandraStore) -> Result<(), CqError> {
    let known: BTreeMap<String, Vec<String>> = cq
        .tables
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(n, (d, _))| (n.clone(), d.writers.clone()))
        .collect();
    let missing: HashSet<String> = cq
        .registry
        .all_tables()
        .into_iter()
        .filter(|t| known.get(&t.table).is_none_or(|w| !w.contains(&t.cq_name)))
        .map(|t| t.cq_name)
        .collect();
    for name in missing {
        if let Err(e) = define_tables(&cq.registry, store, &cq.node_id, &name).await {
            tracing::warn!(cq = %name, error = %e, "cannot define a continuous query's table");
        }
    }
    let changed = cq.registry.tables().take_shared()?;
    let mut pending = changed.into_iter();
    while let Some(rows) = pending.next() {
        if let Err(e) = store.put_cq_table_rows(&rows.table, &rows.rows).await {
            let mut failed = vec![rows];
            failed.extend(pending);
            cq.registry.tables().requeue(failed);
            return Err(storage(e));
        }
    }
    let mut tables = BTreeMap::new();
    for def in store.cq_tables().await.map_err(storage)? {
        match crate::continuous::schema_from_hex(&def.schema) {
            Ok(schema) => {
                tables.insert(def.name.clone(), (def, schema));
            }
            Err(e) => {
                tracing::warn!(table = %def.name, error = %e, "a stored table does not parse; not listed")
            }
        }
    }
    *cq.tables.lock().unwrap_or_else(|p| p.into_inner()) = tables;
    Ok(())
}

#[async_trait::async_trait]
impl crate::query::managed::ManagedTables for ClusterCq {
    fn names(&self) -> Vec<String> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    fn schema(&self, name: &str) -> Option<arrow::datatypes::SchemaRef> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(_, s)| Arc::clone(s))
    }

    async fn batch(&self, name: &str) -> datafusion::common::Result<arrow::array::RecordBatch> {
        use datafusion::common::DataFusionError;
        let Some((def, schema)) = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
        else {
            return Err(DataFusionError::Plan(format!(
                "table \"{name}\" was removed"
            )));
        };
        let external = |e: CqError| DataFusionError::External(Box::new(e));
        if def.kind == "alerts" {
            let alerts = self.alerts.lock().unwrap_or_else(|p| p.into_inner());
            let mine: Vec<&Alert> = alerts
                .iter()
                .filter(|a| def.writers.contains(&a.cq_name))
                .collect();
            let updated = arrow::array::TimestampMicrosecondArray::from_iter_values(
                mine.iter().map(|a| a.last_event),
            )
            .with_timezone(crate::model::UTC);
            let rows = crate::continuous::alerts_batch(mine.into_iter())?;
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(updated));
            return Ok(arrow::array::RecordBatch::try_new(schema, columns)?);
        }
        let store = self.store().map_err(external)?;
        let lines = store
            .cq_table_rows(name)
            .await
            .map_err(|e| external(storage(e)))?;
        crate::continuous::rows_from_json(&schema, &lines).map_err(external)
    }
}

/// Makes this node run what `cq_definitions` says. A definition this node cannot build is
/// logged once per version (it would fail the same on the node that created it).
async fn sync_definitions(
    cq: &ClusterCq,
    store: &CassandraStore,
    failing: &mut HashSet<(String, i64)>,
) -> Result<(), crate::EngineError> {
    let _ddl = cq.ddl.lock().await;
    let stored = store.cq_definitions().await?;
    let local = cq.registry.local_definitions();
    for def in &stored {
        let version = u64::try_from(def.version).unwrap_or(1);
        let here = local.get(&def.name);
        let built_now = here.is_none_or(|l| l.version != version);
        if built_now {
            if failing.contains(&(def.name.clone(), def.version)) {
                continue;
            }
            let built = match crate::continuous::parse_definition(&def.sql) {
                Ok(parsed) => {
                    cq.registry
                        .create_shared(&parsed, version, def.created_us)
                        .await
                }
                Err(e) => Err(e),
            };
            match built {
                Ok(_) => {
                    tracing::info!(cq = %def.name, version, "continuous query defined by the cluster")
                }
                Err(e) => {
                    tracing::error!(cq = %def.name, version, error = %e, "cannot build a continuous query of the cluster");
                    failing.insert((def.name.clone(), def.version));
                    continue;
                }
            }
        }
        let state = if def.state == CqState::Paused.as_str() {
            CqState::Paused
        } else {
            CqState::Running
        };
        let now_state = cq
            .registry
            .local_definitions()
            .get(&def.name)
            .map(|l| l.state);
        if now_state.is_none_or(|s| s == state) {
            continue;
        }
        if built_now {
            // Nothing fed yet: it starts in the cluster's state.
            if let Err(e) = cq.registry.set_state_live(&def.name, state) {
                tracing::warn!(cq = %def.name, error = %e, "cannot change a continuous query's state");
            }
        } else {
            cq.request_state(&def.name, state);
        }
    }
    let names: HashSet<&str> = stored.iter().map(|d| d.name.as_str()).collect();
    for name in local.keys().filter(|n| !names.contains(n.as_str())) {
        match cq.registry.drop_query(name, true) {
            Ok(_) => tracing::info!(cq = %name, "continuous query dropped by the cluster"),
            Err(e) => tracing::warn!(cq = %name, error = %e, "cannot drop a continuous query"),
        }
    }
    Ok(())
}

/// What this node wrote to `cq_alerts`: id → (state rank, body).
#[derive(Default)]
struct SharedAlerts {
    written: HashMap<String, (u8, String)>,
}

/// `pending` < `firing` < `resolved`: a row only moves forward.
fn rank(state: &str) -> u8 {
    match state {
        "pending" => 0,
        "firing" => 1,
        _ => 2,
    }
}

/// Writes this node's new and changed alerts to `cq_alerts`, then reads the table back for
/// `alerts`.
async fn share_alerts(
    cq: &ClusterCq,
    store: &CassandraStore,
    shared: &mut SharedAlerts,
) -> Result<(), crate::EngineError> {
    for alert in cq.registry.alerts_snapshot() {
        let body = serde_json::to_string(&alert).map_err(|e| crate::EngineError::Cassandra {
            context: "encoding an alert".into(),
            reason: e.to_string(),
        })?;
        let ours = rank(&alert.state);
        match shared.written.get(&alert.alert_id) {
            Some((r, b)) if *b == body || *r > ours => continue,
            Some(_) => store.update_alert(&alert.alert_id, &body).await?,
            None => {
                let stored = store
                    .insert_alert(&alert.alert_id, &alert.cq_name, &body, &cq.node_id)
                    .await?;
                if stored.is_none() {
                    tracing::info!(cq = %alert.cq_name, alert_id = %alert.alert_id, labels = %alert.labels, value = %alert.value, state = %alert.state, "alert instance recorded");
                }
                if let Some(stored) = stored {
                    let theirs = serde_json::from_str::<Alert>(&stored)
                        .map(|a| rank(&a.state))
                        .unwrap_or(0);
                    if ours <= theirs {
                        shared
                            .written
                            .insert(alert.alert_id.clone(), (theirs, stored));
                        continue;
                    }
                    store.update_alert(&alert.alert_id, &body).await?;
                }
            }
        }
        shared.written.insert(alert.alert_id.clone(), (ours, body));
    }
    let mut alerts = Vec::new();
    for body in store.alerts().await? {
        match serde_json::from_str::<Alert>(&body) {
            Ok(a) => alerts.push(a),
            Err(e) => tracing::warn!(error = %e, "an alert row does not parse; not listed"),
        }
    }
    alerts.sort_by(|a, b| (a.fired_at, &a.alert_id).cmp(&(b.fired_at, &b.alert_id)));
    *cq.alerts.lock().unwrap_or_else(|p| p.into_inner()) = alerts;
    Ok(())
}

/// Delivery claims in `cq_deliveries`, asked from the NOTIFY worker threads.
struct Claims {
    cluster: Arc<Cluster>,
    node_id: String,
    handle: tokio::runtime::Handle,
}

impl DeliveryClaims for Claims {
    fn claim(&self, event_id: &str) -> Result<Claim, String> {
        let store = self
            .cluster
            .store()
            .ok_or_else(|| "not connected to Cassandra yet".to_string())?;
        let claimed = self
            .handle
            .block_on(store.claim_delivery(event_id, &self.node_id, CLAIM_LEASE_SECS))
            .map_err(|e| e.to_string())?;
        Ok(match claimed {
            DeliveryClaim::Mine => Claim::Mine,
            DeliveryClaim::Done => Claim::Done,
            DeliveryClaim::Held(_) => Claim::Held,
        })
    }

    fn done(&self, event_id: &str) {
        let Some(store) = self.cluster.store() else {
            return;
        };
        let recorded = self.handle.block_on(store.delivery_done(
            event_id,
            &self.node_id,
            DELIVERED_RETENTION_SECS,
        ));
        if let Err(e) = recorded {
            // The claim expires; another node may then send it again, same id.
            tracing::warn!(event_id, error = %e, "cannot record a NOTIFY delivery");
        }
    }
}

/// One cut: the generation and the next offset of each partition (`topic/partition`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cut {
    generation: u64,
    offsets: BTreeMap<String, i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CutsFile {
    cuts: Vec<Cut>,
}

impl CutsFile {
    fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "damaged cuts file; continuous queries rebuild from Kafka");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    fn store(&self, path: &Path) -> Result<(), CqError> {
        let json = serde_json::to_vec(self).map_err(|e| CqError::Cluster(e.to_string()))?;
        crate::catalog::atomic_write(path, &json)
            .map_err(|e| CqError::Cluster(format!("writing {}: {e}", path.display())))
    }
}

/// Why [`Feeder::feed`] returned.
enum Fed {
    Stopped,
    /// A query resumed: open the reader again at the cut its state is at.
    Rewind,
}

/// The thread that reads every partition into the queries (see the module docs).
struct Feeder {
    cq: Arc<ClusterCq>,
    cuts_path: PathBuf,
    decode: DecodeOptions,
}

impl Feeder {
    fn run(self) {
        let stop = Arc::clone(&self.cq.stop);
        while !stop.load(Ordering::Relaxed) {
            // No rule, no reading: a node that only stores does not decode the whole
            // stream a second time. The first rule opens the reader like a restart does
            // (from the cut its state is at, or REBUILD back), within IDLE_CHECK.
            if self.cq.synced.load(Ordering::Relaxed) && !self.cq.registry.has_queries() {
                std::thread::sleep(IDLE_CHECK);
                continue;
            }
            match self.open() {
                Ok((reader, cuts)) => match self.feed(reader, cuts) {
                    Fed::Stopped => return,
                    // A resumed query re-reads from the cut it paused at.
                    Fed::Rewind => continue,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "continuous-query feeder cannot start yet; retrying");
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
    }

    /// Opens the reader at the cut the oldest query's state is at (or [`REBUILD`] back).
    fn open(&self) -> Result<(AllPartitions, CutsFile), CqError> {
        // The definitions first: they arrive through Cassandra.
        if !self.cq.synced.load(Ordering::Relaxed) {
            return Err(CqError::Cluster(
                "waiting for the continuous query definitions".into(),
            ));
        }
        let cuts = CutsFile::load(&self.cuts_path);
        let mut generations = self.cq.registry.generations();
        // A paused query's state waits at the cut it paused at; it is read from there when
        // it resumes, not now.
        let local = self.cq.registry.local_definitions();
        generations.retain(|name, _| local.get(name).is_none_or(|d| d.state != CqState::Paused));
        // The cut the oldest state is at; a state older than every cut kept (a query that
        // never reached a cut) reads from REBUILD back, as a new node does.
        let from = match generations.values().min() {
            Some(g) => cuts.cuts.iter().find(|c| c.generation == *g),
            None => cuts.cuts.last(),
        }
        .cloned();
        let rebuild_ms = (now_us() / 1000).saturating_sub(REBUILD.as_millis() as i64);
        let config = &self.cq.cluster.config();
        let reader = AllPartitions::open(
            &config.kafka,
            &config.node_id,
            self.decode.clone(),
            |p| match from.as_ref().and_then(|c| c.offsets.get(&partition_key(p))) {
                Some(o) => Start::Offset(*o),
                None => Start::Time(rebuild_ms),
            },
        )
        .map_err(|e| CqError::Cluster(e.to_string()))?;
        tracing::info!(
            partitions = reader.partitions().len(),
            from_generation = from.as_ref().map(|c| c.generation),
            "continuous-query feeder reading every partition"
        );
        Ok((reader, cuts))
    }

    fn feed(&self, mut reader: AllPartitions, mut cuts: CutsFile) -> Fed {
        let registry = Arc::clone(&self.cq.registry);
        registry.start_catch_up();
        let mut catching_up = true;
        // Replay reads up to where each partition ended when the node started.
        let ends = reader.ends().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the partitions' ends; replay ends at the first empty read");
            BTreeMap::new()
        });
        let mut held = Held::default();
        let mut generation = cuts.cuts.last().map_or(0, |c| c.generation);
        let mut numbers: HashMap<u64, u64> = HashMap::new();
        let mut last_cut = Instant::now();
        loop {
            let stopping = self.cq.stop.load(Ordering::Relaxed);
            let batches = if stopping {
                Vec::new()
            } else {
                reader.poll(Duration::from_millis(250), POLL_RECORDS)
            };
            let now = now_us();
            let newest = batches
                .iter()
                .filter_map(|b| crate::continuous::max_ingest_time(&b.logs))
                .max();
            for b in batches {
                held.push(b);
            }
            let positions = reader.next_offsets();
            let behind: Vec<&String> = ends
                .iter()
                .filter(|(k, end)| positions.get(*k).is_none_or(|p| p < *end))
                .map(|(k, _)| k)
                .collect();
            let replayed = if ends.is_empty() {
                newest.is_none_or(|t| t >= now - 2_000_000)
            } else {
                behind.is_empty()
            };
            // Replaying, rows are released in ingest-time order across partitions (see
            // [`Held`]); live, as they come.
            let until = if catching_up && !replayed {
                held.aligned(&behind)
            } else {
                i64::MAX
            };
            for (key, logs, offsets, clock) in held.release(until) {
                let clock = clock.min(now);
                for (g, rows) in split_at_cuts(&cuts, &key, &offsets, generation) {
                    let part = logs.slice(rows.start, rows.len());
                    let n = numbers.entry(g).or_insert(0);
                    *n += 1;
                    let seq = (g << GENERATION_SHIFT) | *n;
                    registry.process_partition(&key, seq, &part, clock);
                }
            }
            if catching_up && replayed {
                registry.caught_up(None);
                catching_up = false;
                tracing::info!(generation, "continuous-query feeder caught up");
            }
            // A cut covers what was read: only once nothing is held back. PAUSE and RESUME
            // take effect at one, so a paused state sits exactly at a cut.
            let states = !catching_up && self.has_pending_states();
            if !catching_up && (stopping || states || last_cut.elapsed() >= CUT_INTERVAL) {
                generation += 1;
                numbers.retain(|g, _| *g >= generation);
                let cut = self.cut(&registry, &reader, &mut cuts, generation);
                last_cut = Instant::now();
                match cut {
                    Ok(()) if states && self.apply_states() => return Fed::Rewind,
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "continuous-query cut failed; the next one retries");
                        generation -= 1;
                    }
                }
            }
            if stopping {
                return Fed::Stopped;
            }
        }
    }

    fn has_pending_states(&self) -> bool {
        !self
            .cq
            .pending_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Applies the `PAUSE`s and `RESUME`s asked for, just after a cut: a paused query's
    /// state stays at that cut (checkpointed there, and kept by the cuts file). `true` when
    /// a query resumed: the feeder then reads again from the cut it paused at, as a
    /// restart does — the other queries skip what they have seen (their state is at the
    /// newest cut), the resumed one gets what arrived while it was paused, each record once.
    fn apply_states(&self) -> bool {
        let wanted = std::mem::take(
            &mut *self
                .cq
                .pending_states
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let before = self.cq.registry.local_definitions();
        let mut resumed = false;
        for (name, state) in wanted {
            let Some(was) = before.get(&name).map(|d| d.state) else {
                continue;
            };
            if was == state {
                continue;
            }
            let applied = match state {
                CqState::Running => self.cq.registry.resume_replaying(&name),
                _ => self.cq.registry.set_state_live(&name, state),
            };
            match applied {
                Ok(()) => {
                    tracing::info!(cq = %name, state = state.as_str(), "continuous query state applied at a cut");
                    resumed |= state == CqState::Running;
                }
                Err(e) => {
                    tracing::warn!(cq = %name, error = %e, "cannot change a continuous query's state")
                }
            }
        }
        resumed
    }

    /// Writes the cut's offsets, then moves every query to it and checkpoints them.
    fn cut(
        &self,
        registry: &CqRegistry,
        reader: &AllPartitions,
        cuts: &mut CutsFile,
        generation: u64,
    ) -> Result<(), CqError> {
        let mut offsets = cuts
            .cuts
            .last()
            .map(|c| c.offsets.clone())
            .unwrap_or_default();
        offsets.extend(reader.next_offsets());
        cuts.cuts.push(Cut {
            generation,
            offsets,
        });
        // Keep the cuts some query's state is at, and the newest.
        let needed: HashSet<u64> = registry.generations().into_values().collect();
        let newest = cuts.cuts.len() - 1;
        let mut i = 0;
        cuts.cuts.retain(|c| {
            let keep = i == newest || needed.contains(&c.generation);
            i += 1;
            keep
        });
        cuts.store(&self.cuts_path)?;
        registry.cut(generation, now_us());
        Ok(())
    }
}

/// Rows read but not yet fed while replaying.
///
/// librdkafka may return one partition's whole backlog before another's first record. Fed
/// as they come, the partition ahead would move the watermark (the minimum over the
/// partitions the query has seen) past rows the others have not delivered yet, and those
/// would arrive late: a window missing them, an alert resolved and opened again. So while
/// replaying, rows are held and released in ingest-time order: up to the newest ingest time
/// read from every partition that has not reached its end (Kafka Streams and Flink call
/// this aligning partitions by timestamp). The clock of what is released is that time, so
/// no partition looks idle for having been read late.
#[derive(Default)]
struct Held {
    /// Per partition (`topic/partition`): batches with their row offsets, in order.
    rows: BTreeMap<String, std::collections::VecDeque<(arrow::array::RecordBatch, Vec<i64>)>>,
    /// The newest ingest time read from each partition.
    read_up_to: BTreeMap<String, i64>,
    count: usize,
}

/// Rows held before they are released whatever the alignment, so a partition that never
/// delivers cannot hold memory without bound *(design)*.
const HELD_MAX_ROWS: usize = 500_000;

impl Held {
    fn push(&mut self, b: crate::source::SourcedBatch) {
        let key = partition_key(&b.partition);
        if let Some(t) = crate::continuous::max_ingest_time(&b.logs) {
            self.read_up_to.insert(key.clone(), t);
        }
        if b.logs.num_rows() > 0 {
            self.count += b.logs.num_rows();
            self.rows
                .entry(key)
                .or_default()
                .push_back((b.logs, b.log_offsets));
        }
    }

    /// The ingest time up to which rows may go: the oldest newest-read time over the
    /// partitions `behind` (`i64::MIN` while one of them has delivered nothing).
    fn aligned(&self, behind: &[&String]) -> i64 {
        if self.count > HELD_MAX_ROWS {
            tracing::warn!(
                rows = self.count,
                "replay: a partition lags far behind; feeding without aligning"
            );
            return i64::MAX;
        }
        behind
            .iter()
            .map(|k| self.read_up_to.get(*k).copied().unwrap_or(i64::MIN))
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Takes every held row ingested at or before `until` (`i64::MAX`: all), merged
    /// across partitions in ingest-time order: `(partition, rows, their offsets, clock)`,
    /// where the clock (the newest ingest time released so far) never goes back.
    fn release(&mut self, until: i64) -> Vec<(String, arrow::array::RecordBatch, Vec<i64>, i64)> {
        let mut out = Vec::new();
        loop {
            // The partition whose next row is oldest, and the next-oldest head after it.
            let mut heads: Vec<(i64, &String)> = self
                .rows
                .iter()
                .filter_map(|(k, q)| q.front().map(|(logs, _)| (first_time(logs), k)))
                .filter(|(t, _)| *t <= until)
                .collect();
            heads.sort();
            let Some(&(_, key)) = heads.first() else {
                break;
            };
            let key = key.clone();
            let bound = heads.get(1).map_or(until, |(t, _)| (*t).min(until));
            let Some(queue) = self.rows.get_mut(&key) else {
                break;
            };
            let Some((logs, offsets)) = queue.pop_front() else {
                break;
            };
            let times = ingest_times(&logs);
            // At least one row, then every row up to `bound` (rows of a partition go in
            // offset order).
            let take = (1..logs.num_rows())
                .find(|i| times.get(*i).copied().flatten().is_some_and(|t| t > bound))
                .unwrap_or(logs.num_rows());
            let clock = times[..take]
                .iter()
                .flatten()
                .max()
                .copied()
                .unwrap_or(i64::MAX);
            self.count -= take;
            if take < logs.num_rows() {
                let rest = logs.slice(take, logs.num_rows() - take);
                queue.push_front((rest, offsets[take..].to_vec()));
                out.push((key, logs.slice(0, take), offsets[..take].to_vec(), clock));
            } else {
                out.push((key, logs, offsets, clock));
            }
        }
        self.rows.retain(|_, q| !q.is_empty());
        out
    }
}

/// The `ingest_time` of each row (`None`: null or no such column).
fn ingest_times(logs: &arrow::array::RecordBatch) -> Vec<Option<i64>> {
    use arrow::array::{Array, TimestampMicrosecondArray};
    match logs
        .column_by_name("ingest_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
    {
        Some(t) => (0..t.len())
            .map(|i| t.is_valid(i).then(|| t.value(i)))
            .collect(),
        None => vec![None; logs.num_rows()],
    }
}

/// The ingest time of a batch's first row (`i64::MIN` when unknown: it goes first).
fn first_time(logs: &arrow::array::RecordBatch) -> i64 {
    ingest_times(&logs.slice(0, logs.num_rows().min(1)))
        .first()
        .copied()
        .flatten()
        .unwrap_or(i64::MIN)
}

/// Splits one partition's rows (`offsets`, ascending) by the generation each offset falls
/// in: the newest cut at or below it, or `current` past the last cut.
fn split_at_cuts(
    cuts: &CutsFile,
    key: &str,
    offsets: &[i64],
    current: u64,
) -> Vec<(u64, std::ops::Range<usize>)> {
    // Before the oldest cut that knows the partition: the generation before it.
    let before_all = cuts
        .cuts
        .iter()
        .find(|c| c.offsets.contains_key(key))
        .map_or(current, |c| c.generation.saturating_sub(1));
    let generation_of = |o: i64| {
        cuts.cuts
            .iter()
            .rev()
            .find(|c| c.offsets.get(key).is_some_and(|start| *start <= o))
            .map_or(before_all, |c| c.generation)
            .min(current)
    };
    let mut out: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    for (i, o) in offsets.iter().enumerate() {
        let g = generation_of(*o);
        match out.last_mut() {
            Some((last, range)) if *last == g => range.end = i + 1,
            _ => out.push((g, i..i + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_numbered_in_the_generation_of_their_offset() {
        let cut = |generation, o| Cut {
            generation,
            offsets: BTreeMap::from([("t/0".to_string(), o)]),
        };
        let cuts = CutsFile {
            cuts: vec![cut(3, 10), cut(4, 20)],
        };
        // Offset 8 is before the oldest cut: the generation before it.
        let split = split_at_cuts(&cuts, "t/0", &[8, 12, 19, 20, 25], 4);
        assert_eq!(split, vec![(2, 0..1), (3, 1..3), (4, 3..5)]);
        // A partition no cut knows is in the current generation.
        assert_eq!(split_at_cuts(&cuts, "t/1", &[1, 2], 4), vec![(4, 0..2)]);
    }
}
