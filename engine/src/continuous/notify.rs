//! NOTIFY delivery (CONTINUOUS_QUERIES.md §5.4–§5.6): each notifying transition (fired,
//! escalated, repeated, resolved) produces one `alert_events` row per channel (WEBHOOK,
//! KAFKA), whose `event_id` (a hash of the transition id and channel) is the webhook's
//! `Idempotency-Key` and a Kafka header. The rows are the source of truth: a bounded
//! delivery service ([`Notifier`], `notify/service.rs`) picks the due ones, attempts each
//! once on one of a few worker threads, and records the outcome and the next attempt in the
//! row; a restart (events are checkpointed with the alerts) just finds the rows again
//! (at-least-once; the receiver dedupes by the key, a compacted topic by the fingerprint key).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::alerts::{Alert, hex_hash};
use super::lifecycle::{Transition, TransitionKind};

mod channel;
mod kafka;
mod service;
mod webhook;

pub(crate) use channel::NotifyChannel;
pub use service::{Claim, DeliveryClaims};
pub(crate) use service::{Notifier, prune};

/// One row of the `alert_events` system table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub event_id: String,
    pub alert_id: String,
    pub cq_name: String,
    /// `fired`, `escalated`, `repeated`, `resolved` (a transition, one per channel) or
    /// `delivery` (one attempt).
    pub kind: String,
    /// E.g. `webhook http://…`, `kafka <topic>`.
    pub channel: String,
    /// `pending` (fast retries), `delivered`, or `failed` (re-queued while `next_attempt`
    /// is set, failed for good once it is not).
    pub status: String,
    pub attempts: u64,
    pub last_error: Option<String>,
    /// Wall-clock µs of the last change.
    pub at: i64,
    /// The JSON body to send (transitions only, until settled; not shown in the table).
    #[serde(default)]
    pub payload: String,
    /// The alert's fingerprint: the Kafka message key (not shown in the table).
    #[serde(default)]
    pub fingerprint: String,
    /// Wall-clock µs the transition was recorded (delivery gives up `give_up_after` later).
    #[serde(default)]
    pub created_at: i64,
    /// Wall-clock µs of the next delivery attempt; `None` once settled (delivered, failed for
    /// good) and for `delivery` rows. Rows from before this field are due at once.
    #[serde(default = "due_now")]
    pub next_attempt: Option<i64>,
}

fn due_now() -> Option<i64> {
    Some(0)
}

/// How NOTIFY delivery runs: shared by every CQ of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Delivery threads (each holds one attempt at a time).
    pub workers: usize,
    /// Attempts waiting for a worker; when full, due events wait in `alert_events` for the
    /// next sweep (every 250 ms) instead of blocking the CQ.
    pub queue: usize,
    /// Brokers for `KAFKA` channels without `WITH (brokers = …)`.
    pub kafka_brokers: Option<String>,
    /// After a channel's fast retries fail, the event is `failed` and re-queued after this,
    /// doubling per attempt up to `requeue_max`...
    pub requeue_after: Duration,
    /// ...the longest gap between re-queued attempts...
    pub requeue_max: Duration,
    /// ...until this long after it was recorded: then it stays `failed` for good.
    pub give_up_after: Duration,
    /// Settled events' attempt rows, and the rows of alerts no longer delivered to, are
    /// removed this long after their last change.
    pub retention: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            queue: 1024,
            kafka_brokers: None,
            requeue_after: Duration::from_secs(30),
            requeue_max: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Shared between a CQ and its delivery threads, checkpointed with its alerts.
pub(crate) type Events = Arc<Mutex<BTreeMap<String, AlertEvent>>>;

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The Alertmanager webhook body (version 4) for one alert in `status`.
pub(crate) fn payload(alert: &Alert, status: &str) -> String {
    let to_map = |json: &str| -> serde_json::Map<String, serde_json::Value> {
        let parsed: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        parsed
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (k.clone(), serde_json::Value::String(s))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut labels = to_map(&alert.labels);
    labels
        .entry("alertname")
        .or_insert_with(|| serde_json::Value::String(alert.cq_name.clone()));
    labels
        .entry("severity")
        .or_insert_with(|| serde_json::Value::String(alert.severity.clone()));
    let annotations = to_map(&alert.annotations);
    let ends_at = alert
        .resolved_at
        .map(rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
    serde_json::json!({
        "version": "4",
        "status": status,
        "receiver": alert.cq_name,
        "groupLabels": {},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(alert.fired_at),
            "endsAt": ends_at,
            "generatorURL": "",
            "fingerprint": alert.fingerprint,
        }],
    })
    .to_string()
}

/// Records an event per channel for every transition that notifies (entering FIRING, a
/// severity increase, a COOLDOWN repeat, RESOLVED), deduped by event id (a hash of the
/// transition id and the channel, so a replay finds the same ids), and returns the new ones
/// to deliver.
pub(crate) fn record_transitions(
    transitions: &[Transition],
    channels: &[NotifyChannel],
    events: &Events,
    now_us: i64,
) -> Vec<(NotifyChannel, String)> {
    if channels.is_empty() {
        return Vec::new();
    }
    let mut events = events.lock().unwrap_or_else(|p| p.into_inner());
    let mut due = Vec::new();
    for t in transitions.iter().filter(|t| t.notifies()) {
        let status = if t.kind == TransitionKind::Resolved {
            "resolved"
        } else {
            "firing"
        };
        let kind = t.kind.as_str();
        for target in channels {
            let channel = target.name();
            let event_id = hex_hash(&[&t.id, &channel]);
            if events.contains_key(&event_id) {
                continue;
            }
            events.insert(
                event_id.clone(),
                AlertEvent {
                    event_id: event_id.clone(),
                    alert_id: t.alert.alert_id.clone(),
                    cq_name: t.alert.cq_name.clone(),
                    kind: kind.into(),
                    channel,
                    status: "pending".into(),
                    attempts: 0,
                    last_error: None,
                    at: now_us,
                    payload: target.payload(&t.alert, &event_id, kind, status),
                    fingerprint: t.alert.fingerprint.clone(),
                    created_at: now_us,
                    next_attempt: Some(now_us),
                },
            );
            due.push((target.clone(), event_id));
        }
    }
    due
}

#[cfg(test)]
mod tests;
