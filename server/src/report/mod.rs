//! `logsphere report`: SQL over the cold tier's Parquet files, read directly (no server),
//! written as CSV, NDJSON, Parquet or a Markdown table.
//!
//! The cold root (`file:///…` or `hdfs://namenode:port/…`) holds
//! `logs/date=YYYY-MM-DD/hour=HH/<uuid>.parquet` and `dead_letters/date=YYYY-MM-DD/…`. The
//! report's session has the tables `logs` and `dead_letters` over those directories, with
//! the Hive partition columns `date` (DATE) and `hour` (INT) added, and the LogSphere
//! functions ([`logsphere_engine::query::base_session`]). `--from`/`--to` restrict both
//! tables (and so prune whole directories); a query's own `WHERE date = …` or time filters
//! prune too. Files whose name (or a directory's) starts with `.` or `_` are never read:
//! HDFS writes `.<name>.tmp.<n>` and renames it.

mod output;
mod store;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::datatypes::DataType;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::provider_as_source;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext, col, lit};
use futures::StreamExt;
use logsphere_engine::cold::ColdStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};

pub use output::Format;

/// A built-in report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Builtin {
    /// Records per day, log level, source and topic, with the first and last time seen.
    DailySummary,
    /// Per hour: all records, errors (ERROR and CRITICAL) and their ratio.
    ErrorRate,
    /// The most frequent error messages, grouped by `log_template(message)`: count,
    /// sources, first and last seen, one example.
    TopErrors,
}

impl Builtin {
    /// The report's SQL. It names only columns the server's `logs` table has too, so the
    /// same SQL answers the same over psql.
    pub fn sql(self, top: usize) -> String {
        match self {
            Self::DailySummary => "\
SELECT CAST(timestamp AS DATE) AS day, log_level, source, topic, count(*) AS records,
       min(timestamp) AS first_seen, max(timestamp) AS last_seen
FROM logs
GROUP BY 1, 2, 3, 4
ORDER BY day, level_rank(log_level) DESC, log_level, source, topic"
                .to_string(),
            Self::ErrorRate => "\
SELECT date_trunc('hour', timestamp) AS hour_start, count(*) AS total,
       sum(CASE WHEN log_level IN ('ERROR', 'CRITICAL') THEN 1 ELSE 0 END) AS errors,
       round(CAST(sum(CASE WHEN log_level IN ('ERROR', 'CRITICAL') THEN 1 ELSE 0 END) AS DOUBLE)
             / count(*), 4) AS error_ratio
FROM logs
GROUP BY 1
ORDER BY 1"
                .to_string(),
            Self::TopErrors => format!(
                "\
SELECT log_template(message) AS template, count(*) AS occurrences,
       count(DISTINCT source) AS sources, min(timestamp) AS first_seen,
       max(timestamp) AS last_seen, min(message) AS example
FROM logs
WHERE log_level IN ('ERROR', 'CRITICAL')
GROUP BY 1
ORDER BY occurrences DESC, template
LIMIT {top}"
            ),
        }
    }
}

/// Arguments of `logsphere report`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("query_source").required(true).args(["sql", "query", "builtin"])))]
pub struct ReportArgs {
    /// The cold tier's root: file:///path or hdfs://namenode:port/path [env: LOGSPHERE_COLD].
    #[arg(long, conflicts_with = "data_dir")]
    pub cold: Option<String>,
    /// An embedded server's data directory: its cold tier is DIR/cold.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// First time included: a date (2026-11-01, midnight UTC) or an RFC 3339 time
    /// (2026-11-01T08:00:00Z).
    #[arg(long)]
    pub from: Option<String>,
    /// End, excluded: a date or an RFC 3339 time (--to 2026-12-01 ends with November).
    #[arg(long)]
    pub to: Option<String>,
    /// A file holding the report's SQL (one read-only statement).
    #[arg(long)]
    pub sql: Option<PathBuf>,
    /// The report's SQL on the command line.
    #[arg(long)]
    pub query: Option<String>,
    /// A built-in report.
    #[arg(long, value_enum)]
    pub builtin: Option<Builtin>,
    /// Rows of `--builtin top-errors`.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Output format [default: from --out's extension, else csv].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Output file (written whole, then renamed into place) [default: standard output].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report's SQL (e.g. a built-in's, to start a report of one's own from it)
    /// and exit without reading anything.
    #[arg(long)]
    pub show_sql: bool,
    /// No progress on standard error.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `logsphere report`.
pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (sql, what) = report_sql(&args)?;
    if args.show_sql {
        println!("{}", sql.trim_end());
        return Ok(());
    }
    let cold_url = cold_url(&args)?;
    let range = TimeRange::parse(args.from.as_deref(), args.to.as_deref())?;
    let format = args
        .format
        .or_else(|| args.out.as_deref().and_then(Format::from_extension))
        .unwrap_or(Format::Csv);

    let cold = open_cold(&cold_url).await?;
    let ctx = session(&cold, &range)?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(&sql, options)
        .await
        .with_context(|| format!("the SQL of {what} is wrong"))?;
    let plan = match df.create_physical_plan().await {
        Ok(plan) => plan,
        Err(e) => {
            let e = anyhow::Error::from(e).context(format!(
                "cannot plan the SQL of {what} over {}",
                cold.root_url()
            ));
            return Err(name_broken_files(e, &cold, &range).await);
        }
    };
    let dest = output::Destination::open(args.out.as_deref(), format)?;
    let (files, bytes) = planned_files(plan.as_ref());
    let progress = Progress::new(args.quiet, Arc::clone(&plan), started);
    progress.say(&format!(
        "report: {what} over {}{}: {files} Parquet files, {} to scan",
        cold.root_url(),
        range.describe(),
        human_bytes(bytes)
    ));

    let dest_name = dest.name();
    let mut sink = output::Sink::new(format, plan.schema(), dest)?;
    let ticker = progress.start();
    let result = async {
        let mut stream = execute_stream(Arc::clone(&plan), ctx.task_ctx())
            .with_context(|| format!("cannot run {what}"))?;
        while let Some(batch) = stream.next().await {
            let batch = batch
                .with_context(|| format!("{what} failed while reading {}", cold.root_url()))?;
            if let Err(e) = sink.write(&batch) {
                if broken_pipe(&e) {
                    return Ok(false);
                }
                return Err(e.context(format!("cannot write to {dest_name}")));
            }
            progress
                .rows_out
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        }
        Ok(true)
    }
    .await;
    ticker.abort();
    progress.clear_line();
    let complete = match result {
        Ok(complete) => complete,
        Err(e) => return Err(name_broken_files(e, &cold, &range).await),
    };
    if complete
        && let Err(e) = sink.finish()
        && !broken_pipe(&e)
    {
        return Err(e.context(format!("cannot write to {dest_name}")));
    }
    progress.say(&format!("report: {} → {dest_name}", progress.line()));
    Ok(())
}

/// When `e` is about a Parquet file DataFusion does not name, finds the files in range
/// whose footer cannot be read and names them.
async fn name_broken_files(e: anyhow::Error, cold: &ColdStore, range: &TimeRange) -> anyhow::Error {
    let parquet_error = e.chain().any(|c| c.to_string().contains("Parquet error"));
    if !parquet_error {
        return e;
    }
    let mut broken = vec![];
    for table in ["logs", "dead_letters"] {
        let mut listed = cold.store().list(Some(&ObjectPath::from(table)));
        while let Some(Ok(meta)) = listed.next().await {
            let location = meta.location.as_ref();
            if !location.ends_with(".parquet")
                || store::hidden_below(&ObjectPath::default(), &meta.location)
                || !range.may_hold(location)
            {
                continue;
            }
            if let Err(why) = check_footer(cold, &meta).await {
                broken.push(format!("{}{location} ({why})", cold.root_url()));
                if broken.len() >= 5 {
                    break;
                }
            }
        }
    }
    match broken.len() {
        0 => e,
        1 => e.context(format!("a broken Parquet file: {}", broken.join(""))),
        _ => e.context(format!("broken Parquet files: {}", broken.join(", "))),
    }
}

/// Reads and decodes a Parquet file's footer (the part every reader needs first).
async fn check_footer(cold: &ColdStore, meta: &ObjectMeta) -> anyhow::Result<()> {
    const TAIL: u64 = 8;
    if meta.size < TAIL + 4 {
        bail!("{} bytes: too short for Parquet", meta.size);
    }
    let tail = cold
        .store()
        .get_range(&meta.location, meta.size - TAIL..meta.size)
        .await?;
    let tail: [u8; TAIL as usize] = tail.as_ref().try_into()?;
    let footer = FooterTail::try_new(&tail)?;
    let len = footer.metadata_length() as u64;
    if footer.is_encrypted_footer() {
        return Ok(());
    }
    if len + TAIL + 4 > meta.size {
        bail!(
            "its footer claims {len} bytes of metadata in a {}-byte file",
            meta.size
        );
    }
    let start = meta.size - TAIL - len;
    let metadata = cold
        .store()
        .get_range(&meta.location, start..meta.size - TAIL)
        .await?;
    ParquetMetaDataReader::decode_metadata(&metadata)?;
    Ok(())
}

/// An error on one line: the report's own context, then the causes that add something.
/// DataFusion wraps each cause in a message that repeats it; only the innermost of such a
/// run is kept.
pub fn describe_error(e: &anyhow::Error) -> String {
    let messages: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    // "sql parser error: Expected …" → "Expected …": what a wrapper would quote.
    let core = |m: &str| -> String {
        let mut m = m;
        while let Some((head, rest)) = m.split_once(": ")
            && head.to_ascii_lowercase().contains("error")
        {
            m = rest;
        }
        m.to_string()
    };
    let mut kept: Vec<&str> = vec![];
    for (i, m) in messages.iter().enumerate() {
        let repeated = messages[i + 1..].iter().any(|later| {
            let later = core(later);
            !later.is_empty() && m.contains(later.as_str())
        });
        if i == 0 || !repeated {
            kept.push(m);
        }
    }
    kept.join(": ")
}

/// The output stopped being read (`| head`): not an error.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.to_string().contains("Broken pipe")
    })
}

/// `--cold`, else `--data-dir`/cold, else `LOGSPHERE_COLD`, else `LOGSPHERE_DATA_DIR`/cold.
fn cold_url(args: &ReportArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.cold {
        return Ok(url.clone());
    }
    let from_dir = |dir: &Path, flag: &str| -> anyhow::Result<String> {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("{flag} {}: no such directory", dir.display()))?;
        Ok(format!("file://{}/cold", dir.display()))
    };
    if let Some(dir) = &args.data_dir {
        return from_dir(dir, "--data-dir");
    }
    if let Ok(url) = std::env::var("LOGSPHERE_COLD")
        && !url.trim().is_empty()
    {
        return Ok(url.trim().to_string());
    }
    if let Ok(dir) = std::env::var("LOGSPHERE_DATA_DIR")
        && !dir.trim().is_empty()
    {
        return from_dir(Path::new(dir.trim()), "LOGSPHERE_DATA_DIR");
    }
    bail!(
        "no cold tier given: name it with --cold file:///path or --cold hdfs://namenode:port/path, \
         or --data-dir DIR for an embedded server's DIR/cold (or set LOGSPHERE_COLD)"
    )
}

/// Opens the cold tier and checks that it looks like one (a report must not create it).
async fn open_cold(url: &str) -> anyhow::Result<ColdStore> {
    if let Ok(parsed) = url::Url::parse(url)
        && parsed.scheme() == "file"
    {
        let path = parsed
            .to_file_path()
            .map_err(|()| anyhow::anyhow!("--cold {url:?} is not an absolute local path"))?;
        if !path.is_dir() {
            bail!(
                "the cold tier {url} does not exist ({} is not a directory)",
                path.display()
            );
        }
    }
    let cold = ColdStore::open(url, "--cold").map_err(anyhow::Error::from)?;
    let listed = tokio::time::timeout(
        Duration::from_secs(60),
        cold.store().list_with_delimiter(None),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the cold tier {} did not answer within 60 s",
            cold.root_url()
        )
    })?
    .with_context(|| format!("cannot list the cold tier {}", cold.root_url()))?;
    let tables = listed
        .common_prefixes
        .iter()
        .filter(|p| matches!(p.filename(), Some("logs" | "dead_letters")))
        .count();
    if tables == 0 {
        bail!(
            "{} holds neither logs/ nor dead_letters/: is it the cold tier's root (cold.url)?",
            cold.root_url()
        );
    }
    Ok(cold)
}

/// The SQL to run and how to name it in messages.
fn report_sql(args: &ReportArgs) -> anyhow::Result<(String, String)> {
    if let Some(b) = args.builtin {
        let name = clap::ValueEnum::to_possible_value(&b)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        return Ok((b.sql(args.top), format!("the built-in report {name}")));
    }
    if let Some(q) = &args.query {
        return Ok((q.clone(), "--query".into()));
    }
    if let Some(path) = &args.sql {
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the SQL file {}", path.display()))?;
        if sql.trim().trim_end_matches(';').trim().is_empty() {
            bail!("the SQL file {} is empty", path.display());
        }
        return Ok((sql, path.display().to_string()));
    }
    bail!("give the report's SQL: --sql FILE, --query 'SELECT …' or --builtin NAME")
}

/// The session: LogSphere's functions, `logs` and `dead_letters` over the cold root.
fn session(cold: &ColdStore, range: &TimeRange) -> anyhow::Result<SessionContext> {
    let runtime = Arc::new(RuntimeEnv::default());
    let root = store::root_path(cold.root_url());
    cold.register_wrapped(&runtime, |reader| {
        Arc::new(store::VisibleFiles::new(reader, root))
    });
    let ctx = logsphere_engine::query::base_session(runtime);

    let logs = listing(cold, "logs/", logsphere_engine::model::logs_schema(), true)?;
    ctx.register_table("logs", restricted(&ctx, "logs", logs, range.logs_filter())?)?;

    let dead = listing(
        cold,
        "dead_letters/",
        logsphere_engine::model::dead_letters_schema(),
        false,
    )?;
    let dead = restricted(&ctx, "dead_letters", dead, range.dead_letters_filter())?;
    ctx.register_table("dead_letters", dead)?;
    Ok(ctx)
}

/// `table` seen through `filter`, as a view named `name`: the planner pushes the filter
/// into the listing, so directories outside it are not even listed.
fn restricted(
    ctx: &SessionContext,
    name: &str,
    table: Arc<ListingTable>,
    filter: Expr,
) -> anyhow::Result<Arc<dyn TableProvider>> {
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?
        .filter(filter)?
        .build()
        .with_context(|| format!("cannot restrict {name} to --from/--to"))?;
    Ok(DataFrame::new(ctx.state(), plan).into_view())
}

/// A listing table over `<root>/<dir>` with the Hive partition columns.
fn listing(
    cold: &ColdStore,
    dir: &str,
    schema: arrow::datatypes::SchemaRef,
    hourly: bool,
) -> anyhow::Result<Arc<ListingTable>> {
    let url = format!("{}{dir}", cold.root_url());
    let table_url =
        ListingTableUrl::parse(&url).with_context(|| format!("{url} is not a table URL"))?;
    let mut partitions = vec![("date".to_string(), DataType::Date32)];
    if hourly {
        partitions.push(("hour".to_string(), DataType::Int32));
    }
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partitions);
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config).with_context(
        || format!("cannot set up a table over {url}"),
    )?))
}

/// `--from`/`--to` as µs since the epoch, `to` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeRange {
    from: Option<i64>,
    to: Option<i64>,
}

impl TimeRange {
    fn parse(from: Option<&str>, to: Option<&str>) -> anyhow::Result<Self> {
        let range = Self {
            from: from.map(|s| parse_time("--from", s)).transpose()?,
            to: to.map(|s| parse_time("--to", s)).transpose()?,
        };
        if let (Some(f), Some(t)) = (range.from, range.to)
            && f >= t
        {
            bail!(
                "--from {} is not before --to {} (--to is excluded): the range is empty",
                from.unwrap_or_default(),
                to.unwrap_or_default()
            );
        }
        Ok(range)
    }

    fn describe(&self) -> String {
        let show = |us: i64| {
            DateTime::from_timestamp_micros(us)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .unwrap_or_default()
        };
        match (self.from, self.to) {
            (None, None) => String::new(),
            (Some(f), None) => format!(" from {}", show(f)),
            (None, Some(t)) => format!(" before {}", show(t)),
            (Some(f), Some(t)) => format!(" from {} to {}", show(f), show(t)),
        }
    }

    /// False when a file at `path` (`…/date=YYYY-MM-DD/…`) cannot hold rows of the range.
    fn may_hold(&self, path: &str) -> bool {
        let Some(day) = path
            .split('/')
            .find_map(|p| p.strip_prefix("date="))
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        else {
            return true;
        };
        // dead_letters' date is that of a file's first row: only the end bound is sure.
        let from_ok = !path.starts_with("logs/") || self.from.is_none_or(|f| day >= day_hour(f).0);
        let to_ok = self.to.is_none_or(|t| day <= day_hour(t - 1).0);
        from_ok && to_ok
    }

    /// Time and partition filters for `logs`: a file in `date=D/hour=H` holds only rows
    /// of that hour, so whole hours outside the range are never listed.
    fn logs_filter(&self) -> Expr {
        let mut filters = vec![];
        if let Some(from) = self.from {
            let (day, hour) = day_hour(from);
            filters.push(col("timestamp").gt_eq(timestamp(from)));
            filters.push(col("date").gt_eq(date(day)));
            filters.push(col("date").gt(date(day)).or(col("hour").gt_eq(lit(hour))));
        }
        if let Some(to) = self.to {
            let (day, hour) = day_hour(to - 1);
            filters.push(col("timestamp").lt(timestamp(to)));
            filters.push(col("date").lt_eq(date(day)));
            filters.push(col("date").lt(date(day)).or(col("hour").lt_eq(lit(hour))));
        }
        conjunction(filters)
    }

    /// Filters for `dead_letters` on `ingest_time`. A file's `date` is that of its first
    /// row, so only the upper bound prunes directories.
    fn dead_letters_filter(&self) -> Expr {
        let mut filters = vec![];
        if let Some(from) = self.from {
            filters.push(col("ingest_time").gt_eq(timestamp(from)));
        }
        if let Some(to) = self.to {
            let (day, _) = day_hour(to - 1);
            filters.push(col("ingest_time").lt(timestamp(to)));
            filters.push(col("date").lt_eq(date(day)));
        }
        conjunction(filters)
    }
}

fn conjunction(filters: Vec<Expr>) -> Expr {
    filters
        .into_iter()
        .reduce(Expr::and)
        .unwrap_or_else(|| lit(true))
}

fn timestamp(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(us),
        Some(logsphere_engine::model::UTC.into()),
    ))
}

fn date(day: NaiveDate) -> Expr {
    let days = day.signed_duration_since(NaiveDate::default()).num_days();
    lit(ScalarValue::Date32(Some(days as i32)))
}

/// The UTC day and hour of a time in µs.
fn day_hour(us: i64) -> (NaiveDate, i32) {
    let t = DateTime::from_timestamp_micros(us).unwrap_or_default();
    (t.date_naive(), t.hour() as i32)
}

/// A date (midnight UTC), an RFC 3339 time, or a time without offset (UTC).
fn parse_time(flag: &str, s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let t = if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).map(|t| t.and_utc())
    } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        Some(t.with_timezone(&Utc))
    } else {
        [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
    };
    let Some(t) = t else {
        bail!(
            "{flag} {s:?} is neither a date (2026-11-01) nor an RFC 3339 time \
             (2026-11-01T08:00:00Z)"
        );
    };
    if !(1..=9999).contains(&t.year()) {
        bail!("{flag} {s:?} is outside the years 1 to 9999");
    }
    Ok(t.timestamp_micros())
}

/// Files and bytes the plan's scans will read (after partition pruning).
fn planned_files(plan: &dyn ExecutionPlan) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    visit(plan, &mut |node| {
        if let Some(scan) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
        {
            for f in scan.file_groups.iter().flat_map(|g| g.iter()) {
                files += 1;
                bytes += f.object_meta.size;
            }
        }
    });
    (files, bytes)
}

fn visit(plan: &dyn ExecutionPlan, f: &mut dyn FnMut(&dyn ExecutionPlan)) {
    f(plan);
    for child in plan.children() {
        visit(child.as_ref(), f);
    }
}

/// `bytes` for people: `812 B`, `3.4 KiB`, `1.2 MiB`, `5.0 GiB`.
fn human_bytes(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 || unit == "GiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    format!("{bytes} B")
}

/// Progress on standard error: a line redrawn on a terminal, else a log line every 5 s.
struct Progress {
    quiet: bool,
    tty: bool,
    plan: Arc<dyn ExecutionPlan>,
    planned_files: usize,
    started: Instant,
    rows_out: AtomicU64,
}

impl Progress {
    fn new(quiet: bool, plan: Arc<dyn ExecutionPlan>, started: Instant) -> Arc<Self> {
        Arc::new(Self {
            quiet,
            tty: std::io::stderr().is_terminal(),
            planned_files: planned_files(plan.as_ref()).0,
            plan,
            started,
            rows_out: AtomicU64::new(0),
        })
    }

    /// What has been done so far, from the live metrics of the plan's scans.
    fn line(&self) -> String {
        let (mut files, mut rows) = (0, 0);
        visit(self.plan.as_ref(), &mut |node| {
            if node.is::<DataSourceExec>()
                && let Some(m) = node.metrics()
            {
                files += m.sum_by_name("files_processed").map_or(0, |v| v.as_usize());
                rows += m.output_rows().unwrap_or(0);
            }
        });
        format!(
            "{files}/{} files, {rows} rows scanned, {} rows out, {:.1} s",
            self.planned_files,
            self.rows_out.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64()
        )
    }

    fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    fn clear_line(&self) {
        if !self.quiet && self.tty {
            eprint!("\r\x1b[2K");
        }
    }

    /// Shows progress until the returned task is aborted.
    fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if this.quiet {
                return;
            }
            let every = if this.tty {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(5)
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if this.tty {
                    eprint!("\r\x1b[2Kreport: {}", this.line());
                } else {
                    eprintln!("report: {}", this.line());
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_micros())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn times_are_dates_or_rfc3339() {
        assert_eq!(
            parse_time("--from", "2026-11-01").ok(),
            Some(us("2026-11-01T00:00:00Z"))
        );
        assert_eq!(
            parse_time("--from", "2026-11-01T08:30:00+01:00").ok(),
            Some(us("2026-11-01T07:30:00Z"))
        );
        assert_eq!(
            parse_time("--from", "2026-11-01T08:30:00.5Z").ok(),
            Some(us("2026-11-01T08:30:00.5Z"))
        );
        assert_eq!(
            parse_time("--to", "2026-11-01 08:30:00").ok(),
            Some(us("2026-11-01T08:30:00Z"))
        );
        let err = parse_time("--to", "yesterday").map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.contains("--to \"yesterday\"")),
            "{err:?}"
        );
        assert!(parse_time("--from", "+99999-01-01T00:00:00Z").is_err());
        let empty = TimeRange::parse(Some("2026-12-01"), Some("2026-11-01"));
        assert!(empty.is_err());
    }

    #[test]
    fn the_last_hour_of_a_range_is_the_one_before_to() {
        assert_eq!(
            day_hour(us("2026-12-01T00:00:00Z") - 1),
            (
                NaiveDate::from_ymd_opt(2026, 11, 30).unwrap_or_default(),
                23
            )
        );
    }
}
