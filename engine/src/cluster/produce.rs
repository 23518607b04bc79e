//! Producing log records to Kafka: `POST /v1/logs` in cluster mode and `logsphere ship
//! --kafka`. One record is one message, so the consumer's decoder sees what a standard
//! producer (kcat, rsyslog `omkafka`, a logging library) would send.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::EngineError;
use crate::ingest::Provenance;

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
        self.acknowledged(deliveries, || format!("producing to topic '{topic}'"))
            .await
    }

    /// Waits for every delivery: how many there were, or the first failure in `context`.
    async fn acknowledged<T>(
        &self,
        deliveries: Vec<impl Future<Output = Result<T, (KafkaError, OwnedMessage)>>>,
        context: impl FnOnce() -> String,
    ) -> Result<usize, EngineError> {
        let n = deliveries.len();
        try_join_all(deliveries)
            .await
            .map_err(|(e, _)| kafka_error(format!("{} on '{}'", context(), self.brokers), e))?;
        Ok(n)
    }

    /// The number of partitions of `topic`.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, EngineError> {
        let producer = self.producer.clone();
        let name = topic.to_string();
        let context = format!("reading the partitions of topic '{topic}'");
        let count = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&name), LOOKUP_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map_or(0, |t| t.partitions().len());
            i32::try_from(partitions).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match count {
            Ok(n) if n > 0 => Ok(n),
            Ok(_) => Err(kafka_error(context, "the topic has no partitions")),
            Err(e) => Err(kafka_error(context, e)),
        }
    }

    /// The offset the next message produced to `topic`/`partition` gets (its high watermark).
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, EngineError> {
        let producer = self.producer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&name, partition, LOOKUP_TIMEOUT)
                .map(|(_, high)| high)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| kafka_error(format!("reading the end of {topic}/{partition}"), e))
    }

    /// Produces the records of one request (`ingest::produced_records`) to `topic`, each
    /// with its [`Provenance`] in headers, and waits for every acknowledgement.
    pub async fn send_produced(
        &self,
        topic: &str,
        records: &[(&[u8], Provenance)],
    ) -> Result<usize, EngineError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for (record, provenance) in records {
            let msg = FutureRecord::<(), [u8]>::to(topic)
                .headers(provenance_headers(provenance, OwnedHeaders::new()))
                .payload(*record);
            deliveries.push(self.producer.send(msg, Timeout::Never));
        }
        self.acknowledged(deliveries, || format!("producing to topic '{topic}'"))
            .await
    }

    /// Produces `records` (their number in the request, the record and its provenance) to
    /// one partition with message key `key`, each numbered in a [`SEQ_HEADER`] header, and
    /// waits for every acknowledgement. See `cluster/idempotency.rs`.
    pub async fn send_keyed(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        records: &[(u32, &(&[u8], Provenance))],
    ) -> Result<usize, EngineError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for (seq, (record, provenance)) in records {
            let seq = seq.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: SEQ_HEADER,
                value: Some(seq.as_bytes()),
            });
            let msg = FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .headers(provenance_headers(provenance, headers))
                .payload(*record);
            deliveries.push(self.producer.send(msg, Timeout::Never));
        }
        self.acknowledged(deliveries, || format!("producing to {topic}/{partition}"))
            .await
    }

    /// The [`SEQ_HEADER`] numbers of the messages keyed `key` in `topic`/`partition` between
    /// `from` and `until` (exclusive): what an earlier attempt of a keyed request stored.
    pub async fn keyed_in(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        from: i64,
        until: i64,
    ) -> Result<BTreeSet<u32>, EngineError> {
        let context = format!("reading {topic}/{partition} from offset {from} for key {key:?}");
        if until <= from {
            return Ok(BTreeSet::new());
        }
        let (brokers, name, key) = (self.brokers.clone(), topic.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || {
            scan_keyed(&brokers, &name, partition, &key, from, until)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| kafka_error(context, e))
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

/// The header numbering a keyed request's records (`send_keyed`).
pub const SEQ_HEADER: &str = "logsphere-seq";

/// The headers of a record's [`Provenance`]: the format it is read in, the request it came
/// from, the request's `?source=`, and the reason when it is a dead letter already.
const FORMAT_HEADER: &str = "logsphere-format";
const ORIGIN_HEADER: &str = "logsphere-origin";
const SOURCE_HEADER: &str = "logsphere-source";
const REJECTED_HEADER: &str = "logsphere-rejected";

/// Whether a header is LogSphere's own bookkeeping, which the Kafka source leaves out of
/// `attributes`.
pub fn is_own_header(name: &str) -> bool {
    [
        SEQ_HEADER,
        FORMAT_HEADER,
        ORIGIN_HEADER,
        SOURCE_HEADER,
        REJECTED_HEADER,
    ]
    .contains(&name)
}

fn provenance_headers(p: &Provenance, headers: OwnedHeaders) -> OwnedHeaders {
    let headers = headers
        .insert(Header {
            key: FORMAT_HEADER,
            value: Some(p.format.name()),
        })
        .insert(Header {
            key: ORIGIN_HEADER,
            value: Some(p.origin.as_str()),
        });
    let headers = match &p.default_source {
        Some(source) => headers.insert(Header {
            key: SOURCE_HEADER,
            value: Some(source.as_str()),
        }),
        None => headers,
    };
    match &p.rejected {
        Some(reason) => headers.insert(Header {
            key: REJECTED_HEADER,
            value: Some(reason.as_str()),
        }),
        None => headers,
    }
}

/// The [`Provenance`] a message's headers carry: `None` for a message LogSphere's ingest
/// did not produce (kcat, `ship --kafka`, a logging library), or one whose format this
/// node does not know, which `kafka.format` then reads.
pub fn provenance<H: Headers>(headers: &H) -> Option<Provenance> {
    let (mut format, mut origin, mut default_source, mut rejected) = (None, None, None, None);
    for h in headers.iter() {
        let value = || h.value.map(|v| String::from_utf8_lossy(v).into_owned());
        match h.key {
            FORMAT_HEADER => format = value().and_then(|v| v.parse().ok()),
            ORIGIN_HEADER => origin = value(),
            SOURCE_HEADER => default_source = value(),
            REJECTED_HEADER => rejected = value(),
            _ => {}
        }
    }
    Some(Provenance {
        format: format?,
        origin: origin?,
        default_source,
        rejected,
    })
}

/// How long a metadata or watermark lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long reading back one keyed request's range may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(20);

fn kafka_error(context: impl Into<String>, reason: impl ToString) -> EngineError {
    EngineError::Kafka {
        context: context.into(),
        reason: reason.to_string(),
    }
}

/// Reads `topic`/`partition` from `from` up to `until` with a consumer outside any group,
/// and returns the sequence numbers of the messages keyed `key`.
fn scan_keyed(
    brokers: &str,
    topic: &str,
    partition: i32,
    key: &str,
    from: i64,
    until: i64,
) -> Result<BTreeSet<u32>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "logsphere-idempotency-scan")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + SCAN_TIMEOUT;
    let mut found = BTreeSet::new();
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "offsets {from}..{until} not read within {SCAN_TIMEOUT:?}"
            ));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            // Offsets that hold no message (control records, compaction) end the range too.
            let position = consumer.position().ok().and_then(|p| {
                p.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            });
            if position.is_some_and(|p| p >= until) {
                return Ok(found);
            }
            continue;
        };
        let msg = msg.map_err(|e| e.to_string())?;
        if msg.key() == Some(key.as_bytes()) {
            let seq = msg.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == SEQ_HEADER)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u32>().ok())
            });
            if let Some(seq) = seq {
                found.insert(seq);
            }
        }
        if msg.offset() + 1 >= until {
            return Ok(found);
        }
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
    use rdkafka::message::{Header, OwnedHeaders};

    use super::{is_own_header, provenance, provenance_headers, split_records};
    use crate::ingest::{Format, Provenance};

    #[test]
    fn provenance_travels_in_headers_left_out_of_attributes() {
        let p = Provenance {
            format: Format::Syslog,
            origin: "syslog line 3".into(),
            default_source: Some("router-7".into()),
            rejected: Some("why".into()),
        };
        let seq = OwnedHeaders::new().insert(Header {
            key: "logsphere-seq",
            value: Some("4"),
        });
        let headers = provenance_headers(&p, seq);
        assert_eq!(provenance(&headers), Some(p.clone()));
        let plain = Provenance {
            default_source: None,
            rejected: None,
            ..p
        };
        assert_eq!(
            provenance(&provenance_headers(&plain, OwnedHeaders::new())),
            Some(plain)
        );
        use rdkafka::message::Headers;
        assert!(headers.iter().all(|h| is_own_header(h.key)));
        // A producer's own headers are not provenance, and stay attributes.
        let foreign = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("x"),
        });
        assert_eq!(provenance(&foreign), None);
        assert!(!is_own_header("trace"));
    }

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
