//! The keyspace and its tables, created idempotently: several nodes may start at once.
//!
//! `logs` and `dead_letters` are partitioned by (time bucket, shard) and clustered by
//! time then Kafka identity, so a redelivered record rewrites its own row and a time range
//! reads a known set of partitions. `buckets` lists the buckets that hold rows, so scans
//! never guess. `progress` has one Cassandra partition per Kafka partition: lightweight
//! transactions on one Cassandra partition serialize, and a group's partitions must not
//! wait on each other. `progress_by_group` lists a group's partitions for `list()`.
//! `tier_state` and `tier_lease` are the cluster catalog (`catalog.rs`). `ingest_keys` holds
//! the `Idempotency-Key`s of HTTP ingest, each its own Cassandra partition (`keys.rs`).

use std::time::Duration;

use scylla::client::session::Session;

use super::err;
use crate::EngineError;
use crate::cluster::CassandraConfig;

/// Creates the keyspace and tables if missing and waits for schema agreement; returns the
/// validated keyspace name.
pub(super) async fn migrate(
    session: &Session,
    config: &CassandraConfig,
) -> Result<String, EngineError> {
    let keyspace = identifier("cassandra.keyspace", &config.keyspace)?;
    let mut statements = vec![create_keyspace(&keyspace, config)?];
    statements.extend(create_tables(&keyspace, config.ttl));
    statements.extend(super::cq::tables(&keyspace));
    for cql in &statements {
        session
            .query_unpaged(cql.as_str(), ())
            .await
            .map_err(|e| err(format!("schema: `{cql}`"), e))?;
        session
            .await_schema_agreement()
            .await
            .map_err(|e| err("schema: awaiting agreement", e))?;
    }
    for (table, column, kind) in super::cq::ADDED_COLUMNS {
        if has_column(session, &keyspace, table, column).await? {
            continue;
        }
        let cql = format!("ALTER TABLE {keyspace}.{table} ADD {column} {kind}");
        if let Err(e) = session.query_unpaged(cql.as_str(), ()).await {
            // Another node starting at the same time may have added it first.
            if !has_column(session, &keyspace, table, column).await? {
                return Err(err(format!("schema: `{cql}`"), e));
            }
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| err("schema: awaiting agreement", e))?;
    }
    Ok(keyspace)
}

/// Whether `keyspace.table` has `column`, as `system_schema` says.
async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> Result<bool, EngineError> {
    let context = format!("schema: looking for {keyspace}.{table}.{column}");
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await
        .map_err(|e| err(&context, e))?
        .into_rows_result()
        .map_err(|e| err(&context, e))?;
    Ok(rows.rows_num() > 0)
}

/// A CQL identifier we interpolate into statements: letters, digits and `_`, lower-cased
/// as Cassandra folds unquoted names.
fn identifier(key: &str, name: &str) -> Result<String, EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(err(
            key,
            format!(
                "{name:?} is not a valid keyspace name (a letter, then up to 47 letters, digits or _)"
            ),
        ))
    }
}

fn create_keyspace(keyspace: &str, config: &CassandraConfig) -> Result<String, EngineError> {
    let rf = config.replication_factor;
    if rf == 0 {
        return Err(err("cassandra.replication_factor", "must be at least 1"));
    }
    let replication = match config.replication_strategy.as_str() {
        "SimpleStrategy" => format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"),
        "NetworkTopologyStrategy" => {
            let dc = config.datacenter.as_deref().ok_or_else(|| {
                err(
                    "cassandra.datacenter",
                    "NetworkTopologyStrategy needs the datacenter name",
                )
            })?;
            let dc = dc.replace('\'', "''");
            format!("{{'class': 'NetworkTopologyStrategy', '{dc}': {rf}}}")
        }
        other => {
            return Err(err(
                "cassandra.replication_strategy",
                format!("{other:?}: expected SimpleStrategy or NetworkTopologyStrategy"),
            ));
        }
    };
    Ok(format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
    ))
}

/// The options of a table whose rows expire after `ttl`: TWCS with about 24 windows over
/// the TTL (at least one hour each), so whole SSTables expire and are dropped.
fn time_series_options(ttl: Duration) -> String {
    let ttl_s = ttl.as_secs().max(1);
    let window_h = ttl_s.div_ceil(24 * 3600).max(1);
    format!(
        "compaction = {{'class': 'TimeWindowCompactionStrategy', \
         'compaction_window_unit': 'HOURS', 'compaction_window_size': {window_h}}} \
         AND default_time_to_live = {ttl_s}"
    )
}

fn create_tables(ks: &str, ttl: Duration) -> Vec<String> {
    let opts = time_series_options(ttl);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.logs (\
             bucket bigint, shard smallint, ts bigint, topic text, kpart int, koffset bigint, \
             source text, log_level text, message text, attributes text, ingest_time bigint, \
             PRIMARY KEY ((bucket, shard), ts, topic, kpart, koffset)) WITH {opts}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dead_letters (\
             bucket bigint, shard smallint, ingest_time bigint, topic text, kpart int, \
             koffset bigint, origin text, reason text, raw blob, raw_text text, \
             PRIMARY KEY ((bucket, shard), ingest_time, topic, kpart, koffset)) WITH {opts}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.buckets (\
             kind text, bucket bigint, PRIMARY KEY ((kind), bucket))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.progress (\
             consumer_group text, topic text, kpart int, next_offset bigint, epoch bigint, \
             owner text, updated_us bigint, PRIMARY KEY ((consumer_group, topic, kpart)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.tier_state (\
             name text PRIMARY KEY, version bigint, manifest text)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.tier_lease (name text PRIMARY KEY, owner text)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.progress_by_group (\
             consumer_group text, topic text, kpart int, \
             PRIMARY KEY ((consumer_group), topic, kpart))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.ingest_keys (\
             key text PRIMARY KEY, state text, owner text, answer text)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.ingest_key_starts (\
             key text PRIMARY KEY, kpart int, from_offset bigint)"
        ),
    ]
}
