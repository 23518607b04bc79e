//! Producing log records to Kafka: `POST /v1/logs` in cluster mode and `logsphere ship
//! --kafka`. One record is one message, so the consumer's decoder sees what a standard
//! producer (kcat, rsyslog `omkafka`, a logging library) would send.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::EngineError;

/// An idempotent producer (`enable.idempotence`, so `acks=all` and at most 5 requests in
/// flight per connection) with lz4 compression and a short linger for batching.
#[derive(Clone)]
pub struct LogProducer {
    producer: FutureProducer,
    brokers: String,
}

impl std::fmt::Debug for LogProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogProducer")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl LogProducer {
    /// A producer for `brokers` (`host:port,…`); a delivery not acknowledged within
    /// `timeout` fails (librdkafka retries until then).
    pub fn new(brokers: &str, timeout: Duration) -> Result<Self, EngineError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "logsphere-ingest")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.kbytes", "65536")
            .set(
                "message.timeout.ms",
                timeout.as_millis().max(1000).to_string(),
            )
            .create()
            .map_err(|e| EngineError::Kafka {
                context: format!("producer for brokers '{brokers}'"),
                reason: e.to_string(),
            })?;
        Ok(Self {
            producer,
            brokers: brokers.to_string(),
        })
    }

    /// Produces every record of `body` (NDJSON lines, or the elements of a JSON array) to
    /// `topic` and waits until the brokers acknowledged all of them. Returns how many were
    /// sent. A body that is neither is sent as one message, so it reaches `dead_letters`
    /// with its raw bytes like any undecodable record.
    pub async fn send_body(&self, topic: &str, body: &[u8]) -> Result<usize, EngineError> {
        let records = split_records(body);
        self.send_records(topic, records.iter().copied()).await
    }

    /// Produces `records` to `topic`, one message each, and waits for every acknowledgement.
    pub async fn send_records<'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, EngineError> {
        let mut deliveries = Vec::new();
        for record in records {
            let msg = FutureRecord::<(), [u8]>::to(topic).payload(record);
            // `send` waits for room in librdkafka's queue instead of failing when it is full.
            deliveries.push(self.producer.send(msg, Timeout::Never));
        }
        let n = deliveries.len();
        try_join_all(deliveries)
            .await
            .map_err(|(e, _)| EngineError::Kafka {
                context: format!("producing to topic '{topic}' on '{}'", self.brokers),
                reason: e.to_string(),
            })?;
        Ok(n)
    }

    /// Waits up to `timeout` for every queued message to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), EngineError> {
        self.producer
            .flush(Timeout::After(timeout))
            .map_err(|e| EngineError::Kafka {
                context: format!("flushing the producer for '{}'", self.brokers),
                reason: e.to_string(),
            })
    }
}

/// The records of a request body: NDJSON lines (blank lines skipped, `\r` trimmed) or the
/// elements of a JSON array; an unparseable array is one record.
pub fn split_records(body: &[u8]) -> Vec<&[u8]> {
    let first = body.iter().position(|c| !c.is_ascii_whitespace());
    if first.map(|i| body[i]) == Some(b'[') {
        let single_line = !body
            .iter()
            .skip(first.unwrap_or(0))
            .position(|c| *c == b'\n')
            .is_some_and(|end| {
                body[first.unwrap_or(0) + end..]
                    .iter()
                    .any(|c| !c.is_ascii_whitespace())
            });
        if single_line {
            return match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
                Ok(items) => items.iter().map(|r| r.get().as_bytes()).collect(),
                Err(_) => vec![body],
            };
        }
    }
    body.split(|c| *c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(|c| c.is_ascii_whitespace()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_records;

    #[test]
    fn splits_ndjson_and_arrays() {
        let b: &[u8] = b"{\"a\":1}\r\n\n  \n{\"b\":2}\nnot json\n";
        assert_eq!(
            split_records(b),
            vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"not json"]
        );
        let a: &[u8] = b" [{\"a\":1}, {\"b\":[1,2]}]";
        assert_eq!(split_records(a), vec![&b"{\"a\":1}"[..], b"{\"b\":[1,2]}"]);
        let broken: &[u8] = b"[{\"a\":1},";
        assert_eq!(split_records(broken), vec![broken]);
        assert!(split_records(b"  \n ").is_empty());
    }
}
