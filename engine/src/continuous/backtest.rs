//! `BACKTEST` and `EXPLAIN CONTINUOUS QUERY` (CONTINUOUS_QUERIES.md §4.2, §8 items 1 and 4).
//!
//! A backtest reads stored `logs` (hot and cold tiers, through a [`SessionContext`]) for
//! `[from, to)` sorted by event time, and pushes the rows through a fresh
//! [`CqRuntime`] and the live alert state machine (`lifecycle.rs`), with the rows'
//! event time as the clock. It returns every transition (pending, fired, escalated,
//! repeated, resolved, inactive), not only end states. Nothing is persisted.

use std::time::Duration;

use arrow::array::{RecordBatch, TimestampMicrosecondArray};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use logsphere_sql::CreateContinuousQuery;

use super::alerts::{AlertRule, Pending};
use super::lifecycle::{AlertBook, Transition};
use super::system_tables::transitions_batch;
use super::{CqError, CqRuntime, EmitPolicy, InputError, OnLate, Position, QueryShape, spec_from};

/// Columns that hold free text: as an instance key they make one alert per line.
const FREE_TEXT_COLUMNS: [&str; 2] = ["message", "attributes"];

/// Replays `cq` over the stored `logs` rows with `from_us <= timestamp < to_us` (µs since
/// the epoch) and returns every transition the alert state machine makes
/// ([`backtest_schema`]). The input ends at `to_us`: windows still open then are closed
/// with what they hold, and the condition is judged up to `to_us`.
pub async fn backtest(
    cq: &CreateContinuousQuery,
    version: u64,
    ctx: &SessionContext,
    from_us: i64,
    to_us: i64,
) -> Result<RecordBatch, CqError> {
    let spec = spec_from(cq)?;
    let mut runtime = CqRuntime::new(spec).await?;
    let rule = AlertRule::for_runtime(cq, version, &runtime)?;
    let sql = format!(
        "SELECT * FROM logs WHERE timestamp >= to_timestamp_micros({from_us}) \
         AND timestamp < to_timestamp_micros({to_us}) ORDER BY timestamp"
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut book = AlertBook::default();
    let mut transitions: Vec<Transition> = Vec::new();
    let mut clock = from_us;
    let mut n: u64 = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = crate::model::fixed_logs_columns(&batch)?;
        let ts = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| CqError::from(InputError::LogsTimestampNotMicros))?;
        // Live, the watermark (and with it RESOLVE AFTER) moves after every ingested request;
        // one stored batch can span hours. Feed it one second of event time at a time, so a
        // per-row alert resolves between two episodes as it does live, whatever the size of
        // DataFusion's batches.
        let mut start = 0;
        while start < batch.num_rows() {
            let second = ts.value(start).div_euclid(1_000_000);
            let mut end = start + 1;
            while end < batch.num_rows() && ts.value(end).div_euclid(1_000_000) == second {
                end += 1;
            }
            let slice = batch.slice(start, end - start);
            start = end;
            clock = clock.max(ts.value(end - 1));
            n += 1;
            let outputs = runtime.process("backtest", Position::Wal { seq: n }, &slice, clock)?;
            if let Some(rule) = &rule {
                for out in &outputs {
                    transitions.extend(rule.observe(out, &mut book, clock)?);
                }
                if let Some(w) = runtime.watermark() {
                    transitions.extend(rule.advance(&mut book, w, clock));
                }
            }
        }
    }
    let outputs = runtime.finish()?;
    if let Some(rule) = &rule {
        for out in &outputs {
            transitions.extend(rule.observe(out, &mut book, clock)?);
        }
        transitions.extend(rule.advance(&mut book, to_us, clock));
    }
    Ok(transitions_batch(&transitions)?)
}

/// `EXPLAIN CONTINUOUS QUERY`: what the runtime would do with `cq`, one `(item, value)`
/// pair per fact.
pub async fn explain(cq: &CreateContinuousQuery) -> Result<Vec<(String, String)>, CqError> {
    let spec = spec_from(cq)?;
    let runtime = CqRuntime::new(spec.clone()).await?;
    let plan = &runtime.plan;
    let rule = AlertRule::for_runtime(cq, 1, &runtime)?;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: String| rows.push((k.to_string(), v));
    let windowed = plan.shape() == QueryShape::Windowed;
    push(
        "shape",
        if windowed {
            "windowed aggregate (one window, group keys, HAVING)".into()
        } else {
            "per-row (filter and projection, no state)".into()
        },
    );
    let window = plan.window.as_ref();
    if let Some(w) = window {
        let size = Duration::from_nanos(w.spec.size_ns.unsigned_abs());
        let slide = Duration::from_nanos(w.spec.slide_ns.unsigned_abs());
        let kind = if !w.append_columns {
            "date_bin"
        } else if w.spec.size_ns == w.spec.slide_ns {
            "TUMBLE"
        } else {
            "HOP"
        };
        let mut v = format!("{kind} size {}", human(size));
        if kind == "HOP" {
            v.push_str(&format!(", slide {}", human(slide)));
        }
        if w.spec.offset_ns != 0 {
            v.push_str(&format!(
                ", offset {}",
                human(Duration::from_nanos(w.spec.offset_ns.unsigned_abs()))
            ));
        }
        push("window", v);
    } else {
        push("window", "none".into());
    }
    let emit = runtime.emit_policy();
    if windowed {
        let name = match emit {
            EmitPolicy::OnThreshold => "ON THRESHOLD",
            EmitPolicy::OnWindowClose => "ON WINDOW CLOSE",
        };
        let why = if cq.emit.is_some() {
            "given".to_string()
        } else if cq.into.is_some() {
            "INTO: each window's final row, at close, then late corrections".to_string()
        } else if !plan.has_having {
            "no HAVING: each window's final row, at close".to_string()
        } else if plan.having_monotone {
            "HAVING is monotone (it can only turn true as rows arrive): fires at the crossing row, once per window"
                .to_string()
        } else {
            "HAVING is not monotone (it can turn false again as rows arrive): waits for the window to close"
                .to_string()
        };
        push("emit", format!("{name} ({why})"));
    } else {
        push("emit", "PER ROW (every matching row, at ingest)".into());
    }
    match &rule {
        Some(rule) => {
            let names = rule.dedup_names();
            let key = if windowed {
                let mut k = vec!["window_start".to_string()];
                k.extend(names.iter().cloned());
                k.join(", ")
            } else {
                names.join(", ")
            };
            push("instance key", format!("({key})"));
            let free: Vec<&String> = names
                .iter()
                .filter(|n| FREE_TEXT_COLUMNS.iter().any(|f| n.eq_ignore_ascii_case(f)))
                .collect();
            if !free.is_empty() {
                push(
                    "warning",
                    format!(
                        "the instance key includes free-text column(s) {}: nearly every row becomes \
                         its own alert; DEDUP BY low-cardinality columns instead",
                        free.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        None => push("instance key", "none (no ALERT clause)".into()),
    }
    if let Some(rule) = &rule {
        push("alert lifecycle", lifecycle(rule, windowed));
    }
    push(
        "watermark",
        format!(
            "per partition max(timestamp) - {}, minimum over partitions active within {}, \
             floored at now() - {} (WATERMARK + max_ingest_delay)",
            human(spec.watermark),
            human(spec.idle_timeout),
            human(spec.watermark + spec.max_ingest_delay)
        ),
    );
    push(
        "allowed lateness",
        format!(
            "{}, ON LATE {}",
            human(spec.allowed_lateness),
            match spec.on_late {
                OnLate::Drop => "DROP",
                OnLate::Update => "UPDATE",
            }
        ),
    );
    let state = match window {
        Some(w) => {
            let slide = w.spec.slide_ns.max(1);
            let span = w.spec.size_ns
                + i64::try_from(spec.watermark.as_nanos()).unwrap_or(i64::MAX / 4)
                + i64::try_from(spec.allowed_lateness.as_nanos()).unwrap_or(i64::MAX / 4);
            let windows = ((span + slide - 1) / slide).max(1);
            let aggs = plan.agg.as_ref().map_or(0, |a| a.aggs.len());
            let mut v = format!(
                "{windows} open window(s) x keys x {aggs} accumulator(s) \
                 (window + WATERMARK + ALLOWED LATENESS, per slide)"
            );
            match spec.max_keys {
                Some(m) => v.push_str(&format!("; max_keys = {m} caps live (window, key) states")),
                None => v.push_str("; no max_keys cap"),
            }
            v
        }
        None => "none (stateless); one firing alert per instance".into(),
    };
    push("state bound", state);
    let latency = match (windowed, emit) {
        (false, _) | (true, EmitPolicy::OnThreshold) => "at ingest".to_string(),
        (true, EmitPolicy::OnWindowClose) => {
            let size = window.map_or(Duration::ZERO, |w| {
                Duration::from_nanos(w.spec.size_ns.unsigned_abs())
            });
            format!(
                "window + WATERMARK + max_ingest_delay = {} + {} + {} = {}",
                human(size),
                human(spec.watermark),
                human(spec.max_ingest_delay),
                human(size + spec.watermark + spec.max_ingest_delay)
            )
        }
    };
    push("worst-case alert latency", latency);
    Ok(rows)
}

/// The alert state machine's settings, in words.
fn lifecycle(rule: &AlertRule, windowed: bool) -> String {
    let us = |v: i64| human(Duration::from_micros(v.unsigned_abs()));
    if let Some(d) = rule.absent_us {
        return format!(
            "rows are heartbeats: a key without rows for {} gets an absent alert, \
             resolved when it has rows again",
            us(d)
        );
    }
    let mut parts = vec![match rule.pending {
        Pending::None => "fires at the first qualifying row".to_string(),
        Pending::Micros(d) => format!("pending until true for {}", us(d)),
        Pending::Windows(n) => format!("pending until {n} qualifying windows"),
    }];
    parts.push(if windowed {
        "false when the window after the last qualifying one closes without a row for the key"
            .to_string()
    } else {
        format!("false after {} without a match", us(rule.resolve_after_us))
    });
    if rule.keep_firing_us > 0 {
        parts.push(format!("kept firing {} after", us(rule.keep_firing_us)));
    }
    parts.push(format!(
        "repeats at most every {} of event time; a severity increase is sent at once",
        us(rule.cooldown_us)
    ));
    parts.join("; ")
}

/// `90s` → `1m 30s`.
fn human(d: Duration) -> String {
    let mut s = d.as_secs();
    let micros = d.subsec_micros();
    if s == 0 && micros == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= n {
            parts.push(format!("{}{unit}", s / n));
            s %= n;
        }
    }
    if s > 0 || micros > 0 {
        if micros > 0 {
            parts.push(format!("{s}.{micros:06}s"));
        } else {
            parts.push(format!("{s}s"));
        }
    }
    parts.join(" ")
}
