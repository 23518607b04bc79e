//! [`ProgressStore`](crate::source::ProgressStore): per-partition progress fenced by an epoch.
//!
//! Each (group, topic, partition) is its own Cassandra partition: Paxos serializes the
//! lightweight transactions of one partition, so a group's claims and advances never queue
//! behind each other. `list()` reads the `progress_by_group` index (one partition, written
//! once per claim) and then each progress row by key, rather than scanning `progress`:
//! a full scan touches every node and every group's rows just to list one group.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use super::{CassandraMetrics, Shared, err, prepare};
use crate::EngineError;
use crate::source::{PartitionClaim, PartitionId, PartitionProgress};

/// Claims attempted before giving up when other nodes keep winning the race.
const CLAIM_ATTEMPTS: u32 = 10;

/// The prepared statements of progress.
pub(super) struct ProgressStatements {
    /// Reads one progress row at LOCAL_SERIAL (sees committed and in-flight Paxos).
    read_serial: PreparedStatement,
    /// Reads one progress row at the read consistency (for `list`).
    read: PreparedStatement,
    insert_first: PreparedStatement,
    bump_epoch: PreparedStatement,
    advance: PreparedStatement,
    index: PreparedStatement,
    list_index: PreparedStatement,
}

impl ProgressStatements {
    /// Prepares the statements: LWTs commit at `write`, index reads use `read`.
    pub(super) async fn prepare(
        session: &Session,
        ks: &str,
        write: Consistency,
        read: Consistency,
    ) -> Result<Self, EngineError> {
        let key = "consumer_group = ? AND topic = ? AND kpart = ?";
        let select =
            format!("SELECT next_offset, epoch, owner, updated_us FROM {ks}.progress WHERE {key}");
        let mut read_serial = prepare(session, &select).await?;
        read_serial.set_consistency(Consistency::LocalSerial);
        let mut read_plain = prepare(session, &select).await?;
        read_plain.set_consistency(read);
        let lwt = |cql: String| async move {
            let mut p = prepare(session, &cql).await?;
            p.set_consistency(write);
            p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            Ok::<_, EngineError>(p)
        };
        let insert_first = lwt(format!(
            "INSERT INTO {ks}.progress (consumer_group, topic, kpart, epoch, owner, updated_us) \
             VALUES (?, ?, ?, 1, ?, ?) IF NOT EXISTS"
        ))
        .await?;
        let bump_epoch = lwt(format!(
            "UPDATE {ks}.progress SET epoch = ?, owner = ?, updated_us = ? WHERE {key} IF epoch = ?"
        ))
        .await?;
        let advance = lwt(format!(
            "UPDATE {ks}.progress SET next_offset = ?, updated_us = ? WHERE {key} IF epoch = ?"
        ))
        .await?;
        let mut index = prepare(
            session,
            &format!(
                "INSERT INTO {ks}.progress_by_group (consumer_group, topic, kpart) VALUES (?, ?, ?)"
            ),
        )
        .await?;
        index.set_consistency(write);
        index.set_is_idempotent(true);
        let mut list_index = prepare(
            session,
            &format!("SELECT topic, kpart FROM {ks}.progress_by_group WHERE consumer_group = ?"),
        )
        .await?;
        list_index.set_consistency(read);
        Ok(Self {
            read_serial,
            read: read_plain,
            insert_first,
            bump_epoch,
            advance,
            index,
            list_index,
        })
    }
}

/// One progress row as stored.
#[derive(Debug)]
struct Stored {
    next_offset: Option<i64>,
    epoch: i64,
    owner: String,
    updated_us: i64,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Bumps the epoch of `partition` for `owner` (compare-and-set, retried with backoff).
pub(super) async fn claim(
    shared: &Shared,
    partition: &PartitionId,
    owner: &str,
) -> Result<PartitionClaim, EngineError> {
    let s = &shared.progress;
    let key = (
        shared.group.as_str(),
        partition.topic.as_str(),
        partition.partition,
    );
    let context = || format!("claiming {partition} for {owner}");
    for attempt in 0..CLAIM_ATTEMPTS {
        let current = read(&shared.session, &s.read_serial, key)
            .await
            .map_err(|e| err(context(), e))?;
        let (applied, claim) = match current {
            None => {
                let values = (key.0, key.1, key.2, owner, now_us());
                let r = shared
                    .session
                    .execute_unpaged(&s.insert_first, values)
                    .await;
                let claim = PartitionClaim {
                    epoch: 1,
                    next_offset: None,
                };
                (applied(r).map_err(|e| err(context(), e))?, claim)
            }
            Some(stored) => {
                let epoch = stored.epoch.saturating_add(1);
                let values = (epoch, owner, now_us(), key.0, key.1, key.2, stored.epoch);
                let r = shared.session.execute_unpaged(&s.bump_epoch, values).await;
                let claim = PartitionClaim {
                    epoch,
                    next_offset: stored.next_offset,
                };
                (applied(r).map_err(|e| err(context(), e))?, claim)
            }
        };
        if applied {
            shared
                .session
                .execute_unpaged(&s.index, key)
                .await
                .map_err(|e| err(format!("{}: indexing", context()), e))?;
            tracing::info!(topic = %partition.topic, partition = partition.partition, owner, epoch = claim.epoch, "claimed partition");
            return Ok(claim);
        }
        CassandraMetrics::add(&shared.metrics.lwt_conflicts, 1);
        tokio::time::sleep(backoff(attempt)).await;
    }
    Err(err(
        context(),
        format!("lost the compare-and-set {CLAIM_ATTEMPTS} times to other claimers"),
    ))
}

/// 20 ms doubling up to ~1 s, with jitter so racing nodes spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 20u64 << attempt.min(6);
    let jitter = u64::from(chrono::Utc::now().timestamp_subsec_micros()) % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

/// Moves progress if `epoch` still owns the partition; false when fenced.
pub(super) async fn advance(
    shared: &Shared,
    partition: &PartitionId,
    epoch: i64,
    next_offset: i64,
) -> Result<bool, EngineError> {
    let values = (
        next_offset,
        now_us(),
        shared.group.as_str(),
        partition.topic.as_str(),
        partition.partition,
        epoch,
    );
    let r = shared
        .session
        .execute_unpaged(&shared.progress.advance, values)
        .await;
    let applied = applied(r).map_err(|e| {
        err(
            format!("advancing {partition} to {next_offset} (epoch {epoch})"),
            e,
        )
    })?;
    if !applied {
        CassandraMetrics::add(&shared.metrics.lwt_conflicts, 1);
        tracing::warn!(topic = %partition.topic, partition = partition.partition, epoch, next_offset, "progress fenced: another node claimed the partition");
    }
    Ok(applied)
}

/// Every claimed partition of the group. One never advanced reports `next_offset` -1.
pub(super) async fn list(shared: &Shared) -> Result<Vec<PartitionProgress>, EngineError> {
    let s = &shared.progress;
    let context = || format!("listing progress of group {}", shared.group);
    let mut index = s.list_index.clone();
    index.set_page_size(shared.page_size);
    let keys: Vec<(String, i32)> = shared
        .session
        .execute_iter(index, (shared.group.as_str(),))
        .await
        .map_err(|e| err(context(), e))?
        .rows_stream::<(String, i32)>()
        .map_err(|e| err(context(), e))?
        .try_collect()
        .await
        .map_err(|e| err(context(), e))?;
    let rows: Vec<Option<PartitionProgress>> = futures::stream::iter(keys)
        .map(|(topic, partition)| async move {
            let key = (shared.group.as_str(), topic.as_str(), partition);
            let stored = read(&shared.session, &s.read, key)
                .await
                .map_err(|e| err(context(), e))?;
            Ok::<_, EngineError>(stored.map(|st| PartitionProgress {
                partition: PartitionId {
                    topic: topic.clone(),
                    partition,
                },
                next_offset: st.next_offset.unwrap_or(-1),
                owner: st.owner,
                epoch: st.epoch,
                updated_us: st.updated_us,
            }))
        })
        .buffered(shared.max_in_flight.min(64))
        .try_collect()
        .await?;
    Ok(rows.into_iter().flatten().collect())
}

/// Reads one progress row.
async fn read(
    session: &Session,
    statement: &PreparedStatement,
    key: (&str, &str, i32),
) -> Result<Option<Stored>, String> {
    let result = session
        .execute_unpaged(statement, key)
        .await
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?;
    let row = result
        .maybe_first_row::<(Option<i64>, Option<i64>, Option<String>, Option<i64>)>()
        .map_err(|e| e.to_string())?;
    Ok(row.map(|(next_offset, epoch, owner, updated_us)| Stored {
        next_offset,
        epoch: epoch.unwrap_or(0),
        owner: owner.unwrap_or_default(),
        updated_us: updated_us.unwrap_or(0),
    }))
}

/// Whether a lightweight transaction applied (its `[applied]` column).
fn applied<E: std::fmt::Display>(result: Result<QueryResult, E>) -> Result<bool, String> {
    let rows = result
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?;
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| e.to_string())?
        .ok_or("the lightweight transaction returned no row")?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        other => Err(format!("unexpected [applied] column: {other:?}")),
    }
}
