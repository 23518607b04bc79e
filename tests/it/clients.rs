//! Real PostgreSQL clients beyond tokio-postgres and psql: psycopg 3, psycopg2, asyncpg and
//! SQLAlchemy's inspector from the Python environment `scripts/test` builds
//! (`LOGSPHERE_PYTHON`), node-postgres, which the test installs with `npm ci`, and Go's pgx,
//! which the test builds with `go build`.

use std::path::PathBuf;
use std::process::Command;

use logsphere_tests::Server;

/// The Python of the clients venv (`LOGSPHERE_PYTHON`), shared by every test that runs a
/// Python client.
pub(crate) fn python() -> String {
    std::env::var("LOGSPHERE_PYTHON").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_PYTHON is not set: it names a python with the packages of \
             tests/clients/requirements.txt. scripts/test builds it; or run \
             `python3 -m venv ~/.cache/logsphere/py && ~/.cache/logsphere/py/bin/pip install -r \
             tests/clients/requirements.txt` and set LOGSPHERE_PYTHON=~/.cache/logsphere/py/bin/python"
        )
    })
}

/// Runs `tests/clients/<script> <pg port>` and asserts it exits 0 printing `ok_line`.
pub(crate) fn run_client_script(server: &Server, script: &str, ok_line: &str) {
    run_script_with(&python(), server, script, &[], ok_line);
}

/// [`run_client_script`] with another Python (another venv) and arguments after the port.
fn run_script_with(python: &str, server: &Server, script: &str, args: &[&str], ok_line: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let out = Command::new(python)
        .arg(&path)
        .arg(server.pg_port().to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
}

/// A server holding the five records the driver tests (Python, node-postgres, pgx) query.
fn server_with_client_records() -> Server {
    let server = Server::start();
    let body = concat!(
        "{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"msg\":\"a\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T10:05:00Z\",\"level\":\"error\",\"msg\":\"b\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T11:00:00Z\",\"level\":\"info\",\"msg\":\"c\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T12:00:00Z\",\"level\":\"error\",\"msg\":\"d\",\"host\":\"web-2\"}\n",
        "{\"ts\":\"2026-11-24T13:00:00Z\",\"level\":\"fatal\",\"msg\":\"disk full\",\"host\":\"web-1\"}\n",
    );
    server.post_expect(body.as_bytes(), 5, 0);
    server
}

#[test]
fn python_clients_query_with_bound_parameters() {
    let server = server_with_client_records();
    run_client_script(&server, "python_clients.py", "all python clients ok");
}

fn inspector_server() -> Server {
    let server = Server::start();
    let body = concat!(
        "{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"msg\":\"a\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T10:05:00Z\",\"level\":\"info\",\"msg\":\"b\",\"host\":\"web-2\"}\n",
    );
    server.post_expect(body.as_bytes(), 2, 0);
    server
}

/// SQLAlchemy 2.0's inspector over psycopg2 and psycopg 3 (the clients venv).
#[test]
fn sqlalchemy_inspector_reflects_logs() {
    let server = inspector_server();
    run_script_with(
        &python(),
        &server,
        "sqlalchemy_inspect.py",
        &["2.0"],
        "sqlalchemy ok",
    );
}

/// SQLAlchemy 1.4's inspector over psycopg2: the Superset venv's (Superset 6.1 pins 1.4),
/// whose index and key queries differ from 2.0's.
#[test]
fn sqlalchemy_1_4_inspector_reflects_logs() {
    let server = inspector_server();
    run_script_with(
        &crate::superset::superset_python(),
        &server,
        "sqlalchemy_inspect.py",
        &["1.4"],
        "sqlalchemy ok",
    );
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    logsphere_tests::run_ok(cmd, what, "Node.js 18+ and npm")
}

/// node-postgres (`pg` from npm, pinned by tests/clients/node/package-lock.json): connect,
/// bound parameters (text, a `Date`, a NULL), a `timestamptz` read back as a `Date`, NULL
/// values, the simple protocol and an error's SQLSTATE.
#[test]
fn node_postgres_queries_with_bound_parameters() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/node");
    // Installed outside the source tree: `npm ci` wipes and refills node_modules.
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-clients");
    std::fs::create_dir_all(&work).expect("node work dir");
    for file in ["package.json", "package-lock.json", "node_clients.js"] {
        std::fs::copy(src.join(file), work.join(file)).expect("copy node client");
    }
    let npm = std::env::var("LOGSPHERE_NPM").unwrap_or_else(|_| "npm".to_owned());
    run_ok(
        Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&work),
        "npm ci",
    );

    let server = server_with_client_records();
    let out = Command::new("node")
        .arg(work.join("node_clients.js"))
        .arg(server.pg_port().to_string())
        .output()
        .expect("run node (needs Node.js 18+)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("node clients ok"),
        "node_clients.js failed:\n{stdout}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

/// pgx (github.com/jackc/pgx/v5, the driver of Grafana's PostgreSQL data source, pinned by
/// tests/clients/pgx/go.sum): bound text, int, timestamptz and NULL parameters, column
/// names and type OIDs (`count` int8, `min` timestamptz), a timestamptz read as a
/// `time.Time`, a Grafana time-series query (macros expanded), the simple protocol and an
/// error's SQLSTATE. The program is built into the
/// target dir with `go build` (`LOGSPHERE_GO`, default `go`); modules come from the Go module
/// proxy into a cache under ~/.cache/logsphere/go.
#[test]
fn pgx_queries_with_bound_parameters() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/pgx");
    let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pgx_clients");
    let cache = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned()))
        .join(".cache/logsphere/go");
    let go = std::env::var("LOGSPHERE_GO").unwrap_or_else(|_| "go".to_owned());
    logsphere_tests::run_ok(
        Command::new(go)
            .args(["build", "-mod=readonly", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GOPATH", &cache)
            .env("GOMODCACHE", cache.join("mod"))
            .env("GOCACHE", cache.join("build"))
            .env("GOFLAGS", "-modcacherw")
            // The installed toolchain, never one downloaded for go.mod's `go` line.
            .env("GOTOOLCHAIN", "local"),
        "go build tests/clients/pgx",
        "Go 1.25+ on PATH",
    );

    let server = server_with_client_records();
    let out = Command::new(&bin)
        .arg(server.pg_port().to_string())
        .output()
        .expect("run pgx_clients");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pgx clients ok"),
        "pgx_clients failed:\n{stdout}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}
