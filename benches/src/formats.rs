//! `formats`: records/s and records per CPU-second of the server for each text format,
//! beside JSON, through `POST /v1/logs` on one server in one run (issue "Real logs in",
//! Benchmarks).
//!
//! The lines are real ones no one here wrote where a dataset has them (the Loghub 2k
//! samples and the Apache access log, in the folder `--datasets` names): `syslog` is
//! Linux's `/var/log/messages` (RFC 3164 without PRI), `access` the Apache access log,
//! `app` Spark's, Hadoop's and Zookeeper's layouts, `auto` all of those mixed. JSON and
//! `logfmt` are the ingest bench's generated records, written both ways. Each format's
//! requests carry `--batch` lines, posted back to back by `--senders` threads for
//! `--seconds`; every request is acknowledged after the WAL fsync, as always. The server's
//! CPU time (utime + stime of its process) over the run gives records per CPU-second,
//! which is what "per core" means on a machine whose cores the senders share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cq::post_closed_loop;
use crate::records::{Rng, hosts, write_record};
use crate::report::{self, Table, thousands};
use crate::server::{self, Server};

/// Arguments of `logsphere-bench formats`.
#[derive(Debug, clap::Args)]
pub struct FormatsArgs {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    bin: PathBuf,
    /// The shared datasets folder (`loghub-2k/`, `apache-access/`).
    #[arg(long, env = "LOGSPHERE_DATASETS")]
    datasets: PathBuf,
    /// Lines per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Sender threads.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Seconds per format.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Directory for the temporary data directory [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "formats")]
    name: String,
    /// Keep the temporary directory afterwards.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: FormatsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.batch > 0 && args.senders > 0 && args.seconds > 0,
        "--batch, --senders and --seconds must be positive"
    );
    report::in_work_dir(args.dir.as_deref(), "formats", args.keep, |work| {
        run_in(&args, work)
    })
}

/// The lines of a dataset file (without empty ones).
fn lines_of(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (is --datasets right?)", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// `count` request bodies of `batch` lines each, cycling through `lines`.
fn bodies(lines: &[String], batch: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|b| {
            let mut body = Vec::new();
            for i in 0..batch {
                body.extend_from_slice(lines[(b * batch + i) % lines.len()].as_bytes());
                body.push(b'\n');
            }
            body
        })
        .collect()
}

/// The bench's generated records as JSON lines and as logfmt lines.
fn generated(n: usize) -> (Vec<String>, Vec<String>) {
    let hosts = hosts();
    let mut rng = Rng::new(7);
    let now = chrono::Utc::now().timestamp_micros();
    let mut json = Vec::with_capacity(n);
    let mut logfmt = Vec::with_capacity(n);
    for i in 0..n {
        let mut line = Vec::new();
        write_record(&mut line, now + i as i64 * 1000, &mut rng, &hosts);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let mut out = String::new();
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    let val = match val {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let key = if k == "message" { "msg" } else { k.as_str() };
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    if val.contains([' ', '"', '=']) {
                        out.push_str(&format!("{key}={val:?}"));
                    } else {
                        out.push_str(&format!("{key}={val}"));
                    }
                }
            }
            logfmt.push(out);
        }
        json.push(text);
    }
    (json, logfmt)
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse::<f64>()
            .context("a non-numeric CPU time")
    };
    // utime and stime are fields 14 and 15 of stat; here 0-based after the ')': 11, 12.
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

struct Measured {
    records: u64,
    bytes: u64,
    secs: f64,
    cpu: f64,
}

fn measure(
    server: &Server,
    format: &str,
    pool: &[Vec<u8>],
    args: &FormatsArgs,
) -> anyhow::Result<Measured> {
    let url = if format == "json" {
        server.url("/v1/logs")
    } else {
        server.url(&format!("/v1/logs?format={format}&source=bench"))
    };
    let cpu_before = cpu_secs(server.pid())?;
    let sent = post_closed_loop(
        server,
        &url,
        pool,
        args.senders,
        Duration::from_secs(args.seconds),
    )?;
    Ok(Measured {
        records: sent.records,
        bytes: sent.bytes,
        secs: sent.secs,
        cpu: cpu_secs(server.pid())? - cpu_before,
    })
}

fn run_in(args: &FormatsArgs, work: &Path) -> anyhow::Result<()> {
    let load_before = report::load_average();
    let loghub = args.datasets.join("loghub-2k");
    let syslog = lines_of(&loghub.join("Linux").join("Linux_2k.log"))?;
    let access = lines_of(&args.datasets.join("apache-access").join("apache_logs"))?;
    let mut app = Vec::new();
    for system in ["Spark", "Hadoop", "Zookeeper"] {
        app.extend(lines_of(
            &loghub.join(system).join(format!("{system}_2k.log")),
        )?);
    }
    let (json, logfmt) = generated(20_000);
    let mut auto: Vec<String> = Vec::new();
    for i in 0..4_000 {
        auto.push(match i % 4 {
            0 => syslog[i % syslog.len()].clone(),
            1 => access[i % access.len()].clone(),
            2 => app[i % app.len()].clone(),
            _ => json[i % json.len()].clone(),
        });
    }
    let formats: Vec<(&str, &str, Vec<String>)> = vec![
        ("json", "generated bench records (~200 B)", json),
        ("syslog", "Loghub Linux (RFC 3164, no PRI)", syslog),
        ("access", "Apache access log (combined)", access),
        ("logfmt", "the JSON records as logfmt", logfmt),
        ("app", "Loghub Spark, Hadoop, Zookeeper", app),
        ("auto", "syslog, access, app and JSON lines mixed", auto),
        ("text", "the access log, unparsed", vec![]),
    ];
    let server = Server::start(&args.bin, work, &work.join("data"))?;
    let mut table = Table::new(&[
        "format",
        "lines",
        "records/s",
        "MB/s",
        "÷ JSON records/s",
        "server CPU s per s",
        "records per server CPU-second",
        "÷ JSON",
    ]);
    let mut json_rate = None;
    let mut json_per_cpu = None;
    for (format, what, lines) in &formats {
        let lines = if lines.is_empty() {
            &formats[2].2
        } else {
            lines
        };
        let pool = bodies(lines, args.batch, 32);
        let m = measure(&server, format, &pool, args)?;
        let rate = m.records as f64 / m.secs;
        let per_cpu = m.records as f64 / m.cpu.max(1e-9);
        let json_rate = *json_rate.get_or_insert(rate);
        let json_per_cpu = *json_per_cpu.get_or_insert(per_cpu);
        eprintln!(
            "formats: {format}: {rate:.0} records/s, {:.0} records per CPU-second",
            per_cpu
        );
        table.row(vec![
            format!("`{format}`"),
            what.to_string(),
            thousands(rate as u64),
            format!("{:.1}", m.bytes as f64 / 1e6 / m.secs),
            format!("{:.2}", rate / json_rate),
            format!("{:.2}", m.cpu / m.secs),
            thousands(per_cpu as u64),
            format!("{:.2}", per_cpu / json_per_cpu),
        ]);
    }
    let memory = server.memory()?;
    server.stop()?;
    let md = format!(
        "## LogSphere formats benchmark ({})\n\n\
         Machine: {}. Load average before the run: {load_before}. Server config: `{}`.\n\n\
         One server; per format, {} senders post {} lines per request back to back for {} s \
         to `POST /v1/logs?format=…` (JSON without the parameter); each request is answered \
         after the WAL fsync. \"Server CPU s per s\" is the server process's utime + stime \
         over the run divided by its length (2.0 = both cores); records per server \
         CPU-second is the cost of a record through decode, WAL and hot buffer, whatever the \
         senders took.\n\n{}\n\
         - Server memory after the run: {}.\n\n\
         Load average after the run: {}.\n",
        report::now_utc(),
        report::machine(),
        server::CONFIG_TOML.trim().replace('\n', "; "),
        args.senders,
        args.batch,
        args.seconds,
        table.markdown(),
        memory.describe(),
        report::load_average(),
    );
    report::publish(&args.name, &md)
}
