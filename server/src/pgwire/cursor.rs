//! SQL cursors: `DECLARE name [BINARY] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR query`,
//! `FETCH`, `MOVE` and `CLOSE`, as psycopg's and psycopg2's named cursors, psqlODBC's
//! `UseDeclareFetch` and Tableau use them.
//!
//! A cursor holds the DataFusion stream of its query, started at DECLARE; `FETCH n` pulls
//! `n` rows from it (never the whole result), so a cursor over a large table costs what the
//! client reads. Cursors only move forward: backward motion (`PRIOR`, `BACKWARD`, `ABSOLUTE`
//! to an earlier row) fails with 55000, as it does for a PostgreSQL `NO SCROLL` cursor.
//!
//! Transactions follow PostgreSQL: a `WITHOUT HOLD` cursor (the default) needs a transaction
//! block (25P01 outside one) and closes at its end; a `WITH HOLD` cursor survives COMMIT;
//! ROLLBACK closes every cursor declared in the rolled-back transaction.
//!
//! The statements are recognised in the SQL text (the PostgreSQL parser DataFusion uses has no
//! `MOVE`, and needs `FROM`/`IN` in FETCH); the query after `FOR` is parsed and planned like
//! any other query (read-only rules, `$n` parameters in the extended protocol).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow_pg::datatypes::encode_recordbatch;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::response::TransactionStatus;

use super::errors::{self, sqlstate, user_error};
use super::query::{self, PlannedQuery};
use super::rows::{in_time_zone, pg_fields, session_time_zone};
use super::session::{Session, lock};

/// A cursor statement, parsed but not planned.
#[derive(Debug, Clone)]
pub(crate) enum CursorStatement {
    Declare(DeclareSpec, Box<Statement>),
    /// `FETCH` (`fetch` true) or `MOVE` (false).
    Fetch {
        name: String,
        motion: Motion,
        fetch: bool,
    },
    /// `CLOSE name`; `None` for `CLOSE ALL`.
    Close(Option<String>),
}

/// A cursor statement ready to run (a DECLARE's query planned).
#[derive(Debug, Clone)]
pub(crate) enum PreparedCursor {
    Declare(DeclareSpec, Box<PlannedQuery>),
    Fetch {
        name: String,
        motion: Motion,
        fetch: bool,
    },
    Close(Option<String>),
}

/// DECLARE's options.
#[derive(Debug, Clone)]
pub(crate) struct DeclareSpec {
    name: String,
    binary: bool,
    scroll: bool,
    hold: bool,
    /// The statement text, for `pg_cursors`.
    text: String,
}

/// Where a FETCH or MOVE goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Motion {
    /// The next `n` rows; `None` for all of them.
    Forward(Option<u64>),
    /// `ABSOLUTE n`: the `n`th row (1-based; negative counts from the end).
    Absolute(i64),
    /// `RELATIVE n`: the row `n` after the current one.
    Relative(i64),
    /// `LAST`: the last row.
    Last,
    /// `PRIOR`, `BACKWARD …`, a negative count.
    Backward,
}

/// The first word of a statement, if it is one of the cursor statements.
fn cursor_keyword(tokens: &[Token]) -> Option<&'static str> {
    let word = tokens.iter().find(|t| !matches!(t, Token::Whitespace(_)))?;
    let Token::Word(w) = word else {
        return None;
    };
    if w.quote_style.is_some() {
        return None;
    }
    ["DECLARE", "FETCH", "MOVE", "CLOSE"]
        .into_iter()
        .find(|k| w.value.eq_ignore_ascii_case(k))
}

/// One statement of a query string.
pub(crate) enum Piece {
    Cursor(String),
    Sql(String),
}

/// Splits `sql` into statements when at least one is a cursor statement; `None` when none
/// is (or the text does not tokenize), so the usual path handles it unchanged.
pub(crate) fn split(sql: &str) -> Option<Vec<Piece>> {
    // Most queries have no cursor statement: skip tokenizing them.
    let lower = sql.to_ascii_lowercase();
    if !["declare", "fetch", "move", "close"]
        .iter()
        .any(|k| lower.contains(k))
    {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut pieces: Vec<Vec<Token>> = vec![Vec::new()];
    for token in tokens {
        if token == Token::SemiColon {
            pieces.push(Vec::new());
        } else if let Some(last) = pieces.last_mut() {
            last.push(token);
        }
    }
    pieces.retain(|p| p.iter().any(|t| !is_blank(t)));
    if !pieces.iter().any(|p| cursor_keyword(p).is_some()) {
        return None;
    }
    Some(
        pieces
            .into_iter()
            .map(|p| {
                let text = render(&p);
                if cursor_keyword(&p).is_some() {
                    Piece::Cursor(text)
                } else {
                    Piece::Sql(text)
                }
            })
            .collect(),
    )
}

fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_))
}

fn render(tokens: &[Token]) -> String {
    tokens.iter().map(ToString::to_string).collect::<String>()
}

/// Whether `sql` (one statement, for the extended protocol) is a cursor statement.
pub(crate) fn is_cursor_statement(sql: &str) -> bool {
    // A cheap look at the first word first (a Parse per query must stay fast).
    let start = sql.trim_start();
    let commented = start.starts_with("--") || start.starts_with("/*");
    let first: String = start
        .chars()
        .take(7)
        .collect::<String>()
        .to_ascii_lowercase();
    if !commented
        && !["declare", "fetch", "move", "close"]
            .iter()
            .any(|k| first.starts_with(k))
    {
        return false;
    }
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .is_ok_and(|t| cursor_keyword(&t).is_some())
}

fn syntax(message: impl Into<String>) -> PgWireError {
    user_error(sqlstate::SYNTAX_ERROR, message)
}

/// A cursor name as PostgreSQL folds it: quoted names keep their case.
fn ident(token: Option<&Token>) -> PgWireResult<String> {
    match token {
        Some(Token::Word(w)) if w.quote_style.is_some() => Ok(w.value.clone()),
        Some(Token::Word(w)) => Ok(w.value.to_lowercase()),
        Some(other) => Err(syntax(format!(
            "syntax error at or near \"{other}\": expected a cursor name"
        ))),
        None => Err(syntax(
            "syntax error at end of input: expected a cursor name",
        )),
    }
}

fn is_word(token: Option<&Token>, word: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// Parses one cursor statement (the text of a [`Piece::Cursor`]).
pub(crate) fn parse(
    parser: &PostgresCompatibilityParser,
    sql: &str,
) -> PgWireResult<CursorStatement> {
    let all = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| syntax(format!("syntax error: {e}")))?;
    // Positions of the meaningful tokens in `all`.
    let mut trailing_semicolon = false;
    let mut index: Vec<usize> = Vec::new();
    for (i, t) in all.iter().enumerate() {
        match t {
            Token::Whitespace(_) => {}
            Token::SemiColon => trailing_semicolon = true,
            _ if trailing_semicolon => {
                return Err(syntax(
                    "cannot insert multiple commands into a prepared statement",
                ));
            }
            _ => index.push(i),
        }
    }
    let tok = |k: usize| index.get(k).map(|&i| &all[i]);
    let keyword = cursor_keyword(&all).unwrap_or("");
    match keyword {
        "DECLARE" => {
            let name = ident(tok(1))?;
            let mut k = 2;
            let mut binary = false;
            let mut scroll = false;
            let mut hold = false;
            loop {
                if is_word(tok(k), "BINARY") {
                    binary = true;
                } else if is_word(tok(k), "INSENSITIVE") || is_word(tok(k), "ASENSITIVE") {
                } else if is_word(tok(k), "SCROLL") {
                    scroll = true;
                } else if is_word(tok(k), "NO") && is_word(tok(k + 1), "SCROLL") {
                    k += 1;
                } else {
                    break;
                }
                k += 1;
            }
            if !is_word(tok(k), "CURSOR") {
                return Err(syntax("syntax error in DECLARE: expected CURSOR"));
            }
            k += 1;
            if (is_word(tok(k), "WITH") || is_word(tok(k), "WITHOUT"))
                && is_word(tok(k + 1), "HOLD")
            {
                hold = is_word(tok(k), "WITH");
                k += 2;
            }
            if !is_word(tok(k), "FOR") {
                return Err(syntax("syntax error in DECLARE: expected FOR and a query"));
            }
            let start = index.get(k + 1).copied().ok_or_else(|| {
                syntax("syntax error at end of input: DECLARE … FOR needs a query")
            })?;
            let query_text = render(&all[start..]);
            let query_text = query_text.trim().trim_end_matches(';');
            let mut statements = query::parse(parser, query_text)?;
            let statement = match (statements.len(), statements.pop()) {
                (1, Some(s @ Statement::Query(_))) => s,
                _ => {
                    return Err(syntax(
                        "DECLARE CURSOR needs a SELECT or VALUES query after FOR",
                    ));
                }
            };
            Ok(CursorStatement::Declare(
                DeclareSpec {
                    name,
                    binary,
                    scroll,
                    hold,
                    text: sql.trim().to_owned(),
                },
                Box::new(statement),
            ))
        }
        "FETCH" | "MOVE" => {
            let (motion, mut k) = parse_motion(&tok)?;
            if is_word(tok(k), "FROM") || is_word(tok(k), "IN") {
                k += 1;
            }
            let name = ident(tok(k))?;
            if tok(k + 1).is_some() {
                return Err(syntax(format!(
                    "syntax error in {keyword}: unexpected text after the cursor name"
                )));
            }
            Ok(CursorStatement::Fetch {
                name,
                motion,
                fetch: keyword == "FETCH",
            })
        }
        "CLOSE" => {
            if tok(2).is_some() {
                return Err(syntax(
                    "syntax error in CLOSE: expected a cursor name or ALL",
                ));
            }
            if is_word(tok(1), "ALL") {
                Ok(CursorStatement::Close(None))
            } else {
                Ok(CursorStatement::Close(Some(ident(tok(1))?)))
            }
        }
        _ => Err(syntax("not a cursor statement")),
    }
}

/// A FETCH/MOVE direction starting at token 1; returns it and the index after it.
fn parse_motion<'a>(tok: &impl Fn(usize) -> Option<&'a Token>) -> PgWireResult<(Motion, usize)> {
    let count = |k: usize| -> Option<(i64, usize)> {
        match tok(k) {
            Some(Token::Number(n, _)) => n.parse::<i64>().ok().map(|n| (n, k + 1)),
            Some(Token::Minus) => match tok(k + 1) {
                Some(Token::Number(n, _)) => n.parse::<i64>().ok().map(|n| (-n, k + 2)),
                _ => None,
            },
            Some(Token::Plus) => match tok(k + 1) {
                Some(Token::Number(n, _)) => n.parse::<i64>().ok().map(|n| (n, k + 2)),
                _ => None,
            },
            _ => None,
        }
    };
    let forward = |n: i64| {
        if n < 0 {
            Motion::Backward
        } else {
            Motion::Forward(Some(n.unsigned_abs()))
        }
    };
    let word = |k: usize| match tok(k) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    };
    let bad_count = || syntax("syntax error: expected a row count");
    Ok(match word(1) {
        Some(Keyword::NEXT) => (Motion::Forward(Some(1)), 2),
        Some(Keyword::PRIOR) => (Motion::Backward, 2),
        Some(Keyword::FIRST) => (Motion::Absolute(1), 2),
        Some(Keyword::LAST) => (Motion::Last, 2),
        Some(Keyword::ALL) => (Motion::Forward(None), 2),
        Some(Keyword::ABSOLUTE) => {
            let (n, k) = count(2).ok_or_else(bad_count)?;
            (Motion::Absolute(n), k)
        }
        Some(Keyword::RELATIVE) => {
            let (n, k) = count(2).ok_or_else(bad_count)?;
            (Motion::Relative(n), k)
        }
        Some(Keyword::FORWARD) => {
            if word(2) == Some(Keyword::ALL) {
                (Motion::Forward(None), 3)
            } else if let Some((n, k)) = count(2) {
                (forward(n), k)
            } else {
                (Motion::Forward(Some(1)), 2)
            }
        }
        Some(Keyword::BACKWARD) => {
            if word(2) == Some(Keyword::ALL) {
                (Motion::Backward, 3)
            } else if let Some((n, k)) = count(2) {
                (
                    if n == 0 {
                        Motion::Relative(0)
                    } else {
                        Motion::Backward
                    },
                    k,
                )
            } else {
                (Motion::Backward, 2)
            }
        }
        _ => match count(1) {
            Some((n, k)) => (forward(n), k),
            None => (Motion::Forward(Some(1)), 1),
        },
    })
}

impl CursorStatement {
    /// Plans a DECLARE's query.
    pub(crate) async fn prepare(self, session: &Session) -> PgWireResult<PreparedCursor> {
        Ok(match self {
            CursorStatement::Declare(spec, statement) => {
                let planned = query::plan(session, *statement).await?;
                PreparedCursor::Declare(spec, Box::new(planned))
            }
            CursorStatement::Fetch {
                name,
                motion,
                fetch,
            } => PreparedCursor::Fetch {
                name,
                motion,
                fetch,
            },
            CursorStatement::Close(name) => PreparedCursor::Close(name),
        })
    }
}

impl PreparedCursor {
    /// The planned query of a DECLARE (for its parameter types).
    pub(crate) fn planned(&self) -> Option<&PlannedQuery> {
        match self {
            PreparedCursor::Declare(_, planned) => Some(planned),
            _ => None,
        }
    }

    /// The columns a FETCH returns (those of its cursor, if it exists now); none otherwise.
    pub(crate) fn result_fields(
        &self,
        session: &Session,
        format: &Format,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match self {
            PreparedCursor::Fetch {
                name, fetch: true, ..
            } => match session.cursors.get(name) {
                Ok(cursor) => cursor.fields(session, format),
                Err(_) => Ok(Vec::new()),
            },
            _ => Ok(Vec::new()),
        }
    }

    /// Runs the statement. `format` is the extended protocol's result format; `None` in the
    /// simple protocol, where a BINARY cursor's rows come in binary.
    pub(crate) async fn execute(
        &self,
        session: &Session,
        params: Option<ParamValues>,
        format: Option<&Format>,
        status: TransactionStatus,
    ) -> PgWireResult<Response> {
        match self {
            PreparedCursor::Declare(spec, planned) => {
                let in_transaction = !matches!(status, TransactionStatus::Idle);
                if !spec.hold && !in_transaction {
                    return Err(user_error(
                        sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                        "DECLARE CURSOR can only be used in transaction blocks",
                    ));
                }
                if session.cursors.get(&spec.name).is_ok() {
                    return Err(duplicate(&spec.name));
                }
                let df = planned.dataframe(session, params).await?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let stream = super::executor::execute_stream(df)
                    .await
                    .map_err(|e| errors::datafusion_error(&e))?;
                let cursor = Cursor {
                    name: spec.name.clone(),
                    binary: spec.binary,
                    scroll: spec.scroll,
                    hold: spec.hold,
                    in_transaction: AtomicBool::new(in_transaction),
                    schema,
                    names: planned.names().to_vec(),
                    statement: spec.text.clone(),
                    created: Utc::now(),
                    rows: Arc::new(tokio::sync::Mutex::new(Rows {
                        stream: Some(stream),
                        pending: None,
                        offset: 0,
                        position: 0,
                    })),
                };
                session.cursors.insert(cursor)?;
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            PreparedCursor::Fetch {
                name,
                motion,
                fetch,
            } => {
                let cursor = session.cursors.get(name)?;
                if *fetch {
                    let format = match format {
                        Some(f) => f.clone(),
                        None if cursor.binary => Format::UnifiedBinary,
                        None => Format::UnifiedText,
                    };
                    cursor.fetch(session, *motion, &format).await
                } else {
                    let moved = cursor.move_by(*motion).await?;
                    Ok(Response::Execution(Tag::new("MOVE").with_rows(moved)))
                }
            }
            PreparedCursor::Close(Some(name)) => {
                session.cursors.close(name)?;
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            PreparedCursor::Close(None) => {
                session.cursors.close_all();
                Ok(Response::Execution(Tag::new("CLOSE CURSOR ALL")))
            }
        }
    }
}

fn duplicate(name: &str) -> PgWireError {
    user_error(
        sqlstate::DUPLICATE_CURSOR,
        format!("cursor \"{name}\" already exists"),
    )
}

fn backward() -> PgWireError {
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE.to_owned(),
        "cursor can only scan forward".to_owned(),
    );
    info.hint = Some(
        "LogSphere cursors stream their rows and do not move backward; re-declare the cursor to start over"
            .to_owned(),
    );
    PgWireError::UserError(Box::new(info))
}

/// Where a cursor's stream stands.
struct Rows {
    stream: Option<SendableRecordBatchStream>,
    /// The batch being read, from row `offset`.
    pending: Option<RecordBatch>,
    offset: usize,
    /// Rows consumed so far (the current row, 1-based).
    position: u64,
}

impl Rows {
    /// Up to `max` next rows (at least one), or `None` at the end.
    async fn next_slice(&mut self, max: u64) -> PgWireResult<Option<RecordBatch>> {
        loop {
            if let Some(batch) = &self.pending {
                let left = batch.num_rows() - self.offset;
                if left > 0 {
                    let n = left.min(usize::try_from(max).unwrap_or(usize::MAX));
                    let slice = batch.slice(self.offset, n);
                    self.offset += n;
                    self.position += n as u64;
                    return Ok(Some(slice));
                }
                self.pending = None;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            match stream.next().await {
                Some(Ok(batch)) => {
                    self.pending = Some(batch);
                    self.offset = 0;
                }
                Some(Err(e)) => {
                    self.stream = None;
                    return Err(errors::datafusion_error(&e));
                }
                None => self.stream = None,
            }
        }
    }

    /// Skips up to `n` rows; returns how many were skipped.
    async fn skip(&mut self, n: u64) -> PgWireResult<u64> {
        let mut skipped = 0;
        while skipped < n {
            match self.next_slice(n - skipped).await? {
                Some(slice) => skipped += slice.num_rows() as u64,
                None => break,
            }
        }
        Ok(skipped)
    }

    /// Reads to the end; returns how many rows that was and the last row.
    async fn last(&mut self) -> PgWireResult<(u64, Option<RecordBatch>)> {
        let mut moved = 0;
        let mut last = None;
        while let Some(slice) = self.next_slice(u64::MAX).await? {
            moved += slice.num_rows() as u64;
            last = Some(slice.slice(slice.num_rows() - 1, 1));
        }
        Ok((moved, last))
    }
}

/// One open cursor.
pub(crate) struct Cursor {
    name: String,
    binary: bool,
    scroll: bool,
    hold: bool,
    /// Declared in the current transaction block (closed if it rolls back).
    in_transaction: AtomicBool,
    schema: SchemaRef,
    names: Vec<Option<String>>,
    statement: String,
    created: DateTime<Utc>,
    rows: Arc<tokio::sync::Mutex<Rows>>,
}

/// What `pg_cursors` shows about a cursor.
pub(crate) struct CursorRow {
    pub(crate) name: String,
    pub(crate) statement: String,
    pub(crate) is_holdable: bool,
    pub(crate) is_binary: bool,
    pub(crate) is_scrollable: bool,
    pub(crate) creation_time: DateTime<Utc>,
}

/// How far a forward motion goes from `position`: rows to skip, then rows to return
/// (`None`: all the rest).
fn plan_motion(motion: Motion, position: u64) -> PgWireResult<(u64, Option<u64>)> {
    match motion {
        Motion::Forward(n) => Ok((0, n)),
        Motion::Backward => Err(backward()),
        Motion::Last => Err(backward()),
        Motion::Absolute(n) if n > 0 && n.unsigned_abs() > position => {
            Ok((n.unsigned_abs() - position - 1, Some(1)))
        }
        Motion::Absolute(0) if position == 0 => Ok((0, Some(0))),
        Motion::Absolute(_) => Err(backward()),
        Motion::Relative(n) if n > 0 => Ok((n.unsigned_abs() - 1, Some(1))),
        Motion::Relative(0) if position == 0 => Ok((0, Some(0))),
        Motion::Relative(_) => Err(backward()),
    }
}

impl Cursor {
    fn fields(&self, session: &Session, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
        let options = Arc::new(lock(&session.vars).format_options());
        pg_fields(&self.schema, format, Some(options), &self.names)
    }

    /// The format a Describe of the cursor's portal reports.
    pub(crate) fn portal_fields(&self, session: &Session) -> PgWireResult<Vec<FieldInfo>> {
        let format = if self.binary {
            Format::UnifiedBinary
        } else {
            Format::UnifiedText
        };
        self.fields(session, &format)
    }

    /// FETCH: streams the rows `motion` covers, encoded in `format`.
    async fn fetch(
        &self,
        session: &Session,
        motion: Motion,
        format: &Format,
    ) -> PgWireResult<Response> {
        let fields = Arc::new(self.fields(session, format)?);
        let time_zone = session_time_zone(session);
        let mut rows = Arc::clone(&self.rows).lock_owned().await;
        let (skip, take) = if motion == Motion::Last {
            // The last row: read everything, answer one row.
            let (_, last) = rows.last().await?;
            let rows: Vec<PgWireResult<DataRow>> = match last {
                Some(batch) => {
                    encode_recordbatch(Arc::clone(&fields), in_time_zone(batch, time_zone.as_ref()))
                        .collect()
                }
                None => Vec::new(),
            };
            let mut response = QueryResponse::new(fields, futures::stream::iter(rows));
            response.set_command_tag("FETCH");
            return Ok(Response::Query(response));
        } else {
            plan_motion(motion, rows.position)?
        };
        rows.skip(skip).await?;
        let remaining = take.unwrap_or(u64::MAX);
        let row_fields = Arc::clone(&fields);
        let batches =
            futures::stream::unfold((rows, remaining), |(mut rows, remaining)| async move {
                if remaining == 0 {
                    return None;
                }
                match rows.next_slice(remaining).await {
                    Ok(Some(slice)) => {
                        let n = slice.num_rows() as u64;
                        Some((Ok(slice), (rows, remaining - n)))
                    }
                    Ok(None) => None,
                    Err(e) => Some((Err(e), (rows, 0))),
                }
            });
        let encoded = batches
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> =
                    match batch {
                        Ok(batch) => encode_recordbatch(
                            Arc::clone(&row_fields),
                            in_time_zone(batch, time_zone.as_ref()),
                        ),
                        Err(e) => Box::new(std::iter::once(Err(e))),
                    };
                futures::stream::iter(rows)
            })
            .flatten();
        let guarded = session.backend.control.guard(Box::pin(encoded));
        let mut response = QueryResponse::new(fields, guarded);
        response.set_command_tag("FETCH");
        Ok(Response::Query(response))
    }

    /// MOVE: how many rows the motion passed over.
    async fn move_by(&self, motion: Motion) -> PgWireResult<usize> {
        let mut rows = self.rows.lock().await;
        if motion == Motion::Last {
            let (moved, _) = rows.last().await?;
            return Ok(usize::try_from(moved).unwrap_or(usize::MAX));
        }
        let (skip, take) = plan_motion(motion, rows.position)?;
        let moved = rows
            .skip(skip.saturating_add(take.unwrap_or(u64::MAX)))
            .await?;
        // PostgreSQL counts what a FETCH would have returned.
        let counted = if skip > 0 || matches!(motion, Motion::Absolute(_) | Motion::Relative(_)) {
            moved.saturating_sub(skip).min(1)
        } else {
            moved
        };
        Ok(usize::try_from(counted).unwrap_or(usize::MAX))
    }
}

/// A connection's open cursors, by name.
#[derive(Default)]
pub(crate) struct Cursors {
    map: Mutex<HashMap<String, Arc<Cursor>>>,
}

impl Cursors {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Cursor>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, cursor: Cursor) -> PgWireResult<()> {
        let mut map = self.map();
        if map.contains_key(&cursor.name) {
            return Err(duplicate(&cursor.name));
        }
        map.insert(cursor.name.clone(), Arc::new(cursor));
        Ok(())
    }

    /// The cursor `name`, or 34000.
    pub(crate) fn get(&self, name: &str) -> PgWireResult<Arc<Cursor>> {
        self.map().get(name).cloned().ok_or_else(|| {
            user_error(
                sqlstate::INVALID_CURSOR_NAME,
                format!("cursor \"{name}\" does not exist"),
            )
        })
    }

    fn close(&self, name: &str) -> PgWireResult<()> {
        match self.map().remove(name) {
            Some(_) => Ok(()),
            None => Err(user_error(
                sqlstate::INVALID_CURSOR_NAME,
                format!("cursor \"{name}\" does not exist"),
            )),
        }
    }

    /// `CLOSE ALL`, `DISCARD ALL`.
    pub(crate) fn close_all(&self) {
        self.map().clear();
    }

    /// The transaction block ends: COMMIT keeps the WITH HOLD cursors, ROLLBACK keeps only
    /// those declared before the transaction.
    pub(crate) fn end_transaction(&self, committed: bool) {
        let mut map = self.map();
        if committed {
            map.retain(|_, c| c.hold);
            for cursor in map.values() {
                cursor.in_transaction.store(false, Ordering::SeqCst);
            }
        } else {
            map.retain(|_, c| c.hold && !c.in_transaction.load(Ordering::SeqCst));
        }
    }

    /// The open cursors, for `pg_cursors`.
    pub(crate) fn list(&self) -> Vec<CursorRow> {
        let mut rows: Vec<CursorRow> = self
            .map()
            .values()
            .map(|c| CursorRow {
                name: c.name.clone(),
                statement: c.statement.clone(),
                is_holdable: c.hold,
                is_binary: c.binary,
                is_scrollable: c.scroll,
                creation_time: c.created,
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(sql: &str) -> CursorStatement {
        match parse(&PostgresCompatibilityParser::new(), sql) {
            Ok(s) => s,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    #[test]
    fn parses_declare_options() {
        let CursorStatement::Declare(spec, _) = parse_text(
            "DECLARE \"SQL_CUR0x1\" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1 AS a",
        ) else {
            panic!("not a declare")
        };
        assert_eq!(spec.name, "SQL_CUR0x1");
        assert!(spec.binary && spec.hold && !spec.scroll);
        let CursorStatement::Declare(spec, _) = parse_text("declare MyCur cursor for values (1)")
        else {
            panic!("not a declare")
        };
        assert_eq!(spec.name, "mycur");
        assert!(!spec.hold);
    }

    #[test]
    fn parses_fetch_and_move() {
        let cases = [
            ("FETCH 2048 IN \"c\"", Motion::Forward(Some(2048)), true),
            ("FETCH c", Motion::Forward(Some(1)), true),
            ("FETCH NEXT FROM c", Motion::Forward(Some(1)), true),
            ("FETCH ALL c", Motion::Forward(None), true),
            ("FETCH FORWARD 5 FROM c", Motion::Forward(Some(5)), true),
            ("FETCH FORWARD ALL FROM c", Motion::Forward(None), true),
            ("FETCH FORWARD c", Motion::Forward(Some(1)), true),
            ("FETCH PRIOR c", Motion::Backward, true),
            ("FETCH -1 c", Motion::Backward, true),
            ("FETCH ABSOLUTE 3 c", Motion::Absolute(3), true),
            ("MOVE 10 IN c", Motion::Forward(Some(10)), false),
            ("MOVE LAST IN c", Motion::Last, false),
        ];
        for (sql, want, fetch) in cases {
            match parse_text(sql) {
                CursorStatement::Fetch {
                    name,
                    motion,
                    fetch: f,
                } => {
                    assert_eq!(name, "c", "{sql}");
                    assert_eq!(motion, want, "{sql}");
                    assert_eq!(f, fetch, "{sql}");
                }
                _ => panic!("{sql}: not a fetch"),
            }
        }
        assert!(parse(&PostgresCompatibilityParser::new(), "FETCH 1 FROM c extra").is_err());
    }

    #[test]
    fn splits_only_when_a_cursor_statement_is_present() {
        assert!(split("SELECT 1; SELECT ';FETCH'").is_none());
        let pieces = split("BEGIN; DECLARE c CURSOR FOR SELECT ';'; FETCH 2 FROM c;").unwrap();
        assert_eq!(pieces.len(), 3);
        assert!(matches!(&pieces[1], Piece::Cursor(t) if t.contains("SELECT ';'")));
        assert!(matches!(&pieces[0], Piece::Sql(t) if t.trim() == "BEGIN"));
    }

    #[test]
    fn forward_only_motions() {
        assert_eq!(plan_motion(Motion::Absolute(5), 2).unwrap(), (2, Some(1)));
        assert!(plan_motion(Motion::Absolute(2), 2).is_err());
        assert_eq!(plan_motion(Motion::Relative(3), 7).unwrap(), (2, Some(1)));
        assert!(plan_motion(Motion::Backward, 0).is_err());
    }
}
