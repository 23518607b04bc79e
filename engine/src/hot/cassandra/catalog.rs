//! The cluster catalog: the cold tier's manifest and the tiering lease, in Cassandra.
//!
//! `tier_state` holds one row per manifest (`name = 'cold'`): its version and the JSON of
//! [`Manifest`]. It changes only by a lightweight transaction `… IF version = :old`, so the
//! horizon and the list of live files move together, once, whichever node commits; a node
//! that lost the race learns it from `[applied] = false` and deletes its own files.
//! `tier_lease` is one row with a TTL: the node whose `INSERT … IF NOT EXISTS` applied tiers
//! until the row expires or it lets go, so two nodes do not write the same range twice.
//! Both are read at LOCAL_SERIAL, which also completes a Paxos round a crashed node left
//! half done.

use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::{CassandraMetrics, Shared, err, prepare};
use crate::EngineError;
use crate::catalog::Manifest;

/// The row of the cold tier's manifest in `tier_state` and of its lease in `tier_lease`.
const NAME: &str = "cold";

/// Who holds the tiering lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This node: it may tier until the lease's TTL passes.
    Mine,
    /// Another node (its id).
    Held(String),
}

impl Shared {
    pub(super) async fn lwt(&self, cql: &str) -> Result<PreparedStatement, EngineError> {
        let mut p = prepare(&self.session, cql).await?;
        p.set_consistency(self.write_consistency);
        p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        Ok(p)
    }

    pub(super) async fn serial_read(&self, cql: &str) -> Result<PreparedStatement, EngineError> {
        let mut p = prepare(&self.session, cql).await?;
        p.set_consistency(Consistency::LocalSerial);
        Ok(p)
    }
}

/// The committed manifest (version 0 and empty before the first commit). `serial` reads
/// at LOCAL_SERIAL (a Paxos round: what a compare-and-set must start from); otherwise at the
/// read consistency with a statement prepared once (the once-a-second refresh, which only
/// ever moves forward, so a slightly stale answer is harmless).
pub(super) async fn load(shared: &Shared, serial: bool) -> Result<Manifest, EngineError> {
    let ks = &shared.keyspace;
    let cql = format!("SELECT version, manifest FROM {ks}.tier_state WHERE name = ?");
    let select = if serial {
        shared.serial_read(&cql).await?
    } else {
        super::scan::statement(shared, &cql).await?
    };
    let context = || "reading the cold manifest".to_string();
    let rows = shared
        .session
        .execute_unpaged(&select, (NAME,))
        .await
        .map_err(|e| err(context(), e))?
        .into_rows_result()
        .map_err(|e| err(context(), e))?;
    let Some((version, json)) = rows
        .maybe_first_row::<(Option<i64>, Option<String>)>()
        .map_err(|e| err(context(), e))?
    else {
        return Ok(Manifest::default());
    };
    let mut manifest: Manifest = serde_json::from_str(json.as_deref().unwrap_or("{}"))
        .map_err(|e| err(context(), format!("not a valid manifest: {e}")))?;
    manifest.version = version.unwrap_or(0).max(0) as u64;
    Ok(manifest)
}

/// Commits `next` if the stored version is still `expected`; `false` when another commit
/// came first (nothing changed).
pub(super) async fn commit(
    shared: &Shared,
    expected: u64,
    next: &Manifest,
) -> Result<bool, EngineError> {
    let ks = &shared.keyspace;
    let json = serde_json::to_string(next)
        .map_err(|e| err("encoding the cold manifest", e.to_string()))?;
    let version = i64::try_from(next.version).unwrap_or(i64::MAX);
    let context = || format!("committing cold manifest version {}", next.version);
    let result = if expected == 0 {
        let insert = shared
            .lwt(&format!(
                "INSERT INTO {ks}.tier_state (name, version, manifest) VALUES (?, ?, ?) IF NOT EXISTS"
            ))
            .await?;
        shared
            .session
            .execute_unpaged(&insert, (NAME, version, json))
            .await
    } else {
        let update = shared
            .lwt(&format!(
                "UPDATE {ks}.tier_state SET version = ?, manifest = ? WHERE name = ? IF version = ?"
            ))
            .await?;
        let old = i64::try_from(expected).unwrap_or(i64::MAX);
        shared
            .session
            .execute_unpaged(&update, (version, json, NAME, old))
            .await
    };
    let applied = applied(result).map_err(|e| err(context(), e))?;
    if !applied {
        CassandraMetrics::add(&shared.metrics.lwt_conflicts, 1);
    }
    Ok(applied)
}

/// Takes or renews the tiering lease for `owner` for `ttl_secs`.
pub(super) async fn lease(
    shared: &Shared,
    owner: &str,
    ttl_secs: i32,
) -> Result<Lease, EngineError> {
    let ks = &shared.keyspace;
    let context = || format!("taking the tiering lease for {owner}");
    let insert = shared
        .lwt(&format!(
            "INSERT INTO {ks}.tier_lease (name, owner) VALUES (?, ?) IF NOT EXISTS USING TTL ?"
        ))
        .await?;
    let result = shared
        .session
        .execute_unpaged(&insert, (NAME, owner, ttl_secs))
        .await
        .map_err(|e| err(context(), e))?;
    let (applied, holder) = applied_and_owner(result).map_err(|e| err(context(), e))?;
    if applied {
        return Ok(Lease::Mine);
    }
    match holder {
        Some(h) if h == owner => {
            let renew = shared
                .lwt(&format!(
                    "UPDATE {ks}.tier_lease USING TTL ? SET owner = ? WHERE name = ? IF owner = ?"
                ))
                .await?;
            let r = shared
                .session
                .execute_unpaged(&renew, (ttl_secs, owner, NAME, owner))
                .await
                .map_err(|e| err(context(), e))?;
            let (applied, holder) = applied_and_owner(r).map_err(|e| err(context(), e))?;
            Ok(if applied {
                Lease::Mine
            } else {
                Lease::Held(holder.unwrap_or_default())
            })
        }
        Some(h) => Ok(Lease::Held(h)),
        None => Ok(Lease::Held(String::new())),
    }
}

/// Lets go of the lease if `owner` holds it.
pub(super) async fn release(shared: &Shared, owner: &str) -> Result<(), EngineError> {
    let ks = &shared.keyspace;
    let delete = shared
        .lwt(&format!(
            "DELETE FROM {ks}.tier_lease WHERE name = ? IF owner = ?"
        ))
        .await?;
    shared
        .session
        .execute_unpaged(&delete, (NAME, owner))
        .await
        .map_err(|e| err(format!("releasing the tiering lease of {owner}"), e))?;
    Ok(())
}

/// The `[applied]` column of an LWT's answer.
fn applied<E: std::fmt::Display>(
    result: Result<scylla::response::query_result::QueryResult, E>,
) -> Result<bool, String> {
    applied_and_owner(result.map_err(|e| e.to_string())?).map(|(a, _)| a)
}

/// `[applied]` and, when it did not apply, the `owner` column Cassandra returns with it.
fn applied_and_owner(
    result: scylla::response::query_result::QueryResult,
) -> Result<(bool, Option<String>), String> {
    super::lwt_answer(result, ["owner"]).map(|(applied, [owner])| (applied, owner))
}
