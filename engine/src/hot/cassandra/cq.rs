//! Continuous queries in cluster mode: what every node shares through Cassandra.
//!
//! - `cq_definitions`: one row per continuous query (`version`, the `CREATE` text, `state`).
//!   It changes only by lightweight transaction (`IF NOT EXISTS`, `IF version = :old`,
//!   `IF EXISTS`), so two nodes replacing one query at once cannot both win; every node
//!   reads the table each second and runs what it says.
//! - `cq_alerts`: one row per alert instance, keyed by its deterministic `alert_id` (query,
//!   version, labels, anchor time). Every node evaluates every rule over every partition, so
//!   several derive the same instance; the first `INSERT … IF NOT EXISTS` creates the row and
//!   later changes (fired, resolved) are plain updates of the same row. `alerts` on any node
//!   reads this table.
//! - `cq_tables`: one row per table a continuous query writes (`INTO t`, `NOTIFY (TABLE
//!   t)`): its kind, its columns (`columns_ipc`: an Arrow IPC schema, hex) and the queries writing it.
//!   Created `IF NOT EXISTS`, so the first query to name a table fixes its columns and a
//!   query on another node writing other columns fails to be created.
//! - `cq_table_rows`: the rows of the `INTO` tables, by table, a hash bucket of the upsert
//!   key, and the key; each row a JSON object. Every node evaluates every query and writes
//!   the rows it derives, `USING TIMESTAMP` the query's event-time watermark, so the same
//!   row from several nodes is one row, and a node replaying old input (a restart, a late
//!   joiner) cannot put an older version of a row over a newer one.
//! - `cq_nodes`: which node runs which query (version, state) and how far it is (`progress`:
//!   its row of `continuous_queries`, JSON), each row written with a TTL by the node every
//!   few seconds, so a node that stops drops out by itself.
//! - `cq_deliveries`: one row per notification event (its deterministic `event_id`, also
//!   the webhook's `Idempotency-Key`). A node claims an event (`IF NOT EXISTS USING TTL`)
//!   before sending it and marks it `done` after; another node that derived the same event
//!   finds it done (and records it delivered) or held (and looks again later). A node that
//!   dies mid-delivery leaves the claim to expire, and the next node sends it, same key.

use scylla::statement::prepared::PreparedStatement;

use super::{Shared, err};
use crate::EngineError;

/// One row of `cq_definitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDefinition {
    pub name: String,
    pub version: i64,
    pub sql: String,
    /// `RUNNING` or `PAUSED`.
    pub state: String,
    pub created_us: i64,
}

/// What a delivery claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryClaim {
    /// This node sends the event, then calls [`deliver_done`].
    Mine,
    /// Another node delivered it.
    Done,
    /// Another node (named) holds it and has not finished.
    Held(String),
}

pub(super) fn tables(ks: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.cq_definitions (\
             name text PRIMARY KEY, version bigint, sql text, state text, created_us bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.cq_alerts (\
             alert_id text PRIMARY KEY, cq_name text, body text, writer text)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.cq_deliveries (\
             event_id text PRIMARY KEY, owner text, state text)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.cq_tables (\
             name text PRIMARY KEY, kind text, columns_ipc text, writers set<text>, \
             created_by text, created_us bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.cq_nodes (\
             name text, node text, version bigint, state text, progress text, \
             PRIMARY KEY ((name), node))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.cq_table_rows (\
             table_name text, bucket int, key blob, row text, \
             PRIMARY KEY ((table_name, bucket), key))"
        ),
    ]
}

/// Columns added to a table after its first release: `(table, column, type)`. A keyspace
/// created before gets them by `ALTER TABLE … ADD` (see `schema::migrate`).
pub(super) const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("cq_nodes", "progress", "text")];

/// Buckets the rows of one `INTO` table are spread over (a Cassandra partition each).
pub const TABLE_BUCKETS: i32 = 16;

/// One row of `cq_tables`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTableDef {
    pub name: String,
    /// `into` or `alerts`.
    pub kind: String,
    /// The columns: an Arrow IPC schema message, hex.
    pub schema: String,
    /// The queries that write it.
    pub writers: Vec<String>,
}

/// Defines table `def.name` unless it exists, and adds `def.writers` to its writers:
/// `None` when it is now defined as `def` says, else the kind and schema stored.
pub(super) async fn define_table(
    shared: &Shared,
    def: &SharedTableDef,
    node: &str,
) -> Result<Option<(String, String)>, EngineError> {
    let ks = &shared.keyspace;
    let insert = shared
        .lwt(&format!(
            "INSERT INTO {ks}.cq_tables (name, kind, columns_ipc, writers, created_by, created_us) \
             VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
        ))
        .await?;
    let context = || format!("defining table {}", def.name);
    let result = shared
        .session
        .execute_unpaged(
            &insert,
            (
                &def.name,
                &def.kind,
                &def.schema,
                &def.writers,
                node,
                crate::continuous::now_us(),
            ),
        )
        .await
        .map_err(|e| err(context(), e))?;
    let (applied, [kind, schema]) =
        super::lwt_answer(result, ["kind", "columns_ipc"]).map_err(|e| err(context(), e))?;
    if applied {
        return Ok(None);
    }
    let (kind, schema) = (kind.unwrap_or_default(), schema.unwrap_or_default());
    if kind != def.kind || schema != def.schema {
        return Ok(Some((kind, schema)));
    }
    let add = write(
        shared,
        &format!("UPDATE {ks}.cq_tables SET writers = writers + ? WHERE name = ?"),
    )
    .await?;
    shared
        .session
        .execute_unpaged(&add, (&def.writers, &def.name))
        .await
        .map_err(|e| err(context(), e))?;
    Ok(None)
}

/// Every table of `cq_tables`.
pub(super) async fn table_defs(shared: &Shared) -> Result<Vec<SharedTableDef>, EngineError> {
    let ks = &shared.keyspace;
    let select = super::scan::statement(
        shared,
        &format!("SELECT name, kind, columns_ipc, writers FROM {ks}.cq_tables"),
    )
    .await?;
    let context = "reading the continuous-query tables";
    let mut out = Vec::new();
    let mut pager = shared
        .session
        .execute_iter(select, ())
        .await
        .map_err(|e| err(context, e))?
        .rows_stream::<(String, Option<String>, Option<String>, Option<Vec<String>>)>()
        .map_err(|e| err(context, e))?;
    use futures::StreamExt;
    while let Some(row) = pager.next().await {
        let (name, kind, schema, writers) = row.map_err(|e| err(context, e))?;
        out.push(SharedTableDef {
            name,
            kind: kind.unwrap_or_default(),
            schema: schema.unwrap_or_default(),
            writers: writers.unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The bucket of upsert key `key`.
pub fn table_bucket(key: &[u8]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % TABLE_BUCKETS as u32) as i32
}

/// Writes `rows` (key, JSON row, version) of table `table`, each `USING TIMESTAMP` its
/// version, a few at a time.
pub(super) async fn put_table_rows(
    shared: &Shared,
    table: &str,
    rows: &[(Vec<u8>, String, i64)],
) -> Result<(), EngineError> {
    let ks = &shared.keyspace;
    let insert = write(
        shared,
        &format!(
            "INSERT INTO {ks}.cq_table_rows (table_name, bucket, key, row) VALUES (?, ?, ?, ?) \
             USING TIMESTAMP ?"
        ),
    )
    .await?;
    use futures::{StreamExt, TryStreamExt};
    let writes: Vec<_> = rows
        .iter()
        .map(|(key, row, version)| put_row(shared, &insert, table, key, row, *version))
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn put_row(
    shared: &Shared,
    insert: &PreparedStatement,
    table: &str,
    key: &[u8],
    row: &str,
    version: i64,
) -> Result<(), EngineError> {
    shared
        .session
        .execute_unpaged(insert, (table, table_bucket(key), key, row, version))
        .await
        .map_err(|e| err(format!("writing rows of table {table}"), e))?;
    Ok(())
}

/// One row of `cq_nodes`: a node runs a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeQuery {
    pub name: String,
    pub node: String,
    pub version: i64,
    /// `RUNNING` or `PAUSED`.
    pub state: String,
    /// The node's row of `continuous_queries`, one JSON object (`None` from a node that
    /// did not report it).
    pub progress: Option<String>,
}

/// Records that `node` runs `queries` for the next `ttl_secs`.
pub(super) async fn report_running(
    shared: &Shared,
    node: &str,
    queries: &[NodeQuery],
    ttl_secs: i32,
) -> Result<(), EngineError> {
    let ks = &shared.keyspace;
    let insert = write(
        shared,
        &format!(
            "INSERT INTO {ks}.cq_nodes (name, node, version, state, progress) \
             VALUES (?, ?, ?, ?, ?) USING TTL ?"
        ),
    )
    .await?;
    for q in queries {
        shared
            .session
            .execute_unpaged(
                &insert,
                (&q.name, node, q.version, &q.state, &q.progress, ttl_secs),
            )
            .await
            .map_err(|e| err(format!("recording that {node} runs {}", q.name), e))?;
    }
    Ok(())
}

/// Every row of `cq_nodes`.
pub(super) async fn running(shared: &Shared) -> Result<Vec<NodeQuery>, EngineError> {
    let ks = &shared.keyspace;
    let select = super::scan::statement(
        shared,
        &format!("SELECT name, node, version, state, progress FROM {ks}.cq_nodes"),
    )
    .await?;
    let context = "reading which node runs which continuous query";
    type Row = (String, String, Option<i64>, Option<String>, Option<String>);
    let mut pager = shared
        .session
        .execute_iter(select, ())
        .await
        .map_err(|e| err(context, e))?
        .rows_stream::<Row>()
        .map_err(|e| err(context, e))?;
    let mut out = Vec::new();
    use futures::StreamExt;
    while let Some(row) = pager.next().await {
        let (name, node, version, state, progress) = row.map_err(|e| err(context, e))?;
        out.push(NodeQuery {
            name,
            node,
            version: version.unwrap_or(0),
            state: state.unwrap_or_default(),
            progress,
        });
    }
    Ok(out)
}

/// Every row of `INTO` table `table`, as JSON.
pub(super) async fn table_rows(shared: &Shared, table: &str) -> Result<Vec<String>, EngineError> {
    let ks = &shared.keyspace;
    let select = super::scan::statement(
        shared,
        &format!("SELECT row FROM {ks}.cq_table_rows WHERE table_name = ? AND bucket = ?"),
    )
    .await?;
    let context = || format!("reading table {table}");
    let mut out = Vec::new();
    use futures::StreamExt;
    for bucket in 0..TABLE_BUCKETS {
        let mut pager = shared
            .session
            .execute_iter(select.clone(), (table, bucket))
            .await
            .map_err(|e| err(context(), e))?
            .rows_stream::<(Option<String>,)>()
            .map_err(|e| err(context(), e))?;
        while let Some(row) = pager.next().await {
            let (row,) = row.map_err(|e| err(context(), e))?;
            out.extend(row);
        }
    }
    Ok(out)
}

/// A plain write at the write consistency.
async fn write(shared: &Shared, cql: &str) -> Result<PreparedStatement, EngineError> {
    let mut p = super::prepare(&shared.session, cql).await?;
    p.set_consistency(shared.write_consistency);
    Ok(p)
}

/// Every definition, read at LOCAL_SERIAL so a node never runs an older version than one a
/// `CREATE` elsewhere already reported done.
pub(super) async fn definitions(shared: &Shared) -> Result<Vec<SharedDefinition>, EngineError> {
    let ks = &shared.keyspace;
    let select = shared
        .serial_read(&format!(
            "SELECT name, version, sql, state, created_us FROM {ks}.cq_definitions"
        ))
        .await?;
    let context = "reading the continuous query definitions";
    let rows = shared
        .session
        .execute_unpaged(&select, ())
        .await
        .map_err(|e| err(context, e))?
        .into_rows_result()
        .map_err(|e| err(context, e))?;
    let mut out = Vec::new();
    for row in rows
        .rows::<(
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
        )>()
        .map_err(|e| err(context, e))?
    {
        let (name, version, sql, state, created_us) = row.map_err(|e| err(context, e))?;
        out.push(SharedDefinition {
            name,
            version: version.unwrap_or(1),
            sql: sql.unwrap_or_default(),
            state: state.unwrap_or_else(|| "RUNNING".into()),
            created_us: created_us.unwrap_or(0),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Stores `def` if the stored version is still `expected` (`None`: no row yet); `false` when
/// another node changed it first.
pub(super) async fn put_definition(
    shared: &Shared,
    def: &SharedDefinition,
    expected: Option<i64>,
) -> Result<bool, EngineError> {
    let ks = &shared.keyspace;
    let context = || {
        format!(
            "storing continuous query {} version {}",
            def.name, def.version
        )
    };
    let result = match expected {
        None => {
            let insert = shared
                .lwt(&format!(
                    "INSERT INTO {ks}.cq_definitions (name, version, sql, state, created_us) \
                     VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
                ))
                .await?;
            shared
                .session
                .execute_unpaged(
                    &insert,
                    (&def.name, def.version, &def.sql, &def.state, def.created_us),
                )
                .await
        }
        Some(old) => {
            let update = shared
                .lwt(&format!(
                    "UPDATE {ks}.cq_definitions SET version = ?, sql = ?, state = ?, \
                     created_us = ? WHERE name = ? IF version = ?"
                ))
                .await?;
            shared
                .session
                .execute_unpaged(
                    &update,
                    (
                        def.version,
                        &def.sql,
                        &def.state,
                        def.created_us,
                        &def.name,
                        old,
                    ),
                )
                .await
        }
    };
    let result = result.map_err(|e| err(context(), e))?;
    super::lwt_answer(result, [])
        .map(|(applied, [])| applied)
        .map_err(|e| err(context(), e))
}

/// Sets the state of `name` (`RUNNING`, `PAUSED`); `false` when there is no such query.
pub(super) async fn set_definition_state(
    shared: &Shared,
    name: &str,
    state: &str,
) -> Result<bool, EngineError> {
    let ks = &shared.keyspace;
    let update = shared
        .lwt(&format!(
            "UPDATE {ks}.cq_definitions SET state = ? WHERE name = ? IF EXISTS"
        ))
        .await?;
    let context = || format!("setting continuous query {name} {state}");
    let result = shared
        .session
        .execute_unpaged(&update, (state, name))
        .await
        .map_err(|e| err(context(), e))?;
    super::lwt_answer(result, [])
        .map(|(applied, [])| applied)
        .map_err(|e| err(context(), e))
}

/// Deletes `name`; `false` when there was none.
pub(super) async fn delete_definition(shared: &Shared, name: &str) -> Result<bool, EngineError> {
    let ks = &shared.keyspace;
    let delete = shared
        .lwt(&format!(
            "DELETE FROM {ks}.cq_definitions WHERE name = ? IF EXISTS"
        ))
        .await?;
    let context = || format!("dropping continuous query {name}");
    let result = shared
        .session
        .execute_unpaged(&delete, (name,))
        .await
        .map_err(|e| err(context(), e))?;
    super::lwt_answer(result, [])
        .map(|(applied, [])| applied)
        .map_err(|e| err(context(), e))
}

/// Creates the row of alert `id` with `body` (JSON) unless it exists: `None` when this call
/// created it, else the body stored.
pub(super) async fn insert_alert(
    shared: &Shared,
    id: &str,
    cq_name: &str,
    body: &str,
    writer: &str,
) -> Result<Option<String>, EngineError> {
    let ks = &shared.keyspace;
    let insert = shared
        .lwt(&format!(
            "INSERT INTO {ks}.cq_alerts (alert_id, cq_name, body, writer) VALUES (?, ?, ?, ?) \
             IF NOT EXISTS"
        ))
        .await?;
    let context = || format!("recording alert {id}");
    let result = shared
        .session
        .execute_unpaged(&insert, (id, cq_name, body, writer))
        .await
        .map_err(|e| err(context(), e))?;
    super::lwt_answer(result, ["body"])
        .map(|(applied, [stored])| (!applied).then(|| stored.unwrap_or_default()))
        .map_err(|e| err(context(), e))
}

/// Replaces the body of alert `id` (a state change of an instance that exists).
pub(super) async fn update_alert(shared: &Shared, id: &str, body: &str) -> Result<(), EngineError> {
    let ks = &shared.keyspace;
    let update = write(
        shared,
        &format!("UPDATE {ks}.cq_alerts SET body = ? WHERE alert_id = ?"),
    )
    .await?;
    shared
        .session
        .execute_unpaged(&update, (body, id))
        .await
        .map_err(|e| err(format!("updating alert {id}"), e))?;
    Ok(())
}

/// Every alert row's body (JSON).
pub(super) async fn alerts(shared: &Shared) -> Result<Vec<String>, EngineError> {
    let ks = &shared.keyspace;
    let select =
        super::scan::statement(shared, &format!("SELECT body FROM {ks}.cq_alerts")).await?;
    let context = "reading the alerts";
    let mut out = Vec::new();
    let mut pager = shared
        .session
        .execute_iter(select, ())
        .await
        .map_err(|e| err(context, e))?
        .rows_stream::<(Option<String>,)>()
        .map_err(|e| err(context, e))?;
    use futures::StreamExt;
    while let Some(row) = pager.next().await {
        let (body,) = row.map_err(|e| err(context, e))?;
        out.extend(body);
    }
    Ok(out)
}

/// Claims the delivery of `event_id` for `owner` for `lease_secs`.
pub(super) async fn claim_delivery(
    shared: &Shared,
    event_id: &str,
    owner: &str,
    lease_secs: i32,
) -> Result<DeliveryClaim, EngineError> {
    let ks = &shared.keyspace;
    let insert = shared
        .lwt(&format!(
            "INSERT INTO {ks}.cq_deliveries (event_id, owner, state) VALUES (?, ?, 'sending') \
             IF NOT EXISTS USING TTL ?"
        ))
        .await?;
    let context = || format!("claiming the delivery of event {event_id}");
    let result = shared
        .session
        .execute_unpaged(&insert, (event_id, owner, lease_secs))
        .await
        .map_err(|e| err(context(), e))?;
    let (applied, [holder, state]) =
        super::lwt_answer(result, ["owner", "state"]).map_err(|e| err(context(), e))?;
    Ok(if applied {
        DeliveryClaim::Mine
    } else if state.as_deref() == Some("done") {
        DeliveryClaim::Done
    } else if holder.as_deref() == Some(owner) {
        // This node's own claim from an attempt that failed: it tries again.
        DeliveryClaim::Mine
    } else {
        DeliveryClaim::Held(holder.unwrap_or_default())
    })
}

/// Marks `event_id` delivered, kept `retention_secs`.
pub(super) async fn delivery_done(
    shared: &Shared,
    event_id: &str,
    owner: &str,
    retention_secs: i32,
) -> Result<(), EngineError> {
    let ks = &shared.keyspace;
    let update = write(
        shared,
        &format!(
            "UPDATE {ks}.cq_deliveries USING TTL ? SET owner = ?, state = 'done' WHERE event_id = ?"
        ),
    )
    .await?;
    shared
        .session
        .execute_unpaged(&update, (retention_secs, owner, event_id))
        .await
        .map_err(|e| err(format!("recording the delivery of event {event_id}"), e))?;
    Ok(())
}
