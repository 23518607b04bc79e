//! The extended query protocol: Parse plans (and checks) the statement, Describe reports
//! its parameter and result types, Bind/Execute decode the parameters and run it. Portal
//! suspension (`Execute` with a row limit, as JDBC `setFetchSize` sends) is pgwire's.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::copy::{send_copy_both_response, send_copy_in_response, send_copy_out_response};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{ExtendedQueryHandler, send_execution_response};
use pgwire::api::results::{
    DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::{NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Describe, Execute, Parse, ParseComplete, PortalSuspended,
    TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};

use super::connection::{QueryHandler, in_failed_transaction, report_parameters};
use super::cursor;
use super::errors::{sqlstate, user_error};
use super::parser::SqlParser;
use super::query::{self, PlannedQuery, Prepared};
use super::session::Session;
use super::statements;

/// Turns a Parse message's SQL into a [`Prepared`] statement for the portal store.
pub(crate) struct StatementParser {
    pub(crate) session: Arc<Session>,
    pub(crate) parser: Arc<SqlParser>,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        tracing::debug!(peer = %client.socket_addr(), sql, "parse");
        if let Some(statement) = statements::recognise(sql) {
            return Ok(Some(Prepared::LogSphere(statement?)));
        }
        if cursor::is_cursor_statement(sql) {
            let statement = cursor::parse(&self.parser, sql)?;
            return Ok(Some(Prepared::Cursor(
                statement.prepare(&self.session).await?,
            )));
        }
        let mut parsed = query::parse(&self.parser, sql)?;
        match parsed.len() {
            0 => Ok(None),
            1 => {
                let statement = parsed.remove(0);
                query::prepare(&self.session, statement).await.map(Some)
            }
            _ => Err(user_error(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            )),
        }
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match statement {
            Prepared::Plan(planned) => planned.param_wire_types(),
            Prepared::Cursor(cursor) => cursor
                .planned()
                .map(PlannedQuery::param_wire_types)
                .unwrap_or_default(),
            Prepared::Local(_) | Prepared::LogSphere(_) | Prepared::Copy(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = column_format.unwrap_or(&Format::UnifiedText);
        match statement {
            Prepared::Cursor(cursor) => cursor.result_fields(&self.session, format),
            other => other.result_fields(format),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        Arc::clone(&self.statement_parser)
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _busy = self.activity.begin()?;
        let backend = Arc::clone(&self.session.backend);
        {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            let sql = match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => self
                    .texts()
                    .statements
                    .get(&portal.statement.id)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            };
            backend.begin_statement(&sql);
        }
        // As in the simple protocol: `ROLLBACK TO SAVEPOINT` leaves a failed state.
        if matches!(client.transaction_status(), TransactionStatus::Error) {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(portal)) = client.portal_store().get_portal(name)
                && let Prepared::Local(local) = &portal.statement.statement
                && local.rolls_back_to_savepoint()
            {
                client.set_transaction_status(TransactionStatus::Transaction);
            }
        }
        let result = self.execute_portal(client, message).await;
        let status = if result.is_err() {
            client.transaction_status().to_error_state()
        } else {
            client.transaction_status()
        };
        backend.end_statement(status);
        result
    }

    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // pgwire's own on_bind, but BindComplete waits for the rest of the answer (see
        // `execute_portal`).
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(user_error(
                        "08P01",
                        format!(
                            "bind message supplies {} parameters, but prepared statement \"{statement_name}\" requires 0",
                            message.parameters.len()
                        ),
                    ));
                }
                client.portal_store().put_empty_portal(portal_name);
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client
            .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // pgwire's own on_parse, plus remembering the text.
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(&name),
        }
        client
            .feed(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        let sql = message.query;
        let mut texts = self.texts();
        // Only for display: a client that never closes its statements must not grow it forever.
        if texts.statements.len() >= 4096 {
            texts.statements.clear();
        }
        texts.statements.insert(name, sql);
        Ok(())
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // A SQL cursor is a portal too: psycopg describes it by name after DECLARE.
        if message.target_type == TARGET_TYPE_BYTE_PORTAL
            && let Some(name) = message.name.as_deref()
            && client.portal_store().get_portal(name).is_none()
            && let Ok(cursor) = self.session.cursors.get(name)
        {
            let fields = cursor.portal_fields(&self.session)?;
            feed_describe_response(client, &DescribePortalResponse::new(fields)).await?;
            return Ok(());
        }
        // pgwire's own `_on_describe`, without its flushes (see `execute_portal`).
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
                Some(Entry::Value(statement)) => {
                    let response = self.do_describe_statement(client, &statement).await?;
                    feed_describe_response(client, &response).await
                }
                Some(Entry::Empty) => {
                    feed_describe_response(client, &DescribeStatementResponse::no_data()).await
                }
                None => Err(PgWireError::StatementNotFound(name.to_owned())),
            },
            TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => {
                    let response = self.do_describe_portal(client, &portal).await?;
                    feed_describe_response(client, &response).await
                }
                Some(Entry::Empty) => {
                    feed_describe_response(client, &DescribePortalResponse::no_data()).await
                }
                None => Err(PgWireError::PortalNotFound(name.to_owned())),
            },
            other => Err(PgWireError::InvalidTargetType(other)),
        }
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stopped = self.session.backend.control.stopped();
        tokio::select! {
            result = self.run_portal(client, portal) => result,
            error = stopped => Err(error),
        }
    }
}

/// The SQL text of the connection's prepared statements, by name, for
/// `pg_stat_activity.query` (pgwire keeps only the parsed statement).
#[derive(Default)]
pub(crate) struct StatementTexts {
    statements: HashMap<String, String>,
}

impl QueryHandler {
    fn texts(&self) -> std::sync::MutexGuard<'_, StatementTexts> {
        self.texts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// pgwire's `_on_execute`, except that nothing is flushed: BindComplete, the rows and
    /// CommandComplete wait in the connection's buffer for the Sync (or Flush) that ends
    /// the client's batch, and go out in one write, as PostgreSQL sends them. pgwire
    /// flushes after BindComplete and after CommandComplete: two more writes per round
    /// trip, each waking the client to read a part of the answer. And an Execute without
    /// a row limit streams its rows to the connection as they come, rather than collecting
    /// them all in the portal first.
    async fn execute_portal<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let mut transaction_status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        let portal_name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let max_rows = usize::try_from(message.max_rows).unwrap_or(0);
        let portal = match client.portal_store().get_portal(portal_name) {
            Some(Entry::Value(portal)) => portal,
            Some(Entry::Empty) => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?;
                client.set_state(PgWireConnectionState::ReadyForQuery);
                return Ok(());
            }
            None => return Err(PgWireError::PortalNotFound(portal_name.to_owned())),
        };
        let started = !matches!(*portal.state().lock().await, PortalExecutionState::Initial);
        if started {
            send_portal_rows(client, &portal, max_rows).await?;
        } else {
            let cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
                Some(handle) => Some(handle.start_query().await),
                None => None,
            };
            let response = match cancel {
                Some(cancel) => tokio::select! {
                    result = self.do_query(client, portal.as_ref(), max_rows) => result,
                    _ = cancel => Err(PgWireError::QueryCanceled),
                },
                None => self.do_query(client, portal.as_ref(), max_rows).await,
            }?;
            match response {
                Response::Query(mut results) if max_rows == 0 => {
                    let tag = results.command_tag().to_owned();
                    let rows = feed_rows(client, &mut results).await?;
                    *portal.state().lock().await = PortalExecutionState::Finished;
                    client
                        .feed(PgWireBackendMessage::CommandComplete(
                            Tag::new(&tag).with_rows(rows).into(),
                        ))
                        .await?;
                }
                Response::Query(results) => {
                    portal.start(results).await;
                    send_portal_rows(client, &portal, max_rows).await?;
                }
                Response::EmptyQuery => {
                    client
                        .feed(PgWireBackendMessage::EmptyQueryResponse(
                            EmptyQueryResponse::new(),
                        ))
                        .await?;
                }
                Response::Execution(tag) => send_execution_response(client, tag).await?,
                Response::TransactionStart(tag) => {
                    send_execution_response(client, tag).await?;
                    transaction_status = transaction_status.to_in_transaction_state();
                }
                Response::TransactionEnd(tag) => {
                    send_execution_response(client, tag).await?;
                    transaction_status = transaction_status.to_idle_state();
                    // The unnamed portal ends with the transaction.
                    client.portal_store().rm_portal(DEFAULT_NAME);
                }
                Response::Error(err) => {
                    client
                        .feed(PgWireBackendMessage::ErrorResponse((*err).into()))
                        .await?;
                    transaction_status = transaction_status.to_error_state();
                }
                Response::CopyIn(result) => {
                    client.set_state(PgWireConnectionState::CopyInProgress(true));
                    send_copy_in_response(client, result).await?;
                }
                Response::CopyOut(result) => send_copy_out_response(client, result).await?,
                Response::CopyBoth(result) => {
                    client.set_state(PgWireConnectionState::CopyInProgress(true));
                    send_copy_both_response(client, result).await?;
                }
            }
        }
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            client.set_state(PgWireConnectionState::ReadyForQuery);
            client.set_transaction_status(transaction_status);
        }
        Ok(())
    }

    /// Runs a bound statement (see [`ExtendedQueryHandler::do_query`]).
    async fn run_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let status = client.transaction_status();
        let failed = matches!(status, TransactionStatus::Error);
        match &portal.statement.statement {
            Prepared::Local(local) => {
                if failed && !local.ends_transaction() {
                    return Err(in_failed_transaction());
                }
                let outcome = local.execute(&self.session, status)?;
                report_parameters(client, outcome.reports).await?;
                Ok(outcome.response)
            }
            Prepared::LogSphere(statement) => {
                if failed {
                    return Err(in_failed_transaction());
                }
                statement
                    .execute(&self.session, &portal.result_column_format)
                    .await
            }
            Prepared::Plan(planned) => {
                if failed {
                    return Err(in_failed_transaction());
                }
                let params = bound_parameters(portal, planned)?;
                planned
                    .execute(&self.session, params, &portal.result_column_format)
                    .await
            }
            Prepared::Copy(copy) => {
                if failed {
                    return Err(in_failed_transaction());
                }
                copy.execute(&self.session).await
            }
            Prepared::Cursor(cursor) => {
                if failed {
                    return Err(in_failed_transaction());
                }
                let params = match cursor.planned() {
                    Some(planned) => bound_parameters(portal, planned)?,
                    None => None,
                };
                cursor
                    .execute(
                        &self.session,
                        params,
                        Some(&portal.result_column_format),
                        status,
                    )
                    .await
            }
        }
    }
}

/// pgwire's `send_describe_response`, without flushing (see `QueryHandler::execute_portal`).
async fn feed_describe_response<C, D>(client: &mut C, response: &D) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    D: DescribeResponse,
{
    if let Some(types) = response.parameters() {
        client
            .feed(PgWireBackendMessage::ParameterDescription(
                ParameterDescription::new(types.iter().map(Type::oid).collect()),
            ))
            .await?;
    }
    let message = if response.is_no_data() {
        PgWireBackendMessage::NoData(NoData::new())
    } else {
        PgWireBackendMessage::RowDescription(RowDescription::new(
            response.fields().iter().map(Into::into).collect(),
        ))
    };
    client.feed(message).await?;
    Ok(())
}

/// Feeds every row of `response` as a DataRow, without flushing; how many there were.
async fn feed_rows<C>(client: &mut C, response: &mut QueryResponse) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut rows = 0;
    while let Some(row) = response.data_rows().next().await {
        client.feed(PgWireBackendMessage::DataRow(row?)).await?;
        rows += 1;
    }
    Ok(rows)
}

/// Sends at most `max_rows` (0: all) more rows of a started portal, then PortalSuspended
/// or CommandComplete, without flushing (see `QueryHandler::execute_portal`).
async fn send_portal_rows<C>(
    client: &mut C,
    portal: &Portal<Prepared>,
    max_rows: usize,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut fetched = portal.fetch(max_rows).await?;
    let tag = fetched.response.command_tag().to_owned();
    let rows = feed_rows(client, &mut fetched.response).await?;
    let end = if fetched.suspended {
        PgWireBackendMessage::PortalSuspended(PortalSuspended::new())
    } else {
        PgWireBackendMessage::CommandComplete(Tag::new(&tag).with_rows(rows).into())
    };
    client.feed(end).await?;
    Ok(())
}

/// Decodes the portal's parameters (text or binary) into the types the plan expects.
fn bound_parameters(
    portal: &Portal<Prepared>,
    planned: &PlannedQuery,
) -> PgWireResult<Option<datafusion::common::ParamValues>> {
    let expected = planned.param_types().len();
    let supplied = portal.parameter_len();
    if supplied != expected {
        return Err(user_error(
            "08P01",
            format!(
                "bind message supplies {supplied} parameters, but prepared statement requires {expected}"
            ),
        ));
    }
    if expected == 0 {
        return Ok(None);
    }
    let inferred: Vec<Option<&DataType>> =
        planned.param_types().iter().map(Option::as_ref).collect();
    let wire_types = planned.param_wire_types();
    let wire_refs: Vec<Option<&Type>> = wire_types.iter().map(Some).collect();
    let params = deserialize_parameters_with_server_types(portal, &inferred, &wire_refs).map_err(
        |e| match e {
            PgWireError::UserError(_) => e,
            other => user_error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid parameter: {other}"),
            ),
        },
    )?;
    Ok(Some(params))
}
