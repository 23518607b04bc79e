//! `cq`: what continuous queries cost and how fast they page (issue 4 "Benchmarks").
//!
//! - (a) alert latency, event ingested → `alerts` row visible over pgwire, for both seed
//!   rules, open-loop at 50% and 80% of the maximum sustainable ingest rate (measured
//!   first, closed-loop, with both rules defined): `cq_latency.rs`;
//! - (b) closed-loop ingest rate with 0, 1, 10 and 100 rule-B-like CQs, and how long the
//!   CQ task needs afterwards to catch up (CQs run off the ingest path, so a slow CQ shows
//!   as lag, not as a lower ingest rate);
//! - (c) memory: RSS and VmHWM of a server whose CQ holds 1 M distinct group keys, minus
//!   the same ingest without the CQ, once with 1 row per key and once with 10.
//!
//! Every part starts a fresh server in its own directory, so parts do not share state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cq_latency::{self, LatencyRun, OpenLoop, Probe, RULE_A, RULE_B};
use crate::pg::Pg;
use crate::records::{Rng, hosts, write_record};
use crate::report::{self, Table, percentile, thousands};
use crate::server::{self, Memory, Server};

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Latency,
    Throughput,
    Memory,
}

/// Arguments of `logsphere-bench cq`.
#[derive(Debug, clap::Args)]
pub struct CqArgs {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    bin: PathBuf,
    /// Parts to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "latency,throughput,memory"
    )]
    parts: Vec<Part>,
    /// Records per request for the latency and throughput parts.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Sender threads (connections).
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Seconds of the closed-loop maximum-rate measurement.
    #[arg(long, default_value_t = 10)]
    max_seconds: u64,
    /// Seconds of each open-loop latency run.
    #[arg(long, default_value_t = 30)]
    latency_seconds: u64,
    /// Load levels of the latency runs, in percent of the maximum rate.
    #[arg(long, value_delimiter = ',', default_value = "50,80")]
    load: Vec<u32>,
    /// Rules defined in the latency part: the two seed rules, then windowed rules with
    /// other filters, keys and windows (`rule_set`).
    #[arg(long, default_value_t = 100)]
    rules: usize,
    /// Live group keys held by one of those rules during the latency part (prefilled).
    #[arg(long, default_value_t = 1_000_000)]
    live_keys: u64,
    /// Probe pairs (one per rule) per second in the latency runs.
    #[arg(long, default_value_t = 40.0)]
    probes_per_s: f64,
    /// The poller's pause between `alerts` queries, ms.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// CQ counts of the throughput part.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10,100")]
    cqs: Vec<usize>,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 15)]
    throughput_seconds: u64,
    /// Distinct group keys of the memory part.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Directory for the temporary data directories [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "cq")]
    name: String,
    /// Keep the temporary directory afterwards (it is removed by default).
    #[arg(long)]
    keep: bool,
}

/// Runs the selected parts and writes the results file.
pub fn run(args: CqArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.senders > 0,
        "--batch and --senders must be positive"
    );
    report::in_work_dir(args.dir.as_deref(), "cq", args.keep, |work| {
        run_in(&args, work)
    })
}

fn run_in(args: &CqArgs, work: &Path) -> anyhow::Result<()> {
    let load_before = report::load_average();
    let mut md = format!(
        "## LogSphere continuous-query benchmark ({})\n\n\
         Machine: {}. Load average before the run: {load_before}. Server config: `{}`.\n\n",
        report::now_utc(),
        report::machine(),
        server::CONFIG_TOML.trim().replace('\n', "; "),
    );
    let pool = background_pool(64, args.batch);
    let mut run_no = 0;
    let mut fresh = |what: &str| -> anyhow::Result<Server> {
        run_no += 1;
        let dir = work.join(format!("{run_no:02}-{what}"));
        std::fs::create_dir_all(&dir)?;
        Server::start(&args.bin, &dir, &dir.join("data"))
    };
    if args.parts.contains(&Part::Latency) {
        md.push_str(&latency(args, &pool, &mut fresh)?);
    }
    if args.parts.contains(&Part::Throughput) {
        md.push_str(&throughput(args, &pool, &mut fresh)?);
    }
    if args.parts.contains(&Part::Memory) {
        md.push_str(&memory(args, &mut fresh)?);
    }
    md.push_str(&format!(
        "\nLoad average after the run: {}.\n",
        report::load_average()
    ));
    let path = report::write_results(&args.name, &md)?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Realistic bench records (`records.rs`) without their `ts`: the server stamps the
/// ingest time, so the background stays inside the open windows however long a run is.
pub(crate) fn background_pool(count: usize, batch: usize) -> Vec<Vec<u8>> {
    let hosts = hosts();
    (0..count)
        .map(|b| {
            let mut rng = Rng::new(b as u64 ^ 0x00c0_ffee);
            let mut body = Vec::with_capacity(batch * 220);
            let mut line = Vec::with_capacity(256);
            for _ in 0..batch {
                line.clear();
                write_record(&mut line, 0, &mut rng, &hosts);
                // `{"ts":"…","level"…` → `{"level"…`
                let cut = line
                    .windows(3)
                    .position(|w| w == b"\",\"")
                    .map_or(1, |i| i + 2);
                body.push(b'{');
                body.extend_from_slice(&line[cut..]);
            }
            body
        })
        .collect()
}

/// Closed loop: `senders` threads post from `pool` back to back for `duration`; returns
/// (records, seconds).
pub(crate) fn closed_loop(
    server: &Server,
    pool: &[Vec<u8>],
    senders: usize,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let sent = post_closed_loop(server, &server.url("/v1/logs"), pool, senders, duration)?;
    Ok((sent.records, sent.secs))
}

/// What [`post_closed_loop`] sent.
pub(crate) struct Sent {
    pub records: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// Closed loop to `url`: `senders` threads post from `pool` back to back for `duration`.
pub(crate) fn post_closed_loop(
    server: &Server,
    url: &str,
    pool: &[Vec<u8>],
    senders: usize,
    duration: Duration,
) -> anyhow::Result<Sent> {
    let records = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + duration;
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders)
            .map(|id| {
                let (agent, records, bytes) = (server.agent(), &records, &bytes);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut i = id * 7;
                    while Instant::now() < deadline {
                        let body = &pool[i % pool.len()];
                        let n = crate::ingest::post_logs(&agent, url, body)?;
                        records.fetch_add(n, Ordering::Relaxed);
                        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        i += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        server::join_senders(handles)
    });
    for r in results {
        r?;
    }
    Ok(Sent {
        records: records.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Waits until every CQ has taken in `rows` rows; returns how long that took.
pub(crate) fn wait_caught_up(pg: &Pg, rows: u64, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let behind = pg.query_i64(&format!(
            "SELECT count(*) FROM continuous_queries WHERE rows_in < {rows}"
        ))?;
        if behind == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{behind} CQs still behind {rows} rows after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(us: i64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn latency(
    args: &CqArgs,
    pool: &[Vec<u8>],
    fresh: &mut impl FnMut(&str) -> anyhow::Result<Server>,
) -> anyhow::Result<String> {
    let server = fresh("max-rate")?;
    let pg = Pg::connect(&server)?;
    let prefilled = set_up_rules(args, &server, &pg)?;
    let (records, secs) = closed_loop(
        &server,
        pool,
        args.senders,
        Duration::from_secs(args.max_seconds),
    )?;
    let max_rate = records as f64 / secs;
    let lag = wait_caught_up(&pg, prefilled + records, Duration::from_secs(600))?;
    drop(pg);
    server.stop()?;
    eprintln!(
        "cq latency: maximum sustainable ingest with {} rules and {} live keys: {:.0} records/s \
         ({} senders × {} records/request, {} s); the CQs caught up {:.0} ms after the senders stopped",
        args.rules,
        args.live_keys,
        max_rate,
        args.senders,
        args.batch,
        args.max_seconds,
        lag.as_secs_f64() * 1000.0
    );

    let mut table = Table::new(&[
        "load",
        "background records/s offered",
        "records/s achieved (with probes)",
        "rule",
        "probes",
        "seen",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "p99 ms to first_seen",
        "p99 ms ack → visible",
    ]);
    let mut notes = Vec::new();
    for &load in &args.load {
        let server = fresh(&format!("latency-{load}"))?;
        let pg = Pg::connect(&server)?;
        let prefilled = set_up_rules(args, &server, &pg)?;
        wait_caught_up(&pg, prefilled, Duration::from_secs(600))?;
        let cfg = OpenLoop {
            rate: max_rate * f64::from(load) / 100.0,
            batch: args.batch,
            senders: args.senders,
            duration: Duration::from_secs(args.latency_seconds),
            probes_per_s: args.probes_per_s,
            poll: Duration::from_millis(args.poll_ms),
            first_probe: 0,
        };
        let run = cq_latency::run(&server, pool, cfg)?;
        let memory = server.memory()?;
        drop(pg);
        server.stop()?;
        for (rule, name) in [
            ("A", "A critical_log_alert"),
            ("B", "B error_burst_per_source"),
        ] {
            let probes = run.probes.get(rule).cloned().unwrap_or_default();
            let row = latency_row(load, &cfg, &run, name, &probes);
            eprintln!("  {}", row.join(" | "));
            table.row(row);
        }
        notes.push(format!(
            "- {load}%: {} of {} requests sent more than 10 ms after their scheduled time; \
             {} polls of `alerts`; server memory after the run: {}.",
            run.late_requests,
            run.requests,
            run.polls,
            memory.describe()
        ));
    }
    Ok(format!(
        "### (a) Alert latency, event ingested → `alerts` row visible\n\n\
         {} rules defined (`rule_set`: the two seed rules, then windowed rules with other \
         filters, keys and windows), one of which holds {} live group keys, prefilled before \
         each run. Maximum sustainable ingest rate with them (closed loop, {} senders × \
         {} records/request, {} s): **{} records/s**; the CQs caught up {:.0} ms after the \
         senders stopped. Open-loop runs of {} s at the loads below; {:.0} probe pairs/s; \
         latency = poller's first sight of the row − the request's scheduled send time \
         (so a sender behind its schedule counts); the last column is from the probe's \
         acknowledgement instead; poller pause {} ms.\n\n{}\n{}\n\n",
        args.rules,
        thousands(args.live_keys),
        args.senders,
        args.batch,
        args.max_seconds,
        thousands(max_rate as u64),
        lag.as_secs_f64() * 1000.0,
        args.latency_seconds,
        args.probes_per_s,
        args.poll_ms,
        table.markdown(),
        notes.join("\n")
    ))
}

fn latency_row(
    load: u32,
    cfg: &OpenLoop,
    run: &LatencyRun,
    rule: &str,
    probes: &[Probe],
) -> Vec<String> {
    let seen: Vec<&Probe> = probes.iter().filter(|p| p.visible_us > 0).collect();
    let sorted = |f: &dyn Fn(&Probe) -> i64| {
        let mut v: Vec<u64> = seen.iter().map(|p| f(p).max(0) as u64).collect();
        v.sort_unstable();
        v
    };
    let visible = sorted(&|p| p.visible_us - p.scheduled_us);
    let created = sorted(&|p| p.first_seen_us - p.scheduled_us);
    let after_ack = sorted(&|p| p.visible_us - p.acked_us);
    let pct = |v: &[u64], p: f64| ms(percentile(v, p) as i64);
    vec![
        format!("{load}%"),
        thousands(cfg.rate as u64),
        thousands((run.records as f64 / run.secs) as u64),
        rule.to_string(),
        probes.len().to_string(),
        seen.len().to_string(),
        pct(&visible, 50.0),
        pct(&visible, 99.0),
        pct(&visible, 99.9),
        pct(&visible, 100.0),
        pct(&created, 99.0),
        pct(&after_ack, 99.0),
    ]
}

/// The first `n` rules of the benchmark's rule set: seed rules A and B, then windowed
/// rules with other filters, group keys and windows, whose thresholds the background load
/// never reaches. With `hold_keys`, the last one instead counts TRACE records per source
/// over a day, so it holds every prefilled key live (`prefill_keys`).
pub fn rule_set(n: usize, hold_keys: bool) -> Vec<String> {
    const FILTERS: [&str; 7] = [
        "log_level = 'ERROR'",
        "log_level = 'WARN'",
        "log_level IN ('ERROR', 'WARN')",
        "log_level = 'ERROR' AND message LIKE '%timeout%'",
        "topic = 'logs.error'",
        "log_level = 'WARN' AND message LIKE 'slow query%'",
        "log_level <> 'INFO' AND log_level <> 'DEBUG'",
    ];
    const KEYS: [&str; 4] = [
        "source",
        "topic",
        "log_level",
        "attr(attributes, 'service')",
    ];
    const WINDOWS: [&str; 3] = ["1 minute", "5 minutes", "10 minutes"];
    let mut rules = vec![RULE_A.to_string(), RULE_B.to_string()];
    for i in 0..n.saturating_sub(2) {
        let (filter, key, window) = (FILTERS[i % 7], KEYS[(i / 7) % 4], WINDOWS[i % 3]);
        rules.push(format!(
            "CREATE CONTINUOUS QUERY rule_{i} WATERMARK INTERVAL '10 seconds' \
             ALERT (SEVERITY 'info') \
             AS SELECT window_start, {key} AS k, count(*) AS n \
             FROM TUMBLE(logs, timestamp, INTERVAL '{window}') WHERE {filter} \
             GROUP BY window_start, {key} HAVING count(*) > {}",
            1_000_000 + i
        ));
    }
    rules.truncate(n);
    if hold_keys && let Some(last) = rules.last_mut() {
        *last = HOLD_KEYS_RULE.to_string();
    }
    rules
}

/// Holds one live key per TRACE source for a day (the background has no TRACE records).
const HOLD_KEYS_RULE: &str = "CREATE CONTINUOUS QUERY live_keys WATERMARK INTERVAL '10 seconds' \
     ALERT AS SELECT window_start, source, count(*) AS n \
     FROM TUMBLE(logs, timestamp, INTERVAL '1 day') WHERE log_level = 'TRACE' \
     GROUP BY window_start, source HAVING count(*) > 1000000";

/// Defines the latency part's rules on `server` and prefills the live keys; returns the
/// records sent.
fn set_up_rules(args: &CqArgs, server: &Server, pg: &Pg) -> anyhow::Result<u64> {
    let hold = args.live_keys > 0 && args.rules >= 3;
    for rule in rule_set(args.rules, hold) {
        pg.execute(&rule)?;
    }
    if !hold {
        return Ok(0);
    }
    let started = Instant::now();
    let ts = chrono::Utc::now().timestamp_micros();
    send_keyed(server, args.live_keys, 1, ts, "TRACE", "p")?;
    wait_caught_up(pg, args.live_keys, Duration::from_secs(600))?;
    eprintln!(
        "cq latency: {} live keys prefilled in {:.1} s",
        thousands(args.live_keys),
        started.elapsed().as_secs_f64()
    );
    Ok(args.live_keys)
}

/// Sends `keys × per_key` records at event time `ts` (µs), record `j` with source
/// `<prefix><j mod keys>`, 4 senders × 10,000 records/request.
fn send_keyed(
    server: &Server,
    keys: u64,
    per_key: u64,
    ts: i64,
    level: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let total = keys * per_key;
    let per_request = 10_000u64;
    let requests = total.div_ceil(per_request);
    let next = AtomicU64::new(0);
    let url = server.url("/v1/logs");
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (agent, url, next) = (server.agent(), &url, &next);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut body = Vec::with_capacity(per_request as usize * 80);
                    loop {
                        let r = next.fetch_add(1, Ordering::Relaxed);
                        if r >= requests {
                            return Ok(());
                        }
                        body.clear();
                        for j in r * per_request..((r + 1) * per_request).min(total) {
                            use std::io::Write as _;
                            let _ = writeln!(
                                body,
                                "{{\"ts\":{ts},\"level\":\"{level}\",\"source\":\"{prefix}{:07}\",\"message\":\"m\"}}",
                                j % keys
                            );
                        }
                        crate::ingest::post_logs(&agent, url, &body)?;
                    }
                })
            })
            .collect();
        server::join_senders(handles)
    });
    for r in results {
        r?;
    }
    Ok(())
}

fn throughput(
    args: &CqArgs,
    pool: &[Vec<u8>],
    fresh: &mut impl FnMut(&str) -> anyhow::Result<Server>,
) -> anyhow::Result<String> {
    let mut table = Table::new(&[
        "CQs",
        "records/s (ingest acknowledged)",
        "÷ 0 CQs",
        "CQ catch-up after the senders stopped, s",
        "records/s including catch-up",
        "÷ 0 CQs",
        "server peak RSS MiB",
    ]);
    let mut base: Option<(f64, f64)> = None;
    for &n in &args.cqs {
        let server = fresh(&format!("throughput-{n}"))?;
        let pg = Pg::connect(&server)?;
        for rule in rule_set(n, false) {
            pg.execute(&rule)?;
        }
        let (records, secs) = closed_loop(
            &server,
            pool,
            args.senders,
            Duration::from_secs(args.throughput_seconds),
        )?;
        let lag = if n > 0 {
            wait_caught_up(&pg, records, Duration::from_secs(600))?
        } else {
            Duration::ZERO
        };
        let memory = server.memory()?;
        drop(pg);
        server.stop()?;
        let rate = records as f64 / secs;
        let with_lag = records as f64 / (secs + lag.as_secs_f64());
        let (r0, l0) = *base.get_or_insert((rate, with_lag));
        eprintln!(
            "cq throughput: {n} CQs: {rate:.0} records/s acknowledged, caught up {:.1} s later ({with_lag:.0} records/s overall)",
            lag.as_secs_f64()
        );
        table.row(vec![
            n.to_string(),
            thousands(rate as u64),
            format!("{:.2}", rate / r0),
            format!("{:.1}", lag.as_secs_f64()),
            thousands(with_lag as u64),
            format!("{:.2}", with_lag / l0),
            format!("{:.0}", memory.hwm_kib as f64 / 1024.0),
        ]);
    }
    Ok(format!(
        "### (b) Ingest rate with 0, 1, 10 and 100 continuous queries\n\n\
         Closed loop, {} senders × {} records/request, {} s per run, a fresh server per run. \
         The CQs are the first n of `rule_set` (the seed rules, then windowed rules with other \
         filters, keys and windows). \
         CQs run on their own task after the WAL fsync, so ingest is acknowledged before they \
         see the rows; the catch-up column is how long after the last acknowledgement every \
         CQ's `rows_in` reached the records sent.\n\n{}\n",
        args.senders,
        args.batch,
        args.throughput_seconds,
        table.markdown()
    ))
}

/// One memory run: ingest `keys × per_key` small ERROR records (key `i % keys`), with or
/// without a CQ grouping by that key in one open window.
struct MemoryRun {
    cq: bool,
    per_key: u64,
    before: Memory,
    after: Memory,
    state_keys: i64,
    secs: f64,
}

const MEMORY_RULE: &str = "CREATE CONTINUOUS QUERY keys_per_day WATERMARK INTERVAL '10 seconds' ALERT \
     AS SELECT window_start, source, count(*) AS n \
     FROM TUMBLE(logs, timestamp, INTERVAL '1 day') WHERE log_level = 'ERROR' \
     GROUP BY window_start, source HAVING count(*) > 100";

fn memory_run(
    args: &CqArgs,
    fresh: &mut impl FnMut(&str) -> anyhow::Result<Server>,
    cq: bool,
    per_key: u64,
) -> anyhow::Result<MemoryRun> {
    let server = fresh(&format!(
        "memory-{}-{per_key}",
        if cq { "cq" } else { "nocq" }
    ))?;
    let pg = Pg::connect(&server)?;
    if cq {
        pg.execute(MEMORY_RULE)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = server.memory()?;
    // One event time for every record: one window, open for the whole run.
    let ts = chrono::Utc::now().timestamp_micros();
    let total = args.keys * per_key;
    let started = Instant::now();
    send_keyed(&server, args.keys, per_key, ts, "ERROR", "k")?;
    let state_keys = if cq {
        wait_caught_up(&pg, total, Duration::from_secs(600))?;
        pg.query_i64("SELECT state_keys FROM continuous_queries WHERE name = 'keys_per_day'")?
    } else {
        0
    };
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = server.memory()?;
    drop(pg);
    server.stop()?;
    eprintln!(
        "cq memory: cq={cq} {} keys × {per_key}: {} → {} ({} state keys, {secs:.1} s)",
        args.keys,
        before.describe(),
        after.describe(),
        state_keys
    );
    Ok(MemoryRun {
        cq,
        per_key,
        before,
        after,
        state_keys,
        secs,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

fn memory(
    args: &CqArgs,
    fresh: &mut impl FnMut(&str) -> anyhow::Result<Server>,
) -> anyhow::Result<String> {
    let mut runs = Vec::new();
    for per_key in [1, 10] {
        for cq in [false, true] {
            runs.push(memory_run(args, fresh, cq, per_key)?);
        }
    }
    let mut table = Table::new(&[
        "rows per key",
        "CQ",
        "records",
        "state keys",
        "RSS before MiB",
        "RSS after MiB",
        "RSS delta MiB",
        "VmHWM MiB",
        "ingest + catch-up s",
    ]);
    for r in &runs {
        table.row(vec![
            r.per_key.to_string(),
            if r.cq { "keys_per_day" } else { "none" }.into(),
            thousands(args.keys * r.per_key),
            thousands(r.state_keys.max(0) as u64),
            mib(r.before.rss_kib),
            mib(r.after.rss_kib),
            mib(r.after.rss_kib.saturating_sub(r.before.rss_kib)),
            mib(r.after.hwm_kib),
            format!("{:.1}", r.secs),
        ]);
    }
    let delta = |per_key: u64, f: &dyn Fn(&Memory) -> u64| -> i64 {
        let pick = |cq: bool| {
            runs.iter()
                .find(|r| r.per_key == per_key && r.cq == cq)
                .map(|r| f(&r.after) as i64 - f(&r.before) as i64)
                .unwrap_or(0)
        };
        pick(true) - pick(false)
    };
    let rss = |k| delta(k, &|m: &Memory| m.rss_kib) as f64 / 1024.0;
    let hwm = |k| delta(k, &|m: &Memory| m.hwm_kib) as f64 / 1024.0;
    Ok(format!(
        "### (c) Memory of CQ state with {} distinct group keys\n\n\
         Records `{{\"ts\":<one fixed time>,\"level\":\"ERROR\",\"source\":\"k<i mod keys>\",\"message\":\"m\"}}`, \
         4 senders × 10,000 records/request, into a fresh server with or without `{MEMORY_RULE}` \
         (one 1-day window, so every key stays live; no key reaches the HAVING). RSS from \
         `/proc/<pid>/status` 0.5 s after CREATE and 0.5 s after every CQ caught up. The hot \
         buffer holds the same rows in both runs, so *with CQ − without CQ* is the CQ's cost.\n\n{}\n\
         - CQ state, 1 row per key: RSS **{:.0} MiB**, VmHWM {:.0} MiB more than without the CQ.\n\
         - CQ state, 10 rows per key: RSS **{:.0} MiB**, VmHWM {:.0} MiB more than without the CQ.\n\n",
        thousands(args.keys),
        table.markdown(),
        rss(1),
        hwm(1),
        rss(10),
        hwm(10),
    ))
}
