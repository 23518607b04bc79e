//! Compaction of the cold tier end to end: many flushes into one hour, `POST /v1/compact`,
//! answers unchanged, a reader mid-query unharmed, and SIGKILL between writing the merged
//! file and committing it.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use logsphere_tests::{Server, ServerOptions};

const ROUNDS: usize = 8;
const PER_ROUND: usize = 1500;

/// `PER_ROUND` records in 2026-11-24 13:00–14:00 over five sources, and one dead letter.
fn round_body(round: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..PER_ROUND {
        s.push_str(&format!(
            "{{\"ts\":\"2026-11-24T13:{:02}:{:02}.{:03}Z\",\"level\":\"info\",\"message\":\"round {round} record {i} {}\",\"host\":\"h{}\",\"rid\":\"{round}-{i}\"}}\n",
            (i * 7 + round) % 60,
            (i * 13) % 60,
            i % 1000,
            "x".repeat(i % 50),
            (i + round) % 5
        ));
    }
    s.push_str("not json\n");
    s.into_bytes()
}

fn count_parquet(dir: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// `POST /v1/compact`; the JSON answer.
pub(crate) fn compact(base: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{base}/v1/compact"))
        .send_empty()
        .unwrap_or_else(|e| panic!("POST /v1/compact: {e}"));
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(resp.status(), 200, "POST /v1/compact: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Everything compaction must not change: counts, per-source counts, a checksum.
#[derive(Debug, PartialEq)]
struct Answers {
    logs: i64,
    dead_letters: i64,
    per_source: Vec<(String, i64)>,
    checksum: i64,
    distinct_rids: i64,
    duplicated_rids: usize,
}

async fn answers(server: &Server) -> Answers {
    let client = server.pg_client().await;
    let one = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get::<_, i64>(0)
        }
    };
    let per_source = client
        .query(
            "SELECT source, count(*) FROM logs GROUP BY source ORDER BY source",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let duplicated_rids = client
        .query(
            "SELECT attr(attributes, 'rid'), count(*) FROM logs GROUP BY 1 HAVING count(*) > 1",
            &[],
        )
        .await
        .unwrap()
        .len();
    Answers {
        logs: one("SELECT count(*) FROM logs").await,
        dead_letters: one("SELECT count(*) FROM dead_letters").await,
        per_source,
        checksum: one(
            "SELECT sum(length(message) * (ascii(source) + 7) + extract(epoch FROM timestamp)::bigint % 1000003) FROM logs",
        )
        .await,
        distinct_rids: one("SELECT count(DISTINCT attr(attributes, 'rid')) FROM logs").await,
        duplicated_rids,
    }
}

fn fill(server: &Server, key_prefix: &str) {
    for round in 0..ROUNDS {
        let key = format!("{key_prefix}-{round}");
        let (status, text) = server.post(&round_body(round), Some(&key)).unwrap();
        assert_eq!(status, 200, "{text}");
        assert_eq!(server.flush() as usize, PER_ROUND + 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_merges_an_hour_and_changes_no_answer() {
    let server = Server::start_with_config(
        "[storage]\nflush_interval_secs = 3600\ncompact_interval_secs = 0\nretired_grace_secs = 8\n",
    );
    fill(&server, "c");
    let logs_dir = server.data_dir().join("cold").join("logs");
    assert_eq!(count_parquet(&logs_dir), ROUNDS, "one file per flush");
    let before = answers(&server).await;
    assert_eq!(before.logs as usize, ROUNDS * PER_ROUND);
    assert_eq!(before.dead_letters as usize, ROUNDS);
    assert_eq!(before.per_source.len(), 5);
    assert_eq!(before.distinct_rids as usize, ROUNDS * PER_ROUND);
    assert_eq!(before.duplicated_rids, 0);

    // A reader that planned its query before the compaction and reads slowly through it.
    let reader = server.pg_client().await;
    let sql = "SELECT message, repeat(attributes, 40) FROM logs";
    let params: [&str; 0] = [];
    let mut rows = Box::pin(reader.query_raw(sql, params).await.unwrap());
    let mut read = 0usize;
    while read < 500 {
        rows.next().await.unwrap().unwrap();
        read += 1;
    }

    let base = server.http_url();
    let report = tokio::task::spawn_blocking(move || compact(&base))
        .await
        .unwrap();
    assert_eq!(
        report["groups"], 2,
        "logs' hour and dead letters' day: {report}"
    );
    assert_eq!(report["files_before"].as_u64(), Some(2 * ROUNDS as u64));
    assert_eq!(report["files_after"], 2, "{report}");
    assert!(
        server.log().contains("compaction: merged files into one"),
        "a log line per group:\n{}",
        server.log()
    );

    // The reader finishes: every row, each once.
    let started = Instant::now();
    while let Some(row) = rows.next().await {
        row.unwrap();
        read += 1;
    }
    assert_eq!(read, ROUNDS * PER_ROUND, "the reader saw every row");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the reader outlived the grace period; the test proves nothing"
    );
    drop(rows);

    // New queries read the merged file: the same answers.
    assert_eq!(answers(&server).await, before);
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs_cold WHERE source = 'h3'")
            .await,
        before.per_source[3].1
    );
    // The replaced files stay for the grace period, then go.
    assert_eq!(count_parquet(&logs_dir), ROUNDS + 1);
    let metrics = ureq::get(&format!("{}/metrics", server.http_url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for line in [
        "logsphere_compactions_total 2",
        &format!("logsphere_compacted_files_total {}", 2 * ROUNDS),
        "logsphere_cold_files 1",
        &format!("logsphere_cold_retired_files {}", 2 * ROUNDS),
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_parquet(&logs_dir) > 1 {
        assert!(
            Instant::now() < deadline,
            "retired files are deleted after the grace period:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answers(&server).await, before);
    let base = server.http_url();
    let again = tokio::task::spawn_blocking(move || compact(&base))
        .await
        .unwrap();
    assert_eq!(again["groups"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_inside_a_compaction_loses_and_doubles_nothing() {
    let mut server = Server::start_with(ServerOptions {
        config: Some("[storage]\nflush_interval_secs = 3600\ncompact_interval_secs = 0\n".into()),
        env: vec![("LOGSPHERE_FAULT_COMPACT_PAUSE_MS".into(), "2000".into())],
    });
    fill(&server, "k");
    let logs_dir = server.data_dir().join("cold").join("logs");
    assert_eq!(count_parquet(&logs_dir), ROUNDS);
    let before = answers(&server).await;
    assert_eq!(before.logs as usize, ROUNDS * PER_ROUND);

    // The merged file is written, then the compaction pauses before its commit: kill.
    let base = server.http_url();
    let compactor = std::thread::spawn(move || {
        let _ = ureq::post(&format!("{base}/v1/compact")).send_empty();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_parquet(&logs_dir) <= ROUNDS {
        assert!(
            Instant::now() < deadline,
            "no merged file:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let _ = compactor.join();
    server.restart();
    assert!(
        server
            .log()
            .contains("removing a cold file no commit names"),
        "{}",
        server.log()
    );
    assert_eq!(
        count_parquet(&logs_dir),
        ROUNDS,
        "the uncommitted merged file is removed at start"
    );
    assert_eq!(answers(&server).await, before);
    // Retries of acknowledged requests are still recognised.
    let (status, _) = server.post(&round_body(0), Some("k-0")).unwrap();
    assert_eq!(status, 200);
    assert_eq!(answers(&server).await, before);

    // Now it completes; killed after the commit, the retired files are no debris.
    let base = server.http_url();
    let report = tokio::task::spawn_blocking(move || compact(&base))
        .await
        .unwrap();
    assert_eq!(report["files_after"], 2, "{report}");
    assert_eq!(answers(&server).await, before);
    server.restart();
    assert!(
        !server.log().contains("removing a cold file"),
        "retired files are kept through a restart:\n{}",
        server.log()
    );
    assert_eq!(count_parquet(&logs_dir), ROUNDS + 1);
    assert_eq!(answers(&server).await, before);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs_hot").await,
        0,
        "nothing came back from the WAL"
    );
}
