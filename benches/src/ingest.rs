//! `ingest`: HTTP ingest throughput and latency, next to the disk's raw fsync'd write rate.
//!
//! Each sender is a thread with its own HTTP connection that posts a batch of NDJSON
//! records and waits for the 200 (which LogSphere sends only after the WAL is fsynced)
//! before it posts the next. The raw baseline writes the same bytes per request to a file
//! in the same directory, one `fdatasync` per append: what the disk gives a single writer
//! that wants every request durable before it answers.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::records::{RECORD_BYTES, body_pool};
use crate::report::{self, Table, percentile, thousands};
use crate::server::{self, Memory, Server};

/// Arguments of `logsphere-bench ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    bin: PathBuf,
    /// Measured seconds per sender count (and for the raw disk baseline).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Sender counts to measure, comma-separated; each sender is one thread and one connection.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    senders: Vec<usize>,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Directory for the temporary data directory and the raw-disk file [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "ingest")]
    name: String,
    /// Keep the temporary directory afterwards (it is removed by default).
    #[arg(long)]
    keep: bool,
}

/// One measured sender count.
#[derive(Debug, Clone)]
struct Phase {
    senders: usize,
    requests: u64,
    records: u64,
    bytes: u64,
    secs: f64,
    latencies_us: Vec<u64>,
    wal_fsyncs: u64,
    wal_bytes: u64,
    flushes: u64,
}

impl Phase {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    fn fsyncs_per_s(&self) -> f64 {
        self.wal_fsyncs as f64 / self.secs
    }
    fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// The raw baseline: fdatasync'd appends by one writer.
#[derive(Debug, Clone)]
struct Raw {
    append_bytes: usize,
    appends: u64,
    secs: f64,
    latencies_us: Vec<u64>,
}

impl Raw {
    fn mb_per_s(&self) -> f64 {
        (self.appends * self.append_bytes as u64) as f64 / 1e6 / self.secs
    }
    fn appends_per_s(&self) -> f64 {
        self.appends as f64 / self.secs
    }
}

/// Runs the ingest benchmark and writes its results file.
pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.seconds > 0,
        "--batch and --seconds must be positive"
    );
    anyhow::ensure!(
        !args.senders.is_empty() && args.senders.iter().all(|s| *s > 0),
        "--senders must list positive counts"
    );
    report::in_work_dir(args.dir.as_deref(), "ingest", args.keep, |work| {
        run_in(&args, work)
    })
}

fn run_in(args: &IngestArgs, work: &Path) -> anyhow::Result<()> {
    let load_before = report::load_average();
    let now_us = chrono::Utc::now().timestamp_micros();
    let pool = body_pool(64, args.batch, now_us);
    let body_bytes = pool.iter().map(Vec::len).sum::<usize>() / pool.len();
    eprintln!(
        "ingest: {} records/request, {} bytes/request ({:.1} bytes/record), {} s per sender count, work dir {}",
        args.batch,
        body_bytes,
        body_bytes as f64 / args.batch as f64,
        args.seconds,
        work.display()
    );

    let data_dir = work.join("data");
    let server = Server::start(&args.bin, work, &data_dir)?;
    eprintln!(
        "server pid {} (http {}, pg {}), log {}",
        server.pid(),
        server.http,
        server.pg,
        server.log.display()
    );
    let mut phases = Vec::new();
    for &senders in &args.senders {
        // A short unmeasured warm-up opens the connections and settles the allocator.
        send_for(&server, &pool, senders, Duration::from_secs(1))?;
        let before = server.metrics()?;
        let mut phase = send_for(&server, &pool, senders, Duration::from_secs(args.seconds))?;
        let after = server.metrics()?;
        let delta = |k: &str| {
            (after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0)) as u64
        };
        phase.wal_fsyncs = delta("logsphere_wal_fsyncs_total");
        phase.wal_bytes = delta("logsphere_wal_bytes_total");
        phase.flushes = delta("logsphere_flushes_total");
        let (p50, p99) = (
            percentile(&phase.latencies_us, 50.0),
            percentile(&phase.latencies_us, 99.0),
        );
        eprintln!(
            "  {senders} sender(s): {:.0} records/s, {:.1} MB/s, p50 {:.1} ms, p99 {:.1} ms, {:.0} fsyncs/s, {} Parquet flush(es) during the run",
            phase.records_per_s(),
            phase.mb_per_s(),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            phase.fsyncs_per_s(),
            phase.flushes
        );
        phases.push(phase);
    }
    let memory = server.memory()?;
    let metrics = server.metrics()?;
    server.stop()?;
    eprintln!("server memory after the run: {}", memory.describe());

    let raw = raw_fsync(work, &pool[0], Duration::from_secs(args.seconds))?;
    eprintln!(
        "  raw fdatasync'd appends of {} bytes, 1 writer: {:.0} appends/s, {:.1} MB/s",
        raw.append_bytes,
        raw.appends_per_s(),
        raw.mb_per_s()
    );

    let md = render(
        args,
        body_bytes,
        &phases,
        &raw,
        memory,
        &metrics,
        &load_before,
    );
    let path = report::write_results(&args.name, &md)?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Posts bodies from `pool` with `senders` threads for `duration`.
fn send_for(
    server: &Server,
    pool: &[Vec<u8>],
    senders: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let url = server.url("/v1/logs");
    let started = Instant::now();
    let deadline = started + duration;
    let per_sender: Vec<anyhow::Result<Sent>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders)
            .map(|id| {
                let agent = server.agent();
                let url = url.as_str();
                s.spawn(move || sender(&agent, url, pool, id, deadline))
            })
            .collect();
        crate::server::join_senders(handles)
    });
    let secs = started.elapsed().as_secs_f64();
    let mut phase = Phase {
        senders,
        requests: 0,
        records: 0,
        bytes: 0,
        secs,
        latencies_us: Vec::new(),
        wal_fsyncs: 0,
        wal_bytes: 0,
        flushes: 0,
    };
    for r in per_sender {
        let (requests, records, bytes, lat) = r?;
        phase.requests += requests;
        phase.records += records;
        phase.bytes += bytes;
        phase.latencies_us.extend(lat);
    }
    phase.latencies_us.sort_unstable();
    Ok(phase)
}

/// What one sender thread did: requests, records, bytes, and each request's latency (µs).
type Sent = (u64, u64, u64, Vec<u64>);

/// One sender: post, wait for the answer, repeat until `deadline`.
fn sender(
    agent: &ureq::Agent,
    url: &str,
    pool: &[Vec<u8>],
    id: usize,
    deadline: Instant,
) -> anyhow::Result<Sent> {
    let (mut requests, mut records, mut bytes) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut i = id * 7;
    while Instant::now() < deadline {
        let body = &pool[i % pool.len()];
        i += 1;
        let t = Instant::now();
        let accepted = post_logs(agent, url, body)?;
        latencies.push(t.elapsed().as_micros() as u64);
        requests += 1;
        records += accepted;
        bytes += body.len() as u64;
    }
    Ok((requests, records, bytes, latencies))
}

/// `POST /v1/logs`; returns the accepted count, and fails on any rejection or non-200.
pub fn post_logs(agent: &ureq::Agent, url: &str, body: &[u8]) -> anyhow::Result<u64> {
    let mut resp = agent
        .post(url)
        .header("content-type", "application/x-ndjson")
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("POST {url}: reading the answer"))?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status}: {text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("POST {url} answered {text:?}"))?;
    let rejected = v["rejected"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        rejected == 0,
        "POST {url}: {rejected} records rejected (the generator is broken): {text}"
    );
    v["accepted"]
        .as_u64()
        .with_context(|| format!("POST {url} answered {text:?}"))
}

/// Appends `chunk` to files in `dir`, each append followed by `fdatasync`, for `duration`.
/// Files roll over at 64 MiB like WAL segments, and the previous one is deleted to bound disk use.
fn raw_fsync(dir: &Path, chunk: &[u8], duration: Duration) -> anyhow::Result<Raw> {
    const SEGMENT: usize = 64 * 1024 * 1024;
    let open = |n: u64| -> anyhow::Result<(File, PathBuf)> {
        let path = dir.join(format!("raw-{n:06}.bin"));
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok((f, path))
    };
    let mut segment = 0;
    let (mut file, mut path) = open(segment)?;
    let mut written = 0usize;
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        if written + chunk.len() > SEGMENT {
            segment += 1;
            let (f, p) = open(segment)?;
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            (file, path, written) = (f, p, 0);
        }
        let t = Instant::now();
        file.write_all(chunk)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("cannot fdatasync {}", path.display()))?;
        latencies.push(t.elapsed().as_micros() as u64);
        written += chunk.len();
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    latencies.sort_unstable();
    Ok(Raw {
        append_bytes: chunk.len(),
        appends: latencies.len() as u64,
        secs,
        latencies_us: latencies,
    })
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn render(
    args: &IngestArgs,
    body_bytes: usize,
    phases: &[Phase],
    raw: &Raw,
    memory: Memory,
    metrics: &std::collections::HashMap<String, f64>,
    load_before: &str,
) -> String {
    let mut t = Table::new(&[
        "senders",
        "records/s",
        "MB/s",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "WAL fsyncs/s",
        "requests per fsync",
        "MB/s ÷ raw MB/s",
        "fsyncs/s ÷ raw appends/s",
        "Parquet flushes in the run",
    ]);
    for p in phases {
        t.row(vec![
            p.senders.to_string(),
            thousands(p.records_per_s() as u64),
            format!("{:.1}", p.mb_per_s()),
            format!("{:.0}", p.requests_per_s()),
            ms(percentile(&p.latencies_us, 50.0)),
            ms(percentile(&p.latencies_us, 99.0)),
            format!("{:.0}", p.fsyncs_per_s()),
            format!("{:.2}", p.requests as f64 / p.wal_fsyncs.max(1) as f64),
            format!("{:.2}", p.mb_per_s() / raw.mb_per_s()),
            format!("{:.2}", p.fsyncs_per_s() / raw.appends_per_s()),
            p.flushes.to_string(),
        ]);
    }
    let mut r = Table::new(&[
        "raw baseline (same disk, same dir)",
        "append bytes",
        "appends/s",
        "MB/s",
        "append+fdatasync p50 ms",
        "p99 ms",
    ]);
    r.row(vec![
        "1 writer, write + fdatasync per append".into(),
        thousands(raw.append_bytes as u64),
        format!("{:.0}", raw.appends_per_s()),
        format!("{:.1}", raw.mb_per_s()),
        ms(percentile(&raw.latencies_us, 50.0)),
        ms(percentile(&raw.latencies_us, 99.0)),
    ]);
    let wal_per_record = phases
        .iter()
        .map(|p| p.wal_bytes as f64 / p.records.max(1) as f64)
        .sum::<f64>()
        / phases.len() as f64;
    let flushes = metrics
        .get("logsphere_flushes_total")
        .copied()
        .unwrap_or(0.0);
    format!(
        "## LogSphere ingest benchmark ({})\n\n\
         Machine: {}. Load average before the run: {load_before}.\n\n\
         `POST /v1/logs`, {} NDJSON records per request ({} bytes, ~{RECORD_BYTES} bytes/record), \
         each sender waiting for the 200 (sent after the WAL fsync) before its next request; \
         {} s measured per sender count after a 1 s warm-up. MB = 10^6 bytes of NDJSON request body. \
         Server config: `{}`.\n\n{}\n{}\n\
         - Server memory after the run: {}.\n\
         - WAL bytes per record: {wal_per_record:.0} (Arrow IPC of the decoded batch; the NDJSON is {:.0}).\n\
         - Parquet flushes in all, warm-ups included: {flushes} (the hot buffer flushes at 1,000,000 rows).\n",
        report::now_utc(),
        report::machine(),
        args.batch,
        thousands(body_bytes as u64),
        args.seconds,
        server::CONFIG_TOML.trim().replace('\n', "; "),
        t.markdown(),
        r.markdown(),
        memory.describe(),
        body_bytes as f64 / args.batch as f64,
    )
}
