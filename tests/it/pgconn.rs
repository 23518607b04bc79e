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
const SERIES: &str = "SELECT value AS n FROM generate_series(1, 10000) AS t(value) ORDER BY value";

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

/// The numbers of one simple-protocol FETCH, with its command tag's count.
async fn fetch(client: &tokio_postgres::Client, sql: &str) -> (Vec<i64>, u64) {
    let m = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = first_column(&m)
        .iter()
        .map(|v| {
            v.parse::<i64>()
                .unwrap_or_else(|e| panic!("{sql}: {v}: {e}"))
        })
        .collect();
    (rows, counts(&m)[0])
}

#[tokio::test]
async fn scroll_cursors_move_backward_as_postgresql_does() {
    let server = Server::start();
    let client = server.pg_client().await;
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query(&format!("DECLARE s SCROLL CURSOR FOR {SERIES}"))
        .await
        .unwrap();
    // (statement, rows answered in order, command tag count), as PostgreSQL answers them.
    let steps: &[(&str, &[i64], u64)] = &[
        ("FETCH FORWARD 3 FROM s", &[1, 2, 3], 3),
        ("FETCH PRIOR FROM s", &[2], 1),
        ("FETCH BACKWARD 5 FROM s", &[1], 1),
        ("FETCH PRIOR FROM s", &[], 0),
        ("FETCH NEXT FROM s", &[1], 1),
        ("FETCH ABSOLUTE 9000 FROM s", &[9000], 1),
        ("FETCH RELATIVE -8990 FROM s", &[10], 1),
        ("FETCH RELATIVE 0 FROM s", &[10], 1),
        ("FETCH FIRST FROM s", &[1], 1),
        ("FETCH LAST FROM s", &[10000], 1),
        ("FETCH NEXT FROM s", &[], 0),
        ("FETCH BACKWARD 2 FROM s", &[10000, 9999], 2),
        ("FETCH ABSOLUTE -3 FROM s", &[9998], 1),
        ("FETCH FORWARD ALL FROM s", &[9999, 10000], 2),
        ("FETCH -1 FROM s", &[10000], 1),
        ("FETCH ABSOLUTE 20000 FROM s", &[], 0),
        ("FETCH RELATIVE -1 FROM s", &[10000], 1),
        ("FETCH ABSOLUTE 0 FROM s", &[], 0),
        ("FETCH 2 FROM s", &[1, 2], 2),
    ];
    for &(sql, want, count) in steps {
        assert_eq!(fetch(&client, sql).await, (want.to_vec(), count), "{sql}");
    }
    // MOVE goes where FETCH would, and counts the rows FETCH would have answered.
    let moves: &[(&str, u64)] = &[
        ("MOVE LAST IN s", 1),
        ("MOVE BACKWARD ALL IN s", 9999),
        ("MOVE BACKWARD 1 IN s", 0),
        ("MOVE FORWARD 5 IN s", 5),
        ("MOVE RELATIVE -2 IN s", 1),
        ("MOVE ABSOLUTE 50000 IN s", 0),
        ("MOVE 0 IN s", 0),
        ("MOVE -10 IN s", 10),
        ("MOVE 0 IN s", 1),
    ];
    for &(sql, count) in moves {
        let m = client.simple_query(sql).await.unwrap();
        assert_eq!(counts(&m), [count], "{sql}");
    }
    assert_eq!(fetch(&client, "FETCH NEXT FROM s").await, (vec![9992], 1));
    // The extended protocol reads the same rows, backward too.
    let rows = client.query("FETCH BACKWARD 3 FROM s", &[]).await.unwrap();
    let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, [9991, 9990, 9989]);
    let listed = client
        .query_one("SELECT is_scrollable FROM pg_cursors WHERE name = 's'", &[])
        .await
        .unwrap();
    assert!(listed.get::<_, bool>(0));
    client.simple_query("COMMIT").await.unwrap();

    // WITH HOLD, outside any transaction block, and past its COMMIT.
    client
        .simple_query(&format!("DECLARE h SCROLL CURSOR WITH HOLD FOR {SERIES}"))
        .await
        .unwrap();
    assert_eq!(
        fetch(&client, "FETCH 4 FROM h").await,
        (vec![1, 2, 3, 4], 4)
    );
    client
        .simple_query("BEGIN; FETCH 1 FROM h; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        fetch(&client, "FETCH BACKWARD 2 FROM h").await,
        (vec![4, 3], 2)
    );
    assert_eq!(fetch(&client, "FETCH LAST FROM h").await, (vec![10000], 1));
    client.simple_query("CLOSE h").await.unwrap();

    // NO SCROLL: PostgreSQL's 55000; forward motion goes on.
    client
        .simple_query(&format!(
            "DECLARE n NO SCROLL CURSOR WITH HOLD FOR {SERIES}"
        ))
        .await
        .unwrap();
    assert_eq!(fetch(&client, "FETCH 2 FROM n").await, (vec![1, 2], 2));
    for sql in [
        "FETCH PRIOR FROM n",
        "FETCH LAST FROM n",
        "FETCH ABSOLUTE 1 FROM n",
        "MOVE -1 IN n",
    ] {
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(
            code(&e),
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "{sql}: {e}"
        );
        let db = e.as_db_error().unwrap();
        assert_eq!(db.message(), "cursor can only scan forward", "{sql}");
    }
    assert_eq!(
        fetch(&client, "FETCH ABSOLUTE 5 FROM n").await,
        (vec![5], 1)
    );
    // Without [NO] SCROLL: streams, refuses a step back, still reads to the LAST row.
    client
        .simple_query(&format!("DECLARE d CURSOR WITH HOLD FOR {SERIES}"))
        .await
        .unwrap();
    assert_eq!(fetch(&client, "FETCH 2 FROM d").await, (vec![1, 2], 2));
    let e = client.simple_query("FETCH PRIOR FROM d").await.unwrap_err();
    assert_eq!(code(&e), SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, "{e}");
    assert_eq!(fetch(&client, "FETCH LAST FROM d").await, (vec![10000], 1));
    assert_eq!(fetch(&client, "FETCH NEXT FROM d").await, (vec![], 0));
}

#[tokio::test]
async fn scroll_cursors_keep_at_most_their_memory_limit() {
    let server = Server::start_with_config("[pg]\nscroll_cursor_memory_mb = 1\n");
    let client = server.pg_client().await;
    // Two million eight-byte numbers: about 16 MiB, over the 1 MiB a SCROLL cursor keeps.
    let big = "SELECT value FROM generate_series(1, 2000000) AS t(value)";
    client
        .simple_query(&format!("DECLARE big SCROLL CURSOR WITH HOLD FOR {big}"))
        .await
        .unwrap();
    assert_eq!(fetch(&client, "FETCH 3 FROM big").await, (vec![1, 2, 3], 3));
    let e = client
        .simple_query("FETCH LAST FROM big")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::PROGRAM_LIMIT_EXCEEDED, "{e}");
    let message = e.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("scroll_cursor_memory_mb")),
        "{message:?}"
    );
    // What it kept is still there.
    assert_eq!(
        fetch(&client, "FETCH ABSOLUTE 2 FROM big").await,
        (vec![2], 1)
    );
    // A cursor that streams reads all of it.
    client
        .simple_query(&format!("DECLARE all_rows CURSOR WITH HOLD FOR {big}"))
        .await
        .unwrap();
    let m = client.simple_query("MOVE ALL IN all_rows").await.unwrap();
    assert_eq!(counts(&m), [2_000_000]);
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
            "DECLARE p CURSOR WITH HOLD FOR SELECT value FROM generate_series(1, 100) AS t(value) \
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

#[tokio::test]
async fn timestamptz_is_written_in_the_session_time_zone() {
    let server = Server::start();
    let client = server.pg_client().await;
    let sql = "SELECT CAST('2026-01-15 10:00:00+00' AS timestamptz) AS t";
    let m = client.simple_query(sql).await.unwrap();
    let utc = first_column(&m)[0].clone();
    assert!(
        utc.starts_with("2026-01-15 10:00:00") && utc.ends_with("+00"),
        "{utc}"
    );
    client
        .simple_query("SET TIME ZONE 'Europe/Paris'")
        .await
        .unwrap();
    let m = client.simple_query(sql).await.unwrap();
    let paris = first_column(&m)[0].clone();
    assert!(
        paris.starts_with("2026-01-15 11:00:00") && paris.ends_with("+01"),
        "{paris}"
    );
    // now() is a timestamptz, in the session's zone.
    let row = client.query_one("SELECT now()", &[]).await.unwrap();
    assert_eq!(
        row.columns()[0].type_(),
        &tokio_postgres::types::Type::TIMESTAMPTZ
    );
    assert_eq!(row.columns()[0].name(), "now");
    let m = client.simple_query("SELECT now()").await.unwrap();
    let now = first_column(&m)[0].clone();
    assert!(now.ends_with("+01") || now.ends_with("+02"), "{now}");
    client.simple_query("SET TIME ZONE -7").await.unwrap();
    let m = client.simple_query("SHOW TimeZone").await.unwrap();
    assert_eq!(first_column(&m), ["-07:00"]);
    let m = client.simple_query(sql).await.unwrap();
    assert!(
        first_column(&m)[0].starts_with("2026-01-15 03:00:00"),
        "{m:?}"
    );
    let e = client
        .simple_query("SET TIME ZONE 'Mars/Olympus'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), SqlState::INVALID_PARAMETER_VALUE);
}

/// A prepared statement (Parse before `SET TIME ZONE`, Execute after) works in the zone in
/// force at each Execute, as in PostgreSQL: `to_char`, a text read as `timestamptz`, and
/// `now()`. Asia/Tokyo keeps +09 (JST) all year.
#[tokio::test]
async fn prepared_statements_use_the_time_zone_at_execute() {
    let server = Server::start();
    let client = server.pg_client().await;
    let statement = client
        .prepare(
            "SELECT to_char(CAST('2026-01-15 10:00:00+00' AS timestamptz), 'HH24:MI TZ') AS local, \
                    extract(epoch FROM CAST(CAST($1 AS text) AS timestamptz)) AS epoch, \
                    to_char(now(), 'TZ') AS zone",
        )
        .await
        .unwrap();
    // Executes the statement: (to_char in the zone, the instant read in it, now()'s zone).
    let execute = || async {
        let row = client
            .query_one(&statement, &[&"2026-01-15 10:00:00"])
            .await
            .unwrap();
        (
            row.get::<_, String>("local"),
            row.get::<_, f64>("epoch"),
            row.get::<_, String>("zone"),
        )
    };
    assert_eq!(
        execute().await,
        ("10:00 UTC".to_owned(), 1_768_471_200.0, "UTC".to_owned())
    );

    client
        .batch_execute("SET TIME ZONE 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(
        execute().await,
        (
            "19:00 JST".to_owned(),
            1_768_471_200.0 - 9.0 * 3600.0,
            "JST".to_owned()
        )
    );

    // And back: nothing of the Tokyo execution stays.
    client.batch_execute("RESET TimeZone").await.unwrap();
    assert_eq!(execute().await.0, "10:00 UTC");
}

/// The Python clients' side of these features (tests/clients/pg_session.py): psycopg 3 and
/// psycopg2 named cursors, `conn.cancel()`, application_name in pg_stat_activity.
#[test]
fn python_clients_use_cursors_cancel_and_sessions() {
    let server = Server::start();
    crate::clients::run_client_script(&server, "pg_session.py", "all session checks ok");
}

/// psqlODBC through pyodbc with `UseDeclareFetch=1` (tests/clients/odbc_cursors.py): every
/// SELECT is read through `DECLARE … CURSOR WITH HOLD` and `FETCH 1000`, as Tableau reads.
#[test]
fn psqlodbc_reads_through_declare_fetch() {
    let python = crate::clients::python();
    let server = Server::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/odbc_cursors.py");
    // Our own driver registration (Debian's turns on psqlODBC's logs in /tmp).
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("odbcinst.ini"),
        "[PostgreSQL Unicode]\nDriver=psqlodbcw.so\nDebug=0\nCommLog=0\n",
    )
    .unwrap();
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.pg_port().to_string())
        .current_dir(cwd.path())
        .env("ODBCSYSINI", cwd.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all odbc checks ok"),
        "psqlODBC failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
}

/// A private CA and a server certificate it signed for localhost and 127.0.0.1, as PEM files
/// in `dir`: ca.pem, server.crt, server.key.
fn write_tls_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "LogSphere pg test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let pem = |tag: &str, der: Vec<u8>| pem::encode(&pem::Pem::new(tag, der));
    std::fs::write(
        dir.join("ca.pem"),
        pem("CERTIFICATE", ca_cert.der().to_vec()),
    )
    .unwrap();
    std::fs::write(
        dir.join("server.crt"),
        pem("CERTIFICATE", cert.der().to_vec()),
    )
    .unwrap();
    std::fs::write(
        dir.join("server.key"),
        pem("PRIVATE KEY", key.serialize_der()),
    )
    .unwrap();
}

/// psql with a libpq connection string; returns (success, stdout + stderr).
fn psql_conninfo(conninfo: &str, password: &str, command: &str) -> (bool, String) {
    let out = Command::new("/usr/bin/psql")
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", command])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tls_with_sslmode_require_and_verify_full() {
    let certs = tempfile::tempdir().unwrap();
    write_tls_files(certs.path());
    let dir = certs.path().display();
    let server = Server::start_with_config(&format!(
        "[pg]\ntls_cert = \"{dir}/server.crt\"\ntls_key = \"{dir}/server.key\"\n\
         [[pg.users]]\nname = \"ops\"\npassword = \"s3cret\"\n"
    ));
    let port = server.pg_port();
    let base = format!("port={port} user=ops dbname=logsphere");

    // verify-full: the chain checks out against our CA and the name matches; SCRAM over TLS.
    let (ok, out) = psql_conninfo(
        &format!("host=localhost {base} sslmode=verify-full sslrootcert={dir}/ca.pem"),
        "s3cret",
        "\\conninfo",
    );
    assert!(
        ok && out.contains("SSL connection"),
        "{out}\n{}",
        server.log()
    );
    let (ok, out) = psql_conninfo(
        &format!("host=localhost {base} sslmode=verify-full sslrootcert={dir}/ca.pem"),
        "s3cret",
        "SELECT count(*) FROM generate_series(1, 5)",
    );
    assert!(ok && out.trim() == "5", "{out}");
    // require: encrypted, no verification.
    let (ok, out) = psql_conninfo(
        &format!("host=127.0.0.1 {base} sslmode=require"),
        "s3cret",
        "\\conninfo",
    );
    assert!(ok && out.contains("SSL connection"), "{out}");
    // The wrong password still fails over TLS.
    let (ok, out) = psql_conninfo(
        &format!("host=127.0.0.1 {base} sslmode=require"),
        "wrong",
        "SELECT 1",
    );
    assert!(
        !ok && out
            .to_lowercase()
            .contains("password authentication failed"),
        "{out}"
    );
    // A CA that did not sign the certificate: verify-full refuses the server.
    let other = tempfile::tempdir().unwrap();
    write_tls_files(other.path());
    let (ok, out) = psql_conninfo(
        &format!(
            "host=localhost {base} sslmode=verify-full sslrootcert={}/ca.pem",
            other.path().display()
        ),
        "s3cret",
        "SELECT 1",
    );
    // (OpenSSL reports a same-named CA's bad signature as "EVP lib", a stranger as
    // "certificate verify failed".)
    assert!(!ok && out.contains("SSL error"), "{out}");
    // psycopg 3 (libpq underneath, as psycopg2 and most drivers) with verify-full.
    let python = crate::clients::python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, psycopg\n\
             with psycopg.connect(sys.argv[1]) as c:\n\
             \x20   print(c.pgconn.ssl_in_use, c.execute('SELECT 40 + 2').fetchone()[0])",
            &format!(
                "host=localhost {base} password=s3cret sslmode=verify-full sslrootcert={dir}/ca.pem"
            ),
        ])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "True 42",
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Clients that do not ask for TLS still connect, as with PostgreSQL's ssl = on.
    let (ok, out) = psql_conninfo(
        &format!("host=127.0.0.1 {base} sslmode=disable"),
        "s3cret",
        "SELECT 1",
    );
    assert!(ok && out.trim() == "1", "{out}");
}

/// SCRAM-SHA-256-PLUS over TLS: libpq's `channel_binding=require` only connects when the
/// server binds the SCRAM exchange to its certificate (`tls-server-end-point`).
#[test]
fn scram_channel_binding_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    write_tls_files(certs.path());
    let dir = certs.path().display();
    let server = Server::start_with_config(&format!(
        "[pg]\ntls_cert = \"{dir}/server.crt\"\ntls_key = \"{dir}/server.key\"\n\
         [[pg.users]]\nname = \"ops\"\npassword = \"s3cret\"\n"
    ));
    let base = format!(
        "host=127.0.0.1 port={} user=ops dbname=logsphere",
        server.pg_port()
    );
    let (ok, out) = psql_conninfo(
        &format!("{base} sslmode=require channel_binding=require"),
        "s3cret",
        "SELECT 40 + 2",
    );
    assert!(ok && out.trim() == "42", "{out}\n{}", server.log());
    // The server saw the client choose SCRAM-SHA-256-PLUS.
    assert!(
        server.log().contains("scram-sha-256-plus"),
        "{}",
        server.log()
    );
    // A wrong password still fails, binding or not.
    let (ok, out) = psql_conninfo(
        &format!("{base} sslmode=require channel_binding=require"),
        "wrong",
        "SELECT 1",
    );
    assert!(
        !ok && out
            .to_lowercase()
            .contains("password authentication failed"),
        "{out}"
    );
    // psycopg 3 with verify-full and channel binding required, as a driver sets it up.
    let python = crate::clients::python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, psycopg\n\
             with psycopg.connect(sys.argv[1]) as c:\n\
             \x20   print(c.pgconn.ssl_in_use, c.execute('SELECT 6 * 7').fetchone()[0])",
            &format!(
                "host=localhost port={} user=ops dbname=logsphere password=s3cret \
                 sslmode=verify-full sslrootcert={dir}/ca.pem channel_binding=require",
                server.pg_port()
            ),
        ])
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "True 42",
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without TLS there is no channel to bind to: plain SCRAM, and require is refused by
    // the client; the default (prefer) still connects.
    let (ok, out) = psql_conninfo(
        &format!("{base} sslmode=disable channel_binding=require"),
        "s3cret",
        "SELECT 1",
    );
    assert!(!ok && out.contains("channel binding"), "{out}");
    let (ok, out) = psql_conninfo(&format!("{base} sslmode=disable"), "s3cret", "SELECT 1");
    assert!(ok && out.trim() == "1", "{out}");
}

#[test]
fn tls_config_errors_name_the_key() {
    let certs = tempfile::tempdir().unwrap();
    write_tls_files(certs.path());
    let dir = certs.path();
    let data = tempfile::tempdir().unwrap();
    let serve = |args: &[&str]| {
        let out = Command::new(logsphere_tests::binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(data.path())
            .arg("--pg-listen")
            .arg(format!("127.0.0.1:{}", logsphere_tests::free_port()))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", logsphere_tests::free_port()))
            .args(args)
            .output()
            .expect("run logsphere");
        assert!(!out.status.success(), "logsphere serve {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = dir.join("server.crt");
    let cert = cert.to_str().unwrap();
    let key = dir.join("server.key");
    let key = key.to_str().unwrap();
    let err = serve(&["--pg-tls-cert", cert]);
    assert!(err.contains("pg.tls_key"), "{err}");
    // A key where the certificate should be.
    let err = serve(&["--pg-tls-cert", key, "--pg-tls-key", key]);
    assert!(err.contains("pg.tls_cert"), "{err}");
    let err = serve(&[
        "--pg-tls-cert",
        cert,
        "--pg-tls-key",
        "/nonexistent/server.key",
    ]);
    assert!(
        err.contains("pg.tls_key") && err.contains("/nonexistent/server.key"),
        "{err}"
    );
}

/// A cross join of generated series: pure CPU, no I/O to wait on, minutes of work.
const CPU_BOUND: &str =
    "SELECT count(*) FROM generate_series(1, 400000) a CROSS JOIN generate_series(1, 400000) b";

/// `statement_timeout` and a CancelRequest stop a CPU-bound statement too (queries run on
/// their own runtime, so the connection's timer and the cancel are served while it
/// computes), and HTTP ingest is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_bound_statements_are_stopped_and_ingest_goes_on() {
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .simple_query("SET statement_timeout = '500ms'")
        .await
        .unwrap();
    // The bound only tells a hang from an answer: the join itself would take minutes.
    let answer = tokio::time::timeout(Duration::from_secs(30), client.simple_query(CPU_BOUND))
        .await
        .expect("statement_timeout answered while the join computes");
    let e = answer.map(|_| ()).unwrap_err();
    assert_eq!(code(&e), SqlState::QUERY_CANCELED, "{e}");
    client
        .simple_query("SET statement_timeout = 0")
        .await
        .unwrap();

    // Without a timeout: ingest is served while the join runs, then a cancel stops it.
    let token = client.cancel_token();
    let running = tokio::spawn(async move { client.simple_query(CPU_BOUND).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = server.http_url();
    let posted = tokio::task::spawn_blocking(move || {
        logsphere_tests::post_logs(&url, b"{\"message\":\"during the join\"}\n", None)
    });
    let posted = tokio::time::timeout(Duration::from_secs(30), posted)
        .await
        .expect("ingest answered while the join computes")
        .unwrap()
        .unwrap();
    assert_eq!(posted.0, 200, "{}", posted.1);
    token.cancel_query(NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the cancel answered while the join computes")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&e), SqlState::QUERY_CANCELED, "{e}");
}

/// `pg.statement_timeout_ms` is every session's initial `statement_timeout`: it stops a
/// runaway statement without the client asking, and `RESET` returns to it.
#[tokio::test]
async fn the_server_wide_statement_timeout_applies_to_every_session() {
    let server = Server::start_with_config("[pg]\nstatement_timeout_ms = 800\n");
    let client = server.pg_client().await;
    let m = client.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(first_column(&m), ["800ms"]);
    let e = tokio::time::timeout(Duration::from_secs(30), client.simple_query(CPU_BOUND))
        .await
        .expect("answered")
        .map(|_| ())
        .unwrap_err();
    assert_eq!(code(&e), SqlState::QUERY_CANCELED, "{e}");
    client
        .simple_query("SET statement_timeout = '5s'")
        .await
        .unwrap();
    client
        .simple_query("RESET statement_timeout")
        .await
        .unwrap();
    let m = client.simple_query("SHOW statement_timeout").await.unwrap();
    assert_eq!(first_column(&m), ["800ms"]);
}
