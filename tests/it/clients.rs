//! Real PostgreSQL clients beyond tokio-postgres and psql: psycopg 3, psycopg2, asyncpg and
//! SQLAlchemy's inspector,
//! from the Python environment `scripts/test` builds (`LOGSPHERE_PYTHON`).

use std::path::PathBuf;
use std::process::Command;

use logsphere_tests::Server;

fn python() -> String {
    std::env::var("LOGSPHERE_PYTHON").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_PYTHON is not set: it names a python with psycopg, psycopg2 and asyncpg \
             (tests/clients/requirements.txt). scripts/test builds it; or run \
             `python3 -m venv ~/.cache/logsphere/py && ~/.cache/logsphere/py/bin/pip install -r \
             tests/clients/requirements.txt` and set LOGSPHERE_PYTHON=~/.cache/logsphere/py/bin/python"
        )
    })
}

#[test]
fn python_clients_query_with_bound_parameters() {
    let python = python();
    let server = Server::start();
    let body = concat!(
        "{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"msg\":\"a\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T10:05:00Z\",\"level\":\"error\",\"msg\":\"b\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T11:00:00Z\",\"level\":\"info\",\"msg\":\"c\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T12:00:00Z\",\"level\":\"error\",\"msg\":\"d\",\"host\":\"web-2\"}\n",
        "{\"ts\":\"2026-11-24T13:00:00Z\",\"level\":\"fatal\",\"msg\":\"disk full\",\"host\":\"web-1\"}\n",
    );
    let (status, text) = server.post(body.as_bytes(), None).unwrap();
    assert_eq!(status, 200, "{text}");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/python_clients.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.pg_port().to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python clients failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
    assert!(stdout.contains("all python clients ok"), "{stdout}");
}

#[test]
fn sqlalchemy_inspector_reflects_logs() {
    let python = python();
    let server = Server::start();
    let body = concat!(
        "{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"msg\":\"a\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T10:05:00Z\",\"level\":\"info\",\"msg\":\"b\",\"host\":\"web-2\"}\n",
    );
    let (status, text) = server.post(body.as_bytes(), None).unwrap();
    assert_eq!(status, 200, "{text}");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/sqlalchemy_inspect.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.pg_port().to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sqlalchemy failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
    assert!(stdout.contains("sqlalchemy ok"), "{stdout}");
}
