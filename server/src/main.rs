//! `logsphere`: the LogSphere server and its command-line tools.

mod config;
mod pgwire;

use std::path::PathBuf;
use std::sync::Arc;

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
    Serve(ServeArgs),
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
    /// Address of the HTTP ingest listener [default: 127.0.0.1:8080].
    #[arg(long, env = "LOGSPHERE_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOGSPHERE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
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
    if let Some(a) = args.http_listen {
        cfg.http.listen = a;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    let engine = Engine::open(EngineConfig::new(&cfg.data_dir))
        .await
        .with_context(|| format!("cannot open data directory {}", cfg.data_dir.display()))?;
    let pg_listener = tokio::net::TcpListener::bind(cfg.pg.listen)
        .await
        .with_context(|| format!("cannot listen on pg.listen = {}", cfg.pg.listen))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tracing::info!(pg = %cfg.pg.listen, data_dir = %cfg.data_dir.display(), "logsphere serving");
    let pg = tokio::spawn(pgwire::serve(
        pg_listener,
        Arc::clone(&engine),
        cfg.pg.users.clone(),
        shutdown_rx.clone(),
    ));
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    pg.await.context("pg listener task")??;
    Ok(())
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
