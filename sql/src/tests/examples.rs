//! Every example of CONTINUOUS_QUERIES.md §6 parses to the fields it spells out.

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr, SetExpr, Value};

use super::create;
use crate::{Channel, DEFAULT_WATERMARK, EmitPolicy, For, LateAction, Mode, StartFrom};

const fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

fn string(expr: &Expr) -> &str {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s,
            other => panic!("not a string: {other}"),
        },
        other => panic!("not a literal: {other}"),
    }
}

fn names(idents: &[datafusion::sql::sqlparser::ast::Ident]) -> Vec<&str> {
    idents.iter().map(|i| i.value.as_str()).collect()
}

const RULE_A: &str = "CREATE CONTINUOUS QUERY critical_log_alert
  ALERT (
    SEVERITY 'critical',
    DEDUP BY (source, log_level),            -- one instance per source+level, not per line
    COOLDOWN INTERVAL '5 minutes',           -- a storm of FATALs folds into one firing alert
    RESOLVE AFTER INTERVAL '15 minutes',
    LABELS (team = 'sre'),
    ANNOTATIONS (summary = '{log_level} from {source}: {message}')
  )
  NOTIFY (TABLE alerts, KAFKA 'logsphere.alerts',
          WEBHOOK 'https://hooks.example.com/pager' WITH (timeout = '5s'))
AS SELECT timestamp, source, log_level, message
   FROM logs
   WHERE log_level IN ('CRITICAL', 'FATAL');";

#[test]
fn seed_rule_a_per_row_alert() {
    let cq = create(RULE_A);
    assert_eq!(cq.name.to_string(), "critical_log_alert");
    assert!(!cq.or_replace && !cq.if_not_exists);
    assert_eq!(cq.event_time.value, "timestamp");
    assert_eq!(cq.watermark, DEFAULT_WATERMARK);
    assert_eq!(cq.allowed_lateness, Duration::ZERO);
    assert_eq!(cq.on_late, LateAction::Drop);
    assert_eq!(cq.emit, None);
    assert_eq!(cq.into, None);
    let alert = cq.alert.as_ref().expect("ALERT");
    assert_eq!(string(alert.severity.as_ref().unwrap()), "critical");
    assert_eq!(names(&alert.dedup_by), ["source", "log_level"]);
    assert_eq!(alert.cooldown, Some(mins(5)));
    assert_eq!(alert.resolve_after, Some(mins(15)));
    assert_eq!(alert.labels.len(), 1);
    assert_eq!(alert.labels[0].0, "team");
    assert_eq!(string(&alert.labels[0].1), "sre");
    assert_eq!(
        alert.annotations,
        [(
            "summary".to_owned(),
            "{log_level} from {source}: {message}".to_owned()
        )]
    );
    assert_eq!(cq.notify.len(), 3);
    assert!(matches!(&cq.notify[0], Channel::Table(t) if t.to_string() == "alerts"));
    assert!(
        matches!(&cq.notify[1], Channel::Kafka { topic, options } if topic == "logsphere.alerts" && options.is_empty())
    );
    let Channel::Webhook { url, options } = &cq.notify[2] else {
        panic!("{:?}", cq.notify[2])
    };
    assert_eq!(url, "https://hooks.example.com/pager");
    assert_eq!(options[0].0, "timeout");
    assert_eq!(string(&options[0].1), "5s");
    assert_eq!(cq.start_from, StartFrom::Now);
    assert_eq!(cq.mode, Mode::Active);
    assert_eq!(cq.comment, None);
    assert_eq!(
        cq.body_sql,
        "SELECT timestamp, source, log_level, message\n   FROM logs\n   WHERE log_level IN ('CRITICAL', 'FATAL')"
    );
    assert_eq!(
        cq.query.to_string(),
        "SELECT timestamp, source, log_level, message FROM logs WHERE log_level IN ('CRITICAL', 'FATAL')"
    );
    // The raw text for SHOW CREATE: comments kept, the `;` not.
    assert_eq!(cq.sql_text, RULE_A.strip_suffix(';').unwrap());
}

const RULE_B: &str = "CREATE CONTINUOUS QUERY error_burst_per_source
  WATERMARK INTERVAL '10 seconds'
  ALLOWED LATENESS INTERVAL '2 minutes' ON LATE UPDATE
  EMIT ON THRESHOLD                          -- the default anyway: count(*) > 100 is monotone
  ALERT (SEVERITY 'warning', COOLDOWN INTERVAL '10 minutes')   -- DEDUP BY defaults to (source)
  NOTIFY (TABLE alerts, WEBHOOK 'https://hooks.example.com/slack')
  COMMENT 'more than 100 ERROR logs in one minute, per source'
AS SELECT window_start, window_end, source, count(*) AS error_count
   FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
   WHERE log_level = 'ERROR'
   GROUP BY window_start, window_end, source
   HAVING count(*) > 100;";

#[test]
fn seed_rule_b_tumbling_window() {
    let cq = create(RULE_B);
    assert_eq!(cq.name.to_string(), "error_burst_per_source");
    assert_eq!(cq.watermark, Duration::from_secs(10));
    assert_eq!(cq.allowed_lateness, mins(2));
    assert_eq!(cq.on_late, LateAction::Update);
    assert_eq!(cq.emit, Some(EmitPolicy::OnThreshold));
    let alert = cq.alert.as_ref().unwrap();
    assert_eq!(string(alert.severity.as_ref().unwrap()), "warning");
    assert_eq!(alert.cooldown, Some(mins(10)));
    assert!(alert.dedup_by.is_empty(), "DEDUP BY left to the planner");
    assert!(
        matches!(&cq.notify[..], [Channel::Table(_), Channel::Webhook { url, .. }] if url == "https://hooks.example.com/slack")
    );
    assert_eq!(
        cq.comment.as_deref(),
        Some("more than 100 ERROR logs in one minute, per source")
    );
    assert!(
        cq.body_sql
            .starts_with("SELECT window_start, window_end, source, count(*) AS error_count")
    );
    assert!(cq.body_sql.ends_with("HAVING count(*) > 100"));
    // The window table function survives in FROM, with `timestamp` as a plain identifier.
    let body = cq.query.to_string();
    assert!(
        body.contains("FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')"),
        "{body}"
    );
}

#[test]
fn sliding_window_with_escalation_and_pending_period() {
    let cq = create(
        "CREATE CONTINUOUS QUERY error_burst_sliding
  ALERT (SEVERITY CASE WHEN count(*) > 1000 THEN 'critical' ELSE 'warning' END,
         FOR 2 WINDOWS, KEEP FIRING FOR INTERVAL '2 minutes')
AS SELECT window_end, source, count(*) AS error_count
   FROM HOP(logs, timestamp, INTERVAL '10 seconds', INTERVAL '1 minute')
   WHERE log_level = 'ERROR'
   GROUP BY window_start, window_end, source
   HAVING count(*) > 100;",
    );
    assert_eq!(cq.name.to_string(), "error_burst_sliding");
    let alert = cq.alert.as_ref().unwrap();
    assert!(
        matches!(alert.severity, Some(Expr::Case { .. })),
        "{:?}",
        alert.severity
    );
    assert_eq!(alert.for_, Some(For::Windows(2)));
    assert_eq!(alert.keep_firing_for, Some(mins(2)));
    assert!(
        cq.body_sql
            .contains("FROM HOP(logs, timestamp, INTERVAL '10 seconds', INTERVAL '1 minute')")
    );
}

#[test]
fn flatline_absence() {
    let cq = create(
        "CREATE CONTINUOUS QUERY source_went_silent
  ALERT (SEVERITY 'warning', ABSENT FOR INTERVAL '5 minutes', DEDUP BY (source))
AS SELECT window_end, source, count(*) AS n
   FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
   GROUP BY window_start, window_end, source;",
    );
    let alert = cq.alert.as_ref().unwrap();
    assert_eq!(alert.absent_for, Some(mins(5)));
    assert_eq!(names(&alert.dedup_by), ["source"]);
    assert!(cq.notify.is_empty());
}

#[test]
fn materializing_backfilled_query() {
    let cq = create(
        "CREATE CONTINUOUS QUERY IF NOT EXISTS error_counts_1m
  INTO error_counts_1m
  ALLOWED LATENESS INTERVAL '1 hour' ON LATE RECOMPUTE
  START FROM TIMESTAMP '2025-01-01 00:00:00'
AS SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, log_level, count(*) AS n
   FROM logs GROUP BY 1, 2, 3;",
    );
    assert!(cq.if_not_exists);
    assert_eq!(
        cq.into.as_ref().map(ToString::to_string).as_deref(),
        Some("error_counts_1m")
    );
    assert_eq!(cq.allowed_lateness, mins(60));
    assert_eq!(cq.on_late, LateAction::Recompute);
    assert!(cq.alert.is_none());
    let StartFrom::Timestamp(ts) = &cq.start_from else {
        panic!("{:?}", cq.start_from)
    };
    assert_eq!(ts.to_string(), "TIMESTAMP '2025-01-01 00:00:00'");
    assert_eq!(
        cq.body_sql,
        "SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, log_level, count(*) AS n\n   FROM logs GROUP BY 1, 2, 3"
    );
}

#[test]
fn spike_rule_in_one_having() {
    let cq = create(
        "CREATE OR REPLACE CONTINUOUS QUERY error_spike
  EMIT ON WINDOW CLOSE
  ALERT (SEVERITY 'warning')
AS SELECT window_end, source, count(*) AS n
  FROM HOP(logs, timestamp, INTERVAL '1 minute', INTERVAL '10 minutes') WHERE log_level = 'ERROR'
  GROUP BY window_start, window_end, source
  HAVING count(*) FILTER (WHERE timestamp >= window_end - INTERVAL '1 minute')
       > 5 * greatest(count(*) FILTER (WHERE timestamp < window_end - INTERVAL '1 minute') / 9.0, 10);",
    );
    assert!(cq.or_replace);
    assert_eq!(cq.emit, Some(EmitPolicy::OnWindowClose));
    assert!(cq.body_sql.ends_with("/ 9.0, 10)"), "{}", cq.body_sql);
    let SetExpr::Select(select) = cq.query.body.as_ref() else {
        panic!("{}", cq.query)
    };
    let having = select.having.as_ref().expect("HAVING");
    assert!(
        having
            .to_string()
            .contains("FILTER (WHERE timestamp >= window_end - INTERVAL '1 minute')")
    );
}

#[test]
fn clauses_in_any_order_and_the_later_ones() {
    let cq = create(
        "create continuous query q
           with (max_keys = 10000, CHECKPOINT_INTERVAL = interval '30 seconds', idle_timeout = '1m',
                 max_ingest_delay = INTERVAL '15' SECOND, alert_retention = '2 days')
           mode shadow
           comment 'c'
           start from earliest
           emit every interval '30 seconds'
           processing time
           allowed lateness '90s' on late into late_rows
           alert (for interval '2 minutes')
           watermark '1.5s'
         as select * from logs",
    );
    assert_eq!(cq.max_keys(), Some(10_000));
    assert_eq!(cq.checkpoint_interval(), Duration::from_secs(30));
    assert_eq!(cq.idle_timeout(), Some(mins(1)));
    assert_eq!(cq.max_ingest_delay(), Some(Duration::from_secs(15)));
    assert_eq!(cq.alert_retention(), Duration::from_secs(2 * 86_400));
    assert_eq!(
        cq.with_options
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        [
            "max_keys",
            "checkpoint_interval",
            "idle_timeout",
            "max_ingest_delay",
            "alert_retention"
        ]
    );
    assert_eq!(cq.mode, Mode::Shadow);
    assert_eq!(cq.start_from, StartFrom::Earliest);
    assert_eq!(cq.emit, Some(EmitPolicy::Every(Duration::from_secs(30))));
    assert!(cq.processing_time);
    assert_eq!(cq.allowed_lateness, Duration::from_secs(90));
    assert!(matches!(&cq.on_late, LateAction::Into(t) if t.to_string() == "late_rows"));
    assert_eq!(cq.alert.unwrap().for_, Some(For::Duration(mins(2))));
    assert_eq!(cq.watermark, Duration::from_millis(1500));
    assert_eq!(cq.body_sql, "select * from logs");
}

#[test]
fn event_time_alert_defaults_and_qualified_names() {
    let cq = create(
        "CREATE CONTINUOUS QUERY ops.\"Errors\" EVENT TIME ingest_ts ALERT EMIT ON UPDATE START FROM NOW \
         AS WITH e AS (SELECT * FROM logs) SELECT * FROM e",
    );
    assert_eq!(cq.name.to_string(), "ops.\"Errors\"");
    assert_eq!(cq.event_time.value, "ingest_ts");
    assert_eq!(cq.alert, Some(crate::AlertSpec::default()));
    assert_eq!(cq.emit, Some(EmitPolicy::OnUpdate));
    assert_eq!(cq.start_from, StartFrom::Now);
    assert_eq!(cq.checkpoint_interval(), crate::DEFAULT_CHECKPOINT_INTERVAL);
    assert_eq!(cq.alert_retention(), crate::DEFAULT_ALERT_RETENTION);
    assert_eq!(
        cq.body_sql,
        "WITH e AS (SELECT * FROM logs) SELECT * FROM e"
    );
}

#[test]
fn multi_line_slices_with_wide_characters() {
    let sql = "SELECT 'héllo';\n  CREATE CONTINUOUS QUERY ü COMMENT 'naïve — ok'\n  AS SELECT 'ß' AS x FROM logs  ;";
    let statements = crate::parse_statements(sql).unwrap();
    let crate::Statement::CreateContinuousQuery(cq) = &statements[1] else {
        panic!("{statements:?}")
    };
    assert_eq!(
        cq.sql_text,
        "CREATE CONTINUOUS QUERY ü COMMENT 'naïve — ok'\n  AS SELECT 'ß' AS x FROM logs"
    );
    assert_eq!(cq.body_sql, "SELECT 'ß' AS x FROM logs");
    assert_eq!(cq.comment.as_deref(), Some("naïve — ok"));
}
