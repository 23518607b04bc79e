//! Every partition of the log topics, read outside the consumer group: what a node's
//! continuous queries consume in cluster mode (`cluster/continuous.rs`).
//!
//! The group spreads partitions over nodes so that each record is *stored* once; a rule
//! such as "more than 100 ERRORs per source per minute" needs every record of a source,
//! whichever partition it was produced to, in one place. So each node that runs continuous
//! queries also reads all partitions with manual assignment (no group membership, nothing
//! committed: the positions it resumes from are in its own checkpoints), and decodes them
//! with the same [`PendingBatch`] as the storing path, so a rule sees the rows `logs` holds.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::batch::PendingBatch;
use crate::EngineError;
use crate::cluster::KafkaConfig;
use crate::ingest::DecodeOptions;
use crate::source::{PartitionId, SourcedBatch};

/// How long metadata and offset lookups may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this offset (the next one to read).
    Offset(i64),
    /// At the first record with a Kafka timestamp at or after this (ms).
    Time(i64),
}

/// A consumer assigned every partition of the log topics (see the module docs).
pub struct AllPartitions {
    consumer: BaseConsumer,
    opts: DecodeOptions,
    partitions: Vec<PartitionId>,
    /// The next offset of each partition (as `topic/partition`), once known.
    next: BTreeMap<String, i64>,
}

impl std::fmt::Debug for AllPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllPartitions")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

/// `topic/partition`: how positions and watermarks name a partition.
pub fn partition_key(p: &PartitionId) -> String {
    format!("{}/{}", p.topic, p.partition)
}

fn kafka_err(context: impl Into<String>, e: impl std::fmt::Display) -> EngineError {
    EngineError::Kafka {
        context: context.into(),
        reason: e.to_string(),
    }
}

impl AllPartitions {
    /// Assigns every partition of `config.topics` (names; `^…` patterns match the topics
    /// the cluster has), each from `start(partition)`.
    pub fn open(
        config: &KafkaConfig,
        node_id: &str,
        opts: DecodeOptions,
        start: impl Fn(&PartitionId) -> Start,
    ) -> Result<Self, EngineError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", format!("{}-cq-{node_id}", config.group))
            .set("client.id", format!("logsphere-{node_id}-cq"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set(
                "queued.max.messages.kbytes",
                config.fetch_queue_kbytes.to_string(),
            )
            .create()
            .map_err(|e| kafka_err("creating the continuous-query reader", e))?;
        let metadata = consumer
            .fetch_metadata(None, LOOKUP_TIMEOUT)
            .map_err(|e| kafka_err("reading topic metadata", e))?;
        let wanted = |name: &str| {
            config.topics.iter().any(|t| match t.strip_prefix('^') {
                Some(pattern) => regex_lite_match(pattern, name),
                None => t == name,
            })
        };
        let mut partitions: Vec<PartitionId> = metadata
            .topics()
            .iter()
            .filter(|t| wanted(t.name()))
            .flat_map(|t| {
                t.partitions().iter().map(|p| PartitionId {
                    topic: t.name().to_string(),
                    partition: p.id(),
                })
            })
            .collect();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let mut by_time = TopicPartitionList::new();
        let mut tpl = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for p in &partitions {
            match start(p) {
                Start::Offset(o) => {
                    tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(o))
                        .map_err(|e| kafka_err(format!("assigning {p}"), e))?;
                    next.insert(partition_key(p), o);
                }
                Start::Time(ms) => {
                    by_time
                        .add_partition_offset(&p.topic, p.partition, Offset::Offset(ms))
                        .map_err(|e| kafka_err(format!("assigning {p}"), e))?;
                }
            }
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, LOOKUP_TIMEOUT)
                .map_err(|e| kafka_err("looking up offsets by time", e))?;
            for e in found.elements() {
                // No record at or after the time: the partition's end.
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), offset)
                    .map_err(|err| kafka_err(format!("assigning {}", e.topic()), err))?;
                if let Offset::Offset(o) = offset {
                    let id = PartitionId {
                        topic: e.topic().to_string(),
                        partition: e.partition(),
                    };
                    next.insert(partition_key(&id), o);
                }
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assigning every partition", e))?;
        Ok(Self {
            consumer,
            opts,
            partitions,
            next,
        })
    }

    /// The end of every partition now (`topic/partition` → the offset after its last
    /// record): how far a replay must read to have caught up.
    pub fn ends(&self) -> Result<BTreeMap<String, i64>, EngineError> {
        let mut out = BTreeMap::new();
        for p in &self.partitions {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&p.topic, p.partition, LOOKUP_TIMEOUT)
                .map_err(|e| kafka_err(format!("reading the end of {p}"), e))?;
            out.insert(partition_key(p), high);
        }
        Ok(out)
    }

    /// The partitions read.
    pub fn partitions(&self) -> &[PartitionId] {
        &self.partitions
    }

    /// The next offset of every partition whose position is known (`topic/partition`).
    pub fn next_offsets(&self) -> BTreeMap<String, i64> {
        self.next.clone()
    }

    /// Reads up to `max_records` records, waiting at most `wait` for the first, and decodes
    /// them into one batch per partition (in partition order). Fetch errors are logged and
    /// skipped (librdkafka retries them).
    pub fn poll(&mut self, wait: Duration, max_records: usize) -> Vec<SourcedBatch> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut pending: BTreeMap<usize, PendingBatch<'_>> = BTreeMap::new();
        let mut advanced: Vec<(usize, i64)> = Vec::new();
        let mut read = 0usize;
        let mut timeout = wait;
        while read < max_records {
            let Some(polled) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let msg = match polled {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(source = "kafka", error = %e, "continuous-query reader: fetch error");
                    continue;
                }
            };
            let Some(index) = self
                .partitions
                .iter()
                .position(|p| p.partition == msg.partition() && p.topic == msg.topic())
            else {
                continue;
            };
            pending
                .entry(index)
                .or_insert_with(|| PendingBatch::new(&self.partitions[index], &self.opts, now_us))
                .push(&msg);
            advanced.push((index, msg.offset() + 1));
            read += 1;
        }
        let batches: Vec<SourcedBatch> = pending.into_values().map(|b| b.finish()).collect();
        for (index, next) in advanced {
            self.next
                .insert(partition_key(&self.partitions[index]), next);
        }
        batches
    }
}

/// Whether `name` matches `pattern`, a topic regex as the group subscription takes it
/// (`^logs-.*`): the subset of regex topic names use in practice — literals, `.`, `.*`,
/// `.+` and a trailing `$`.
fn regex_lite_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p {
            [] => true,
            ['$'] => n.is_empty(),
            ['.', '*', rest @ ..] => (0..=n.len()).any(|i| go(rest, &n[i..])),
            ['.', '+', rest @ ..] => (1..=n.len()).any(|i| go(rest, &n[i..])),
            ['\\', c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
            ['.', rest @ ..] => !n.is_empty() && go(rest, &n[1..]),
            [c, rest @ ..] => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::regex_lite_match;

    #[test]
    fn topic_patterns_match_like_the_subscription() {
        assert!(regex_lite_match("logs-.*", "logs-web"));
        assert!(regex_lite_match("logs-.*", "logs-"));
        assert!(!regex_lite_match("logs-.+", "logs-"));
        assert!(regex_lite_match("logs\\.app$", "logs.app"));
        assert!(!regex_lite_match("logs\\.app$", "logs.apps"));
        assert!(!regex_lite_match("logs-.*", "metrics-web"));
    }
}
