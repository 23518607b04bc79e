//! `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use logsphere_engine::source::kafka::PartitionStatus;

use super::HttpState;

pub(super) async fn render(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let m = state.engine.metrics();
    let w = state.engine.wal_metrics();
    let (hot_rows, cold_files) = state.engine.tier_stats();
    let cold = state.engine.cold_stats();
    let t = state.engine.tiering_metrics();
    let counters: [(&str, &str, u64); 30] = [
        (
            "logsphere_pg_connections_refused_total",
            "PostgreSQL connections refused with 53300: pg.max_connections were open.",
            state.pg.refused.load(Relaxed),
        ),
        (
            "logsphere_ingest_requests_total",
            "Ingest requests stored.",
            m.requests.load(Relaxed),
        ),
        (
            "logsphere_ingest_refused_busy_total",
            "Ingest requests refused with 429: http.max_concurrent_requests were in flight.",
            state.ingest_refused_busy.load(Relaxed),
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
            "logsphere_tiering_rounds_total",
            "Tiering rounds (flushes) committed, both modes.",
            t.rounds.load(Relaxed),
        ),
        (
            "logsphere_tiering_rows_total",
            "Rows moved to the cold tier.",
            t.rows.load(Relaxed),
        ),
        (
            "logsphere_tiering_bytes_total",
            "Bytes of Parquet written by tiering.",
            t.bytes.load(Relaxed),
        ),
        (
            "logsphere_tiering_failures_total",
            "Tiering rounds that failed (retried with backoff).",
            t.failures.load(Relaxed),
        ),
        (
            "logsphere_tiering_lease_busy_total",
            "Cluster: times another node held the tiering lease.",
            t.lease_busy.load(Relaxed),
        ),
        (
            "logsphere_queries_total",
            "SQL queries run.",
            m.queries.load(Relaxed),
        ),
        (
            "logsphere_compactions_total",
            "Compactions committed (one per merged group of files).",
            m.compactions.load(Relaxed),
        ),
        (
            "logsphere_compacted_files_total",
            "Cold files merged away by compactions.",
            m.compacted_files.load(Relaxed),
        ),
        (
            "logsphere_compaction_failures_total",
            "Failed compaction rounds.",
            m.compaction_failures.load(Relaxed),
        ),
        (
            "logsphere_retired_files_removed_total",
            "Cold files deleted after their grace period (replaced by a compaction).",
            m.retired_files_removed.load(Relaxed),
        ),
        (
            "logsphere_otlp_requests_total",
            "OTLP/HTTP log export requests read (POST /v1/logs, protobuf or OTLP JSON).",
            state.shipper_requests[0].load(Relaxed),
        ),
        (
            "logsphere_bulk_requests_total",
            "Elasticsearch _bulk requests read.",
            state.shipper_requests[1].load(Relaxed),
        ),
        (
            "logsphere_loki_requests_total",
            "Loki push requests read.",
            state.shipper_requests[2].load(Relaxed),
        ),
        (
            "logsphere_syslog_tcp_messages_total",
            "syslog messages read over TCP.",
            state.syslog.tcp_messages.load(Relaxed),
        ),
        (
            "logsphere_syslog_udp_messages_total",
            "syslog messages read over UDP.",
            state.syslog.udp_messages.load(Relaxed),
        ),
        (
            "logsphere_syslog_connections_refused_total",
            "syslog TCP connections closed at once: syslog.max_connections were open.",
            state.syslog.connections_refused.load(Relaxed),
        ),
        (
            "logsphere_syslog_store_failures_total",
            "Failed attempts to store a batch of syslog messages (each is retried).",
            state.syslog.store_failures.load(Relaxed),
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
    let last_round = t.last_round_us.load(Relaxed);
    let horizon = state.engine.tier_horizon_us().unwrap_or(0);
    let gauges = [
        (
            "logsphere_pg_connections",
            "PostgreSQL connections being served.",
            state.pg.open.load(Relaxed),
        ),
        (
            "logsphere_syslog_connections",
            "syslog TCP connections being read.",
            state.syslog.connections.load(Relaxed) as u64,
        ),
        (
            "logsphere_query_memory_reserved_bytes",
            "Bytes running queries hold in the query memory pool (pg.query_memory_mb).",
            state.engine.query_memory_reserved() as u64,
        ),
        (
            "logsphere_tiering_last_round_seconds",
            "When the last tiering round committed (Unix time; 0: none yet).",
            (last_round.max(0) / 1_000_000) as u64,
        ),
        (
            "logsphere_tiering_horizon_seconds",
            "Cluster: the cold horizon (Unix time; 0: nothing tiered yet).",
            (horizon.max(0) / 1_000_000) as u64,
        ),
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
        (
            "logsphere_cold_dead_letter_files",
            "Committed Parquet files of dead_letters.",
            cold.dead_letter_files as u64,
        ),
        (
            "logsphere_cold_bytes",
            "Bytes in the committed Parquet files.",
            cold.bytes,
        ),
        (
            "logsphere_cold_retired_files",
            "Parquet files replaced by a compaction, deleted after the grace period.",
            cold.retired_files as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    if let Some(cluster) = state.engine.cluster() {
        render_kafka(cluster, &mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Cluster mode: the Kafka source's counters and each owned partition's progress and lag.
fn render_kafka(cluster: &logsphere_engine::cluster::Cluster, out: &mut String) {
    if let Some(k) = cluster.kafka_metrics() {
        let counters = [
            (
                "logsphere_kafka_records_consumed_total",
                "Kafka records read.",
                k.records_consumed.load(Relaxed),
            ),
            (
                "logsphere_kafka_records_written_total",
                "Kafka records written to Cassandra.",
                k.records_written.load(Relaxed),
            ),
            (
                "logsphere_kafka_dead_letters_total",
                "Kafka records stored as dead letters.",
                k.dead_letters.load(Relaxed),
            ),
            (
                "logsphere_kafka_batches_written_total",
                "Batches written to Cassandra.",
                k.batches_written.load(Relaxed),
            ),
            (
                "logsphere_kafka_write_retries_total",
                "Batch writes retried.",
                k.write_retries.load(Relaxed),
            ),
            (
                "logsphere_kafka_fenced_total",
                "Partitions dropped because another node claimed them.",
                k.fenced.load(Relaxed),
            ),
            (
                "logsphere_kafka_rebalances_total",
                "Consumer group rebalances seen.",
                k.rebalances.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
    }
    let partitions = cluster.local_partitions();
    type Gauge<'a> = (
        &'a str,
        &'a str,
        &'a dyn Fn(&PartitionStatus) -> Option<f64>,
    );
    let series: [Gauge; 4] = [
        (
            "logsphere_kafka_partition_next_offset",
            "First offset not yet written to Cassandra.",
            &|p| Some(p.next_offset as f64),
        ),
        (
            "logsphere_kafka_partition_lag_records",
            "Records behind the high watermark.",
            &|p| p.lag_records.map(|l| l as f64),
        ),
        (
            "logsphere_kafka_partition_lag_seconds",
            "Age of the oldest record not yet written.",
            &|p| p.lag_seconds,
        ),
        (
            "logsphere_kafka_partition_paused",
            "1 while the partition is paused by back-pressure.",
            &|p| Some(if p.paused { 1.0 } else { 0.0 }),
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in &partitions {
            if let Some(v) = value(p) {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",partition=\"{}\"}} {v}",
                    p.partition.topic.replace('"', "\\\""),
                    p.partition.partition
                );
            }
        }
    }
}
