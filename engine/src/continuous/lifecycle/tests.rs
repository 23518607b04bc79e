//! The alert state machine, one transition kind at a time, driven by event time alone.

use arrow::array::Array;

use super::*;
use crate::continuous::tests::{BASE, Row, SEC, alert_rows, batch, create_statement, row};
use crate::continuous::{CqRegistry, CqRuntime, Position, spec_from};

/// A CQ's runtime and rule, fed like the registry feeds them (clock = newest event time).
struct Harness {
    cq: CqRuntime,
    rule: AlertRule,
    book: AlertBook,
    seq: u64,
}

impl Harness {
    async fn new(sql: &str) -> Self {
        let create = create_statement(sql);
        let cq = CqRuntime::new(spec_from(&create).unwrap()).await.unwrap();
        let rule = AlertRule::for_runtime(&create, 1, &cq).unwrap().unwrap();
        Self {
            cq,
            rule,
            book: AlertBook::default(),
            seq: 0,
        }
    }

    /// Feeds `rows` as one batch; returns its transitions.
    fn feed(&mut self, rows: &[Row]) -> Vec<Transition> {
        self.seq += 1;
        let now = BASE;
        let outputs = self
            .cq
            .process("p0", Position::Wal { seq: self.seq }, &batch(rows), now)
            .unwrap();
        let mut t = Vec::new();
        for out in &outputs {
            t.extend(self.rule.observe(out, &mut self.book, now).unwrap());
        }
        let w = self.cq.watermark().unwrap();
        t.extend(self.rule.advance(&mut self.book, w, now));
        t
    }

    /// `n` ERROR rows for `source` at `BASE + secs`.
    fn errors(&mut self, n: usize, secs: i64, source: &'static str) -> Vec<Transition> {
        let rows: Vec<Row> = (0..n)
            .map(|_| row(BASE + secs * SEC, "ERROR", source))
            .collect();
        self.feed(&rows)
    }

    /// One INFO row at `BASE + secs`: moves the watermark to `secs - 1` s.
    fn info(&mut self, secs: i64) -> Vec<Transition> {
        self.feed(&[row(BASE + secs * SEC, "INFO", "clock")])
    }

    fn alert(&self, id: &str) -> &Alert {
        &self.book.alerts[id]
    }
}

fn kinds(t: &[Transition]) -> Vec<TransitionKind> {
    t.iter().map(|t| t.kind).collect()
}

/// TUMBLE 1 minute, more than 2 errors per source, watermark 1 s; `alert` is the ALERT body.
fn burst(alert: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' ALERT ({alert}) \
         AS SELECT window_start, window_end, source, count(*) AS n \
         FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
         GROUP BY window_start, window_end, source HAVING count(*) > 2"
    )
}

#[tokio::test]
async fn windowed_instance_folds_across_windows_and_resolves_when_a_window_closes_empty() {
    let mut h = Harness::new(&burst("SEVERITY 'warning'")).await;
    let fired = h.errors(3, 1, "api");
    assert_eq!(kinds(&fired), vec![TransitionKind::Fired]);
    let id = fired[0].alert.alert_id.clone();
    assert_eq!(fired[0].at, BASE);
    // The next window qualifies too: folded into the same instance, no notification.
    assert!(h.errors(3, 61, "api").is_empty());
    assert_eq!(h.book.alerts.len(), 1);
    let a = h.alert(&id);
    assert_eq!(a.state, "firing");
    assert_eq!(a.window_start, Some(BASE + 60 * SEC));
    assert_eq!(a.episode.windows, 2);
    // Window [60, 120) closes with its final row; [120, 180) is still open: firing.
    assert!(h.info(150).is_empty());
    assert_eq!(h.alert(&id).state, "firing");
    // W = 180 s closes [120, 180) with no qualifying row: resolved, in event time 180 s.
    let resolved = h.info(181);
    assert_eq!(kinds(&resolved), vec![TransitionKind::Resolved]);
    assert_eq!(resolved[0].at, BASE + 180 * SEC);
    assert_eq!(h.alert(&id).state, "resolved");
    assert_eq!(h.alert(&id).episode.resolved_event, Some(BASE + 180 * SEC));
    // A later burst is a new episode with its own id.
    let again = h.errors(3, 241, "api");
    assert_eq!(kinds(&again), vec![TransitionKind::Fired]);
    assert_ne!(again[0].alert.alert_id, id);
    assert_eq!(h.book.alerts.len(), 2);
}

#[tokio::test]
async fn for_n_windows_pends_then_fires_and_a_broken_streak_goes_inactive() {
    let mut h = Harness::new(&burst("FOR 2 WINDOWS")).await;
    let first = h.errors(3, 1, "api");
    assert_eq!(kinds(&first), vec![TransitionKind::Pending]);
    assert!(!first[0].notifies());
    let id = first[0].alert.alert_id.clone();
    assert_eq!(h.alert(&id).state, "pending");
    let second = h.errors(3, 61, "api");
    assert_eq!(kinds(&second), vec![TransitionKind::Fired]);
    assert_eq!(
        second[0].alert.alert_id, id,
        "the pending instance is the one that fires"
    );
    assert_eq!(second[0].alert.episode.fired_event, Some(BASE + 60 * SEC));

    // db qualifies in one window only: pending, then inactive when the next closes empty.
    assert_eq!(
        kinds(&h.errors(3, 121, "db")),
        vec![TransitionKind::Pending]
    );
    let t = h.info(241);
    let db: Vec<_> = t
        .iter()
        .filter(|t| t.alert.labels.contains("db"))
        .map(|t| t.kind)
        .collect();
    assert_eq!(db, vec![TransitionKind::Inactive]);
    assert!(h.book.alerts.values().all(|a| !a.labels.contains("db")));
}

#[tokio::test]
async fn for_interval_on_a_per_row_rule_counts_event_time() {
    let mut h = Harness::new(
        "CREATE CONTINUOUS QUERY crit WATERMARK INTERVAL '1 second' \
         ALERT (DEDUP BY (source), FOR INTERVAL '30 seconds', RESOLVE AFTER INTERVAL '1 minute') \
         AS SELECT timestamp, source FROM logs WHERE log_level = 'CRITICAL'",
    )
    .await;
    let crit = |s| [row(BASE + s * SEC, "CRITICAL", "web")];
    assert_eq!(kinds(&h.feed(&crit(0))), vec![TransitionKind::Pending]);
    assert!(h.feed(&crit(20)).is_empty(), "20 s < FOR 30 s");
    assert_eq!(kinds(&h.feed(&crit(31))), vec![TransitionKind::Fired]);
    let resolved = h.info(93);
    assert_eq!(kinds(&resolved), vec![TransitionKind::Resolved]);
    assert_eq!(
        resolved[0].at,
        BASE + 91 * SEC,
        "last match + RESOLVE AFTER"
    );
}

#[tokio::test]
async fn keep_firing_for_holds_a_false_condition_and_a_new_window_resets_it() {
    let mut h = Harness::new(&burst("KEEP FIRING FOR INTERVAL '2 minutes'")).await;
    let id = h.errors(3, 1, "api")[0].alert.alert_id.clone();
    // False since 120 s; kept firing until 240 s.
    assert!(h.info(200).is_empty());
    assert_eq!(h.alert(&id).state, "firing");
    // Window [180, 240) qualifies during the keep period: folded, the clock restarts.
    assert!(h.errors(3, 181, "api").is_empty());
    assert!(h.info(300).is_empty());
    assert_eq!(h.alert(&id).state, "firing");
    // False since 300 s (window [240, 300) closed empty), + 2 minutes.
    assert!(h.info(420).is_empty());
    let resolved = h.info(421);
    assert_eq!(kinds(&resolved), vec![TransitionKind::Resolved]);
    assert_eq!(resolved[0].at, BASE + 420 * SEC);
}

#[tokio::test]
async fn severity_expression_escalates_at_once_and_cooldown_spaces_repeats() {
    let mut h = Harness::new(&burst(
        "SEVERITY CASE WHEN n > 5 THEN 'critical' ELSE 'warning' END, COOLDOWN INTERVAL '2 minutes'",
    ))
    .await;
    let fired = h.errors(3, 1, "api");
    assert_eq!(kinds(&fired), vec![TransitionKind::Fired]);
    assert_eq!(fired[0].alert.severity, "warning");
    let value: serde_json::Value = serde_json::from_str(&fired[0].alert.value).unwrap();
    assert_eq!(value["n"], 3);
    assert!(
        value
            .get(crate::continuous::alerts::SEVERITY_COLUMN)
            .is_none(),
        "the severity column is hidden: {value}"
    );
    // Three more in window 0 (no threshold row: it fired already) ...
    assert!(h.errors(3, 2, "api").is_empty());
    // ... whose final row (n = 6) arrives when window 1's rows close window 0: critical,
    // sent although within the cooldown.
    let t = h.errors(3, 61, "api");
    assert_eq!(kinds(&t), vec![TransitionKind::Escalated]);
    assert_eq!(t[0].alert.severity, "critical");
    // Window 2 is 2 minutes (of window time) after the last notification: a repeat.
    let t = h.errors(3, 121, "api");
    assert_eq!(kinds(&t), vec![TransitionKind::Repeated]);
    // Window 3 is within the cooldown of that repeat; window 4 is not.
    assert!(h.errors(3, 181, "api").is_empty());
    let t4 = h.errors(3, 241, "api");
    assert_eq!(kinds(&t4), vec![TransitionKind::Repeated]);
    assert_ne!(t4[0].id, t[0].id, "each repeat has its own id");
    // Back to warning and up again: not a new escalation (critical was notified).
    assert!(h.errors(7, 301, "api").is_empty());
    assert_eq!(h.book.alerts.len(), 1);
}

#[tokio::test]
async fn absent_for_opens_an_absent_instance_for_a_silent_key_and_resolves_on_its_return() {
    let mut h = Harness::new(
        "CREATE CONTINUOUS QUERY source_went_silent WATERMARK INTERVAL '1 second' \
         ALERT (SEVERITY 'warning', ABSENT FOR INTERVAL '2 minutes', DEDUP BY (source)) \
         AS SELECT window_end, source, count(*) AS n \
         FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') \
         GROUP BY window_start, window_end, source",
    )
    .await;
    let at = |s: i64, source| [row(BASE + s * SEC, "INFO", source)];
    assert!(h.feed(&at(1, "api")).is_empty());
    // db keeps logging; api's window 0 closes at 60 s: api's rows cover up to 60 s.
    assert!(h.feed(&at(61, "db")).is_empty());
    assert!(h.feed(&at(121, "db")).is_empty());
    assert!(h.book.alerts.is_empty(), "rows are heartbeats, not alerts");
    let t = h.feed(&at(181, "db"));
    assert_eq!(kinds(&t), vec![TransitionKind::Fired]);
    let absent = &t[0].alert;
    assert_eq!(t[0].at, BASE + 180 * SEC);
    let labels: serde_json::Value = serde_json::from_str(&absent.labels).unwrap();
    assert_eq!(
        labels,
        serde_json::json!({"source": "api", "absent": "true"})
    );
    assert_eq!(absent.state, "firing");
    assert_eq!(absent.window_start, Some(BASE + 60 * SEC));
    let id = absent.alert_id.clone();
    // Still silent: nothing new.
    assert!(h.feed(&at(182, "db")).is_empty());
    // api logs again; its window [240, 300) closes at 300 s: the absence ends.
    assert!(h.feed(&at(241, "api")).is_empty());
    let t = h.feed(&at(301, "db"));
    assert_eq!(kinds(&t), vec![TransitionKind::Resolved]);
    assert_eq!(t[0].alert.alert_id, id);
    assert_eq!(t[0].at, BASE + 240 * SEC);
    assert_eq!(h.book.alerts.len(), 1);
}

#[tokio::test]
async fn spec_example_3_sliding_escalation_with_a_pending_period_and_keep_firing() {
    // CONTINUOUS_QUERIES.md §6 example 3, as written (default WATERMARK 5 s).
    let mut h = Harness::new(
        "CREATE CONTINUOUS QUERY error_burst_sliding
           ALERT (SEVERITY CASE WHEN count(*) > 1000 THEN 'critical' ELSE 'warning' END,
                  FOR 2 WINDOWS, KEEP FIRING FOR INTERVAL '2 minutes')
         AS SELECT window_end, source, count(*) AS error_count
            FROM HOP(logs, timestamp, INTERVAL '10 seconds', INTERVAL '1 minute')
            WHERE log_level = 'ERROR'
            GROUP BY window_start, window_end, source
            HAVING count(*) > 100",
    )
    .await;
    // 150 errors at 5 s are in six overlapping windows, [-50 s, 10 s) … [0 s, 60 s): the
    // first makes the instance pending, the second consecutive slide fires it.
    let t = h.errors(150, 5, "api");
    assert_eq!(
        kinds(&t),
        vec![TransitionKind::Pending, TransitionKind::Fired]
    );
    assert_eq!(t[1].at, BASE - 40 * SEC);
    assert_eq!(t[1].alert.severity, "warning");
    let id = t[1].alert.alert_id.clone();
    // 1000 more: the windows' final rows (at close) are critical: one escalation.
    assert!(h.errors(1000, 6, "api").is_empty());
    let t = h.info(16);
    assert_eq!(kinds(&t), vec![TransitionKind::Escalated]);
    assert_eq!(t[0].alert.severity, "critical");
    // The last qualifying window ends at 60 s; [10 s, 70 s) closes quiet at W = 70 s, and
    // KEEP FIRING FOR holds it until 190 s.
    assert!(h.info(75).is_empty());
    assert!(h.info(194).is_empty());
    assert_eq!(h.alert(&id).state, "firing");
    let t = h.info(195);
    assert_eq!(kinds(&t), vec![TransitionKind::Resolved]);
    assert_eq!(t[0].at, BASE + 190 * SEC);
    let value: serde_json::Value = serde_json::from_str(&h.alert(&id).value).unwrap();
    assert_eq!(value["error_count"], 1150);
}

/// The `(event_id, kind)` of every transition event in `queries`' `alert_events`.
fn transition_events(queries: &CqRegistry) -> Vec<(String, String)> {
    let b = queries.events_batch().unwrap();
    let text = |name: &str| {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .clone()
    };
    let (ids, kinds) = (text("event_id"), text("kind"));
    let mut out: Vec<(String, String)> = (0..b.num_rows())
        .filter(|&i| kinds.value(i) != "delivery")
        .map(|i| (ids.value(i).to_string(), kinds.value(i).to_string()))
        .collect();
    out.sort();
    out
}

/// `(alert_id, state)` of every alert.
fn states(queries: &CqRegistry) -> Vec<(String, String)> {
    let b = queries.alerts_batch().unwrap();
    let col = |name: &str| {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .clone()
    };
    let (ids, state) = (col("alert_id"), col("state"));
    (0..b.num_rows())
        .map(|i| (ids.value(i).to_string(), state.value(i).to_string()))
        .collect()
}

/// A stream that fires, escalates, repeats and resolves: entries 1..=8.
fn episode_stream() -> Vec<(u64, arrow::array::RecordBatch)> {
    let errors = |n: usize, s: i64| {
        (0..n)
            .map(|_| row(BASE + s * SEC, "ERROR", "api"))
            .collect::<Vec<_>>()
    };
    vec![
        (1, batch(&errors(3, 1))),
        (2, batch(&errors(3, 2))),
        (3, batch(&errors(3, 61))),
        (4, batch(&errors(3, 121))),
        (5, batch(&errors(3, 181))),
        (6, batch(&errors(3, 241))),
        (7, batch(&[row(BASE + 301 * SEC, "INFO", "api")])),
        (8, batch(&[row(BASE + 400 * SEC, "INFO", "api")])),
    ]
}

const REPLAY_RULE: &str = "CREATE CONTINUOUS QUERY burst WATERMARK INTERVAL '1 second' \
     ALERT (SEVERITY CASE WHEN count(*) > 5 THEN 'critical' ELSE 'warning' END, \
            COOLDOWN INTERVAL '2 minutes') \
     NOTIFY (WEBHOOK 'http://127.0.0.1:9/unreachable' WITH (retries = 0, timeout = '100ms')) \
     AS SELECT window_start, source, count(*) AS n \
     FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
     GROUP BY window_start, window_end, source HAVING count(*) > 2";

#[tokio::test]
async fn a_crash_mid_episode_replays_to_the_same_alert_and_event_ids() {
    let stream = episode_stream();
    let feed = |q: &CqRegistry, upto: u64| {
        for (seq, b) in stream.iter().filter(|(s, _)| *s <= upto) {
            q.process(*seq, b, BASE);
        }
    };
    // Uninterrupted.
    let dir = tempfile::tempdir().unwrap();
    let q = CqRegistry::open(dir.path()).await.unwrap();
    q.create(&create_statement(REPLAY_RULE), BASE)
        .await
        .unwrap();
    feed(&q, 8);
    let want_alerts = (alert_rows(&q), states(&q));
    let want_events = transition_events(&q);
    let kinds: Vec<&str> = want_events.iter().map(|(_, k)| k.as_str()).collect();
    for k in ["fired", "escalated", "repeated", "resolved"] {
        assert!(kinds.contains(&k), "{k} missing from {want_events:?}");
    }
    assert_eq!(want_alerts.1.len(), 1);
    assert_eq!(want_alerts.1[0].1, "resolved");
    drop(q);

    // Checkpoint after entry 3 (fired, escalated), crash after entry 5 (one repeat), restart.
    let dir = tempfile::tempdir().unwrap();
    let q = CqRegistry::open(dir.path()).await.unwrap();
    q.create(&create_statement(REPLAY_RULE), BASE)
        .await
        .unwrap();
    feed(&q, 3);
    q.checkpoint_all(BASE);
    feed(&q, 5);
    let before_crash = transition_events(&q);
    drop(q);
    let q = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(q.replay_from(), Some(4));
    feed(&q, 8);
    assert_eq!((alert_rows(&q), states(&q)), want_alerts);
    assert_eq!(transition_events(&q), want_events, "same ids, none twice");
    // What was recorded before the crash was recorded under the same ids.
    assert!(
        before_crash.iter().all(|e| want_events.contains(e)),
        "{before_crash:?}"
    );
}

#[tokio::test]
async fn drop_and_replace_resolve_with_a_reason_kept_across_restarts_until_retention() {
    let dir = tempfile::tempdir().unwrap();
    let rule = burst("SEVERITY 'warning'");
    let errors: Vec<Row> = (0..3).map(|_| row(BASE + SEC, "ERROR", "api")).collect();
    let q = CqRegistry::open(dir.path()).await.unwrap();
    q.create(&create_statement(&rule), BASE).await.unwrap();
    q.process(1, &batch(&errors), BASE);
    let v1 = states(&q);
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].1, "firing");

    let replace = rule.replace("CREATE CONTINUOUS", "CREATE OR REPLACE CONTINUOUS");
    q.create(&create_statement(&replace), BASE).await.unwrap();
    q.process(2, &batch(&errors), BASE);
    let reasons = |q: &CqRegistry| -> Vec<(String, Option<String>)> {
        let b = q.alerts_batch().unwrap();
        let col = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone()
        };
        let (state, reason) = (col("state"), col("resolved_reason"));
        let mut v: Vec<_> = (0..b.num_rows())
            .map(|i| {
                (
                    state.value(i).to_string(),
                    (!reason.is_null(i)).then(|| reason.value(i).to_string()),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        reasons(&q),
        vec![
            ("firing".into(), None),
            ("resolved".into(), Some("rule_replaced".into()))
        ]
    );

    assert!(q.drop_query("burst", false).unwrap());
    let dropped = vec![
        ("resolved".to_string(), Some("rule_dropped".to_string())),
        ("resolved".into(), Some("rule_replaced".into())),
    ];
    assert_eq!(reasons(&q), dropped);
    drop(q);
    let q = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(reasons(&q), dropped, "dropped alerts survive a restart");
    // Eight days later (wall clock) they are past the default retention of 7 days.
    q.tick(crate::continuous::now_us() + 8 * 86_400 * SEC);
    assert!(reasons(&q).is_empty());
}

#[test]
fn retention_forgets_only_resolved_alerts_older_than_it() {
    let alert = |id: &str, resolved_at: Option<i64>| Alert {
        alert_id: id.into(),
        cq_name: "q".into(),
        cq_version: 1,
        fingerprint: id.into(),
        labels: "{}".into(),
        severity: "warning".into(),
        state: if resolved_at.is_some() {
            "resolved"
        } else {
            "firing"
        }
        .into(),
        first_seen: 0,
        fired_at: 0,
        last_seen: 0,
        observation_count: 1,
        window_start: None,
        window_end: None,
        value: "{}".into(),
        late: false,
        resolved_at,
        last_event: 0,
        annotations: "{}".into(),
        resolved_reason: None,
        episode: Episode::default(),
    };
    let mut book = AlertBook::new(
        [
            alert("old", Some(0)),
            alert("recent", Some(90 * SEC)),
            alert("live", None),
        ],
        BTreeMap::new(),
        1,
    );
    assert_eq!(book.prune(60 * SEC, 100 * SEC), 1);
    let left: Vec<&str> = book.alerts.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, vec!["live", "recent"]);
}
