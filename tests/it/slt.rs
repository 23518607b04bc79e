//! sqllogictest files (`tests/slt/*.slt`) run over the PostgreSQL protocol against a real
//! server holding a fixed fixture: hours 10 and 11 of 2026-11-24 flushed to Parquet (cold),
//! hour 12 still in the hot buffer, plus a few malformed records in `dead_letters`.
//!
//! The same files run against a cluster-mode node too (`cluster::slt`); records marked
//! `onlyif cluster` / `skipif cluster` (or `embedded`) show where the modes differ.
//!
//! `EXPLAIN` results are reduced to the cold partitions (`date=…/hour=…`) the plan opens, so
//! a pruning test reads as the list of files a query touches.

use std::collections::BTreeSet;
use std::path::PathBuf;

use async_trait::async_trait;
use logsphere_tests::Server;
use sqllogictest::{DBOutput, DefaultColumnType};
use tokio_postgres::SimpleQueryMessage;

struct PgDb {
    client: tokio_postgres::Client,
}

#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

#[async_trait]
impl sqllogictest::AsyncDB for PgDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let messages = self.client.simple_query(sql).await.map_err(|e| {
            let detail = e
                .as_db_error()
                .map(|d| format!("{} ({})", d.message(), d.code().code()));
            DbError(detail.unwrap_or_else(|| e.to_string()))
        })?;
        let mut rows = Vec::new();
        let mut width = 0;
        for m in &messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => width = cols.len(),
                SimpleQueryMessage::Row(row) => {
                    width = row.len();
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect::<Vec<_>>(),
                    );
                }
                _ => {}
            }
        }
        if sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN") {
            let partitions: BTreeSet<String> = rows
                .iter()
                .flatten()
                .flat_map(|cell| cold_partitions(cell))
                .collect();
            return Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Text],
                rows: partitions.into_iter().map(|p| vec![p]).collect(),
            });
        }
        if width == 0 && rows.is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Every `date=YYYY-MM-DD/hour=HH` (or `dead_letters/date=…`) named in a plan text.
fn cold_partitions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("date=") {
        let tail = &rest[i..];
        let table = if rest[..i].ends_with("dead_letters/") {
            "dead_letters/"
        } else {
            "logs/"
        };
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "=-/".contains(c)))
            .unwrap_or(tail.len());
        let part = tail[..end].trim_end_matches('/');
        let part = part
            .rsplit_once('/')
            .filter(|(_, f)| !f.starts_with("hour="))
            .map(|(d, _)| d)
            .unwrap_or(part);
        out.push(format!("{table}{part}"));
        rest = &tail[end..];
    }
    out
}

/// `n` NDJSON records of hour `hour` of 2026-11-24, each naming its `topic`.
pub(crate) fn fixture(hour: u32, n: usize) -> String {
    let levels = ["info", "warn", "error", "fatal", "debug"];
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"ts\":\"2026-11-24T{hour:02}:{:02}:{:02}Z\",\"level\":\"{}\",\"message\":\"request {i} {}\",\"host\":\"web-{}\",\"topic\":\"logs.{}\",\"user\":\"u{}\"}}\n",
            i % 60,
            (i * 7) % 60,
            levels[i % levels.len()],
            if i % 10 == 0 { "timeout" } else { "ok" },
            i % 3,
            if i % 5 == 2 { "error" } else { "activity" },
            i % 4
        ));
    }
    s
}

async fn load_fixture(server: &Server) {
    server.post_expect(fixture(10, 100).as_bytes(), 100, 0);
    server.post_expect(fixture(11, 100).as_bytes(), 100, 0);
    server.post_expect(b"not json\n[1,2]\n{\"ts\":\"soon\"}\n", 0, 3);
    assert_eq!(server.flush(), 203);
    server.post_expect(fixture(12, 50).as_bytes(), 50, 0);
    server.post_expect(b"{\"message\":\"\xff\"}\n", 0, 1);
}

#[tokio::test]
async fn slt_files() {
    // §6's seed rule A has a KAFKA channel, which CREATE refuses without brokers. No
    // record reaches the CQs, so nothing is produced; nothing listens there either.
    // The files pin the catalog of the fixed columns, which cluster mode shares: promoted
    // fields (which would add the fixture's `user` to `logs`) are tested in fields.rs.
    let server = Server::start_with_config(
        "[notify]\nkafka_brokers = \"127.0.0.1:1\"\n[fields]\npromote = false\n",
    );
    load_fixture(&server).await;
    run_files(server.pg_port(), "embedded", &[], || server.log()).await;
}

/// Runs every `tests/slt/*.slt` but those named in `skip` against the server on `port`.
/// `label` selects the records marked `onlyif <label>` and drops those marked
/// `skipif <label>` (`embedded` or `cluster`), so a file states where the modes differ.
pub(crate) async fn run_files(port: u16, label: &str, skip: &[&str], log: impl Fn() -> String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .filter(|p| !skip.iter().any(|s| p.file_name().is_some_and(|n| n == *s)))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    // Every file runs, so one run shows every file's first mismatch.
    let mut failures = Vec::new();
    for file in files {
        let mut runner = sqllogictest::Runner::new(move || async move {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(port)
                .user("logsphere")
                .dbname("logsphere");
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| DbError(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(PgDb { client })
        });
        runner.add_label(label);
        if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{} ({label}): {}", file.display(), e.display(true)));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- server log ---\n{}",
        failures.join("\n\n"),
        log()
    );
}
