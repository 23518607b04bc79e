//! The simple query protocol: one `Query` message, any number of `;`-separated statements.

use std::fmt::Debug;

use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::Statement;
use futures::Sink;
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::simplequery::Query;

use super::connection::{QueryHandler, in_failed_transaction, report_parameters};
use super::cursor::{self, CursorStatement, Piece};
use super::errors;
use super::query::{self, Prepared};
use super::statements;

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Held until the last row is sent: results stream while pgwire writes them.
        let _busy = self.activity.begin()?;
        let backend = &self.session.backend;
        backend.begin_statement(&query.query);
        // `ROLLBACK TO SAVEPOINT` ends a failed transaction's failed state. pgwire derives
        // the status from the responses and has none for that, so set it before running.
        if matches!(client.transaction_status(), TransactionStatus::Error)
            && query::parse(&self.parser, &query.query)
                .is_ok_and(|s| s.first().is_some_and(query::rolls_back_to_savepoint))
        {
            client.set_transaction_status(TransactionStatus::Transaction);
        }
        let result = self._on_query(client, query).await;
        // An error pgwire reports itself (a stream that failed half-way) still fails the
        // transaction; pgwire sets that status after this returns.
        let status = if result.is_err() {
            client.transaction_status().to_error_state()
        } else {
            client.transaction_status()
        };
        backend.end_statement(status);
        result
    }

    async fn do_query<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        tracing::debug!(peer = %client.socket_addr(), sql, "simple query");
        let stopped = self.session.backend.control.stopped();
        tokio::select! {
            result = self.run_all(client, sql) => result,
            error = stopped => Err(error),
        }
    }
}

/// One statement of a simple query.
enum Unit {
    Sql(Box<Statement>),
    Cursor(CursorStatement),
}

impl QueryHandler {
    /// Runs every statement of a simple query.
    async fn run_all<C>(&self, client: &mut C, sql: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(statement) = statements::recognise(sql) {
            return Ok(vec![
                statement?
                    .execute(&self.session, &Format::UnifiedText)
                    .await?,
            ]);
        }
        // Cursor statements are recognised in the text; the rest is parsed as usual.
        let statements: Vec<Unit> = match cursor::split(sql) {
            Some(pieces) => {
                let mut units = Vec::new();
                for piece in pieces {
                    match piece {
                        Piece::Cursor(text) => {
                            units.push(Unit::Cursor(cursor::parse(&self.parser, &text)?));
                        }
                        Piece::Sql(text) => units.extend(
                            query::parse(&self.parser, &text)?
                                .into_iter()
                                .map(|s| Unit::Sql(Box::new(s))),
                        ),
                    }
                }
                units
            }
            None => query::parse(&self.parser, sql)?
                .into_iter()
                .map(|s| Unit::Sql(Box::new(s)))
                .collect(),
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Like PostgreSQL: statements run in order and the first error ends the batch.
        let mut status = client.transaction_status();
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            match self.run(client, statement, status).await {
                Ok(response) => {
                    status = match &response {
                        Response::TransactionStart(_) => status.to_in_transaction_state(),
                        Response::TransactionEnd(_) => status.to_idle_state(),
                        _ => status,
                    };
                    responses.push(response);
                }
                Err(mut e) => {
                    errors::normalise(&mut e);
                    let info = ErrorInfo::from(e);
                    tracing::debug!(peer = %client.socket_addr(), code = %info.code, message = %info.message, "query failed");
                    responses.push(Response::Error(Box::new(info)));
                    break;
                }
            }
        }
        Ok(responses)
    }

    /// Runs one statement of a simple query, given the transaction status before it.
    async fn run<C>(
        &self,
        client: &mut C,
        unit: Unit,
        status: TransactionStatus,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let failed = matches!(status, TransactionStatus::Error);
        let statement = match unit {
            Unit::Sql(statement) => *statement,
            Unit::Cursor(statement) => {
                if failed {
                    return Err(in_failed_transaction());
                }
                let prepared = statement.prepare(&self.session).await?;
                return prepared.execute(&self.session, None, None, status).await;
            }
        };
        if failed
            && !matches!(
                statement,
                Statement::Commit { .. } | Statement::Rollback { .. }
            )
        {
            return Err(in_failed_transaction());
        }
        match query::prepare(&self.session, statement).await? {
            Prepared::Local(local) => {
                let outcome = local.execute(&self.session, status)?;
                report_parameters(client, outcome.reports).await?;
                Ok(outcome.response)
            }
            Prepared::LogSphere(statement) => {
                statement.execute(&self.session, &Format::UnifiedText).await
            }
            Prepared::Plan(planned) => {
                planned
                    .execute(&self.session, None, &Format::UnifiedText)
                    .await
            }
            Prepared::Copy(copy) => copy.execute(&self.session).await,
            Prepared::Cursor(cursor) => cursor.execute(&self.session, None, None, status).await,
        }
    }
}
