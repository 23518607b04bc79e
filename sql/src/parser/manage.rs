//! The management statements: `SHOW`, `DROP`, `ALTER`, `EXPLAIN` and `BACKTEST` of
//! continuous queries.

use datafusion::sql::sqlparser::ast::Expr;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{DIALECT, LogSphereParser};
use crate::ast::{AlterAction, CqTarget, ShowFilter, Statement};
use crate::detect::word;
use crate::error::ParseError;

/// How to avoid the one ambiguity of `BACKTEST CREATE …`: a body without its own FROM.
const BACKTEST_HINT: &str = "in BACKTEST, the range follows the body: BACKTEST CREATE CONTINUOUS QUERY … AS SELECT … \
                             FROM logs … FROM <start> TO <end>; if the body has no FROM of its own, wrap the \
                             definition in parentheses: BACKTEST (CREATE CONTINUOUS QUERY …) FROM <start> TO <end>";

impl LogSphereParser<'_> {
    /// `SHOW CONTINUOUS QUERIES …`, `SHOW CREATE CONTINUOUS QUERY …`, `SHOW ALERTS …`.
    pub(super) fn parse_show(&mut self) -> Result<Statement, ParseError> {
        self.expect_words(&["SHOW"])?;
        if self.parse_word("ALERTS") {
            let cq = if self.p().parse_keyword(Keyword::FOR) {
                Some(self.parse_name()?)
            } else {
                None
            };
            let filter = if self.p().parse_keyword(Keyword::WHERE) {
                Some(self.parse_expr()?)
            } else {
                None
            };
            return Ok(Statement::ShowAlerts {
                cq,
                filter: filter.map(Box::new),
            });
        }
        if self.parse_word("CREATE") {
            self.expect_words(&["CONTINUOUS", "QUERY"])?;
            return Ok(Statement::ShowCreateContinuousQuery {
                name: self.parse_name()?,
            });
        }
        self.expect_words(&["CONTINUOUS", "QUERIES"])?;
        let filter = if self.p().parse_keyword(Keyword::LIKE) {
            Some(ShowFilter::Like(
                self.parse_string("a quoted pattern after LIKE")?,
            ))
        } else if self.p().parse_keyword(Keyword::WHERE) {
            Some(ShowFilter::Where(Box::new(self.parse_expr()?)))
        } else {
            None
        };
        Ok(Statement::ShowContinuousQueries { filter })
    }

    /// `DROP CONTINUOUS QUERY [IF EXISTS] name`.
    pub(super) fn parse_drop(&mut self) -> Result<Statement, ParseError> {
        self.expect_words(&["DROP", "CONTINUOUS", "QUERY"])?;
        let if_exists = self.parse_if_exists();
        Ok(Statement::DropContinuousQuery {
            name: self.parse_name()?,
            if_exists,
        })
    }

    /// `ALTER CONTINUOUS QUERY name PAUSE | RESUME`.
    pub(super) fn parse_alter(&mut self) -> Result<Statement, ParseError> {
        self.expect_words(&["ALTER", "CONTINUOUS", "QUERY"])?;
        let name = self.parse_name()?;
        let action = if self.parse_word("PAUSE") {
            AlterAction::Pause
        } else if self.parse_word("RESUME") {
            AlterAction::Resume
        } else {
            let found = self.peek();
            return Err(match word(&found.token).as_deref() {
                Some(later @ ("SET" | "RENAME" | "SILENCE" | "UNSILENCE")) => ParseError::at(
                    found.span.start,
                    format!(
                        "ALTER CONTINUOUS QUERY … {later} is not supported in v1; supported: PAUSE, RESUME"
                    ),
                ),
                _ => self.expected("PAUSE or RESUME", found),
            });
        };
        Ok(Statement::AlterContinuousQuery { name, action })
    }

    /// `EXPLAIN CONTINUOUS QUERY name` or `EXPLAIN CREATE CONTINUOUS QUERY …`.
    pub(super) fn parse_explain(&mut self) -> Result<Statement, ParseError> {
        self.expect_words(&["EXPLAIN"])?;
        if self.peek_word("ANALYZE") {
            return Err(ParseError::at(
                self.here(),
                "EXPLAIN ANALYZE of a continuous query is not supported in v1; use EXPLAIN",
            ));
        }
        Ok(Statement::ExplainContinuousQuery(self.parse_target()?))
    }

    /// `BACKTEST ( CONTINUOUS QUERY name | create_cq | '(' create_cq ')' ) FROM expr TO expr`.
    ///
    /// An inline definition's body ends where its own SELECT ends: the body's FROM (every
    /// continuous query reads a table) comes first, so the next FROM starts the range.
    pub(super) fn parse_backtest(&mut self) -> Result<Statement, ParseError> {
        self.expect_words(&["BACKTEST"])?;
        let inline = self.peek_word("CREATE");
        let target = if self.p().consume_token(&Token::LParen) {
            let target = CqTarget::Create(Box::new(self.parse_create_cq()?));
            self.expect_token(Token::RParen)?;
            target
        } else {
            self.parse_target()
                .map_err(|e| if inline { with_hint(e) } else { e })?
        };
        if !self.p().parse_keyword(Keyword::FROM) {
            let err = self.expected(
                "FROM <start> TO <end> after the continuous query",
                self.peek(),
            );
            return Err(if inline { with_hint(err) } else { err });
        }
        let from = self.parse_range_start()?;
        let to = self.parse_expr()?;
        Ok(Statement::Backtest {
            target,
            from: Box::new(from),
            to: Box::new(to),
        })
    }

    /// The `<start> TO` of `FROM <start> TO <end>`, with `TO` consumed.
    ///
    /// sqlparser reads `INTERVAL '7 days' TO now` as one range interval (`DAY TO SECOND`
    /// syntax, even with no leading unit), so `FROM now() - INTERVAL '7 days' TO now()`
    /// cannot go to `parse_expr` whole. The start is parsed alone, from the tokens before
    /// the first `TO` outside parentheses.
    fn parse_range_start(&mut self) -> Result<Expr, ParseError> {
        let start = self.p().index();
        let mut depth = 0usize;
        let mut to_at = None;
        for i in start.. {
            match &self.df.parser.token_at(i).token {
                Token::EOF => break,
                Token::SemiColon if depth == 0 => break,
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                token if depth == 0 && word(token).as_deref() == Some("TO") => {
                    to_at = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(to_at) = to_at else {
            self.parse_expr()?;
            return Err(self.expected("TO <end> after BACKTEST … FROM <start>", self.peek()));
        };
        let tokens = (start..to_at)
            .map(|i| self.df.parser.token_at(i).clone())
            .collect();
        let mut range = Parser::new(&DIALECT).with_tokens_with_locations(tokens);
        let from = range.parse_expr()?;
        if range.peek_token_ref().token != Token::EOF {
            return Err(self.expected(
                "TO <end> after BACKTEST … FROM <start>",
                range.peek_token_ref(),
            ));
        }
        while self.p().index() <= to_at {
            self.p().next_token();
        }
        Ok(from)
    }

    /// `CONTINUOUS QUERY name` or an inline `CREATE CONTINUOUS QUERY …`.
    fn parse_target(&mut self) -> Result<CqTarget, ParseError> {
        if self.peek_word("CREATE") {
            return Ok(CqTarget::Create(Box::new(self.parse_create_cq()?)));
        }
        if !self.parse_words(&["CONTINUOUS", "QUERY"]) {
            return Err(self.expected(
                "CONTINUOUS QUERY <name> or CREATE CONTINUOUS QUERY …",
                self.peek(),
            ));
        }
        Ok(CqTarget::Name(self.parse_name()?))
    }
}

fn with_hint(mut err: ParseError) -> ParseError {
    err.message = format!("{} ({BACKTEST_HINT})", err.message);
    err
}
