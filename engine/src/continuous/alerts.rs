//! Output rows of a CQ with an `ALERT` clause become alert instances (CONTINUOUS_QUERIES.md §5.4).
//!
//! An instance is identified by its fingerprint: a hash of its labels, which are the
//! DEDUP BY values plus the static `LABELS`. Its `alert_id` is a hash of the CQ name,
//! version, fingerprint and an event-time anchor (shape A: the first matching row's event
//! time; shape B: the window start), so replaying the same input after a restart finds the
//! same id and upserts instead of adding a row.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::sql::sqlparser::ast::{Expr, GroupByExpr, SetExpr, Value};
use logsphere_sql::CreateContinuousQuery;
use serde::{Deserialize, Serialize};

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
    pub severity: String,
    /// `firing`, or `resolved` (shape A, after RESOLVE AFTER of event time without a match).
    pub state: String,
    /// Wall-clock µs when the instance was first observed.
    pub first_seen: i64,
    /// Wall-clock µs when it started firing.
    pub fired_at: i64,
    /// Wall-clock µs of the latest observation.
    pub last_seen: i64,
    pub observation_count: u64,
    /// Shape B: the window, µs since the epoch.
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    /// The latest output row, as a JSON object.
    pub value: String,
    /// The alert fired on data that arrived after its window closed.
    pub late: bool,
    /// Wall-clock µs when it resolved.
    #[serde(default)]
    pub resolved_at: Option<i64>,
    /// Event time (µs) of the latest observation, which resolution is measured from.
    #[serde(default)]
    pub last_event: i64,
    /// ANNOTATIONS with `{column}` filled from the latest row, as a JSON object.
    pub annotations: String,
}

/// How a CQ's output rows map to alert instances.
#[derive(Debug, Clone)]
pub(crate) struct AlertRule {
    cq_name: String,
    version: u64,
    shape: QueryShape,
    severity: Severity,
    /// Output columns that form the instance key.
    dedup: Vec<usize>,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    /// Shape A: the output column holding the event time, if projected.
    time_column: Option<usize>,
    /// Shape A: a firing instance resolves after this much event time without a match.
    resolve_after_us: i64,
    output: SchemaRef,
}

/// Shape A's quiet period when neither RESOLVE AFTER nor COOLDOWN is given *(design)*.
const DEFAULT_RESOLVE_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone)]
enum Severity {
    Constant(String),
    Column(usize),
}

impl AlertRule {
    /// Checks the `ALERT` clause of `cq` against the body's output schema; `None` when the
    /// CQ has no `ALERT` clause.
    pub(crate) fn new(
        cq: &CreateContinuousQuery,
        version: u64,
        shape: QueryShape,
        output: SchemaRef,
    ) -> Result<Option<Self>, CqError> {
        let Some(spec) = &cq.alert else {
            return Ok(None);
        };
        let unsupported = |reason: String| CqError::Unsupported {
            sql: cq.body_sql.clone(),
            reason,
        };
        let column = |name: &str| -> Result<usize, CqError> {
            output
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    unsupported(format!(
                        "ALERT refers to column `{name}`, which the SELECT does not output \
                         (it outputs: {})",
                        column_names(&output)
                    ))
                })
        };
        let severity = match &spec.severity {
            None => Severity::Constant("warning".into()),
            Some(Expr::Identifier(id)) => Severity::Column(column(&id.value)?),
            Some(e) => Severity::Constant(constant(e).ok_or_else(|| {
                unsupported(format!(
                    "SEVERITY must be a constant or an output column in this version, not `{e}`"
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
                .filter(|&i| Some(i) != time_column)
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
        Ok(Some(Self {
            resolve_after_us: i64::try_from(resolve_after.as_micros()).unwrap_or(i64::MAX),
            cq_name: cq.name.to_string(),
            version,
            shape,
            severity,
            dedup,
            labels,
            annotations: spec.annotations.clone(),
            time_column,
            output,
        }))
    }

    /// The output columns that form the instance key, by name.
    pub(crate) fn dedup_names(&self) -> Vec<String> {
        self.dedup
            .iter()
            .map(|&c| self.output.field(c).name().clone())
            .collect()
    }

    /// Folds `out` into `alerts` (keyed by alert id); returns how many alerts were new.
    pub(crate) fn apply(
        &self,
        out: &CqOutput,
        alerts: &mut BTreeMap<String, Alert>,
        now_us: i64,
    ) -> Result<usize, CqError> {
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
        let mut new = 0;
        // Shape A: the firing instance per fingerprint, found once per batch, not per row.
        let mut firing: std::collections::HashMap<String, String> = alerts
            .values()
            .filter(|a| a.cq_version == self.version && a.state == "firing")
            .map(|a| (a.fingerprint.clone(), a.alert_id.clone()))
            .collect();
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
            let labels = serde_json::Value::Object(labels).to_string();
            let fingerprint = hex_hash(&[&labels]);
            let value = serde_json::Value::Object(
                names.iter().cloned().zip(values.iter().cloned()).collect(),
            )
            .to_string();
            let annotations = self.annotations(&names, &values);
            let severity = match &self.severity {
                Severity::Constant(s) => s.clone(),
                Severity::Column(c) => text(&values[*c]),
            };
            let event = match self.shape {
                QueryShape::PerRow => self
                    .time_column
                    .and_then(|c| event_time(rows.column(c), i))
                    .unwrap_or(now_us),
                QueryShape::Windowed => out.window_start.get(i).copied().unwrap_or_default(),
            };
            let (anchor, window) = match self.shape {
                QueryShape::PerRow => {
                    if let Some(a) = firing.get(&fingerprint).and_then(|id| alerts.get_mut(id)) {
                        a.observation_count += 1;
                        a.last_seen = now_us;
                        a.last_event = a.last_event.max(event);
                        a.value = value;
                        a.annotations = annotations;
                        continue;
                    }
                    (event, None)
                }
                QueryShape::Windowed => {
                    let start = out.window_start.get(i).copied().unwrap_or_default();
                    let end = out.window_end.get(i).copied().unwrap_or_default();
                    (start, Some((start, end)))
                }
            };
            let alert_id = hex_hash(&[
                &self.cq_name,
                &self.version.to_string(),
                &fingerprint,
                &anchor.to_string(),
            ]);
            if let Some(a) = alerts.get_mut(&alert_id) {
                a.observation_count += 1;
                a.last_seen = now_us;
                a.value = value;
                a.annotations = annotations;
                continue;
            }
            new += 1;
            if self.shape == QueryShape::PerRow {
                firing.insert(fingerprint.clone(), alert_id.clone());
            }
            alerts.insert(
                alert_id.clone(),
                Alert {
                    alert_id,
                    cq_name: self.cq_name.clone(),
                    cq_version: self.version,
                    fingerprint,
                    labels,
                    severity,
                    state: "firing".into(),
                    first_seen: now_us,
                    fired_at: now_us,
                    last_seen: now_us,
                    observation_count: 1,
                    window_start: window.map(|w| w.0),
                    window_end: window.map(|w| w.1),
                    value,
                    late: out.late,
                    annotations,
                    resolved_at: None,
                    last_event: event,
                },
            );
        }
        Ok(new)
    }

    /// Shape A: resolves firing instances of this version with no match for
    /// `resolve_after` of event time, given the watermark `w`.
    pub(crate) fn resolve(&self, alerts: &mut BTreeMap<String, Alert>, w: i64, now_us: i64) {
        if self.shape != QueryShape::PerRow {
            return;
        }
        for a in alerts.values_mut() {
            if a.cq_version == self.version
                && a.state == "firing"
                && a.last_event.saturating_add(self.resolve_after_us) <= w
            {
                a.state = "resolved".into();
                a.resolved_at = Some(now_us);
            }
        }
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

fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
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

/// Schema of the `alerts` system table.
pub fn alerts_schema() -> SchemaRef {
    let ts = crate::model::ts_type;
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("cq_name", DataType::Utf8, false),
        Field::new("cq_version", DataType::Int64, false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("labels", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("first_seen", ts(), false),
        Field::new("fired_at", ts(), false),
        Field::new("last_seen", ts(), false),
        Field::new("observation_count", DataType::Int64, false),
        Field::new("window_start", ts(), true),
        Field::new("window_end", ts(), true),
        Field::new("value", DataType::Utf8, false),
        Field::new("late", DataType::Boolean, false),
        Field::new("annotations", DataType::Utf8, false),
        Field::new("resolved_at", ts(), true),
    ]))
}

/// `alerts` as one batch of [`alerts_schema`].
pub(crate) fn alerts_batch<'a>(
    alerts: impl Iterator<Item = &'a Alert>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let alerts: Vec<&Alert> = alerts.collect();
    let s = |f: fn(&Alert) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(alerts.iter().map(|a| f(a))))
    };
    let ts = |f: fn(&Alert) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter(alerts.iter().map(|a| f(a))).with_timezone("UTC"),
        )
    };
    let int = |f: fn(&Alert) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            alerts
                .iter()
                .map(|a| i64::try_from(f(a)).unwrap_or(i64::MAX)),
        ))
    };
    RecordBatch::try_new(
        alerts_schema(),
        vec![
            s(|a| &a.alert_id),
            s(|a| &a.cq_name),
            int(|a| a.cq_version),
            s(|a| &a.fingerprint),
            s(|a| &a.labels),
            s(|a| &a.severity),
            s(|a| &a.state),
            ts(|a| Some(a.first_seen)),
            ts(|a| Some(a.fired_at)),
            ts(|a| Some(a.last_seen)),
            int(|a| a.observation_count),
            ts(|a| a.window_start),
            ts(|a| a.window_end),
            s(|a| &a.value),
            Arc::new(BooleanArray::from_iter(alerts.iter().map(|a| Some(a.late)))),
            s(|a| &a.annotations),
            ts(|a| a.resolved_at),
        ],
    )
}
