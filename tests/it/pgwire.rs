//! The PostgreSQL protocol, driven by real clients (tokio-postgres and psql) against the
//! real binary.

use std::process::Command;

use futures::TryStreamExt;
use logsphere_tests::Server;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The rows of a simple query, as text.
fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn psql(server: &Server, command: &str) -> String {
    psql_with(server, &[], command)
}

/// psql with extra options (`-A` for unaligned output) before `-c command`.
fn psql_with(server: &Server, options: &[&str], command: &str) -> String {
    let out = Command::new("/usr/bin/psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &server.pg_port().to_string(),
            "-U",
            "logsphere",
        ])
        .args(options)
        .args(["-c", command])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "psql -c {command:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn simple_query_runs_every_statement() {
    let server = Server::start();
    let client = server.pg_client().await;
    let messages = client
        .simple_query("SELECT 1 AS one; SELECT 'two' AS two")
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&messages),
        vec![vec![Some("1".to_owned())], vec![Some("two".to_owned())]]
    );
    let count = client
        .simple_query("SELECT count(*) FROM logs")
        .await
        .unwrap();
    assert_eq!(simple_rows(&count).len(), 1);
    // pgx pings with a comment-only query: it must get EmptyQueryResponse, not an error.
    client.simple_query("-- ping").await.unwrap();
}

#[tokio::test]
async fn extended_query_binds_text_and_timestamp_parameters() {
    let server = Server::start();
    let client = server.pg_client().await;

    let rows = client
        .query(
            "SELECT m FROM (VALUES ('alpha'), ('beta'), ('alphabet')) AS t(m) WHERE m LIKE $1 AND m <> $2 ORDER BY m",
            &[&"alpha%", &"alpha"],
        )
        .await
        .unwrap();
    let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(found, vec!["alphabet".to_owned()]);

    let statement = client
        .prepare("SELECT count(*) FROM logs WHERE timestamp >= $1 AND source = $2")
        .await
        .unwrap();
    assert_eq!(statement.params(), &[Type::TIMESTAMPTZ, Type::TEXT]);
    let since = std::time::SystemTime::UNIX_EPOCH;
    let params: [&(dyn ToSql + Sync); 2] = [&since, &"app"];
    let row = client.query_one(&statement, &params).await.unwrap();
    let _: i64 = row.get(0);

    // pgjdbc's setTimestamp: an untyped parameter sent as text.
    let rows = client
        .query_typed(
            "SELECT count(*) FROM logs WHERE timestamp > $1",
            &[(&"2024-01-01 00:00:00+00", Type::UNKNOWN)],
        )
        .await;
    assert!(rows.is_ok(), "untyped timestamp parameter: {rows:?}");

    // LIMIT $1 / OFFSET $2 are bigint, as PostgreSQL describes them (pgx and pgjdbc encode
    // an integer by the type the server reports).
    let statement = client
        .prepare("SELECT x FROM generate_series(1, 10) AS t(x) ORDER BY x LIMIT $1 OFFSET $2")
        .await
        .unwrap();
    assert_eq!(statement.params(), &[Type::INT8, Type::INT8]);
    let rows = client.query(&statement, &[&3i64, &2i64]).await.unwrap();
    let xs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(xs, vec![3, 4, 5]);
}

/// An `IN (SELECT …)` outside WHERE runs at each Execute of a prepared statement, with its
/// parameters bound and the settings of that moment, as PostgreSQL runs it: nothing of the
/// first Execute is kept.
#[tokio::test]
async fn prepared_in_subqueries_run_at_each_execute() {
    let server = Server::start();
    let client = server.pg_client().await;
    let statement = client
        .prepare(
            "SELECT 'public' IN (SELECT current_setting('search_path')) AS on_path, \
             CASE WHEN 'logs' IN (SELECT table_name FROM information_schema.tables \
                                  WHERE table_name = $1) THEN 'found' ELSE 'missing' END AS logs",
        )
        .await
        .unwrap();
    let row = client.query_one(&statement, &[&"logs"]).await.unwrap();
    assert!(row.get::<_, bool>("on_path"));
    assert_eq!(row.get::<_, String>("logs"), "found");

    client
        .batch_execute("SET search_path TO elsewhere")
        .await
        .unwrap();
    let row = client
        .query_one(&statement, &[&"dead_letters"])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>("on_path"));
    assert_eq!(row.get::<_, String>("logs"), "missing");
}

/// A prepared statement is planned once, at Parse, and each Execute reuses that planning;
/// yet every Execute reads the tables as they are then, `now()` at that moment, and the
/// session's DataFusion options in force then.
#[tokio::test]
async fn prepared_statements_plan_once_and_read_what_is_there_at_each_execute() {
    let server = Server::start();
    let client = server.pg_client().await;
    let count = client
        .prepare("SELECT count(*) AS n FROM logs WHERE source = $1 AND log_level = 'ERROR'")
        .await
        .unwrap();
    let constant = client
        .prepare("SELECT CAST(41 + 1 AS integer) AS answer")
        .await
        .unwrap();
    let now = client
        .prepare("SELECT CAST(extract(epoch FROM now()) * 1000000 AS bigint) AS t")
        .await
        .unwrap();
    let n = |row: tokio_postgres::Row| row.get::<_, i64>("n");

    assert_eq!(n(client.query_one(&count, &[&"web"]).await.unwrap()), 0);
    let errors = |from: usize, to: usize| -> String {
        (from..to)
            .map(|i| {
                format!(
                    "{{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"message\":\"e{i}\",\"source\":\"web\"}}\n"
                )
            })
            .collect()
    };
    server.post_expect(errors(0, 3).as_bytes(), 3, 0);
    assert_eq!(n(client.query_one(&count, &[&"web"]).await.unwrap()), 3);
    assert_eq!(n(client.query_one(&count, &[&"db"]).await.unwrap()), 0);
    server.post_expect(errors(3, 8).as_bytes(), 5, 0);
    assert_eq!(n(client.query_one(&count, &[&"web"]).await.unwrap()), 8);

    for _ in 0..3 {
        let row = client.query_one(&constant, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>("answer"), 42);
    }

    let first: i64 = client.query_one(&now, &[]).await.unwrap().get("t");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second: i64 = client.query_one(&now, &[]).await.unwrap().get("t");
    assert!(
        second >= first + 20_000,
        "now() must be the time of each Execute: {first} then {second}"
    );

    // The time zone set after Parse applies at the next Execute (the plan optimized at
    // Parse folded `to_char` in the old zone).
    let hour = client
        .prepare("SELECT to_char(CAST('2026-01-01 12:00:00+00' AS timestamptz), 'HH24') AS h")
        .await
        .unwrap();
    let h = |row: tokio_postgres::Row| row.get::<_, String>("h");
    client.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
    assert_eq!(h(client.query_one(&hour, &[]).await.unwrap()), "12");
    client
        .batch_execute("SET TIME ZONE 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_eq!(h(client.query_one(&hour, &[]).await.unwrap()), "21");
    assert_eq!(n(client.query_one(&count, &[&"web"]).await.unwrap()), 8);
    assert_eq!(
        client
            .query_one(&constant, &[])
            .await
            .unwrap()
            .get::<_, i32>("answer"),
        42
    );
}

#[tokio::test]
async fn extended_query_suspends_portals() {
    let server = Server::start();
    let mut client = server.pg_client().await;
    let tx = client.transaction().await.unwrap();
    let statement = tx
        .prepare("SELECT x FROM generate_series(1, 10) AS t(x)")
        .await
        .unwrap();
    let portal = tx.bind(&statement, &[]).await.unwrap();
    assert_eq!(tx.query_portal(&portal, 4).await.unwrap().len(), 4);
    assert_eq!(tx.query_portal(&portal, 100).await.unwrap().len(), 6);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn errors_carry_their_sqlstate() {
    let server = Server::start();
    let client = server.pg_client().await;
    let cases: &[(&str, &SqlState)] = &[
        ("SELECT * FROM no_such_table", &SqlState::UNDEFINED_TABLE),
        ("SELEC 1", &SqlState::SYNTAX_ERROR),
        (
            "SELECT no_such_column FROM logs",
            &SqlState::UNDEFINED_COLUMN,
        ),
        ("SELECT no_such_function(1)", &SqlState::UNDEFINED_FUNCTION),
        (
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            &SqlState::READ_ONLY_SQL_TRANSACTION,
        ),
        (
            "INSERT INTO logs (message) VALUES ('x')",
            &SqlState::READ_ONLY_SQL_TRANSACTION,
        ),
        ("DROP TABLE logs", &SqlState::READ_ONLY_SQL_TRANSACTION),
        (
            "COPY (SELECT 1) TO '/tmp/logsphere-copy.csv'",
            &SqlState::INSUFFICIENT_PRIVILEGE,
        ),
        ("COPY logs FROM STDIN", &SqlState::READ_ONLY_SQL_TRANSACTION),
        (
            "SELECT to_timestamp('2026-13-01', 'YYYY-MM-DD')",
            &SqlState::INVALID_DATETIME_FORMAT,
        ),
    ];
    for (sql, expected) in cases {
        // Both protocols: simple (batch_execute) and extended (query).
        let simple = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(simple.code(), Some(*expected), "simple {sql}: {simple:?}");
        let extended = client.query(*sql, &[]).await.expect_err(sql);
        assert_eq!(
            extended.code(),
            Some(*expected),
            "extended {sql}: {extended:?}"
        );
    }
    let message = client
        .batch_execute("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/x'")
        .await
        .unwrap_err();
    let db = message.as_db_error().expect("a server error");
    assert!(db.message().contains("read-only"), "{}", db.message());
}

#[tokio::test]
async fn failed_transaction_refuses_until_rollback() {
    let server = Server::start();
    let client = server.pg_client().await;
    client.batch_execute("BEGIN").await.unwrap();
    assert!(
        client
            .batch_execute("SELECT * FROM no_such_table")
            .await
            .is_err()
    );
    let refused = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn set_and_show_are_per_connection() {
    let server = Server::start();
    let a = server.pg_client().await;
    let b = server.pg_client().await;

    a.batch_execute("SET TimeZone = 'Europe/Paris'; SET datafusion.execution.batch_size = 77")
        .await
        .unwrap();
    assert_eq!(show(&a, "timezone").await, "Europe/Paris");
    assert_eq!(show(&a, "datafusion.execution.batch_size").await, "77");
    assert_eq!(show(&b, "timezone").await, "UTC");
    assert_ne!(show(&b, "datafusion.execution.batch_size").await, "77");

    let version: String = a
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("16"), "{version}");
    assert_eq!(
        show(&a, "transaction isolation level").await,
        "read committed"
    );
    a.batch_execute("BEGIN; COMMIT; DISCARD ALL; RESET ALL; DEALLOCATE ALL; CLOSE ALL; UNLISTEN *")
        .await
        .unwrap();
    assert_eq!(show(&a, "timezone").await, "UTC");

    let refused = a
        .batch_execute("SET datafusion.runtime.memory_limit = '1G'")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(format!("SHOW {name}").as_str(), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn psql_describes_tables() {
    let server = Server::start();
    let tables = psql(&server, r"\dt");
    assert!(tables.contains(" logs "), "{tables}");
    let columns = psql(&server, r"\d logs");
    for column in [
        "timestamp",
        "log_level",
        "message",
        "source",
        "topic",
        "attributes",
        "ingest_time",
    ] {
        assert!(columns.contains(column), "{column} missing from {columns}");
    }
    assert!(columns.contains("timestamp with time zone"), "{columns}");
    psql(&server, r"\l");
}

/// psql's `\d+`: its table query has `ARRAY(SELECT 'toast.' || x FROM unnest(tc.reloptions)
/// x)` over an outer column, its column query adds storage, compression, statistics target
/// and description; the footer names the access method, as PostgreSQL shows for a table.
#[tokio::test]
async fn psql_describes_a_table_verbosely() {
    let server = Server::start();
    let out = psql_with(&server, &["-A"], r"\d+ logs");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            r#"Table "public.logs""#,
            "Column|Type|Collation|Nullable|Default|Storage|Compression|Stats target|Description",
            "timestamp|timestamp with time zone||not null||plain|||",
            "log_level|text||not null||extended|||",
            "message|text||not null||extended|||",
            "source|text||not null||extended|||",
            "topic|text||not null||extended|||",
            "attributes|text||not null||extended|||",
            "ingest_time|timestamp with time zone||not null||plain|||",
            "Access method: heap",
        ],
        "{out}"
    );
    // A view has no access method; `\d+` on one lists its columns too.
    let out = psql_with(&server, &["-A"], r"\d+ tiering");
    assert!(out.starts_with("View \"public.tiering\""), "{out}");
    assert!(!out.contains("Access method"), "{out}");
}

#[tokio::test]
async fn scram_accepts_the_right_password_only() {
    let server = Server::start_with_config(
        r#"
[[pg.users]]
name = "alice"
password = "correct horse"
"#,
    );
    let connect = |user: &str, password: &str| {
        let config = format!(
            "host=127.0.0.1 port={} user={user} password='{password}' dbname=logsphere connect_timeout=10",
            server.pg_port()
        );
        async move { tokio_postgres::connect(&config, NoTls).await }
    };

    let (client, connection) = connect("alice", "correct horse")
        .await
        .expect("right password");
    tokio::spawn(connection);
    let user: String = client
        .query_one("SELECT session_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "alice");

    for (user, password) in [("alice", "wrong"), ("mallory", "correct horse")] {
        let err = connect(user, password).await.err().expect("refused");
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {err:?}"
        );
    }
}

#[tokio::test]
async fn continuous_query_statements_are_recognised_on_both_protocols() {
    let server = Server::start();
    let client = server.pg_client().await;
    let bad = "CREATE CONTINUOUS QUERY x ALERT (BOGUS 1) AS SELECT * FROM logs";
    for result in [
        client.simple_query(bad).await.map(|_| ()),
        client.execute(bad, &[]).await.map(|_| ()),
    ] {
        let err = result.expect_err("a malformed CREATE CONTINUOUS QUERY fails");
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code(), &SqlState::SYNTAX_ERROR, "{}", db.message());
        assert!(
            db.message().contains("BOGUS") && db.message().contains("Line: 1, Column: 34"),
            "{}",
            db.message()
        );
    }
    // A well-formed CREATE runs on either protocol; the second one finds the name taken.
    let good = "CREATE CONTINUOUS QUERY critical ALERT (SEVERITY 'critical') AS \
                SELECT timestamp, source, message FROM logs WHERE log_level = 'CRITICAL'";
    client
        .simple_query(good)
        .await
        .expect("CREATE over the simple protocol");
    let err = client
        .execute(good, &[])
        .await
        .expect_err("the name is taken");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::DUPLICATE_OBJECT, "{}", db.message());
    assert!(
        db.message().contains("\"critical\" already exists"),
        "{}",
        db.message()
    );
    // EXPLAIN CONTINUOUS QUERY answers (item, value) rows on either protocol.
    let simple = client
        .simple_query("EXPLAIN CONTINUOUS QUERY critical")
        .await
        .expect("EXPLAIN over the simple protocol");
    assert!(
        simple.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("shape"))),
        "{simple:?}"
    );
    let rows = client
        .query("EXPLAIN CONTINUOUS QUERY critical", &[])
        .await
        .expect("EXPLAIN over the extended protocol");
    assert!(
        rows.iter()
            .any(|r| r.get::<_, String>(0) == "worst-case alert latency"
                && r.get::<_, String>(1) == "at ingest"),
        "{rows:?}"
    );
    // Ordinary SQL on the same connection is unaffected.
    let rows = client
        .simple_query("SELECT count(*) FROM logs")
        .await
        .unwrap();
    assert_eq!(simple_rows(&rows), vec![vec![Some("0".to_owned())]]);
}

/// The column names of a simple query's RowDescription.
fn simple_columns(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn output_columns_are_named_as_postgresql_names_them() {
    let server = Server::start();
    let client = server.pg_client().await;
    let cases: &[(&str, &[&str])] = &[
        ("SELECT count(*) FROM logs", &["count"]),
        (
            "SELECT min(logs.timestamp), MAX(timestamp) FROM logs",
            &["min", "max"],
        ),
        ("SELECT now()", &["now"]),
        ("SELECT 1 + 1, 'x'", &["?column?", "?column?"]),
        ("SELECT current_setting('TimeZone')", &["current_setting"]),
        ("SELECT count(*) AS n FROM logs", &["n"]),
        (
            "SELECT x, x * 2 FROM (VALUES (1)) AS t(x)",
            &["x", "?column?"],
        ),
        (
            "SELECT count(*), count(source) FROM logs",
            &["count", "count"],
        ),
    ];
    for (sql, expected) in cases {
        let messages = client.simple_query(sql).await.unwrap();
        assert_eq!(simple_columns(&messages), *expected, "simple {sql}");
        assert_eq!(simple_rows(&messages).len(), 1, "simple {sql}");
        // Describe (prepare) and the rows of Execute must agree.
        let statement = client.prepare(sql).await.unwrap();
        let described: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
        assert_eq!(described, *expected, "describe {sql}");
        let rows = client.query(&statement, &[]).await.unwrap();
        let returned: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
        assert_eq!(returned, *expected, "execute {sql}");
    }
    let out = psql_with(
        &server,
        &["-A"],
        "SELECT count(*), now(), 1 + 1, count(*) AS total FROM logs",
    );
    assert_eq!(
        out.lines().next(),
        Some("count|now|?column?|total"),
        "{out}"
    );
}

/// What `COPY … TO STDOUT` sends, as text.
async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> String {
    let chunks: Vec<_> = client
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    String::from_utf8(chunks.concat()).expect("utf-8")
}

#[tokio::test]
async fn copy_to_stdout_writes_csv_and_text() {
    let server = Server::start();
    let body = concat!(
        "{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"message\":\"disk, full\",\"host\":\"web-1\"}\n",
        "{\"ts\":\"2026-11-24T10:05:00Z\",\"level\":\"info\",\"message\":\"said \\\"hi\\\"\\tthere\",\"host\":\"web-2\"}\n",
    );
    server.post_expect(body.as_bytes(), 2, 0);
    let client = server.pg_client().await;

    let csv = copy_out(
        &client,
        "COPY (SELECT source, message, count(*) FROM logs GROUP BY 1, 2 ORDER BY 1) TO STDOUT (FORMAT csv, HEADER)",
    )
    .await;
    assert_eq!(
        csv,
        "source,message,count\nweb-1,\"disk, full\",1\nweb-2,\"said \"\"hi\"\"\tthere\",1\n"
    );
    let text = copy_out(
        &client,
        "COPY (SELECT source, message, NULL AS nothing FROM logs ORDER BY timestamp) TO STDOUT",
    )
    .await;
    assert_eq!(
        text,
        "web-1\tdisk, full\t\\N\nweb-2\tsaid \"hi\"\\tthere\t\\N\n"
    );
    // A table, in the pre-9.0 spelling; every row, a header line first.
    let table = copy_out(&client, "COPY logs TO STDOUT WITH CSV HEADER").await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("timestamp,"), "{table}");
    // Over the simple protocol too, and the session lives on afterwards.
    let out = psql(
        &server,
        "COPY (SELECT x FROM (VALUES (1), (2)) AS t(x) ORDER BY x) TO STDOUT",
    );
    assert_eq!(out, "1\n2\n");
    client.simple_query("SELECT 1").await.unwrap();

    // psql's \copy: the file is written on the client side from COPY … TO STDOUT.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("errors.csv");
    psql(
        &server,
        &format!(
            "\\copy (SELECT source, log_level FROM logs ORDER BY timestamp) TO '{}' CSV HEADER",
            file.display()
        ),
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written, "source,log_level\nweb-1,ERROR\nweb-2,INFO\n");
}

/// `extract(epoch …)` and the arithmetic BI tools do on it (Grafana's `$__timeGroup` is
/// `floor(extract(epoch from t)/60)*60`) read as PostgreSQL writes them: a whole number with
/// no `.0`, exponents as `e+16`, infinities as `Infinity`, in text; float8 values in binary.
#[tokio::test]
async fn epoch_arithmetic_reads_as_postgresql_writes_it() {
    let server = Server::start();
    let body = concat!(
        "{\"ts\":\"2025-11-24T16:00:00.250Z\",\"message\":\"a\"}\n",
        "{\"ts\":\"2025-11-24T16:00:59Z\",\"message\":\"b\"}\n",
        "{\"ts\":\"2025-11-24T16:01:30Z\",\"message\":\"c\"}\n",
    );
    server.post_expect(body.as_bytes(), 3, 0);
    let client = server.pg_client().await;
    let m = client
        .simple_query(
            "SELECT extract(epoch FROM timestamp), floor(extract(epoch FROM timestamp)), \
             date_part('epoch', timestamp), extract(epoch FROM timestamp) * 1000, \
             ceil(extract(epoch FROM timestamp)) FROM logs ORDER BY timestamp LIMIT 1",
        )
        .await
        .unwrap();
    let want = [
        "1764000000.25",
        "1764000000",
        "1764000000.25",
        "1764000000250",
        "1764000001",
    ];
    assert_eq!(simple_rows(&m), [want.map(|v| Some(v.to_owned())).to_vec()]);
    // Grafana's $__timeGroup(timestamp, 1m).
    let grafana = "SELECT floor(extract(epoch FROM timestamp)/60)*60 AS \"time\", count(*) \
                   FROM logs GROUP BY 1 ORDER BY 1";
    let m = client.simple_query(grafana).await.unwrap();
    let rows: Vec<(String, String)> = simple_rows(&m)
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [
            ("1764000000".to_owned(), "2".to_owned()),
            ("1764000060".to_owned(), "1".to_owned())
        ]
    );
    // The same through psql, and in COPY's text.
    let out = psql_with(&server, &["-A", "-t"], grafana);
    assert_eq!(out, "1764000000|2\n1764000060|1\n");
    let copied = copy_out(
        &client,
        "COPY (SELECT 1e16::float8, 0.1::float8 + 0.2::float8, 0.000015::float8, \
         -0.5::float8, 1e308::float8 * 10) TO STDOUT",
    )
    .await;
    assert_eq!(
        copied,
        "1e+16\t0.30000000000000004\t1.5e-05\t-0.5\tInfinity\n"
    );
    // Binary results carry the float8 itself.
    let rows = client.query(grafana, &[]).await.unwrap();
    assert_eq!(rows[0].columns()[0].type_(), &Type::FLOAT8);
    assert_eq!(rows[0].get::<_, f64>(0), 1_764_000_000.0);
}

#[tokio::test]
async fn savepoints_are_accepted_inside_a_transaction() {
    let server = Server::start();
    let mut client = server.pg_client().await;
    // tokio-postgres nests with SAVEPOINT / RELEASE / ROLLBACK TO, as psqlODBC does.
    let mut tx = client.transaction().await.unwrap();
    {
        let inner = tx.savepoint("s1").await.unwrap();
        let row = inner
            .query_one("SELECT count(*) FROM logs", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0);
        inner.commit().await.unwrap();
    }
    {
        let inner = tx.savepoint("s2").await.unwrap();
        inner.rollback().await.unwrap();
    }
    tx.batch_execute("SAVEPOINT a; RELEASE a; SAVEPOINT b; ROLLBACK TO b; ROLLBACK TO SAVEPOINT b; RELEASE SAVEPOINT b")
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let out = psql_with(
        &server,
        &[
            "-c",
            "BEGIN",
            "-c",
            "SAVEPOINT x",
            "-c",
            "ROLLBACK TO SAVEPOINT x",
            "-c",
            "RELEASE x",
        ],
        "COMMIT",
    );
    assert_eq!(out, "BEGIN\nSAVEPOINT\nROLLBACK\nRELEASE\nCOMMIT\n");

    // psqlODBC's error recovery: a failed statement, ROLLBACK TO, and the transaction
    // goes on, on both protocols.
    client.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    assert!(client.batch_execute("SELECT * FROM nope").await.is_err());
    let refused = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client
        .batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    assert!(client.query("SELECT * FROM nope", &[]).await.is_err());
    let refused = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(refused.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.execute("ROLLBACK TO s", &[]).await.unwrap();
    assert_eq!(client.query("SELECT 1", &[]).await.unwrap().len(), 1);
    client.batch_execute("COMMIT").await.unwrap();

    // Outside a transaction block PostgreSQL refuses them, on both protocols.
    for sql in [
        "SAVEPOINT x",
        "RELEASE SAVEPOINT x",
        "ROLLBACK TO SAVEPOINT x",
    ] {
        let simple = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            simple.code(),
            Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION),
            "{sql}"
        );
        let extended = client.execute(sql, &[]).await.expect_err(sql);
        assert_eq!(
            extended.code(),
            Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION),
            "{sql}"
        );
    }
}

/// A connection over `pg.max_connections` is refused with SQLSTATE 53300 ("too many
/// clients"), as PostgreSQL refuses it, both by tokio-postgres and by psql (libpq asks for
/// SSL first); once a client leaves, its slot serves the next one.
#[tokio::test]
async fn connections_over_the_limit_are_refused_with_53300() {
    let server = Server::start_with_config("[pg]\nmax_connections = 2\n");
    let first = server.pg_client().await;
    let second = server.pg_client().await;
    let refused = server
        .pg_client_as("logsphere", None)
        .await
        .map(|_| ())
        .expect_err("a third connection is refused");
    assert_eq!(
        refused.code(),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "{refused}"
    );
    let psql = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &server.pg_port().to_string()])
        .args(["-U", "logsphere", "-d", "logsphere", "-X", "-c", "SELECT 1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql (postgresql-client)");
    let stderr = String::from_utf8_lossy(&psql.stderr);
    assert!(!psql.status.success(), "psql got in: {stderr}");
    assert!(stderr.contains("too many clients"), "{stderr}");
    // The refused ones held nothing: both served connections still work.
    for client in [&first, &second] {
        client.simple_query("SELECT 1").await.expect("still served");
    }
    let url = format!("{}/metrics", server.http_url());
    let metrics = tokio::task::spawn_blocking(move || {
        ureq::get(&url)
            .call()
            .expect("metrics")
            .body_mut()
            .read_to_string()
            .expect("metrics text")
    })
    .await
    .unwrap();
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    };
    assert_eq!(metric("logsphere_pg_connections_refused_total"), 2);
    assert_eq!(metric("logsphere_pg_connections"), 2);
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let third = loop {
        match server.pg_client_as("logsphere", None).await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the freed slot was never given out: {e}"),
        }
    };
    third.simple_query("SELECT 1").await.expect("served");
    drop(second);
}

/// `n` records with distinct ~210-byte messages, posted to `server`.
fn post_distinct_messages(server: &Server, n: usize) {
    let pad = "x".repeat(200);
    for chunk in 0..n.div_ceil(10_000) {
        let body: String = (chunk * 10_000..((chunk + 1) * 10_000).min(n))
            .map(|i| {
                format!(
                    "{{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"info\",\"message\":\"m{i:06} {pad}\",\"host\":\"h{}\"}}\n",
                    i % 7
                )
            })
            .collect();
        server.post_expect(body.as_bytes(), (n - chunk * 10_000).min(10_000), 0);
    }
}

/// A GROUP BY and ORDER BY over distinct ~210-byte messages.
const BIG_GROUPING: &str =
    "SELECT message, count(*) AS n FROM logs GROUP BY message ORDER BY message DESC";

/// A query that needs more than `pg.query_memory_mb` fails with SQLSTATE 53200 instead of
/// growing the server, and the server goes on ingesting and answering; under the default
/// limit (half of the machine's memory) the same query runs to its exact answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_memory_limit_fail_with_53200_and_hurt_nothing() {
    let n = 60_000;
    let starved = Server::start_with_config("[pg]\nquery_memory_mb = 2\n");
    post_distinct_messages(&starved, n);
    let client = starved.pg_client().await;
    let err = client
        .query(BIG_GROUPING, &[])
        .await
        .map(|_| ())
        .expect_err("2 MiB is too little for grouping 12 MB of messages");
    assert_eq!(err.code(), Some(&SqlState::OUT_OF_MEMORY), "{err:?}");
    starved.post_expect(b"{\"message\":\"after\"}\n", 1, 0);
    assert_eq!(
        starved.query_i64("SELECT count(*) FROM logs").await,
        n as i64 + 1
    );
    client
        .simple_query("SELECT 1")
        .await
        .expect("the connection is still usable");

    let roomy = Server::start();
    post_distinct_messages(&roomy, n);
    let rows = roomy
        .pg_client()
        .await
        .query(BIG_GROUPING, &[])
        .await
        .unwrap_or_else(|e| panic!("under the default limit: {e:?}"));
    assert_eq!(rows.len(), n);
    let first: String = rows[0].get(0);
    assert!(first.starts_with(&format!("m{:06} ", n - 1)), "{first}");
}

/// A client that asks for ~2 GB of rows and then stops reading holds only what fits in
/// the socket buffers and one or two batches on the server: results are streamed with
/// back-pressure, never buffered whole; other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_no_server_memory() {
    use std::io::Write;
    let server = Server::start();
    let pid = server.pid().expect("server pid");
    let before = logsphere_tests::rss_bytes(pid) / (1024 * 1024);
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", server.pg_port())).expect("connect");
    // StartupMessage (protocol 3.0), then a simple Query; nothing is ever read.
    let params = b"user\0logsphere\0database\0logsphere\0\0";
    let mut startup = Vec::new();
    startup.extend_from_slice(&((8 + params.len()) as i32).to_be_bytes());
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    startup.extend_from_slice(params);
    let sql = b"SELECT repeat('x', 1000) AS wide FROM generate_series(1, 2000000)\0";
    let mut query = vec![b'Q'];
    query.extend_from_slice(&((4 + sql.len()) as i32).to_be_bytes());
    query.extend_from_slice(sql);
    slow.write_all(&startup).expect("startup");
    slow.write_all(&query).expect("query");
    // Let it produce until the socket is full, then some more.
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        peak = peak.max(logsphere_tests::rss_bytes(pid) / (1024 * 1024));
    }
    assert!(
        peak < before + 300,
        "RSS went from {before} MiB to {peak} MiB while a client did not read ~2 GB of rows"
    );
    assert_eq!(
        server.query_i64("SELECT 40 + 2").await,
        42,
        "others are served"
    );
    drop(slow);
}

/// psql's `\watch`: the query runs again every interval and each run sees the records
/// ingested since. psql 15 has no iteration count (16 does), so the test reads the output as
/// it comes and stops psql itself once it has seen the new count.
#[test]
fn psql_watch_reruns_the_query() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let server = Server::start();
    let record = |i: usize| {
        format!("{{\"ts\":\"2026-11-24T10:00:0{i}Z\",\"level\":\"info\",\"msg\":\"w{i}\"}}\n")
    };
    server.post_expect((0..2).map(record).collect::<String>().as_bytes(), 2, 0);

    let mut child = Command::new("/usr/bin/psql")
        .args(["-X", "-A", "-h", "127.0.0.1", "-p"])
        .arg(server.pg_port().to_string())
        .args(["-U", "logsphere", "logsphere"])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut stdin = child.stdin.take().expect("psql stdin");
    stdin
        .write_all(b"SELECT count(*) AS n FROM logs \\watch 0.2\n")
        .expect("write to psql");
    let stdout = child.stdout.take().expect("psql stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Each run prints: the title `<time> (every 0.2s)`, a blank line, `n`, the count,
    // `(1 row)`. The counts seen, in order, until 5 shows up (or the deadline).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut lines, mut counts) = (Vec::new(), Vec::new());
    let mut posted_more = false;
    while Instant::now() < deadline && !counts.contains(&5) {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if lines.last().is_some_and(|l: &String| l == "n") {
            counts.push(line.parse::<i64>().unwrap_or(-1));
        }
        lines.push(line);
        // Two runs have shown 2: three more records, which a later run must count.
        if !posted_more && counts.iter().filter(|&&n| n == 2).count() >= 2 {
            server.post_expect((2..5).map(record).collect::<String>().as_bytes(), 3, 0);
            posted_more = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let output = format!("{}\n{stderr}", lines.join("\n"));
    assert!(counts.len() >= 3, "at least three runs: {output}");
    assert!(
        counts.starts_with(&[2, 2]) && counts.last() == Some(&5),
        "counts {counts:?}: {output}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && counts.iter().all(|n| (2..=5).contains(n)),
        "counts {counts:?}: {output}"
    );
    let titles = lines.iter().filter(|l| l.ends_with("(every 0.2s)")).count();
    assert_eq!(titles, counts.len(), "one title per run: {output}");
}
