//! `query`: SQL over 10 M records through the PostgreSQL protocol, against DuckDB over
//! the very same Parquet files.
//!
//! Setup ingests the dataset over HTTP and forces a flush, so every row is in Parquet and
//! both engines read the same bytes. Each query runs once to warm up, then `--runs` times;
//! the median is reported, and the answers of both engines are compared row by row.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_postgres::types::Type;

use crate::duckdb;
use crate::ingest::post_logs;
use crate::records::{self, Dataset, SOURCES};
use crate::report::{self, Table, median, thousands};
use crate::server::{CONFIG_TOML, Memory, Server};

/// Arguments of `logsphere-bench query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    bin: PathBuf,
    /// Records in the dataset, spread over the last 6 hours.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Reuse the dataset a previous run left in the data directory (same --rows) instead of
    /// ingesting it again.
    #[arg(long)]
    reuse: bool,
    /// Directory of the dataset [default: benches/data/query-<rows>].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Concurrent senders during setup.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Records per request during setup.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
    /// Measured runs per query (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// A Python with `duckdb` installed [default: benches/.venv, created on first use].
    #[arg(long)]
    python: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "query")]
    name: String,
    /// Put the cold tier on this store (e.g. hdfs://127.0.0.1:9000/bench) instead of the
    /// data directory; DuckDB then reads a local copy of the same files.
    #[arg(long)]
    cold: Option<String>,
}

/// What setup left in the data directory, so `--reuse` knows what it has.
#[derive(Debug, Clone)]
struct Meta {
    rows: u64,
    start_us: i64,
    end_us: i64,
    /// How the ingest went when the dataset was made (None when unknown).
    ingest: Option<Value>,
}

impl Meta {
    fn load(path: &Path) -> Option<Self> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some(Self {
            rows: v["rows"].as_u64()?,
            start_us: v["start_us"].as_i64()?,
            end_us: v["end_us"].as_i64()?,
            ingest: v.get("ingest").cloned(),
        })
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let v = json!({ "rows": self.rows, "start_us": self.start_us, "end_us": self.end_us, "ingest": self.ingest });
        std::fs::write(path, v.to_string())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// One query and its results on both engines.
struct Outcome {
    name: &'static str,
    sql: String,
    logsphere_ms: Vec<f64>,
    logsphere_rows: Vec<Vec<Value>>,
    duckdb_ms: Vec<f64>,
    duckdb_rows: Vec<Vec<Value>>,
}

/// Runs the query benchmark and writes its results file.
pub fn run(args: QueryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.batch > 0 && args.senders > 0 && args.runs > 0,
        "--rows, --batch, --senders and --runs must be positive"
    );
    let load_before = report::load_average();
    let work = args.data.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("data")
            .join(format!("query-{}", args.rows))
    });
    let data_dir = work.join("data");
    let meta_path = work.join("dataset.json");
    let reusable = Meta::load(&meta_path).filter(|m| m.rows == args.rows && data_dir.is_dir());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    let cold_url = args
        .cold
        .as_ref()
        .map(|u| format!("{}/query-{}", u.trim_end_matches('/'), args.rows));
    let config = match &cold_url {
        Some(url) => format!("{CONFIG_TOML}[cold]\nurl = \"{url}\"\n"),
        None => CONFIG_TOML.to_string(),
    };

    let (server, meta, reused, startup) = match (args.reuse, reusable) {
        (true, Some(meta)) => {
            eprintln!(
                "query: reusing the {}-row dataset in {}",
                thousands(meta.rows),
                work.display()
            );
            let t = Instant::now();
            let server = Server::start_with_config(&args.bin, &work, &data_dir, &config)?;
            let startup = t.elapsed();
            eprintln!(
                "server pid {} ready in {:.1} s (WAL replay included)",
                server.pid(),
                startup.as_secs_f64()
            );
            (server, meta, true, Some(startup))
        }
        (reuse, _) => {
            if reuse {
                eprintln!(
                    "query: no reusable {}-row dataset in {}; making one",
                    thousands(args.rows),
                    work.display()
                );
            }
            if work.exists() {
                std::fs::remove_dir_all(&work)
                    .with_context(|| format!("cannot remove the old dataset {}", work.display()))?;
            }
            std::fs::create_dir_all(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            if let Some(url) = &cold_url {
                let removed = runtime.block_on(crate::hdfs::clear(url))?;
                eprintln!("query: removed {removed} files of an earlier dataset under {url}");
            }
            let server = Server::start_with_config(&args.bin, &work, &data_dir, &config)?;
            eprintln!(
                "server pid {} (http {}, pg {}), log {}",
                server.pid(),
                server.http,
                server.pg,
                server.log.display()
            );
            let meta = setup(&args, &server)?;
            meta.save(&meta_path)?;
            (server, meta, false, None)
        }
    };

    let cutoff_us = meta.end_us - 3_600_000_000;
    let cutoff = chrono::DateTime::from_timestamp_micros(cutoff_us)
        .context("dataset end time out of range")?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let queries: Vec<(&'static str, String)> = vec![
        ("(a) count(*)", "SELECT count(*) FROM logs".into()),
        (
            "(b) errors per source per minute, last hour",
            format!(
                "SELECT source, date_trunc('minute', timestamp) AS m, count(*) FROM logs \
                 WHERE log_level = 'ERROR' AND timestamp >= '{cutoff}' GROUP BY 1,2 ORDER BY 1,2"
            ),
        ),
        (
            "(c) LIKE '%timeout%'",
            "SELECT count(*) FROM logs WHERE message LIKE '%timeout%'".into(),
        ),
        (
            "(d) top error messages",
            "SELECT message, count(*) AS n FROM logs WHERE log_level = 'ERROR' \
             GROUP BY message ORDER BY n DESC, message LIMIT 10"
                .into(),
        ),
    ];

    let mut logsphere = Vec::new();
    for (name, sql) in &queries {
        let (times, rows) = runtime
            .block_on(time_pg(&server, sql, 1, args.runs))
            .with_context(|| format!("LogSphere query {name}: {sql}"))?;
        eprintln!(
            "  LogSphere {name}: median {:.1} ms ({} rows)",
            median(&times),
            rows.len()
        );
        logsphere.push((times, rows));
    }
    let memory = server.memory()?;
    server.stop()?;

    let local_cold = match &cold_url {
        Some(url) => {
            let copy = work.join("cold-copy");
            if copy.exists() {
                std::fs::remove_dir_all(&copy)
                    .with_context(|| format!("cannot remove {}", copy.display()))?;
            }
            eprintln!("query: copying the cold tier out of {url} for DuckDB");
            runtime.block_on(crate::hdfs::copy_out(url, "logs", &copy))?;
            copy
        }
        None => data_dir.join("cold"),
    };
    let (files, bytes) = parquet_files(&local_cold.join("logs"))?;
    let root = std::fs::canonicalize(&local_cold)
        .with_context(|| format!("cannot resolve {}", local_cold.display()))?;
    let glob = format!("{}/logs/**/*.parquet", root.display());
    let python = duckdb::ensure_python(args.python.as_deref(), &duckdb::default_venv())?;
    eprintln!("duckdb: timing the same queries over {glob}");
    let duck = duckdb::time_queries(&python, &glob, &queries, 1, args.runs)?;
    anyhow::ensure!(
        duck.queries.len() == queries.len(),
        "DuckDB answered {} of {} queries",
        duck.queries.len(),
        queries.len()
    );

    let outcomes: Vec<Outcome> = queries
        .into_iter()
        .zip(logsphere)
        .zip(duck.queries.iter().cloned())
        .map(|(((name, sql), (ls_ms, ls_rows)), d)| Outcome {
            name,
            sql,
            logsphere_ms: ls_ms,
            logsphere_rows: ls_rows,
            duckdb_ms: d.times_ms,
            duckdb_rows: d.rows,
        })
        .collect();
    let md = render(
        &args,
        &meta,
        reused,
        startup,
        &outcomes,
        &duck,
        memory,
        files,
        bytes,
        &load_before,
    );
    let path = report::write_results(&args.name, &md)?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    if outcomes.iter().any(|o| o.logsphere_rows != o.duckdb_rows) {
        bail!(
            "LogSphere and DuckDB gave different answers; see {}",
            path.display()
        );
    }
    Ok(())
}

/// Ingests the dataset over HTTP with progress, then flushes it to Parquet.
fn setup(args: &QueryArgs, server: &Server) -> anyhow::Result<Meta> {
    let end_us = chrono::Utc::now().timestamp_micros();
    let dataset = Dataset {
        rows: args.rows,
        start_us: end_us - 6 * 3_600_000_000,
        end_us,
    };
    let started = Instant::now();
    let total_bytes = load(server, &dataset, args.batch, args.senders)?;
    let ingest_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "setup: {} records in {:.1} s ({:.0} records/s, {:.1} MB/s); flushing to Parquet",
        thousands(args.rows),
        ingest_secs,
        args.rows as f64 / ingest_secs,
        total_bytes as f64 / 1e6 / ingest_secs
    );
    let t = Instant::now();
    let flushed = server.flush()?;
    let flush_secs = t.elapsed().as_secs_f64();
    let metrics = server.metrics()?;
    let accepted = metrics
        .get("logsphere_records_accepted_total")
        .copied()
        .unwrap_or(0.0) as u64;
    anyhow::ensure!(
        accepted == args.rows,
        "the server accepted {accepted} records, expected {}",
        args.rows
    );
    let hot = metrics.get("logsphere_hot_rows").copied().unwrap_or(0.0) as u64;
    anyhow::ensure!(
        hot == 0,
        "{hot} rows still in the hot buffer after POST /v1/flush"
    );
    eprintln!(
        "setup: final flush moved {} rows in {flush_secs:.1} s",
        thousands(flushed)
    );
    let ingest = json!({
        "secs": ingest_secs,
        "records_per_s": args.rows as f64 / ingest_secs,
        "mb_per_s": total_bytes as f64 / 1e6 / ingest_secs,
        "senders": args.senders,
        "batch": args.batch,
        "final_flush_secs": flush_secs,
        "final_flush_rows": flushed,
        "parquet_flushes": metrics.get("logsphere_flushes_total").copied().unwrap_or(0.0),
        "server_memory_after_ingest_kib": server.memory().map(|m| m.hwm_kib).unwrap_or(0),
    });
    Ok(Meta {
        rows: args.rows,
        start_us: dataset.start_us,
        end_us,
        ingest: Some(ingest),
    })
}

/// Ingests `dataset` into `server` over HTTP (`senders` threads, `batch` records per
/// request), with progress every 5 s; returns the bytes sent.
pub(crate) fn load(
    server: &Server,
    dataset: &Dataset,
    batch: u64,
    senders: usize,
) -> anyhow::Result<u64> {
    let rows = dataset.rows;
    let batches = rows.div_ceil(batch);
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let url = server.url("/v1/logs");
    let hosts = records::hosts();
    eprintln!(
        "setup: ingesting {} records over HTTP ({senders} senders, {} records/request) spread over {:.0} hours",
        thousands(rows),
        thousands(batch),
        (dataset.end_us - dataset.start_us) as f64 / 3.6e9
    );
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders)
            .map(|_| {
                let agent = server.agent();
                let (next, done, bytes, url, hosts) = (&next, &done, &bytes, url.as_str(), &hosts);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut body = Vec::new();
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            return Ok(());
                        }
                        let first = b * batch;
                        let n = batch.min(rows - first);
                        body.clear();
                        dataset.write_batch(&mut body, first, n, hosts);
                        let accepted = post_logs(&agent, url, &body)?;
                        anyhow::ensure!(
                            accepted == n,
                            "batch {b}: {accepted} of {n} records accepted"
                        );
                        done.fetch_add(n, Ordering::Relaxed);
                        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut last = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {} / {} records, {:.0} records/s",
                    thousands(n),
                    thousands(rows),
                    n as f64 / secs
                );
            }
        }
        crate::server::join_senders(handles)
    });
    for r in results {
        r?;
    }
    Ok(bytes.load(Ordering::Relaxed))
}

/// Runs `sql` over the PostgreSQL protocol `warmup + runs` times; returns the measured times
/// (ms) and the rows of the last run.
async fn time_pg(
    server: &Server,
    sql: &str,
    warmup: usize,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<Vec<Value>>)> {
    let conn_str = format!(
        "host={} port={} user=logsphere dbname=logsphere",
        server.pg.ip(),
        server.pg.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {conn_str}"))?;
    let conn = tokio::spawn(connection);
    let mut times = Vec::new();
    let mut last = Vec::new();
    for i in 0..warmup + runs {
        let t = Instant::now();
        let rows = client.query(sql, &[]).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i >= warmup {
            times.push(ms);
        }
        last = rows;
    }
    let rows = last
        .iter()
        .map(row_values)
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(client);
    let _ = conn.await;
    Ok((times, rows))
}

/// A PostgreSQL row as JSON values, in the form the DuckDB script prints.
fn row_values(row: &tokio_postgres::Row) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::from)
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?.map(Value::from)
        } else if *t == Type::TEXT || *t == Type::VARCHAR {
            row.try_get::<_, Option<String>>(i)?.map(Value::from)
        } else if *t == Type::TIMESTAMPTZ || *t == Type::TIMESTAMP {
            row.try_get::<_, Option<SystemTime>>(i)?
                .map(|ts| Value::from(epoch_us(ts)))
        } else {
            bail!(
                "column {} has type {t}, which the bench does not compare",
                col.name()
            );
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}

fn epoch_us(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Number and total size of the Parquet files under `dir`.
fn parquet_files(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", d.display()))?;
            let path = entry.path();
            let meta = entry
                .metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if meta.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

/// A short rendering of a result for the table: the count, or the shape of a grouped result.
fn summary(rows: &[Vec<Value>]) -> String {
    match rows {
        [row] if row.len() == 1 => row[0]
            .as_i64()
            .map(|n| thousands(n as u64))
            .unwrap_or_else(|| row[0].to_string()),
        _ => {
            let total: i64 = rows
                .iter()
                .filter_map(|r| r.last().and_then(Value::as_i64))
                .sum();
            format!(
                "{} groups, sum {}",
                thousands(rows.len() as u64),
                thousands(total as u64)
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &QueryArgs,
    meta: &Meta,
    reused: bool,
    startup: Option<Duration>,
    outcomes: &[Outcome],
    duck: &duckdb::Report,
    memory: Memory,
    files: u64,
    bytes: u64,
    load_before: &str,
) -> String {
    let mut t = Table::new(&[
        "query",
        "LogSphere median ms",
        "DuckDB median ms",
        "LogSphere ÷ DuckDB",
        "LogSphere answer",
        "DuckDB answer",
        "same answer",
    ]);
    for o in outcomes {
        let (l, d) = (median(&o.logsphere_ms), median(&o.duckdb_ms));
        t.row(vec![
            o.name.to_string(),
            format!("{l:.1}"),
            format!("{d:.1}"),
            format!("{:.1}×", l / d),
            summary(&o.logsphere_rows),
            summary(&o.duckdb_rows),
            if o.logsphere_rows == o.duckdb_rows {
                "yes".into()
            } else {
                "**NO**".into()
            },
        ]);
    }
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut detail = String::new();
    for o in outcomes {
        detail.push_str(&format!(
            "- {}: `{}`\n  - LogSphere runs (ms): {}\n  - DuckDB runs (ms): {}\n",
            o.name,
            o.sql,
            runs(&o.logsphere_ms),
            runs(&o.duckdb_ms)
        ));
    }
    let setup = match (&meta.ingest, reused) {
        (Some(i), false) => format!(
            "Setup (this run): ingested over HTTP at {} records/s ({:.1} MB/s, {} senders × {} records/request, {:.1} s), \
             then the final `POST /v1/flush` moved {} rows in {:.1} s; {} Parquet flushes in all. \
             Server peak RSS after ingest: {:.0} MiB.",
            thousands(i["records_per_s"].as_f64().unwrap_or(0.0) as u64),
            i["mb_per_s"].as_f64().unwrap_or(0.0),
            i["senders"],
            i["batch"],
            i["secs"].as_f64().unwrap_or(0.0),
            thousands(i["final_flush_rows"].as_u64().unwrap_or(0)),
            i["final_flush_secs"].as_f64().unwrap_or(0.0),
            i["parquet_flushes"].as_f64().unwrap_or(0.0) as u64,
            i["server_memory_after_ingest_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        ),
        (_, true) => format!(
            "Setup: dataset reused from an earlier run (`--reuse`); the server started on it in {:.1} s (WAL replay included).",
            startup.map(|d| d.as_secs_f64()).unwrap_or(0.0)
        ),
        (None, false) => String::new(),
    };
    let where_ = match &args.cold {
        Some(url) => format!(
            "on HDFS under `{url}`: LogSphere reads them from there, DuckDB a local copy of the same files"
        ),
        None => "on local disk, read by both".to_string(),
    };
    let span = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    format!(
        "## LogSphere vs DuckDB, SQL over {} log records ({})\n\n\
         Machine: {}. Load average before the run: {load_before}.\n\n\
         Dataset: {} records of ~200 bytes from {SOURCES} sources, {} to {}, ~85% INFO / 6% WARN / 5% ERROR / 4% DEBUG; \
         all of it in Parquet ({files} files, {:.0} MB, zstd, sorted by source, timestamp) {where_}. {setup}\n\n\
         LogSphere: client-side wall time over the PostgreSQL protocol (tokio-postgres, extended protocol, rows decoded). \
         DuckDB {} (Python, threads = {}): in-process `execute().fetchall()` over a view `logs` = \
         `read_parquet('…/cold/logs/**/*.parquet', hive_partitioning = false)`, the same SQL text. \
         Median of {} runs after 1 warm-up; the server was stopped before DuckDB ran. \
         Server memory after the queries: {}.\n\n{}\n{detail}",
        thousands(meta.rows),
        report::now_utc(),
        report::machine(),
        thousands(meta.rows),
        span(meta.start_us),
        span(meta.end_us),
        bytes as f64 / 1e6,
        duck.version,
        duck.threads,
        args.runs,
        memory.describe(),
        t.markdown(),
    )
}
