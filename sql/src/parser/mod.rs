//! The wrapper parser: one sqlparser [`Parser`] (inside DataFusion's [`DFParser`]) over one
//! tokenization, LogSphere's statements parsed here and everything else handed to
//! DataFusion unchanged.
//!
//! The same pattern as DataFusion's `DFParser` and GreptimeDB's `ParserContext`: a
//! sqlparser `Dialect` hook cannot return new AST nodes, and a text pre-parser would lose
//! token positions.

mod alert;
mod create;
mod manage;

use datafusion::sql::parser::{DFParser, DFParserBuilder};
use datafusion::sql::sqlparser::ast::{Expr, Ident, ObjectName};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::ast::Statement;
use crate::detect::{LEAD_WORDS, is_logsphere_lead, lead_words, word};
use crate::error::ParseError;

/// LogSphere speaks PostgreSQL on the wire, so it parses with the PostgreSQL dialect.
pub(crate) static DIALECT: PostgreSqlDialect = PostgreSqlDialect {};

/// Parses `sql` (one or more `;`-separated statements) into LogSphere statements, with
/// every statement that is not LogSphere's passed through as DataFusion parsed it.
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, ParseError> {
    let mut parser = LogSphereParser::new(sql)?;
    parser.parse_statements().map_err(|mut err| {
        // sqlparser's EOF token has no position; the end of the text is where it is.
        if err.line == 0 && err.message.ends_with("found: EOF") {
            (err.line, err.column) = parser.source.end();
        }
        err
    })
}

/// The wrapper parser over one SQL text.
pub(crate) struct LogSphereParser<'a> {
    df: DFParser<'static>,
    source: Source<'a>,
}

impl<'a> LogSphereParser<'a> {
    fn new(sql: &'a str) -> Result<Self, ParseError> {
        let tokens = Tokenizer::new(&DIALECT, sql)
            .tokenize_with_location()
            .map_err(|e| ParseError::at(e.location, e.message))?;
        let df = DFParserBuilder::new(tokens)
            .with_dialect(&DIALECT)
            .build()?;
        Ok(Self {
            df,
            source: Source::new(sql),
        })
    }

    fn parse_statements(&mut self) -> Result<Vec<Statement>, ParseError> {
        let mut statements = Vec::new();
        let mut expecting_delimiter = false;
        loop {
            while self.p().consume_token(&Token::SemiColon) {
                expecting_delimiter = false;
            }
            if self.peek().token == Token::EOF {
                return Ok(statements);
            }
            if expecting_delimiter {
                return Err(self.expected("end of statement (;)", self.peek()));
            }
            statements.push(self.parse_statement()?);
            expecting_delimiter = true;
        }
    }

    fn parse_statement(&mut self) -> Result<Statement, ParseError> {
        let parser = &self.df.parser;
        let lead = lead_words((0..LEAD_WORDS).map(|n| &parser.peek_nth_token_ref(n).token));
        if !is_logsphere_lead(&lead) {
            return Ok(Statement::DataFusion(Box::new(self.df.parse_statement()?)));
        }
        match lead[0].as_str() {
            "CREATE" => Ok(Statement::CreateContinuousQuery(Box::new(
                self.parse_create_cq()?,
            ))),
            "SHOW" => self.parse_show(),
            "DROP" => self.parse_drop(),
            "ALTER" => self.parse_alter(),
            "EXPLAIN" => self.parse_explain(),
            "BACKTEST" => self.parse_backtest(),
            _ => unreachable!("is_logsphere_lead accepted {lead:?}"),
        }
    }

    // --- token helpers -------------------------------------------------------------------

    fn p(&mut self) -> &mut Parser<'static> {
        &mut self.df.parser
    }

    fn peek(&self) -> &TokenWithSpan {
        self.df.parser.peek_token_ref()
    }

    /// Whether the next token is the unquoted word `w` (keyword or not; `w` upper-case).
    fn peek_word(&self, w: &str) -> bool {
        word(&self.peek().token).is_some_and(|found| found == w)
    }

    /// Consumes the unquoted word `w` if it is next.
    fn parse_word(&mut self, w: &str) -> bool {
        let found = self.peek_word(w);
        if found {
            self.p().next_token();
        }
        found
    }

    /// Consumes the words `ws` if all of them come next, else nothing.
    fn parse_words(&mut self, ws: &[&str]) -> bool {
        let all = ws.iter().enumerate().all(|(n, w)| {
            word(&self.df.parser.peek_nth_token_ref(n).token).is_some_and(|f| f == *w)
        });
        if all {
            for _ in ws {
                self.p().next_token();
            }
        }
        all
    }

    /// Consumes the words `ws`, or fails naming the whole phrase.
    fn expect_words(&mut self, ws: &[&str]) -> Result<(), ParseError> {
        for w in ws {
            if !self.parse_word(w) {
                return Err(self.expected(&ws.join(" "), self.peek()));
            }
        }
        Ok(())
    }

    fn expect_token(&mut self, token: Token) -> Result<(), ParseError> {
        if self.p().consume_token(&token) {
            Ok(())
        } else {
            Err(self.expected(&token.to_string(), self.peek()))
        }
    }

    /// `Expected: {what}, found: {token}` at the token.
    fn expected(&self, what: &str, found: &TokenWithSpan) -> ParseError {
        ParseError::at(
            found.span.start,
            format!("Expected: {what}, found: {found}"),
        )
    }

    /// Where the next token starts.
    fn here(&self) -> Location {
        self.peek().span.start
    }

    /// Where the last consumed non-whitespace token ends.
    fn last_end(&self) -> Location {
        let parser = &self.df.parser;
        (0..parser.index())
            .rev()
            .map(|i| parser.token_at(i))
            .find(|t| !matches!(t.token, Token::Whitespace(_)))
            .map_or(Location { line: 1, column: 1 }, |t| t.span.end)
    }

    fn parse_name(&mut self) -> Result<ObjectName, ParseError> {
        Ok(self.p().parse_object_name(false)?)
    }

    fn parse_expr(&mut self) -> Result<Expr, ParseError> {
        Ok(self.p().parse_expr()?)
    }

    fn parse_string(&mut self, what: &str) -> Result<String, ParseError> {
        match &self.peek().token {
            Token::SingleQuotedString(_) => Ok(self.p().parse_literal_string()?),
            _ => Err(self.expected(what, self.peek())),
        }
    }

    /// An identifier, keywords included (`timestamp`, `source`, …).
    fn parse_ident(&mut self) -> Result<Ident, ParseError> {
        Ok(self.p().parse_identifier()?)
    }

    /// `IF EXISTS`.
    fn parse_if_exists(&mut self) -> bool {
        self.p().parse_keywords(&[Keyword::IF, Keyword::EXISTS])
    }
}

/// The SQL text, for turning token locations back into slices.
struct Source<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, line_starts }
    }

    /// Byte offset of a tokenizer location (1-based line, 1-based column in characters).
    fn offset(&self, location: Location) -> usize {
        let Some(&line_start) = usize::try_from(location.line)
            .ok()
            .and_then(|l| self.line_starts.get(l.wrapping_sub(1)))
        else {
            return self.text.len();
        };
        let column = usize::try_from(location.column.saturating_sub(1)).unwrap_or(usize::MAX);
        self.text[line_start..]
            .char_indices()
            .nth(column)
            .map_or(self.text.len(), |(i, _)| line_start + i)
    }

    /// The (line, column) just past the last character.
    fn end(&self) -> (u64, u64) {
        let last_line = self.line_starts.last().copied().unwrap_or(0);
        (
            self.line_starts.len() as u64,
            self.text[last_line..].chars().count() as u64 + 1,
        )
    }

    /// The text from `start` (inclusive) to `end` (exclusive).
    fn slice(&self, start: Location, end: Location) -> String {
        let (start, end) = (self.offset(start), self.offset(end));
        self.text
            .get(start..end.max(start))
            .unwrap_or_default()
            .to_owned()
    }
}
