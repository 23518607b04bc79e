//! SQL cursors: `DECLARE name [BINARY] [[NO] SCROLL] CURSOR [WITH[OUT] HOLD] FOR query`,
//! `FETCH`, `MOVE` and `CLOSE`, as psycopg's and psycopg2's named cursors, psqlODBC's
//! `UseDeclareFetch` and Tableau use them.
//!
//! A cursor holds the DataFusion stream of its query, started at DECLARE; `FETCH n` pulls
//! `n` rows from it (never the whole result), so a cursor over a large table costs what the
//! client reads. Such a cursor only moves forward: backward motion (`PRIOR`, `BACKWARD`,
//! `ABSOLUTE` to an earlier row) fails with 55000, as it does for a PostgreSQL `NO SCROLL`
//! cursor. A cursor declared `SCROLL` keeps the rows it has read (at most
//! `pg.scroll_cursor_memory_mb`, then 54000), reads on only as far as a motion needs, and
//! moves in every direction with PostgreSQL's positions: before the first row, on a row, or
//! after the last.
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

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::response::TransactionStatus;

use super::errors::{self, sqlstate, user_error};
use super::parser::SqlParser;
use super::query::{self, PlannedQuery};
use super::rows::{encode_batch, pg_fields, session_time_zone};
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
    scroll: Scroll,
    hold: bool,
    /// The statement text, for `pg_cursors`.
    text: String,
}

/// Where a FETCH or MOVE goes (PostgreSQL's `FetchDirection` and count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Motion {
    /// `NEXT`, `n`, `FORWARD [n | ALL]`, `ALL`: the next `n` rows; `None` for all of them;
    /// 0 re-fetches the current row.
    Forward(Option<u64>),
    /// `PRIOR`, `BACKWARD [n | ALL]`, a negative count: the `n` rows before the current one,
    /// nearest first; `None` for all of them.
    Backward(Option<u64>),
    /// `ABSOLUTE n`, `FIRST` (1), `LAST` (-1): the `n`th row (1-based; negative counts from
    /// the end; 0 is before the first row).
    Absolute(i64),
    /// `RELATIVE n`: the row `n` after the current one (before it if negative; 0 re-fetches
    /// the current row).
    Relative(i64),
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
pub(crate) fn parse(parser: &SqlParser, sql: &str) -> PgWireResult<CursorStatement> {
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
            let mut scroll = Scroll::Unspecified;
            let mut hold = false;
            loop {
                if is_word(tok(k), "BINARY") {
                    binary = true;
                } else if is_word(tok(k), "INSENSITIVE") || is_word(tok(k), "ASENSITIVE") {
                } else if is_word(tok(k), "SCROLL") {
                    scroll = Scroll::Yes;
                } else if is_word(tok(k), "NO") && is_word(tok(k + 1), "SCROLL") {
                    scroll = Scroll::No;
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
    // A signed count: negative reverses the direction.
    let forward = |n: i64| {
        if n < 0 {
            Motion::Backward(Some(n.unsigned_abs()))
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
        Some(Keyword::PRIOR) => (Motion::Backward(Some(1)), 2),
        Some(Keyword::FIRST) => (Motion::Absolute(1), 2),
        Some(Keyword::LAST) => (Motion::Absolute(-1), 2),
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
                (Motion::Backward(None), 3)
            } else if let Some((n, k)) = count(2) {
                // BACKWARD 0 re-fetches the current row, as FORWARD 0 does.
                (forward(n.saturating_neg()), k)
            } else {
                (Motion::Backward(Some(1)), 2)
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
                let execution = planned.execution(session, params).await?;
                let schema: SchemaRef = execution.schema();
                let stream = super::executor::execute(execution)
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
                    state: Arc::new(tokio::sync::Mutex::new(State {
                        rows: Rows {
                            stream: Some(stream),
                            pending: None,
                            offset: 0,
                            position: 0,
                            at_end: false,
                        },
                        kept: (spec.scroll == Scroll::Yes)
                            .then(|| Kept::new(session.cursors.scroll_memory_mb)),
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

/// Backward motion on a cursor that only reads forward: PostgreSQL's error for a `NO SCROLL`
/// cursor.
fn backward() -> PgWireError {
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE.to_owned(),
        "cursor can only scan forward".to_owned(),
    );
    info.hint = Some(
        "Declare it with SCROLL option to enable backward scan (a LogSphere cursor declared \
         without SCROLL streams its rows and keeps none)."
            .to_owned(),
    );
    PgWireError::UserError(Box::new(info))
}

/// A SCROLL cursor would keep more rows than `pg.scroll_cursor_memory_mb` allows.
fn scroll_limit(name: &str, limit_mb: u64) -> PgWireError {
    let mut info = ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate::PROGRAM_LIMIT_EXCEEDED.to_owned(),
        format!(
            "SCROLL cursor \"{name}\" would keep more than {limit_mb} MiB of rows \
             (pg.scroll_cursor_memory_mb)"
        ),
    );
    info.hint = Some(
        "a SCROLL cursor keeps the rows it has read so it can move back over them; declare it \
         without SCROLL to stream the rows, narrow the query, or raise pg.scroll_cursor_memory_mb"
            .to_owned(),
    );
    PgWireError::UserError(Box::new(info))
}

/// A row count or number as an index.
fn index(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Where a cursor's stream stands.
struct Rows {
    stream: Option<SendableRecordBatchStream>,
    /// The batch being read, from row `offset`.
    pending: Option<RecordBatch>,
    offset: usize,
    /// Rows consumed so far (the current row, 1-based).
    position: u64,
    /// A read asked for more rows than were left (PostgreSQL's `atEnd`): the cursor is after
    /// the last row.
    at_end: bool,
}

impl Rows {
    /// Up to `max` next rows (at least one), or `None` at the end.
    async fn next_slice(&mut self, max: u64) -> PgWireResult<Option<RecordBatch>> {
        loop {
            if let Some(batch) = &self.pending {
                let left = batch.num_rows() - self.offset;
                if left > 0 {
                    let n = left.min(index(max));
                    let slice = batch.slice(self.offset, n);
                    self.offset += n;
                    self.position += n as u64;
                    return Ok(Some(slice));
                }
                self.pending = None;
            }
            let Some(stream) = self.stream.as_mut() else {
                self.at_end = true;
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

    /// Reads to the end and stands on the last row (`FETCH LAST`); returns that row.
    async fn last(&mut self) -> PgWireResult<Option<RecordBatch>> {
        let mut last = None;
        while let Some(slice) = self.next_slice(u64::MAX).await? {
            last = Some(slice.slice(slice.num_rows() - 1, 1));
        }
        // On the last row, as PostgreSQL's step back from the end leaves it.
        self.at_end = last.is_none();
        Ok(last)
    }
}

/// Rows a motion returns, 1-based and inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Empty,
    /// Rows `lo..=hi`, in order.
    Up(u64, u64),
    /// Rows `hi` down to `lo`: what a backward fetch returns.
    Down(u64, u64),
}

impl Span {
    fn up(lo: u64, hi: u64) -> Self {
        if lo <= hi {
            Span::Up(lo, hi)
        } else {
            Span::Empty
        }
    }

    fn down(hi: u64, lo: u64) -> Self {
        if lo <= hi && lo > 0 {
            Span::Down(hi, lo)
        } else {
            Span::Empty
        }
    }

    fn rows(self) -> u64 {
        match self {
            Span::Empty => 0,
            Span::Up(lo, hi) | Span::Down(hi, lo) => hi - lo + 1,
        }
    }
}

/// The rows a `SCROLL` cursor has read, kept so it can move back over them, and its position
/// as PostgreSQL counts it: 0 before the first row, `n` on row `n`, `len + 1` after the last
/// (only once the stream has ended).
struct Kept {
    batches: Vec<RecordBatch>,
    /// The 0-based number of each batch's first row.
    starts: Vec<u64>,
    len: u64,
    bytes: usize,
    position: u64,
    /// `pg.scroll_cursor_memory_mb`, and the same in bytes.
    limit_mb: u64,
    limit: usize,
    /// A read went over the limit: the stream cannot be read on (its rows were dropped).
    full: bool,
}

impl Kept {
    fn new(limit_mb: u64) -> Self {
        Kept {
            batches: Vec::new(),
            starts: Vec::new(),
            len: 0,
            bytes: 0,
            position: 0,
            limit_mb,
            limit: index(limit_mb.saturating_mul(1024 * 1024)),
            full: false,
        }
    }

    /// Reads from `rows` until `upto` rows are kept or the stream ends; returns the rows kept.
    async fn fill(&mut self, rows: &mut Rows, upto: u64, name: &str) -> PgWireResult<u64> {
        while self.len < upto {
            if self.full {
                return Err(scroll_limit(name, self.limit_mb));
            }
            let Some(batch) = rows.next_slice(u64::MAX).await? else {
                break;
            };
            let bytes = self.bytes.saturating_add(batch.get_array_memory_size());
            if bytes > self.limit {
                self.full = true;
                return Err(scroll_limit(name, self.limit_mb));
            }
            self.bytes = bytes;
            self.starts.push(self.len);
            self.len += batch.num_rows() as u64;
            self.batches.push(batch);
        }
        Ok(self.len)
    }

    /// Moves as PostgreSQL's `DoPortalRunFetch` does; returns the rows the motion covers.
    async fn scroll(&mut self, rows: &mut Rows, motion: Motion, name: &str) -> PgWireResult<Span> {
        let p = self.position;
        let (span, position) = match motion {
            // Re-fetch the current row, if the cursor is on one.
            Motion::Forward(Some(0)) | Motion::Backward(Some(0)) | Motion::Relative(0) => {
                if p >= 1 && p <= self.len {
                    (Span::Up(p, p), p)
                } else {
                    (Span::Empty, p)
                }
            }
            Motion::Forward(n) => {
                let want = p.saturating_add(n.unwrap_or(u64::MAX));
                let have = self.fill(rows, want, name).await?.min(want);
                let position = if have < want { self.len + 1 } else { want };
                (Span::up(p + 1, have), position)
            }
            Motion::Backward(n) => {
                let wanted = n.unwrap_or(u64::MAX);
                let moved = wanted.min(p.saturating_sub(1));
                let position = if moved < wanted { 0 } else { p - moved };
                if moved == 0 {
                    (Span::Empty, position)
                } else {
                    (Span::down(p - 1, p - moved), position)
                }
            }
            Motion::Absolute(0) => (Span::Empty, 0),
            Motion::Absolute(n) if n > 0 => {
                let n = n.unsigned_abs();
                if self.fill(rows, n, name).await? >= n {
                    (Span::Up(n, n), n)
                } else {
                    (Span::Empty, self.len + 1)
                }
            }
            Motion::Absolute(n) => {
                let len = self.fill(rows, u64::MAX, name).await?;
                let back = n.unsigned_abs();
                if back <= len {
                    let row = len + 1 - back;
                    (Span::Up(row, row), row)
                } else {
                    (Span::Empty, 0)
                }
            }
            Motion::Relative(n) if n > 0 => {
                let target = p.saturating_add(n.unsigned_abs());
                if self.fill(rows, target, name).await? >= target {
                    (Span::Up(target, target), target)
                } else {
                    (Span::Empty, self.len + 1)
                }
            }
            Motion::Relative(n) => {
                let back = n.unsigned_abs();
                if p > back {
                    (Span::Up(p - back, p - back), p - back)
                } else {
                    (Span::Empty, 0)
                }
            }
        };
        self.position = position;
        Ok(span)
    }

    /// The kept rows `span` covers, in its order.
    fn batches(&self, span: Span) -> PgWireResult<Vec<RecordBatch>> {
        let (lo, hi, down) = match span {
            Span::Empty => return Ok(Vec::new()),
            Span::Up(lo, hi) => (lo - 1, hi - 1, false),
            Span::Down(hi, lo) => (lo - 1, hi - 1, true),
        };
        // The batch holding row `lo` (0-based) and those after it, up to row `hi`.
        let first = self.starts.partition_point(|&s| s <= lo).saturating_sub(1);
        let mut out = Vec::new();
        for (batch, &start) in self.batches[first..].iter().zip(&self.starts[first..]) {
            if start > hi {
                break;
            }
            let from = lo.max(start) - start;
            let to = (hi + 1).min(start + batch.num_rows() as u64) - start;
            if down {
                let indices = UInt64Array::from_iter_values((from..to).rev());
                let reversed = take_record_batch(batch, &indices).map_err(|e| {
                    errors::datafusion_error(&datafusion::error::DataFusionError::ArrowError(
                        Box::new(e),
                        Some("reversing a cursor's rows for a backward fetch".to_owned()),
                    ))
                })?;
                out.push(reversed);
            } else {
                out.push(batch.slice(index(from), index(to - from)));
            }
        }
        if down {
            out.reverse();
        }
        Ok(out)
    }
}

/// A cursor's rows: the stream, and for a `SCROLL` cursor the rows read from it.
struct State {
    rows: Rows,
    kept: Option<Kept>,
}

/// How a cursor declared `[NO] SCROLL` may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scroll {
    /// `SCROLL`: every direction; the rows read are kept.
    Yes,
    /// Neither: forward, plus `LAST` (a read to the end); rows stream.
    Unspecified,
    /// `NO SCROLL`: forward only; rows stream.
    No,
}

/// One open cursor.
pub(crate) struct Cursor {
    name: String,
    binary: bool,
    scroll: Scroll,
    hold: bool,
    /// Declared in the current transaction block (closed if it rolls back).
    in_transaction: AtomicBool,
    schema: SchemaRef,
    names: Vec<Option<String>>,
    statement: String,
    created: DateTime<Utc>,
    state: Arc<tokio::sync::Mutex<State>>,
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

/// Whether a motion re-fetches the current row (a count of 0).
fn refetch(motion: Motion) -> bool {
    matches!(
        motion,
        Motion::Forward(Some(0)) | Motion::Backward(Some(0)) | Motion::Relative(0)
    )
}

/// How a motion moves a cursor that reads forward only, from `position` (rows read so far;
/// `at_end`: a read found none left): rows to skip, then rows to return (`None`: all the
/// rest). What would need a step back fails with 55000, as on a PostgreSQL `NO SCROLL`
/// cursor; PostgreSQL allows the same forward-going uses of `ABSOLUTE` and `RELATIVE`.
fn plan_motion(motion: Motion, position: u64, at_end: bool) -> PgWireResult<(u64, Option<u64>)> {
    let on_row = position > 0 && !at_end;
    match motion {
        // Re-fetching the current row steps back onto it.
        _ if refetch(motion) && on_row => Err(backward()),
        _ if refetch(motion) => Ok((0, Some(0))),
        Motion::Forward(n) => Ok((0, n)),
        Motion::Backward(_) => Err(backward()),
        Motion::Absolute(n) if n > 0 && n.unsigned_abs() > position + u64::from(at_end) => {
            Ok((n.unsigned_abs() - position - 1, Some(1)))
        }
        // Rewinding a cursor that has not moved yet is a no-op.
        Motion::Absolute(0) if position == 0 && !at_end => Ok((0, Some(0))),
        Motion::Absolute(_) => Err(backward()),
        Motion::Relative(n) if n > 0 => Ok((n.unsigned_abs() - 1, Some(1))),
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

    /// Whether `motion` is `LAST` on a cursor declared without `[NO] SCROLL`: it reads to the
    /// end and answers the last row, which needs no rows kept.
    fn streamed_last(&self, motion: Motion) -> bool {
        self.scroll == Scroll::Unspecified && motion == Motion::Absolute(-1)
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
        let mut state = Arc::clone(&self.state).lock_owned().await;
        let encode = {
            let fields = Arc::clone(&fields);
            move |batch: PgWireResult<RecordBatch>| {
                let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> =
                    match batch {
                        Ok(batch) => encode_batch(&fields, batch, time_zone.as_ref()),
                        Err(e) => Box::new(std::iter::once(Err(e))),
                    };
                futures::stream::iter(rows)
            }
        };
        // The rows at hand (kept, or the last one), or how many to stream.
        let answer: Result<Vec<RecordBatch>, u64> = {
            let State { rows, kept } = &mut *state;
            if let Some(kept) = kept {
                let span = kept.scroll(rows, motion, &self.name).await?;
                Ok(kept.batches(span)?)
            } else if self.streamed_last(motion) {
                Ok(rows.last().await?.into_iter().collect())
            } else {
                let (skip, take) = plan_motion(motion, rows.position, rows.at_end)?;
                rows.skip(skip).await?;
                Err(take.unwrap_or(u64::MAX))
            }
        };
        let batches = match answer {
            Ok(batches) => batches,
            Err(remaining) => {
                // Stream the rows from the cursor's stream as the client reads them.
                let batches = futures::stream::unfold(
                    (state, remaining),
                    |(mut state, remaining)| async move {
                        if remaining == 0 {
                            return None;
                        }
                        match state.rows.next_slice(remaining).await {
                            Ok(Some(slice)) => {
                                let n = slice.num_rows() as u64;
                                Some((Ok(slice), (state, remaining - n)))
                            }
                            Ok(None) => None,
                            Err(e) => Some((Err(e), (state, 0))),
                        }
                    },
                );
                let guarded = session
                    .backend
                    .control
                    .guard(Box::pin(batches.map(encode).flatten()));
                let mut response = QueryResponse::new(fields, guarded);
                response.set_command_tag("FETCH");
                return Ok(Response::Query(response));
            }
        };
        let encoded = futures::stream::iter(batches.into_iter().map(Ok))
            .map(encode)
            .flatten();
        let guarded = session.backend.control.guard(Box::pin(encoded));
        let mut response = QueryResponse::new(fields, guarded);
        response.set_command_tag("FETCH");
        Ok(Response::Query(response))
    }

    /// MOVE: how many rows a FETCH with the same motion would have returned (PostgreSQL's
    /// count).
    async fn move_by(&self, motion: Motion) -> PgWireResult<usize> {
        let mut state = self.state.lock().await;
        let State { rows, kept } = &mut *state;
        if let Some(kept) = kept {
            let span = kept.scroll(rows, motion, &self.name).await?;
            return Ok(index(span.rows()));
        }
        if self.streamed_last(motion) {
            return Ok(usize::from(rows.last().await?.is_some()));
        }
        if refetch(motion) {
            // MOVE 0 does not move, so needs no step back: 1 on a row, else 0.
            return Ok(usize::from(rows.position > 0 && !rows.at_end));
        }
        let (skip, take) = plan_motion(motion, rows.position, rows.at_end)?;
        let moved = rows
            .skip(skip.saturating_add(take.unwrap_or(u64::MAX)))
            .await?;
        // PostgreSQL counts what a FETCH would have returned.
        let counted = if skip > 0 || matches!(motion, Motion::Absolute(_) | Motion::Relative(_)) {
            moved.saturating_sub(skip).min(1)
        } else {
            moved
        };
        Ok(index(counted))
    }
}

/// A connection's open cursors, by name.
pub(crate) struct Cursors {
    map: Mutex<HashMap<String, Arc<Cursor>>>,
    /// `pg.scroll_cursor_memory_mb`: the most a `SCROLL` cursor keeps.
    scroll_memory_mb: u64,
}

impl Cursors {
    pub(crate) fn new(scroll_memory_mb: u64) -> Self {
        Cursors {
            map: Mutex::default(),
            scroll_memory_mb,
        }
    }

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
                is_scrollable: c.scroll == Scroll::Yes,
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
        match parse(&SqlParser::new(), sql) {
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
        assert!(spec.binary && spec.hold && spec.scroll == Scroll::No);
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
            ("FETCH PRIOR c", Motion::Backward(Some(1)), true),
            ("FETCH -1 c", Motion::Backward(Some(1)), true),
            ("FETCH BACKWARD 4 c", Motion::Backward(Some(4)), true),
            ("FETCH BACKWARD -4 c", Motion::Forward(Some(4)), true),
            ("FETCH FORWARD -2 c", Motion::Backward(Some(2)), true),
            ("FETCH BACKWARD ALL c", Motion::Backward(None), true),
            ("FETCH BACKWARD c", Motion::Backward(Some(1)), true),
            ("FETCH BACKWARD 0 c", Motion::Forward(Some(0)), true),
            ("FETCH ABSOLUTE 3 c", Motion::Absolute(3), true),
            ("FETCH ABSOLUTE -3 c", Motion::Absolute(-3), true),
            ("FETCH RELATIVE -2 c", Motion::Relative(-2), true),
            ("FETCH FIRST c", Motion::Absolute(1), true),
            ("MOVE 10 IN c", Motion::Forward(Some(10)), false),
            ("MOVE LAST IN c", Motion::Absolute(-1), false),
            ("MOVE -1 FROM c", Motion::Backward(Some(1)), false),
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
        assert!(parse(&SqlParser::new(), "FETCH 1 FROM c extra").is_err());
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
        assert_eq!(
            plan_motion(Motion::Absolute(5), 2, false).unwrap(),
            (2, Some(1))
        );
        assert!(plan_motion(Motion::Absolute(2), 2, false).is_err());
        // After the end, PostgreSQL counts the position one past the last row.
        assert!(plan_motion(Motion::Absolute(3), 2, true).is_err());
        assert_eq!(
            plan_motion(Motion::Relative(3), 7, false).unwrap(),
            (2, Some(1))
        );
        assert!(plan_motion(Motion::Backward(Some(1)), 0, false).is_err());
        assert!(plan_motion(Motion::Absolute(-1), 0, false).is_err());
        // Re-fetching needs a step back only when on a row.
        assert!(plan_motion(Motion::Forward(Some(0)), 3, false).is_err());
        assert_eq!(
            plan_motion(Motion::Relative(0), 0, false).unwrap(),
            (0, Some(0))
        );
        assert_eq!(
            plan_motion(Motion::Forward(Some(0)), 3, true).unwrap(),
            (0, Some(0))
        );
        assert_eq!(
            plan_motion(Motion::Absolute(0), 0, false).unwrap(),
            (0, Some(0))
        );
        assert!(plan_motion(Motion::Absolute(0), 1, false).is_err());
    }

    /// A stream of the numbers 1..=7 in batches of 3 and 4.
    fn seven() -> Rows {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(v))])
                .map_err(Into::into)
        };
        let batches = vec![batch(vec![1, 2, 3]), batch(vec![4, 5, 6, 7])];
        Rows {
            stream: Some(Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                futures::stream::iter(batches),
            ))),
            pending: None,
            offset: 0,
            position: 0,
            at_end: false,
        }
    }

    fn numbers(batches: &[RecordBatch]) -> Vec<i64> {
        use datafusion::arrow::array::{Array, Int64Array};
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..column.len())
                    .map(|i| column.value(i))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// FETCH on a SCROLL cursor over seven rows: the rows, then the position, as PostgreSQL's
    /// DoPortalRunFetch leaves them.
    #[tokio::test]
    async fn scroll_cursor_positions_follow_postgresql() {
        let mut rows = seven();
        let mut kept = Kept::new(1);
        let steps: &[(&str, &[i64], u64)] = &[
            ("FETCH FORWARD 2 FROM c", &[1, 2], 2),
            ("FETCH PRIOR FROM c", &[1], 1),
            ("FETCH PRIOR FROM c", &[], 0),
            ("FETCH PRIOR FROM c", &[], 0),
            ("FETCH NEXT FROM c", &[1], 1),
            ("FETCH ABSOLUTE 5 FROM c", &[5], 5),
            ("FETCH BACKWARD 3 FROM c", &[4, 3, 2], 2),
            ("FETCH RELATIVE 0 FROM c", &[2], 2),
            ("FETCH 0 FROM c", &[2], 2),
            ("FETCH LAST FROM c", &[7], 7),
            ("FETCH NEXT FROM c", &[], 8),
            ("FETCH NEXT FROM c", &[], 8),
            ("FETCH 0 FROM c", &[], 8),
            ("FETCH PRIOR FROM c", &[7], 7),
            ("FETCH ALL FROM c", &[], 8),
            ("FETCH BACKWARD ALL FROM c", &[7, 6, 5, 4, 3, 2, 1], 0),
            ("FETCH RELATIVE 3 FROM c", &[3], 3),
            ("FETCH RELATIVE -2 FROM c", &[1], 1),
            ("FETCH RELATIVE -1 FROM c", &[], 0),
            ("FETCH ABSOLUTE -2 FROM c", &[6], 6),
            ("FETCH ABSOLUTE 10 FROM c", &[], 8),
            ("FETCH RELATIVE -1 FROM c", &[7], 7),
            ("FETCH ABSOLUTE -10 FROM c", &[], 0),
            ("FETCH BACKWARD 2 FROM c", &[], 0),
            ("FETCH FORWARD 7 FROM c", &[1, 2, 3, 4, 5, 6, 7], 7),
            ("FETCH -3 FROM c", &[6, 5, 4], 4),
            ("FETCH FORWARD 10 FROM c", &[5, 6, 7], 8),
            ("FETCH FIRST FROM c", &[1], 1),
            ("FETCH ABSOLUTE 0 FROM c", &[], 0),
        ];
        for &(sql, want, position) in steps {
            let CursorStatement::Fetch { motion, .. } = parse_text(sql) else {
                panic!("{sql}: not a fetch")
            };
            let span = kept.scroll(&mut rows, motion, "c").await.unwrap();
            let got = numbers(&kept.batches(span).unwrap());
            assert_eq!((got.as_slice(), kept.position), (want, position), "{sql}");
            assert_eq!(span.rows(), want.len() as u64, "{sql}");
        }
    }

    #[tokio::test]
    async fn scroll_cursor_memory_is_bounded() {
        let mut rows = seven();
        let mut kept = Kept::new(1);
        // Room for the first batch only.
        let first = kept.fill(&mut rows, 1, "c").await.unwrap();
        assert_eq!(first, 3);
        kept.limit = kept.bytes;
        let err = kept
            .scroll(&mut rows, Motion::Absolute(-1), "c")
            .await
            .unwrap_err();
        let PgWireError::UserError(info) = err else {
            panic!("{err:?}")
        };
        assert_eq!(info.code, sqlstate::PROGRAM_LIMIT_EXCEEDED);
        assert!(
            info.message.contains("SCROLL cursor \"c\""),
            "{}",
            info.message
        );
        // The rows kept can still be read; reading on fails again.
        let span = kept
            .scroll(&mut rows, Motion::Absolute(2), "c")
            .await
            .unwrap();
        assert_eq!(numbers(&kept.batches(span).unwrap()), [2]);
        assert!(
            kept.scroll(&mut rows, Motion::Forward(Some(5)), "c")
                .await
                .is_err()
        );
        assert_eq!(kept.position, 2);
    }
}
