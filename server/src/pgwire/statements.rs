//! LogSphere's own SQL statements (continuous queries, alerts, …), recognised in the raw
//! SQL text before the PostgreSQL-dialect parser sees it: that parser rejects them.
//!
//! Both query paths go through here first: a simple query calls [`recognise`] on its whole
//! text, and an extended-protocol Parse calls it on the statement text, stores the result
//! and runs it at Execute. The statements themselves are parsed by `logsphere-sql` and run
//! against the engine's [`CqRegistry`](logsphere_engine::continuous::CqRegistry);
//! the `SHOW` statements become SELECTs over the `continuous_queries` and `alerts` system
//! tables, so they accept the same filters and encodings as any query. A malformed
//! statement is refused with `42601` and its line and column. `EXPLAIN CONTINUOUS QUERY`
//! answers one `(item, value)` row per fact; `BACKTEST` evaluates its bounds with
//! DataFusion (`SELECT <expr>`) and replays the rule over stored `logs` in the engine.

use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion::arrow::datatypes::SchemaRef;
use logsphere_engine::continuous::{
    CqError, CqRegistry, CqState, Created, alerts_schema, backtest_schema, explain_schema,
    queries_schema,
};
use logsphere_sql::{AlterAction, CqTarget, CreateContinuousQuery, ShowFilter, Statement};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};

use super::errors::{self, sqlstate, user_error};
use super::session::Session;

/// A statement only LogSphere understands, parsed from SQL text.
#[derive(Debug, Clone)]
pub(crate) enum LogSphereStatement {
    /// `CREATE [OR REPLACE] CONTINUOUS QUERY [IF NOT EXISTS] …`.
    Create(Box<CreateContinuousQuery>),
    /// `DROP CONTINUOUS QUERY [IF EXISTS] name`.
    Drop { name: String, if_exists: bool },
    /// `ALTER CONTINUOUS QUERY name PAUSE | RESUME`.
    Alter { name: String, action: AlterAction },
    /// `SHOW CREATE CONTINUOUS QUERY name`.
    ShowCreate(String),
    /// `SHOW CONTINUOUS QUERIES …` or `SHOW ALERTS …`, as a SELECT over a system table.
    Show { sql: String, schema: SchemaRef },
    /// `EXPLAIN CONTINUOUS QUERY name` or `EXPLAIN CREATE CONTINUOUS QUERY …`.
    Explain(CqTarget),
    /// `BACKTEST (CONTINUOUS QUERY name | CREATE …) FROM expr TO expr`, the bounds as SQL.
    Backtest {
        target: CqTarget,
        from: String,
        to: String,
    },
}

/// Parses `sql` as one of LogSphere's own statements; `None` means it is ordinary SQL for
/// DataFusion.
pub(crate) fn recognise(sql: &str) -> Option<PgWireResult<LogSphereStatement>> {
    if !logsphere_sql::is_logsphere_statement(sql) {
        return None;
    }
    Some(match logsphere_sql::parse_statements(sql) {
        Err(e) => Err(user_error(SYNTAX_ERROR, e.to_string())),
        Ok(mut statements) if statements.len() == 1 => convert(statements.remove(0)),
        Ok(_) => Err(user_error(
            FEATURE_NOT_SUPPORTED,
            "send continuous-query statements one at a time, not together with other statements",
        )),
    })
}

fn convert(statement: Statement) -> PgWireResult<LogSphereStatement> {
    use logsphere_sql::Statement as S;
    Ok(match statement {
        S::CreateContinuousQuery(cq) => LogSphereStatement::Create(cq),
        S::DropContinuousQuery { name, if_exists } => LogSphereStatement::Drop {
            name: name.to_string(),
            if_exists,
        },
        S::AlterContinuousQuery { name, action } => LogSphereStatement::Alter {
            name: name.to_string(),
            action,
        },
        S::ShowCreateContinuousQuery { name } => LogSphereStatement::ShowCreate(name.to_string()),
        S::ShowContinuousQueries { filter } => {
            let filter = match filter {
                None => String::new(),
                Some(ShowFilter::Like(pattern)) => format!(" WHERE name LIKE {}", quote(&pattern)),
                Some(ShowFilter::Where(expr)) => format!(" WHERE {expr}"),
            };
            LogSphereStatement::Show {
                sql: format!("SELECT * FROM continuous_queries{filter} ORDER BY name"),
                schema: queries_schema(),
            }
        }
        S::ShowAlerts { cq, filter } => {
            let mut conditions = Vec::new();
            if let Some(cq) = cq {
                conditions.push(format!("cq_name = {}", quote(&cq.to_string())));
            }
            if let Some(expr) = filter {
                conditions.push(format!("({expr})"));
            }
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            };
            LogSphereStatement::Show {
                sql: format!("SELECT * FROM alerts{filter} ORDER BY cq_name, fired_at, alert_id"),
                schema: alerts_schema(),
            }
        }
        S::ExplainContinuousQuery(target) => LogSphereStatement::Explain(target),
        S::Backtest { target, from, to } => LogSphereStatement::Backtest {
            target,
            from: from.to_string(),
            to: to.to_string(),
        },
        S::DataFusion(_) => {
            return Err(user_error(
                FEATURE_NOT_SUPPORTED,
                "send continuous-query statements one at a time, not together with other statements",
            ));
        }
    })
}

/// A SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

const SYNTAX_ERROR: &str = "42601";
const FEATURE_NOT_SUPPORTED: &str = "0A000";
const DUPLICATE_OBJECT: &str = "42710";
const INVALID_OBJECT_DEFINITION: &str = "42P17";
const INVALID_PARAMETER_VALUE: &str = "22023";
const DUPLICATE_TABLE: &str = "42P07";
const SERIALIZATION_FAILURE: &str = "40001";

/// The SQLSTATE a client can branch on for each continuous-query error.
fn cq_error(e: &CqError) -> PgWireError {
    let code = match e {
        CqError::AlreadyExists(_) => DUPLICATE_OBJECT,
        CqError::NotFound(_) => sqlstate::UNDEFINED_OBJECT,
        CqError::Unsupported { .. } => FEATURE_NOT_SUPPORTED,
        CqError::Notify { .. } => INVALID_PARAMETER_VALUE,
        CqError::DataFusion(df) => {
            let info = errors::error_info(df);
            return user_error(
                if info.code == sqlstate::INTERNAL_ERROR {
                    INVALID_OBJECT_DEFINITION
                } else {
                    info.code.as_str()
                },
                format!("invalid continuous query: {}", info.message),
            );
        }
        CqError::Arrow(_) | CqError::Input(_) => INVALID_OBJECT_DEFINITION,
        CqError::Table(_) => INVALID_OBJECT_DEFINITION,
        CqError::TableExists(_) => DUPLICATE_TABLE,
        CqError::Checkpoint(_) | CqError::Storage(_) => sqlstate::INTERNAL_ERROR,
        // Cassandra unreachable, or a concurrent change on another node: try again.
        CqError::Cluster(_) => SERIALIZATION_FAILURE,
    };
    user_error(code, e.to_string())
}

impl LogSphereStatement {
    /// The columns the statement returns (for Describe); empty for a command.
    pub(crate) fn result_fields(&self, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        match self {
            LogSphereStatement::Show { schema, .. } => {
                arrow_schema_to_pg_fields(schema, format, None)
            }
            LogSphereStatement::ShowCreate(_) => Ok(show_create_fields(format)),
            LogSphereStatement::Explain(_) => {
                arrow_schema_to_pg_fields(&explain_schema(), format, None)
            }
            LogSphereStatement::Backtest { .. } => {
                arrow_schema_to_pg_fields(&backtest_schema(), format, None)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Runs the statement in `session`, encoding rows in `format`.
    pub(crate) async fn execute(
        &self,
        session: &Arc<Session>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let queries = session.engine.continuous();
        match self {
            LogSphereStatement::Create(cq) => {
                match session
                    .engine
                    .create_continuous_query(cq)
                    .await
                    .map_err(|e| cq_error(&e))?
                {
                    Created::New | Created::Replaced => {}
                    Created::Exists => tracing::info!(
                        cq = %cq.name,
                        "continuous query exists; IF NOT EXISTS leaves it unchanged"
                    ),
                }
                Ok(Response::Execution(Tag::new("CREATE CONTINUOUS QUERY")))
            }
            LogSphereStatement::Drop { name, if_exists } => {
                session
                    .engine
                    .drop_continuous_query(name, *if_exists)
                    .await
                    .map_err(|e| cq_error(&e))?;
                Ok(Response::Execution(Tag::new("DROP CONTINUOUS QUERY")))
            }
            LogSphereStatement::Alter { name, action } => {
                let state = match action {
                    AlterAction::Pause => CqState::Paused,
                    AlterAction::Resume => CqState::Running,
                };
                session
                    .engine
                    .alter_continuous_query(name, state)
                    .await
                    .map_err(|e| cq_error(&e))?;
                Ok(Response::Execution(Tag::new("ALTER CONTINUOUS QUERY")))
            }
            LogSphereStatement::ShowCreate(name) => {
                let text = queries.sql_text(name).map_err(|e| cq_error(&e))?;
                let fields = Arc::new(show_create_fields(format));
                let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
                encoder.encode_field(&Some(name.clone()))?;
                encoder.encode_field(&Some(text))?;
                let row = encoder.take_row();
                let mut response = QueryResponse::new(fields, futures::stream::iter(vec![Ok(row)]));
                response.set_command_tag("SHOW");
                Ok(Response::Query(response))
            }
            LogSphereStatement::Show { sql, .. } => {
                session.engine.note_query();
                let df = session
                    .ctx
                    .sql(sql)
                    .await
                    .map_err(|e| errors::datafusion_error(&e))?;
                super::rows::encode_rows(session, df, format, "SHOW").await
            }
            LogSphereStatement::Explain(target) => {
                let (cq, _) = resolve(queries, target)?;
                let rows = logsphere_engine::continuous::explain(&cq)
                    .await
                    .map_err(|e| cq_error(&e))?;
                let batch = datafusion::arrow::array::RecordBatch::try_new(
                    explain_schema(),
                    vec![
                        Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
                            rows.iter().map(|r| r.0.as_str()),
                        )),
                        Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
                            rows.iter().map(|r| r.1.as_str()),
                        )),
                    ],
                )
                .map_err(|e| user_error(sqlstate::INTERNAL_ERROR, e.to_string()))?;
                let df = session
                    .ctx
                    .read_batch(batch)
                    .map_err(|e| errors::datafusion_error(&e))?;
                super::rows::encode_rows(session, df, format, "EXPLAIN").await
            }
            LogSphereStatement::Backtest { target, from, to } => {
                let (cq, version) = resolve(queries, target)?;
                session.engine.note_query();
                let from_us = timestamp_us(session, from).await?;
                let to_us = timestamp_us(session, to).await?;
                let ctx = session.engine.session_context();
                let batch =
                    logsphere_engine::continuous::backtest(&cq, version, &ctx, from_us, to_us)
                        .await
                        .map_err(|e| cq_error(&e))?;
                let df = session
                    .ctx
                    .read_batch(batch)
                    .map_err(|e| errors::datafusion_error(&e))?;
                super::rows::encode_rows(session, df, format, "BACKTEST").await
            }
        }
    }
}

/// The definition a BACKTEST or EXPLAIN is about, and its version (1 for an inline one).
fn resolve(queries: &CqRegistry, target: &CqTarget) -> PgWireResult<(CreateContinuousQuery, u64)> {
    match target {
        CqTarget::Name(name) => queries
            .definition(&name.to_string())
            .map_err(|e| cq_error(&e)),
        CqTarget::Create(cq) => Ok(((**cq).clone(), 1)),
    }
}

/// Evaluates a BACKTEST bound (`TIMESTAMP '…'`, `'2026-11-24T10:00:00Z'`,
/// `now() - INTERVAL '1 hour'`) with DataFusion, as µs since the epoch.
async fn timestamp_us(session: &Session, expr: &str) -> PgWireResult<i64> {
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    let df = session
        .ctx
        .sql(&format!("SELECT to_timestamp_micros({expr})"))
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let value = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| {
            // Keep a timestamptz's zone (now() has the session's): dropping it would shift
            // the instant to local wall-clock time.
            let zone = match b.column(0).data_type() {
                DataType::Timestamp(_, zone) => zone.clone(),
                _ => None,
            };
            let c = datafusion::arrow::compute::cast(
                b.column(0),
                &DataType::Timestamp(TimeUnit::Microsecond, zone),
            )?;
            let c = datafusion::arrow::compute::cast(&c, &DataType::Int64)?;
            let c = c.as_any().downcast_ref::<Int64Array>().cloned();
            Ok::<_, datafusion::arrow::error::ArrowError>(
                c.filter(|c| !c.is_null(0)).map(|c| c.value(0)),
            )
        })
        .transpose()
        .map_err(|e| user_error(sqlstate::INTERNAL_ERROR, e.to_string()))?
        .flatten();
    value.ok_or_else(|| {
        user_error(
            "22007",
            format!("BACKTEST bound `{expr}` is not a timestamp"),
        )
    })
}

fn show_create_fields(format: &Format) -> Vec<FieldInfo> {
    ["name", "create_statement"]
        .into_iter()
        .enumerate()
        .map(|(i, n)| FieldInfo::new(n.to_owned(), None, None, Type::TEXT, format.format_for(i)))
        .collect()
}
