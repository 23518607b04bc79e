//! `Idempotency-Key` in cluster mode: a repeated key stores its records once, whichever
//! node each attempt reaches and whichever node dies.
//!
//! ```text
//! claim (LWT, lease) ──Mine──► first attempt? record (partition, end offset)
//!        │                     later attempt? read the partition from there: what is stored
//!        │                     ──► produce what is missing, wait for the acks
//!        │                         ──ok──► mark done (LWT) ──► 200
//!        │                         └──failed──► release (LWT) ──► 503, retry
//!        ├──Done──► the stored answer, nothing produced
//!        └──Held──► 409 + Retry-After (another request is storing them, or died holding it)
//! ```
//!
//! The claim is a lease so a node that dies between claim and produce does not block the key
//! for good; the producer's delivery timeout is kept below the lease, so a produce cannot
//! outlive the claim it runs under. A keyed request's records all go to one partition,
//! keyed and numbered, and the partition with the offset it started at is kept in
//! Cassandra for the key's retention: so the attempt after a produce that failed halfway,
//! or after a node died between the acknowledgements and marking the key done, finds what
//! is already in the topic and produces only the rest. The statements and the
//! unknown-outcome rules are in `hot/cassandra/keys.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::hot::cassandra::{KeyClaim, KeyFinish};
use crate::ingest::DecodeOptions;
use crate::{EngineError, IngestOutcome};

/// How long a claim on a key lasts unless it is marked done: the longest a key stays
/// blocked by a node that died mid-request.
pub const INGEST_KEY_LEASE: Duration = Duration::from_secs(45);

/// How long an answered key is remembered (as in embedded mode).
pub const INGEST_KEY_RETENTION: Duration = crate::idempotency::RETENTION;

/// What a client is told to wait before retrying a key another request holds.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The producer's delivery timeout for a given lease: two thirds of it, at most 30 s, so
/// a produce started under a fresh claim ends (acknowledged or failed) before it expires.
pub(super) fn produce_timeout(lease: Duration) -> Duration {
    (lease * 2 / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The answer stored with a key: the body of the first response.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAnswer {
    accepted: usize,
    rejected: usize,
}

/// An [`EngineError::Cassandra`] about `key`.
fn key_error(key: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Cassandra {
        context: format!("Idempotency-Key {key:?}"),
        reason: reason.into(),
    }
}

impl Cluster {
    /// Produces `body` unless a request with `key` already did: the first answer to `key`,
    /// flagged `replayed`, or [`EngineError::KeyInProgress`] while another request holds it.
    pub async fn produce_once(
        &self,
        key: &str,
        body: &[u8],
        opts: &DecodeOptions,
    ) -> Result<IngestOutcome, EngineError> {
        let store = self
            .store()
            .ok_or_else(|| key_error(key, "not connected to Cassandra yet; retry"))?;
        let lease = self.config().ingest_key_lease;
        let token = format!("{}/{}", self.config().node_id, uuid::Uuid::new_v4());
        let started = Instant::now();
        match store.claim_ingest_key(key, &token, lease).await? {
            KeyClaim::Mine => {}
            KeyClaim::Done(answer) => {
                let stored: StoredAnswer = serde_json::from_str(&answer).map_err(|e| {
                    key_error(key, format!("stored answer {answer:?} is not valid: {e}"))
                })?;
                return Ok(IngestOutcome {
                    accepted: stored.accepted,
                    rejected: stored.rejected,
                    replayed: true,
                });
            }
            KeyClaim::Held => {
                return Err(EngineError::KeyInProgress {
                    key: key.to_string(),
                    retry_after_secs: RETRY_AFTER.as_secs(),
                });
            }
        }
        if let Some(pause) = self.config().fault_claim_pause {
            tracing::warn!(
                key,
                token,
                ?pause,
                "fault injection: pausing between claiming an Idempotency-Key and producing"
            );
            tokio::time::sleep(pause).await;
        }
        let produced = match self.produce_keyed(key, body, opts, started, lease).await {
            Ok(n) => n,
            Err(e) => {
                self.release_key(key, &token).await;
                return Err(e);
            }
        };
        if let Some(pause) = self.config().fault_acked_pause {
            tracing::warn!(
                key,
                token,
                ?pause,
                "fault injection: pausing between the acknowledgements and marking the key done"
            );
            tokio::time::sleep(pause).await;
        }
        let answer = serde_json::to_string(&StoredAnswer {
            accepted: produced,
            rejected: 0,
        })
        .map_err(|e| key_error(key, format!("encoding the answer: {e}")))?;
        let retention = self.config().ingest_key_retention;
        match store
            .finish_ingest_key(key, &token, &answer, retention)
            .await
        {
            Ok(KeyFinish::Recorded) => {}
            Ok(KeyFinish::LeaseLost(holder)) => tracing::error!(
                key,
                token,
                holder,
                "the lease on an Idempotency-Key ran out before its answer was recorded: the \
                 request that claimed it since may store the same records again"
            ),
            Err(e) => tracing::error!(
                key, token, error = %e,
                "records stored but the Idempotency-Key not marked done: a retry after its \
                 lease expires would store them again"
            ),
        }
        Ok(IngestOutcome {
            accepted: produced,
            rejected: 0,
            replayed: false,
        })
    }

    /// Produces the records of `body` that an earlier attempt with `key` did not store,
    /// under the claim taken at `claimed`; returns how many records the body holds.
    ///
    /// The first attempt picks the key's partition and records it in Cassandra with the
    /// partition's end offset before producing anything. Every record goes to that partition
    /// with the key as message key and its number in a header. A later attempt (after a
    /// produce that failed halfway, or a node that died before marking the key done) reads
    /// that partition from the recorded offset and produces only the numbers it does not
    /// find, so no record is in the topic twice.
    async fn produce_keyed(
        &self,
        key: &str,
        body: &[u8],
        opts: &DecodeOptions,
        claimed: Instant,
        lease: Duration,
    ) -> Result<usize, EngineError> {
        let store = self
            .store()
            .ok_or_else(|| key_error(key, "not connected to Cassandra yet; retry"))?;
        let topic = &self.config().kafka.ingest_topic;
        let producer = self.producer();
        let records = crate::ingest::produced_records(body, opts);
        let (partition, stored) = match store.ingest_key_start(key).await? {
            Some((partition, from)) => {
                let until = producer.end_offset(topic, partition).await?;
                let stored = producer
                    .keyed_in(topic, partition, key, from, until)
                    .await?;
                tracing::info!(
                    key,
                    partition,
                    from,
                    until,
                    found = stored.len(),
                    "Idempotency-Key tried before: producing only what is not in the topic"
                );
                (partition, stored)
            }
            None => {
                let count = producer.partition_count(topic).await?;
                let partition = key_partition(key, count);
                let from = producer.end_offset(topic, partition).await?;
                let retention = self.config().ingest_key_retention;
                store
                    .record_ingest_key_start(key, partition, from, retention)
                    .await?;
                (partition, BTreeSet::new())
            }
        };
        // The lease started before the claim was sent; a produce must end inside it.
        if claimed.elapsed() + produce_timeout(lease) >= lease {
            return Err(key_error(
                key,
                format!(
                    "claiming it took {:?}, too close to its {lease:?} lease to produce safely; retry",
                    claimed.elapsed()
                ),
            ));
        }
        let mut missing = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let seq = u32::try_from(i)
                .map_err(|_| key_error(key, "more than 2^32 records in one request"))?;
            if !stored.contains(&seq) {
                missing.push((seq, record));
            }
        }
        if let Some(after) = self.config().fault_produce_fail_after {
            let part = &missing[..after.min(missing.len())];
            producer.send_keyed(topic, partition, key, part).await?;
            tracing::warn!(
                key,
                produced = part.len(),
                "fault injection: failing a produce halfway"
            );
            return Err(EngineError::Kafka {
                context: format!("producing Idempotency-Key {key:?}"),
                reason: format!("fault injection: failed after {} records", part.len()),
            });
        }
        producer.send_keyed(topic, partition, key, &missing).await?;
        Ok(records.len())
    }

    /// Gives a key back after a failed produce; when that fails too, the lease expires.
    async fn release_key(&self, key: &str, token: &str) {
        let Some(store) = self.store() else { return };
        if let Err(e) = store.release_ingest_key(key, token).await {
            tracing::warn!(key, token, error = %e, "cannot release an Idempotency-Key; it frees itself when its lease expires");
        }
    }
}

/// The partition a key's records go to: a stable hash (FNV-1a) of the key, so retries of
/// a key land together even before its partition is recorded.
fn key_partition(key: &str, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let n = u64::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(h % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{INGEST_KEY_LEASE, produce_timeout};

    #[test]
    fn a_produce_ends_inside_its_lease() {
        assert_eq!(produce_timeout(INGEST_KEY_LEASE), Duration::from_secs(30));
        for secs in [2, 3, 8, 45, 600] {
            let lease = Duration::from_secs(secs);
            assert!(produce_timeout(lease) < lease, "{lease:?}");
        }
    }
}
