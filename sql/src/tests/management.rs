//! SHOW, DROP, ALTER, EXPLAIN and BACKTEST of continuous queries.

use std::time::Duration;

use super::{error, one};
use crate::{AlterAction, CqTarget, ShowFilter, Statement, parse_statements};

#[test]
fn show_continuous_queries() {
    assert_eq!(
        one("SHOW CONTINUOUS QUERIES"),
        Statement::ShowContinuousQueries { filter: None }
    );
    assert_eq!(
        one("SHOW CONTINUOUS QUERIES LIKE 'error%';"),
        Statement::ShowContinuousQueries {
            filter: Some(ShowFilter::Like("error%".to_owned()))
        }
    );
    let Statement::ShowContinuousQueries {
        filter: Some(ShowFilter::Where(expr)),
    } = one("show continuous queries where state = 'PAUSED'")
    else {
        panic!()
    };
    assert_eq!(expr.to_string(), "state = 'PAUSED'");
}

#[test]
fn show_create_continuous_query() {
    let Statement::ShowCreateContinuousQuery { name } =
        one("SHOW CREATE CONTINUOUS QUERY error_burst_per_source")
    else {
        panic!()
    };
    assert_eq!(name.to_string(), "error_burst_per_source");
}

#[test]
fn show_alerts() {
    let Statement::ShowAlerts { cq, filter } =
        one("SHOW ALERTS FOR error_burst_per_source WHERE state = 'firing';")
    else {
        panic!()
    };
    assert_eq!(cq.unwrap().to_string(), "error_burst_per_source");
    assert_eq!(filter.unwrap().to_string(), "state = 'firing'");
    assert_eq!(
        one("SHOW ALERTS"),
        Statement::ShowAlerts {
            cq: None,
            filter: None
        }
    );
    let Statement::ShowAlerts {
        cq: None,
        filter: Some(_),
    } = one("SHOW ALERTS WHERE severity = 'critical'")
    else {
        panic!()
    };
}

#[test]
fn drop_continuous_query() {
    let Statement::DropContinuousQuery { name, if_exists } =
        one("DROP CONTINUOUS QUERY IF EXISTS error_burst_per_source;")
    else {
        panic!()
    };
    assert_eq!(name.to_string(), "error_burst_per_source");
    assert!(if_exists);
    let Statement::DropContinuousQuery {
        if_exists: false, ..
    } = one("DROP CONTINUOUS QUERY q")
    else {
        panic!()
    };
}

#[test]
fn alter_pause_and_resume() {
    let Statement::AlterContinuousQuery {
        action: AlterAction::Pause,
        name,
    } = one("ALTER CONTINUOUS QUERY q PAUSE")
    else {
        panic!()
    };
    assert_eq!(name.to_string(), "q");
    let Statement::AlterContinuousQuery {
        action: AlterAction::Resume,
        ..
    } = one("alter continuous query q resume")
    else {
        panic!()
    };
}

#[test]
fn alter_silence_from_the_examples_is_refused_as_later_than_v1() {
    let err = error(
        "ALTER CONTINUOUS QUERY error_burst_per_source SILENCE FOR INTERVAL '1 hour' WHERE source = 'batch-job-7';",
    );
    assert_eq!((err.line, err.column), (1, 47));
    assert_eq!(
        err.message,
        "ALTER CONTINUOUS QUERY … SILENCE is not supported in v1; supported: PAUSE, RESUME"
    );
    let err = error("ALTER CONTINUOUS QUERY q STOP");
    assert_eq!(
        err.to_string(),
        "Expected: PAUSE or RESUME, found: STOP at Line: 1, Column: 26"
    );
}

#[test]
fn explain() {
    let Statement::ExplainContinuousQuery(CqTarget::Name(name)) =
        one("EXPLAIN CONTINUOUS QUERY error_burst")
    else {
        panic!()
    };
    assert_eq!(name.to_string(), "error_burst");
    let Statement::ExplainContinuousQuery(CqTarget::Create(cq)) = one(
        "EXPLAIN CREATE CONTINUOUS QUERY q WATERMARK '1m' AS SELECT * FROM logs WHERE log_level = 'ERROR'",
    ) else {
        panic!()
    };
    assert_eq!(cq.watermark, Duration::from_secs(60));
    assert_eq!(
        cq.sql_text,
        "CREATE CONTINUOUS QUERY q WATERMARK '1m' AS SELECT * FROM logs WHERE log_level = 'ERROR'"
    );
    let err = error("EXPLAIN ANALYZE CONTINUOUS QUERY q");
    assert_eq!((err.line, err.column), (1, 9));
}

#[test]
fn backtest_by_name() {
    let Statement::Backtest {
        target: CqTarget::Name(name),
        from,
        to,
    } = one(
        "BACKTEST CONTINUOUS QUERY error_burst_per_source FROM TIMESTAMP '2025-06-01 00:00:00' TO TIMESTAMP '2025-06-08 00:00:00';",
    )
    else {
        panic!()
    };
    assert_eq!(name.to_string(), "error_burst_per_source");
    assert_eq!(from.to_string(), "TIMESTAMP '2025-06-01 00:00:00'");
    assert_eq!(to.to_string(), "TIMESTAMP '2025-06-08 00:00:00'");
}

#[test]
fn backtest_inline_create_range_follows_the_body() {
    let sql = "BACKTEST CREATE CONTINUOUS QUERY b ALERT (SEVERITY 'warning')
               AS SELECT window_start, source, count(*) AS n
                  FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
                  WHERE log_level = 'ERROR'
                  GROUP BY window_start, window_end, source
                  HAVING count(*) > 100
               FROM now() - INTERVAL '7 days' TO now()";
    let Statement::Backtest {
        target: CqTarget::Create(cq),
        from,
        to,
    } = one(sql)
    else {
        panic!()
    };
    assert!(
        cq.body_sql.ends_with("HAVING count(*) > 100"),
        "{}",
        cq.body_sql
    );
    assert!(cq.sql_text.starts_with("CREATE CONTINUOUS QUERY b"));
    assert_eq!(from.to_string(), "now() - INTERVAL '7 days'");
    assert_eq!(to.to_string(), "now()");

    // A body that ends in its own FROM/WHERE: the next FROM still starts the range.
    let Statement::Backtest {
        target: CqTarget::Create(cq),
        ..
    } = one(
        "BACKTEST CREATE CONTINUOUS QUERY b AS SELECT * FROM logs FROM '2025-06-01' TO '2025-06-02'",
    )
    else {
        panic!()
    };
    assert_eq!(cq.body_sql, "SELECT * FROM logs");
}

#[test]
fn backtest_parenthesized_create() {
    let Statement::Backtest {
        target: CqTarget::Create(cq),
        from,
        ..
    } = one(
        "BACKTEST (CREATE CONTINUOUS QUERY b AS SELECT 1 AS one) FROM TIMESTAMP '2025-06-01 00:00:00' TO TIMESTAMP '2025-06-02 00:00:00'",
    )
    else {
        panic!()
    };
    assert_eq!(cq.body_sql, "SELECT 1 AS one");
    assert_eq!(cq.sql_text, "CREATE CONTINUOUS QUERY b AS SELECT 1 AS one");
    assert_eq!(from.to_string(), "TIMESTAMP '2025-06-01 00:00:00'");
}

#[test]
fn backtest_errors_point_at_the_range() {
    let err = error("BACKTEST CONTINUOUS QUERY q TO now()");
    assert_eq!(
        err.to_string(),
        "Expected: FROM <start> TO <end> after the continuous query, found: TO at Line: 1, Column: 29"
    );
    let err = error("BACKTEST CONTINUOUS QUERY q FROM now()");
    assert_eq!((err.line, err.column), (1, 39));
    // No FROM in the body, no parentheses: the range is read as the body's FROM; the hint says what to do.
    let err = error(
        "BACKTEST CREATE CONTINUOUS QUERY b AS SELECT 1 FROM TIMESTAMP '2025-06-01' TO TIMESTAMP '2025-06-02'",
    );
    assert!(
        err.message.contains("wrap the definition in parentheses"),
        "{err}"
    );
}

#[test]
fn the_management_examples_as_one_script() {
    let statements = parse_statements(
        "SHOW CONTINUOUS QUERIES LIKE 'error%';
         SHOW ALERTS FOR error_burst_per_source WHERE state = 'firing';
         BACKTEST CONTINUOUS QUERY error_burst_per_source FROM TIMESTAMP '2025-06-01 00:00:00' TO TIMESTAMP '2025-06-08 00:00:00';
         DROP CONTINUOUS QUERY IF EXISTS error_burst_per_source;",
    )
    .unwrap();
    assert_eq!(statements.len(), 4);
    assert!(matches!(statements[2], Statement::Backtest { .. }));
}
