//! One Kafka attempt: the alert as JSON, keyed by its fingerprint (so a compacted topic
//! keeps the latest state per alert), with the event id and transition as headers, from an
//! idempotent producer (`acks=all`): at-least-once with stable keys.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::super::CqError;
use super::super::alerts::Alert;
use super::channel::KafkaTopic;

/// An idempotent producer for `brokers` whose messages time out after `timeout` (so one
/// attempt ends by then). librdkafka connects in the background: a broker that is down
/// shows as failed attempts, not as an error here.
pub(super) fn producer(brokers: &str, timeout: Duration) -> Result<FutureProducer, CqError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "logsphere-notify")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            timeout.as_millis().max(10).to_string(),
        )
        .create()
        .map_err(|e| CqError::Notify {
            channel: "KAFKA".into(),
            reason: format!("brokers '{brokers}': {e}"),
        })
}

/// The message value: the transition and the whole alert, its JSON-text fields as JSON.
pub(crate) fn value(alert: &Alert, event_id: &str, kind: &str, status: &str) -> String {
    let mut body = serde_json::to_value(alert).unwrap_or_default();
    if let Some(fields) = body.as_object_mut() {
        for key in ["labels", "annotations", "value"] {
            if let Some(serde_json::Value::String(text)) = fields.get(key)
                && let Ok(parsed) = serde_json::from_str::<serde_json::Value>(text)
            {
                fields.insert(key.into(), parsed);
            }
        }
    }
    serde_json::json!({
        "event_id": event_id,
        "transition": kind,
        "status": status,
        "alert": body,
    })
    .to_string()
}

/// Produces one message and waits for the broker's acknowledgement (bounded by the
/// channel's `timeout`, librdkafka's `message.timeout.ms` for this message).
pub(super) fn produce(
    producer: &FutureProducer,
    topic: &KafkaTopic,
    fingerprint: &str,
    event_id: &str,
    kind: &str,
    payload: &str,
) -> Result<(), String> {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event_id",
            value: Some(event_id),
        })
        .insert(Header {
            key: "transition",
            value: Some(kind),
        });
    let record = FutureRecord::to(&topic.topic)
        .key(fingerprint)
        .payload(payload)
        .headers(headers);
    let delivery = producer
        .send_result(record)
        .map_err(|(e, _)| format!("cannot queue for {}: {e}", topic.topic))?;
    // Resolves when librdkafka reports the outcome, which message.timeout.ms bounds.
    match futures::executor::block_on(delivery) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(format!("{} at {}: {e}", topic.topic, topic.brokers)),
        Err(_) => Err("the producer was dropped before the broker answered".into()),
    }
}
