//! `isolation`: what a heavy ad-hoc query costs ingest and alerts (issue "Resource safety",
//! Benchmarks).
//!
//! One server with both seed rules holds `--rows` records (6 hours of them, flushed to
//! Parquet). Then, same server, same run, each part once without and once with a second
//! client looping a full-scan GROUP BY over every row (`HEAVY`):
//! - closed-loop ingest records/s (`--senders` × `--batch` records per request);
//! - open-loop alert latency of the seed rules at `--load`% of the quiet closed-loop rate
//!   (`cq_latency.rs`: scheduled send → `alerts` row visible, and ack → visible).
//!
//! The ratios (with ÷ without) are the isolation. The heavy query's own times, alone and
//! under each load, are reported beside them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cq::{background_pool, closed_loop, wait_caught_up};
use crate::cq_latency::{self, OpenLoop, Probe, RULE_A, RULE_B};
use crate::pg::Pg;
use crate::records::Dataset;
use crate::report::{self, Table, median, percentile, thousands};
use crate::server::{self, Server};

/// The heavy query: every row of both tiers, grouped, with a per-row expression.
const HEAVY: &str = "SELECT source, log_level, count(*) AS n, avg(length(message)) AS avg_len \
                     FROM logs GROUP BY source, log_level";

/// Arguments of `logsphere-bench isolation`.
#[derive(Debug, clap::Args)]
pub struct IsolationArgs {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    bin: PathBuf,
    /// Records stored before the measurements (the heavy query scans them all).
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Records per request while loading them.
    #[arg(long, default_value_t = 10_000)]
    load_batch: u64,
    /// Sender threads, loading and measuring.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Records per request in the measured ingest.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Load of the latency runs, in percent of the quiet closed-loop rate.
    #[arg(long, default_value_t = 50)]
    load: u32,
    /// Probe pairs per second in the latency runs.
    #[arg(long, default_value_t = 40.0)]
    probes_per_s: f64,
    /// The latency poller's pause between `alerts` queries, ms.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// The server's `pg.query_nice` (the query threads' OS priority; 0 = as ingest).
    #[arg(long, default_value_t = 10)]
    query_nice: i32,
    /// Directory for the temporary data directory [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "isolation")]
    name: String,
    /// Keep the temporary directory afterwards.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: IsolationArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.batch > 0 && args.senders > 0 && args.load_batch > 0,
        "--rows, --batch, --load-batch and --senders must be positive"
    );
    report::in_work_dir(args.dir.as_deref(), "isolation", args.keep, |work| {
        run_in(&args, work)
    })
}

/// The heavy query's times while `during` runs, looping it on its own connection.
fn with_heavy<T>(
    server: &Server,
    during: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<f64>)> {
    let stop = AtomicBool::new(false);
    let pg = Pg::connect(server)?;
    std::thread::scope(|s| {
        let looping = s.spawn(|| -> anyhow::Result<Vec<f64>> {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                pg.query(HEAVY)?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(times)
        });
        // Let the first scan get going.
        std::thread::sleep(Duration::from_millis(500));
        let result = during();
        stop.store(true, Ordering::Relaxed);
        let times = looping
            .join()
            .map_err(|_| anyhow::anyhow!("the heavy-query thread panicked"))??;
        Ok((result?, times))
    })
}

/// Rows the heavy query counted (all of `logs` at that moment).
fn heavy_rows(pg: &Pg) -> anyhow::Result<i64> {
    let rows = pg.query(HEAVY)?;
    rows.iter()
        .map(|r| r.try_get::<_, i64>(2).context("count(*) is not a bigint"))
        .sum()
}

fn ms(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    format!("{:.0}", median(values))
}

fn run_in(args: &IsolationArgs, work: &Path) -> anyhow::Result<()> {
    let load_before = report::load_average();
    let config = format!(
        "{}[pg]\nquery_nice = {}\n",
        server::CONFIG_TOML,
        args.query_nice
    );
    let server = Server::start_with_config(&args.bin, work, &work.join("data"), &config)?;
    let pg = Pg::connect(&server)?;
    pg.execute(RULE_A)?;
    pg.execute(RULE_B)?;
    let end_us = chrono::Utc::now().timestamp_micros();
    let dataset = Dataset {
        rows: args.rows,
        start_us: end_us - 6 * 3_600_000_000,
        end_us,
    };
    let t = Instant::now();
    crate::query::load(&server, &dataset, args.load_batch, args.senders)?;
    let flushed = server.flush()?;
    wait_caught_up(&pg, args.rows, Duration::from_secs(1800))?;
    eprintln!(
        "isolation: {} records stored ({} flushed to Parquet) and seen by the rules in {:.0} s",
        thousands(args.rows),
        thousands(flushed),
        t.elapsed().as_secs_f64()
    );
    let scanned = heavy_rows(&pg)?;
    let mut alone = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        pg.query(HEAVY)?;
        alone.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!(
        "isolation: the heavy query alone over {} rows: median {} ms",
        thousands(scanned as u64),
        ms(&alone)
    );

    let pool = background_pool(64, args.batch);
    let duration = Duration::from_secs(args.seconds);
    let rate = |(records, secs): (u64, f64)| records as f64 / secs;
    let quiet = rate(closed_loop(&server, &pool, args.senders, duration)?);
    eprintln!("isolation: ingest without the heavy query: {quiet:.0} records/s");
    let (heavy, heavy_ingest_times) = with_heavy(&server, || {
        closed_loop(&server, &pool, args.senders, duration)
    })?;
    let heavy = rate(heavy);
    eprintln!(
        "isolation: ingest with the heavy query looping: {heavy:.0} records/s ({} heavy queries)",
        heavy_ingest_times.len()
    );

    let cfg = OpenLoop {
        rate: quiet * f64::from(args.load) / 100.0,
        batch: args.batch,
        senders: args.senders,
        duration,
        probes_per_s: args.probes_per_s,
        poll: Duration::from_millis(args.poll_ms),
        first_probe: 0,
    };
    let lat_quiet = cq_latency::run(&server, &pool, cfg)?;
    let second = OpenLoop {
        first_probe: 1_000_000,
        ..cfg
    };
    let (lat_heavy, heavy_latency_times) =
        with_heavy(&server, || cq_latency::run(&server, &pool, second))?;
    let rows_after = heavy_rows(&pg)?;
    let memory = server.memory()?;
    drop(pg);
    server.stop()?;

    let mut ingest = Table::new(&[
        "closed-loop ingest",
        "records/s",
        "÷ without",
        "heavy queries completed",
        "heavy query median ms",
    ]);
    ingest.row(vec![
        "without the heavy query".into(),
        thousands(quiet as u64),
        "1.00".into(),
        "–".into(),
        "–".into(),
    ]);
    ingest.row(vec![
        "with it looping".into(),
        thousands(heavy as u64),
        format!("{:.2}", heavy / quiet),
        heavy_ingest_times.len().to_string(),
        ms(&heavy_ingest_times),
    ]);
    let mut latency = Table::new(&[
        "alert latency",
        "rule",
        "probes seen",
        "p50 ms",
        "p99 ms",
        "p99 ms to first_seen",
        "p99 ms ack → visible",
        "records/s achieved",
        "heavy queries completed",
    ]);
    let pct = |probes: &[Probe], f: &dyn Fn(&Probe) -> i64, p: f64| {
        let mut v: Vec<u64> = probes
            .iter()
            .filter(|p| p.visible_us > 0)
            .map(|x| f(x).max(0) as u64)
            .collect();
        v.sort_unstable();
        format!("{:.1}", percentile(&v, p) as f64 / 1000.0)
    };
    let mut p99 = Vec::new();
    for (label, run, times) in [
        ("without the heavy query", &lat_quiet, None),
        ("with it looping", &lat_heavy, Some(&heavy_latency_times)),
    ] {
        for rule in ["A", "B"] {
            let probes = run.probes.get(rule).cloned().unwrap_or_default();
            let seen = probes.iter().filter(|p| p.visible_us > 0).count();
            let visible = |p: &Probe| p.visible_us - p.scheduled_us;
            p99.push(pct(&probes, &visible, 99.0));
            latency.row(vec![
                label.into(),
                rule.into(),
                format!("{seen} / {}", probes.len()),
                pct(&probes, &visible, 50.0),
                pct(&probes, &visible, 99.0),
                pct(&probes, &|p| p.first_seen_us - p.scheduled_us, 99.0),
                pct(&probes, &|p| p.visible_us - p.acked_us, 99.0),
                thousands((run.records as f64 / run.secs) as u64),
                times.map_or("–".into(), |t| t.len().to_string()),
            ]);
        }
    }
    let md = format!(
        "## LogSphere isolation benchmark ({})\n\n\
         Machine: {}. Load average before the run: {load_before}. Server config: `{}`.\n\n\
         One server with both seed rules, {} records over 6 hours loaded and flushed to \
         Parquet first. The heavy query, on its own connection, looped while the second run \
         of each pair goes: `{HEAVY}` — alone it took a median {} ms over {} rows (3 runs); \
         by the end `logs` held {} rows. Closed loop: {} senders × {} records/request, {} s. \
         Latency: open loop at {}% of the quiet closed-loop rate, {} s, {:.0} probe pairs/s \
         (scheduled send → `alerts` row visible to a client polling it every {} ms; `first_seen` \
         is when the rule created the alert; `cq_latency.rs`).\n\n{}\n{}\n\
         - Ingest with the heavy query ÷ without: **{:.2}**. Alert p99 (rule A) without → with: \
         **{} → {} ms** (rule B: {} → {} ms).\n\
         - Server memory after the run: {}.\n\n\
         Load average after the run: {}.\n",
        report::now_utc(),
        report::machine(),
        config.trim().replace('\n', "; "),
        thousands(args.rows),
        ms(&alone),
        thousands(scanned as u64),
        thousands(rows_after as u64),
        args.senders,
        args.batch,
        args.seconds,
        args.load,
        args.seconds,
        args.probes_per_s,
        args.poll_ms,
        ingest.markdown(),
        latency.markdown(),
        heavy / quiet,
        p99[0],
        p99[2],
        p99[1],
        p99[3],
        memory.describe(),
        report::load_average(),
    );
    report::publish(&args.name, &md)
}
