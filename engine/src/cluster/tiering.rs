//! Cluster tiering: Cassandra's hot rows → Parquet in the shared cold store, committed by a
//! lightweight transaction on the manifest.
//!
//! A round, on the node holding the tiering lease:
//!
//! ```text
//! 1. lease (LWT, TTL)             one node tiers at a time
//! 2. read the manifest (SERIAL)   the cut `from` the cold tier holds now
//! 3. read every partition's progress: the offsets below it are written for good
//! 4. cut `to` = (horizon = max(from, now), offsets = max(from, progress))
//! 5. scan the hot rows covered by `to` and not by `from`, hour by hour, and write each
//!    hour as new Parquet files (new names, never reused)
//! 6. commit: UPDATE tier_state … IF version = from.version   ← the one commit point
//! 7. publish locally; other nodes load it within a second
//! ```
//!
//! A crash before 6 leaves files no manifest names (removed by a later round once they are
//! older than [`DEBRIS_AGE`]); a crash after it leaves hot rows the cut hides. Hot rows are
//! not deleted: they expire by the table's TTL (TWCS drops whole SSTables, no tombstones),
//! so a query planned before a commit still finds them. Why the cut has offsets as well
//! as a time: `docs/cluster.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use datafusion::common::ScalarValue;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{col, lit};
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::catalog::{ColdFile, Manifest, TierCut};
use crate::cold::ColdStore;
use crate::hot::cassandra::{CassandraStore, Keep, Lease};
use crate::query::tables::TableKind;
use crate::source::ProgressStore;
pub use crate::tiering::TieringMetrics;
use crate::tiering::{HOUR_US, partition_dir, sort_by, split_by_hour};
use crate::{Engine, EngineError};

/// How long the tiering lease lasts unless renewed; a crashed tierer blocks others this long.
pub const LEASE_SECS: i32 = 30;
/// Files under the cold root that no manifest names are removed once this old: younger
/// ones may belong to a round in progress.
pub const DEBRIS_AGE: Duration = Duration::from_secs(600);
/// Rows of one hour buffered before they are written as a file of their own.
const MAX_FILE_ROWS: usize = 500_000;
/// Progress trails the rows written by at most about a second (the Kafka source advances
/// it once a second, and at once when a partition goes idle). An asked-for round waits this
/// long before it reads progress, so every row written before the request moves.
const PROGRESS_SETTLE: Duration = Duration::from_millis(1500);
/// How long `POST /v1/flush` waits for another node's lease.
const LEASE_WAIT: Duration = Duration::from_secs(90);

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Rows moved (logs and dead letters).
    pub rows: u64,
    /// Files written.
    pub files: usize,
    /// The committed manifest's version (unchanged when there was nothing to do).
    pub version: u64,
    /// The committed horizon, µs.
    pub horizon_us: i64,
    /// Bytes written.
    pub bytes: u64,
}

/// Runs one tiering round now: everything whose Kafka progress is durable and whose time
/// is before `cut_us` moves to the cold tier. With `wait` (an operator's or a test's
/// request) it waits for another node's lease and for progress to cover the rows written
/// before the call; without it (the periodic round) it gives up at once when the lease is
/// taken.
pub async fn round(engine: &Engine, cut_us: i64, wait: bool) -> Result<RoundReport, EngineError> {
    let _guard = engine.flush_lock.lock().await;
    let cluster = engine
        .cluster()
        .ok_or_else(|| EngineError::Unsupported("tiering round outside cluster mode".into()))?;
    let store = cluster.store().ok_or_else(|| EngineError::Cassandra {
        context: "tiering".into(),
        reason: format!(
            "not connected yet: {}",
            cluster.ready().err().unwrap_or_default()
        ),
    })?;
    let owner = cluster.config().node_id.clone();
    take_lease(engine, &store, &owner, wait).await?;
    if wait {
        tokio::time::sleep(PROGRESS_SETTLE).await;
    }
    let result = moved(engine, &store, cut_us).await;
    if let Err(e) = store.release_tiering_lease(&owner).await {
        tracing::warn!(error = %e, "could not release the tiering lease; it expires by itself");
    }
    let m = engine.tiering_metrics();
    match &result {
        Ok(r) if r.files > 0 => m.succeeded(r.rows, r.files as u64, r.bytes),
        Ok(_) => {}
        Err(e) => m.failed(e),
    }
    result
}

/// Takes the tiering lease for `owner` (waiting up to [`LEASE_WAIT`] when `wait`).
async fn take_lease(
    engine: &Engine,
    store: &CassandraStore,
    owner: &str,
    wait: bool,
) -> Result<(), EngineError> {
    let started = Instant::now();
    loop {
        match store.tiering_lease(owner, LEASE_SECS).await? {
            Lease::Mine => return Ok(()),
            Lease::Held(other) => {
                engine
                    .tiering_metrics()
                    .lease_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !wait || started.elapsed() > LEASE_WAIT {
                    return Err(EngineError::Cassandra {
                        context: "tiering".into(),
                        reason: format!("node {other:?} holds the tiering lease"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Cluster compaction: one round of `compaction::run_round` under the tiering lease (one
/// node merges at a time; each group commits by compare-and-set on the manifest).
pub async fn compact(
    engine: &Engine,
    wait: bool,
) -> Result<crate::compaction::CompactionReport, EngineError> {
    let cluster = engine.cluster().ok_or_else(|| {
        EngineError::Unsupported("cluster compaction outside cluster mode".into())
    })?;
    let store = cluster.store().ok_or_else(|| EngineError::Cassandra {
        context: "compaction".into(),
        reason: format!(
            "not connected yet: {}",
            cluster.ready().err().unwrap_or_default()
        ),
    })?;
    let owner = cluster.config().node_id.clone();
    take_lease(engine, &store, &owner, wait).await?;
    let result = crate::compaction::run_round(engine, !wait).await;
    if let Err(e) = store.release_tiering_lease(&owner).await {
        tracing::warn!(error = %e, "could not release the tiering lease; it expires by itself");
    }
    result
}

/// Steps 2–7 of a round, holding the lease.
async fn moved(
    engine: &Engine,
    store: &Arc<CassandraStore>,
    cut_us: i64,
) -> Result<RoundReport, EngineError> {
    let started = Instant::now();
    let old = store.load_manifest().await?;
    if old.version > engine.tiers.manifest().version {
        engine.tiers.publish(old.clone());
    }
    remove_debris(&engine.cold, &old).await;
    let mut offsets = old
        .cut
        .as_ref()
        .map(|c| c.offsets.clone())
        .unwrap_or_default();
    for p in store.list().await? {
        let next = offsets
            .entry(p.partition.topic.clone())
            .or_default()
            .entry(p.partition.partition)
            .or_insert(0);
        *next = (*next).max(p.next_offset);
    }
    let from = old.cut.clone().map(Arc::new);
    let to = Arc::new(TierCut {
        horizon_us: old
            .cut
            .as_ref()
            .map_or(cut_us, |c| c.horizon_us.max(cut_us)),
        offsets,
    });
    if from.as_deref() == Some(&*to) {
        return Ok(RoundReport {
            version: old.version,
            horizon_us: to.horizon_us,
            ..RoundReport::default()
        });
    }
    let mut written: Vec<ColdFile> = Vec::new();
    let logs = write_moving(engine, store, TableKind::Logs, &from, &to, &mut written).await;
    let logs = match logs {
        Ok(files) => files,
        Err(e) => return Err(abandon(&engine.cold, &written, e).await),
    };
    let dead = write_moving(
        engine,
        store,
        TableKind::DeadLetters,
        &from,
        &to,
        &mut written,
    )
    .await;
    let dead = match dead {
        Ok(files) => files,
        Err(e) => return Err(abandon(&engine.cold, &written, e).await),
    };
    if let Some(pause) = engine.config().fault_flush_pause {
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "fault injection: pausing before the tiering commit"
        );
        tokio::time::sleep(pause).await;
    }
    let rows: u64 = written.iter().map(|f| f.rows).sum();
    let bytes: u64 = written.iter().map(|f| f.bytes).sum();
    if written.is_empty() {
        // Nothing moved: every row below the new offsets is already written, so a cut
        // that covers no existing row more answers every query the same. Commit nothing.
        return Ok(RoundReport {
            version: old.version,
            horizon_us: old.cut.as_ref().map_or(0, |c| c.horizon_us),
            ..RoundReport::default()
        });
    }
    let mut next = old.clone();
    next.version += 1;
    next.cut = Some((*to).clone());
    next.logs.extend(logs);
    next.dead_letters.extend(dead);
    let applied = match store.commit_manifest(old.version, &next).await {
        Ok(a) => a,
        // Unknown outcome (a timeout): the files stay; if the commit did land they are
        // named, if not a later round removes them as debris.
        Err(e) => return Err(e),
    };
    if !applied {
        let e = EngineError::Cassandra {
            context: "tiering commit".into(),
            reason: format!(
                "another node committed manifest version {} first; this round's files are removed",
                next.version
            ),
        };
        return Err(abandon(&engine.cold, &written, e).await);
    }
    engine.tiers.publish(next.clone());
    tracing::info!(
        rows,
        files = written.len(),
        bytes,
        version = next.version,
        horizon = %micros_text(to.horizon_us),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "tiering round committed"
    );
    Ok(RoundReport {
        rows,
        files: written.len(),
        version: next.version,
        horizon_us: to.horizon_us,
        bytes,
    })
}

/// Scans the rows of `kind` covered by `to` and not by `from` and writes them, hour by
/// hour, as new cold files; returns them (also pushed to `written` as they land).
async fn write_moving(
    engine: &Engine,
    store: &CassandraStore,
    kind: TableKind,
    from: &Option<Arc<TierCut>>,
    to: &Arc<TierCut>,
    written: &mut Vec<ColdFile>,
) -> Result<Vec<ColdFile>, EngineError> {
    let (dir, time) = match kind {
        TableKind::Logs => ("logs", "timestamp"),
        TableKind::DeadLetters => ("dead_letters", "ingest_time"),
    };
    let filter = col(time).lt(lit(ScalarValue::TimestampMicrosecond(
        Some(to.horizon_us),
        None,
    )));
    let keep = Keep::Moving {
        from: from.clone(),
        to: Arc::clone(to),
    };
    // One output partition: buckets arrive in ascending order, so an hour is complete
    // once a row of a later hour shows up.
    let plan = store
        .cassandra_table(kind)
        .plan(None, &[filter], None, keep, 1)
        .await?;
    let mut stream = plan.execute(0, Arc::new(TaskContext::default()))?;
    let schema = kind.schema();
    let mut pending: BTreeMap<i64, (Vec<RecordBatch>, usize)> = BTreeMap::new();
    let mut files = Vec::new();
    let mut rows_seen = 0u64;
    let mut last_log = Instant::now();
    while let Some(batch) = stream.try_next().await? {
        rows_seen += batch.num_rows() as u64;
        for (hour, part) in split_by_hour(&batch)? {
            let slot = pending.entry(hour).or_default();
            slot.1 += part.num_rows();
            slot.0.push(part);
        }
        let newest = pending.keys().next_back().copied().unwrap_or(i64::MIN);
        let due: Vec<i64> = pending
            .iter()
            .filter(|(h, (_, n))| **h < newest || *n >= MAX_FILE_ROWS)
            .map(|(h, _)| *h)
            .collect();
        for hour in due {
            if let Some((batches, _)) = pending.remove(&hour) {
                let file = write_hour(engine, store, kind, dir, &schema, hour, &batches).await?;
                written.push(file.clone());
                files.push(file);
            }
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                table = dir,
                rows = rows_seen,
                files = files.len(),
                "tiering: moving"
            );
            last_log = Instant::now();
        }
    }
    for (hour, (batches, _)) in std::mem::take(&mut pending) {
        let file = write_hour(engine, store, kind, dir, &schema, hour, &batches).await?;
        written.push(file.clone());
        files.push(file);
    }
    Ok(files)
}

async fn write_hour(
    engine: &Engine,
    store: &CassandraStore,
    kind: TableKind,
    dir: &str,
    schema: &arrow::datatypes::SchemaRef,
    hour: i64,
    batches: &[RecordBatch],
) -> Result<ColdFile, EngineError> {
    let batch = concat_batches(schema, batches)?;
    let (sorted, with_hour) = match kind {
        TableKind::Logs => (sort_by(&batch, &[3, 0])?, true),
        TableKind::DeadLetters => (sort_by(&batch, &[0])?, false),
    };
    let path = format!(
        "{dir}/{}/{}.parquet",
        partition_dir(hour * HOUR_US, with_hour),
        uuid::Uuid::new_v4()
    );
    let file = engine.cold.write(&path, &sorted, 0).await?;
    tracing::debug!(file = %file.path, rows = file.rows, "tiering: wrote cold file");
    // A long round renews its lease after every file; losing it ends the round (the other
    // node's commit would win the compare-and-set anyway).
    if let Some(cluster) = engine.cluster() {
        let owner = &cluster.config().node_id;
        if let Lease::Held(other) = store.tiering_lease(owner, LEASE_SECS).await? {
            let e = EngineError::Cassandra {
                context: "tiering".into(),
                reason: format!("lost the tiering lease to node {other:?} mid-round"),
            };
            return Err(e);
        }
    }
    Ok(file)
}

/// Removes a failed round's files (best effort: leftovers are debris a later round removes).
async fn abandon(cold: &ColdStore, written: &[ColdFile], e: EngineError) -> EngineError {
    for f in written {
        if let Err(d) = cold
            .store()
            .delete(&ObjectPath::from(f.path.as_str()))
            .await
        {
            tracing::warn!(file = %f.path, error = %d, "could not remove an uncommitted cold file");
        }
    }
    e
}

/// Deletes files under the table prefixes that `manifest` does not name and that are older
/// than [`DEBRIS_AGE`]: leftovers of rounds that crashed or lost the commit.
async fn remove_debris(cold: &ColdStore, manifest: &Manifest) {
    let named: std::collections::HashSet<&str> = manifest
        .logs
        .iter()
        .chain(&manifest.dead_letters)
        .map(|f| f.path.as_str())
        // Replaced by a compaction, still read by older queries: `compaction::remove_retired`
        // deletes them after the grace period.
        .chain(manifest.retired.iter().map(|r| r.path.as_str()))
        .collect();
    let now = chrono::Utc::now();
    for prefix in ["logs", "dead_letters"] {
        let listing = cold
            .store()
            .list(Some(&ObjectPath::from(prefix)))
            .collect::<Vec<_>>();
        let listed = match tokio::time::timeout(cold.timeout(), listing).await {
            Ok(l) => l.into_iter().collect::<Result<Vec<_>, _>>(),
            Err(_) => {
                tracing::warn!(prefix, "listing the cold tier for debris timed out");
                return;
            }
        };
        let listed: Vec<_> = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "cannot list the cold tier for debris");
                return;
            }
        };
        for meta in listed {
            let old = (now - meta.last_modified).to_std().unwrap_or_default() >= DEBRIS_AGE;
            if old && !named.contains(meta.location.as_ref()) {
                tracing::info!(file = %meta.location, "removing a cold file no manifest names (a round that did not commit)");
                if let Err(e) = cold.store().delete(&meta.location).await {
                    tracing::warn!(file = %meta.location, error = %e, "could not remove debris");
                }
            }
        }
    }
}

/// Runs until the engine stops: keeps the local copy of the manifest within a second of
/// Cassandra's, and runs a round every `flush_interval` (when no other node holds the lease).
pub async fn run(engine: Weak<Engine>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last_round = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(e) = engine.upgrade() else { return };
        if e.stopped() {
            return;
        }
        if e.cluster().and_then(|c| c.store()).is_none() {
            continue;
        }
        if let Err(err) = refresh(&e).await {
            tracing::debug!(error = %err, "cannot refresh the cold manifest");
        }
        if last_round.elapsed() < e.config().flush_interval.max(backoff) {
            continue;
        }
        last_round = Instant::now();
        match round(&e, chrono::Utc::now().timestamp_micros(), false).await {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                let policy = &e.config().compaction.policy;
                let due = !crate::compaction::plan(&e.tiers.manifest(), policy).is_empty()
                    || !e.tiers.manifest().retired.is_empty();
                if due && !e.config().compaction.interval.is_zero() {
                    match compact(&e, false).await {
                        Ok(_) => {}
                        Err(EngineError::Cassandra { reason, .. })
                            if reason.contains("holds the tiering lease") => {}
                        Err(err) => {
                            e.metrics()
                                .compaction_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(error = %err, "cluster compaction failed; the committed files are untouched");
                        }
                    }
                }
            }
            Err(EngineError::Cassandra { reason, .. })
                if reason.contains("holds the tiering lease") => {}
            Err(err) => {
                tracing::error!(error = %err, retry_in_s = backoff.as_secs(), "tiering round failed; hot rows stay in Cassandra, retrying");
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

/// Brings the local copy of the manifest up to Cassandra's (it only moves forward).
pub async fn refresh(engine: &Engine) -> Result<(), EngineError> {
    let Some(cluster) = engine.cluster() else {
        return Ok(());
    };
    let store = cluster.store().ok_or_else(|| EngineError::Cassandra {
        context: "reading the cold manifest".into(),
        reason: format!(
            "not connected yet: {}",
            cluster.ready().err().unwrap_or_default()
        ),
    })?;
    let m = store.read_manifest().await?;
    if m.version > engine.tiers.manifest().version {
        engine.tiers.publish(m);
    }
    cluster.set_catalog_loaded();
    Ok(())
}

fn micros_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| us.to_string())
}
