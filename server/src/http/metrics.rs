//! `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::HttpState;

pub(super) async fn render(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let m = state.engine.metrics();
    let w = state.engine.wal_metrics();
    let (hot_rows, cold_files) = state.engine.tier_stats();
    let counters: [(&str, &str, u64); 12] = [
        (
            "logsphere_ingest_requests_total",
            "Ingest requests stored.",
            m.requests.load(Relaxed),
        ),
        (
            "logsphere_records_accepted_total",
            "Records stored in logs.",
            m.records_accepted.load(Relaxed),
        ),
        (
            "logsphere_records_rejected_total",
            "Records stored in dead_letters.",
            m.records_rejected.load(Relaxed),
        ),
        (
            "logsphere_ingest_replayed_total",
            "Requests answered from an earlier one with the same Idempotency-Key.",
            m.requests_replayed.load(Relaxed),
        ),
        (
            "logsphere_wal_bytes_total",
            "Bytes appended to the WAL.",
            w.bytes.load(Relaxed),
        ),
        (
            "logsphere_wal_entries_total",
            "Entries appended to the WAL.",
            w.entries.load(Relaxed),
        ),
        (
            "logsphere_wal_fsyncs_total",
            "WAL group commits (one fsync each).",
            w.syncs.load(Relaxed),
        ),
        (
            "logsphere_flushes_total",
            "Hot buffer flushes to Parquet.",
            m.flushes.load(Relaxed),
        ),
        (
            "logsphere_flushed_rows_total",
            "Rows written to Parquet.",
            m.flushed_rows.load(Relaxed),
        ),
        (
            "logsphere_flush_failures_total",
            "Failed flush attempts.",
            m.flush_failures.load(Relaxed),
        ),
        (
            "logsphere_queries_total",
            "SQL queries run.",
            m.queries.load(Relaxed),
        ),
        (
            "logsphere_cq_catch_ups_total",
            "Times continuous queries fell behind ingest and caught up from the WAL.",
            state.engine.cq_catch_ups(),
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let gauges = [
        (
            "logsphere_hot_rows",
            "Rows in the hot buffer.",
            hot_rows as u64,
        ),
        (
            "logsphere_cold_files",
            "Committed Parquet files of logs.",
            cold_files as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
