//! PostgreSQL's "unknown"-typed literals: a quoted constant takes its type from where it is
//! used, so `pg_index.indisprimary = 'f'` (SQLAlchemy 1.4's index reflection, which Superset
//! runs when a dataset is added) compares two booleans. DataFusion types every quoted literal
//! as text and finds no common type for `Boolean = Utf8`.
//!
//! [`UnknownLiterals`] gives a string literal compared with a boolean expression the boolean
//! that PostgreSQL's `boolin` reads from it (text that is no boolean is an error with SQLSTATE
//! 22P02, as in PostgreSQL), and one compared with an interval that interval
//! (`age = '1 hour'`); numbers, dates and timestamps DataFusion already coerces. It works in two places, both before DataFusion's type coercion
//! and with the input schema at hand: as an `ExprPlanner` for comparisons as the SQL is
//! planned (a projection's types are computed right then, so `SELECT indisprimary = 'f'`
//! would fail before any later pass), and as a `FunctionRewrite` for `IN` lists and the
//! comparisons other rewrites build.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, ExprSchema};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::{Cast, InList};
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// The message prefix of a literal that is not valid input for its type (SQLSTATE 22P02,
/// see `errors::classify_message`).
pub(crate) const INVALID_INPUT: &str = "invalid input syntax for type";

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct UnknownLiterals;

impl ExprPlanner for UnknownLiterals {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let RawBinaryExpr { op, left, right } = expr;
        let comparison = matches!(
            op,
            BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
        );
        let (left, right) = if comparison {
            typed_pair(left, right, schema)?.data
        } else {
            (left, right)
        };
        Ok(PlannerResult::Original(RawBinaryExpr { op, left, right }))
    }
}

impl FunctionRewrite for UnknownLiterals {
    fn name(&self) -> &str {
        "pg_unknown_literals"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> Result<Transformed<Expr>> {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_comparison(op) => Ok(
                typed_pair(*left, *right, schema)?.update_data(|(left, right)| {
                    Expr::BinaryExpr(BinaryExpr {
                        left: Box::new(left),
                        op,
                        right: Box::new(right),
                    })
                }),
            ),
            Expr::InList(in_list) => {
                let target = if in_list.list.iter().any(|e| text_literal(e).is_some()) {
                    literal_target(&in_list.expr, schema)
                } else {
                    None
                };
                let Some(ty) = target else {
                    return Ok(Transformed::no(Expr::InList(in_list)));
                };
                let InList {
                    expr,
                    list,
                    negated,
                } = in_list;
                let list = list
                    .into_iter()
                    .map(|e| {
                        if text_literal(&e).is_some() {
                            typed_literal(&e, &ty)
                        } else {
                            Ok(e)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Transformed::yes(Expr::InList(InList {
                    expr,
                    list,
                    negated,
                })))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

/// The two sides of a comparison, a text literal facing a boolean or an interval given that
/// type.
fn typed_pair(left: Expr, right: Expr, schema: &DFSchema) -> Result<Transformed<(Expr, Expr)>> {
    if text_literal(&right).is_some()
        && let Some(ty) = literal_target(&left, schema)
    {
        let right = typed_literal(&right, &ty)?;
        return Ok(Transformed::yes((left, right)));
    }
    if text_literal(&left).is_some()
        && let Some(ty) = literal_target(&right, schema)
    {
        let left = typed_literal(&left, &ty)?;
        return Ok(Transformed::yes((left, right)));
    }
    Ok(Transformed::no((left, right)))
}

fn is_comparison(op: Operator) -> bool {
    matches!(
        op,
        Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom
    )
}

/// The type a text literal facing `expr` takes, for the types DataFusion has no comparison
/// coercion with text for (numbers, dates and timestamps it has): boolean and interval.
/// `None` for other types and for an expression whose type cannot be told yet.
fn literal_target(expr: &Expr, schema: &dyn ExprSchema) -> Option<DataType> {
    match expr.get_type(schema) {
        Ok(ty @ (DataType::Boolean | DataType::Interval(_))) => Some(ty),
        _ => None,
    }
}

/// The text literal `expr` as a value of `ty`: a boolean as `boolin` reads it, anything else
/// by a cast (an interval's text as `'1 hour'::interval` reads it).
fn typed_literal(expr: &Expr, ty: &DataType) -> Result<Expr> {
    match ty {
        DataType::Boolean => boolean_literal(expr),
        _ => Ok(Expr::Cast(Cast::new(Box::new(expr.clone()), ty.clone()))),
    }
}

fn text_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

fn boolean_literal(expr: &Expr) -> Result<Expr> {
    let text = text_literal(expr).unwrap_or_default();
    let value = parse_bool(text)
        .ok_or_else(|| DataFusionError::Plan(format!("{INVALID_INPUT} boolean: \"{text}\"")))?;
    Ok(Expr::Literal(ScalarValue::Boolean(Some(value)), None))
}

/// PostgreSQL's `boolin`: `t`/`true`/`yes`/`on`/`1` and `f`/`false`/`no`/`off`/`0`, any
/// case, surrounding white space ignored, any unique prefix of the words (`on`/`off` need
/// two letters).
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    let prefix_of = |word: &str| word.starts_with(t.as_str());
    match t.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        "o" => None,
        _ if prefix_of("true") || prefix_of("yes") || (t.len() >= 2 && prefix_of("on")) => {
            Some(true)
        }
        _ if prefix_of("false") || prefix_of("no") || (t.len() >= 2 && prefix_of("off")) => {
            Some(false)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_as_postgres_reads_them() {
        for t in ["t", "TRUE", " yes ", "y", "on", "1", "tr"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["f", "false", "No", "n", "off", "of", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "o", "2", "truth", "maybe"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }
}
