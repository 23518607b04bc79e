use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::concat_batches;
use arrow::datatypes::TimestampMicrosecondType;

use super::*;
use crate::model::{UTC, logs_schema};

const MIB: u64 = 1024 * 1024;
const HOUR_US: i64 = 3_600_000_000;

fn file(path: &str, bytes: u64, rows: u64) -> ColdFile {
    ColdFile {
        path: path.into(),
        min_ts: 0,
        max_ts: 0,
        rows,
        bytes,
        columns: Vec::new(),
    }
}

fn policy() -> CompactionPolicy {
    CompactionPolicy {
        min_files: 3,
        max_files: 5,
        target_bytes: 100 * MIB,
        max_rows: 1_000_000,
    }
}

#[test]
fn plan_groups_small_files_per_directory() {
    let h13 = "logs/date=2026-11-24/hour=13";
    let h14 = "logs/date=2026-11-24/hour=14";
    let mut m = Manifest::default();
    for i in 0..4 {
        m.logs.push(file(&format!("{h13}/s{i}.parquet"), MIB, 1000));
    }
    // Big already: never merged again.
    m.logs
        .push(file(&format!("{h13}/big.parquet"), 60 * MIB, 1000));
    m.logs
        .push(file(&format!("{h13}/many-rows.parquet"), MIB, 600_000));
    // Two small files in another hour: fewer than min_files.
    for i in 0..2 {
        m.logs.push(file(&format!("{h14}/s{i}.parquet"), MIB, 1000));
    }
    for i in 0..3 {
        m.dead_letters.push(file(
            &format!("dead_letters/date=2026-11-24/d{i}.parquet"),
            1000,
            1,
        ));
    }
    let groups = plan(&m, &policy());
    assert_eq!(groups.len(), 2, "{groups:#?}");
    assert_eq!(groups[0].table, TableKind::Logs);
    assert_eq!(groups[0].dir, h13);
    let paths: Vec<&str> = groups[0].files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths.len(), 4);
    assert!(paths.iter().all(|p| p.contains("/s")), "{paths:?}");
    assert_eq!(groups[0].rows(), 4000);
    assert_eq!(groups[0].bytes(), 4 * MIB);
    assert_eq!(groups[1].table, TableKind::DeadLetters);
    assert_eq!(groups[1].dir, "dead_letters/date=2026-11-24");
    assert_eq!(groups[1].files.len(), 3);

    // Nothing to do once merged.
    let mut merged = m.clone();
    for g in &groups {
        let out = file(&format!("{}/merged.parquet", g.dir), g.bytes(), g.rows());
        merged = apply(&merged, g, out, 1).unwrap();
    }
    assert!(plan(&merged, &policy()).is_empty());
}

#[test]
fn plan_respects_the_caps() {
    let dir = "logs/date=2026-11-24/hour=13";
    let mut m = Manifest::default();
    // 12 files of 20 MiB: 100 MiB caps a group at 5 files (and max_files too).
    for i in 0..12 {
        m.logs
            .push(file(&format!("{dir}/f{i:02}.parquet"), 20 * MIB, 10));
    }
    let groups = plan(&m, &policy());
    let sizes: Vec<usize> = groups.iter().map(|g| g.files.len()).collect();
    // 5 + 5, and the last 2 are fewer than min_files.
    assert_eq!(sizes, vec![5, 5]);
    for g in &groups {
        assert!(g.bytes() <= 100 * MIB);
    }
    // The row cap too: 300k rows a file, at most 1M rows a group → 3 files.
    let mut m = Manifest::default();
    for i in 0..7 {
        m.logs
            .push(file(&format!("{dir}/r{i}.parquet"), MIB, 300_000));
    }
    let sizes: Vec<usize> = plan(&m, &policy()).iter().map(|g| g.files.len()).collect();
    assert_eq!(sizes, vec![3, 3]);
    // Every file appears in at most one group.
    let mut seen = HashSet::new();
    for g in plan(&m, &policy()) {
        for f in g.files {
            assert!(seen.insert(f.path));
        }
    }
}

#[test]
fn apply_replaces_the_group_and_retires_its_files() {
    let dir = "logs/date=2026-11-24/hour=13";
    let mut m = Manifest {
        version: 7,
        flushed_seq: 42,
        ..Manifest::default()
    };
    for i in 0..4 {
        m.logs.push(file(&format!("{dir}/s{i}.parquet"), MIB, 10));
    }
    m.logs
        .push(file("logs/date=2026-11-24/hour=14/x.parquet", MIB, 10));
    m.dead_letters
        .push(file("dead_letters/date=2026-11-24/d.parquet", 1, 1));
    let group = CompactionGroup {
        table: TableKind::Logs,
        dir: dir.into(),
        files: m.logs[1..4].to_vec(),
    };
    let merged = file(&format!("{dir}/new.parquet"), 3 * MIB, 30);
    let next = apply(&m, &group, merged.clone(), 1_000).unwrap();
    assert_eq!(next.version, 8);
    assert_eq!(next.flushed_seq, 42, "the horizon is untouched");
    let paths: Vec<&str> = next.logs.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "logs/date=2026-11-24/hour=13/s0.parquet",
            "logs/date=2026-11-24/hour=13/new.parquet",
            "logs/date=2026-11-24/hour=14/x.parquet",
        ]
    );
    assert_eq!(next.dead_letters, m.dead_letters);
    assert_eq!(
        next.retired,
        (1..4)
            .map(|i| RetiredFile {
                path: format!("{dir}/s{i}.parquet"),
                retired_at_us: 1_000,
            })
            .collect::<Vec<_>>()
    );
    // Rows are conserved.
    let rows = |m: &Manifest| m.logs.iter().map(|f| f.rows).sum::<u64>();
    assert_eq!(rows(&next), rows(&m));
    // The same group again: its files are gone, nothing may be committed.
    assert!(apply(&next, &group, file(&format!("{dir}/n2.parquet"), 1, 30), 2).is_none());
    // A name already in the manifest is never reused.
    let other = CompactionGroup {
        table: TableKind::Logs,
        dir: dir.into(),
        files: vec![next.logs[0].clone()],
    };
    assert!(apply(&next, &other, merged, 3).is_none());
    // Serialized: old manifests without `retired` still load, and an empty list is omitted.
    let json = serde_json::to_string(&m).unwrap();
    assert!(!json.contains("retired"));
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    let json = serde_json::to_string(&next).unwrap();
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), next);
}

/// A logs batch of `(timestamp, source, message)` rows, sorted as a flush sorts them.
fn logs_batch(rows: &[(i64, &str, String)]) -> RecordBatch {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
    let n = rows.len();
    let t = TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .with_timezone(UTC);
    let s = |f: &dyn Fn(&(i64, &str, String)) -> String| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
            as arrow::array::ArrayRef
    };
    RecordBatch::try_new(
        logs_schema(),
        vec![
            Arc::new(t.clone()),
            s(&|_| "INFO".into()),
            s(&|r| r.2.clone()),
            s(&|r| r.1.to_string()),
            s(&|_| "logs".into()),
            s(&|_| "{}".into()),
            Arc::new(TimestampMicrosecondArray::from(vec![7i64; n]).with_timezone(UTC)),
        ],
    )
    .unwrap()
}

/// Reads a cold file back.
fn read(root: &std::path::Path, path: &str) -> RecordBatch {
    let f = std::fs::File::open(root.join(path)).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    concat_batches(&logs_schema(), &batches).unwrap()
}

fn rows_of(b: &RecordBatch) -> Vec<(String, i64, String)> {
    let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
    let msg = b.column(2).as_string::<i32>();
    let src = b.column(3).as_string::<i32>();
    (0..b.num_rows())
        .map(|i| {
            (
                src.value(i).to_string(),
                t.value(i),
                msg.value(i).to_string(),
            )
        })
        .collect()
}

async fn small_files(cold: &ColdStore, dir: &str, n: usize, per: usize) -> CompactionGroup {
    let base = 1_795_000_000 * 1_000_000i64 / HOUR_US * HOUR_US;
    let mut files = Vec::new();
    for f in 0..n {
        // Overlapping sources and times in every file.
        let rows: Vec<(i64, &str, String)> = (0..per)
            .map(|i| {
                let src = ["web-1", "db", "api", "web-2"][(i * 7 + f) % 4];
                (
                    base + ((i * 13 + f * 5) % 1000) as i64 * 1_000_000,
                    src,
                    format!("f{f}-r{i}"),
                )
            })
            .collect();
        let batch = logs_batch(&rows);
        let path = format!("{dir}/{}.parquet", uuid::Uuid::new_v4());
        files.push(cold.write(&path, &batch, 0).await.unwrap());
    }
    CompactionGroup {
        table: TableKind::Logs,
        dir: dir.into(),
        files,
    }
}

#[tokio::test]
async fn merge_writes_one_sorted_file_with_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let cold = ColdStore::local(tmp.path()).unwrap();
    let dir = "logs/date=2026-11-18/hour=07";
    let group = small_files(&cold, dir, 6, 500).await;
    let merged = merge(&cold, &group).await.unwrap();
    assert!(
        merged.path.starts_with(&format!("{dir}/")),
        "{}",
        merged.path
    );
    assert!(group.files.iter().all(|f| f.path != merged.path));
    assert_eq!(merged.rows, 3000);
    assert_eq!(
        merged.min_ts,
        group.files.iter().map(|f| f.min_ts).min().unwrap()
    );
    assert_eq!(
        merged.max_ts,
        group.files.iter().map(|f| f.max_ts).max().unwrap()
    );
    let out = read(tmp.path(), &merged.path);
    assert_eq!(out.schema(), logs_schema());
    let got = rows_of(&out);
    let keys: Vec<(&str, i64)> = got.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "sorted by (source, timestamp)"
    );
    let mut want = Vec::new();
    for f in &group.files {
        want.extend(rows_of(&read(tmp.path(), &f.path)));
    }
    let (mut got, mut want) = (got, want);
    got.sort();
    want.sort();
    assert_eq!(got, want, "the same rows, each once");
    let on_disk = std::fs::metadata(tmp.path().join(&merged.path)).unwrap();
    assert_eq!(on_disk.len(), merged.bytes);
    // The inputs are untouched: they are deleted only after the grace period.
    for f in &group.files {
        assert!(tmp.path().join(&f.path).exists());
    }
}

#[tokio::test]
async fn merge_streams_the_sorted_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let cold = ColdStore::local(tmp.path()).unwrap();
    let group = small_files(&cold, "logs/date=2026-11-18/hour=08", 4, 50).await;
    let plan = merge_frame(&cold, &group)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    assert!(shown.contains("SortPreservingMergeExec"), "{shown}");
    assert!(
        !shown.contains("SortExec"),
        "no full sort: the files are merged as they are sorted\n{shown}"
    );
}

#[tokio::test]
async fn remove_retired_deletes_only_files_past_their_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let cold = ColdStore::local(tmp.path()).unwrap();
    let dir = "logs/date=2026-11-18/hour=09";
    let group = small_files(&cold, dir, 4, 10).await;
    let merged = merge(&cold, &group).await.unwrap();
    let mut m = Manifest::default();
    m.logs.extend(group.files.clone());
    let m = apply(&m, &group, merged.clone(), 1_000_000).unwrap();
    // A restart meanwhile: retired files are not debris.
    assert_eq!(cold.remove_orphans(&m).await.unwrap(), 0);
    let grace = Duration::from_secs(10);
    let none = HashSet::new();
    assert!(
        remove_retired(&cold, &m, grace, 5_000_000, &none)
            .await
            .unwrap()
            .is_none(),
        "within the grace period nothing is deleted"
    );
    // One file is held (a pending backfill names it).
    let held: HashSet<String> = [group.files[0].path.clone()].into();
    let (next, removed) = remove_retired(&cold, &m, grace, 11_000_000, &held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed, 3);
    assert_eq!(next.version, m.version + 1);
    assert_eq!(next.retired.len(), 1);
    assert_eq!(next.retired[0].path, group.files[0].path);
    assert_eq!(next.logs, m.logs);
    assert!(tmp.path().join(&group.files[0].path).exists());
    for f in &group.files[1..] {
        assert!(!tmp.path().join(&f.path).exists());
    }
    // Deleted before a crash that lost the commit: deleting again is fine.
    let (again, removed) = remove_retired(&cold, &m, grace, 11_000_000, &none)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed, 4);
    assert!(again.retired.is_empty());
    assert!(tmp.path().join(&merged.path).exists());
    assert_eq!(cold.remove_orphans(&again).await.unwrap(), 0);
}

#[test]
fn due_retired_honours_grace_and_holds() {
    let m = Manifest {
        retired: vec![
            RetiredFile {
                path: "a".into(),
                retired_at_us: 0,
            },
            RetiredFile {
                path: "b".into(),
                retired_at_us: 10_000_000,
            },
        ],
        ..Manifest::default()
    };
    let none = HashSet::new();
    let grace = Duration::from_secs(5);
    assert_eq!(
        due_retired(&m, grace, 4_999_999, &none),
        Vec::<String>::new()
    );
    assert_eq!(due_retired(&m, grace, 5_000_000, &none), vec!["a"]);
    assert_eq!(due_retired(&m, grace, 20_000_000, &none), vec!["a", "b"]);
    let held: HashSet<String> = ["a".to_string()].into();
    assert_eq!(due_retired(&m, grace, 20_000_000, &held), vec!["b"]);
    let w = without_retired(&m, &["a".into()]);
    assert_eq!(w.retired.len(), 1);
    assert_eq!(w.version, 1);
}

async fn query_i64(engine: &Engine, sql: &str) -> i64 {
    let batches: Vec<RecordBatch> = engine
        .session_context()
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

fn ndjson(round: usize, n: usize) -> bytes::Bytes {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"ts\":\"2026-11-24T13:{:02}:{:02}Z\",\"message\":\"r{round}-{i}\",\"host\":\"web-{}\"}}\n",
            (i * 7 + round) % 60,
            i % 60,
            (i + round) % 3
        ));
    }
    // And a dead letter per round.
    s.push_str("not json\n");
    bytes::Bytes::from(s)
}

const CHECKS: [&str; 5] = [
    "SELECT count(*) FROM logs",
    "SELECT count(*) FROM dead_letters",
    "SELECT count(DISTINCT message) FROM logs",
    "SELECT sum(length(message) * (ascii(source) + 1)) FROM logs",
    "SELECT count(*) FROM logs WHERE source = 'web-1'",
];

async fn checks(e: &Engine) -> Vec<i64> {
    let mut out = Vec::new();
    for q in CHECKS {
        out.push(query_i64(e, q).await);
    }
    out
}

#[tokio::test]
async fn embedded_round_merges_an_hour_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::EngineConfig::new(dir.path());
    cfg.compaction.interval = Duration::ZERO;
    cfg.compaction.retired_grace = Duration::from_secs(3600);
    let opts = crate::ingest::DecodeOptions::default;
    let e = Engine::open(cfg.clone()).await.unwrap();
    for round in 0..6 {
        e.ingest(ndjson(round, 200), None, opts()).await.unwrap();
        e.flush().await.unwrap();
    }
    let before = checks(&e).await;
    assert_eq!(before[0], 1200);
    assert_eq!(before[1], 6);
    assert_eq!(e.cold_stats().log_files, 6);
    assert_eq!(e.cold_stats().dead_letter_files, 6);
    let report = e.compact().await.unwrap();
    assert_eq!(report.groups, 2, "{report:?}");
    assert_eq!(report.files_before, 12);
    assert_eq!(report.files_after, 2);
    assert_eq!(report.files_merged, 12);
    assert_eq!(checks(&e).await, before);
    let stats = e.cold_stats();
    assert_eq!((stats.log_files, stats.dead_letter_files), (1, 1));
    assert_eq!(stats.retired_files, 12);
    let m = e.metrics();
    assert_eq!(m.compactions.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(
        m.compacted_files.load(std::sync::atomic::Ordering::Relaxed),
        12
    );
    // Nothing left to do.
    assert_eq!(e.compact().await.unwrap().groups, 0);
    e.shutdown().await;
    drop(e);

    // A restart: retired files are still there (named in `retired`), nothing doubled.
    let e = Engine::open(cfg.clone()).await.unwrap();
    assert_eq!(checks(&e).await, before);
    assert_eq!(e.cold_stats().retired_files, 12);
    let parquet = || {
        fn walk(p: &std::path::Path, n: &mut usize) {
            for entry in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, n);
                } else if path.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&dir.path().join("cold"), &mut n);
        n
    };
    assert_eq!(parquet(), 14);
    e.shutdown().await;
    drop(e);

    // With the grace over, the next round deletes them.
    cfg.compaction.retired_grace = Duration::ZERO;
    let e = Engine::open(cfg).await.unwrap();
    let report = e.compact().await.unwrap();
    assert_eq!(report.retired_removed, 12);
    assert_eq!(e.cold_stats().retired_files, 0);
    assert_eq!(parquet(), 2);
    assert_eq!(checks(&e).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flusher_compacts_in_the_background_and_deletes_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::EngineConfig::new(dir.path());
    cfg.compaction.interval = Duration::from_secs(1);
    cfg.compaction.retired_grace = Duration::from_secs(1);
    let e = Engine::open(cfg).await.unwrap();
    for round in 0..5 {
        e.ingest(
            ndjson(round, 100),
            None,
            crate::ingest::DecodeOptions::default(),
        )
        .await
        .unwrap();
        e.flush().await.unwrap();
    }
    let before = checks(&e).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = e.cold_stats();
        if (s.log_files, s.dead_letter_files, s.retired_files) == (1, 1, 0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(checks(&e).await, before);
    let m = e.metrics();
    assert_eq!(
        m.retired_files_removed
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    e.shutdown().await;
}

/// Against a real HDFS (`LOGSPHERE_TEST_HDFS`, e.g. `hdfs://127.0.0.1:9000`, set by
/// `scripts/services`): the merged file is written by a multipart upload and read back.
#[tokio::test]
async fn merge_on_hdfs() {
    let url = std::env::var("LOGSPHERE_TEST_HDFS").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_TEST_HDFS is not set: start the test services (scripts/services) \
             and source target/services/env"
        )
    });
    let root = format!(
        "{}/logsphere-unit/compaction-{}",
        url.trim_end_matches('/'),
        uuid::Uuid::new_v4()
    );
    let cold = ColdStore::open(&root, "test").unwrap();
    let dir = "logs/date=2026-11-18/hour=10";
    let group = small_files(&cold, dir, 4, 300).await;
    let merged = merge(&cold, &group).await.unwrap();
    assert_eq!(merged.rows, 1200);
    let mut m = Manifest::default();
    m.logs.extend(group.files.clone());
    let m = apply(&m, &group, merged.clone(), 0).unwrap();
    assert_eq!(cold.remove_orphans(&m).await.unwrap(), 0);
    let (m, removed) = remove_retired(&cold, &m, Duration::ZERO, 1, &HashSet::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed, 4);
    assert!(m.retired.is_empty());
    // Only the merged file is left, and it reads back through DataFusion.
    let table = crate::query::tables::TierTable::new(
        TableKind::Logs,
        crate::query::tables::TierScope::Cold,
        Arc::new(crate::hot::Tiers::new(m.clone())),
        cold.clone(),
    );
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", Arc::new(table)).unwrap();
    let n = ctx
        .sql("SELECT count(*) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(n, 1200);
    cold.delete(&[merged.path]).await.unwrap();
}
