//! Continuous queries end to end: definitions over pgwire, alerts from ingested logs, and
//! a SIGKILL restart that keeps both without duplicating an alert.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::Server;
use logsphere_tests::receiver::Receiver;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// Seed rule A (CONTINUOUS_QUERIES.md §6 example 1), as written there but for the KAFKA
/// channel, which needs brokers (tests/it/notify.rs has it as written).
const RULE_A: &str = "CREATE CONTINUOUS QUERY critical_log_alert
  ALERT (
    SEVERITY 'critical',
    DEDUP BY (source, log_level),
    COOLDOWN INTERVAL '5 minutes',
    RESOLVE AFTER INTERVAL '15 minutes',
    LABELS (team = 'sre'),
    ANNOTATIONS (summary = '{log_level} from {source}: {message}')
  )
  NOTIFY (TABLE alerts,
          WEBHOOK 'https://hooks.example.com/pager' WITH (timeout = '5s'))
  WITH (checkpoint_interval = '1s')
AS SELECT timestamp, source, log_level, message
   FROM logs
   WHERE log_level IN ('CRITICAL', 'FATAL')";

/// Seed rule B (§6 example 2) with a 1 s watermark to keep the test fast.
const RULE_B: &str = "CREATE CONTINUOUS QUERY error_burst_per_source
  WATERMARK INTERVAL '1 second'
  ALLOWED LATENESS INTERVAL '2 minutes' ON LATE UPDATE
  EMIT ON THRESHOLD
  ALERT (SEVERITY 'warning', COOLDOWN INTERVAL '10 minutes')
  NOTIFY (TABLE alerts, WEBHOOK 'https://hooks.example.com/slack')
  COMMENT 'more than 100 ERROR logs in one minute, per source'
  WITH (checkpoint_interval = '1s')
AS SELECT window_start, window_end, source, count(*) AS error_count
   FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
   WHERE log_level = 'ERROR'
   GROUP BY window_start, window_end, source
   HAVING count(*) > 100";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn records(n: usize, ts_ms: i64, level: &str, source: &str) -> Vec<u8> {
    (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":{ts_ms},\"level\":\"{level}\",\"source\":\"{source}\",\"message\":\"event {i}\"}}\n"
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// Polls `sql` (one i64) until `done` holds, for at most 20 s; returns the last value.
async fn wait_i64(client: &Client, sql: &str, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if done(v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the CQ `name` has taken in at least `rows` input rows.
async fn wait_rows_in(client: &Client, name: &str, rows: i64) {
    let sql = format!("SELECT rows_in FROM continuous_queries WHERE name = '{name}'");
    let got = wait_i64(client, &sql, |v| v >= rows).await;
    assert!(got >= rows, "{name} saw {got} rows, expected {rows}");
}

/// `(alert_id, labels, observation_count, value)` of every alert of `cq`, by id.
async fn alerts(client: &Client, cq: &str) -> Vec<(String, String, i64, String)> {
    client
        .query(
            "SELECT alert_id, labels, observation_count, value FROM alerts \
             WHERE cq_name = $1 ORDER BY alert_id",
            &[&cq],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn code(result: Result<u64, tokio_postgres::Error>) -> SqlState {
    let err = result.expect_err("the statement fails");
    err.as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"))
        .code()
        .clone()
}

#[tokio::test]
async fn seed_rule_a_folds_a_storm_into_one_alert_and_survives_restart() {
    let mut server = Server::start();
    let client = server.pg_client().await;
    client.batch_execute(RULE_A).await.unwrap();

    let t = now_ms();
    server.post_expect(&records(1, t, "CRITICAL", "web-1"), 1, 0);
    let count = "SELECT count(*) FROM alerts WHERE cq_name = 'critical_log_alert'";
    assert_eq!(wait_i64(&client, count, |n| n >= 1).await, 1);
    let rows = client
        .query(
            "SELECT severity, state, labels, annotations, window_start IS NULL \
             FROM alerts WHERE cq_name = 'critical_log_alert'",
            &[],
        )
        .await
        .unwrap();
    let row = &rows[0];
    assert_eq!(row.get::<_, String>(0), "critical");
    assert_eq!(row.get::<_, String>(1), "firing");
    let labels: serde_json::Value = serde_json::from_str(&row.get::<_, String>(2)).unwrap();
    assert_eq!(
        labels,
        serde_json::json!({"source": "web-1", "log_level": "CRITICAL", "team": "sre"})
    );
    let annotations: serde_json::Value = serde_json::from_str(&row.get::<_, String>(3)).unwrap();
    assert_eq!(
        annotations["summary"], "CRITICAL from web-1: event 0",
        "{annotations}"
    );
    assert!(row.get::<_, bool>(4));

    // FATAL is stored as CRITICAL: the same instance, folded in. ERROR does not match, and
    // another source is another instance.
    server.post_expect(&records(1, t + 1000, "FATAL", "web-1"), 1, 0);
    server.post_expect(&records(1, t + 1000, "ERROR", "web-1"), 1, 0);
    wait_rows_in(&client, "critical_log_alert", 3).await;
    let obs = "SELECT max(observation_count) FROM alerts WHERE cq_name = 'critical_log_alert'";
    assert_eq!(wait_i64(&client, obs, |n| n >= 2).await, 2);
    server.post_expect(&records(1, t + 2000, "CRITICAL", "web-2"), 1, 0);
    assert_eq!(wait_i64(&client, count, |n| n >= 2).await, 2);
    let before = alerts(&client, "critical_log_alert").await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(
        before.iter().map(|a| a.2).sum::<i64>(),
        3,
        "observations: {before:?}"
    );

    // SIGKILL after a checkpoint covering every alert, twice: nothing is added or
    // counted again.
    let checkpointed = "SELECT count(*) FROM continuous_queries \
                        WHERE name = 'critical_log_alert' AND last_checkpoint > last_fired";
    assert_eq!(wait_i64(&client, checkpointed, |n| n == 1).await, 1);
    drop(client);
    server.restart();
    let client = server.pg_client().await;
    assert_eq!(alerts(&client, "critical_log_alert").await, before);
    server.restart();
    let client = server.pg_client().await;
    assert_eq!(alerts(&client, "critical_log_alert").await, before);
    let shown = client
        .simple_query("SHOW CONTINUOUS QUERIES LIKE 'critical%'")
        .await
        .unwrap();
    let names: Vec<String> = shown
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("name").map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["critical_log_alert".to_string()]);

    // It keeps running after the restart; killed again before its next checkpoint, the
    // replay of the entries after the last one rebuilds the same alerts.
    server.post_expect(&records(1, t + 3000, "CRITICAL", "web-3"), 1, 0);
    assert_eq!(wait_i64(&client, count, |n| n >= 3).await, 3);
    let after = alerts(&client, "critical_log_alert").await;
    drop(client);
    server.restart();
    let client = server.pg_client().await;
    assert_eq!(alerts(&client, "critical_log_alert").await, after);
}

#[tokio::test]
async fn seed_rule_b_fires_once_per_source_and_window_and_survives_restart() {
    // Small WAL segments, so a flush deletes the ones not held for the CQ's replay.
    let mut server = Server::start_with_config("[storage]\nwal_segment_bytes = 4096\n");
    let client = server.pg_client().await;
    // No checkpoint after CREATE within the test: the restart rebuilds every alert from
    // the WAL alone.
    client
        .batch_execute(&RULE_B.replace(
            "checkpoint_interval = '1s'",
            "checkpoint_interval = '1 hour'",
        ))
        .await
        .unwrap();
    let cq = "error_burst_per_source";

    // All in one minute of event time; the window is still open (watermark 1 s).
    let minute = now_ms() / 60_000 * 60_000;
    let t = minute + 30_000;
    server.post_expect(&records(99, t, "ERROR", "quiet"), 99, 0);
    wait_rows_in(&client, cq, 99).await;
    assert_eq!(alerts(&client, cq).await.len(), 0, "99 errors are no burst");

    server.post_expect(&records(150, t, "ERROR", "api"), 150, 0);
    let count = "SELECT count(*) FROM alerts WHERE cq_name = 'error_burst_per_source'";
    assert_eq!(wait_i64(&client, count, |n| n >= 1).await, 1);
    let one = alerts(&client, cq).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&one[0].1).unwrap(),
        serde_json::json!({"source": "api"})
    );
    // ON THRESHOLD: fired in the open window, at the crossing batch.
    let value: serde_json::Value = serde_json::from_str(&one[0].3).unwrap();
    assert_eq!(value["error_count"], 150, "{value}");

    server.post_expect(&records(150, t, "ERROR", "db"), 150, 0);
    assert_eq!(wait_i64(&client, count, |n| n >= 2).await, 2);

    // A record two minutes later moves the watermark past the window's end: the window
    // closes, and its final row updates the same two alerts.
    server.post_expect(&records(1, t + 120_000, "INFO", "api"), 1, 0);
    let obs = "SELECT min(observation_count) FROM alerts WHERE cq_name = 'error_burst_per_source'";
    assert_eq!(wait_i64(&client, obs, |n| n >= 2).await, 2);
    let before = alerts(&client, cq).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let window: Vec<(i64,)> = client
        .query(
            "SELECT CAST(to_unixtime(window_start) * 1000 AS BIGINT) FROM alerts \
             WHERE cq_name = 'error_burst_per_source'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0),))
        .collect();
    assert_eq!(window, vec![(minute,), (minute,)]);

    assert_eq!(server.flush(), 400);
    drop(client);
    server.restart();
    let client = server.pg_client().await;
    assert_eq!(alerts(&client, cq).await, before);
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 400);
    // Ticks after the restart change nothing either.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(alerts(&client, cq).await, before);
    let state: String = client
        .query_one(
            "SELECT state FROM continuous_queries WHERE name = 'error_burst_per_source'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "RUNNING");
    // The watermark (2:29 into the hour's minute + 1:59) is past the end of the window after
    // the burst's: that window closed without a burst, so both alerts resolved.
    let shown = client
        .simple_query("SHOW ALERTS FOR error_burst_per_source WHERE state = 'resolved'")
        .await
        .unwrap();
    let rows = shown
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn continuous_query_definitions_are_managed_over_both_protocols() {
    let mut server = Server::start();
    let client = server.pg_client().await;
    let create = "CREATE CONTINUOUS QUERY crit ALERT (SEVERITY 'critical') AS \
                  SELECT timestamp, source FROM logs WHERE log_level = 'CRITICAL'";
    client.execute(create, &[]).await.unwrap();
    assert_eq!(
        code(client.execute(create, &[]).await),
        SqlState::DUPLICATE_OBJECT
    );
    assert_eq!(
        code(client.batch_execute(create).await.map(|_| 0)),
        SqlState::DUPLICATE_OBJECT
    );
    client
        .execute(
            &create.replace("QUERY crit", "QUERY IF NOT EXISTS crit"),
            &[],
        )
        .await
        .unwrap();

    // SHOW CREATE gives the statement back as written, on both protocols.
    let row = client
        .query_one("SHOW CREATE CONTINUOUS QUERY crit", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(1), create);
    let simple = client
        .simple_query("SHOW CREATE CONTINUOUS QUERY crit")
        .await
        .unwrap();
    assert!(simple.iter().any(|m| matches!(m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(1) == Some(create))));

    // OR REPLACE makes version 2; PAUSE and RESUME are listed.
    client
        .execute(&create.replace("CREATE", "CREATE OR REPLACE"), &[])
        .await
        .unwrap();
    client
        .execute("ALTER CONTINUOUS QUERY crit PAUSE", &[])
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT version, state FROM continuous_queries WHERE name = 'crit'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (2, "PAUSED".into())
    );
    server.restart();
    let client = server.pg_client().await;
    let row = client
        .query_one("SHOW CONTINUOUS QUERIES", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>("name"), "crit");
    assert_eq!(row.get::<_, String>("state"), "PAUSED");
    assert_eq!(row.get::<_, i64>("version"), 2);
    client
        .batch_execute("ALTER CONTINUOUS QUERY crit RESUME")
        .await
        .unwrap();

    // Shapes the runtime cannot run, options not built yet, and unknown columns are
    // refused with a reason; nothing is stored.
    for (sql, expected) in [
        (
            "CREATE CONTINUOUS QUERY bad AS SELECT source, count(*) FROM logs GROUP BY source",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
        (
            "CREATE CONTINUOUS QUERY bad INTO logs AS SELECT source FROM logs",
            SqlState::DUPLICATE_TABLE,
        ),
        (
            "CREATE CONTINUOUS QUERY bad ALERT (DEDUP BY (nope)) AS SELECT source FROM logs",
            SqlState::FEATURE_NOT_SUPPORTED,
        ),
    ] {
        assert_eq!(code(client.execute(sql, &[]).await), expected, "{sql}");
    }
    let err = client
        .execute("CREATE CONTINUOUS QUERY bad AS SELECT nope FROM logs", &[])
        .await
        .expect_err("unknown column");
    let db = err.as_db_error().unwrap();
    assert_ne!(db.code(), &SqlState::INTERNAL_ERROR, "{}", db.message());
    assert!(db.message().contains("nope"), "{}", db.message());

    // DROP removes it; a second DROP needs IF EXISTS.
    client
        .execute("DROP CONTINUOUS QUERY crit", &[])
        .await
        .unwrap();
    assert_eq!(
        code(client.execute("DROP CONTINUOUS QUERY crit", &[]).await),
        SqlState::UNDEFINED_OBJECT
    );
    client
        .batch_execute("DROP CONTINUOUS QUERY IF EXISTS crit")
        .await
        .unwrap();
    assert_eq!(
        code(
            client
                .execute("SHOW CREATE CONTINUOUS QUERY crit", &[])
                .await
        ),
        SqlState::UNDEFINED_OBJECT
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM continuous_queries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn per_row_alert_resolves_after_quiet_event_time_and_fires_anew() {
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .batch_execute(
            "CREATE CONTINUOUS QUERY crit WATERMARK INTERVAL '1 second' \
             ALERT (DEDUP BY (source), RESOLVE AFTER INTERVAL '1 minute') \
             AS SELECT timestamp, source FROM logs WHERE log_level = 'CRITICAL'",
        )
        .await
        .unwrap();
    let t = now_ms();
    server.post_expect(&records(2, t, "CRITICAL", "web-1"), 2, 0);
    let firing = "SELECT count(*) FROM alerts WHERE state = 'firing'";
    assert_eq!(wait_i64(&client, firing, |n| n >= 1).await, 1);
    // Two minutes of event time later, with no match in between: resolved.
    server.post_expect(&records(1, t + 120_000, "INFO", "web-1"), 1, 0);
    let resolved =
        "SELECT count(*) FROM alerts WHERE state = 'resolved' AND resolved_at IS NOT NULL";
    assert_eq!(wait_i64(&client, resolved, |n| n >= 1).await, 1);
    server.post_expect(&records(1, t + 121_000, "CRITICAL", "web-1"), 1, 0);
    assert_eq!(wait_i64(&client, firing, |n| n >= 1).await, 1);
    let rows = client
        .query(
            "SELECT state, observation_count FROM alerts ORDER BY first_seen",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![("resolved".into(), 2), ("firing".into(), 1)]);
}

#[tokio::test]
async fn late_rows_that_cross_the_threshold_fire_an_alert_flagged_late() {
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .batch_execute(
            "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' \
             ALLOWED LATENESS INTERVAL '5 minutes' ON LATE UPDATE ALERT \
             AS SELECT window_start, source, count(*) AS n \
             FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
             GROUP BY window_start, window_end, source HAVING count(*) > 100",
        )
        .await
        .unwrap();
    let t = now_ms() / 60_000 * 60_000 + 30_000;
    server.post_expect(&records(99, t, "ERROR", "api"), 99, 0);
    // Closes the window at 99: no alert.
    server.post_expect(&records(1, t + 120_000, "INFO", "api"), 1, 0);
    wait_rows_in(&client, "burst", 100).await;
    assert!(alerts(&client, "burst").await.is_empty());
    // Two late rows for the closed window, within the allowed lateness: 101 > 100.
    server.post_expect(&records(2, t, "ERROR", "api"), 2, 0);
    let count = "SELECT count(*) FROM alerts WHERE late";
    assert_eq!(wait_i64(&client, count, |n| n >= 1).await, 1);
    let value: String = client
        .query_one("SELECT value FROM alerts", &[])
        .await
        .unwrap()
        .get(0);
    let value: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(value["n"], 101, "{value}");
    let late_updated: i64 = client
        .query_one(
            "SELECT late_rows_updated FROM continuous_queries WHERE name = 'burst'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(late_updated, 2);

    // Beyond the allowed lateness: counted as dropped, no alert change, still in `logs`.
    let too_late = records(3, t - 10 * 60_000, "ERROR", "too-late");
    server.post_expect(&too_late, 3, 0);
    let dropped = "SELECT late_rows_dropped FROM continuous_queries WHERE name = 'burst'";
    assert_eq!(wait_i64(&client, dropped, |n| n >= 3).await, 3);
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs WHERE source = 'too-late'")
            .await,
        3
    );
    assert_eq!(wait_i64(&client, count, |n| n >= 1).await, 1);
}

/// 2026-11-24T10:00:00Z in ms since the epoch.
const NOV_24_10H: i64 = 1_795_514_400_000;

/// Seed rule B as written (EMIT chosen by the planner), with a wall-clock floor far enough
/// back that event times a week old are not late when it runs live.
fn rule_b_history() -> String {
    RULE_B.replace("EMIT ON THRESHOLD\n  ", "").replace(
        "checkpoint_interval = '1s'",
        "checkpoint_interval = '1s', max_ingest_delay = '3650 days'",
    )
}

/// `(fingerprint, labels, window_start ms, value)` of each row, from `rows`.
fn fired(rows: &[tokio_postgres::Row]) -> Vec<(String, String, i64, String)> {
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

const FIRED_COLUMNS: &str = "fingerprint, labels, \
     CAST(to_unixtime(window_start) * 1000 AS BIGINT), value";

#[tokio::test]
async fn backtest_replays_seed_rule_b_over_both_tiers_and_agrees_with_live() {
    let server = Server::start();
    let client = server.pg_client().await;
    let rule = rule_b_history();
    // Live, created before ingest.
    client.batch_execute(&rule).await.unwrap();
    let cq = "error_burst_per_source";

    // api in minute 10:00 (flushed to the cold tier), web in 10:01 (hot).
    server.post_expect(&records(150, NOV_24_10H + 30_000, "ERROR", "api"), 150, 0);
    assert_eq!(server.flush(), 150);
    server.post_expect(&records(99, NOV_24_10H + 90_000, "ERROR", "web"), 99, 0);
    wait_rows_in(&client, cq, 249).await;
    let count = "SELECT count(*) FROM alerts";
    assert_eq!(wait_i64(&client, count, |n| n >= 1).await, 1);
    let live_sql = format!("SELECT {FIRED_COLUMNS} FROM alerts WHERE cq_name = '{cq}'");
    let live = fired(&client.query(&live_sql, &[]).await.unwrap());
    let alerts_before = alerts(&client, cq).await;

    // By name, and inline; both over the extended and the simple protocol.
    let by_name = format!(
        "BACKTEST CONTINUOUS QUERY {cq} FROM '2026-11-24T10:00:00Z' TO '2026-11-24T11:00:00Z'"
    );
    let inline = format!(
        "BACKTEST ({}) FROM TIMESTAMP '2026-11-24 10:00:00' TO '2026-11-24T11:00:00Z'",
        rule.replace("error_burst_per_source", "error_burst_inline")
    );
    for sql in [&by_name, &inline] {
        // Every transition: fired in the 10:00 window, resolved when the 10:01 window closed
        // without a burst (in event time: 10:02).
        let rows = client.query(sql.as_str(), &[]).await.unwrap();
        assert_eq!(rows.len(), 2, "{sql}");
        let kinds: Vec<String> = rows.iter().map(|r| r.get("transition")).collect();
        assert_eq!(kinds, ["fired", "resolved"]);
        let resolved_at: SystemTime = rows[1].get("resolved_at");
        let resolved_ms = resolved_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(resolved_ms, NOV_24_10H + 120_000);
        assert_eq!(rows[1].get::<_, i64>("observation_count"), 2);
        let row = &rows[0];
        let labels: serde_json::Value =
            serde_json::from_str(&row.get::<_, String>("labels")).unwrap();
        assert_eq!(labels, serde_json::json!({"source": "api"}));
        let value: serde_json::Value =
            serde_json::from_str(&row.get::<_, String>("value")).unwrap();
        assert_eq!(value["error_count"], 150, "{value}");
        assert_eq!(row.get::<_, String>("state"), "firing");
        assert!(!row.get::<_, bool>("late"));
        assert!(row.get::<_, bool>("notified"));
        assert_eq!(row.get::<_, i64>("observation_count"), 1);
        let simple = client.simple_query(sql).await.unwrap();
        let n = simple
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(n, 2, "{sql}");
    }

    // Stream/batch agreement: the same fingerprint, window and value as live.
    let rows = client.query(by_name.as_str(), &[]).await.unwrap();
    let backtested: Vec<(String, String, i64, String)> = rows
        .iter()
        .filter(|r| r.get::<_, String>("transition") == "fired")
        .map(|r| {
            let start: std::time::SystemTime = r.get("window_start");
            let ms = start.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
            (r.get("fingerprint"), r.get("labels"), ms, r.get("value"))
        })
        .collect();
    assert_eq!(backtested, live);
    assert_eq!(live[0].2, NOV_24_10H);

    // A range before the burst finds nothing; `now() - INTERVAL` bounds evaluate.
    let rows = client
        .query(
            &format!("BACKTEST CONTINUOUS QUERY {cq} FROM now() - INTERVAL '1 hour' TO now()"),
            &[],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());

    // Nothing of a backtest reaches the live alerts table.
    assert_eq!(alerts(&client, cq).await, alerts_before);
    assert_eq!(wait_i64(&client, count, |_| true).await, 1);
    assert_eq!(
        code(
            client
                .execute("BACKTEST CONTINUOUS QUERY nope FROM now() TO now()", &[])
                .await
        ),
        SqlState::UNDEFINED_OBJECT
    );
}

/// `EXPLAIN …` as `item → value`.
async fn explain(client: &Client, sql: &str) -> std::collections::BTreeMap<String, String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn explain_continuous_query_shows_emit_policy_key_and_latency() {
    let server = Server::start();
    let client = server.pg_client().await;
    let rule = rule_b_history();
    client.batch_execute(&rule).await.unwrap();

    // Seed rule B, by name and inline: monotone HAVING, so ON THRESHOLD, at ingest.
    for sql in [
        "EXPLAIN CONTINUOUS QUERY error_burst_per_source".to_string(),
        format!("EXPLAIN {rule}"),
    ] {
        let facts = explain(&client, &sql).await;
        assert!(facts["shape"].starts_with("windowed"), "{facts:?}");
        assert_eq!(facts["window"], "TUMBLE size 1m", "{facts:?}");
        assert!(facts["emit"].starts_with("ON THRESHOLD"), "{facts:?}");
        assert!(facts["emit"].contains("monotone"), "{facts:?}");
        assert_eq!(facts["instance key"], "(window_start, source)", "{facts:?}");
        assert!(
            facts["allowed lateness"].contains("2m, ON LATE UPDATE"),
            "{facts:?}"
        );
        assert!(facts["state bound"].contains("no max_keys"), "{facts:?}");
        assert_eq!(facts["worst-case alert latency"], "at ingest", "{facts:?}");
        assert!(!facts.contains_key("warning"), "{facts:?}");
    }

    // avg and a ratio can turn false again: ON WINDOW CLOSE, latency window + delays.
    for having in [
        "avg(length(message)) > 1",
        "sum(CASE WHEN log_level = 'ERROR' THEN 1 ELSE 0 END) * 1.0 / count(*) > 0.5",
    ] {
        let sql = format!(
            "EXPLAIN CREATE CONTINUOUS QUERY r WATERMARK INTERVAL '10 seconds' \
             ALERT WITH (max_keys = 1000) \
             AS SELECT window_start, source, count(*) AS n \
             FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
             GROUP BY window_start, source HAVING {having}"
        );
        let facts = explain(&client, &sql).await;
        assert!(facts["emit"].starts_with("ON WINDOW CLOSE"), "{facts:?}");
        assert!(facts["emit"].contains("not monotone"), "{facts:?}");
        assert_eq!(
            facts["worst-case alert latency"],
            "window + WATERMARK + max_ingest_delay = 1m + 10s + 5m = 6m 10s",
            "{facts:?}"
        );
        assert!(
            facts["state bound"].contains("max_keys = 1000"),
            "{facts:?}"
        );
    }

    // A per-row rule keyed on message: one alert per line, so a warning.
    let facts = explain(
        &client,
        "EXPLAIN CREATE CONTINUOUS QUERY r ALERT (DEDUP BY (source, message)) \
         AS SELECT timestamp, source, message FROM logs WHERE log_level = 'CRITICAL'",
    )
    .await;
    assert!(facts["shape"].starts_with("per-row"), "{facts:?}");
    assert_eq!(facts["instance key"], "(source, message)", "{facts:?}");
    assert!(facts["warning"].contains("message"), "{facts:?}");
    assert_eq!(facts["worst-case alert latency"], "at ingest", "{facts:?}");
    // Nothing was created by EXPLAIN.
    let n: i64 = client
        .query_one("SELECT count(*) FROM continuous_queries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

fn rule_a_to(url: &str) -> String {
    RULE_A.replace("https://hooks.example.com/pager", url)
}

#[tokio::test]
async fn webhook_posts_alertmanager_payload_with_idempotency_key_and_retries() {
    let receiver = Receiver::start(1);
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .batch_execute(&rule_a_to(&receiver.url))
        .await
        .unwrap();

    let t = now_ms();
    server.post_expect(&records(1, t, "CRITICAL", "web-1"), 1, 0);
    // The first attempt is answered 500; the retry delivers it.
    let got = receiver.wait(|r| r.len() >= 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, got[1].0, "a retry keeps its Idempotency-Key");
    let body = &got[1].1;
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "critical_log_alert");
    let alert = &body["alerts"][0];
    assert_eq!(alert["status"], "firing");
    let row = client
        .query_one(
            "SELECT alert_id, fingerprint FROM alerts WHERE cq_name = 'critical_log_alert'",
            &[],
        )
        .await
        .unwrap();
    let (alert_id, fingerprint): (String, String) = (row.get(0), row.get(1));
    assert_eq!(alert["fingerprint"], fingerprint.as_str());
    assert_eq!(alert["labels"]["source"], "web-1");
    assert_eq!(alert["labels"]["log_level"], "CRITICAL");
    assert_eq!(alert["labels"]["team"], "sre");
    assert_eq!(body["commonLabels"], alert["labels"]);
    assert_eq!(
        alert["annotations"]["summary"],
        "CRITICAL from web-1: event 0"
    );

    let delivered = "SELECT count(*) FROM alert_events \
                     WHERE kind = 'fired' AND status = 'delivered'";
    assert_eq!(wait_i64(&client, delivered, |n| n >= 1).await, 1);
    let row = client
        .query_one(
            "SELECT event_id, alert_id, channel, attempts FROM alert_events \
             WHERE kind = 'fired'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), got[0].0);
    assert_eq!(row.get::<_, String>(1), alert_id);
    assert_eq!(row.get::<_, String>(2), format!("webhook {}", receiver.url));
    assert_eq!(row.get::<_, i64>(3), 2);
    let attempts: Vec<(String, Option<String>)> = client
        .query(
            "SELECT status, last_error FROM alert_events WHERE kind = 'delivery' ORDER BY at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, "failed");
    assert_eq!(attempts[1], ("delivered".to_string(), None));

    // 16 minutes of event time without a match (RESOLVE AFTER is 15): resolved is sent
    // under its own key.
    server.post_expect(&records(1, t + 16 * 60_000, "INFO", "web-1"), 1, 0);
    let got = receiver
        .wait(|r| r.iter().any(|(_, b)| b["status"] == "resolved"))
        .await;
    let (key, body) = got
        .iter()
        .find(|(_, b)| b["status"] == "resolved")
        .expect("a resolved POST");
    assert_ne!(key, &got[0].0);
    assert_eq!(body["alerts"][0]["fingerprint"], fingerprint.as_str());
    assert_ne!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let resolved = format!(
        "SELECT count(*) FROM alert_events WHERE kind = 'resolved' \
         AND status = 'delivered' AND event_id = '{key}'"
    );
    assert_eq!(wait_i64(&client, &resolved, |n| n >= 1).await, 1);
}

#[tokio::test]
async fn webhook_delivery_is_at_least_once_with_stable_keys_across_sigkills() {
    let receiver = Receiver::start(0);
    let mut server = Server::start();
    let client = server.pg_client().await;
    client
        .batch_execute(&rule_a_to(&receiver.url))
        .await
        .unwrap();
    drop(client);

    let t = now_ms();
    let sources: Vec<String> = (0..5).map(|i| format!("web-{i}")).collect();
    for (i, source) in sources.iter().enumerate() {
        let ts = t + i as i64 * 1000;
        server.post_expect(&records(2, ts, "CRITICAL", source), 2, 0);
        std::thread::sleep(Duration::from_millis(150 * i as u64));
        server.restart();
    }

    let client = server.pg_client().await;
    let count = "SELECT count(*) FROM alerts WHERE cq_name = 'critical_log_alert'";
    assert_eq!(wait_i64(&client, count, |n| n >= 5).await, 5);
    let rows = client
        .query(
            "SELECT fingerprint, labels FROM alerts WHERE cq_name = 'critical_log_alert'",
            &[],
        )
        .await
        .unwrap();
    let mut seen_sources: Vec<String> = rows
        .iter()
        .map(|r| {
            let labels: serde_json::Value = serde_json::from_str(&r.get::<_, String>(1)).unwrap();
            labels["source"].as_str().unwrap().to_string()
        })
        .collect();
    seen_sources.sort();
    assert_eq!(seen_sources, sources, "each alert exactly once");
    let fingerprints: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();

    let got = receiver
        .wait(|r| {
            let sent: std::collections::BTreeSet<&str> = r
                .iter()
                .filter_map(|(_, b)| b["alerts"][0]["fingerprint"].as_str())
                .collect();
            fingerprints.iter().all(|f| sent.contains(f.as_str()))
        })
        .await;
    let mut keys: std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> =
        Default::default();
    for (key, body) in &got {
        assert!(!key.is_empty(), "every POST has an Idempotency-Key");
        let fp = body["alerts"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .to_string();
        let status = body["status"].as_str().unwrap().to_string();
        keys.entry((fp, status)).or_default().insert(key.clone());
    }
    for f in &fingerprints {
        assert!(
            keys.contains_key(&(f.clone(), "firing".to_string())),
            "alert {f} was never sent: {got:?}"
        );
    }
    for (k, v) in &keys {
        assert_eq!(v.len(), 1, "two Idempotency-Keys for {k:?}: {v:?}");
    }
    // Every recorded transition ends delivered.
    let undelivered = "SELECT count(*) FROM alert_events \
                       WHERE kind = 'fired' AND status <> 'delivered'";
    assert_eq!(wait_i64(&client, undelivered, |n| n == 0).await, 0);
}

/// A 1-minute TUMBLE burst rule (more than 100 ERROR per source) with a 1 s watermark;
/// `alert` is the ALERT body, `notify` the NOTIFY clause (or nothing).
fn burst_rule(alert: &str, notify: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' ALERT ({alert}) {notify} \
         AS SELECT window_start, window_end, source, count(*) AS error_count \
         FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
         GROUP BY window_start, window_end, source HAVING count(*) > 100"
    )
}

/// `(alert_id, state, window_start ms, resolved_at is set)` of every `burst` alert, by first_seen.
async fn burst_alerts(client: &Client) -> Vec<(String, String, i64, bool)> {
    client
        .query(
            "SELECT alert_id, state, CAST(to_unixtime(window_start) * 1000 AS BIGINT), \
             resolved_at IS NOT NULL FROM alerts WHERE cq_name = 'burst' ORDER BY first_seen",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn windowed_alert_folds_across_windows_and_resolves_when_a_window_closes_quiet() {
    let server = Server::start();
    let client = server.pg_client().await;
    client
        .batch_execute(&burst_rule("SEVERITY 'warning'", ""))
        .await
        .unwrap();
    let minute = now_ms() / 60_000 * 60_000;
    let t = minute + 30_000;
    server.post_expect(&records(150, t, "ERROR", "api"), 150, 0);
    let firing = "SELECT count(*) FROM alerts WHERE state = 'firing'";
    assert_eq!(wait_i64(&client, firing, |n| n >= 1).await, 1);
    let first = burst_alerts(&client).await;

    // The next minute bursts too: the same alert, now showing the later window.
    server.post_expect(&records(150, t + 60_000, "ERROR", "api"), 150, 0);
    let obs = "SELECT max(observation_count) FROM alerts";
    assert_eq!(wait_i64(&client, obs, |n| n >= 3).await, 3);
    let folded = burst_alerts(&client).await;
    assert_eq!(folded.len(), 1, "{folded:?}");
    assert_eq!(folded[0].0, first[0].0);
    assert_eq!(
        (folded[0].1.as_str(), folded[0].2),
        ("firing", minute + 60_000)
    );

    // W = minute + 2:59: the window after the last burst ([2:00, 3:00)) is still open.
    server.post_expect(&records(1, t + 150_000, "INFO", "api"), 1, 0);
    wait_rows_in(&client, "burst", 301).await;
    assert_eq!(burst_alerts(&client).await[0].1, "firing");
    // W = minute + 3:00: it closed without a burst.
    server.post_expect(&records(1, t + 151_000, "INFO", "api"), 1, 0);
    let resolved = "SELECT count(*) FROM alerts WHERE state = 'resolved' \
                    AND resolved_at IS NOT NULL AND resolved_reason IS NULL";
    assert_eq!(wait_i64(&client, resolved, |n| n >= 1).await, 1);

    // A later burst is a new alert.
    server.post_expect(&records(150, t + 240_000, "ERROR", "api"), 150, 0);
    assert_eq!(wait_i64(&client, firing, |n| n >= 1).await, 1);
    let all = burst_alerts(&client).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[0],
        (first[0].0.clone(), "resolved".into(), minute + 60_000, true)
    );
    assert_ne!(all[1].0, all[0].0);
    assert_eq!((all[1].1.as_str(), all[1].2), ("firing", minute + 240_000));
}

#[tokio::test]
async fn severity_increase_and_cooldown_repeats_are_notified_in_event_time() {
    let receiver = Receiver::start(0);
    let server = Server::start();
    let client = server.pg_client().await;
    let rule = burst_rule(
        "SEVERITY CASE WHEN error_count > 200 THEN 'critical' ELSE 'warning' END, \
         COOLDOWN INTERVAL '2 minutes'",
        &format!("NOTIFY (WEBHOOK '{}')", receiver.url),
    );
    client.batch_execute(&rule).await.unwrap();
    let minute = now_ms() / 60_000 * 60_000;
    let t = minute + 30_000;
    let severity = |body: &serde_json::Value| body["alerts"][0]["labels"]["severity"].clone();

    server.post_expect(&records(150, t, "ERROR", "api"), 150, 0);
    let got = receiver.wait(|r| !r.is_empty()).await;
    assert_eq!(severity(&got[0].1), "warning");
    // 250 in minute 0: the window's final row, when minute 1's rows close it, is critical,
    // sent at once although within the cooldown.
    server.post_expect(&records(100, t, "ERROR", "api"), 100, 0);
    server.post_expect(&records(150, t + 60_000, "ERROR", "api"), 150, 0);
    let got = receiver.wait(|r| r.len() >= 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(severity(&got[1].1), "critical");
    // Minute 2 is two minutes of event time after the last notification: a repeat.
    server.post_expect(&records(150, t + 120_000, "ERROR", "api"), 150, 0);
    let got = receiver.wait(|r| r.len() >= 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].1["status"], "firing");
    // Minute 3 is within the cooldown of that repeat: nothing is sent.
    server.post_expect(&records(150, t + 180_000, "ERROR", "api"), 150, 0);
    wait_rows_in(&client, "burst", 700).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests().len(), 3);
    // Minute 4 is not.
    server.post_expect(&records(150, t + 240_000, "ERROR", "api"), 150, 0);
    let got = receiver.wait(|r| r.len() >= 4).await;
    assert_eq!(got.len(), 4, "{got:?}");

    let keys: std::collections::BTreeSet<&String> = got.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys.len(),
        4,
        "every notification has its own Idempotency-Key"
    );
    let kinds: Vec<String> = client
        .query(
            "SELECT kind FROM alert_events WHERE kind <> 'delivery' ORDER BY kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds, ["escalated", "fired", "repeated", "repeated"]);
    let rows = client
        .query(
            "SELECT state, value FROM alerts WHERE cq_name = 'burst'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one instance across five windows");
    assert_eq!(rows[0].get::<_, String>(0), "firing");
    let value: serde_json::Value = serde_json::from_str(&rows[0].get::<_, String>(1)).unwrap();
    assert!(
        value
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("__")),
        "the severity column is hidden: {value}"
    );
}
