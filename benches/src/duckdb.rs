//! DuckDB (the Python package) as the peer: installed into `benches/.venv` on first use.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The timing script, embedded so the binary runs from any directory.
const SCRIPT: &str = include_str!("duckdb_bench.py");

/// One query's DuckDB runs.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Milliseconds per measured run.
    pub times_ms: Vec<f64>,
    /// Rows of the last run, each cell as JSON (timestamps as epoch µs).
    pub rows: Vec<Vec<Value>>,
}

/// What the DuckDB side reported.
#[derive(Debug, Clone)]
pub struct Report {
    /// `duckdb.__version__`.
    pub version: String,
    /// DuckDB's `threads` setting.
    pub threads: String,
    /// Per query, in the order asked.
    pub queries: Vec<Timed>,
}

/// The default virtualenv: `benches/.venv`.
pub fn default_venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv")
}

/// A Python that can `import duckdb`: `python` if given, else the venv's, creating the
/// venv (`python3 -m venv`) and installing `duckdb` into it with pip when missing.
pub fn ensure_python(python: Option<&Path>, venv: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = python {
        check_import(p)
            .with_context(|| format!("--python {} cannot import duckdb", p.display()))?;
        return Ok(p.to_path_buf());
    }
    let py = venv.join("bin").join("python");
    if py.is_file() && check_import(&py).is_ok() {
        return Ok(py);
    }
    if !py.is_file() {
        eprintln!("duckdb: creating {} (python3 -m venv)", venv.display());
        run(
            Command::new("python3").arg("-m").arg("venv").arg(venv),
            "python3 -m venv",
        )?;
    }
    eprintln!("duckdb: pip install duckdb into {}", venv.display());
    run(
        Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "duckdb",
        ]),
        "pip install duckdb",
    )?;
    check_import(&py)?;
    Ok(py)
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

fn check_import(python: &Path) -> anyhow::Result<()> {
    let out = Command::new(python)
        .args(["-c", "import duckdb"])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "import duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs `queries` (name, SQL over the view `logs`) with DuckDB over the Parquet files of `glob`.
pub fn time_queries(
    python: &Path,
    glob: &str,
    queries: &[(&str, String)],
    warmup: usize,
    runs: usize,
) -> anyhow::Result<Report> {
    let job = json!({
        "glob": glob,
        "warmup": warmup,
        "runs": runs,
        "queries": queries.iter().map(|(name, sql)| json!({ "name": name, "sql": sql })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", python.display()))?;
    child
        .stdin
        .take()
        .context("no stdin for the DuckDB script")?
        .write_all(job.to_string().as_bytes())
        .context("cannot send the job to the DuckDB script")?;
    let out = child
        .wait_with_output()
        .context("the DuckDB script did not finish")?;
    if !out.status.success() {
        bail!(
            "the DuckDB script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).context("the DuckDB script printed no JSON")?;
    let queries = v["queries"]
        .as_array()
        .context("DuckDB script output has no queries")?
        .iter()
        .map(|q| Timed {
            times_ms: q["times_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
            rows: q["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| r.as_array().cloned().unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(Report {
        version: v["version"].as_str().unwrap_or("?").to_string(),
        threads: v["threads"].to_string(),
        queries,
    })
}
