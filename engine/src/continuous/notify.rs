//! NOTIFY delivery (CONTINUOUS_QUERIES.md §5.4–§5.6): each notifying transition (fired,
//! escalated, repeated, resolved) produces one `alert_events` row per WEBHOOK channel, whose
//! `event_id` (a hash of the transition id and channel) is the `Idempotency-Key` of an Alertmanager-style
//! POST. Delivery runs on its own thread with exponential backoff and records each outcome
//! in the event; events are checkpointed with the alerts, and a restart retries every event
//! not yet `delivered` (at-least-once; the receiver dedupes by the key).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{Expr, Value};
use logsphere_sql::Channel;
use serde::{Deserialize, Serialize};

use super::alerts::{Alert, hex_hash};
use super::lifecycle::{Transition, TransitionKind};

/// One row of the `alert_events` system table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub event_id: String,
    pub alert_id: String,
    pub cq_name: String,
    /// `fired`, `escalated`, `repeated`, `resolved` (a transition, one per channel) or
    /// `delivery` (one attempt).
    pub kind: String,
    /// E.g. `webhook http://…`.
    pub channel: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u64,
    pub last_error: Option<String>,
    /// Wall-clock µs of the last change.
    pub at: i64,
    /// The JSON body to POST (transitions only; not shown in the table).
    #[serde(default)]
    pub payload: String,
}

/// Shared between a CQ and its delivery threads, checkpointed with its alerts.
pub(crate) type Events = Arc<Mutex<BTreeMap<String, AlertEvent>>>;

/// A `WEBHOOK 'url' WITH (timeout = '5s', retries = N)` channel.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    pub url: String,
    pub timeout: Duration,
    pub retries: u32,
}

const DEFAULT_RETRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Webhook {
    /// The WEBHOOK channels of a NOTIFY list (KAFKA and TABLE are not delivered yet).
    pub(crate) fn from_channels(channels: &[Channel]) -> Vec<Self> {
        channels
            .iter()
            .filter_map(|c| match c {
                Channel::Webhook { url, options } => {
                    let mut hook = Webhook {
                        url: url.clone(),
                        timeout: Duration::from_secs(5),
                        retries: DEFAULT_RETRIES,
                    };
                    for (k, v) in options {
                        let text = literal(v);
                        match k.to_ascii_lowercase().as_str() {
                            "timeout" => {
                                if let Some(d) = text.as_deref().and_then(parse_duration) {
                                    hook.timeout = d;
                                }
                            }
                            "retries" => {
                                if let Some(n) = text.and_then(|t| t.parse().ok()) {
                                    hook.retries = n;
                                }
                            }
                            _ => {}
                        }
                    }
                    Some(hook)
                }
                _ => None,
            })
            .collect()
    }

    pub(crate) fn channel(&self) -> String {
        format!("webhook {}", self.url)
    }
}

fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `5s`, `500ms`, `2m`, `5 seconds`.
fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = t.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "s" | "sec" | "second" | "seconds" => n,
        "m" | "min" | "minute" | "minutes" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

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
    hooks: &[Webhook],
    events: &Events,
    now_us: i64,
) -> Vec<(Webhook, String)> {
    if hooks.is_empty() {
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
        for hook in hooks {
            let channel = hook.channel();
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
                    kind: t.kind.as_str().into(),
                    channel,
                    status: "pending".into(),
                    attempts: 0,
                    last_error: None,
                    at: now_us,
                    payload: payload(&t.alert, status),
                },
            );
            due.push((hook.clone(), event_id));
        }
    }
    due
}

/// The transition events not yet delivered (to retry after a restart).
pub(crate) fn undelivered(events: &Events, hooks: &[Webhook]) -> Vec<(Webhook, String)> {
    let events = events.lock().unwrap_or_else(|p| p.into_inner());
    events
        .values()
        .filter(|e| e.kind != "delivery" && e.status != "delivered")
        .filter_map(|e| {
            hooks
                .iter()
                .find(|h| h.channel() == e.channel)
                .map(|h| (h.clone(), e.event_id.clone()))
        })
        .collect()
}

/// Delivers `event_id` on its own thread, retrying with backoff, recording each attempt.
pub(crate) fn deliver(events: Events, hook: Webhook, event_id: String) {
    let spawned = std::thread::Builder::new()
        .name("cq-webhook".into())
        .spawn(move || deliver_blocking(&events, &hook, &event_id));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start webhook delivery");
    }
}

fn deliver_blocking(events: &Events, hook: &Webhook, event_id: &str) {
    let lock = || events.lock().unwrap_or_else(|p| p.into_inner());
    let Some((body, mut attempts)) = lock()
        .get(event_id)
        .map(|e| (e.payload.clone(), e.attempts))
    else {
        return;
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(hook.timeout))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let result = agent
            .post(&hook.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", event_id)
            .send(body.as_bytes());
        let error = match result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        attempts += 1;
        let now = super::now_us();
        let mut events = lock();
        let delivered = error.is_none();
        let delivery_id = hex_hash(&[event_id, "delivery", &attempts.to_string()]);
        let (alert_id, cq_name, channel) = match events.get_mut(event_id) {
            Some(e) => {
                e.attempts = attempts;
                e.at = now;
                e.last_error = error.clone();
                e.status = if delivered {
                    "delivered"
                } else if attempt == hook.retries {
                    "failed"
                } else {
                    "pending"
                }
                .into();
                (e.alert_id.clone(), e.cq_name.clone(), e.channel.clone())
            }
            None => return,
        };
        events.insert(
            delivery_id.clone(),
            AlertEvent {
                event_id: delivery_id,
                alert_id,
                cq_name,
                kind: "delivery".into(),
                channel,
                status: if delivered { "delivered" } else { "failed" }.into(),
                attempts,
                last_error: error.clone(),
                at: now,
                payload: String::new(),
            },
        );
        drop(events);
        match error {
            None => return,
            Some(e) => {
                tracing::warn!(url = %hook.url, event_id, attempts, error = %e, "webhook delivery failed")
            }
        }
    }
}

/// Schema of the `alert_events` system table.
pub fn alert_events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("cq_name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("at", crate::model::ts_type(), false),
    ]))
}

/// `events` as one batch of [`alert_events_schema`].
pub(crate) fn events_batch(events: &[AlertEvent]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: fn(&AlertEvent) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    RecordBatch::try_new(
        alert_events_schema(),
        vec![
            s(|e| &e.event_id),
            s(|e| &e.alert_id),
            s(|e| &e.cq_name),
            s(|e| &e.kind),
            s(|e| &e.channel),
            s(|e| &e.status),
            Arc::new(Int64Array::from_iter_values(
                events
                    .iter()
                    .map(|e| i64::try_from(e.attempts).unwrap_or(i64::MAX)),
            )),
            Arc::new(StringArray::from_iter(
                events.iter().map(|e| e.last_error.as_deref()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.at))
                    .with_timezone("UTC"),
            ),
        ],
    )
}
