use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::service::RetryPolicy;
use super::*;

const SEC: i64 = 1_000_000;

fn policy() -> RetryPolicy {
    RetryPolicy::from_config(&NotifyConfig {
        requeue_after: Duration::from_secs(30),
        requeue_max: Duration::from_secs(120),
        give_up_after: Duration::from_secs(3600),
        ..NotifyConfig::default()
    })
}

#[test]
fn fast_retries_then_requeues_doubling_then_gives_up() {
    let p = policy();
    let now = 10 * SEC;
    // Two fast retries: 100 ms, 200 ms, still pending.
    assert_eq!(
        p.after_failure(1, 2, 0, now),
        ("pending", Some(now + 100_000))
    );
    assert_eq!(
        p.after_failure(2, 2, 0, now),
        ("pending", Some(now + 200_000))
    );
    // Then failed, re-queued after 30 s, 60 s, 120 s, and no longer than 120 s.
    assert_eq!(
        p.after_failure(3, 2, 0, now),
        ("failed", Some(now + 30 * SEC))
    );
    assert_eq!(
        p.after_failure(4, 2, 0, now),
        ("failed", Some(now + 60 * SEC))
    );
    assert_eq!(
        p.after_failure(5, 2, 0, now),
        ("failed", Some(now + 120 * SEC))
    );
    assert_eq!(
        p.after_failure(40, 2, 0, now),
        ("failed", Some(now + 120 * SEC))
    );
    // A next attempt past the maximum age is none: failed for good.
    let late = 3600 * SEC - 60 * SEC;
    assert_eq!(p.after_failure(5, 2, 0, late), ("failed", None));
    // The fast backoff is capped at 5 s.
    assert_eq!(
        p.after_failure(10, 20, 0, now),
        ("pending", Some(now + 5 * SEC))
    );
}

fn event(
    id: &str,
    alert: &str,
    kind: &str,
    status: &str,
    at: i64,
    next: Option<i64>,
) -> AlertEvent {
    AlertEvent {
        event_id: id.into(),
        alert_id: alert.into(),
        cq_name: "cq".into(),
        kind: kind.into(),
        channel: "webhook http://x".into(),
        status: status.into(),
        at,
        next_attempt: next,
        ..AlertEvent::default()
    }
}

#[test]
fn prune_keeps_listed_transitions_and_open_attempts() {
    let now = 100 * SEC;
    let old = now - 50 * SEC;
    let mut events: BTreeMap<String, AlertEvent> = [
        // Alert a: delivered long ago; its transition stays (a is listed), its attempt goes.
        event("a-fired", "a", "fired", "delivered", old, None),
        event("a-try1", "a", "delivery", "delivered", old, None),
        // Alert b: still being retried; old attempt rows stay while it is open.
        event("b-fired", "b", "fired", "failed", old, Some(now + SEC)),
        event("b-try1", "b", "delivery", "failed", old, None),
        // Alert c: not listed any more (an old version): all of it goes.
        event("c-fired", "c", "fired", "delivered", old, None),
        event("c-try1", "c", "delivery", "delivered", old, None),
        // Recent rows always stay.
        event("d-try1", "d", "delivery", "delivered", now - SEC, None),
    ]
    .into_iter()
    .map(|e| (e.event_id.clone(), e))
    .collect();
    let listed: HashSet<&str> = ["a", "b", "d"].into_iter().collect();
    prune(&mut events, &listed, Duration::from_secs(10), now);
    let left: Vec<&str> = events.keys().map(String::as_str).collect();
    assert_eq!(left, vec!["a-fired", "b-fired", "b-try1", "d-try1"]);
}

#[test]
fn old_checkpoint_events_are_due_at_once() {
    // An event checkpointed before `next_attempt` existed: due now (a restart retries it).
    let json = r#"{"event_id":"e","alert_id":"a","cq_name":"cq","kind":"fired",
        "channel":"webhook http://x","status":"failed","attempts":6,"last_error":"HTTP 500",
        "at":1,"payload":"{}"}"#;
    let e: AlertEvent = serde_json::from_str(json).unwrap();
    assert_eq!(e.next_attempt, Some(0));
}

/// The `KAFKA` channel's `timeout`, the CQ's `idle_timeout` option and the `COOLDOWN`
/// clause, each written as `form`: one grammar, so the same duration or all refused.
fn durations_written_as(form: &str) -> (Option<Duration>, Option<Duration>, Option<Duration>) {
    let sql = format!(
        "CREATE CONTINUOUS QUERY q WITH (idle_timeout = {form}) ALERT (COOLDOWN {form}) \
         NOTIFY (KAFKA 'alerts' WITH (brokers = 'localhost:1', timeout = {form})) \
         AS SELECT timestamp FROM logs"
    );
    let option = |sql: &str| {
        logsphere_sql::parse_statements(sql)
            .ok()
            .and_then(|mut s| match s.remove(0) {
                logsphere_sql::Statement::CreateContinuousQuery(cq) => Some(*cq),
                _ => None,
            })
    };
    let idle = option(&sql.replace(&format!("ALERT (COOLDOWN {form})"), ""))
        .and_then(|cq| cq.idle_timeout());
    let cooldown = option(&sql.replace(&format!("WITH (idle_timeout = {form})"), ""))
        .and_then(|cq| cq.alert.and_then(|a| a.cooldown));
    let kafka = format!(
        "CREATE CONTINUOUS QUERY q NOTIFY (KAFKA 'alerts' WITH (brokers = 'localhost:1', timeout = {form})) AS SELECT timestamp FROM logs"
    );
    let timeout = option(&kafka).and_then(|cq| {
        match NotifyChannel::from_channels(&cq.notify, &NotifyConfig::default()) {
            Ok(channels) => match channels.first() {
                Some(NotifyChannel::Kafka(k)) => Some(k.timeout),
                _ => None,
            },
            Err(e) => {
                assert!(e.to_string().contains("is not a duration"), "{form}: {e}");
                None
            }
        }
    });
    (timeout, idle, cooldown)
}

#[test]
fn notify_options_and_cq_options_share_one_duration_grammar() {
    let ok = [
        ("'1h'", Duration::from_secs(3600)),
        ("'90 minutes'", Duration::from_secs(5400)),
        ("'1h30m'", Duration::from_secs(5400)),
        ("'250ms'", Duration::from_millis(250)),
        ("'1.5s'", Duration::from_millis(1500)),
        ("'5 seconds'", Duration::from_secs(5)),
        ("INTERVAL '1 hour'", Duration::from_secs(3600)),
        ("INTERVAL '10' SECOND", Duration::from_secs(10)),
        ("'2d'", Duration::from_secs(2 * 86_400)),
    ];
    for (form, want) in ok {
        let d = Some(want);
        assert_eq!(durations_written_as(form), (d, d, d), "{form}");
    }
    for form in ["'soon'", "'1 month'", "'5'", "5", "'-1s'"] {
        assert_eq!(durations_written_as(form), (None, None, None), "{form}");
    }
}
