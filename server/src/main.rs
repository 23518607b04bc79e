//! `logsphere`: the LogSphere server and its command-line tools.

mod config;
mod http;
mod pgwire;
mod report;
mod ship;
mod syslog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use logsphere_engine::{Engine, EngineConfig};
use tokio::sync::watch;

use crate::config::Config;

/// LogSphere: SQL over your logs, with alerts that fire on time.
#[derive(Debug, Parser)]
#[command(name = "logsphere", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no configuration it runs embedded: a local WAL and local Parquet.
    Serve(Box<ServeArgs>),
    /// Send a log file (or stdin) to a LogSphere server over HTTP, with progress and retries.
    Ship(ship::ShipArgs),
    /// Run SQL over the cold tier's Parquet files (file:// or hdfs://), no server needed:
    /// batch reports as CSV, NDJSON, Parquet or Markdown.
    Report(Box<report::ReportArgs>),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML configuration file (see logsphere.example.toml).
    #[arg(long, env = "LOGSPHERE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the WAL, Parquet files and the catalog [default: ./logsphere-data].
    #[arg(long, env = "LOGSPHERE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the PostgreSQL protocol listener [default: 127.0.0.1:5433].
    #[arg(long, env = "LOGSPHERE_PG_LISTEN")]
    pg_listen: Option<std::net::SocketAddr>,
    /// TLS certificate chain for the PostgreSQL listener, PEM [config: pg.tls_cert].
    #[arg(long, env = "LOGSPHERE_PG_TLS_CERT")]
    pg_tls_cert: Option<PathBuf>,
    /// TLS private key for the PostgreSQL listener, PEM [config: pg.tls_key].
    #[arg(long, env = "LOGSPHERE_PG_TLS_KEY")]
    pg_tls_key: Option<PathBuf>,
    /// Address of the HTTP ingest listener [default: 127.0.0.1:8080].
    #[arg(long, env = "LOGSPHERE_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// The cold tier: file:///path or hdfs://namenode:port/path [config: cold.url;
    /// default: <data-dir>/cold; needed in cluster mode].
    #[arg(long, env = "LOGSPHERE_COLD")]
    cold: Option<String>,
    /// Kafka brokers (host:port,…) for NOTIFY (KAFKA 'topic') channels [config: notify.kafka_brokers].
    #[arg(long, env = "LOGSPHERE_NOTIFY_KAFKA_BROKERS")]
    notify_kafka_brokers: Option<String>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Cluster mode: with Kafka brokers and Cassandra contact points, `serve` consumes Kafka
/// into Cassandra instead of running embedded. Each flag overrides its config key.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// This node's name in kafka_partitions [config: cluster.node_id; default: host name].
    #[arg(long, env = "LOGSPHERE_NODE_ID")]
    node_id: Option<String>,
    /// Kafka bootstrap brokers, host:port,… [config: kafka.brokers].
    #[arg(long, env = "LOGSPHERE_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Topics to consume, comma-separated; `^…` entries are regexes [config: kafka.topics].
    #[arg(long, env = "LOGSPHERE_KAFKA_TOPICS", value_delimiter = ',')]
    kafka_topics: Option<Vec<String>>,
    /// Consumer group [config: kafka.group; default: logsphere].
    #[arg(long, env = "LOGSPHERE_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// How consumed records are read: json, auto, syslog, access, logfmt, app, text
    /// [config: kafka.format; default: json].
    #[arg(long, env = "LOGSPHERE_KAFKA_FORMAT")]
    kafka_format: Option<String>,
    /// librdkafka prefetch cap per partition, KiB [config: kafka.fetch_queue_kbytes].
    #[arg(long, env = "LOGSPHERE_KAFKA_FETCH_QUEUE_KBYTES")]
    kafka_fetch_queue_kbytes: Option<usize>,
    /// LogSphere's buffer per partition, bytes [config: kafka.partition_buffer_bytes].
    #[arg(long, env = "LOGSPHERE_KAFKA_PARTITION_BUFFER_BYTES")]
    kafka_partition_buffer_bytes: Option<usize>,
    /// Cassandra contact points, host:port,… [config: cassandra.contact_points].
    #[arg(long, env = "LOGSPHERE_CASSANDRA", value_delimiter = ',')]
    cassandra: Option<Vec<String>>,
    /// Keyspace [config: cassandra.keyspace; default: logsphere].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_KEYSPACE")]
    cassandra_keyspace: Option<String>,
    /// SimpleStrategy or NetworkTopologyStrategy [config: cassandra.replication_strategy].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_REPLICATION_STRATEGY")]
    cassandra_replication_strategy: Option<String>,
    /// Replication factor [config: cassandra.replication_factor].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_REPLICATION_FACTOR")]
    cassandra_replication_factor: Option<u32>,
    /// Local datacenter [config: cassandra.datacenter].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_DATACENTER")]
    cassandra_datacenter: Option<String>,
    /// Write consistency, e.g. LOCAL_QUORUM [config: cassandra.write_consistency].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_WRITE_CONSISTENCY")]
    cassandra_write_consistency: Option<String>,
    /// Read consistency [config: cassandra.read_consistency].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_READ_CONSISTENCY")]
    cassandra_read_consistency: Option<String>,
    /// Hot-tier TTL, seconds [config: cassandra.ttl_secs].
    #[arg(long, env = "LOGSPHERE_CASSANDRA_TTL_SECS")]
    cassandra_ttl_secs: Option<u64>,
}

impl ClusterArgs {
    /// Puts every flag that was given over the config file's value.
    fn apply(&self, cfg: &mut Config) {
        fn set<T: Clone>(slot: &mut T, flag: &Option<T>) {
            if let Some(v) = flag {
                *slot = v.clone();
            }
        }
        if self.node_id.is_some() {
            cfg.cluster.node_id = self.node_id.clone();
        }
        if self.kafka_brokers.is_some() {
            cfg.kafka.brokers = self.kafka_brokers.clone();
        }
        set(&mut cfg.kafka.topics, &self.kafka_topics);
        set(&mut cfg.kafka.group, &self.kafka_group);
        set(&mut cfg.kafka.format, &self.kafka_format);
        set(
            &mut cfg.kafka.fetch_queue_kbytes,
            &self.kafka_fetch_queue_kbytes,
        );
        set(
            &mut cfg.kafka.partition_buffer_bytes,
            &self.kafka_partition_buffer_bytes,
        );
        set(&mut cfg.cassandra.contact_points, &self.cassandra);
        set(&mut cfg.cassandra.keyspace, &self.cassandra_keyspace);
        set(
            &mut cfg.cassandra.replication_strategy,
            &self.cassandra_replication_strategy,
        );
        set(
            &mut cfg.cassandra.replication_factor,
            &self.cassandra_replication_factor,
        );
        if self.cassandra_datacenter.is_some() {
            cfg.cassandra.datacenter = self.cassandra_datacenter.clone();
        }
        set(
            &mut cfg.cassandra.write_consistency,
            &self.cassandra_write_consistency,
        );
        set(
            &mut cfg.cassandra.read_consistency,
            &self.cassandra_read_consistency,
        );
        set(&mut cfg.cassandra.ttl_secs, &self.cassandra_ttl_secs);
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Ship(args) = cli.command {
        return ship::run(args);
    }
    // A report keeps standard error for its progress: only warnings unless asked.
    let default_log = match cli.command {
        Command::Report(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGSPHERE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Report(args) => {
            if let Err(e) = runtime.block_on(report::run(*args)) {
                eprintln!("logsphere report: {}", report::describe_error(&e));
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Ship(_) => Ok(()),
    }
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = args.pg_listen {
        cfg.pg.listen = a;
    }
    if let Some(p) = &args.pg_tls_cert {
        cfg.pg.tls_cert = Some(p.clone());
    }
    if let Some(p) = &args.pg_tls_key {
        cfg.pg.tls_key = Some(p.clone());
    }
    if let Some(a) = args.http_listen {
        cfg.http.listen = a;
    }
    if let Some(c) = &args.cold {
        cfg.cold.url = Some(c.clone());
    }
    if let Some(b) = &args.notify_kafka_brokers {
        cfg.notify.kafka_brokers = Some(b.clone());
    }
    args.cluster.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    let mut engine_cfg = EngineConfig::new(&cfg.data_dir);
    engine_cfg.flush_interval = Duration::from_secs(cfg.storage.flush_interval_secs);
    engine_cfg.flush_max_rows = cfg.storage.flush_max_rows;
    engine_cfg.max_hot_rows = cfg.storage.flush_max_rows.saturating_mul(4);
    engine_cfg.wal_segment_bytes = cfg.storage.wal_segment_bytes;
    engine_cfg.fault_flush_pause = fault_pause("LOGSPHERE_FAULT_FLUSH_PAUSE_MS")?;
    engine_cfg.fault_compact_pause = fault_pause("LOGSPHERE_FAULT_COMPACT_PAUSE_MS")?;
    engine_cfg.compaction = cfg.storage.compaction();
    engine_cfg.fields = cfg.fields.to_engine();
    engine_cfg.notify = cfg.notify.to_engine();
    engine_cfg.cold_url = cfg.cold.url.clone();
    engine_cfg.cold_timeout = Duration::from_secs(cfg.cold.timeout_secs);
    engine_cfg.query_memory = cfg.pg.query_memory_bytes();
    engine_cfg.cluster = cfg.cluster_mode();
    if let Some(cluster) = engine_cfg.cluster.as_mut() {
        cluster.fault_claim_pause = fault_pause("LOGSPHERE_FAULT_INGEST_CLAIM_PAUSE_MS")?;
        cluster.fault_acked_pause = fault_pause("LOGSPHERE_FAULT_INGEST_ACKED_PAUSE_MS")?;
        cluster.fault_produce_fail_after =
            fault_count("LOGSPHERE_FAULT_INGEST_PRODUCE_FAIL_AFTER")?;
    }
    engine_cfg.decode = logsphere_engine::ingest::DecodeOptions {
        max_record_bytes: cfg.http.max_record_bytes,
        default_topic: cfg.kafka.ingest_topic.clone(),
        origin: "kafka".into(),
        // Checked by Config::validate in cluster mode; JSON when cluster mode is off.
        format: cfg.kafka.format.parse().unwrap_or_default(),
        ..Default::default()
    };
    let pg_tls = match (&cfg.pg.tls_cert, &cfg.pg.tls_key) {
        (Some(cert), Some(key)) => Some(pgwire::tls_acceptor(cert, key)?),
        _ => None,
    };
    let pg_listener = tokio::net::TcpListener::bind(cfg.pg.listen)
        .await
        .with_context(|| format!("cannot listen on pg.listen = {}", cfg.pg.listen))?;
    let http_listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {}", cfg.http.listen))?;
    let syslog_listeners = syslog::Listeners::bind(&cfg.syslog).await?;
    let engine = Engine::open(engine_cfg)
        .await
        .with_context(|| format!("cannot open data directory {}", cfg.data_dir.display()))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let pg_stats = Arc::new(pgwire::PgStats::default());
    let pg = tokio::spawn(pgwire::serve(
        pg_listener,
        Arc::clone(&engine),
        cfg.pg.users.clone(),
        pg_tls,
        pgwire::Limits {
            max_connections: cfg.pg.max_connections,
            statement_timeout_ms: cfg.pg.statement_timeout_ms,
            scroll_cursor_memory_mb: cfg.pg.scroll_cursor_memory_mb,
            query_nice: cfg.pg.query_nice,
        },
        Arc::clone(&pg_stats),
        shutdown_rx.clone(),
    ));
    let syslog_on = syslog_listeners.any();
    let syslog_stats = Arc::new(syslog::SyslogStats::default());
    let syslog = tokio::spawn(syslog::serve(
        syslog_listeners,
        Arc::clone(&engine),
        cfg.syslog.clone(),
        cfg.http.max_record_bytes,
        Arc::clone(&syslog_stats),
        shutdown_rx.clone(),
    ));
    let http = tokio::spawn(http::serve(
        http_listener,
        Arc::clone(&engine),
        cfg.http.clone(),
        http::Stats {
            pg: pg_stats,
            syslog: syslog_stats,
        },
        shutdown_rx,
    ));
    if syslog_on {
        tracing::info!(
            tcp = ?cfg.syslog.tcp_listen, udp = ?cfg.syslog.udp_listen,
            "syslog listening"
        );
    }
    match engine.cluster().map(|c| c.config()) {
        Some(c) => tracing::info!(
            pg = %cfg.pg.listen, http = %cfg.http.listen, node_id = %c.node_id,
            kafka = %c.kafka.brokers, cassandra = %c.cassandra.contact_points.join(","),
            "logsphere listening (cluster mode; /healthz says when Kafka and Cassandra answer)"
        ),
        None => tracing::info!(
            pg = %cfg.pg.listen, http = %cfg.http.listen, data_dir = %cfg.data_dir.display(),
            "logsphere ready"
        ),
    }
    wait_for_signal().await?;
    tracing::info!("shutting down: answering requests in flight");
    let _ = shutdown_tx.send(true);
    // The syslog batcher stores what was read before the engine stops.
    let (pg, http, syslog) = tokio::join!(pg, http, syslog);
    engine.shutdown().await;
    pg.context("pg listener task")??;
    http.context("http listener task")??;
    syslog.context("syslog listener task")??;
    tracing::info!("stopped; the WAL is synced");
    Ok(())
}

/// `LOGSPHERE_FAULT_FLUSH_PAUSE_MS` / `LOGSPHERE_FAULT_COMPACT_PAUSE_MS`: crash tests widen
/// the window between writing Parquet (a flush's files, a compaction's merged file) and
/// committing it, so a kill lands inside a flush or a compaction.
/// `LOGSPHERE_FAULT_INGEST_CLAIM_PAUSE_MS` (cluster mode): between claiming an
/// `Idempotency-Key` and producing its records.
fn fault_pause(var: &str) -> anyhow::Result<Option<Duration>> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(v) => {
            let ms: u64 = v
                .parse()
                .with_context(|| format!("{var} = {v:?} is not a number"))?;
            Ok(Some(Duration::from_millis(ms)))
        }
    }
}

fn fault_count(var: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(var) {
        Err(_) => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .with_context(|| format!("{var} = {v:?} is not a number")),
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
