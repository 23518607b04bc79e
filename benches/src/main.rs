//! `logsphere-bench`: end-to-end benchmarks of a real `logsphere` binary on this machine.
//!
//! - `ingest`: HTTP ingest throughput and latency from 1 and 8 senders, next to the raw
//!   fsync'd write rate of the same disk, and the server's peak memory.
//! - `query`: 10 M records ingested and flushed to Parquet, three queries over the
//!   PostgreSQL protocol, and the same queries with DuckDB over the same Parquet files.
//! - `cq`: continuous queries: alert latency of the seed rules under open-loop load, ingest
//!   rate with 0–100 CQs, and the memory of 1 M group keys of CQ state.
//!
//! - `formats`: records/s and records per server CPU-second of each text format (real
//!   Loghub and Apache lines) beside JSON, one server, one run.
//! - `roundtrip`: a prepared `SELECT 1` and point query over the extended protocol, p50/p99,
//!   beside PostgreSQL (Debian's `postgresql`) started by the bench.
//! - `isolation`: ingest rate and alert latency with and without a concurrent full-scan
//!   GROUP BY over 10 M records, same server, same run.
//!
//! - `cluster`: cluster mode, Kafka → Cassandra records/s next to an rdkafka count-only
//!   consumer and a scylla write loop, produce → visible latency, RSS on a backlog.
//!
//! Each prints a markdown summary and writes it to `benches/results/<name>.md`.
//! See `docs/benchmarks.md` for how to run them and what the numbers mean.
//!
//! ```text
//! cargo build --release -p logsphere-server -p logsphere-benches
//! $CARGO_TARGET_DIR/release/logsphere-bench ingest --bin $CARGO_TARGET_DIR/release/logsphere
//! $CARGO_TARGET_DIR/release/logsphere-bench query --bin $CARGO_TARGET_DIR/release/logsphere --reuse
//! $CARGO_TARGET_DIR/release/logsphere-bench cq --bin $CARGO_TARGET_DIR/release/logsphere
//! ```

mod cluster;
mod cq;
mod cq_latency;
mod duckdb;
mod formats;
mod hdfs;
mod ingest;
mod isolation;
mod pg;
mod query;
mod records;
mod report;
mod roundtrip;
mod scale;
mod server;

use clap::{Parser, Subcommand};

/// End-to-end benchmarks of LogSphere against the disk and against DuckDB.
#[derive(Debug, Parser)]
#[command(name = "logsphere-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP ingest records/s, MB/s and latency, against the disk's raw fdatasync rate.
    Ingest(ingest::IngestArgs),
    /// count(*), a per-minute error histogram and a LIKE search, LogSphere vs DuckDB.
    Query(query::QueryArgs),
    /// Continuous queries: alert latency, ingest rate with 0–100 CQs, state memory.
    Cq(cq::CqArgs),
    /// Cluster mode: Kafka → Cassandra vs rdkafka and scylla alone, visibility latency, RSS.
    Cluster(cluster::ClusterArgs),
    /// Cluster mode on 1, 2 and 3 nodes: Kafka → Cassandra and the rules' lag, same run.
    Scale(scale::ScaleArgs),
    /// Ingest rate and alert latency with and without a concurrent full-scan GROUP BY.
    Isolation(isolation::IsolationArgs),
    /// Records/s and records per server CPU-second of each text format beside JSON.
    Formats(formats::FormatsArgs),
    /// A prepared `SELECT 1` and point query round trip, beside PostgreSQL.
    Roundtrip(roundtrip::RoundtripArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => ingest::run(args),
        Command::Query(args) => query::run(args),
        Command::Cq(args) => cq::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Scale(args) => scale::run(args),
        Command::Isolation(args) => isolation::run(args),
        Command::Formats(args) => formats::run(args),
        Command::Roundtrip(args) => roundtrip::run(args),
    }
}
