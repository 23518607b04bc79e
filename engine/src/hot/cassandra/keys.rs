//! `ingest_keys`: the `Idempotency-Key`s of `POST /v1/logs` in cluster mode, shared by every
//! node.
//!
//! A request claims its key with `INSERT … IF NOT EXISTS USING TTL <lease>` (state
//! `pending`, owner = a token unique to the request). The claimant produces the records
//! and then marks the key `done` with the answer, `IF owner = <token>`, for the retention.
//! A claim whose node died expires with its lease, so a retry can go through.
//!
//! Every statement here is a lightweight transaction, and an LWT that fails (a write
//! timeout of type CAS, a lost connection, a client-side timeout) has an *unknown
//! outcome*: Paxos may still commit it. So a failure is never read as "applied" or "not
//! applied": the row is read back at LOCAL_SERIAL, which also completes a Paxos round left
//! in flight, and the decision is taken on what is there.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::{CassandraMetrics, Shared, err, prepare};
use crate::EngineError;

/// Claims tried when each one fails with an unknown outcome and the row shows none.
const CLAIM_ATTEMPTS: u32 = 3;
/// Times marking a key done is tried before the request gives up on recording it.
const FINISH_ATTEMPTS: u32 = 5;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// This request holds the key: it may produce, then [`finish`] or [`release`].
    Mine,
    /// An earlier request stored its records; its answer (JSON).
    Done(String),
    /// Another request holds the key and has not finished (or its node died and the lease
    /// has not expired yet).
    Held,
}

/// What marking a key done came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFinish {
    /// The key is `done` with this request's answer.
    Recorded,
    /// The lease ran out before the answer was recorded and another request claimed the key
    /// (its owner token): that request produces the records again.
    LeaseLost(String),
}

/// The prepared statements of `ingest_keys`.
pub(super) struct KeyStatements {
    start_read: PreparedStatement,
    start_insert: PreparedStatement,
    claim: PreparedStatement,
    finish: PreparedStatement,
    insert_done: PreparedStatement,
    release: PreparedStatement,
    read_serial: PreparedStatement,
}

impl KeyStatements {
    /// Prepares the statements: LWTs commit at `write` with LOCAL_SERIAL Paxos.
    pub(super) async fn prepare(
        session: &Session,
        ks: &str,
        write: Consistency,
    ) -> Result<Self, EngineError> {
        let lwt = |cql: String| async move {
            let mut p = prepare(session, &cql).await?;
            p.set_consistency(write);
            p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            Ok::<_, EngineError>(p)
        };
        let claim = lwt(format!(
            "INSERT INTO {ks}.ingest_keys (key, state, owner) VALUES (?, 'pending', ?) \
             IF NOT EXISTS USING TTL ?"
        ))
        .await?;
        // The owner is written again so that it lives as long as the answer: a `done` row
        // keeps saying who wrote it.
        let finish = lwt(format!(
            "UPDATE {ks}.ingest_keys USING TTL ? SET state = 'done', answer = ?, owner = ? \
             WHERE key = ? IF owner = ?"
        ))
        .await?;
        let insert_done = lwt(format!(
            "INSERT INTO {ks}.ingest_keys (key, state, owner, answer) VALUES (?, 'done', ?, ?) \
             IF NOT EXISTS USING TTL ?"
        ))
        .await?;
        let release = lwt(format!(
            "DELETE FROM {ks}.ingest_keys WHERE key = ? IF owner = ?"
        ))
        .await?;
        let mut read_serial = prepare(
            session,
            &format!("SELECT state, owner, answer FROM {ks}.ingest_keys WHERE key = ?"),
        )
        .await?;
        read_serial.set_consistency(Consistency::LocalSerial);
        // Where a key's records go, kept for the retention; written and read by the request
        // that holds the claim (one at a time), both at LOCAL_QUORUM whatever the data's
        // write consistency, so a later attempt always sees the first one's row (one
        // statement per keyed request, not per record).
        let mut start_read = prepare(
            session,
            &format!("SELECT kpart, from_offset FROM {ks}.ingest_key_starts WHERE key = ?"),
        )
        .await?;
        start_read.set_consistency(Consistency::LocalQuorum);
        let mut start_insert = prepare(
            session,
            &format!(
                "INSERT INTO {ks}.ingest_key_starts (key, kpart, from_offset) VALUES (?, ?, ?) \
                 USING TTL ?"
            ),
        )
        .await?;
        start_insert.set_consistency(Consistency::LocalQuorum);
        start_insert.set_is_idempotent(true);
        Ok(Self {
            start_read,
            start_insert,
            claim,
            finish,
            insert_done,
            release,
            read_serial,
        })
    }
}

/// A key's row as stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct KeyRow {
    state: Option<String>,
    owner: Option<String>,
    answer: Option<String>,
}

impl KeyRow {
    /// What a request with `token` makes of this row.
    fn claim_for(self, token: &str) -> KeyClaim {
        match (self.state.as_deref(), self.answer) {
            (Some("done"), Some(answer)) => KeyClaim::Done(answer),
            // Our own earlier attempt applied, although its answer was lost.
            _ if self.owner.as_deref() == Some(token) => KeyClaim::Mine,
            _ => KeyClaim::Held,
        }
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Claims `key` for the request `token` for `lease`.
pub(super) async fn claim(
    shared: &Shared,
    key: &str,
    token: &str,
    lease: Duration,
) -> Result<KeyClaim, EngineError> {
    let context = || format!("claiming Idempotency-Key {key:?}");
    let mut last_error = String::new();
    for attempt in 1..=CLAIM_ATTEMPTS {
        let result = shared
            .session
            .execute_unpaged(&shared.keys.claim, (key, token, secs(lease)))
            .await;
        let row = match result {
            Ok(r) => match lwt_answer(r) {
                Ok((true, _)) => return Ok(KeyClaim::Mine),
                Ok((false, row)) => row,
                Err(e) => return Err(err(context(), e)),
            },
            Err(e) => {
                // Unknown outcome: settle it by reading the row at SERIAL.
                tracing::warn!(key, attempt, error = %e, "claim of an Idempotency-Key failed; reading it back at SERIAL");
                last_error = e.to_string();
                match read_serial(shared, key).await {
                    Ok(Some(row)) => row,
                    Ok(None) => continue,
                    Err(e) => {
                        return Err(err(
                            context(),
                            format!("{last_error}; then reading it back: {e}"),
                        ));
                    }
                }
            }
        };
        let claim = row.claim_for(token);
        if claim == KeyClaim::Held {
            CassandraMetrics::add(&shared.metrics.lwt_conflicts, 1);
        }
        return Ok(claim);
    }
    Err(err(
        context(),
        format!("{CLAIM_ATTEMPTS} attempts failed, the last with: {last_error}"),
    ))
}

/// Marks `key` done with `answer` for `retention`, if `token` still holds it. Called after
/// the records are acknowledged, so it never gives the key up: it retries, and an unknown
/// outcome is read back.
pub(super) async fn finish(
    shared: &Shared,
    key: &str,
    token: &str,
    answer: &str,
    retention: Duration,
) -> Result<KeyFinish, EngineError> {
    let context = || format!("recording the answer to Idempotency-Key {key:?}");
    let ttl = secs(retention);
    let mut last_error = String::new();
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=FINISH_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        let result = shared
            .session
            .execute_unpaged(&shared.keys.finish, (ttl, answer, token, key, token))
            .await;
        let found = match result {
            Ok(r) => match lwt_answer(r) {
                Ok((true, _)) => return Ok(KeyFinish::Recorded),
                Ok((false, row)) => Some(row),
                Err(e) => return Err(err(context(), e)),
            },
            Err(e) => {
                tracing::warn!(key, attempt, error = %e, "recording an Idempotency-Key failed; reading it back at SERIAL");
                last_error = e.to_string();
                match read_serial(shared, key).await {
                    Ok(row) => row,
                    Err(e) => {
                        last_error = format!("{last_error}; then reading it back: {e}");
                        continue;
                    }
                }
            }
        };
        match found {
            Some(row) if row.owner.as_deref() == Some(token) => {
                if row.state.as_deref() == Some("done") {
                    return Ok(KeyFinish::Recorded);
                }
                // Still pending and ours: the update did not land; try again.
            }
            Some(row) if row.owner.is_some() => {
                return Ok(KeyFinish::LeaseLost(row.owner.unwrap_or_default()));
            }
            // The lease expired and nobody claimed the key since: record the answer anew.
            _ => {
                let inserted = shared
                    .session
                    .execute_unpaged(&shared.keys.insert_done, (key, token, answer, ttl))
                    .await;
                match inserted {
                    Ok(r) => match lwt_answer(r) {
                        Ok((true, _)) => return Ok(KeyFinish::Recorded),
                        Ok((false, row)) if row.owner.as_deref() == Some(token) => {
                            return Ok(KeyFinish::Recorded);
                        }
                        Ok((false, row)) => {
                            return Ok(KeyFinish::LeaseLost(row.owner.unwrap_or_default()));
                        }
                        Err(e) => return Err(err(context(), e)),
                    },
                    // Unknown outcome again: the next round reads it back.
                    Err(e) => last_error = e.to_string(),
                }
            }
        }
    }
    Err(err(
        context(),
        format!("{FINISH_ATTEMPTS} attempts failed, the last with: {last_error}"),
    ))
}

/// Gives `key` up if `token` holds it (its records were not stored), so a retry can go
/// through before the lease expires.
pub(super) async fn release(shared: &Shared, key: &str, token: &str) -> Result<(), EngineError> {
    shared
        .session
        .execute_unpaged(&shared.keys.release, (key, token))
        .await
        .map_err(|e| err(format!("releasing Idempotency-Key {key:?}"), e))?;
    Ok(())
}

/// Where `key`'s records go: the partition and the offset it ended at before the first
/// attempt produced any (see `cluster/idempotency.rs`).
pub(super) async fn start(shared: &Shared, key: &str) -> Result<Option<(i32, i64)>, EngineError> {
    let context = || format!("reading where Idempotency-Key {key:?} stores its records");
    let rows = shared
        .session
        .execute_unpaged(&shared.keys.start_read, (key,))
        .await
        .map_err(|e| err(context(), e))?
        .into_rows_result()
        .map_err(|e| err(context(), e))?;
    rows.maybe_first_row::<(i32, i64)>()
        .map_err(|e| err(context(), e))
}

/// Records where `key`'s records go, for `retention`, before the first of them is produced.
pub(super) async fn record_start(
    shared: &Shared,
    key: &str,
    partition: i32,
    from_offset: i64,
    retention: Duration,
) -> Result<(), EngineError> {
    shared
        .session
        .execute_unpaged(
            &shared.keys.start_insert,
            (key, partition, from_offset, secs(retention)),
        )
        .await
        .map_err(|e| {
            err(
                format!("recording where Idempotency-Key {key:?} stores its records"),
                e,
            )
        })?;
    Ok(())
}

/// The key's row at LOCAL_SERIAL: committed, with any Paxos round in flight completed.
async fn read_serial(shared: &Shared, key: &str) -> Result<Option<KeyRow>, String> {
    let rows = shared
        .session
        .execute_unpaged(&shared.keys.read_serial, (key,))
        .await
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?;
    let row = rows
        .maybe_first_row::<(Option<String>, Option<String>, Option<String>)>()
        .map_err(|e| e.to_string())?;
    Ok(row.map(|(state, owner, answer)| KeyRow {
        state,
        owner,
        answer,
    }))
}

/// `[applied]` of an LWT and, when it did not apply, the row Cassandra returns with it.
fn lwt_answer(result: QueryResult) -> Result<(bool, KeyRow), String> {
    let (applied, [state, owner, answer]) =
        super::lwt_answer(result, ["state", "owner", "answer"])?;
    Ok((
        applied,
        KeyRow {
            state,
            owner,
            answer,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::{KeyClaim, KeyRow};

    fn row(state: &str, owner: &str, answer: Option<&str>) -> KeyRow {
        KeyRow {
            state: Some(state.into()),
            owner: Some(owner.into()),
            answer: answer.map(str::to_string),
        }
    }

    #[test]
    fn a_row_read_back_decides_the_claim() {
        let done = row("done", "t1", Some("{\"accepted\":3,\"rejected\":0}"));
        assert_eq!(
            done.claim_for("t2"),
            KeyClaim::Done("{\"accepted\":3,\"rejected\":0}".into())
        );
        assert_eq!(row("pending", "t1", None).claim_for("t1"), KeyClaim::Mine);
        assert_eq!(row("pending", "t1", None).claim_for("t2"), KeyClaim::Held);
        // A lease whose cells are expiring reads as held, never as free.
        assert_eq!(KeyRow::default().claim_for("t2"), KeyClaim::Held);
    }
}
