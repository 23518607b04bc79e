//! Taking a planned CQ body apart into what the runtime evaluates per batch (§5.1, §7).
//!
//! The body is planned and analyzed (type coercion) by DataFusion, but not optimized, so
//! the plan is the plain chain SQL produces: projections and filters, at most one
//! `Aggregate`, and a scan of `logs` or of `TUMBLE`/`HOP` over `logs`.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::prelude::SessionContext;
use logsphere_udfs::window::{WindowSpec, WindowedTable};

use super::{CqError, CqSpec, EmitPolicy};
use crate::model::logs_schema;

/// The two CQ shapes of §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryShape {
    /// Shape A: filter and projection per row, no state.
    PerRow,
    /// Shape B: one window, group keys, aggregates and HAVING.
    Windowed,
}

/// A row-level step, evaluated on a batch.
#[derive(Debug)]
pub(crate) enum RowOp {
    Filter(Arc<dyn PhysicalExpr>),
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

/// The window of a shape B query.
#[derive(Debug, Clone)]
pub(crate) struct WindowInfo {
    pub spec: WindowSpec,
    /// Index of the event-time column in `logs`.
    pub time_index: usize,
    /// Schema of `logs` plus `window_start` and `window_end` (TUMBLE/HOP), or of `logs`
    /// alone (`date_bin` in GROUP BY).
    pub schema: SchemaRef,
    /// True when the window columns are appended to each batch (TUMBLE/HOP).
    pub append_columns: bool,
}

/// An aggregate with its optional `FILTER (WHERE …)`.
pub(crate) type FilteredAggregate = (Arc<AggregateFunctionExpr>, Option<Arc<dyn PhysicalExpr>>);

/// The aggregate of a shape B query.
#[derive(Debug)]
pub(crate) struct AggPlan {
    pub group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub aggs: Vec<FilteredAggregate>,
    /// Group columns then aggregate columns, as the logical `Aggregate` outputs them.
    pub schema: SchemaRef,
}

/// A CQ body taken apart for incremental evaluation.
#[derive(Debug)]
pub struct CqPlan {
    pub(crate) shape: QueryShape,
    /// Applied to each `logs` batch (shape A) or windowed batch (shape B).
    pub(crate) pre: Vec<RowOp>,
    /// Shape B: how many leading `pre` steps are filters over `logs` columns only, which
    /// the runtime applies before windowing (the windowed schema starts with `logs`'s).
    pub(crate) base_filters: usize,
    pub(crate) window: Option<WindowInfo>,
    pub(crate) agg: Option<AggPlan>,
    /// Applied to aggregated rows: HAVING and the SELECT list.
    pub(crate) post: Vec<RowOp>,
    /// True when HAVING exists and is monotone non-decreasing within a window.
    pub(crate) having_monotone: bool,
    pub(crate) has_having: bool,
    pub(crate) output_schema: SchemaRef,
}

impl CqPlan {
    /// Plans `spec.body_sql` over `logs` and takes it apart.
    pub async fn new(spec: &CqSpec) -> Result<Self, CqError> {
        let sql = spec.body_sql.as_str();
        let unsupported = |reason: String| CqError::Unsupported {
            sql: sql.to_string(),
            reason,
        };
        let ctx = SessionContext::new();
        let logs: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(logs_schema()));
        ctx.register_table("logs", logs)?;
        logsphere_udfs::register_all(&ctx);
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await?;
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})?;
        let props = state.execution_props();

        let mut above: Vec<&LogicalPlan> = Vec::new();
        let mut below: Vec<&LogicalPlan> = Vec::new();
        let mut aggregate = None;
        let mut node = &plan;
        let scan = loop {
            match node {
                LogicalPlan::Projection(p) => {
                    push(&mut above, &mut below, aggregate.is_some(), node);
                    node = &p.input;
                }
                LogicalPlan::Filter(f) => {
                    push(&mut above, &mut below, aggregate.is_some(), node);
                    node = &f.input;
                }
                LogicalPlan::SubqueryAlias(a) => node = &a.input,
                LogicalPlan::Aggregate(a) => {
                    if aggregate.is_some() {
                        return Err(unsupported("more than one aggregation".into()));
                    }
                    aggregate = Some(a);
                    node = &a.input;
                }
                LogicalPlan::TableScan(s) => break s,
                LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
                    return Err(unsupported("ORDER BY and LIMIT are not allowed".into()));
                }
                LogicalPlan::Join(_) => {
                    return Err(unsupported("joins are not supported yet".into()));
                }
                other => {
                    return Err(unsupported(format!(
                        "{} is not supported in a continuous query",
                        other.display()
                    )));
                }
            }
        };
        // Top-down lists; evaluation runs bottom-up.
        above.reverse();
        below.reverse();

        let provider = source_as_provider(&scan.source)?;
        let mut window = match provider.downcast_ref::<WindowedTable>() {
            Some(w) => {
                if w.table().table() != "logs" {
                    return Err(unsupported(format!(
                        "the window must be over logs, not {}",
                        w.table()
                    )));
                }
                let time_index = logs_schema().index_of(w.time_column())?;
                Some(WindowInfo {
                    spec: w.spec(),
                    time_index,
                    schema: w.schema(),
                    append_columns: true,
                })
            }
            None if scan.table_name.table() == "logs" => None,
            None => {
                return Err(unsupported(format!(
                    "the source must be logs, not {}",
                    scan.table_name
                )));
            }
        };
        if !scan.filters.is_empty() {
            return Err(unsupported("unexpected pushed-down filters".into()));
        }

        let mut pre = Vec::new();
        if let Some(projection) = &scan.projection {
            let exprs = projection
                .iter()
                .map(|&i| {
                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                        scan.source.schema().field(i).name(),
                        i,
                    )) as Arc<dyn PhysicalExpr>
                })
                .collect();
            pre.push(RowOp::Project(
                exprs,
                Arc::clone(scan.projected_schema.inner()),
            ));
        }
        // Without an aggregate every step is row-level and runs before anything else.
        let (pre_nodes, post_nodes) = match aggregate {
            Some(_) => (below.clone(), above.clone()),
            None => (above.clone(), Vec::new()),
        };
        pre.extend(row_ops(&pre_nodes, props)?);
        let post = row_ops(&post_nodes, props)?;

        let from_date_bin = window.is_none() && aggregate.is_some();
        if let (Some(a), None) = (aggregate, &window) {
            let no_projection = below.iter().all(|n| matches!(n, LogicalPlan::Filter(_)));
            window = a
                .group_expr
                .iter()
                .find_map(|e| date_bin_window(e).transpose())
                .transpose()
                .map_err(|e| unsupported(e.to_string()))?
                .filter(|_| no_projection);
        }
        if let Some(w) = &window {
            let spec = w.spec;
            if spec.size_ns % 1_000 != 0
                || spec.slide_ns % 1_000 != 0
                || spec.offset_ns % 1_000 != 0
            {
                return Err(unsupported(
                    "window size, slide and offset must be whole microseconds, the resolution of logs.timestamp"
                        .into(),
                ));
            }
        }
        let (shape, agg, has_having, having_monotone) = match (aggregate, &window) {
            (None, None) => (QueryShape::PerRow, None, false, false),
            (None, Some(_)) => {
                return Err(unsupported(
                    "a window (TUMBLE/HOP) needs GROUP BY window_start".into(),
                ));
            }
            (Some(_), None) => {
                return Err(unsupported(
                    "aggregates need a window: TUMBLE or HOP in FROM, or \
                     date_bin(INTERVAL '…', timestamp [, origin]) in GROUP BY"
                        .into(),
                ));
            }
            (Some(a), Some(_)) => {
                let input = a.input.schema();
                let mut group_exprs = Vec::new();
                let mut has_window_key = from_date_bin;
                for e in &a.group_expr {
                    if let Expr::GroupingSet(_) = e {
                        return Err(unsupported(
                            "GROUPING SETS, CUBE and ROLLUP are not supported".into(),
                        ));
                    }
                    if let Expr::Column(c) = e {
                        has_window_key |= c.name == "window_start" || c.name == "window_end";
                    }
                    group_exprs.push(create_physical_expr(
                        e,
                        input,
                        props,
                        &PhysicalPlanningContext::default(),
                    )?);
                }
                if !has_window_key {
                    return Err(unsupported(
                        "GROUP BY must include window_start or window_end".into(),
                    ));
                }
                let mut aggs = Vec::new();
                for e in &a.aggr_expr {
                    let planning = PhysicalPlanningContext::default();
                    let lowered =
                        LoweredAggregateBuilder::new(e, input, input.as_arrow(), props, &planning)
                            .build()?;
                    if !lowered.order_bys.is_empty() {
                        return Err(unsupported(format!(
                            "ordered aggregate {e} is not supported"
                        )));
                    }
                    aggs.push((lowered.aggregate, lowered.filter));
                }
                // HAVING is the filter directly above the aggregate.
                let having = match above.first() {
                    Some(LogicalPlan::Filter(f)) => Some(&f.predicate),
                    _ => None,
                };
                let monotone = having.is_some_and(|h| {
                    let names: Vec<(String, Expr)> = a
                        .aggr_expr
                        .iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let name = a.schema.field(a.group_expr.len() + i).name().clone();
                            (name, e.clone().unalias())
                        })
                        .collect();
                    let resolved = h
                        .clone()
                        .transform_up(|e| match &e {
                            Expr::Column(c) => match names.iter().find(|(n, _)| *n == c.name) {
                                Some((_, agg)) => Ok(Transformed::yes(agg.clone())),
                                None => Ok(Transformed::no(e)),
                            },
                            _ => Ok(Transformed::no(e)),
                        })
                        .map(|t| t.data);
                    resolved.is_ok_and(|r| is_monotone(&r))
                });
                let agg = AggPlan {
                    group_exprs,
                    aggs,
                    schema: Arc::clone(a.schema.inner()),
                };
                (QueryShape::Windowed, Some(agg), having.is_some(), monotone)
            }
        };
        let base_width = logs_schema().fields().len();
        let base_filters = match &window {
            Some(_) => pre
                .iter()
                .take_while(|op| match op {
                    RowOp::Filter(p) => collect_columns(p).iter().all(|c| c.index() < base_width),
                    RowOp::Project(..) => false,
                })
                .count(),
            None => 0,
        };
        Ok(Self {
            shape,
            pre,
            base_filters,
            window,
            agg,
            post,
            having_monotone,
            has_having,
            output_schema: Arc::clone(plan.schema().inner()),
        })
    }

    /// Shape A or B.
    pub fn shape(&self) -> QueryShape {
        self.shape
    }

    /// The SELECT's output schema.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    /// The emit policy for `requested`: ON THRESHOLD by default for a monotone HAVING,
    /// otherwise ON WINDOW CLOSE; ON THRESHOLD on a non-monotone HAVING is refused.
    pub fn emit_policy(
        &self,
        requested: Option<EmitPolicy>,
        sql: &str,
    ) -> Result<EmitPolicy, CqError> {
        match requested {
            None if self.has_having && self.having_monotone => Ok(EmitPolicy::OnThreshold),
            None => Ok(EmitPolicy::OnWindowClose),
            Some(EmitPolicy::OnThreshold) if !self.having_monotone => Err(CqError::Unsupported {
                sql: sql.to_string(),
                reason: "EMIT ON THRESHOLD needs a HAVING that can only turn true as rows arrive \
                         (count/max > c, min < c, combined with AND/OR)"
                    .into(),
            }),
            Some(p) => Ok(p),
        }
    }
}

/// The tumbling window of a `date_bin(INTERVAL …, <logs time column> [, origin])` group
/// expression, or `None` when `e` is something else.
fn date_bin_window(e: &Expr) -> datafusion::error::Result<Option<WindowInfo>> {
    fn strip(e: &Expr) -> &Expr {
        match e {
            Expr::Cast(c) => strip(&c.expr),
            Expr::TryCast(c) => strip(&c.expr),
            Expr::Alias(a) => strip(&a.expr),
            e => e,
        }
    }
    let Expr::ScalarFunction(f) = strip(e) else {
        return Ok(None);
    };
    if f.func.name() != "date_bin" || f.args.len() < 2 {
        return Ok(None);
    }
    let Expr::Column(c) = strip(&f.args[1]) else {
        return Ok(None);
    };
    let schema = logs_schema();
    let Ok(time_index) = schema.index_of(&c.name) else {
        return Ok(None);
    };
    let size = match strip(&f.args[0]) {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            i64::from(v.days) * 86_400_000_000_000 + v.nanoseconds
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            i64::from(v.days) * 86_400_000_000_000 + i64::from(v.milliseconds) * 1_000_000
        }
        other => {
            return plan_err!("date_bin: the stride must be a fixed-length INTERVAL, got {other}");
        }
    };
    let offset = match f.args.get(2).map(strip) {
        None => 0,
        Some(Expr::Literal(v, _)) => {
            match v.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None))? {
                ScalarValue::TimestampNanosecond(Some(ns), _) => ns,
                _ => return plan_err!("date_bin: the origin must be a timestamp, got {v}"),
            }
        }
        Some(other) => return plan_err!("date_bin: the origin must be a literal, got {other}"),
    };
    Ok(Some(WindowInfo {
        spec: WindowSpec::tumble(size, offset)?,
        time_index,
        schema,
        append_columns: false,
    }))
}

fn push<'a>(
    above: &mut Vec<&'a LogicalPlan>,
    below: &mut Vec<&'a LogicalPlan>,
    seen_agg: bool,
    node: &'a LogicalPlan,
) {
    if seen_agg {
        below.push(node);
    } else {
        above.push(node);
    }
}

/// Physical row steps for a bottom-up list of projections and filters.
fn row_ops(
    nodes: &[&LogicalPlan],
    props: &datafusion::execution::context::ExecutionProps,
) -> Result<Vec<RowOp>, CqError> {
    let mut ops = Vec::new();
    for node in nodes {
        match node {
            LogicalPlan::Projection(p) => {
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| {
                        create_physical_expr(
                            e,
                            p.input.schema(),
                            props,
                            &PhysicalPlanningContext::default(),
                        )
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                ops.push(RowOp::Project(exprs, Arc::clone(p.schema.inner())));
            }
            LogicalPlan::Filter(f) => {
                ops.push(RowOp::Filter(create_physical_expr(
                    &f.predicate,
                    f.input.schema(),
                    props,
                    &PhysicalPlanningContext::default(),
                )?));
            }
            _ => unreachable!("only projections and filters are collected"),
        }
    }
    Ok(ops)
}

/// How an aggregate moves as rows are added to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

fn aggregate_direction(e: &Expr) -> Option<Direction> {
    match e {
        Expr::AggregateFunction(f) => match f.func.name() {
            "count" | "max" | "approx_distinct" => Some(Direction::Up),
            "min" => Some(Direction::Down),
            _ => None,
        },
        Expr::Alias(a) => aggregate_direction(&a.expr),
        Expr::Cast(c) => aggregate_direction(&c.expr),
        Expr::TryCast(c) => aggregate_direction(&c.expr),
        _ => None,
    }
}

fn has_aggregate(e: &Expr) -> bool {
    e.exists(|e| Ok(matches!(e, Expr::AggregateFunction(_))))
        .unwrap_or(true)
}

/// True when `expr`, a HAVING condition with aggregate calls in it, can only turn from
/// false to true as rows are added to a window: `count(..)`/`max(..) > c` or `>= c`,
/// `min(..) < c` or `<= c` (either side), conditions on group keys alone, and AND/OR of
/// these (§5.3). Such a condition may fire ON THRESHOLD without ever being retracted.
pub fn is_monotone(expr: &Expr) -> bool {
    match expr {
        _ if !has_aggregate(expr) => true,
        Expr::Alias(a) => is_monotone(&a.expr),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => is_monotone(left) && is_monotone(right),
            Operator::Gt | Operator::GtEq | Operator::Lt | Operator::LtEq => {
                let (agg, rising_when_greater) = if !has_aggregate(right) {
                    (left, matches!(op, Operator::Gt | Operator::GtEq))
                } else if !has_aggregate(left) {
                    (right, matches!(op, Operator::Lt | Operator::LtEq))
                } else {
                    return false;
                };
                match aggregate_direction(agg) {
                    Some(Direction::Up) => rising_when_greater,
                    Some(Direction::Down) => !rising_when_greater,
                    None => false,
                }
            }
            _ => false,
        },
        _ => false,
    }
}
