//! Uncorrelated `IN (SELECT …)`, `NOT IN (SELECT …)` and `EXISTS (SELECT …)` where
//! DataFusion cannot plan them: run first, and replaced by their values.
//!
//! DataFusion turns such a subquery into a join only as a condition of a WHERE or HAVING; in
//! a SELECT list, an ORDER BY, an aggregate's FILTER or a join condition its physical planner
//! refuses it ("Physical plan does not support logical expression InSubquery"). Grafana's
//! table picker asks `CASE WHEN quote_ident(table_schema) IN (SELECT … FROM
//! generate_series(…) AS i, string_to_array(current_setting('search_path'), ',') s) THEN …`
//! in its SELECT list and ORDER BY. PostgreSQL runs an uncorrelated subquery once per
//! execution (an InitPlan) and so does this:
//!
//! - Which: every `IN`/`NOT IN`/`EXISTS` subquery whose plan reads nothing of the outer query
//!   (no outer reference anywhere in it), except a top-level AND-condition of a WHERE or
//!   HAVING, which DataFusion plans as a semi- or anti-join with no limit on its size.
//!   Correlated ones are left as they are.
//! - When: at each execution, on the plan with its parameters bound, never at Parse. A
//!   prepared statement (extended protocol: Parse once, Execute many times) sees at every
//!   Execute the rows, the catalog and the settings (`search_path`) of that moment, as in
//!   PostgreSQL, so nothing folded can go stale, whatever the subquery reads; a parameter
//!   inside the subquery is a value by then. Describe needs no fold: the expression's type is
//!   boolean either way. The subquery runs on the query runtime, under the statement's cancel
//!   and `statement_timeout`, before the main query starts.
//! - How many: at most [`MAX_VALUES`] rows; a subquery that gives more is left as it is (it
//!   still plans where DataFusion can, and fails as before where it cannot).
//! - NULLs: `x IN (a, b, NULL)` keeps SQL's three-valued logic, in DataFusion as in
//!   PostgreSQL: when `x` matches no value it is NULL, not false, so `x NOT IN (…)` with a NULL
//!   in the result is never true. An empty result makes `x IN (…)` false and `x NOT IN (…)`
//!   true, even for a NULL `x`, as PostgreSQL answers.

use std::collections::HashSet;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::expr::{Exists, InList, InSubquery, Placeholder};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Subquery, lit};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use pgwire::error::PgWireResult;

use super::errors;

/// The most rows an `IN` subquery may give to be folded into a list.
pub(crate) const MAX_VALUES: usize = 10_000;

/// Stands for the `n`-th folded expression between finding it and replacing it.
const MARKER: &str = "$logsphere_subquery_";

/// `plan` with its foldable subqueries (see the module docs) run and replaced by their
/// values.
pub(crate) async fn fold(ctx: &SessionContext, plan: LogicalPlan) -> PgWireResult<LogicalPlan> {
    if !has_subquery_predicate(&plan) {
        return Ok(plan);
    }
    let mut found = Vec::new();
    let marked = mark(plan, &mut found).map_err(|e| errors::datafusion_error(&e))?;
    if found.is_empty() {
        return Ok(marked);
    }
    let mut values = Vec::with_capacity(found.len());
    for expr in found {
        values.push(Box::pin(evaluate(ctx, expr)).await?);
    }
    replace_markers(marked, values).map_err(|e| errors::datafusion_error(&e))
}

/// Whether any expression of `plan` (or of its subqueries) is an `IN`/`EXISTS` subquery.
pub(crate) fn has_subquery_predicate(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                found = matches!(e, Expr::InSubquery(_) | Expr::Exists(_));
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

/// Replaces each foldable subquery expression by a marker, pushing the expression to
/// `found`; the marker's number is its index there.
fn mark(plan: LogicalPlan, found: &mut Vec<Expr>) -> Result<LogicalPlan> {
    plan.transform_down_with_subqueries(|node| {
        let names = NamePreserver::new(&node);
        let is_filter = matches!(node, LogicalPlan::Filter(_));
        node.map_expressions(|e| {
            let name = names.save(&e);
            let marked = if is_filter {
                mark_conditions(e, found)?
            } else {
                mark_expr(e, found)?
            };
            Ok(marked.update_data(|e| name.restore(e)))
        })
    })
    .map(|t| t.data)
}

/// A WHERE or HAVING condition: its top-level AND-conditions that are subquery predicates
/// stay for DataFusion's joins; everything else is marked.
fn mark_conditions(predicate: Expr, found: &mut Vec<Expr>) -> Result<Transformed<Expr>> {
    let mut changed = false;
    let mut conditions = Vec::new();
    for condition in split_conjunction_owned(predicate.clone()) {
        if is_subquery_predicate(&condition) {
            conditions.push(condition);
            continue;
        }
        let marked = mark_expr(condition, found)?;
        changed |= marked.transformed;
        conditions.push(marked.data);
    }
    match conjunction(conditions) {
        Some(rebuilt) if changed => Ok(Transformed::yes(rebuilt)),
        _ => Ok(Transformed::no(predicate)),
    }
}

/// What DataFusion decorrelates as a condition of a filter.
fn is_subquery_predicate(e: &Expr) -> bool {
    match e {
        Expr::InSubquery(_) | Expr::Exists(_) => true,
        Expr::Not(inner) => matches!(inner.as_ref(), Expr::InSubquery(_) | Expr::Exists(_)),
        _ => false,
    }
}

fn mark_expr(e: Expr, found: &mut Vec<Expr>) -> Result<Transformed<Expr>> {
    e.transform_down(|e| {
        let foldable = match &e {
            Expr::InSubquery(InSubquery { subquery, .. })
            | Expr::Exists(Exists { subquery, .. }) => stands_alone(subquery),
            _ => false,
        };
        if !foldable {
            return Ok(Transformed::no(e));
        }
        let marker = Expr::Placeholder(Placeholder::new_with_field(
            format!("{MARKER}{}", found.len()),
            None,
        ));
        found.push(e);
        Ok(Transformed::new(marker, true, TreeNodeRecursion::Jump))
    })
}

/// Whether `subquery` can run on its own: no reference to an outer query and no unbound
/// parameter anywhere in it.
fn stands_alone(subquery: &Subquery) -> bool {
    if !subquery.outer_ref_columns.is_empty() {
        return false;
    }
    let mut alone = true;
    let _ = subquery.subquery.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if matches!(e, Expr::OuterReferenceColumn(..) | Expr::Placeholder(_)) {
                    alone = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if alone {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    alone
}

/// The value of a marked expression: its subquery run, or the expression itself when the
/// subquery gives more than [`MAX_VALUES`] rows.
async fn evaluate(ctx: &SessionContext, expr: Expr) -> PgWireResult<Expr> {
    match expr {
        Expr::Exists(Exists { subquery, negated }) => {
            let rows = run(ctx, &subquery, 1).await?;
            let any = rows.iter().any(|b| b.num_rows() > 0);
            Ok(lit(any != negated))
        }
        Expr::InSubquery(InSubquery {
            expr: probe,
            subquery,
            negated,
        }) => {
            let batches = run(ctx, &subquery, MAX_VALUES + 1).await?;
            match in_list(&batches) {
                Some(Values::Empty) => Ok(lit(negated)),
                Some(Values::List(list)) => Ok(Expr::InList(InList::new(probe, list, negated))),
                None => Ok(Expr::InSubquery(InSubquery {
                    expr: probe,
                    subquery,
                    negated,
                })),
            }
        }
        other => Ok(other),
    }
}

/// The rows of `subquery`, at most `limit`, with its own foldable subqueries folded first.
async fn run(
    ctx: &SessionContext,
    subquery: &Subquery,
    limit: usize,
) -> PgWireResult<Vec<RecordBatch>> {
    let plan = fold(ctx, subquery.subquery.as_ref().clone()).await?;
    let plan = LogicalPlanBuilder::from(plan)
        .limit(0, Some(limit))
        .and_then(LogicalPlanBuilder::build)
        .map_err(|e| errors::datafusion_error(&e))?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let mut stream = super::executor::execute_stream(df)
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.map_err(|e| errors::datafusion_error(&e))?);
    }
    Ok(batches)
}

enum Values {
    Empty,
    /// The distinct values as literals, one NULL among them if the subquery gave any.
    List(Vec<Expr>),
}

/// The values of a one-column subquery result; `None` when it has more than
/// [`MAX_VALUES`] rows or not one column.
fn in_list(batches: &[RecordBatch]) -> Option<Values> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > MAX_VALUES {
        return None;
    }
    if rows == 0 {
        return Some(Values::Empty);
    }
    let mut seen = HashSet::new();
    let mut list = Vec::new();
    let mut null = None;
    for batch in batches {
        let [column] = batch.columns() else {
            return None;
        };
        for row in 0..column.len() {
            let value = ScalarValue::try_from_array(column, row).ok()?;
            if value.is_null() {
                null.get_or_insert(value);
            } else if seen.insert(value.clone()) {
                list.push(lit(value));
            }
        }
    }
    list.extend(null.map(lit));
    Some(Values::List(list))
}

/// Puts each marker's value in its place.
fn replace_markers(plan: LogicalPlan, values: Vec<Expr>) -> Result<LogicalPlan> {
    let mut values: Vec<Option<Expr>> = values.into_iter().map(Some).collect();
    plan.transform_down_with_subqueries(|node| {
        node.map_expressions(|e| {
            e.transform_down(|e| {
                let Expr::Placeholder(Placeholder { id, .. }) = &e else {
                    return Ok(Transformed::no(e));
                };
                let value = id
                    .strip_prefix(MARKER)
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| values.get_mut(n))
                    .and_then(Option::take);
                Ok(match value {
                    Some(value) => Transformed::new(value, true, TreeNodeRecursion::Jump),
                    None => Transformed::no(e),
                })
            })
        })
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests;
