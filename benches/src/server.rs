//! A `logsphere serve` child process on free loopback ports, and what we ask of it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The storage settings every bench run uses (the defaults of `logsphere.example.toml`).
pub const CONFIG_TOML: &str = "[storage]\nflush_interval_secs = 300\nflush_max_rows = 1000000\n";

/// A running server; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    /// HTTP ingest address.
    pub http: SocketAddr,
    /// PostgreSQL protocol address.
    pub pg: SocketAddr,
    /// Where the server's stderr goes.
    pub log: PathBuf,
    agent: ureq::Agent,
}

/// Memory of the server process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Peak resident set size (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Current resident set size (VmRSS), KiB.
    pub rss_kib: u64,
}

impl Memory {
    /// `peak 512 MiB, now 300 MiB`.
    pub fn describe(&self) -> String {
        format!(
            "peak (VmHWM) {:.0} MiB, current (VmRSS) {:.0} MiB",
            self.hwm_kib as f64 / 1024.0,
            self.rss_kib as f64 / 1024.0
        )
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a free loopback port")?;
    l.local_addr().context("cannot read the bound port")
}

impl Server {
    /// Starts `bin serve` on `data_dir` with [`CONFIG_TOML`] (written to `work_dir`), and waits
    /// until both listeners answer (WAL replay of a reused dataset can take a while).
    pub fn start(bin: &Path, work_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_config(bin, work_dir, data_dir, CONFIG_TOML)
    }

    /// Starts `bin serve` with `config_toml` as its config file.
    pub fn start_with_config(
        bin: &Path,
        work_dir: &Path,
        data_dir: &Path,
        config_toml: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bin.is_file(),
            "--bin {} is not a file; build it with `cargo build --release -p logsphere-server`",
            bin.display()
        );
        let config = work_dir.join("logsphere.toml");
        std::fs::write(&config, config_toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let log = work_dir.join("server.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let (http, pg) = (free_port()?, free_port()?);
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--pg-listen")
            .arg(pg.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .env("LOGSPHERE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(900)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut server = Self {
            child: Some(child),
            http,
            pg,
            log,
            agent,
        };
        server.wait_ready(Duration::from_secs(600))?;
        Ok(server)
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("cannot poll the server process")?
            {
                bail!(
                    "the server exited during start-up ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            let pg_up = TcpStream::connect_timeout(&self.pg, Duration::from_millis(200)).is_ok();
            if pg_up && self.get("/healthz").is_ok() {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "the server did not answer within {limit:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A blocking HTTP agent for this server (each sender thread clones one).
    pub fn agent(&self) -> ureq::Agent {
        self.agent.clone()
    }

    /// `http://127.0.0.1:port/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut resp = self
            .agent
            .get(self.url(path))
            .call()
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("GET {path}: reading the body"))?;
        anyhow::ensure!(status.is_success(), "GET {path}: {status}: {body}");
        Ok(body)
    }

    /// `POST /v1/flush`; returns the rows moved to Parquet.
    pub fn flush(&self) -> anyhow::Result<u64> {
        let mut resp = self
            .agent
            .post(self.url("/v1/flush"))
            .send_empty()
            .context("POST /v1/flush")?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .context("POST /v1/flush: reading the body")?;
        anyhow::ensure!(status.is_success(), "POST /v1/flush: {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("POST /v1/flush answered {body:?}"))?;
        v["flushed_rows"]
            .as_u64()
            .with_context(|| format!("POST /v1/flush answered {body:?}"))
    }

    /// The counters and gauges of `GET /metrics`, by name.
    pub fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let text = self.get("/metrics")?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect())
    }

    /// Peak and current RSS of the server process.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            hwm_kib: field("VmHWM:"),
            rss_kib: field("VmRSS:"),
        })
    }

    /// Stops the server with SIGTERM (it syncs the WAL and exits) and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(&mut child, Duration::from_secs(120))
    }
}

fn terminate(child: &mut Child, grace: Duration) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("server pid out of range")?;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped), and a valid signal.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("cannot poll the server process")? {
            anyhow::ensure!(
                status.success(),
                "the server exited with {status} after SIGTERM"
            );
            return Ok(());
        }
        if started.elapsed() > grace {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not stop within {grace:?} of SIGTERM; killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child, Duration::from_secs(30));
        }
    }
}

/// Joins scoped sender threads, turning a panic into an error.
pub fn join_senders<T>(
    handles: Vec<std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>>,
) -> Vec<anyhow::Result<T>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender thread panicked")))
        })
        .collect()
}
