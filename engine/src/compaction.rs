//! Compaction of the cold tier: the small files of one partition directory become one.
//!
//! Every flush writes one file per hour it touches, so an hour collects a dozen small
//! files or more. A compaction round merges them, in the same atomic way a flush commits:
//!
//! 1. [`plan`] (pure) picks, per table and partition directory, groups of small files;
//! 2. [`merge`] streams a group's files (each already sorted) through a k-way merge into
//!    ONE new file under a new unique name in the same directory;
//! 3. [`apply`] (pure) replaces the group's files by the new one in the manifest and moves
//!    them to `retired`; the caller commits that manifest (embedded: `catalog.json`;
//!    cluster: the Cassandra LWT);
//! 4. [`remove_retired`] deletes retired files whose grace period has passed (a query
//!    planned before the commit may still read them) and returns the manifest without them,
//!    for the caller to commit.
//!
//! Steps 1–4 know nothing about how a manifest is committed; [`run_round`] and [`tick`] are
//! the embedded glue (commit = `LocalCatalog::commit` + `Tiers::publish` under the engine's
//! flush lock). See "Compaction" in `tiering.md` for the crash table.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::SortExpr;
use datafusion::prelude::{SessionConfig, SessionContext, ident};
use serde::Serialize;

use crate::catalog::{ColdFile, Manifest, RetiredFile};
use crate::cold::ColdStore;
use crate::query::tables::TableKind;
use crate::{Engine, EngineError};

/// Memory a merge may use before its sort spills to disk (a k-way merge of sorted files
/// needs a few batches per input; this only matters if DataFusion has to sort).
const MERGE_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Which files a round may merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// A partition directory is compacted only when at least this many small files can be
    /// merged into one.
    pub min_files: usize,
    /// At most this many files go into one merge (the merge's fan-in).
    pub max_files: usize,
    /// A merged file holds at most about this many bytes; a file of half of it or more is
    /// big already and never merged again.
    pub target_bytes: u64,
    /// A merged file holds at most this many rows (bounds a merge's work); a file of half
    /// of it or more is never merged again.
    pub max_rows: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            min_files: 4,
            max_files: 64,
            target_bytes: 256 * 1024 * 1024,
            max_rows: 16 * 1024 * 1024,
        }
    }
}

impl CompactionPolicy {
    /// A file this policy would still merge.
    pub fn is_small(&self, f: &ColdFile) -> bool {
        f.bytes < self.target_bytes / 2 && f.rows < self.max_rows / 2
    }
}

/// When the embedded engine compacts, and how long retired files are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Which files are merged.
    pub policy: CompactionPolicy,
    /// The flusher looks for compaction work this often; zero: only `POST /v1/compact`.
    pub interval: Duration,
    /// Retired files are deleted this long after the compaction that replaced them.
    pub retired_grace: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            policy: CompactionPolicy::default(),
            interval: Duration::from_secs(60),
            retired_grace: Duration::from_secs(300),
        }
    }
}

/// Small files of one table and one partition directory, to become one file.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionGroup {
    /// The table the files belong to.
    pub table: TableKind,
    /// Their directory below the cold root, e.g. `logs/date=2026-11-24/hour=13`.
    pub dir: String,
    /// The files, as the manifest names them.
    pub files: Vec<ColdFile>,
}

impl CompactionGroup {
    /// Rows in the group's files.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Bytes in the group's files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// The files of `table` in `manifest`.
fn files_of(manifest: &Manifest, table: TableKind) -> &Vec<ColdFile> {
    match table {
        TableKind::Logs => &manifest.logs,
        TableKind::DeadLetters => &manifest.dead_letters,
    }
}

fn files_of_mut(manifest: &mut Manifest, table: TableKind) -> &mut Vec<ColdFile> {
    match table {
        TableKind::Logs => &mut manifest.logs,
        TableKind::DeadLetters => &mut manifest.dead_letters,
    }
}

/// The columns a table's files are sorted by (what a flush writes).
fn sort_columns(table: TableKind) -> &'static [&'static str] {
    match table {
        TableKind::Logs => &["source", "timestamp"],
        TableKind::DeadLetters => &["ingest_time"],
    }
}

/// The column whose range the catalog records.
fn time_column(table: TableKind) -> usize {
    match table {
        // `timestamp` and `ingest_time` are both the first column.
        TableKind::Logs | TableKind::DeadLetters => 0,
    }
}

/// The directory part of a cold path (`logs/date=…/hour=…`).
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The groups worth merging in `manifest`, per table and partition directory.
///
/// Small files (see [`CompactionPolicy::is_small`]) of one directory are taken smallest
/// first and packed into groups of at most `max_files` files, `target_bytes` bytes and
/// `max_rows` rows; a group of fewer than `min_files` files is left alone. Smallest first
/// merges fresh flush files together before it rewrites an earlier merge's bigger output.
pub fn plan(manifest: &Manifest, policy: &CompactionPolicy) -> Vec<CompactionGroup> {
    let min_files = policy.min_files.max(2);
    let max_files = policy.max_files.max(min_files);
    let mut groups = Vec::new();
    for table in [TableKind::Logs, TableKind::DeadLetters] {
        let mut dirs: BTreeMap<&str, Vec<&ColdFile>> = BTreeMap::new();
        for f in files_of(manifest, table) {
            if policy.is_small(f) {
                dirs.entry(dir_of(&f.path)).or_default().push(f);
            }
        }
        for (dir, mut files) in dirs {
            if files.len() < min_files {
                continue;
            }
            files.sort_by(|a, b| a.bytes.cmp(&b.bytes).then_with(|| a.path.cmp(&b.path)));
            let mut current: Vec<ColdFile> = Vec::new();
            let (mut bytes, mut rows) = (0u64, 0u64);
            for f in files {
                let full = current.len() >= max_files
                    || bytes.saturating_add(f.bytes) > policy.target_bytes
                    || rows.saturating_add(f.rows) > policy.max_rows;
                if full && !current.is_empty() {
                    if current.len() >= min_files {
                        groups.push(CompactionGroup {
                            table,
                            dir: dir.to_string(),
                            files: std::mem::take(&mut current),
                        });
                    }
                    current.clear();
                    (bytes, rows) = (0, 0);
                }
                bytes = bytes.saturating_add(f.bytes);
                rows = rows.saturating_add(f.rows);
                current.push(f.clone());
            }
            if current.len() >= min_files {
                groups.push(CompactionGroup {
                    table,
                    dir: dir.to_string(),
                    files: current,
                });
            }
        }
    }
    groups
}

/// Reads `group`'s files and writes them as ONE new file (a new unique name in the same
/// directory), rows sorted as a flush sorts them, with the cold tier's writer properties.
///
/// The inputs are each sorted already, so this is a streaming k-way merge (DataFusion's
/// `SortPreservingMergeExec`, one input partition per file); memory stays bounded, and
/// should DataFusion sort instead, it spills past `MERGE_MEMORY_BYTES`. The new file is
/// not named by any manifest yet: a crash before the commit leaves debris start-up removes.
pub async fn merge(cold: &ColdStore, group: &CompactionGroup) -> Result<ColdFile, EngineError> {
    use futures::StreamExt;
    let stream = merge_frame(cold, group).await?.execute_stream().await?;
    let path = format!("{}/{}.parquet", group.dir, uuid::Uuid::new_v4());
    // The merged file keeps every promoted column of its inputs, recomputed from
    // `attributes` with the join of their types (the inputs are read as the fixed schema).
    let columns = match group.table {
        TableKind::Logs => {
            crate::fields::union_columns(group.files.iter().map(|f| f.columns.as_slice()))
        }
        TableKind::DeadLetters => Vec::new(),
    };
    let schema = match columns.is_empty() {
        true => stream.schema(),
        false => crate::fields::file_schema(&columns),
    };
    let shredded = {
        let columns = columns.clone();
        stream
            .map(move |b| -> Result<_, EngineError> { crate::fields::with_columns(&b?, &columns) })
    };
    let mut file = cold
        .write_stream(&path, schema, Box::pin(shredded), time_column(group.table))
        .await?;
    file.columns = columns;
    if file.rows != group.rows() {
        let _ = cold.delete(std::slice::from_ref(&file.path)).await;
        return Err(EngineError::Cold {
            context: format!("compacting {}", group.dir),
            reason: format!(
                "the merged file has {} rows, its {} inputs {}; nothing was committed",
                file.rows,
                group.files.len(),
                group.rows()
            ),
        });
    }
    Ok(file)
}

/// The DataFusion plan of a merge: one input partition per file, declared sorted, and an
/// `ORDER BY` the optimizer turns into a `SortPreservingMergeExec` over them.
async fn merge_frame(
    cold: &ColdStore,
    group: &CompactionGroup,
) -> Result<datafusion::dataframe::DataFrame, EngineError> {
    let inputs = group.files.len().max(1);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(MERGE_MEMORY_BYTES)))
        .build_arc()?;
    cold.register(&runtime);
    let config = SessionConfig::new()
        .with_target_partitions(inputs)
        .with_repartition_file_scans(false)
        .with_collect_statistics(false);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let order: Vec<SortExpr> = sort_columns(group.table)
        .iter()
        .map(|c| ident(*c).sort(true, false))
        .collect();
    let urls = group
        .files
        .iter()
        .map(|f| cold.file_url(&f.path))
        .collect::<Result<Vec<_>, _>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_file_sort_order(vec![order.clone()]);
    let table = ListingTable::try_new(
        ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(group.table.schema()),
    )?;
    Ok(ctx.read_table(Arc::new(table))?.sort(order)?)
}

/// The manifest after `group` became `merged`: the group's files are replaced by it and
/// listed in `retired` (retired at `now_us`), and the version is bumped. `None` when the
/// manifest no longer names every file of the group (another compaction took them) or
/// already names `merged`: then nothing may be committed, and `merged` is debris.
pub fn apply(
    manifest: &Manifest,
    group: &CompactionGroup,
    merged: ColdFile,
    now_us: i64,
) -> Option<Manifest> {
    let live = files_of(manifest, group.table);
    let gone: HashSet<&str> = group.files.iter().map(|f| f.path.as_str()).collect();
    let present = live
        .iter()
        .filter(|f| gone.contains(f.path.as_str()))
        .count();
    let named = |p: &str| {
        manifest.logs.iter().any(|f| f.path == p)
            || manifest.dead_letters.iter().any(|f| f.path == p)
            || manifest.retired.iter().any(|r| r.path == p)
    };
    if present != gone.len() || gone.len() != group.files.len() || named(&merged.path) {
        return None;
    }
    let mut next = manifest.clone();
    let files = files_of_mut(&mut next, group.table);
    // The merged file takes the place of the group's first file, so the list keeps its
    // rough time order.
    let at = files
        .iter()
        .position(|f| gone.contains(f.path.as_str()))
        .unwrap_or(files.len());
    files.retain(|f| !gone.contains(f.path.as_str()));
    files.insert(at.min(files.len()), merged);
    next.retired.extend(group.files.iter().map(|f| RetiredFile {
        path: f.path.clone(),
        retired_at_us: now_us,
    }));
    next.version += 1;
    Some(next)
}

/// The retired files whose grace period has passed at `now_us`, except those in `held`
/// (e.g. named by a pending `START FROM` backfill plan).
pub fn due_retired(
    manifest: &Manifest,
    grace: Duration,
    now_us: i64,
    held: &HashSet<String>,
) -> Vec<String> {
    let grace_us = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
    manifest
        .retired
        .iter()
        .filter(|r| r.retired_at_us.saturating_add(grace_us) <= now_us)
        .filter(|r| !held.contains(&r.path))
        .map(|r| r.path.clone())
        .collect()
}

/// The manifest without the retired entries `removed`, version bumped.
pub fn without_retired(manifest: &Manifest, removed: &[String]) -> Manifest {
    let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();
    let mut next = manifest.clone();
    next.retired.retain(|r| !removed.contains(r.path.as_str()));
    next.version += 1;
    next
}

/// Deletes the retired files whose grace has passed (see [`due_retired`]) and returns the
/// manifest to commit without them; `None` when none is due. Files are deleted before the
/// commit: a crash in between leaves retired entries naming missing files, which the next
/// call deletes again (a missing file is not an error) and drops.
pub async fn remove_retired(
    cold: &ColdStore,
    manifest: &Manifest,
    grace: Duration,
    now_us: i64,
    held: &HashSet<String>,
) -> Result<Option<(Manifest, usize)>, EngineError> {
    let due = due_retired(manifest, grace, now_us, held);
    if due.is_empty() {
        return Ok(None);
    }
    cold.delete(&due).await?;
    Ok(Some((without_retired(manifest, &due), due.len())))
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What one compaction round did (the answer of `POST /v1/compact`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// Groups merged and committed.
    pub groups: usize,
    /// Live cold files (logs and dead letters) before and after the round.
    pub files_before: usize,
    pub files_after: usize,
    /// Files merged away.
    pub files_merged: usize,
    /// Rows and bytes written by the merges.
    pub rows: u64,
    pub bytes: u64,
    /// Retired files whose grace had passed, deleted.
    pub retired_removed: usize,
}

/// The embedded engine's compaction state: one round at a time, and when the last began.
#[derive(Debug)]
pub(crate) struct Scheduler {
    round: tokio::sync::Mutex<()>,
    last: std::sync::Mutex<Instant>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self {
            round: tokio::sync::Mutex::new(()),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }
}

/// Files a pending `START FROM` backfill will read: kept even when retired and due.
fn held_files(engine: &Engine) -> HashSet<String> {
    engine
        .continuous()
        .pending_backfills()
        .into_iter()
        .flat_map(|(_, _, plan)| plan.files.into_iter().map(|f| f.path))
        .collect()
}

fn live_files(m: &Manifest) -> usize {
    m.logs.len() + m.dead_letters.len()
}

/// Deletes the retired files whose grace has passed and commits the manifest without
/// them. Returns how many were deleted.
async fn remove_retired_committed(engine: &Engine) -> Result<usize, EngineError> {
    let held = held_files(engine);
    let grace = engine.config().compaction.retired_grace;
    let current = current_manifest(engine).await?;
    let due = due_retired(&current, grace, now_us(), &held);
    if due.is_empty() || engine.stopped() {
        return Ok(0);
    }
    // Files first: a crash before the commit leaves entries naming missing files, which the
    // next call deletes again (a missing file is not an error) and drops.
    engine.cold.delete(&due).await?;
    let removed = due.len();
    let committed = commit_change(engine, |m| Some(without_retired(m, &due))).await?;
    if !committed {
        return Ok(0);
    }
    engine
        .metrics()
        .retired_files_removed
        .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        files = removed,
        "compaction: deleted retired cold files past their grace period"
    );
    Ok(removed)
}

/// The committed manifest: the local one embedded, Cassandra's in cluster mode.
async fn current_manifest(engine: &Engine) -> Result<Arc<Manifest>, EngineError> {
    match engine.cluster().and_then(|c| c.store()) {
        Some(store) => Ok(Arc::new(store.load_manifest().await?)),
        None if engine.cluster().is_some() => Err(EngineError::Cassandra {
            context: "compaction".into(),
            reason: "Cassandra is not connected yet".into(),
        }),
        None => Ok(engine.tiers.manifest()),
    }
}

/// Commits `change` of the current manifest and publishes it. Embedded: under the flush
/// lock, replacing `catalog.json`. Cluster: a compare-and-set on the manifest's version in
/// Cassandra, re-read and retried when another node committed first. `Ok(false)` when
/// `change` refuses (returns `None`) the manifest it is given.
async fn commit_change(
    engine: &Engine,
    change: impl Fn(&Manifest) -> Option<Manifest>,
) -> Result<bool, EngineError> {
    if let Some(cluster) = engine.cluster() {
        let store = cluster.store().ok_or_else(|| EngineError::Cassandra {
            context: "compaction commit".into(),
            reason: "Cassandra is not connected yet".into(),
        })?;
        for _ in 0..10 {
            let current = store.load_manifest().await?;
            let Some(next) = change(&current) else {
                return Ok(false);
            };
            if store.commit_manifest(current.version, &next).await? {
                let _flush = engine.flush_lock.lock().await;
                if next.version > engine.tiers.manifest().version {
                    engine.tiers.publish(next);
                }
                return Ok(true);
            }
        }
        return Err(EngineError::Cassandra {
            context: "compaction commit".into(),
            reason: "other commits kept winning the race (10 attempts)".into(),
        });
    }
    let _flush = engine.flush_lock.lock().await;
    if engine.stopped() {
        return Err(EngineError::ShuttingDown);
    }
    let current = engine.tiers.manifest();
    let Some(next) = change(&current) else {
        return Ok(false);
    };
    engine.catalog.commit(&next)?;
    engine.tiers.publish(next);
    Ok(true)
}

/// Embedded: one compaction round now. Deletes the retired files that are due, then merges
/// every group [`plan`] finds, committing each group as soon as it is merged. In the
/// background (`background`), the round stops early when a flush is due, so merges never
/// hold back flushes for long; the rest waits for the next round.
pub(crate) async fn run_round(
    engine: &Engine,
    background: bool,
) -> Result<CompactionReport, EngineError> {
    let _round = engine.compaction.round.lock().await;
    let mut report = CompactionReport {
        retired_removed: remove_retired_committed(engine).await?,
        ..Default::default()
    };
    let policy = engine.config().compaction.policy.clone();
    let manifest = current_manifest(engine).await?;
    report.files_before = live_files(&manifest);
    let groups = plan(&manifest, &policy);
    let total = groups.len();
    for (i, group) in groups.into_iter().enumerate() {
        if engine.stopped() {
            break;
        }
        if background && engine.tiers.hot_stats().0 >= engine.config().flush_max_rows {
            tracing::info!(
                done = i,
                groups = total,
                "compaction: a flush is due; the other groups wait for the next round"
            );
            break;
        }
        let started = Instant::now();
        let merged = merge(&engine.cold, &group).await?;
        if let Some(pause) = engine.config().fault_compact_pause {
            tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                file = %merged.path,
                "fault injection: pausing before the compaction commit"
            );
            tokio::time::sleep(pause).await;
        }
        let committed = commit_group(engine, &group, &merged).await;
        match committed {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(dir = %group.dir, "compaction: the group's files changed meanwhile; dropping the merged file");
                let _ = engine.cold.delete(std::slice::from_ref(&merged.path)).await;
                continue;
            }
            Err(e) => {
                // Not committed: the merged file is debris (deleted now, or at start).
                let _ = engine.cold.delete(std::slice::from_ref(&merged.path)).await;
                return Err(e);
            }
        }
        let m = engine.metrics();
        m.compactions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        m.compacted_files.fetch_add(
            group.files.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        report.groups += 1;
        report.files_merged += group.files.len();
        report.rows += merged.rows;
        report.bytes += merged.bytes;
        tracing::info!(
            group = i + 1,
            groups = total,
            dir = %group.dir,
            files = group.files.len(),
            rows = merged.rows,
            bytes_in = group.bytes(),
            bytes_out = merged.bytes,
            file = %merged.path,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compaction: merged files into one"
        );
    }
    report.files_after = live_files(&*current_manifest(engine).await?);
    Ok(report)
}

/// Commits `group` → `merged` on the current manifest. `Ok(false)`: the manifest no
/// longer names the group's files.
async fn commit_group(
    engine: &Engine,
    group: &CompactionGroup,
    merged: &ColdFile,
) -> Result<bool, EngineError> {
    let now = now_us();
    commit_change(engine, |m| apply(m, group, merged.clone(), now)).await
}

/// The flusher's hook, after each check: deletes retired files that are due, and every
/// `compaction.interval` runs a round when the planner finds work. Errors are logged and
/// counted; the next interval tries again.
pub(crate) async fn tick(engine: &Engine) {
    if engine.cluster().is_some() || engine.stopped() {
        return;
    }
    let cfg = &engine.config().compaction;
    let manifest = engine.tiers.manifest();
    if !manifest.retired.is_empty()
        && !due_retired(&manifest, cfg.retired_grace, now_us(), &held_files(engine)).is_empty()
        && let Err(e) = remove_retired_committed(engine).await
    {
        tracing::error!(error = %e, "compaction: cannot delete retired cold files; retrying later");
    }
    if cfg.interval.is_zero() {
        return;
    }
    {
        let Ok(mut last) = engine.compaction.last.lock() else {
            return;
        };
        if last.elapsed() < cfg.interval {
            return;
        }
        *last = Instant::now();
    }
    if plan(&engine.tiers.manifest(), &cfg.policy).is_empty() {
        return;
    }
    if let Err(e) = run_round(engine, true).await {
        engine
            .metrics()
            .compaction_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(error = %e, retry_in_s = cfg.interval.as_secs(), "compaction failed; the committed files are untouched");
    }
}

#[cfg(test)]
mod tests;
