//! `cluster`: Kafka → Cassandra in cluster mode, next to what the services give without
//! LogSphere, on the same services in the same run.
//!
//! 1. A backlog of `--records` 200-byte records is produced to a topic of `--partitions`.
//! 2. Peer (a): an rdkafka consumer that only counts the backlog's messages.
//! 3. Peer (b): a scylla-driver loop writing the same number of rows of LogSphere's row shape
//!    (partition (bucket, shard), clustering (ts, topic, partition, offset)) at the same
//!    consistency, `--in-flight` statements at once.
//! 4. LogSphere (release binary, cluster mode, a fresh group and keyspace) catches up on the
//!    backlog: records/s from ready to caught up, and its peak RSS while it does.
//! 5. Produce → visible: a steady `--rate` records/s for `--latency-seconds`; a marker every
//!    100 records carries its send time; a poller sees each marker in `logs_hot`.
//!
//! The figure that matters is LogSphere ÷ min(a, b).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;

use crate::pg::Pg;
use crate::records::{RECORD_BYTES, Rng, hosts, write_record};
use crate::report::{self, Table, percentile, thousands};
use crate::server::{Memory, Server};

/// The binary and the services every cluster bench runs against.
#[derive(Debug, clap::Args)]
pub(crate) struct Services {
    /// The `logsphere` binary to benchmark (e.g. $CARGO_TARGET_DIR/release/logsphere).
    #[arg(long)]
    pub(crate) bin: PathBuf,
    /// Kafka bootstrap brokers.
    #[arg(long, env = "LOGSPHERE_TEST_KAFKA", default_value = "127.0.0.1:9092")]
    pub(crate) kafka: String,
    /// Cassandra contact point.
    #[arg(
        long,
        env = "LOGSPHERE_TEST_CASSANDRA",
        default_value = "127.0.0.1:9042"
    )]
    pub(crate) cassandra: String,
}

/// Arguments of `logsphere-bench cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    services: Services,
    /// Records in the backlog (the RSS figure is for this backlog).
    #[arg(long, default_value_t = 5_000_000)]
    records: u64,
    /// Partitions of the backlog topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Consistency of the writes, LogSphere's and the scylla loop's.
    #[arg(long, default_value = "LOCAL_QUORUM")]
    consistency: String,
    /// Statements in flight in the scylla loop (LogSphere's cassandra.max_in_flight default).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Also run (b1), the scylla loop writing one row per insert (minutes; never the faster peer).
    #[arg(long)]
    single_row_peer: bool,
    /// Produce → visible: records/s of the steady load.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Produce → visible: seconds of steady load.
    #[arg(long, default_value_t = 60)]
    latency_seconds: u64,
    /// The cold store tiering writes to: a fresh directory under this HDFS URL
    /// [default: a local directory in the work dir].
    #[arg(long, env = "LOGSPHERE_TEST_HDFS")]
    hdfs: Option<String>,
    /// Directory for the server's data directory [default: the system temp dir].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Results go to benches/results/<name>.md.
    #[arg(long, default_value = "cluster")]
    name: String,
    /// Keep the temporary directory afterwards.
    #[arg(long)]
    keep: bool,
}

/// Runs `logsphere-bench cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.records > 0 && args.partitions > 0 && args.rate > 0,
        "--records, --partitions and --rate must be positive"
    );
    report::in_work_dir(args.dir.as_deref(), "cluster", args.keep, |work| {
        run_in(&args, work)
    })
}

fn run_in(args: &ClusterArgs, work: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start tokio")?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let backlog = format!("bench_backlog_{stamp}");
    let live = format!("bench_live_{stamp}");
    runtime.block_on(create_topics(
        &args.services.kafka,
        &[(&backlog, args.partitions), (&live, args.partitions)],
    ))?;

    let t = Instant::now();
    produce_backlog(&args.services.kafka, &backlog, args.records)?;
    let produce_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "cluster: produced {} records to {backlog} in {produce_secs:.1}s",
        thousands(args.records)
    );

    let consume_secs = count_only(&args.services.kafka, &backlog, args.records)?;
    eprintln!("cluster: (a) rdkafka count-only consumer: {consume_secs:.1}s");
    let (single_secs, batched_secs) = runtime.block_on(scylla_loop(args, stamp, &backlog))?;

    let cold = match &args.hdfs {
        Some(url) => format!("{}/bench_{stamp}", url.trim_end_matches('/')),
        None => format!("file://{}", work.join("cold").display()),
    };
    let toml = format!(
        "[cluster]\nnode_id = \"bench\"\n[kafka]\nbrokers = \"{}\"\ntopics = [\"{backlog}\", \"{live}\"]\n\
         group = \"bench_{stamp}\"\ningest_topic = \"{live}\"\n[cassandra]\ncontact_points = [\"{}\"]\n\
         keyspace = \"bench_ls_{stamp}\"\nwrite_consistency = \"{}\"\nread_consistency = \"{}\"\n\
         [cold]\nurl = \"{cold}\"\n",
        args.services.kafka, args.services.cassandra, args.consistency, args.consistency,
    );
    let server = Server::start_with_config(&args.services.bin, work, &work.join("data"), &toml)?;
    let started = Instant::now();
    let pg = Pg::connect(&server)?;
    let mut peak = Memory::default();
    let mut last_report = Instant::now();
    loop {
        let done = pg
            .query_i64(&format!(
                "SELECT CAST(coalesce(sum(next_offset), 0) AS BIGINT) FROM kafka_partitions \
                 WHERE topic = '{backlog}'"
            ))
            .unwrap_or(0);
        let m = server.memory()?;
        peak.hwm_kib = peak.hwm_kib.max(m.hwm_kib);
        peak.rss_kib = peak.rss_kib.max(m.rss_kib);
        if done as u64 >= args.records {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "cluster: LogSphere at {}/{} records, {:.0}/s, {}",
                thousands(done as u64),
                thousands(args.records),
                done as f64 / started.elapsed().as_secs_f64(),
                m.describe()
            );
            last_report = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "LogSphere did not catch up within an hour; log:\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let logsphere_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "cluster: LogSphere caught up in {logsphere_secs:.1}s, {}",
        peak.describe()
    );

    // Tiering: the whole backlog, Cassandra → Parquet on the cold store, in one round.
    let t = Instant::now();
    let tiered = server.flush()?;
    let tier_secs = t.elapsed().as_secs_f64();
    let lag_s = server
        .metrics()?
        .get("logsphere_tiering_horizon_seconds")
        .map(|h| chrono::Utc::now().timestamp() as f64 - h)
        .unwrap_or(f64::NAN);
    eprintln!(
        "cluster: tiering moved {} rows to {cold} in {tier_secs:.1}s; horizon {lag_s:.0}s behind now",
        thousands(tiered)
    );

    let latencies = visible_latency(args, &server, &live)?;
    server.stop()?;

    let rate = |secs: f64| args.records as f64 / secs.max(1e-9);
    let (a, b1, b2, ls) = (
        rate(consume_secs),
        single_secs.map(rate),
        rate(batched_secs),
        rate(logsphere_secs),
    );
    let b = b1.unwrap_or(0.0).max(b2);
    let mut t = Table::new(&["path", "records/s", "÷ LogSphere"]);
    let mut paths = vec![("(a) rdkafka consumer, count only", a)];
    if let Some(b1) = b1 {
        paths.push(("(b1) scylla loop, one insert per row", b1));
    }
    paths.extend([
        ("(b2) scylla loop, unlogged batch per partition", b2),
        ("LogSphere: Kafka → Cassandra, progress fenced", ls),
    ]);
    for (name, r) in paths {
        t.row(vec![
            name.into(),
            thousands(r as u64),
            format!("{:.2}", r / ls),
        ]);
    }
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    let summary = format!(
        "# Cluster mode: Kafka → Cassandra\n\n{}\n\nBacklog: {} records of {RECORD_BYTES} bytes, \
         {} partitions, consistency {}, produced in {produce_secs:.1}s.\n\n{}\n\
         **LogSphere ÷ min(a, b) = {:.2}** (goal ≥ 0.8), b being the faster scylla loop.\n\n\
         LogSphere RSS while catching up on the backlog: {}.\n\n\
         Tiering (`POST /v1/flush`, one round): {} rows Cassandra → Parquet on `{cold}` in {tier_secs:.1}s, \
         {} rows/s (1.5 s of it waiting for progress to settle); right after it the horizon was {lag_s:.0}s \
         behind now (with periodic rounds the lag is at most `storage.flush_interval_secs` plus a round).\n\n\
         Produce → visible in `SELECT` at {} records/s for {}s: {} markers, p50 {} ms, p99 {} ms, \
         max {} ms.\n",
        report::machine(),
        thousands(args.records),
        args.partitions,
        args.consistency,
        t.markdown(),
        ls / a.min(b),
        peak.describe(),
        thousands(tiered),
        thousands((tiered as f64 / tier_secs.max(1e-9)) as u64),
        thousands(args.rate),
        args.latency_seconds,
        sorted.len(),
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(0),
    );
    println!("{summary}");
    let path = report::write_results(&args.name, &summary)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

pub(crate) async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .context("create topics")?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .context("kafka producer")
}

/// Sends `record` to `topic`, waiting for room in the producer's queue.
fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, record: &[u8]) {
    let mut msg = BaseRecord::<(), [u8]>::to(topic).payload(record);
    loop {
        match p.send(msg) {
            Ok(()) => return,
            Err((_, back)) => {
                msg = back;
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

pub(crate) fn produce_backlog(brokers: &str, topic: &str, n: u64) -> anyhow::Result<()> {
    let p = producer(brokers)?;
    let hosts = hosts();
    let mut rng = Rng::new(7);
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut line = Vec::with_capacity(RECORD_BYTES + 16);
    for i in 0..n {
        line.clear();
        write_record(&mut line, now_us - (n - i) as i64 * 10, &mut rng, &hosts);
        let record = line.strip_suffix(b"\n").unwrap_or(&line);
        send(&p, topic, record);
        if i % 1_000_000 == 999_999 {
            eprintln!("cluster: produced {} records", thousands(i + 1));
        }
    }
    p.flush(Timeout::After(Duration::from_secs(120)))
        .context("flush the backlog")?;
    Ok(())
}

/// Peer (a): the seconds an rdkafka consumer takes to read `n` messages and count them.
fn count_only(brokers: &str, topic: &str, n: u64) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}_count_only"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("kafka consumer")?;
    consumer.subscribe(&[topic]).context("subscribe")?;
    let started = Instant::now();
    let mut count = 0u64;
    let mut bytes = 0u64;
    while count < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.context("consume")?;
            bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len) as u64;
            count += 1;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "count-only consumer read {count} of {n} in 30 min"
        );
    }
    eprintln!("cluster: (a) read {} bytes", thousands(bytes));
    Ok(started.elapsed().as_secs_f64())
}

/// Peer (b): the seconds a scylla-driver loop takes to write `records` of the rows LogSphere
/// writes, `in_flight` statements at once: (b1) one insert per row (with
/// `--single-row-peer`), (b2) unlogged batches of one Cassandra partition, as LogSphere
/// writes them.
async fn scylla_loop(
    args: &ClusterArgs,
    stamp: u64,
    topic: &str,
) -> anyhow::Result<(Option<f64>, f64)> {
    use scylla::client::session_builder::SessionBuilder;
    use scylla::statement::Consistency;
    // The table as LogSphere creates it with the default `cassandra.ttl_secs` (7 days): the
    // hot tier's retention is a TTL, so every cell carries one, and TWCS windows of 7 hours.
    let session = Arc::new(
        SessionBuilder::new()
            .known_node(&args.services.cassandra)
            .build()
            .await
            .context("connect to Cassandra")?,
    );
    let ks = format!("bench_peer_{stamp}");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            &[],
        )
        .await
        .context("create keyspace")?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE {ks}.logs (bucket bigint, shard smallint, ts bigint, topic text, \
                 kpart int, koffset bigint, source text, log_level text, message text, \
                 attributes text, ingest_time bigint, \
                 PRIMARY KEY ((bucket, shard), ts, topic, kpart, koffset)) \
                 WITH compaction = {{'class': 'TimeWindowCompactionStrategy', \
                 'compaction_window_unit': 'HOURS', 'compaction_window_size': 7}} \
                 AND default_time_to_live = 604800"
            ),
            &[],
        )
        .await
        .context("create table")?;
    session
        .await_schema_agreement()
        .await
        .context("schema agreement")?;
    let mut insert = session
        .prepare(format!(
            "INSERT INTO {ks}.logs (bucket, shard, ts, topic, kpart, koffset, source, log_level, \
             message, attributes, ingest_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .await
        .context("prepare")?;
    let consistency = match args.consistency.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        _ => Consistency::LocalQuorum,
    };
    insert.set_consistency(consistency);
    let rows = PeerRows::new(topic, args.records, args.partitions.max(1) as u64)?;
    // (b1) one prepared insert per row: slow (minutes for the full backlog), so only on
    // request; (b2) is the faster way and the one the ratio is taken against.
    let started = Instant::now();
    if !args.single_row_peer {
        return batched(args, &session, &insert, consistency, &rows, &ks)
            .await
            .map(|b| (None, b));
    }
    let written = futures::stream::iter(0..args.records)
        .map(|i| {
            let (session, insert, values) = (Arc::clone(&session), insert.clone(), rows.values(i));
            async move { session.execute_unpaged(&insert, values).await.map(|_| 1u64) }
        })
        .buffer_unordered(args.in_flight.max(1));
    let single = sum_written(written, "scylla loop, single rows").await?;
    let single_secs = started.elapsed().as_secs_f64();
    eprintln!("cluster: (b1) {single} single-row inserts in {single_secs:.1}s");
    session
        .query_unpaged(format!("TRUNCATE {ks}.logs"), &[])
        .await
        .context("truncate")?;
    batched(args, &session, &insert, consistency, &rows, &ks)
        .await
        .map(|b| (Some(single_secs), b))
}

/// (b2): unlogged batches of one Cassandra partition (one Kafka partition), ~40 KB each, as
/// LogSphere writes them; the seconds it took. Drops the peer's keyspace afterwards.
async fn batched(
    args: &ClusterArgs,
    session: &Arc<scylla::client::session::Session>,
    insert: &scylla::statement::prepared::PreparedStatement,
    consistency: scylla::statement::Consistency,
    rows: &PeerRows,
    ks: &str,
) -> anyhow::Result<f64> {
    use scylla::statement::batch::{Batch, BatchType};
    const BATCH_ROWS: u64 = 150;
    let group = BATCH_ROWS * rows.partitions;
    let started = Instant::now();
    let written = futures::stream::iter(0..args.records.div_ceil(group))
        .flat_map(|g| futures::stream::iter((0..rows.partitions).map(move |p| (g, p))))
        .map(|(g, p)| {
            let ids: Vec<u64> = (0..BATCH_ROWS)
                .map(|k| g * group + p + k * rows.partitions)
                .filter(|i| *i < args.records)
                .collect();
            let values: Vec<_> = ids.iter().map(|i| rows.values(*i)).collect();
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in &values {
                batch.append_statement(insert.clone());
            }
            batch.set_consistency(consistency);
            let session = Arc::clone(session);
            // A write timeout is retried, as LogSphere retries it (the rows are idempotent):
            // an overloaded Cassandra must slow the loop down, not end it.
            async move {
                let mut attempt = 0;
                loop {
                    match session.batch(&batch, values.as_slice()).await {
                        Ok(_) => return Ok(ids.len() as u64),
                        Err(e) if attempt >= 8 => return Err(e),
                        Err(_) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(args.in_flight.max(1));
    let batched = sum_written(written, "scylla loop, batches").await?;
    let batched_secs = started.elapsed().as_secs_f64();
    eprintln!("cluster: (b2) {batched} rows in partition batches in {batched_secs:.1}s");
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await;
    Ok(batched_secs)
}

/// The rows both peer loops write: the rows LogSphere writes for the backlog — the same
/// generator's records, decoded as LogSphere decodes them (level, message and host taken
/// out, the rest in `attributes` with the `kafka_*` fields the Kafka source adds, keys in
/// order) — so Cassandra is given the same bytes per row by both. The decoding is done
/// once, before the clock starts, for a pool of distinct records; each row takes one and
/// its own time, partition and offset.
struct PeerRows {
    pool: Vec<PoolRow>,
    topic: String,
    now_us: i64,
    records: u64,
    partitions: u64,
}

/// One decoded record: its columns, and its attributes as (key, JSON value), sorted.
struct PoolRow {
    source: String,
    level: String,
    message: String,
    attributes: Vec<(String, String)>,
}

type PeerRow = (
    i64,
    i16,
    i64,
    String,
    i32,
    i64,
    String,
    String,
    String,
    String,
    i64,
);

/// Distinct records in the peer's pool.
const POOL: u64 = 20_000;

impl PeerRows {
    fn new(topic: &str, records: u64, partitions: u64) -> anyhow::Result<Self> {
        let hosts = hosts();
        let mut rng = Rng::new(7);
        let mut line = Vec::with_capacity(RECORD_BYTES + 16);
        let mut pool = Vec::new();
        for _ in 0..POOL {
            line.clear();
            write_record(&mut line, 0, &mut rng, &hosts);
            let serde_json::Value::Object(mut obj) = serde_json::from_slice(&line)? else {
                anyhow::bail!("a generated record is not a JSON object");
            };
            let mut text = |key: &str| match obj.remove(key) {
                Some(serde_json::Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let (level, message, source) = (text("level"), text("message"), text("host"));
            obj.remove("ts");
            let attributes = obj.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            pool.push(PoolRow {
                source,
                level,
                message,
                attributes,
            });
        }
        Ok(Self {
            pool,
            topic: topic.to_string(),
            now_us: chrono::Utc::now().timestamp_micros(),
            records,
            partitions,
        })
    }

    fn values(&self, i: u64) -> PeerRow {
        let ts = self.now_us - (self.records - i) as i64 * 10;
        let kpart = (i % self.partitions) as i32;
        let offset = (i / self.partitions) as i64;
        let row = &self.pool[(i % POOL) as usize];
        let kafka = [
            ("kafka_offset", offset.to_string()),
            ("kafka_partition", kpart.to_string()),
            ("kafka_timestamp_ms", (self.now_us / 1000).to_string()),
        ];
        let mut fields: Vec<(&str, &str)> = row
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(kafka.iter().map(|(k, v)| (*k, v.as_str())))
            .collect();
        fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut attributes = String::with_capacity(192);
        attributes.push('{');
        for (n, (k, v)) in fields.iter().enumerate() {
            if n > 0 {
                attributes.push(',');
            }
            attributes.push('"');
            attributes.push_str(k);
            attributes.push_str("\":");
            attributes.push_str(v);
        }
        attributes.push('}');
        (
            ts - ts.rem_euclid(600_000_000),
            (kpart % 8) as i16,
            ts,
            self.topic.clone(),
            kpart,
            offset,
            row.source.clone(),
            row.level.clone(),
            row.message.clone(),
            attributes,
            self.now_us,
        )
    }
}

/// Sums the rows a stream of writes reports; the first error fails the loop.
async fn sum_written<E: std::fmt::Display>(
    writes: impl futures::Stream<Item = Result<u64, E>>,
    what: &str,
) -> anyhow::Result<u64> {
    let (n, err) = writes
        .fold((0u64, None), |(n, err), r| async move {
            match r {
                Ok(k) => (n + k, err),
                Err(e) => (n, err.or(Some(e.to_string()))),
            }
        })
        .await;
    match err {
        Some(e) => anyhow::bail!("{what}: {n} rows written, then: {e}"),
        None => Ok(n),
    }
}

/// Produce → visible: ms from a marker's send to the first `SELECT` that returns it.
fn visible_latency(args: &ClusterArgs, server: &Server, topic: &str) -> anyhow::Result<Vec<u64>> {
    let p = producer(&args.services.kafka)?;
    let pg = Pg::connect(server)?;
    let hosts = hosts();
    let mut rng = Rng::new(11);
    // Marker id → (when it was sent, its timestamp).
    let mut sent: HashMap<u64, (Instant, i64)> = HashMap::new();
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let started = Instant::now();
    let total = args.rate * args.latency_seconds;
    let mut line = Vec::with_capacity(RECORD_BYTES + 16);
    let mut next_poll = Instant::now();
    let mut i = 0u64;
    while i < total
        || (seen.len() < sent.len() && started.elapsed().as_secs() < args.latency_seconds + 60)
    {
        // Open loop: send whatever the schedule says is due by now.
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while i < due {
            let now_us = chrono::Utc::now().timestamp_micros();
            if i.is_multiple_of(100) {
                let marker = serde_json::json!({
                    "timestamp": now_us, "source": "bench-marker", "level": "INFO",
                    "message": format!("marker {i}"),
                })
                .to_string();
                sent.insert(i, (Instant::now(), now_us));
                send(&p, topic, marker.as_bytes());
            } else {
                line.clear();
                write_record(&mut line, now_us, &mut rng, &hosts);
                send(&p, topic, line.strip_suffix(b"\n").unwrap_or(&line));
            }
            i += 1;
        }
        p.poll(Duration::ZERO);
        // Only the markers not seen yet are looked for: the scan covers the seconds since
        // the oldest of them, so the query's own time stays small next to what it measures.
        let oldest_unseen = sent
            .iter()
            .filter(|(id, _)| !seen.contains_key(*id))
            .map(|(_, (_, at_us))| *at_us)
            .min();
        if let Some(oldest_us) = oldest_unseen
            && Instant::now() >= next_poll
        {
            next_poll = Instant::now() + Duration::from_millis(50);
            let since =
                chrono::DateTime::from_timestamp_micros(oldest_us - 1_000_000).unwrap_or_default();
            let rows = pg.query(&format!(
                "SELECT message FROM logs_hot WHERE topic = '{topic}' AND source = 'bench-marker' \
                 AND timestamp >= TIMESTAMP '{}'",
                since.format("%Y-%m-%d %H:%M:%S%.6f")
            ))?;
            let at = Instant::now();
            for row in rows {
                let message: String = row.try_get(0).context("marker message")?;
                if let Some(id) = message.strip_prefix("marker ").and_then(|s| s.parse().ok())
                    && let Some((t, _)) = sent.get(&id)
                {
                    seen.entry(id)
                        .or_insert_with(|| at.duration_since(*t).as_millis() as u64);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    anyhow::ensure!(
        seen.len() == sent.len(),
        "{} of {} markers never became visible",
        sent.len() - seen.len(),
        sent.len()
    );
    Ok(seen.into_values().collect())
}
