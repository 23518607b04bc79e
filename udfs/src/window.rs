//! Window table functions: `TUMBLE(table, time_col, size [, offset])` and
//! `HOP(table, time_col, slide, size [, offset])` (CONTINUOUS_QUERIES.md §5.1, §7).
//!
//! Each call returns a [`WindowedTable`] (a view) over the named table with two extra columns,
//! `window_start` and `window_end` (windows are `[start, end)`). `TUMBLE` assigns every
//! row to one window, `date_bin(size, time_col, epoch + offset)`. `HOP` assigns every row
//! to the `size / slide` windows that contain it, as a union of shifted projections, so a
//! row appears once per window.
//!
//! ```
//! # async fn demo() -> datafusion::error::Result<()> {
//! let ctx = datafusion::prelude::SessionContext::new();
//! logsphere_udfs::register_window_functions(&ctx);
//! ctx.sql("CREATE TABLE logs (timestamp TIMESTAMP, source TEXT)").await?;
//! let df = ctx
//!     .sql("SELECT window_start, source, count(*) FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY 1, 2")
//!     .await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNano};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{
    Column, Result, ScalarValue, TableReference, plan_datafusion_err, plan_err,
};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::execution::SessionState;
use datafusion::functions::expr_fn::date_bin;
use datafusion::logical_expr::{
    Expr, LogicalPlanBuilder, TableProviderFilterPushDown, TableType, cast, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

/// Nanoseconds per day, for turning `IntervalMonthDayNano` days into a fixed length.
const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;
/// `HOP` duplicates each row `size / slide` times; past this the query is surely a mistake.
pub const MAX_HOP_WINDOWS_PER_ROW: i64 = 1024;

/// Looks a table up by name for a window function.
pub type TableResolver =
    Arc<dyn Fn(&TableReference) -> Option<Arc<dyn TableProvider>> + Send + Sync>;

/// Which window a [`WindowTableFunction`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `TUMBLE(table, time_col, size [, offset])`.
    Tumble,
    /// `HOP(table, time_col, slide, size [, offset])`.
    Hop,
}

impl WindowKind {
    fn usage(self) -> &'static str {
        match self {
            WindowKind::Tumble => "TUMBLE(table, time_column, size [, offset])",
            WindowKind::Hop => "HOP(table, time_column, slide, size [, offset])",
        }
    }
}

/// A window assignment in nanoseconds: windows start at `offset + k * slide` and last `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub size_ns: i64,
    /// Distance between window starts; equal to `size_ns` for tumbling windows.
    pub slide_ns: i64,
    /// Alignment of window starts relative to the Unix epoch.
    pub offset_ns: i64,
}

impl WindowSpec {
    /// A tumbling window spec, validated.
    pub fn tumble(size_ns: i64, offset_ns: i64) -> Result<Self> {
        Self::hop(size_ns, size_ns, offset_ns)
    }

    /// A hopping window spec, validated: positive lengths, `slide` dividing `size`.
    pub fn hop(slide_ns: i64, size_ns: i64, offset_ns: i64) -> Result<Self> {
        if size_ns <= 0 || slide_ns <= 0 {
            return plan_err!(
                "window size and slide must be positive, got size {size_ns} ns and slide {slide_ns} ns"
            );
        }
        if size_ns % slide_ns != 0 {
            return plan_err!("HOP: the slide ({slide_ns} ns) must divide the size ({size_ns} ns)");
        }
        if size_ns / slide_ns > MAX_HOP_WINDOWS_PER_ROW {
            return plan_err!(
                "HOP: size / slide is {}, more than {MAX_HOP_WINDOWS_PER_ROW} windows per row",
                size_ns / slide_ns
            );
        }
        Ok(Self {
            size_ns,
            slide_ns,
            offset_ns,
        })
    }

    /// True for tumbling windows (one window per row).
    pub fn is_tumbling(&self) -> bool {
        self.size_ns == self.slide_ns
    }

    /// Start of the latest window (by slide) containing `t`, all in the same unit as
    /// `unit_ns` nanoseconds per tick (1_000 for microseconds).
    pub fn last_start(&self, t: i64, unit_ns: i64) -> i64 {
        let slide = self.slide_ns / unit_ns;
        let offset = self.offset_ns / unit_ns;
        offset + (t - offset).div_euclid(slide) * slide
    }

    /// Starts of every window containing `t` (ticks of `unit_ns` nanoseconds), latest first.
    pub fn starts(&self, t: i64, unit_ns: i64) -> impl Iterator<Item = i64> + use<> {
        let last = self.last_start(t, unit_ns);
        let slide = self.slide_ns / unit_ns;
        (0..self.size_ns / self.slide_ns).map(move |k| last - k * slide)
    }
}

/// The table function behind `TUMBLE` and `HOP`.
pub struct WindowTableFunction {
    kind: WindowKind,
    resolver: TableResolver,
}

impl fmt::Debug for WindowTableFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowTableFunction")
            .field("kind", &self.kind)
            .finish()
    }
}

impl WindowTableFunction {
    /// A window function that finds its input table through `resolver`; tables the
    /// calling session knows are found first.
    pub fn new(kind: WindowKind, resolver: TableResolver) -> Self {
        Self { kind, resolver }
    }

    fn resolve(
        &self,
        session: &dyn Session,
        table: &TableReference,
    ) -> Option<Arc<dyn TableProvider>> {
        session
            .as_any()
            .downcast_ref::<SessionState>()
            .and_then(|state| lookup(state, table))
            .or_else(|| (self.resolver)(table))
    }
}

/// Finds `table` in `state`'s catalog without awaiting: catalog lookups of registered
/// tables are ready immediately, and a table function is called from synchronous planning.
fn lookup(state: &SessionState, table: &TableReference) -> Option<Arc<dyn TableProvider>> {
    let schema = state.schema_for_ref(table.clone()).ok()?;
    let mut fut = schema.table(table.table());
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(found)) => found,
        _ => None,
    }
}

/// The fixed length of an interval argument in nanoseconds; months are rejected because
/// their length varies.
fn interval_nanos(kind: WindowKind, what: &str, expr: &Expr) -> Result<i64> {
    let value = match expr {
        Expr::Literal(v, _) => v,
        Expr::Cast(c) => return interval_nanos(kind, what, &c.expr),
        other => {
            return plan_err!(
                "{}: {what} must be an INTERVAL literal, got {other}",
                kind.usage()
            );
        }
    };
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        })) => {
            if *months != 0 {
                return plan_err!(
                    "{}: {what} {value} uses months, whose length varies; use days or smaller units",
                    kind.usage()
                );
            }
            i64::from(*days)
                .checked_mul(NANOS_PER_DAY)
                .and_then(|d| d.checked_add(*nanoseconds))
        }
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days)
            .checked_mul(NANOS_PER_DAY)
            .and_then(|d| d.checked_add(i64::from(v.milliseconds) * 1_000_000)),
        ScalarValue::IntervalYearMonth(_) => {
            return plan_err!(
                "{}: {what} {value} uses months, whose length varies",
                kind.usage()
            );
        }
        other => return plan_err!("{}: {what} must be an INTERVAL, got {other}", kind.usage()),
    };
    nanos.ok_or_else(|| plan_datafusion_err!("{}: {what} {value} is out of range", kind.usage()))
}

fn interval_lit(nanos: i64) -> Expr {
    lit(ScalarValue::IntervalMonthDayNano(Some(
        IntervalMonthDayNano::new(0, 0, nanos),
    )))
}

fn column_arg(kind: WindowKind, what: &str, expr: &Expr) -> Result<Column> {
    match expr {
        Expr::Column(c) => Ok(c.clone()),
        other => plan_err!("{}: {what} must be a name, got {other}", kind.usage()),
    }
}

impl TableFunctionImpl for WindowTableFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let kind = self.kind;
        let exprs = args.exprs();
        let (min, max) = match kind {
            WindowKind::Tumble => (3, 4),
            WindowKind::Hop => (4, 5),
        };
        if exprs.len() < min || exprs.len() > max {
            return plan_err!(
                "{} takes {min} or {max} arguments, got {}",
                kind.usage(),
                exprs.len()
            );
        }
        let table = column_arg(kind, "the first argument (table)", &exprs[0])?;
        let table_ref = match &table.relation {
            Some(schema) => TableReference::partial(schema.table(), table.name.as_str()),
            None => TableReference::bare(table.name.as_str()),
        };
        let Some(provider) = self.resolve(args.session(), &table_ref) else {
            return plan_err!("{}: no table named '{table_ref}'", kind.usage());
        };
        let time_col = column_arg(kind, "the second argument (time column)", &exprs[1])?.name;
        let schema = provider.schema();
        let tz = match schema.field_with_name(&time_col).map(|f| f.data_type()) {
            Ok(DataType::Timestamp(_, tz)) => tz.clone(),
            Ok(other) => {
                return plan_err!(
                    "{}: column '{time_col}' of '{table_ref}' is {other}, not a timestamp",
                    kind.usage()
                );
            }
            Err(_) => {
                return plan_err!("{}: '{table_ref}' has no column '{time_col}'", kind.usage());
            }
        };
        let spec = match kind {
            WindowKind::Tumble => {
                let size = interval_nanos(kind, "size", &exprs[2])?;
                let offset = exprs
                    .get(3)
                    .map(|e| interval_nanos(kind, "offset", e))
                    .transpose()?;
                WindowSpec::tumble(size, offset.unwrap_or(0))?
            }
            WindowKind::Hop => {
                let slide = interval_nanos(kind, "slide", &exprs[2])?;
                let size = interval_nanos(kind, "size", &exprs[3])?;
                let offset = exprs
                    .get(4)
                    .map(|e| interval_nanos(kind, "offset", e))
                    .transpose()?;
                WindowSpec::hop(slide, size, offset.unwrap_or(0))?
            }
        };
        let plan = window_plan(&table_ref, provider, &time_col, tz, spec)?;
        Ok(Arc::new(WindowedTable {
            table: table_ref,
            time_column: time_col,
            spec,
            view: ViewTable::new(plan, None),
        }))
    }
}

/// What `TUMBLE`/`HOP` return: the input table plus `window_start` and `window_end`.
///
/// It is deliberately not inlined into the calling plan, so a planner (the
/// continuous-query runtime) can find the window by downcasting the scan's provider.
#[derive(Debug)]
pub struct WindowedTable {
    table: TableReference,
    time_column: String,
    spec: WindowSpec,
    view: ViewTable,
}

impl WindowedTable {
    /// The windowed input table.
    pub fn table(&self) -> &TableReference {
        &self.table
    }

    /// The event-time column windows are computed from.
    pub fn time_column(&self) -> &str {
        &self.time_column
    }

    /// Window size, slide and offset.
    pub fn spec(&self) -> WindowSpec {
        self.spec
    }
}

impl TableProvider for WindowedTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.view.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.view.supports_filters_pushdown(filters)
    }

    // Spelled out rather than via `#[async_trait]`, which this crate does not depend on.
    fn scan<'a, 'b, 'c, 'd, 'f>(
        &'a self,
        state: &'b dyn Session,
        projection: Option<&'c Vec<usize>>,
        filters: &'d [Expr],
        limit: Option<usize>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Arc<dyn ExecutionPlan>>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        'd: 'f,
        Self: 'f,
    {
        self.view.scan(state, projection, filters, limit)
    }
}

/// `SELECT *, window_start, window_end FROM table`, one projection per window a row
/// belongs to, unioned.
fn window_plan(
    table_ref: &TableReference,
    provider: Arc<dyn TableProvider>,
    time_col: &str,
    tz: Option<Arc<str>>,
    spec: WindowSpec,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    let schema = provider.schema();
    let source = provider_as_source(provider);
    let origin = lit(ScalarValue::TimestampNanosecond(Some(spec.offset_ns), tz));
    let ts = Expr::Column(Column::new(Some(table_ref.clone()), time_col));
    let ts_type = schema.field_with_name(time_col)?.data_type().clone();
    let mut plan: Option<LogicalPlanBuilder> = None;
    for k in 0..spec.size_ns / spec.slide_ns {
        // Cast back: coercion may pick date_bin's nanosecond signature, and window
        // columns should carry the time column's own type.
        let mut start = cast(
            date_bin(interval_lit(spec.slide_ns), ts.clone(), origin.clone()),
            ts_type.clone(),
        );
        if k > 0 {
            start = start - interval_lit(k * spec.slide_ns);
        }
        let mut exprs: Vec<Expr> = schema
            .fields()
            .iter()
            .map(|f| Expr::Column(Column::new(Some(table_ref.clone()), f.name())))
            .collect();
        exprs.push(start.clone().alias("window_start"));
        exprs.push((start + interval_lit(spec.size_ns)).alias("window_end"));
        let branch = LogicalPlanBuilder::scan(table_ref.clone(), Arc::clone(&source), None)?
            .project(exprs)?
            .build()?;
        plan = Some(match plan {
            None => LogicalPlanBuilder::from(branch),
            Some(p) => p.union(branch)?,
        });
    }
    match plan {
        Some(p) => p.build(),
        None => plan_err!("window spec has no windows"),
    }
}

/// Registers `tumble`/`TUMBLE` and `hop`/`HOP` in `ctx`, resolving tables through `ctx`
/// (held weakly, so the functions do not keep the session alive).
pub fn register_window_functions(ctx: &SessionContext) {
    let state = ctx.state_weak_ref();
    let resolver: TableResolver = Arc::new(move |table: &TableReference| {
        let state = state.upgrade()?;
        let state = state.read();
        lookup(&state, table)
    });
    for kind in [WindowKind::Tumble, WindowKind::Hop] {
        let f = Arc::new(WindowTableFunction::new(kind, Arc::clone(&resolver)));
        let name = match kind {
            WindowKind::Tumble => "tumble",
            WindowKind::Hop => "hop",
        };
        ctx.register_udtf(name, f.clone());
        ctx.register_udtf(&name.to_ascii_uppercase(), f);
    }
}

#[cfg(test)]
mod tests;
