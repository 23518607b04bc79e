//! The analyzer rule that lets existing queries read promoted columns.
//!
//! `attr(attributes, 'k')`, `attributes ->> 'k'` (`json_as_text(attributes, 'k')`) and
//! `json_get_str(attributes, 'k')` become a read of the column `k` (as text) when
//! `attributes` and `k` come from the same scan of `logs` and `k` is a promoted field whose
//! text is provably what the function returns ([`FieldType::text_matches_attr`],
//! [`FieldType::text_matches_json_as_text`]; `json_get_str` only for all-string fields).
//! The expression keeps its name, so result columns and references to them do not change.
//!
//! It runs as an analyzer rule, after type coercion and before the optimizer's projection
//! push-down, so the scan of `logs` still offers every column.

use std::sync::Arc;

use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, ExprSchema, Result, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, LogicalPlan, cast};
use datafusion::optimizer::AnalyzerRule;

use crate::fields::FieldType;
use crate::query::tables::TierTable;

/// Rewrites JSON extraction of promoted fields into column reads (see the module docs).
#[derive(Debug, Default)]
pub struct PromotedFieldRewrite;

impl AnalyzerRule for PromotedFieldRewrite {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(rewrite_node).data()
    }

    fn name(&self) -> &str {
        "logsphere_promoted_fields"
    }
}

fn rewrite_node(node: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if matches!(node, LogicalPlan::TableScan(_)) {
        return Ok(Transformed::no(node));
    }
    let inputs: Vec<LogicalPlan> = node.inputs().into_iter().cloned().collect();
    if inputs.is_empty() {
        return Ok(Transformed::no(node));
    }
    let names = NamePreserver::new(&node);
    node.map_expressions(|e| {
        let saved = names.save(&e);
        let t = e.transform_up(|e| rewrite_expr(e, &inputs))?;
        Ok(if t.transformed {
            t.update_data(|e| saved.restore(e))
        } else {
            t
        })
    })
}

/// Which function reads a key, and so which promoted types reproduce its text.
fn accepts(function: &str, kind: FieldType) -> bool {
    match function {
        "attr" => kind.text_matches_attr(),
        "json_as_text" => kind.text_matches_json_as_text(),
        "json_get_str" => kind == FieldType::Text,
        _ => false,
    }
}

fn rewrite_expr(e: Expr, inputs: &[LogicalPlan]) -> Result<Transformed<Expr>> {
    let Expr::ScalarFunction(f) = &e else {
        return Ok(Transformed::no(e));
    };
    let [Expr::Column(attributes), key] = f.args.as_slice() else {
        return Ok(Transformed::no(e));
    };
    let Some(key) = literal_text(key) else {
        return Ok(Transformed::no(e));
    };
    let field = Column::new(attributes.relation.clone(), key);
    let Some(input) = inputs.iter().find(|i| i.schema().has_column(attributes)) else {
        return Ok(Transformed::no(e));
    };
    if !input.schema().has_column(&field) {
        return Ok(Transformed::no(e));
    }
    let (Some(a), Some(k)) = (origin(input, attributes), origin(input, &field)) else {
        return Ok(Transformed::no(e));
    };
    let same_scan = Arc::ptr_eq(&a.table, &k.table) && a.scan == k.scan;
    if !same_scan || a.column != "attributes" || k.column != key {
        return Ok(Transformed::no(e));
    }
    let Some(table) = a.table.downcast_ref::<TierTable>() else {
        return Ok(Transformed::no(e));
    };
    let Some(kind) = table.promoted_field(key) else {
        return Ok(Transformed::no(e));
    };
    // The type the plan was made with (a flush may have widened the registry since).
    let planned = input
        .schema()
        .field_from_column(&field)
        .map(|f| f.data_type().clone())?;
    if !accepts(f.func.name(), kind) || planned != kind.data_type() {
        return Ok(Transformed::no(e));
    }
    let read = Expr::Column(field);
    let read = match kind.data_type() {
        arrow::datatypes::DataType::Utf8 => read,
        _ => cast(read, arrow::datatypes::DataType::Utf8),
    };
    Ok(Transformed::yes(read))
}

fn literal_text(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

/// Where a column of a plan's output comes from: a table scan and the column's name there.
struct Origin {
    table: Arc<dyn datafusion::catalog::TableProvider>,
    /// The scan's address in the plan: two scans of one table are told apart.
    scan: usize,
    column: String,
}

/// Follows `column` down through nodes that pass it on unchanged to the scan producing it.
fn origin(plan: &LogicalPlan, column: &Column) -> Option<Origin> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let idx = scan.projected_schema.index_of_column(column).ok()?;
            Some(Origin {
                table: source_as_provider(&scan.source).ok()?,
                scan: scan as *const _ as usize,
                column: scan.projected_schema.field(idx).name().clone(),
            })
        }
        LogicalPlan::Filter(f) => origin(&f.input, column),
        LogicalPlan::Sort(s) => origin(&s.input, column),
        LogicalPlan::Limit(l) => origin(&l.input, column),
        LogicalPlan::Repartition(r) => origin(&r.input, column),
        LogicalPlan::Projection(p) => {
            let idx = p.schema.index_of_column(column).ok()?;
            match p.expr.get(idx)?.clone().unalias() {
                Expr::Column(c) => origin(&p.input, &c),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => {
            let idx = a.schema.index_of_column(column).ok()?;
            let (q, f) = a.input.schema().qualified_field(idx);
            origin(&a.input, &Column::from((q, f)))
        }
        LogicalPlan::Join(j) => {
            if j.left.schema().has_column(column) {
                origin(&j.left, column)
            } else if j.right.schema().has_column(column) {
                origin(&j.right, column)
            } else {
                None
            }
        }
        _ => None,
    }
}
