//! `roundtrip`: the client round trip of a tiny query over the extended protocol with a
//! prepared statement, LogSphere beside PostgreSQL on the same machine in the same run
//! (issue "Every PostgreSQL client and BI tool", Benchmark).
//!
//! Two statements, each prepared once and executed `--runs` times after a warm-up, one
//! client, one at a time, so each time is the whole round trip (Bind, Execute, Sync and the
//! answer): `SELECT 1`, and a one-row point query with a parameter. PostgreSQL's point
//! query reads its table by primary key; LogSphere's reads `logs` (a few thousand rows,
//! hot) by `source` and `message`. PostgreSQL (Debian's `postgresql` package) is started
//! by the bench in its work directory, as the `postgres` user when the bench runs as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::report::{self, Table, percentile};
use crate::server::Server;

/// Arguments of `logsphere-bench roundtrip`.
#[derive(Debug, clap::Args)]
pub struct RoundtripArgs {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    bin: PathBuf,
    /// PostgreSQL's binaries (initdb, postgres).
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
    /// Executions per statement, after as many warm-up ones.
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    /// Directory for the temporary data directories [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "roundtrip")]
    name: String,
    /// Keep the temporary directory afterwards.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: RoundtripArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be positive");
    report::in_work_dir(args.dir.as_deref(), "roundtrip", args.keep, |work| {
        run_in(&args, work)
    })
}

/// A PostgreSQL server in `data`, stopped when dropped.
struct Postgres {
    child: Child,
    data: PathBuf,
    port: u16,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The postmaster's pid is the first line of postmaster.pid (the child may be
        // `runuser`, which does not pass signals on). SIGINT: PostgreSQL's fast shutdown.
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        let pid = pid.unwrap_or(self.child.id() as i32);
        // SAFETY: kill takes no pointers.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let _ = self.child.wait();
    }
}

/// `cmd` as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid takes no arguments.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_postgres(pg_bin: &Path, dir: &Path) -> anyhow::Result<Postgres> {
    let data = dir.join("pgdata");
    std::fs::create_dir_all(dir)?;
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .context("chown the PostgreSQL directory")?;
        anyhow::ensure!(status.success(), "chown {} failed", dir.display());
    }
    let out = as_postgres(&pg_bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["--auth=trust", "-U", "postgres", "--no-sync"])
        .output()
        .with_context(|| format!("cannot run {}/initdb", pg_bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    let child = as_postgres(&pg_bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}/postgres", pg_bin.display()))?;
    let pg = Postgres { child, data, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "PostgreSQL not listening after 30 s; see {}",
            dir.join("postgres.log").display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pg)
}

/// Per statement, the round-trip times in µs.
type Times = Vec<(&'static str, Vec<u64>)>;

/// Prepares `SELECT 1` and `point` (with one text parameter `key`) on `conn` and executes
/// each `runs` times after `runs` warm-ups.
async fn measure(conn: &str, point: &str, key: &str, runs: usize) -> anyhow::Result<Times> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {conn}"))?;
    tokio::spawn(connection);
    let mut out = Vec::new();
    for (name, sql) in [("SELECT 1", "SELECT 1"), ("point query ($1)", point)] {
        let statement = client.prepare(sql).await.with_context(|| sql.to_string())?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            if statement.params().is_empty() {
                vec![]
            } else {
                vec![&key]
            };
        let mut times = Vec::with_capacity(runs);
        for i in 0..2 * runs {
            let t = Instant::now();
            let rows = client.query(&statement, &params).await?;
            let us = t.elapsed().as_micros() as u64;
            anyhow::ensure!(rows.len() == 1, "{sql}: {} rows, wanted 1", rows.len());
            if i >= runs {
                times.push(us);
            }
        }
        times.sort_unstable();
        out.push((name, times));
    }
    Ok(out)
}

fn run_in(args: &RoundtripArgs, work: &Path) -> anyhow::Result<()> {
    let load_before = report::load_average();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    // LogSphere: a few thousand hot rows.
    let server = Server::start(&args.bin, work, &work.join("data"))?;
    let body: String = (0..5_000)
        .map(|i| {
            format!(
                "{{\"level\":\"INFO\",\"source\":\"web-{}\",\"message\":\"request {i}\"}}\n",
                i % 50
            )
        })
        .collect();
    let accepted =
        crate::ingest::post_logs(&server.agent(), &server.url("/v1/logs"), body.as_bytes())?;
    anyhow::ensure!(accepted == 5_000, "{accepted} of 5000 records accepted");
    let conn = format!(
        "host={} port={} user=logsphere dbname=logsphere",
        server.pg.ip(),
        server.pg.port()
    );
    let ours = runtime.block_on(measure(
        &conn,
        "SELECT source FROM logs WHERE message = $1",
        "request 4242",
        args.runs,
    ))?;
    let memory = server.memory()?;
    server.stop()?;

    eprintln!("roundtrip: LogSphere measured; starting PostgreSQL");
    let pg = start_postgres(&args.pg_bin, &work.join("postgres"))?;
    eprintln!("roundtrip: PostgreSQL on port {}", pg.port);
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port
    );
    let theirs = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE logs (message text PRIMARY KEY, source text); \
                 INSERT INTO logs SELECT 'request ' || i, 'web-' || (i % 50) \
                 FROM generate_series(0, 4999) AS i; ANALYZE logs;",
            )
            .await?;
        eprintln!("roundtrip: PostgreSQL table ready");
        measure(
            &conn,
            "SELECT source FROM logs WHERE message = $1",
            "request 4242",
            args.runs,
        )
        .await
    })?;
    drop(pg);

    let mut table = Table::new(&[
        "statement",
        "LogSphere p50 µs",
        "p99 µs",
        "PostgreSQL p50 µs",
        "p99 µs",
        "p50 ÷",
        "p99 ÷",
    ]);
    let mut ratios = Vec::new();
    for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
        let (a50, a99) = (percentile(a, 50.0), percentile(a, 99.0));
        let (b50, b99) = (percentile(b, 50.0), percentile(b, 99.0));
        let r50 = a50 as f64 / b50.max(1) as f64;
        ratios.push(format!("{name} {r50:.2}×"));
        table.row(vec![
            (*name).to_string(),
            a50.to_string(),
            a99.to_string(),
            b50.to_string(),
            b99.to_string(),
            format!("{r50:.2}"),
            format!("{:.2}", a99 as f64 / b99.max(1) as f64),
        ]);
    }
    let md = format!(
        "## LogSphere round trip beside PostgreSQL ({})\n\n\
         Machine: {}. Load average before the run: {load_before}.\n\n\
         One tokio-postgres client, extended protocol, each statement prepared once and \
         executed {} times after as many warm-ups, one at a time. Point query: `SELECT source \
         FROM logs WHERE message = $1` over 5,000 rows (LogSphere: hot; PostgreSQL 15: a \
         table with that primary key). Both servers with their defaults, one after the other \
         on this machine.\n\n{}\n\
         - p50, LogSphere ÷ PostgreSQL: {} (goal ≤ 1.5×).\n\
         - LogSphere memory after its runs: {}.\n\n\
         Load average after the run: {}.\n",
        report::now_utc(),
        report::machine(),
        args.runs,
        table.markdown(),
        ratios.join(", "),
        memory.describe(),
        report::load_average(),
    );
    report::publish(&args.name, &md)
}
