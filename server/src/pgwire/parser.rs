//! SQL text to statements DataFusion can plan: sqlparser's PostgreSQL dialect, then
//! datafusion-pg-catalog's rewrite rules, in its order, with one exchanged.
//!
//! datafusion-pg-catalog's own `PostgresCompatibilityParser` does three things, and
//! LogSphere wants two of them, one of those changed:
//!
//! - its rewrite rules (`::regclass` casts, `OPERATOR(pg_catalog.~)`, `ANY(array)`, …) are
//!   public, and run here in the same order, except `RemoveSubqueryFromProjection`, which
//!   turns every correlated scalar subquery of a SELECT list into NULL, a wrong answer for
//!   any query DataFusion could have planned. [`ProjectionSubqueries`] takes its place: the
//!   subqueries stay, and planning decides (see [`super::projection_subqueries`]).
//! - it replaces whole client queries DataFusion cannot run (psql `\d`'s policies,
//!   statistics and publications, pgcli's and DBeaver's lookups) with an empty result of the
//!   same columns, `SELECT NULL::t AS c, … WHERE false`, matched by tokens in a table it
//!   keeps private. Those stubs are kept: the crate parses every text too, and where it
//!   made a statement such a stub, that statement is taken from it.
//! - it also replaces one fragment: Grafana's search-path subquery
//!   (`… IN (SELECT … string_to_array(current_setting('search_path'), ',') s)`) becomes
//!   `''`, so Grafana's table and column pickers never find a table on the search path.
//!   That is not a whole-statement stub, so it is not taken: LogSphere has
//!   `current_setting`, and the subquery runs (see [`super::subquery_fold`]).
//!
//! Tokens keep their positions here (the crate drops them), so a syntax error names its line
//! and column.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Statement, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_pg_catalog::sql::rules::{
    AliasDuplicatedProjectionRewrite, CurrentUserVariableToSessionUserFunctionCall,
    FixArrayLiteral, FixVersionColumnName, PrependUnqualifiedPgTableName,
    ResolveUnqualifiedIdentifier, RewriteArrayAnyAllOperation, RewritePgCatalogOperator,
    RewriteRegCastToSubquery, SqlStatementRewriteRule, StripCallableQualifier, StripCollate,
};

use super::projection_subqueries::ProjectionSubqueries;

/// Parses PostgreSQL SQL into statements for DataFusion (see the module docs).
#[derive(Debug)]
pub(crate) struct SqlParser {
    /// datafusion-pg-catalog's parser, for its whole-query stubs.
    stubs: PostgresCompatibilityParser,
    rules: Vec<Arc<dyn SqlStatementRewriteRule>>,
}

impl SqlParser {
    /// datafusion-pg-catalog's rules and stubs, with [`ProjectionSubqueries`] for its NULLs.
    pub(crate) fn new() -> Self {
        // datafusion-pg-catalog 0.19's `PostgresCompatibilityParser::new` list, in its order,
        // with `ProjectionSubqueries` where `RemoveSubqueryFromProjection` was. The
        // `rewrites_as_datafusion_pg_catalog_does` test notices when an upgrade changes that
        // list.
        let rules: Vec<Arc<dyn SqlStatementRewriteRule>> = vec![
            Arc::new(AliasDuplicatedProjectionRewrite),
            Arc::new(ResolveUnqualifiedIdentifier),
            Arc::new(RewriteArrayAnyAllOperation),
            Arc::new(PrependUnqualifiedPgTableName),
            Arc::new(StripCallableQualifier),
            Arc::new(FixArrayLiteral),
            Arc::new(CurrentUserVariableToSessionUserFunctionCall),
            Arc::new(StripCollate),
            Arc::new(RewritePgCatalogOperator),
            Arc::new(RewriteRegCastToSubquery::new()),
            Arc::new(ProjectionSubqueries),
            Arc::new(FixVersionColumnName),
        ];
        Self {
            stubs: PostgresCompatibilityParser::new(),
            rules,
        }
    }

    /// The statements of `sql`, rewritten; none for an empty or comment-only text.
    pub(crate) fn parse(&self, sql: &str) -> Result<Vec<Statement>, ParserError> {
        let own = self.parse_rewritten(sql);
        let Ok(stubbed) = self.stubs.parse(sql) else {
            return own;
        };
        if !stubbed.iter().any(is_empty_stub) {
            return own;
        }
        match own {
            Ok(own) if own.len() == stubbed.len() => Ok(own
                .into_iter()
                .zip(stubbed)
                .map(|(own, stub)| if is_empty_stub(&stub) { stub } else { own })
                .collect()),
            // A stub that swallowed a statement separator, or text only the substitution
            // made parseable: the crate's statements, as before.
            _ => Ok(stubbed),
        }
    }

    fn parse_rewritten(&self, sql: &str) -> Result<Vec<Statement>, ParserError> {
        let dialect = PostgreSqlDialect {};
        let tokens = Parser::new(&dialect)
            .try_with_sql(sql)?
            .into_tokens()
            .into_iter()
            .map(|mut t| {
                // PostgreSQL's `ABORT` is `ROLLBACK`; sqlparser does not know the statement.
                if matches!(&t.token, Token::Word(w) if w.keyword == Keyword::ABORT) {
                    t.token = Token::make_keyword("ROLLBACK");
                }
                t
            })
            .collect();
        let statements = Parser::new(&dialect)
            .with_tokens_with_locations(tokens)
            .parse_statements()?;
        Ok(statements
            .into_iter()
            .map(|s| self.rules.iter().fold(s, |s, rule| rule.rewrite(s)))
            .collect())
    }
}

/// Whether `statement` is one of datafusion-pg-catalog's replacements of a whole query:
/// `SELECT NULL::t AS c, … WHERE false`.
fn is_empty_stub(statement: &Statement) -> bool {
    let Statement::Query(query) = statement else {
        return false;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let never =
        matches!(&select.selection, Some(Expr::Value(v)) if v.value == Value::Boolean(false));
    let null_columns = !select.projection.is_empty()
        && select.projection.iter().all(|item| {
            matches!(item, SelectItem::ExprWithAlias { expr: Expr::Cast { expr, .. }, .. }
                if matches!(expr.as_ref(), Expr::Value(v) if v.value == Value::Null))
        });
    never && null_columns && select.from.is_empty()
}

#[cfg(test)]
mod tests;
