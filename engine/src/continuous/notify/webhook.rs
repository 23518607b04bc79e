//! One webhook attempt: an Alertmanager-style POST with the event id as `Idempotency-Key`,
//! over http or https (rustls with the ring provider; Mozilla's roots or the channel's
//! `ca_file`).

use super::channel::Webhook;

/// POSTs `body`; a 2xx answer is delivered, anything else is the error to record.
pub(super) fn post(hook: &Webhook, event_id: &str, body: &str) -> Result<(), String> {
    let result = hook
        .agent
        .post(&hook.url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", event_id)
        .send(body.as_bytes());
    match result {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    }
}
