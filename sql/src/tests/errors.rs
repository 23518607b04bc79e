//! Errors name the problem, the offending token's position, and what would work.

use super::error;

/// 1-based (line, column) of the first `needle` in `sql`, counted in characters.
fn position_of(sql: &str, needle: &str) -> (u64, u64) {
    let at = sql
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {sql}"));
    let line_start = sql[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = sql[..at].matches('\n').count() + 1;
    (line as u64, sql[line_start..at].chars().count() as u64 + 1)
}

fn assert_error_at(sql: &str, needle: &str, message_starts: &str) {
    let err = error(sql);
    assert_eq!((err.line, err.column), position_of(sql, needle), "{err}");
    assert!(err.message.starts_with(message_starts), "{err}");
}

#[test]
fn unknown_alert_option() {
    let sql = "CREATE CONTINUOUS QUERY critical_log_alert ALERT (BOGUS 1) AS SELECT * FROM logs";
    let err = error(sql);
    assert_eq!(
        err.to_string(),
        "Expected: alert option (SEVERITY, DEDUP BY, FOR, KEEP FIRING FOR, COOLDOWN, RESOLVE AFTER, ABSENT FOR, \
         LABELS, ANNOTATIONS), found: BOGUS at Line: 1, Column: 51"
    );
    assert_eq!(position_of(sql, "BOGUS"), (1, 51));
}

#[test]
fn unknown_clause() {
    let sql = "CREATE CONTINUOUS QUERY q\n  WATERMARK '5s'\n  THROTTLE '1m'\nAS SELECT 1";
    assert_error_at(
        sql,
        "THROTTLE",
        "Expected: a continuous query clause (EVENT TIME, PROCESSING TIME, WATERMARK,",
    );
    assert!(
        error(sql)
            .message
            .ends_with("or AS <query>, found: THROTTLE")
    );
}

#[test]
fn repeated_clause() {
    let sql = "CREATE CONTINUOUS QUERY q WATERMARK '5s' COMMENT 'a' WATERMARK '10s' AS SELECT 1";
    let err = error(sql);
    assert_eq!(
        err.to_string(),
        "WATERMARK specified more than once; each may appear at most once at Line: 1, Column: 54"
    );
    assert_eq!(position_of(sql, "WATERMARK '10s'"), (1, 54));
    assert_error_at(
        "CREATE CONTINUOUS QUERY q ALERT (COOLDOWN '1m', SEVERITY 'x', COOLDOWN '2m') AS SELECT 1",
        "COOLDOWN '2m'",
        "COOLDOWN specified more than once",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q ALERT (LABELS (team = 'a', Team = 'b')) AS SELECT 1",
        "Team",
        "label Team specified more than once",
    );
}

#[test]
fn bad_interval() {
    assert_error_at(
        "CREATE CONTINUOUS QUERY q WATERMARK INTERVAL '5 fortnights' AS SELECT 1",
        "INTERVAL",
        "invalid interval '5 fortnights': unknown unit 'fortnights'; use one of ms, s, m, h, d, w",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q\n  ALLOWED LATENESS INTERVAL '1 month' AS SELECT 1",
        "INTERVAL",
        "invalid interval '1 month': month has no fixed length; write the interval in days or weeks",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q WATERMARK INTERVAL '1' YEAR AS SELECT 1",
        "INTERVAL",
        "YEAR has no fixed length",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q WATERMARK 5 AS SELECT 1",
        "5 AS",
        "Expected: an interval after WATERMARK (INTERVAL '10 seconds' or '10s'), found: 5",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q ALERT (COOLDOWN 'soon') AS SELECT 1",
        "'soon'",
        "invalid interval 'soon': expected a number",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q EMIT EVERY '10' AS SELECT 1",
        "'10'",
        "invalid interval '10': 10 has no unit",
    );
}

#[test]
fn missing_as() {
    let sql = "CREATE CONTINUOUS QUERY q WATERMARK '5s' SELECT * FROM logs";
    let err = error(sql);
    assert_eq!(
        err.to_string(),
        "Expected: AS before the query body, found: SELECT at Line: 1, Column: 42"
    );
    let err = error("CREATE CONTINUOUS QUERY q AS");
    assert_eq!(
        err.to_string(),
        "Expected: a query after AS, found: EOF at Line: 1, Column: 29"
    );
    let err = error("CREATE CONTINUOUS QUERY q");
    assert!(err.message.ends_with("or AS <query>, found: EOF"), "{err}");
}

#[test]
fn bad_options_and_channels() {
    assert_error_at(
        "CREATE CONTINUOUS QUERY q WITH (max_keys = -3) AS SELECT 1",
        "-3",
        "max_keys must be a positive whole number, found: -3",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q WITH (max_keys = 10, max_keyz = 3) AS SELECT 1",
        "max_keyz",
        "unknown continuous query option max_keyz; known options: max_keys, checkpoint_interval",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q WITH (idle_timeout = 30) AS SELECT 1",
        "30",
        "idle_timeout: 30 has no unit",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q NOTIFY (EMAIL 'ops@example.com') AS SELECT 1",
        "EMAIL",
        "Expected: notification channel (TABLE name, KAFKA 'topic', WEBHOOK 'url'), found: EMAIL",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q NOTIFY (KAFKA alerts) AS SELECT 1",
        "alerts",
        "Expected: a quoted topic after KAFKA",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q ALERT (SEVERITY 'x' COOLDOWN '1m') AS SELECT 1",
        "COOLDOWN",
        "Expected: , or ) after an alert option",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q ALERT (FOR 2 HOURS) AS SELECT 1",
        "HOURS",
        "Expected: WINDOWS after FOR 2",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q MODE DRY AS SELECT 1",
        "DRY",
        "Expected: ACTIVE or SHADOW after MODE",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q EMIT ON CHANGE AS SELECT 1",
        "ON CHANGE",
        "Expected: ON THRESHOLD, ON WINDOW CLOSE",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q ALLOWED LATENESS '1m' ON LATE IGNORE AS SELECT 1",
        "IGNORE",
        "Expected: DROP, UPDATE, RECOMPUTE or INTO <table> after ON LATE",
    );
    assert_error_at(
        "CREATE CONTINUOUS QUERY q EVENT TIME ts PROCESSING TIME AS SELECT 1",
        "CREATE",
        "EVENT TIME and PROCESSING TIME exclude each other",
    );
}

#[test]
fn errors_in_the_body_and_after_it() {
    let sql = "CREATE CONTINUOUS QUERY q AS SELECT * FROM logs WHERE";
    let err = error(sql);
    assert_eq!((err.line, err.column), (1, 54), "{err}");
    assert_error_at(
        "CREATE CONTINUOUS QUERY q AS SELECT * FROM logs l SHOW",
        "SHOW",
        "Expected: end of statement (;), found: SHOW",
    );
    assert_error_at(
        "SHOW CONTINUOUS QUERIES LIKE error",
        "error",
        "Expected: a quoted pattern after LIKE",
    );
    assert_error_at(
        "DROP CONTINUOUS QUERIES q",
        "QUERIES",
        "Expected: DROP CONTINUOUS QUERY",
    );
}

#[test]
fn tokenizer_errors_are_positioned() {
    let err = error("CREATE CONTINUOUS QUERY q COMMENT 'unterminated");
    assert_eq!(err.line, 1);
    assert!(err.message.contains("Unterminated string literal"), "{err}");
}
