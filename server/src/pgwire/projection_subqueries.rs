//! Scalar subqueries that are whole SELECT-list items, correlated or not:
//! `SELECT l.source, (SELECT count(*) FROM dead_letters d WHERE d.reason = l.message) FROM
//! logs l`, pgAdmin's `(SELECT count(*) FROM pg_trigger WHERE tgrelid = rel.oid …) AS
//! triggercount`.
//!
//! datafusion-pg-catalog's `RemoveSubqueryFromProjection` replaces every one of them it takes
//! for correlated with NULL, before DataFusion sees it: a silent wrong answer wherever
//! DataFusion would have planned it, and it does plan the common shapes (an aggregate over
//! equality conditions becomes a join, its `ScalarSubqueryToJoin`). LogSphere parses with
//! [`ProjectionSubqueries`] in its place (see [`super::parser`]), which keeps them, and
//! [`settle`] decides at planning time, when DataFusion has had its say:
//!
//! - DataFusion decorrelates the subquery: its value, as in PostgreSQL.
//! - It cannot, and the statement reads only the catalog (`pg_catalog`,
//!   `information_schema`): the NULL datafusion-pg-catalog gave. Tools' catalog queries
//!   (pgAdmin's, DBeaver's, psql's) rely on getting an answer, and a NULL count or flag only
//!   changes an icon or a menu there.
//! - It cannot, and the statement reads LogSphere's data: `0A000` (feature_not_supported)
//!   naming the subquery, rather than a column of NULLs that looks like an answer.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr as PlanExpr, LogicalPlan};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    Expr, LimitClause, Query, Select, SelectItem, SetExpr, Statement, TableFactor, Value, Visit,
    VisitMut, Visitor, VisitorMut,
};
use datafusion_pg_catalog::sql::rules::{RemoveSubqueryFromProjection, SqlStatementRewriteRule};
use pgwire::error::PgWireResult;

use super::errors::{self, sqlstate, user_error};
use super::pg_compat::{AGGREGATES, last_name};

/// Schemas of the catalog: what tools read to list and describe objects, never user data.
const CATALOG_SCHEMAS: &[&str] = &[
    "pg_catalog",
    "information_schema",
    super::info_schema::SCHEMA,
];

/// datafusion-pg-catalog's `RemoveSubqueryFromProjection` without the NULLs. A SELECT-list
/// subquery that reads nothing of the outer query gets `LIMIT 1` when it has no limit, as
/// there. One that does stays for DataFusion to decorrelate, without a `LIMIT` that cannot
/// change its one row: an aggregate without GROUP BY gives one row anyway, and DataFusion
/// does not decorrelate a subquery with a LIMIT (pgAdmin: `(SELECT count(1) FROM pg_inherits
/// WHERE inhrelid = rel.oid LIMIT 1)`).
#[derive(Debug)]
pub(crate) struct ProjectionSubqueries;

impl SqlStatementRewriteRule for ProjectionSubqueries {
    fn rewrite(&self, mut statement: Statement) -> Statement {
        let _ = VisitMut::visit(&mut statement, &mut SelectListSubqueries);
        statement
    }
}

struct SelectListSubqueries;

impl VisitorMut for SelectListSubqueries {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        for item in &mut select.projection {
            let (SelectItem::UnnamedExpr(Expr::Subquery(subquery))
            | SelectItem::ExprWithAlias {
                expr: Expr::Subquery(subquery),
                ..
            }) = item
            else {
                continue;
            };
            if reads_outer_query(subquery) {
                drop_redundant_limit(subquery);
            } else if subquery.limit_clause.is_none() && subquery.fetch.is_none() {
                subquery.limit_clause = Some(LimitClause::LimitOffset {
                    limit: Some(Expr::value(Value::Number("1".to_owned(), false))),
                    offset: None,
                    limit_by: Vec::new(),
                });
            }
        }
        ControlFlow::Continue(())
    }
}

/// Whether a qualified column of `query` names a relation none of its own FROM lists bind
/// (an alias, or a table's own name). Unqualified columns cannot be told apart without the
/// schema and count as its own, as datafusion-pg-catalog counts them.
fn reads_outer_query(query: &Query) -> bool {
    if !matches!(query.body.as_ref(), SetExpr::Select(_)) {
        return false;
    }
    let mut bound = BoundNames(HashSet::new());
    let _ = query.visit(&mut bound);
    let mut outer = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(query, |e| {
        if let Expr::CompoundIdentifier(parts) = e
            && parts.len() >= 2
            && !bound
                .0
                .contains(&parts[parts.len() - 2].value.to_ascii_lowercase())
        {
            outer = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    outer
}

/// The names the FROM lists of a query and of its subqueries bind.
struct BoundNames(HashSet<String>);

impl Visitor for BoundNames {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let (name, alias) = match factor {
            TableFactor::Table { name, alias, .. } | TableFactor::Function { name, alias, .. } => {
                (Some(name), alias)
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::TableFunction { alias, .. } => (None, alias),
            _ => (None, &None),
        };
        if let Some(alias) = alias {
            self.0.insert(alias.name.value.to_ascii_lowercase());
        } else if let Some(name) = name {
            self.0.insert(last_name(name));
        }
        ControlFlow::Continue(())
    }
}

/// Removes `LIMIT n` (n ≥ 1, no OFFSET) from an aggregate query without GROUP BY, which gives
/// at most one row with or without it.
fn drop_redundant_limit(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return;
    };
    if query.fetch.is_some() || !is_ungrouped_aggregate(select) {
        return;
    }
    let Some(LimitClause::LimitOffset {
        limit: Some(Expr::Value(limit)),
        offset: None,
        limit_by,
    }) = &query.limit_clause
    else {
        return;
    };
    let at_least_one =
        matches!(&limit.value, Value::Number(n, _) if n.parse::<u64>().is_ok_and(|n| n >= 1));
    if at_least_one && limit_by.is_empty() {
        query.limit_clause = None;
    }
}

/// `SELECT count(…), … FROM … [WHERE …]`: no GROUP BY, and an aggregate in the SELECT list.
fn is_ungrouped_aggregate(select: &Select) -> bool {
    let ungrouped = match &select.group_by {
        datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(exprs, modifiers) => {
            exprs.is_empty() && modifiers.is_empty()
        }
        datafusion::sql::sqlparser::ast::GroupByExpr::All(_) => false,
    };
    let mut aggregated = false;
    for item in &select.projection {
        let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item else {
            continue;
        };
        let _ = datafusion::sql::sqlparser::ast::visit_expressions(e, |e| {
            if let Expr::Function(f) = e
                && f.over.is_none()
                && AGGREGATES.contains(&last_name(&f.name).as_str())
            {
                aggregated = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
    }
    ungrouped && aggregated
}

/// The plan of `statement` (planned as `plan`), settled for its SELECT-list subqueries as
/// the module docs say: `plan` itself when DataFusion decorrelates them (or there are none to
/// decorrelate), else the plan with them NULL for a catalog query, else `0A000`.
pub(crate) async fn settle(
    state: &SessionState,
    statement: &Statement,
    plan: LogicalPlan,
) -> PgWireResult<LogicalPlan> {
    // What datafusion-pg-catalog would have made NULL; nothing to settle if that is nothing.
    let nulled = RemoveSubqueryFromProjection.rewrite(statement.clone());
    if nulled == *statement {
        return Ok(plan);
    }
    let reason = match state.optimize(&plan) {
        Ok(optimized) if !has_correlated_subquery(&optimized) => return Ok(plan),
        Ok(_) => "DataFusion cannot decorrelate it".to_owned(),
        Err(e) => e.find_root().message().into_owned(),
    };
    if reads_only_catalog(state, &plan) {
        tracing::debug!(%reason, "a SELECT-list subquery of a catalog query reads NULL");
        return state
            .statement_to_plan(DFStatement::Statement(Box::new(nulled)))
            .await
            .map_err(|e| errors::datafusion_error(&e));
    }
    Err(user_error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "a correlated subquery in the SELECT list cannot be planned: {reason}. DataFusion \
             plans an aggregate over equality conditions, such as (SELECT count(*) FROM t \
             WHERE t.k = outer.k); otherwise join and GROUP BY"
        ),
    ))
}

/// Whether a correlated scalar subquery is left in an optimized plan: DataFusion could not
/// turn it into a join, and its physical planner refuses it (it runs uncorrelated ones
/// itself, before the query).
fn has_correlated_subquery(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                found = matches!(e, PlanExpr::ScalarSubquery(s) if !s.outer_ref_columns.is_empty());
                Ok(if found {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            })
        })
    });
    found
}

/// Whether `plan` reads tables, and none of LogSphere's own: every table it scans is in
/// [`CATALOG_SCHEMAS`], or in no schema (a catalog view's inner scan names its table bare).
fn reads_only_catalog(state: &SessionState, plan: &LogicalPlan) -> bool {
    let defaults = &state.config_options().catalog;
    let catalogs = state.catalog_list();
    let (mut scans, mut data) = (0, 0);
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scans += 1;
            let table = scan
                .table_name
                .clone()
                .resolve(&defaults.default_catalog, &defaults.default_schema);
            let in_catalog = CATALOG_SCHEMAS.contains(&table.schema.as_ref());
            let exists = catalogs
                .catalog(&table.catalog)
                .and_then(|c| c.schema(&table.schema))
                .is_some_and(|s| s.table_exist(&table.table));
            if !in_catalog && exists {
                data += 1;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    scans > 0 && data == 0
}

#[cfg(test)]
mod tests;
