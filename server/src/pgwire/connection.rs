//! One client connection: its session, and the pgwire handlers bound to it.
//!
//! pgwire asks a [`PgWireServerHandlers`] for its handlers once per socket, so building one
//! [`ConnectionHandlers`] per accepted connection gives every connection its own
//! `SessionContext`, run-time parameters and SCRAM state without any lookup by client.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{Sink, SinkExt};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::startup::ParameterStatus;

use super::auth::Authenticator;
use super::backend::{Backend, Backends, CancelRequests};
use super::cursor::Cursors;
use super::errors::{self, sqlstate};
use super::extended::StatementParser;
use super::parser::SqlParser;
use super::session::{Session, SessionVars};
use super::{Activity, ServerState};

/// The catalog every connection's tables live in (what `current_database()` reports).
pub(crate) const CATALOG: &str = "logsphere";

/// Runs the queries of one connection, over both protocols.
pub(crate) struct QueryHandler {
    pub(crate) session: Arc<Session>,
    pub(crate) parser: Arc<SqlParser>,
    pub(crate) statement_parser: Arc<StatementParser>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) texts: Mutex<super::extended::StatementTexts>,
}

/// Everything pgwire needs to serve one connection.
pub(crate) struct ConnectionHandlers {
    queries: Arc<QueryHandler>,
    authenticator: Arc<Authenticator>,
    errors: Arc<ErrorReporter>,
    cancel: Arc<CancelRequests>,
    backend: Arc<Backend>,
    backends: Arc<Backends>,
}

impl Drop for ConnectionHandlers {
    /// The connection is gone: it leaves `pg_stat_activity` and can no longer be cancelled.
    fn drop(&mut self) {
        self.backends.remove(&self.backend);
    }
}

impl ConnectionHandlers {
    /// A fresh session for a client connecting from `peer`.
    pub(crate) fn new(server: &ServerState, peer: SocketAddr) -> anyhow::Result<Self> {
        let ctx = server.engine.session_context();
        let vars = SessionVars::new("")
            .with_default("statement_timeout", &server.statement_timeout)
            .map_err(|e| anyhow::anyhow!("pg.statement_timeout_ms: {e}"))?;
        let vars = Arc::new(Mutex::new(vars));
        server
            .catalog
            .install(&ctx, CATALOG, Arc::clone(&vars))
            .map_err(|e| anyhow::anyhow!("cannot set up pg_catalog for a connection: {e}"))?;
        let backend = Arc::new(Backend::new(peer, Arc::clone(&vars)));
        let cursors = Arc::new(Cursors::new(server.scroll_cursor_memory_mb));
        super::activity::install(&ctx, CATALOG, &backend, &server.backends, &cursors, &vars)
            .map_err(|e| anyhow::anyhow!("cannot set up pg_stat_activity for a connection: {e}"))?;
        let session = Arc::new(Session {
            ctx,
            vars: Arc::clone(&vars),
            engine: Arc::clone(&server.engine),
            cursors,
            backend: Arc::clone(&backend),
            planning: Default::default(),
        });
        let statement_parser = Arc::new(StatementParser {
            session: Arc::clone(&session),
            parser: Arc::clone(&server.parser),
        });
        let queries = Arc::new(QueryHandler {
            session,
            parser: Arc::clone(&server.parser),
            statement_parser,
            activity: Arc::clone(&server.activity),
            texts: Mutex::default(),
        });
        Ok(Self {
            queries,
            authenticator: Arc::new(Authenticator::new(
                &server.startup,
                vars,
                Arc::clone(&backend),
                Arc::clone(&server.backends),
            )),
            errors: Arc::new(ErrorReporter { peer }),
            cancel: Arc::new(CancelRequests(Arc::clone(&server.backends))),
            backend,
            backends: Arc::clone(&server.backends),
        })
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.authenticator)
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::clone(&self.errors)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// Gives every error that reaches pgwire its SQLSTATE, and logs it.
pub(crate) struct ErrorReporter {
    peer: SocketAddr,
}

impl ErrorHandler for ErrorReporter {
    fn on_error<C>(&self, client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .map(String::as_str)
            .unwrap_or("");
        if let PgWireError::InvalidPassword(_) = error {
            tracing::warn!(peer = %self.peer, user, "pg authentication failed");
            // SCRAM clients leave the user out of their first message; name the login user.
            *error = PgWireError::InvalidPassword(user.to_owned());
            return;
        }
        errors::normalise(error);
        tracing::debug!(peer = %self.peer, user, error = %error, "pg error sent to client");
    }
}

/// The error for a statement sent after an earlier one failed inside BEGIN … COMMIT.
pub(crate) fn in_failed_transaction() -> PgWireError {
    errors::user_error(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// The error that ends a connection while the server shuts down.
pub(crate) fn shutting_down() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        sqlstate::ADMIN_SHUTDOWN.to_owned(),
        "terminating connection: LogSphere is shutting down".to_owned(),
    )))
}

/// Tells the client about changed run-time parameters (it tracks DateStyle, TimeZone, …).
pub(crate) async fn report_parameters<C>(
    client: &mut C,
    reports: Vec<(String, String)>,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for (name, value) in reports {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                name, value,
            )))
            .await?;
    }
    Ok(())
}
