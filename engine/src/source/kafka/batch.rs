//! One partition's batch in the making: Kafka messages decoded into Arrow as they arrive,
//! with the offset of every row kept for the record's identity.

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};
use serde_json::Value;

use crate::cluster::produce::{is_own_header, provenance};
use crate::ingest::{DecodeOptions, RecordDecoder, RecordFate};
use crate::source::{PartitionId, SourcedBatch};

/// Records read from one partition and not yet written.
pub(super) struct PendingBatch<'a> {
    partition: &'a PartitionId,
    decoder: RecordDecoder<'a>,
    /// The ingest time of a message without a Kafka timestamp.
    fallback_ingest_us: i64,
    log_offsets: Vec<i64>,
    dead_offsets: Vec<i64>,
    next_offset: i64,
    bytes: usize,
}

impl<'a> PendingBatch<'a> {
    /// An empty batch. Each row's ingest time (and the timestamp of a record that carries
    /// none) is its message's Kafka timestamp, so reading a message again after a crash or
    /// a rebalance rewrites the same row (the time is part of the row's key); a message
    /// without one is stamped `ingest_time_us`.
    pub(super) fn new(
        partition: &'a PartitionId,
        opts: &'a DecodeOptions,
        ingest_time_us: i64,
    ) -> Self {
        Self {
            partition,
            decoder: RecordDecoder::new(ingest_time_us, opts),
            fallback_ingest_us: ingest_time_us,
            log_offsets: Vec::new(),
            dead_offsets: Vec::new(),
            next_offset: -1,
            bytes: 0,
        }
    }

    /// Records in the batch.
    pub(super) fn len(&self) -> usize {
        self.log_offsets.len() + self.dead_offsets.len()
    }

    /// Payload bytes in the batch (what the partition buffer bound counts).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Decodes `msg` into the batch: its `topic` column is the Kafka topic, and its Kafka
    /// coordinates, key, timestamp and headers become `kafka_*` attributes. A message
    /// LogSphere's ingest produced is read as its headers say (the request's format and
    /// origin, a dead letter already), else as `kafka.format` says.
    pub(super) fn push(&mut self, msg: &BorrowedMessage<'_>) {
        let raw = msg.payload().unwrap_or_default();
        let offset = msg.offset();
        let ingest_us = timestamp_ms(msg)
            .filter(|ms| *ms >= 0)
            .and_then(|ms| ms.checked_mul(1000))
            .unwrap_or(self.fallback_ingest_us);
        self.decoder.set_ingest_time(ingest_us);
        let position = At(self.partition, offset);
        let topic = Some(self.partition.topic.as_str());
        let fate = match msg.headers().and_then(provenance) {
            Some(p) => self
                .decoder
                .produced_record(raw, p, position, topic, kafka_attributes(msg)),
            None => self
                .decoder
                .record(raw, position, topic, kafka_attributes(msg)),
        };
        match fate {
            RecordFate::Accepted => self.log_offsets.push(offset),
            RecordFate::Rejected => self.dead_offsets.push(offset),
        }
        self.next_offset = offset + 1;
        self.bytes += raw.len();
    }

    /// The decoded batch, ready for the hot store.
    pub(super) fn finish(self) -> SourcedBatch {
        let decoded = self.decoder.finish();
        SourcedBatch {
            partition: self.partition.clone(),
            logs: decoded.logs,
            log_offsets: self.log_offsets,
            dead_letters: decoded.dead_letters,
            dead_offsets: self.dead_offsets,
            next_offset: self.next_offset,
        }
    }
}

/// A message's place, `topic/partition offset N`: formatted only for a dead letter.
struct At<'a>(&'a PartitionId, i64);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} offset {}", self.0, self.1)
    }
}

/// The Kafka timestamp of `msg` in milliseconds, when the broker or producer set one.
pub(super) fn timestamp_ms(msg: &BorrowedMessage<'_>) -> Option<i64> {
    msg.timestamp().to_millis()
}

/// `kafka_partition`, `kafka_offset`, `kafka_key`, `kafka_timestamp_ms` and one
/// `kafka_header_<name>` per header (values as lossy UTF-8, `null` when absent).
fn kafka_attributes(msg: &BorrowedMessage<'_>) -> Vec<(String, Value)> {
    let mut extra = vec![
        ("kafka_partition".to_string(), Value::from(msg.partition())),
        ("kafka_offset".to_string(), Value::from(msg.offset())),
    ];
    if let Some(key) = msg.key() {
        extra.push((
            "kafka_key".to_string(),
            Value::from(String::from_utf8_lossy(key).into_owned()),
        ));
    }
    if let Some(ts) = timestamp_ms(msg) {
        extra.push(("kafka_timestamp_ms".to_string(), Value::from(ts)));
    }
    if let Some(headers) = msg.headers() {
        // The numbering and provenance of the records LogSphere's ingest produced are its
        // own bookkeeping.
        for header in headers.iter().filter(|h| !is_own_header(h.key)) {
            let value = header
                .value
                .map(|v| Value::from(String::from_utf8_lossy(v).into_owned()))
                .unwrap_or(Value::Null);
            extra.push((format!("kafka_header_{}", header.key), value));
        }
    }
    extra
}
