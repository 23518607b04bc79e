//! The PostgreSQL wire protocol front end: pgwire for the protocol, arrow-pg for encoding
//! Arrow results, datafusion-pg-catalog for `pg_catalog` and PostgreSQL-dialect rewrites.
//!
//! Every connection gets its own DataFusion session from [`Engine::session_context`] and its
//! own run-time parameters; the server's data is read-only over SQL (writes come in over
//! HTTP and Kafka). Module map:
//!
//! - `connection`: the per-connection handlers and session set-up;
//! - `auth`: startup, SCRAM-SHA-256, the ParameterStatus sent after login;
//! - `simple` / `extended`: the two query protocols, as thin adapters over `query`;
//! - `copy`: `COPY … TO STDOUT` in text and CSV;
//! - `cursor`: `DECLARE … CURSOR`, `FETCH`, `MOVE`, `CLOSE`;
//! - `backend`: the live connections, CancelRequest and `statement_timeout`;
//! - `activity`: `pg_stat_activity`, `pg_cursors`, `pg_backend_pid()`, `pg_cancel_backend()`;
//! - `query`: parse, local statements (SET, SHOW, BEGIN, …), read-only planning, execution;
//! - `rows`: Arrow results as RowDescription and DataRows;
//! - `session`: run-time parameters and per-session DataFusion options;
//! - `catalog`: `pg_catalog` and the PostgreSQL functions clients expect;
//! - `pg_compat`: catalog tables, functions and SQL rewrites BI tools and drivers need;
//! - `unknown_literals`: quoted literals typed by their context (`indisprimary = 'f'`);
//! - `column_names`: output column names as PostgreSQL gives them (`count`, `?column?`);
//! - `statements`: the entry point for LogSphere's own statements;
//! - `errors`: SQLSTATE mapping;
//! - `executor`: queries run on their own runtime, so a CPU-bound one cannot starve the
//!   connections, ingest, cancels and timeouts;
//! - `tls`: the TLS acceptor from `[pg] tls_cert` / `tls_key`.

mod activity;
mod auth;
mod backend;
mod catalog;
mod column_names;
mod connection;
mod copy;
mod cursor;
mod errors;
mod executor;
mod extended;
mod info_schema;
mod parser;
mod pg_compat;
mod projection_subqueries;
mod query;
mod rows;
mod session;
mod simple;
mod statements;
mod subquery_fold;
mod tls;
mod unknown_literals;

pub use tls::{PgTls, acceptor as tls_acceptor};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use logsphere_engine::Engine;
use pgwire::api::RandomPidSecretKeyGenerator;
use pgwire::error::PgWireResult;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use self::auth::{Credentials, StartupContext};
use self::catalog::PgCatalog;
use self::connection::ConnectionHandlers;
use self::parser::SqlParser;
use crate::config::PgUser;

/// How long shutdown waits for running queries before closing their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection counts for `/metrics`.
#[derive(Debug, Default)]
pub struct PgStats {
    /// Connections being served.
    pub open: std::sync::atomic::AtomicU64,
    /// Connections refused with 53300 (`pg.max_connections`).
    pub refused: std::sync::atomic::AtomicU64,
}

/// What all connections share.
pub(crate) struct ServerState {
    engine: Arc<Engine>,
    catalog: PgCatalog,
    parser: Arc<SqlParser>,
    startup: StartupContext,
    activity: Arc<Activity>,
    backends: Arc<backend::Backends>,
    /// Every session's initial `statement_timeout` (`pg.statement_timeout_ms`).
    statement_timeout: String,
    /// `pg.scroll_cursor_memory_mb`.
    scroll_cursor_memory_mb: u64,
}

/// Limits every connection gets (from `[pg]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `pg.max_connections`.
    pub max_connections: usize,
    /// `pg.statement_timeout_ms`: the sessions' default `statement_timeout` (0: none).
    pub statement_timeout_ms: u64,
    /// `pg.scroll_cursor_memory_mb`: the most one `SCROLL` cursor keeps.
    pub scroll_cursor_memory_mb: u64,
    /// `pg.query_nice`: the query threads' scheduling priority.
    pub query_nice: i32,
}

/// Refuses a connection over `pg.max_connections` as PostgreSQL does: a FATAL
/// ErrorResponse with SQLSTATE 53300 in answer to the startup message, then close.
async fn too_many_clients(mut socket: tokio::net::TcpStream, max_connections: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let message =
        format!("sorry, too many clients already (pg.max_connections = {max_connections})");
    let mut fields = Vec::new();
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', errors::sqlstate::TOO_MANY_CONNECTIONS),
        (b'M', message.as_str()),
    ] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut frame = vec![b'E'];
    frame.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
    frame.extend_from_slice(&fields);
    // Like the postmaster: decline SSL / GSS encryption requests ('N'), read the startup
    // message, then answer it with the error (libpq shows an error sent in answer to an
    // SSLRequest only as "error response during SSL exchange").
    let exchange = async {
        loop {
            let mut head = [0u8; 8];
            socket.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            const SSL_REQUEST: u32 = 80_877_103;
            const GSSENC_REQUEST: u32 = 80_877_104;
            if len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST) {
                socket.write_all(b"N").await?;
                continue;
            }
            // The rest of the startup message (parameters), bounded like any startup.
            let mut rest = vec![0u8; len.saturating_sub(8).min(10_000)];
            socket.read_exact(&mut rest).await?;
            return socket.write_all(&frame).await;
        }
    };
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), exchange).await {
        let _ = socket.shutdown().await;
        // Give the client a moment to read the answer before the socket closes.
        let mut rest = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut rest)).await;
    }
}

/// Accepts PostgreSQL connections until `shutdown` turns true, then lets running queries
/// finish (up to [`DRAIN_TIMEOUT`]) and closes every connection.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    users: Vec<PgUser>,
    tls: Option<PgTls>,
    limits: Limits,
    stats: Arc<PgStats>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    executor::set_query_nice(limits.query_nice);
    let role_names = if users.is_empty() {
        vec!["logsphere".to_owned()]
    } else {
        users.iter().map(|u| u.name.clone()).collect()
    };
    let catalog = PgCatalog::load(role_names).context("cannot load the pg_catalog tables")?;
    let credentials = if users.is_empty() {
        None
    } else {
        // PBKDF2 per user: CPU-bound, keep it off the async workers.
        let credentials = tokio::task::spawn_blocking(move || Credentials::new(&users))
            .await
            .context("deriving SCRAM secrets")?;
        Some(Arc::new(credentials))
    };
    let state = Arc::new(ServerState {
        engine,
        catalog,
        parser: Arc::new(SqlParser::new()),
        startup: StartupContext {
            credentials,
            channel_binding: tls
                .as_ref()
                .and_then(|t| auth::channel_binding_cert(&t.cert_pem)),
            pids: Arc::new(RandomPidSecretKeyGenerator::default()),
        },
        activity: Arc::new(Activity::new()),
        backends: Arc::new(backend::Backends::default()),
        statement_timeout: limits.statement_timeout_ms.to_string(),
        scroll_cursor_memory_mb: limits.scroll_cursor_memory_mb,
    });
    let max_connections = limits.max_connections;
    let local = listener.local_addr().ok();
    if tls.is_none() && local.is_some_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            listen = ?local,
            "pg listens on a non-loopback address without TLS: passwords and query results \
             cross the network in the clear; set pg.tls_cert and pg.tls_key"
        );
    }
    tracing::info!(
        listen = ?local,
        tls = tls.is_some(),
        channel_binding = state.startup.channel_binding.is_some(),
        auth = if state.startup.credentials.is_some() { "scram-sha-256" } else { "trust" },
        setup_ms = started.elapsed().as_millis() as u64,
        "pg listener ready"
    );

    let mut connections = JoinSet::new();
    while !*shutdown.borrow() {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) if connections.len() >= max_connections => {
                    tracing::warn!(%peer, max_connections, "pg connection refused: too many clients");
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(too_many_clients(socket, max_connections));
                }
                Ok((socket, peer)) => {
                    let state = Arc::clone(&state);
                    let tls = tls.as_ref().map(|t| t.acceptor.clone());
                    let span = tracing::info_span!("pg", %peer);
                    connections.spawn(
                        async move {
                            let handlers = match ConnectionHandlers::new(&state, peer) {
                                Ok(h) => h,
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot set up a session");
                                    return;
                                }
                            };
                            tracing::debug!("pg connection opened");
                            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                                tracing::debug!(error = %e, "pg connection ended with an I/O error");
                            }
                            tracing::debug!("pg connection closed");
                        }
                        .instrument(span),
                    );
                    stats.open.store(connections.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "cannot accept a pg connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                stats.open.store(connections.len() as u64, Ordering::Relaxed);
                if let Err(e) = finished
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a pg connection task panicked");
                }
            }
        }
    }

    drop(listener);
    state.activity.draining.store(true, Ordering::SeqCst);
    let mut busy = state.activity.busy.subscribe();
    let in_flight = *busy.borrow();
    tracing::info!(
        connections = connections.len(),
        in_flight,
        "pg listener closed; draining"
    );
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, busy.wait_for(|n| *n == 0))
        .await
        .is_ok();
    if !drained {
        tracing::warn!(
            in_flight = *state.activity.busy.borrow(),
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "queries still running at the drain deadline; closing their connections"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    tracing::info!("pg listener stopped");
    Ok(())
}

/// Counts running queries, so shutdown can wait for them, and refuses new ones once
/// shutdown has begun.
pub(crate) struct Activity {
    busy: watch::Sender<usize>,
    draining: AtomicBool,
}

/// One running query; dropping it marks the query finished.
pub(crate) struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Self {
            busy: watch::Sender::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Marks a query as running, unless the server is shutting down.
    pub(crate) fn begin(&self) -> PgWireResult<Busy<'_>> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(connection::shutting_down());
        }
        self.busy.send_modify(|n| *n += 1);
        Ok(Busy(self))
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.send_modify(|n| *n = n.saturating_sub(1));
    }
}
