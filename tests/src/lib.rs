//! Test harness shared by the integration tests: the real `logsphere` binary on free
//! ports with its own data directory, and the endpoints of the local services.

pub mod receiver;
pub mod services;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The resident memory of process `pid` in bytes, from /proc (0 when it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Path of the `logsphere` binary: `LOGSPHERE_BIN`, or beside this test executable's
/// `deps/` directory (`cargo build -p logsphere-server`, which `scripts/test` runs).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("LOGSPHERE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("logsphere");
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build -p logsphere-server` (scripts/test does) \
         or point LOGSPHERE_BIN at it",
        bin.display()
    );
    bin
}

/// How to start a server.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {
    /// A TOML config file's text; ports and data dir still come from flags.
    pub config: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A running `logsphere serve`, stopped (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pg_port: u16,
    http_port: u16,
    options: ServerOptions,
    starts: u32,
    /// `start_in`: the data directory, instead of one in `dir`.
    data_dir: Option<PathBuf>,
}

impl Server {
    /// Starts an embedded server with defaults.
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with a config file holding `toml`.
    pub fn start_with_config(toml: &str) -> Self {
        Self::start_with(ServerOptions {
            config: Some(toml.to_string()),
            ..Default::default()
        })
    }

    /// Starts a server with `options`.
    pub fn start_with(options: ServerOptions) -> Self {
        Self::start_in(options, None)
    }

    /// Starts a server with `options` on the data directory `data_dir` (e.g. a small
    /// file system the test mounted), or one of its own when `None`.
    pub fn start_in(options: ServerOptions, data_dir: Option<PathBuf>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("logsphere-test-")
            .tempdir()
            .expect("temp dir");
        let mut s = Self {
            child: None,
            dir,
            pg_port: free_port(),
            http_port: free_port(),
            options,
            starts: 0,
            data_dir,
        };
        // A port `free_port` found free can be taken (e.g. as the local port of some
        // outgoing connection) before the server binds it: a first start then picks others.
        for attempt in 1.. {
            match s.try_spawn() {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("Address already in use") => {
                    s.pg_port = free_port();
                    s.http_port = free_port();
                }
                Err(log) => panic!("{log}"),
            }
        }
        s
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.starts))
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("{log}");
        }
    }

    /// Starts the process and waits until it is ready; `Err` holds why it exited first.
    fn try_spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut cmd = Command::new(binary());
        cmd.arg("serve");
        if let Some(cfg) = &self.options.config {
            let path = self.dir.path().join("logsphere.toml");
            std::fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--pg-listen")
            .arg(format!("127.0.0.1:{}", self.pg_port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .env("LOGSPHERE_LOG", "info")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn logsphere"));
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut r) = ureq::get(&format!("{}/healthz", self.http_url())).call()
                && r.status() == 200
                && r.body_mut().read_to_string().is_ok()
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "logsphere exited with {status} before it was ready:\n{}",
                    self.log()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "logsphere not ready after 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// This run's server log.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The server's process id (`None` while it is stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The PostgreSQL port.
    pub fn pg_port(&self) -> u16 {
        self.pg_port
    }

    /// The HTTP base URL.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// A connected tokio-postgres client (user `logsphere`, no password).
    pub async fn pg_client(&self) -> tokio_postgres::Client {
        self.pg_client_as("logsphere", None)
            .await
            .expect("connect over the PostgreSQL protocol")
    }

    /// A client for `user` with an optional password.
    pub async fn pg_client_as(
        &self,
        user: &str,
        password: Option<&str>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.pg_port)
            .user(user)
            .dbname("logsphere")
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = password {
            cfg.password(p);
        }
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// POSTs `body` to `/v1/logs`; returns the status and the body.
    pub fn post(&self, body: &[u8], key: Option<&str>) -> Result<(u16, String), String> {
        post_logs(&self.http_url(), body, key)
    }

    /// POSTs `body` and asserts the answer is `200 {"accepted":A,"rejected":R}`.
    pub fn post_expect(&self, body: &[u8], accepted: usize, rejected: usize) {
        let answer = self
            .post(body, None)
            .unwrap_or_else(|e| panic!("POST /v1/logs: {e}"));
        let want = format!("{{\"accepted\":{accepted},\"rejected\":{rejected}}}");
        assert_eq!(answer, (200, want), "POST /v1/logs");
    }

    /// Flushes the hot buffer to Parquet (`POST /v1/flush`); returns the rows moved.
    pub fn flush(&self) -> u64 {
        flush_rows(&self.http_url(), Duration::from_secs(300))
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Starts the server again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One `i64` from a query (e.g. `SELECT count(*) FROM logs`), over the pg protocol.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        let client = self.pg_client().await;
        let row = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.get(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `POST <base>/v1/flush` (cluster mode: a tiering round): the status and the body, or why
/// no answer came within `timeout`.
pub fn post_flush(base: &str, timeout: Duration) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{base}/v1/flush"))
        .send_empty()
        .map_err(|e| e.to_string())?;
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok((resp.status().as_u16(), text))
}

/// `POST <base>/v1/flush`, asserting a 200; the rows it moved.
pub fn flush_rows(base: &str, timeout: Duration) -> u64 {
    let (status, text) =
        post_flush(base, timeout).unwrap_or_else(|e| panic!("POST /v1/flush: {e}"));
    assert_eq!(status, 200, "POST /v1/flush: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["flushed_rows"]
        .as_u64()
        .unwrap_or_else(|| panic!("POST /v1/flush answered {text}"))
}

/// POSTs NDJSON to `<base>/v1/logs` with an optional `Idempotency-Key`.
pub fn post_logs(base: &str, body: &[u8], key: Option<&str>) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent
        .post(&format!("{base}/v1/logs"))
        .header("Content-Type", "application/x-ndjson");
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let mut resp = req.send(body).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// Runs `cmd`, panicking with its output unless it exits 0 (`needs` names what must be
/// installed when it cannot start); returns stdout.
pub fn run_ok(cmd: &mut std::process::Command, what: &str, needs: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (needs {needs})"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
