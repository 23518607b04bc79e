//! `scale`: cluster mode on 1, 2 and 3 nodes over the same topic shape, same run.
//!
//! For each node count: start the nodes (one consumer group, one keyspace), define the two
//! seed rules on the first, produce a backlog of `--records` to a fresh topic of
//! `--partitions`, then time (1) storing: until the group's progress covers the backlog,
//! (2) the rules: until every node's `continuous_queries.rows_in` covers it (every node
//! evaluates every rule over every partition). The rules' lag is (2) − (1).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cluster::{create_topics, produce_backlog};
use crate::pg::Pg;
use crate::report::{self, Table, thousands};
use crate::server::{Memory, Server};

/// Arguments of `logsphere-bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    services: crate::cluster::Services,
    /// Records per backlog.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Partitions of each backlog topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Node counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// Directory for the servers' data directories [default: the system temp dir].
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "cluster-scale")]
    name: String,
    /// Keep the temporary directory afterwards.
    #[arg(long)]
    keep: bool,
}

/// The seed rules (CONTINUOUS_QUERIES.md §6), without sinks.
const RULES: [&str; 2] = [
    "CREATE CONTINUOUS QUERY critical_log_alert ALERT (SEVERITY 'critical', DEDUP BY (source, log_level)) \
     AS SELECT timestamp, source, log_level, message FROM logs WHERE log_level IN ('CRITICAL', 'FATAL')",
    "CREATE CONTINUOUS QUERY error_burst_per_source EMIT ON THRESHOLD ALERT (SEVERITY 'warning') \
     AS SELECT window_start, source, count(*) AS error_count \
     FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE log_level = 'ERROR' \
     GROUP BY window_start, source HAVING count(*) > 100",
];

/// One node count's figures.
struct Run {
    nodes: usize,
    store_secs: f64,
    rules_secs: f64,
    peak_rss: Memory,
}

/// Runs `logsphere-bench scale`.
pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.records > 0 && args.partitions > 0 && args.nodes.iter().all(|n| *n > 0),
        "--records, --partitions and --nodes must be positive"
    );
    report::in_work_dir(args.dir.as_deref(), "scale", args.keep, |work| {
        run_in(&args, work)
    })
}

fn run_in(args: &ScaleArgs, work: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    let mut runs = Vec::new();
    for &n in &args.nodes {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let topic = format!("bench_scale_{n}_{stamp}");
        runtime.block_on(create_topics(
            &args.services.kafka,
            &[(&topic, args.partitions)],
        ))?;
        let mut servers = Vec::new();
        for i in 0..n {
            let toml = format!(
                "[cluster]\nnode_id = \"node-{i}\"\n[kafka]\nbrokers = \"{}\"\ntopics = [\"{topic}\"]\n\
                 group = \"bench_scale_{stamp}\"\ningest_topic = \"{topic}\"\n[cassandra]\n\
                 contact_points = [\"{}\"]\nkeyspace = \"bench_scale_{stamp}\"\n[cold]\n\
                 url = \"file://{}\"\n",
                args.services.kafka,
                args.services.cassandra,
                work.join(format!("cold-{stamp}")).display(),
            );
            let dir = work.join(format!("n{n}-node{i}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            servers.push(Server::start_with_config(
                &args.services.bin,
                &dir,
                &dir.join("data"),
                &toml,
            )?);
        }
        let pgs = servers
            .iter()
            .map(Pg::connect)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        for rule in RULES {
            while let Err(e) = pgs[0].execute(rule) {
                anyhow::ensure!(Instant::now() < deadline, "create rule: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        for pg in &pgs {
            while pg
                .query_i64("SELECT count(*) FROM continuous_queries")
                .unwrap_or(0)
                < 2
            {
                anyhow::ensure!(Instant::now() < deadline, "rules did not reach every node");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // The feeders start reading from the rules' creation on.
        std::thread::sleep(Duration::from_secs(3));
        produce_backlog(&args.services.kafka, &topic, args.records)?;
        let started = Instant::now();
        let mut peak = Memory::default();
        let mut store_secs = None;
        let mut last_report = Instant::now();
        loop {
            let stored = pgs[0]
                .query_i64(&format!(
                    "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) FROM kafka_partitions \
                     WHERE topic = '{topic}'"
                ))
                .unwrap_or(0) as u64;
            if store_secs.is_none() && stored >= args.records {
                store_secs = Some(started.elapsed().as_secs_f64());
            }
            let mut rules_done = true;
            let mut least = u64::MAX;
            for pg in &pgs {
                let seen = pg
                    .query_i64("SELECT CAST(min(rows_in) AS BIGINT) FROM continuous_queries")
                    .unwrap_or(0) as u64;
                least = least.min(seen);
                rules_done &= seen >= args.records;
            }
            let mut rss = Memory::default();
            for s in &servers {
                let m = s.memory()?;
                rss.hwm_kib += m.hwm_kib;
                rss.rss_kib += m.rss_kib;
            }
            peak.hwm_kib = peak.hwm_kib.max(rss.hwm_kib);
            peak.rss_kib = peak.rss_kib.max(rss.rss_kib);
            if store_secs.is_some() && rules_done {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "scale: {n} node(s): stored {}/{}, rules at {} on the slowest node",
                    thousands(stored),
                    thousands(args.records),
                    thousands(least)
                );
                last_report = Instant::now();
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(3600),
                "{n} node(s) did not catch up within an hour; log:\n{}",
                servers[0].log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let rules_secs = started.elapsed().as_secs_f64();
        let store_secs = store_secs.unwrap_or(rules_secs);
        eprintln!("scale: {n} node(s): stored in {store_secs:.1}s, rules done in {rules_secs:.1}s");
        drop(pgs);
        for s in servers {
            s.stop()?;
        }
        runs.push(Run {
            nodes: n,
            store_secs,
            rules_secs,
            peak_rss: peak,
        });
    }
    let rate = |secs: f64| args.records as f64 / secs.max(1e-9);
    let base = runs.first().map_or(1.0, |r| rate(r.store_secs));
    let mut t = Table::new(&[
        "nodes",
        "Kafka → Cassandra records/s",
        "÷ 1 node",
        "rules done after (s)",
        "rules behind storing (s)",
        "rule rows/s per node",
        "RSS, all nodes",
    ]);
    for r in &runs {
        t.row(vec![
            r.nodes.to_string(),
            thousands(rate(r.store_secs) as u64),
            format!("{:.2}", rate(r.store_secs) / base),
            format!("{:.1}", r.rules_secs),
            format!("{:.1}", (r.rules_secs - r.store_secs).max(0.0)),
            thousands(rate(r.rules_secs) as u64),
            r.peak_rss.describe(),
        ]);
    }
    let summary = format!(
        "# Cluster mode on 1, 2 and 3 nodes\n\n{}\n\nPer node count: a fresh topic of {} \
         partitions, a backlog of {} records of {} bytes produced after the two seed rules \
         were defined; every node stores its share of the partitions and evaluates both rules \
         over all of them.\n\n{}\n",
        report::machine(),
        args.partitions,
        thousands(args.records),
        crate::records::RECORD_BYTES,
        t.markdown(),
    );
    println!("{summary}");
    let path = report::write_results(&args.name, &summary)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
