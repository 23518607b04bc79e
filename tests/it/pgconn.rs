//! Connection and session features of the PostgreSQL protocol, with real clients against
//! the real binary: SQL cursors, CancelRequest, `statement_timeout`, `application_name` and
//! `pg_stat_activity`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use logsphere_tests::Server;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The first column of every row of a simple query, as text.
fn first_column(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

/// The row counts of the CommandComplete messages (FETCH n, MOVE n, …).
fn counts(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

fn code(e: &tokio_postgres::Error) -> SqlState {
    e.code()
        .cloned()
        .unwrap_or_else(|| panic!("no SQLSTATE: {e:?}"))
}

/// Ten thousand numbers, in order.
const SERIES: &str = "SELECT value AS n FROM generate_series(1, 10000) AS t ORDER BY value";

/// A query that runs far longer than any test waits (counting 10^10 generated rows). A
/// scan that yields to the runtime, as every table scan does: a CPU-bound operator that
/// never yields (a huge cross join) holds its worker thread until it does.
const SLOW: &str = "SELECT count(*) FROM generate_series(1, 10000000000) AS t";

#[tokio::test]
async fn cursors_fetch_move_and_close_in_transactions() {
    let server = Server::start();
    let client = server.pg_client().await;

    // WITHOUT HOLD needs a transaction block.
    let e = client
        .simple_query(&format!("DECLARE c CURSOR FOR {SERIES}"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::NO_ACTIVE_SQL_TRANSACTION, "{e}");

    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!("DECLARE c NO SCROLL CURSOR FOR {SERIES}"))
        .await
        .unwrap();
    let m = client.simple_query("FETCH 3 FROM c").await.unwrap();
    assert_eq!(first_column(&m), ["1", "2", "3"]);
    assert_eq!(counts(&m), [3]);
    let m = client.simple_query("MOVE 5 IN c").await.unwrap();
    assert_eq!(counts(&m), [5]);
    let m = client.simple_query("FETCH NEXT FROM c").await.unwrap();
    assert_eq!(first_column(&m), ["9"]);
    let m = client.simple_query("FETCH FORWARD 2 c").await.unwrap();
    assert_eq!(first_column(&m), ["10", "11"]);
    // Extended protocol: the FETCH is described with the cursor's columns.
    let rows = client.query("FETCH 2 FROM c", &[]).await.unwrap();
    assert_eq!(rows[0].columns()[0].name(), "n");
    let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, [12, 13]);
    let m = client.simple_query("FETCH ALL FROM c").await.unwrap();
    assert_eq!(counts(&m), [10000 - 13]);
    assert_eq!(first_column(&m)[0], "14");
    let m = client.simple_query("FETCH 5 FROM c").await.unwrap();
    assert_eq!(counts(&m), [0]);
    // Backward motion is refused, as for a NO SCROLL cursor.
    let e = client.simple_query("FETCH PRIOR FROM c").await.unwrap_err();
    assert_eq!(code(&e), SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, "{e}");
    client.simple_query("ROLLBACK").await.unwrap();

    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!("DECLARE c CURSOR FOR {SERIES}"))
        .await
        .unwrap();
    let e = client
        .simple_query(&format!("DECLARE c CURSOR FOR {SERIES}"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::DUPLICATE_CURSOR, "{e}");
    client.simple_query("ROLLBACK").await.unwrap();

    let e = client
        .simple_query("FETCH 1 FROM nosuch")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_CURSOR_NAME, "{e}");
    let e = client.simple_query("CLOSE nosuch").await.unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_CURSOR_NAME, "{e}");

    // COMMIT closes WITHOUT HOLD cursors and keeps WITH HOLD ones.
    client
        .simple_query(&format!(
            "BEGIN; DECLARE plain CURSOR FOR {SERIES}; DECLARE held CURSOR WITH HOLD FOR {SERIES}; COMMIT"
        ))
        .await
        .unwrap();
    let e = client.simple_query("FETCH 1 FROM plain").await.unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_CURSOR_NAME, "{e}");
    let m = client.simple_query("FETCH 2 FROM held").await.unwrap();
    assert_eq!(first_column(&m), ["1", "2"]);

    // ROLLBACK closes the cursors declared in it, WITH HOLD or not, and keeps older ones.
    client
        .simple_query(&format!(
            "BEGIN; DECLARE rolled CURSOR WITH HOLD FOR {SERIES}"
        ))
        .await
        .unwrap();
    let m = client.simple_query("FETCH 1 FROM held").await.unwrap();
    assert_eq!(first_column(&m), ["3"]);
    client.simple_query("ROLLBACK").await.unwrap();
    let e = client
        .simple_query("FETCH 1 FROM rolled")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_CURSOR_NAME, "{e}");
    let m = client.simple_query("FETCH 1 FROM held").await.unwrap();
    assert_eq!(first_column(&m), ["4"]);
    client.simple_query("CLOSE held").await.unwrap();
    let e = client.simple_query("FETCH 1 FROM held").await.unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_CURSOR_NAME, "{e}");
}

#[tokio::test]
async fn tableau_declares_with_hold_and_fetches_in_one_query() {
    let server = Server::start();
    let client = server.pg_client().await;
    // What Tableau sends (psqlODBC's UseDeclareFetch, quoted generated cursor name).
    let m = client
        .simple_query(&format!(
            "DECLARE \"SQL_CUR0x7f00aa\" CURSOR WITH HOLD FOR {SERIES}; FETCH 2048 IN \"SQL_CUR0x7f00aa\""
        ))
        .await
        .unwrap();
    assert_eq!(counts(&m), [0, 2048]);
    let mut total = 2048;
    loop {
        let m = client
            .simple_query("FETCH 2048 IN \"SQL_CUR0x7f00aa\"")
            .await
            .unwrap();
        let n = counts(&m)[0];
        total += n;
        if n < 2048 {
            break;
        }
    }
    assert_eq!(total, 10000);
    client
        .simple_query("CLOSE \"SQL_CUR0x7f00aa\"")
        .await
        .unwrap();
    // Unquoted names fold to lower case.
    client
        .simple_query(&format!(
            "DECLARE MixedCase CURSOR WITH HOLD FOR {SERIES}; FETCH 1 FROM mixedcase; CLOSE ALL"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn cursors_bind_parameters_over_the_extended_protocol() {
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .execute(
            "DECLARE p CURSOR WITH HOLD FOR SELECT value FROM generate_series(1, 100) AS t \
             WHERE value > $1 ORDER BY value",
            &[&90i64],
        )
        .await
        .unwrap();
    let rows = client.query("FETCH ALL FROM p", &[]).await.unwrap();
    let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, (91..=100).collect::<Vec<i64>>());
    let moved = client.execute("MOVE 1 FROM p", &[]).await.unwrap();
    assert_eq!(moved, 0);
    client.execute("CLOSE p", &[]).await.unwrap();
}

/// Runs SLOW on `client` (simple or extended protocol), cancels it after a moment, and
/// checks the answer is 57014 and came promptly.
async fn cancel_slow_query(client: &tokio_postgres::Client, extended: bool) {
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        token.cancel_query(NoTls).await.unwrap();
        Instant::now()
    });
    let e = if extended {
        client.query(SLOW, &[]).await.map(|_| ()).unwrap_err()
    } else {
        client.simple_query(SLOW).await.map(|_| ()).unwrap_err()
    };
    let answered = Instant::now();
    let cancelled = canceller.await.unwrap();
    assert_eq!(code(&e), SqlState::QUERY_CANCELED, "{e}");
    let e = e.as_db_error().unwrap();
    assert_eq!(e.message(), "canceling statement due to user request");
    assert!(
        answered.duration_since(cancelled) < Duration::from_secs(5),
        "the cancel took {:?}",
        answered.duration_since(cancelled)
    );
}

#[tokio::test]
async fn cancel_request_stops_a_running_query() {
    let server = Server::start();
    let client = server.pg_client().await;
    cancel_slow_query(&client, false).await;
    // The connection is usable afterwards, and a later query is not cancelled by the
    // earlier request.
    let m = client.simple_query("SELECT 41 + 1").await.unwrap();
    assert_eq!(first_column(&m), ["42"]);
    cancel_slow_query(&client, true).await;
    let row = client.query_one("SELECT 7::bigint", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 7);

    // Inside a transaction the cancel fails it, as in PostgreSQL.
    client.simple_query("BEGIN").await.unwrap();
    cancel_slow_query(&client, false).await;
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), SqlState::IN_FAILED_SQL_TRANSACTION);
    client.simple_query("ROLLBACK").await.unwrap();

    // A cancel while idle changes nothing.
    let idle = client.cancel_token();
    idle.cancel_query(NoTls).await.unwrap();
    // The request is handled asynchronously (as in PostgreSQL); let it land while idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(first_column(&m), ["1"]);
}

#[tokio::test]
async fn statement_timeout_cancels_long_statements() {
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .simple_query("SET statement_timeout = '1s'")
        .await
        .unwrap();
    let m = client.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(first_column(&m), ["1s"]);
    for extended in [false, true] {
        let started = Instant::now();
        let e = if extended {
            client.query(SLOW, &[]).await.map(|_| ()).unwrap_err()
        } else {
            client.simple_query(SLOW).await.map(|_| ()).unwrap_err()
        };
        let took = started.elapsed();
        assert_eq!(code(&e), SqlState::QUERY_CANCELED, "{e}");
        assert_eq!(
            e.as_db_error().unwrap().message(),
            "canceling statement due to statement timeout"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "{took:?}"
        );
    }
    // Short statements are unaffected.
    let m = client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(first_column(&m), ["1"]);
    client
        .simple_query("SET statement_timeout = 2500")
        .await
        .unwrap();
    let m = client.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(first_column(&m), ["2500ms"]);
    let e = client
        .simple_query("SET statement_timeout = 'soon'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_PARAMETER_VALUE);
    client
        .simple_query("RESET statement_timeout")
        .await
        .unwrap();
    let m = client.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(first_column(&m), ["0"]);

    // From the startup packet's options (libpq's PGOPTIONS), as PostgreSQL reads them.
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(server.pg_port())
        .user("logsphere")
        .dbname("logsphere")
        .options("-c statement_timeout=1500");
    let (other, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let m = other.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(first_column(&m), ["1500ms"]);
    let e = other.simple_query(SLOW).await.unwrap_err();
    assert_eq!(code(&e), SqlState::QUERY_CANCELED, "{e}");
}

/// The Python clients' side of these features (tests/clients/pg_session.py): psycopg 3 and
/// psycopg2 named cursors, `conn.cancel()`, application_name in pg_stat_activity.
#[test]
fn python_clients_use_cursors_cancel_and_sessions() {
    let python = std::env::var("LOGSPHERE_PYTHON").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_PYTHON is not set: it names a python with psycopg and psycopg2 \
             (tests/clients/requirements.txt); scripts/test builds it"
        )
    });
    let server = Server::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/pg_session.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.pg_port().to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python session clients failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
    assert!(stdout.contains("all session checks ok"), "{stdout}");
}
