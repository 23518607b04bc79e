//! Output rows of a CQ with an `ALERT` clause become alert instances (CONTINUOUS_QUERIES.md §5.4).
//!
//! An instance is identified by its fingerprint: a hash of its labels, which are the
//! DEDUP BY values plus the static `LABELS`. Its `alert_id` is a hash of the CQ name,
//! version, fingerprint and an event-time anchor (the event time of the episode's first
//! observation: shape A the row's, shape B its window's start), so replaying the same input
//! after a restart finds the same id and upserts instead of adding a row. This file turns
//! output rows into [`Observation`]s; `lifecycle.rs` runs the state machine over them.

use arrow::array::{Array, ArrayRef, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, SelectItem, SetExpr, Value, visit_expressions_mut,
};
use logsphere_sql::{CreateContinuousQuery, For};
use serde::{Deserialize, Serialize};

use super::lifecycle::Episode;
use super::{CqError, CqOutput, QueryShape};

/// One row of the `alerts` system table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id (see the module docs).
    pub alert_id: String,
    pub cq_name: String,
    pub cq_version: u64,
    /// Hash of `labels`: the instance's identity within the CQ version.
    pub fingerprint: String,
    /// DEDUP BY values and static labels, as a JSON object.
    pub labels: String,
    /// The latest observation's severity (the highest notified one is in the events).
    pub severity: String,
    /// `pending` (FOR not yet met, not notified), `firing` or `resolved`.
    pub state: String,
    /// Wall-clock µs when the instance was first observed.
    pub first_seen: i64,
    /// Wall-clock µs when it started firing (or was first seen, while pending).
    pub fired_at: i64,
    /// Wall-clock µs of the latest observation.
    pub last_seen: i64,
    pub observation_count: u64,
    /// Shape B: the latest qualifying window, µs since the epoch.
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    /// The latest output row, as a JSON object.
    pub value: String,
    /// The alert fired on data that arrived after its window closed.
    pub late: bool,
    /// Wall-clock µs when it resolved.
    #[serde(default)]
    pub resolved_at: Option<i64>,
    /// Event time (µs) of the latest observation (shape B: its window's start).
    #[serde(default)]
    pub last_event: i64,
    /// ANNOTATIONS with `{column}` filled from the latest row, as a JSON object.
    pub annotations: String,
    /// Why it resolved when its condition did not end it: `rule_dropped`, `rule_replaced`.
    #[serde(default)]
    pub resolved_reason: Option<String>,
    /// Event-time bookkeeping of the state machine (not a column).
    #[serde(default)]
    pub(crate) episode: Episode,
}

/// How a CQ's output rows map to alert instances, and the knobs of their state machine.
#[derive(Debug, Clone)]
pub(crate) struct AlertRule {
    pub(super) cq_name: String,
    pub(super) version: u64,
    pub(super) shape: QueryShape,
    severity: Severity,
    /// Output columns that form the instance key.
    dedup: Vec<usize>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    /// Shape A: the output column holding the event time, if projected.
    time_column: Option<usize>,
    /// The hidden SEVERITY column appended to the body, left out of `value`.
    hidden: Option<usize>,
    /// Shape A: the condition counts as false after this much event time without a match.
    pub(super) resolve_after_us: i64,
    /// Shape B: the window slide; the next window after a qualifying one ends this later.
    pub(super) slide_us: i64,
    /// FOR: the pending period.
    pub(super) pending: Pending,
    /// KEEP FIRING FOR: how long a false condition keeps a firing instance firing.
    pub(super) keep_firing_us: i64,
    /// COOLDOWN: minimum event time between notifications of one firing instance.
    pub(super) cooldown_us: i64,
    /// ABSENT FOR: rows are heartbeats; a key silent this long gets an `absent` instance.
    pub(super) absent_us: Option<i64>,
    output: SchemaRef,
}

/// The pending period of `FOR`, in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
    /// No FOR (or FOR 0): fire at the first observation.
    None,
    /// Fire once the observations span this much event time (from the first).
    Micros(i64),
    /// Shape B: fire at the n-th qualifying window.
    Windows(u64),
}

/// Shape A's quiet period when neither RESOLVE AFTER nor COOLDOWN is given *(design)*.
const DEFAULT_RESOLVE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// Re-notification gap when COOLDOWN is not given *(design, §5.4)*.
const DEFAULT_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(300);

/// The output column a SEVERITY expression is appended to the body as.
pub(crate) const SEVERITY_COLUMN: &str = "__logsphere_severity";

#[derive(Debug, Clone)]
enum Severity {
    Constant(String),
    Column(usize),
}

/// One output row as an alert observation.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub fingerprint: String,
    /// The instance's labels, as a JSON object.
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub value: String,
    pub annotations: String,
    pub severity: String,
    /// Event time of the observation: shape A the row's, shape B its window's start.
    pub at: i64,
    /// Event time the row covers up to: shape A the row's, shape B its window's end.
    pub covers_to: i64,
    /// Shape B: the window.
    pub window: Option<(i64, i64)>,
    pub late: bool,
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The body of `cq` with a `SEVERITY` expression appended to its SELECT list as the hidden
/// column [`SEVERITY_COLUMN`] (a rewrite of the parsed AST; references to output column
/// aliases are replaced by the aliased expressions). `None` when SEVERITY is absent, a
/// constant or a plain column name, which need no rewrite.
pub(crate) fn body_with_severity(cq: &CreateContinuousQuery) -> Result<Option<String>, CqError> {
    let Some(expr) = cq.alert.as_ref().and_then(|a| a.severity.as_ref()) else {
        return Ok(None);
    };
    if constant(expr).is_some() || matches!(expr, Expr::Identifier(_)) {
        return Ok(None);
    }
    let mut query = cq.query.as_ref().clone();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(CqError::Unsupported {
            sql: cq.body_sql.clone(),
            reason: "a SEVERITY expression needs the body to be a plain SELECT".into(),
        });
    };
    let aliases: Vec<(String, Expr)> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { expr, alias } => {
                Some((alias.value.to_ascii_lowercase(), expr.clone()))
            }
            _ => None,
        })
        .collect();
    let mut severity = expr.clone();
    let _ = visit_expressions_mut(&mut severity, |e| {
        if let Expr::Identifier(id) = e
            && let Some((_, aliased)) = aliases
                .iter()
                .find(|(name, _)| *name == id.value.to_ascii_lowercase())
        {
            *e = Expr::Nested(Box::new(aliased.clone()));
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    select.projection.push(SelectItem::ExprWithAlias {
        expr: severity,
        alias: Ident::new(SEVERITY_COLUMN),
    });
    Ok(Some(query.to_string()))
}

impl AlertRule {
    /// Checks the `ALERT` clause of `cq` against the body's output schema; `None` when the
    /// CQ has no `ALERT` clause. `slide_us` is shape B's window slide.
    pub(crate) fn new(
        cq: &CreateContinuousQuery,
        version: u64,
        shape: QueryShape,
        output: SchemaRef,
        slide_us: i64,
    ) -> Result<Option<Self>, CqError> {
        let Some(spec) = &cq.alert else {
            return Ok(None);
        };
        let unsupported = |reason: String| CqError::Unsupported {
            sql: cq.body_sql.clone(),
            reason,
        };
        let hidden = output
            .fields()
            .iter()
            .position(|f| f.name() == SEVERITY_COLUMN);
        let column = |name: &str| -> Result<usize, CqError> {
            output
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(name))
                .filter(|&i| Some(i) != hidden)
                .ok_or_else(|| {
                    unsupported(format!(
                        "ALERT refers to column `{name}`, which the SELECT does not output \
                         (it outputs: {})",
                        column_names(&output, hidden)
                    ))
                })
        };
        let severity = match (&spec.severity, hidden) {
            (_, Some(c)) => Severity::Column(c),
            (None, None) => Severity::Constant("warning".into()),
            (Some(Expr::Identifier(id)), None) => Severity::Column(column(&id.value)?),
            (Some(e), None) => Severity::Constant(constant(e).ok_or_else(|| {
                unsupported(format!(
                    "SEVERITY must be a constant, an output column or an expression over the \
                     SELECT's columns and aggregates, not `{e}`"
                ))
            })?),
        };
        let time_column = output
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(&cq.event_time.value));
        let dedup = if !spec.dedup_by.is_empty() {
            spec.dedup_by
                .iter()
                .map(|id| column(&id.value))
                .collect::<Result<Vec<_>, _>>()?
        } else if shape == QueryShape::PerRow {
            (0..output.fields().len())
                .filter(|&i| Some(i) != time_column && Some(i) != hidden)
                .collect()
        } else {
            group_keys(cq)
                .iter()
                .filter_map(|name| column(name).ok())
                .collect()
        };
        let labels = spec
            .labels
            .iter()
            .map(|(k, e)| {
                constant(e).map(|v| (k.clone(), v)).ok_or_else(|| {
                    unsupported(format!(
                        "LABELS value for `{k}` must be a constant, not `{e}`"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let resolve_after = spec
            .resolve_after
            .or(spec.cooldown)
            .unwrap_or(DEFAULT_RESOLVE_AFTER);
        let pending = match spec.for_ {
            None => Pending::None,
            Some(For::Duration(d)) if d.is_zero() => Pending::None,
            Some(For::Duration(d)) => Pending::Micros(micros(d)),
            Some(For::Windows(_)) if shape == QueryShape::PerRow => {
                return Err(unsupported(
                    "FOR n WINDOWS needs a windowed body (TUMBLE, HOP or date_bin); \
                     a per-row rule takes FOR INTERVAL '…'"
                        .into(),
                ));
            }
            Some(For::Windows(n)) if n <= 1 => Pending::None,
            Some(For::Windows(n)) => Pending::Windows(n),
        };
        if spec.absent_for.is_some() && (spec.for_.is_some() || spec.keep_firing_for.is_some()) {
            return Err(unsupported(
                "ABSENT FOR is its own pending period and resolves when the key's rows return: \
                 it does not combine with FOR or KEEP FIRING FOR"
                    .into(),
            ));
        }
        Ok(Some(Self {
            resolve_after_us: micros(resolve_after),
            slide_us: slide_us.max(1),
            pending,
            keep_firing_us: spec.keep_firing_for.map_or(0, micros),
            cooldown_us: micros(spec.cooldown.unwrap_or(DEFAULT_COOLDOWN)),
            absent_us: spec.absent_for.map(micros),
            cq_name: cq.name.to_string(),
            version,
            shape,
            severity,
            dedup,
            labels,
            annotations: spec.annotations.clone(),
            time_column,
            hidden,
            output,
        }))
    }

    /// The rule of `cq` for its built `runtime`.
    pub(crate) fn for_runtime(
        cq: &CreateContinuousQuery,
        version: u64,
        runtime: &super::CqRuntime,
    ) -> Result<Option<Self>, CqError> {
        let slide_us = runtime
            .plan
            .window
            .as_ref()
            .map_or(1, |w| w.spec.slide_ns / 1_000);
        Self::new(
            cq,
            version,
            runtime.shape(),
            runtime.plan.output_schema(),
            slide_us,
        )
    }

    /// The output columns that form the instance key, by name.
    pub(crate) fn dedup_names(&self) -> Vec<String> {
        self.dedup
            .iter()
            .map(|&c| self.output.field(c).name().clone())
            .collect()
    }

    /// The rows of `out` as observations, in row order.
    pub(crate) fn observations(
        &self,
        out: &CqOutput,
        now_us: i64,
    ) -> Result<Vec<Observation>, CqError> {
        let rows = &out.rows;
        let names: Vec<String> = self
            .output
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let formatters = rows
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut observations = Vec::with_capacity(rows.num_rows());
        for i in 0..rows.num_rows() {
            let values: Vec<serde_json::Value> = rows
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(c, f)| json_value(c, f, i))
                .collect();
            let mut labels = serde_json::Map::new();
            for &c in &self.dedup {
                labels.insert(names[c].clone(), values[c].clone());
            }
            for (k, v) in &self.labels {
                labels.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            let fingerprint = fingerprint(&labels);
            let shown = |c: &usize| Some(*c) != self.hidden;
            let visible: Vec<usize> = (0..names.len()).filter(shown).collect();
            let value = serde_json::Value::Object(
                visible
                    .iter()
                    .map(|&c| (names[c].clone(), values[c].clone()))
                    .collect(),
            )
            .to_string();
            let annotations = self.annotations(&names, &values);
            let severity = match &self.severity {
                Severity::Constant(s) => s.clone(),
                Severity::Column(c) => text(&values[*c]),
            };
            let (at, covers_to, window) = match self.shape {
                QueryShape::PerRow => {
                    let t = self
                        .time_column
                        .and_then(|c| event_time(rows.column(c), i))
                        .unwrap_or(now_us);
                    (t, t, None)
                }
                QueryShape::Windowed => {
                    let start = out.window_start.get(i).copied().unwrap_or_default();
                    let end = out.window_end.get(i).copied().unwrap_or_default();
                    (start, end, Some((start, end)))
                }
            };
            observations.push(Observation {
                fingerprint,
                labels,
                value,
                annotations,
                severity,
                at,
                covers_to,
                window,
                late: out.late,
            });
        }
        Ok(observations)
    }

    fn annotations(&self, names: &[String], values: &[serde_json::Value]) -> String {
        let filled: serde_json::Map<String, serde_json::Value> = self
            .annotations
            .iter()
            .map(|(k, template)| {
                let mut s = template.clone();
                for (n, v) in names.iter().zip(values) {
                    s = s.replace(&format!("{{{n}}}"), &text(v));
                }
                (k.clone(), serde_json::Value::String(s))
            })
            .collect();
        serde_json::Value::Object(filled).to_string()
    }
}

/// The fingerprint of a label set.
pub(crate) fn fingerprint(labels: &serde_json::Map<String, serde_json::Value>) -> String {
    hex_hash(&[&serde_json::Value::Object(labels.clone()).to_string()])
}

/// The non-window GROUP BY columns of a shape B body, by name.
fn group_keys(cq: &CreateContinuousQuery) -> Vec<String> {
    let SetExpr::Select(select) = cq.query.body.as_ref() else {
        return Vec::new();
    };
    let GroupByExpr::Expressions(exprs, _) = &select.group_by else {
        return Vec::new();
    };
    exprs
        .iter()
        .filter_map(|e| match e {
            Expr::Identifier(id) => Some(id.value.clone()),
            Expr::CompoundIdentifier(ids) => ids.last().map(|id| id.value.clone()),
            _ => None,
        })
        .filter(|n| {
            !n.eq_ignore_ascii_case("window_start") && !n.eq_ignore_ascii_case("window_end")
        })
        .collect()
}

/// A literal's text: `'critical'` → `critical`, `3` → `3`.
fn constant(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Nested(e) => constant(e),
        _ => None,
    }
}

fn column_names(schema: &Schema, hidden: Option<usize>) -> String {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != hidden)
        .map(|(_, f)| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn json_value(c: &ArrayRef, f: &ArrayFormatter<'_>, i: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if c.is_null(i) {
        return J::Null;
    }
    let s = f.value(i).to_string();
    match c.data_type() {
        DataType::Boolean => J::Bool(s == "true"),
        t if t.is_integer() => s.parse::<i64>().map(J::from).unwrap_or(J::String(s)),
        t if t.is_floating() => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number)
            .unwrap_or(J::String(s)),
        _ => J::String(s),
    }
}

fn event_time(c: &ArrayRef, i: usize) -> Option<i64> {
    let c = arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None)).ok()?;
    let c = c.as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    (!c.is_null(i)).then(|| c.value(i))
}

/// FNV-1a over the parts (each followed by a separator), as 16 hex digits: stable across
/// builds and platforms, unlike `std`'s hasher.
pub(crate) fn hex_hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
