//! From SQL text to a [`Response`]: parse, answer session statements locally, plan the rest
//! with DataFusion under read-only rules, bind parameters, execute and encode.
//!
//! The simple and the extended protocol share all of it; `simple.rs` and `extended.rs`
//! only adapt it to pgwire's handler traits.

use std::sync::Arc;

use arrow_pg::datatypes::into_pg_type;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionState;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan, Volatility};
use datafusion::optimizer::OptimizerRule;
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    self, DiscardObject, Reset, Set, Statement, TransactionMode,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::response::TransactionStatus;

use super::column_names;
use super::copy::{self, CopyOut};
use super::cursor::PreparedCursor;
use super::errors::{self, sqlstate, user_error};
use super::executor::Execution;
use super::parser::SqlParser;
use super::projection_subqueries;
use super::rows::{encode_named_rows, pg_fields};
use super::session::{Session, lock};
use super::statements::LogSphereStatement;
use super::subquery_fold;

/// A statement ready to run: what an extended-protocol Parse stores, and what each part of
/// a simple query becomes.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    /// Answered by the connection itself (SET, SHOW, BEGIN, …).
    Local(Local),
    /// One of LogSphere's own statements.
    LogSphere(LogSphereStatement),
    /// A DataFusion plan, possibly with `$n` placeholders.
    Plan(PlannedQuery),
    /// `COPY … TO STDOUT` of a planned query.
    Copy(CopyOut),
    /// `DECLARE`, `FETCH`, `MOVE`, `CLOSE`.
    Cursor(PreparedCursor),
}

/// A planned query and the types of its `$1..$n` parameters.
#[derive(Debug, Clone)]
pub(crate) struct PlannedQuery {
    plan: LogicalPlan,
    /// The statement planned, to plan again under another `TimeZone`.
    statement: Statement,
    /// The session's `TimeZone` when planned: `now()`, `to_char`, `to_timestamp` and casts to
    /// `timestamptz` are planned in it.
    time_zone: Option<String>,
    /// Arrow type of `$i` at index `i - 1`; `None` when the plan does not pin it down.
    param_types: Vec<Option<DataType>>,
    /// The command tag (`SELECT`, `EXPLAIN`, `SHOW`).
    tag: &'static str,
    /// PostgreSQL's name for each output column where it differs from DataFusion's (see
    /// [`column_names`]); empty when every name is DataFusion's.
    names: Vec<Option<String>>,
    /// The planning done once at Parse and reused by every Execute, when the plan allows it.
    reusable: Option<Arc<Reusable>>,
}

/// What Parse plans once so that Execute does not plan again (issue: a prepared statement
/// was planned on every Execute, and a small query's round trip was mostly planning).
///
/// Each Execute of a prepared statement used to copy the session state, analyze and
/// optimize the plan (some forty rules), plan it physically and optimize that, then run it.
/// The logical part depends only on the statement and the session's options, so it is done
/// here once: Execute binds the parameters into the optimized plan and plans it physically
/// (the tables must be read as they are at that moment, so the scans are planned then). A
/// plan that reads no table and has no parameters is kept physically planned, too, and run
/// again as it is.
///
/// Not reused (planned at every Execute as before): a plan with a function that is not
/// immutable (`now()` and `current_setting()` are folded into constants by the optimizer,
/// so the optimized plan would keep the first Execute's values), a plan with a subquery to
/// fold at each Execute ([`subquery_fold`]), `EXPLAIN` and `SHOW`, and a statement whose
/// session options changed since Parse (`SET datafusion.…`, `SET TIME ZONE`).
#[derive(Debug)]
struct Reusable {
    /// The session's options generation the plan was optimized under.
    generation: u64,
    /// The analyzed and optimized plan, its `$n` placeholders still in it.
    optimized: LogicalPlan,
    /// For a plan that reads no table and has no parameters: its physical plan.
    constant: Option<Arc<dyn ExecutionPlan>>,
}

/// A session statement and what it does.
#[derive(Debug, Clone)]
pub(crate) enum Local {
    /// `SET name = value`, `SET TIME ZONE`, `SET NAMES`; `None` means `DEFAULT`.
    Set(Vec<(String, Option<String>)>),
    /// `SHOW name` / `SHOW ALL`.
    Show(String),
    /// `RESET name` (`None`: `RESET ALL`).
    Reset(Option<String>),
    /// `DISCARD ALL`: parameters back to their startup values.
    DiscardAll,
    Begin,
    Commit,
    Rollback,
    /// Accepted and ignored (nothing to do in a read-only, non-transactional server);
    /// answered with this command tag.
    Ack(&'static str),
    /// `SAVEPOINT`, `RELEASE`, `ROLLBACK TO` (the command tag): no-ops, but only inside a
    /// transaction block, as in PostgreSQL.
    Savepoint(&'static str),
}

/// What running a statement produced: the response, and parameters that changed and must
/// be reported to the client with ParameterStatus.
pub(crate) struct Outcome {
    pub(crate) response: Response,
    pub(crate) reports: Vec<(String, String)>,
}

impl From<Response> for Outcome {
    fn from(response: Response) -> Self {
        Self {
            response,
            reports: Vec::new(),
        }
    }
}

/// Parses SQL with PostgreSQL-compatibility rewrites (psql `\d`, `OPERATOR(pg_catalog.~)`,
/// `::regclass`, …; see [`SqlParser`]). An empty or comment-only text gives no statements.
pub(crate) fn parse(parser: &SqlParser, sql: &str) -> PgWireResult<Vec<Statement>> {
    match parser.parse(sql) {
        Ok(mut statements) => {
            for statement in &mut statements {
                super::pg_compat::rewrite(statement);
                super::info_schema::rewrite(statement);
                super::activity::qualify_views(statement);
            }
            Ok(statements)
        }
        Err(err) => {
            // DataFusion's own statements are not PostgreSQL syntax; name the refused ones
            // rather than calling them syntax errors.
            if let Ok(df_statements) = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
            {
                for s in &df_statements {
                    match s {
                        DFStatement::CreateExternalTable(_) => {
                            return Err(errors::read_only("CREATE EXTERNAL TABLE"));
                        }
                        DFStatement::CopyTo(_) => return Err(errors::read_only("COPY … TO")),
                        _ => {}
                    }
                }
            }
            Err(errors::syntax_error(&err, sql))
        }
    }
}

/// Turns one parsed statement into something runnable: a local answer, or a read-only
/// DataFusion plan.
pub(crate) async fn prepare(session: &Session, statement: Statement) -> PgWireResult<Prepared> {
    if let Some(local) = classify_local(&statement)? {
        return Ok(Prepared::Local(local));
    }
    if let Some(copy) = copy::classify(&statement) {
        let (query, format) = copy?;
        let planned = plan(session, query).await?;
        return Ok(Prepared::Copy(CopyOut::new(planned, format)));
    }
    Ok(Prepared::Plan(plan(session, statement).await?))
}

/// Plans a query under the read-only rules.
pub(crate) async fn plan(session: &Session, statement: Statement) -> PgWireResult<PlannedQuery> {
    refuse_writes(&statement)?;
    session.sync_time_zone();
    let time_zone = session.time_zone();
    let tag = match &statement {
        Statement::Explain { .. } | Statement::ExplainTable { .. } => "EXPLAIN",
        Statement::ShowTables { .. } | Statement::ShowColumns { .. } => "SHOW",
        _ => "SELECT",
    };
    let query = matches!(statement, Statement::Query(_)).then(|| statement.clone());
    let planning = session.planning();
    let state = planning.state.as_ref();
    let plan = state
        .statement_to_plan(DFStatement::Statement(Box::new(statement.clone())))
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let plan = projection_subqueries::settle(state, &statement, plan).await?;
    check_read_only(&plan)?;
    let param_types = parameter_types(&plan)?;
    let names = query
        .and_then(|q| column_names::output_names(&q, plan.schema().fields().len()))
        .unwrap_or_default();
    let reusable = if tag == "SELECT" {
        reusable(session, &plan, param_types.is_empty()).await
    } else {
        None
    };
    Ok(PlannedQuery {
        plan,
        statement,
        time_zone,
        param_types,
        tag,
        names,
        reusable,
    })
}

/// The planning of `plan` that every Execute can reuse (see [`Reusable`]), when it can.
async fn reusable(session: &Session, plan: &LogicalPlan, no_params: bool) -> Option<Arc<Reusable>> {
    if !plan_is_reusable(plan) {
        return None;
    }
    let planning = session.planning();
    // A plan the optimizer cannot take with its placeholders still in is planned at each
    // Execute, as before.
    let optimized = planning.state.optimize(plan).ok()?;
    let constant = if no_params && !reads_tables(&optimized) {
        planning
            .state
            .query_planner()
            .create_physical_plan(&optimized, planning.state.as_ref())
            .await
            .ok()
    } else {
        None
    };
    Some(Arc::new(Reusable {
        generation: planning.generation,
        optimized,
        constant,
    }))
}

/// Whether the optimized form of `plan` can serve every Execute: every function in it is
/// immutable, and no subquery in it is folded at Execute.
fn plan_is_reusable(plan: &LogicalPlan) -> bool {
    if subquery_fold::has_subquery_predicate(plan) {
        return false;
    }
    let mut reusable = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let immutable = match e {
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility == Volatility::Immutable
                    }
                    Expr::ScalarVariable(..) => false,
                    _ => true,
                };
                if immutable {
                    Ok(TreeNodeRecursion::Continue)
                } else {
                    reusable = false;
                    Ok(TreeNodeRecursion::Stop)
                }
            })
        })
    });
    reusable
}

/// Whether `plan` scans any table (a table function's too).
fn reads_tables(plan: &LogicalPlan) -> bool {
    let mut reads = false;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::TableScan(_)) {
            reads = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    reads
}

/// `ROLLBACK TO [SAVEPOINT] x`: in a failed transaction, it makes the transaction usable again.
pub(crate) fn rolls_back_to_savepoint(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Rollback {
            savepoint: Some(_),
            ..
        }
    )
}

/// Statements the connection answers itself, without DataFusion.
fn classify_local(statement: &Statement) -> PgWireResult<Option<Local>> {
    let local = match statement {
        Statement::Set(set) => classify_set(set)?,
        Statement::ShowVariable { variable } => Local::Show(show_name(variable)),
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => Local::Reset(None),
            Reset::ConfigurationParameter(name) => {
                Local::Reset(Some(name.to_string().to_ascii_lowercase()))
            }
        },
        Statement::StartTransaction { modes, .. } => {
            refuse_read_write(modes)?;
            Local::Begin
        }
        Statement::Commit { .. } => Local::Commit,
        Statement::Rollback {
            savepoint: None, ..
        } => Local::Rollback,
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Local::Savepoint("ROLLBACK"),
        Statement::Savepoint { .. } => Local::Savepoint("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Local::Savepoint("RELEASE"),
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => Local::DiscardAll,
        Statement::Discard { .. } => Local::Ack("DISCARD"),
        Statement::Deallocate { .. } => Local::Ack("DEALLOCATE"),
        Statement::UNLISTEN { .. } => Local::Ack("UNLISTEN"),
        Statement::LISTEN { .. } => Local::Ack("LISTEN"),
        _ => return Ok(None),
    };
    Ok(Some(local))
}

/// `SHOW TRANSACTION ISOLATION LEVEL` and `SHOW TIME ZONE` are multi-word spellings.
fn show_name(variable: &[ast::Ident]) -> String {
    let words: Vec<String> = variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    match words.join(" ").as_str() {
        "transaction isolation level" => "transaction_isolation".to_owned(),
        "time zone" => "timezone".to_owned(),
        "session authorization" => "session_authorization".to_owned(),
        _ => words.join("."),
    }
}

fn classify_set(set: &Set) -> PgWireResult<Local> {
    let local = match set {
        Set::SingleAssignment {
            variable, values, ..
        } => Local::Set(vec![(
            variable.to_string().to_ascii_lowercase(),
            set_value(values),
        )]),
        Set::MultipleAssignments { assignments } => Local::Set(
            assignments
                .iter()
                .map(|a| {
                    (
                        a.name.to_string().to_ascii_lowercase(),
                        set_value(std::slice::from_ref(&a.value)),
                    )
                })
                .collect(),
        ),
        Set::ParenthesizedAssignments { variables, values } => Local::Set(
            variables
                .iter()
                .zip(values)
                .map(|(n, v)| {
                    (
                        n.to_string().to_ascii_lowercase(),
                        set_value(std::slice::from_ref(v)),
                    )
                })
                .collect(),
        ),
        Set::SetTimeZone { value, .. } => Local::Set(vec![(
            "timezone".to_owned(),
            set_value(std::slice::from_ref(value)),
        )]),
        Set::SetNames { charset_name, .. } => Local::Set(vec![(
            "client_encoding".to_owned(),
            Some(charset_name.value.clone()),
        )]),
        Set::SetNamesDefault {} => Local::Set(vec![("client_encoding".to_owned(), None)]),
        Set::SetTransaction { modes, .. } => {
            refuse_read_write(modes)?;
            Local::Ack("SET")
        }
        Set::SetRole {
            role_name: None, ..
        } => Local::Ack("SET"),
        other => {
            return Err(user_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("LogSphere does not support \"{other}\""),
            ));
        }
    };
    Ok(local)
}

/// The text of a SET value list; `None` for `DEFAULT`.
fn set_value(values: &[ast::Expr]) -> Option<String> {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s)
                | ast::Value::DoubleQuotedString(s)
                | ast::Value::EscapedStringLiteral(s) => s.clone(),
                other => other.to_string(),
            },
            ast::Expr::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .collect();
    if parts.len() == 1 && parts[0].eq_ignore_ascii_case("default") {
        return None;
    }
    Some(parts.join(", "))
}

/// `BEGIN READ WRITE` promises writes LogSphere will refuse; say so at the start.
fn refuse_read_write(modes: &[TransactionMode]) -> PgWireResult<()> {
    if modes.iter().any(|m| {
        matches!(
            m,
            TransactionMode::AccessMode(ast::TransactionAccessMode::ReadWrite)
        )
    }) {
        return Err(errors::read_only("a READ WRITE transaction"));
    }
    Ok(())
}

/// Statement kinds refused before planning: DataFusion would plan some of them into
/// something that looks harmless (or fail with an unhelpful message).
fn refuse_writes(statement: &Statement) -> PgWireResult<()> {
    let what = match statement {
        Statement::Copy { to: true, .. } => "COPY … TO",
        Statement::Copy { .. } => "COPY … FROM",
        Statement::CreateTable(t) if t.external => "CREATE EXTERNAL TABLE",
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Merge(_) => "MERGE",
        Statement::Prepare { .. } | Statement::Execute { .. } => {
            return Err(user_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "SQL-level PREPARE/EXECUTE is not supported; use the extended query protocol",
            ));
        }
        Statement::Declare { .. } | Statement::Fetch { .. } => {
            return Err(user_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "this form of DECLARE/FETCH is not supported: use DECLARE name CURSOR FOR <query>, then FETCH, MOVE and CLOSE",
            ));
        }
        _ => return Ok(()),
    };
    Err(errors::read_only(what))
}

/// Refuses any plan that would change data, files or the catalog, naming what it was.
fn check_read_only(plan: &LogicalPlan) -> PgWireResult<()> {
    let mut refused: Option<String> = None;
    let _ = plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Ddl(ddl) => Some(ddl_name(ddl)),
            LogicalPlan::Dml(dml) => Some(dml.op.name().to_ascii_uppercase()),
            LogicalPlan::Copy(_) => Some("COPY … TO".to_owned()),
            LogicalPlan::Statement(s) => Some(s.name().to_ascii_uppercase()),
            _ => None,
        };
        match what {
            Some(w) => {
                refused = Some(w);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    });
    if let Some(what) = refused {
        return Err(errors::read_only(&what));
    }
    // Belt and braces: DataFusion's own check, in case a plan kind is added upstream.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| errors::read_only(&e.message()))
}

fn ddl_name(ddl: &DdlStatement) -> String {
    match ddl {
        DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_owned(),
        DdlStatement::CreateMemoryTable(_) => "CREATE TABLE".to_owned(),
        DdlStatement::CreateCatalog(_) => "CREATE DATABASE".to_owned(),
        other => {
            // "DropCatalogSchema" → "DROP CATALOG SCHEMA"
            let mut words = String::new();
            for (i, c) in other.name().char_indices() {
                if i > 0 && c.is_ascii_uppercase() {
                    words.push(' ');
                }
                words.push(c.to_ascii_uppercase());
            }
            words
        }
    }
}

/// The Arrow types of `$1..$n`, in order: from the plan's inference, else from an explicit
/// cast (`$1::timestamptz`), else `bigint` for a `LIMIT $n` / `OFFSET $n` (as PostgreSQL
/// types them; pgx and JDBC encode the value by the type the server reports).
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let mut inferred = plan
        .get_parameter_types()
        .map_err(|e| errors::datafusion_error(&e))?;
    if inferred.values().any(Option::is_none) {
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::Limit(limit) = node {
                for e in limit.skip.iter().chain(limit.fetch.iter()) {
                    if let Expr::Placeholder(ph) = e.as_ref()
                        && let Some(slot @ None) = inferred.get_mut(&ph.id)
                    {
                        *slot = Some(DataType::Int64);
                    }
                }
            }
            for expr in node.expressions() {
                let _ = expr.apply(|e| {
                    if let Expr::Cast(cast) = e
                        && let Expr::Placeholder(ph) = cast.expr.as_ref()
                        && let Some(slot @ None) = inferred.get_mut(&ph.id)
                    {
                        *slot = Some(cast.field.data_type().clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    let mut indexed = Vec::with_capacity(inferred.len());
    for (id, ty) in inferred {
        let n = id
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                user_error(
                    sqlstate::SYNTAX_ERROR,
                    format!("parameter {id} is not supported; use positional $1, $2, …"),
                )
            })?;
        indexed.push((n, ty));
    }
    let count = indexed.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut types = vec![None; count];
    for (n, ty) in indexed {
        types[n - 1] = ty;
    }
    Ok(types)
}

impl PlannedQuery {
    /// The PostgreSQL types reported for the parameters in ParameterDescription. A
    /// parameter the plan does not type is `text`, as PostgreSQL does for `SELECT $1`.
    pub(crate) fn param_wire_types(&self) -> Vec<Type> {
        self.param_types
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| into_pg_type(t).ok())
                    .unwrap_or(Type::TEXT)
            })
            .collect()
    }

    /// The Arrow types of the parameters, as the plan infers them.
    pub(crate) fn param_types(&self) -> &[Option<DataType>] {
        &self.param_types
    }

    /// The result columns, in `format`: what Describe reports and the rows carry.
    pub(crate) fn result_fields(&self, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        pg_fields(self.plan.schema().as_arrow(), format, None, &self.names)
    }

    /// PostgreSQL's output column names (see [`column_names`]).
    pub(crate) fn names(&self) -> &[Option<String>] {
        &self.names
    }

    /// Binds `params` (already decoded from the wire) and runs the plan.
    pub(crate) async fn execute(
        &self,
        session: &Session,
        params: Option<ParamValues>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let execution = self.execution(session, params).await?;
        encode_named_rows(session, execution, format, self.tag, &self.names).await
    }

    /// Binds `params` and gives what to run: the plan optimized at Parse when it can be
    /// reused (see [`Reusable`]), else a DataFrame planned anew.
    pub(crate) async fn execution(
        &self,
        session: &Session,
        params: Option<ParamValues>,
    ) -> PgWireResult<Execution> {
        session.sync_time_zone();
        if let Some(reusable) = &self.reusable
            && reusable.generation == session.planning.generation()
        {
            let planning = session.planning();
            if let Some(constant) = &reusable.constant
                && params.is_none()
            {
                let plan = reset_plan_states(Arc::clone(constant))
                    .map_err(|e| errors::datafusion_error(&e))?;
                session.engine.note_query();
                return Ok(Execution::Physical {
                    plan,
                    task: planning.task,
                });
            }
            let mut plan = self.bind(&reusable.optimized, params)?;
            if !self.param_types.is_empty() {
                plan = simplify(plan, &planning.state)?;
            }
            session.engine.note_query();
            return Ok(Execution::Optimized {
                plan,
                state: planning.state,
                task: planning.task,
            });
        }
        Ok(Execution::DataFrame(self.dataframe(session, params).await?))
    }

    /// `plan` with `params` in place of its placeholders.
    fn bind(&self, plan: &LogicalPlan, params: Option<ParamValues>) -> PgWireResult<LogicalPlan> {
        match params {
            Some(params) => {
                let params = self.coerce(params)?;
                plan.clone()
                    .replace_params_with_values(&params)
                    .map_err(|e| bad_parameter(&e))
            }
            None if !self.param_types.is_empty() => Err(user_error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "the query has {} parameter(s) but none were bound",
                    self.param_types.len()
                ),
            )),
            None => Ok(plan.clone()),
        }
    }

    /// Binds `params` and gives the DataFrame to run.
    async fn dataframe(
        &self,
        session: &Session,
        params: Option<ParamValues>,
    ) -> PgWireResult<datafusion::dataframe::DataFrame> {
        // A statement parsed under another TimeZone (extended protocol: Parse, SET TIME ZONE,
        // Execute) has the old zone in its plan: in `now()` and `to_char`, and in the type
        // of its casts to timestamptz. PostgreSQL uses the zone in force at each Execute, so
        // plan it again; the parameter and result types do not depend on the zone.
        session.sync_time_zone();
        let replanned;
        let current = if session.time_zone() == self.time_zone {
            self
        } else {
            replanned = plan(session, self.statement.clone()).await?;
            &replanned
        };
        let plan = self.bind(&current.plan, params)?;
        let plan = subquery_fold::fold(&session.ctx, plan).await?;
        session.engine.note_query();
        session
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| errors::datafusion_error(&e))
    }

    /// Casts each decoded parameter to the type the plan expects (a client may send a
    /// timestamp as text, or an int4 where the column is int8).
    fn coerce(&self, params: ParamValues) -> PgWireResult<ParamValues> {
        let ParamValues::List(values) = params else {
            return Ok(params);
        };
        if values.len() != self.param_types.len() {
            return Err(user_error(
                "08P01",
                format!(
                    "bind message supplies {} parameters, but prepared statement requires {}",
                    values.len(),
                    self.param_types.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(values.len());
        for (i, (value, expected)) in values.into_iter().zip(&self.param_types).enumerate() {
            let (scalar, metadata) = value.into_inner();
            let scalar = match expected {
                Some(ty) if scalar.data_type() != *ty => scalar.cast_to(ty).map_err(|e| {
                    user_error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!(
                            "parameter ${} cannot be read as {ty}: {}",
                            i + 1,
                            e.message()
                        ),
                    )
                })?,
                _ => scalar,
            };
            out.push(ScalarAndMetadata::new(scalar, metadata));
        }
        Ok(ParamValues::List(out))
    }
}

/// `plan` with its expressions simplified: the values bound into an optimized plan sit in
/// the casts the analyzer put around the placeholders (`LIMIT CAST($1 AS bigint)`), where
/// the physical planner wants a value and the scans' pruning wants a literal to compare.
fn simplify(plan: LogicalPlan, state: &SessionState) -> PgWireResult<LogicalPlan> {
    let rule = SimplifyExpressions::new();
    plan.transform_up_with_subqueries(|node| rule.rewrite(node, state))
        .map(|t| t.data)
        .map_err(|e| errors::datafusion_error(&e))
}

fn bad_parameter(e: &datafusion::error::DataFusionError) -> PgWireError {
    user_error(sqlstate::INVALID_PARAMETER_VALUE, e.message().into_owned())
}

impl Local {
    /// The columns the statement returns (SHOW returns one text column).
    pub(crate) fn result_fields(&self) -> Vec<FieldInfo> {
        match self {
            Local::Show(name) if name == "all" => vec![text_field("name"), text_field("setting")],
            Local::Show(name) => vec![text_field(name)],
            _ => Vec::new(),
        }
    }

    /// Runs the statement against the connection's state, given the transaction status
    /// before it (in a failed transaction, COMMIT ends it as ROLLBACK).
    pub(crate) fn execute(
        &self,
        session: &Session,
        status: TransactionStatus,
    ) -> PgWireResult<Outcome> {
        let in_failed_transaction = matches!(status, TransactionStatus::Error);
        let outcome = match self {
            Local::Set(assignments) => {
                let mut reports = Vec::new();
                for (name, value) in assignments {
                    let report = match value {
                        Some(v) => session.set(name, v)?,
                        None => lock(&session.vars).reset(name),
                    };
                    reports.extend(report);
                }
                Outcome {
                    response: Response::Execution(Tag::new("SET")),
                    reports,
                }
            }
            Local::Show(name) if name == "all" => {
                let rows = lock(&session.vars)
                    .all()
                    .into_iter()
                    .map(|(n, v)| vec![n, v])
                    .collect();
                Response::Query(text_rows(self.result_fields(), rows, "SHOW")?).into()
            }
            Local::Show(name) => {
                let value = session.show(name).ok_or_else(|| {
                    user_error(
                        sqlstate::UNDEFINED_OBJECT,
                        format!("unrecognized configuration parameter \"{name}\""),
                    )
                })?;
                Response::Query(text_rows(self.result_fields(), vec![vec![value]], "SHOW")?).into()
            }
            Local::Reset(Some(name)) => {
                let reports = lock(&session.vars).reset(name).into_iter().collect();
                Outcome {
                    response: Response::Execution(Tag::new("RESET")),
                    reports,
                }
            }
            Local::Reset(None) => {
                let reports = lock(&session.vars).reset_all();
                Outcome {
                    response: Response::Execution(Tag::new("RESET")),
                    reports,
                }
            }
            Local::DiscardAll => {
                session.cursors.close_all();
                let reports = lock(&session.vars).reset_all();
                Outcome {
                    response: Response::Execution(Tag::new("DISCARD ALL")),
                    reports,
                }
            }
            Local::Begin => Response::TransactionStart(Tag::new("BEGIN")).into(),
            Local::Commit if in_failed_transaction => {
                session.cursors.end_transaction(false);
                Response::TransactionEnd(Tag::new("ROLLBACK")).into()
            }
            Local::Commit => {
                session.cursors.end_transaction(true);
                Response::TransactionEnd(Tag::new("COMMIT")).into()
            }
            Local::Rollback => {
                session.cursors.end_transaction(false);
                Response::TransactionEnd(Tag::new("ROLLBACK")).into()
            }
            Local::Ack(tag) => Response::Execution(Tag::new(tag)).into(),
            Local::Savepoint(tag) if matches!(status, TransactionStatus::Idle) => {
                let statement = match *tag {
                    "ROLLBACK" => "ROLLBACK TO SAVEPOINT",
                    "RELEASE" => "RELEASE SAVEPOINT",
                    other => other,
                };
                return Err(user_error(
                    sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                    format!("{statement} can only be used in transaction blocks"),
                ));
            }
            Local::Savepoint(tag) => Response::Execution(Tag::new(tag)).into(),
        };
        Ok(outcome)
    }

    /// Whether the statement may run in a failed transaction (it ends the transaction).
    pub(crate) fn ends_transaction(&self) -> bool {
        matches!(self, Local::Commit | Local::Rollback)
    }

    /// Whether the statement is `ROLLBACK TO SAVEPOINT`, which leaves a failed state.
    pub(crate) fn rolls_back_to_savepoint(&self) -> bool {
        matches!(self, Local::Savepoint("ROLLBACK"))
    }
}

fn text_field(name: &str) -> FieldInfo {
    FieldInfo::new(name.to_owned(), None, None, Type::TEXT, FieldFormat::Text)
}

/// A result of text columns built in memory.
fn text_rows(
    fields: Vec<FieldInfo>,
    rows: Vec<Vec<String>>,
    tag: &str,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(fields);
    let mut encoded = Vec::with_capacity(rows.len());
    for row in rows {
        let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
        for value in row {
            encoder.encode_field(&Some(value))?;
        }
        encoded.push(Ok(encoder.take_row()));
    }
    let mut response = QueryResponse::new(fields, futures::stream::iter(encoded));
    response.set_command_tag(tag);
    Ok(response)
}

impl Prepared {
    /// The result columns for Describe, in `format` (text when the client has not bound yet).
    pub(crate) fn result_fields(&self, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        match self {
            Prepared::Local(local) => Ok(local.result_fields()),
            Prepared::LogSphere(statement) => statement.result_fields(format),
            Prepared::Plan(planned) => planned.result_fields(format),
            // Like PostgreSQL: a COPY describes as NoData; its columns come in CopyOutResponse.
            Prepared::Copy(_) => Ok(Vec::new()),
            // Described with the session, in `StatementParser::get_result_schema`.
            Prepared::Cursor(_) => Ok(Vec::new()),
        }
    }
}
