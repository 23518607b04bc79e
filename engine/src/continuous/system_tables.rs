//! The system tables of continuous queries — `continuous_queries`, `alerts`,
//! `alert_events`, and the results of `BACKTEST` and `EXPLAIN` — their schemas in one
//! place, and how the registry renders the first three.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::EmitPolicy;
use super::alerts::Alert;
use super::definitions::CqDefinition;
use super::hosting::HostedCq;
use super::lifecycle::Transition;
use super::notify::AlertEvent;
use super::registry::{CqRegistry, Inner};

impl CqRegistry {
    /// The `alerts` system table, now.
    pub fn alerts_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let inner = self.lock();
        alerts_batch(
            inner
                .live
                .values()
                .flat_map(|l| l.book.alerts.values())
                .chain(inner.dropped.values()),
        )
    }

    /// The `alert_events` system table, now.
    pub fn events_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let inner = self.lock();
        let events: Vec<AlertEvent> = inner
            .live
            .values()
            .map(|l| &l.events)
            .chain(std::iter::once(&inner.dropped_events))
            .flat_map(|events| {
                events
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        events_batch(&events)
    }

    /// The `continuous_queries` system table, now.
    pub fn queries_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let inner = self.lock();
        let live = Self::live_rows(&inner)?;
        if inner.failed.is_empty() {
            return Ok(live);
        }
        let failed: Vec<&(CqDefinition, String)> = inner.failed.values().collect();
        let schema = queries_schema();
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                let n = failed.len();
                match f.name().as_str() {
                    "name" => Arc::new(StringArray::from_iter_values(
                        failed.iter().map(|(d, _)| &d.name),
                    )),
                    "version" => Arc::new(Int64Array::from_iter_values(
                        failed
                            .iter()
                            .map(|(d, _)| i64::try_from(d.version).unwrap_or(i64::MAX)),
                    )),
                    "state" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                        "FAILED", n,
                    ))),
                    "created_at" => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            failed.iter().map(|(d, _)| d.created_at),
                        )
                        .with_timezone("UTC"),
                    ),
                    "definition" => Arc::new(StringArray::from_iter_values(
                        failed.iter().map(|(d, _)| &d.sql_text),
                    )),
                    "emit" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
                    "error" => {
                        Arc::new(StringArray::from_iter_values(failed.iter().map(|(_, e)| e)))
                    }
                    _ if matches!(f.data_type(), DataType::Int64) => {
                        Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(0, n)))
                    }
                    _ => arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        let failed = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        arrow::compute::concat_batches(&schema, [&live, &failed])
    }

    fn live_rows(inner: &Inner) -> Result<RecordBatch, arrow::error::ArrowError> {
        let l: Vec<&HostedCq> = inner.live.values().collect();
        let s = |f: &dyn Fn(&HostedCq) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from_iter(l.iter().map(|x| f(x))))
        };
        let ts = |f: &dyn Fn(&HostedCq) -> Option<i64>| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter(l.iter().map(|x| f(x))).with_timezone("UTC"),
            )
        };
        let int = |f: &dyn Fn(&HostedCq) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                l.iter().map(|x| i64::try_from(f(x)).unwrap_or(i64::MAX)),
            ))
        };
        RecordBatch::try_new(
            queries_schema(),
            vec![
                s(&|x| Some(x.def.name.clone())),
                int(&|x| x.def.version),
                s(&|x| {
                    Some(if x.backfill_queue.is_some() {
                        "BACKFILL".to_string()
                    } else {
                        x.def.state.as_str().to_string()
                    })
                }),
                s(&|x| Some(x.def.sql_text.clone())),
                ts(&|x| Some(x.def.created_at)),
                s(&|x| {
                    Some(
                        match x.runtime.emit_policy() {
                            EmitPolicy::OnThreshold if x.runtime.plan.agg.is_some() => {
                                "ON THRESHOLD"
                            }
                            EmitPolicy::OnWindowClose if x.runtime.plan.agg.is_some() => {
                                "ON WINDOW CLOSE"
                            }
                            _ => "PER ROW",
                        }
                        .to_string(),
                    )
                }),
                ts(&|x| x.runtime.watermark().filter(|w| *w > i64::MIN)),
                int(&|x| x.runtime.metrics().rows_in),
                int(&|x| x.runtime.metrics().late_rows_updated),
                int(&|x| x.runtime.metrics().late_rows_dropped),
                int(&|x| x.runtime.live_keys() as u64),
                int(&|x| x.book.alerts.len() as u64),
                ts(&|x| x.last_fired),
                ts(&|x| x.last_checkpoint_at),
                int(&|x| x.seq),
                s(&|x| x.error.clone()),
                // Cluster mode fills in the nodes running it (`cluster/continuous.rs`).
                s(&|_| None),
            ],
        )
    }
}

/// Schema of the `continuous_queries` system table.
pub fn queries_schema() -> SchemaRef {
    let ts = crate::model::ts_type;
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("created_at", ts(), false),
        Field::new("emit", DataType::Utf8, false),
        Field::new("watermark", ts(), true),
        Field::new("rows_in", DataType::Int64, false),
        Field::new("late_rows_updated", DataType::Int64, false),
        Field::new("late_rows_dropped", DataType::Int64, false),
        Field::new("state_keys", DataType::Int64, false),
        Field::new("alerts", DataType::Int64, false),
        Field::new("last_fired", ts(), true),
        Field::new("last_checkpoint", ts(), true),
        Field::new("wal_seq", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("nodes", DataType::Utf8, true),
    ]))
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
        Field::new("resolved_reason", DataType::Utf8, true),
    ]))
}

/// `alerts` as one batch of [`alerts_schema`].
pub fn alerts_batch<'a>(
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
            Arc::new(StringArray::from_iter(
                alerts.iter().map(|a| a.resolved_reason.as_deref()),
            )),
        ],
    )
}

/// Schema of the `alert_events` system table.
pub fn alert_events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("cq_name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("at", crate::model::ts_type(), false),
        Field::new("next_attempt", crate::model::ts_type(), true),
    ]))
}

/// `events` as one batch of [`alert_events_schema`].
pub(super) fn events_batch(events: &[AlertEvent]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: fn(&AlertEvent) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    RecordBatch::try_new(
        alert_events_schema(),
        vec![
            s(|e| &e.event_id),
            s(|e| &e.alert_id),
            s(|e| &e.cq_name),
            s(|e| &e.kind),
            s(|e| &e.channel),
            s(|e| &e.status),
            Arc::new(Int64Array::from_iter_values(
                events
                    .iter()
                    .map(|e| i64::try_from(e.attempts).unwrap_or(i64::MAX)),
            )),
            Arc::new(StringArray::from_iter(
                events.iter().map(|e| e.last_error.as_deref()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.at))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter(events.iter().map(|e| e.next_attempt))
                    .with_timezone("UTC"),
            ),
        ],
    )
}

/// Schema of a backtest's result: one row per transition, with the alert as it stood
/// right after it; `at`, `fired_at` and `resolved_at` are event times.
pub fn backtest_schema() -> SchemaRef {
    let ts = crate::model::ts_type;
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("fingerprint", DataType::Utf8, false),
        Field::new("labels", DataType::Utf8, false),
        Field::new("transition", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("at", ts(), false),
        Field::new("fired_at", ts(), true),
        Field::new("resolved_at", ts(), true),
        Field::new("observation_count", DataType::Int64, false),
        Field::new("window_start", ts(), true),
        Field::new("window_end", ts(), true),
        Field::new("value", DataType::Utf8, false),
        Field::new("late", DataType::Boolean, false),
        Field::new("notified", DataType::Boolean, false),
    ]))
}

/// Schema of `EXPLAIN CONTINUOUS QUERY`: one row per fact.
pub fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]))
}

/// `transitions` as one batch of [`backtest_schema`], in the order they happened.
pub(super) fn transitions_batch(t: &[Transition]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: &dyn Fn(&Transition) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(t.iter().map(f)))
    };
    let ts = |f: &dyn Fn(&Transition) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter(t.iter().map(f)).with_timezone("UTC"))
    };
    RecordBatch::try_new(
        backtest_schema(),
        vec![
            s(&|t| &t.alert.alert_id),
            s(&|t| &t.alert.fingerprint),
            s(&|t| &t.alert.labels),
            s(&|t| t.kind.as_str()),
            s(&|t| &t.alert.severity),
            s(&|t| &t.alert.state),
            ts(&|t| Some(t.at)),
            ts(&|t| t.alert.episode.fired_event),
            ts(&|t| t.alert.episode.resolved_event),
            Arc::new(Int64Array::from_iter_values(t.iter().map(|t| {
                i64::try_from(t.alert.observation_count).unwrap_or(i64::MAX)
            }))),
            ts(&|t| t.alert.window_start),
            ts(&|t| t.alert.window_end),
            s(&|t| &t.alert.value),
            Arc::new(BooleanArray::from_iter(
                t.iter().map(|t| Some(t.alert.late)),
            )),
            Arc::new(BooleanArray::from_iter(
                t.iter().map(|t| Some(t.notifies())),
            )),
        ],
    )
}
