//! Engine-level tests: ingest, restart, flush, pruning — without the server.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use bytes::Bytes;

use crate::ingest::DecodeOptions;
use crate::{Engine, EngineConfig};

async fn count(engine: &Engine, sql: &str) -> i64 {
    let batches: Vec<RecordBatch> = engine
        .session_context()
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

fn body(hour: u32, n: usize) -> Bytes {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"ts\":\"2026-11-24T{hour:02}:{:02}:00Z\",\"level\":\"error\",\"message\":\"m{i}\",\"host\":\"web-{}\"}}\n",
            i % 60,
            i % 3
        ));
    }
    Bytes::from(s)
}

#[tokio::test]
async fn ingest_restart_flush_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig::new(dir.path());
    {
        let e = Engine::open(cfg.clone()).await.unwrap();
        let o = e
            .ingest(body(10, 100), Some("k1".into()), DecodeOptions::default())
            .await
            .unwrap();
        assert_eq!((o.accepted, o.rejected, o.replayed), (100, 0, false));
        let again = e
            .ingest(body(10, 100), Some("k1".into()), DecodeOptions::default())
            .await
            .unwrap();
        assert!(again.replayed);
        e.ingest(
            Bytes::from_static(b"garbage\n"),
            None,
            DecodeOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(count(&e, "SELECT count(*) FROM logs").await, 100);
        assert_eq!(count(&e, "SELECT count(*) FROM dead_letters").await, 1);
        e.shutdown().await;
    }
    // Restart: the WAL brings everything back, including the idempotency key.
    let e = Engine::open(cfg.clone()).await.unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM logs").await, 100);
    let again = e
        .ingest(body(10, 100), Some("k1".into()), DecodeOptions::default())
        .await
        .unwrap();
    assert!(again.replayed, "idempotency keys survive a restart");
    e.ingest(body(11, 50), None, DecodeOptions::default())
        .await
        .unwrap();
    assert_eq!(e.flush().await.unwrap(), 151);
    assert_eq!(count(&e, "SELECT count(*) FROM logs").await, 150);
    assert_eq!(count(&e, "SELECT count(*) FROM logs_hot").await, 0);
    assert_eq!(count(&e, "SELECT count(*) FROM logs_cold").await, 150);
    assert_eq!(count(&e, "SELECT count(*) FROM dead_letters").await, 1);
    e.ingest(body(12, 10), None, DecodeOptions::default())
        .await
        .unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM logs").await, 160);
    let q = "SELECT count(*) FROM logs WHERE timestamp >= '2026-11-24T11:00:00Z' AND timestamp < '2026-11-24T12:00:00Z'";
    assert_eq!(count(&e, q).await, 50);
    let plan: Vec<RecordBatch> = e
        .session_context()
        .sql(&format!("EXPLAIN {q}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(text.contains("hour=11"), "{text}");
    assert!(
        !text.contains("hour=10"),
        "the 10:00 file is pruned: {text}"
    );
    e.shutdown().await;
    drop(e);
    let e = Engine::open(cfg).await.unwrap();
    assert_eq!(count(&e, "SELECT count(*) FROM logs").await, 160);
    assert_eq!(
        count(&e, "SELECT count(DISTINCT source) FROM logs").await,
        3
    );
}

#[tokio::test]
async fn flushed_segments_go_at_once_and_keys_outlive_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.wal_segment_bytes = 4096;
    let wal_files = || {
        std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".wal")
            })
            .count()
    };
    {
        let e = Engine::open(cfg.clone()).await.unwrap();
        for i in 0..10 {
            let key = format!("k{i}");
            e.ingest(body(10, 20), Some(key), DecodeOptions::default())
                .await
                .unwrap();
        }
        let before = wal_files();
        assert!(before > 5, "small segments roll over: {before}");
        // A reader holding the WAL from entry 4 keeps the segments from there on.
        e.hold_wal("cq:test", 4);
        e.flush().await.unwrap();
        let held = wal_files();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        names.sort();
        let first: u64 = names[0].trim_end_matches(".wal").parse().unwrap();
        assert!(
            held < before,
            "segments wholly before entry 4 are deleted: {before} → {held}"
        );
        assert!(first <= 4, "the segment holding entry 4 is kept: {names:?}");
        e.release_wal("cq:test");
        e.ingest(body(11, 1), None, DecodeOptions::default())
            .await
            .unwrap();
        e.flush().await.unwrap();
        assert!(
            wal_files() <= 2,
            "flushed segments are deleted without waiting: {}",
            wal_files()
        );
        e.shutdown().await;
    }
    // The WAL no longer holds the keyed entries; the key file still knows them.
    let e = Engine::open(cfg).await.unwrap();
    let again = e
        .ingest(body(10, 20), Some("k3".into()), DecodeOptions::default())
        .await
        .unwrap();
    assert!(
        again.replayed,
        "a retry after the segments were deleted is still recognised"
    );
    assert_eq!(count(&e, "SELECT count(*) FROM logs").await, 201);
}
