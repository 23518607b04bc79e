//! `logsphere ship`: send a file or stdin to a LogSphere HTTP endpoint, with retries that
//! never store a batch twice (each batch carries a stable `Idempotency-Key`), or with
//! `--kafka` straight to a Kafka topic (cluster mode), through an idempotent producer.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How lines are turned into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Each line is a JSON object, sent as is.
    Json,
    /// Each line is a message; `--source`, `--level` and `--topic` fill in the rest.
    Text,
    /// The server tells each line's format: JSON, syslog, access log, logfmt, app layout,
    /// or else the line is the message.
    Auto,
    /// RFC 5424 or RFC 3164 syslog, parsed by the server.
    Syslog,
    /// Apache/nginx common or combined access log, parsed by the server.
    Access,
    /// logfmt `key=value` pairs, parsed by the server.
    Logfmt,
    /// Application layouts (log4j, Python logging, glog, …), parsed by the server.
    App,
}

impl Format {
    /// The server's `?format=` for lines sent raw; `None` for the formats built here.
    fn server_side(self) -> Option<&'static str> {
        match self {
            Format::Json | Format::Text => None,
            Format::Auto => Some("auto"),
            Format::Syslog => Some("syslog"),
            Format::Access => Some("access"),
            Format::Logfmt => Some("logfmt"),
            Format::App => Some("app"),
        }
    }
}

/// Arguments of `logsphere ship`.
#[derive(Debug, clap::Args)]
pub struct ShipArgs {
    /// File to send; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// Base URL of the LogSphere HTTP endpoint.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        env = "LOGSPHERE_SHIP_TO"
    )]
    pub to: String,
    /// Line format. Apart from json and text, lines are sent as they are and the server
    /// parses them (`POST /v1/logs?format=…`).
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// `source` of text lines, and of parsed lines that name no host [default: the file
    /// name, or "stdin"].
    #[arg(long)]
    pub source: Option<String>,
    /// `log_level` of `--format text` lines.
    #[arg(long, default_value = "INFO")]
    pub level: String,
    /// `topic` of records that name none; with `--kafka`, the Kafka topic [default: logs].
    #[arg(long)]
    pub topic: Option<String>,
    /// Produce to these Kafka brokers (host:port,…) instead of HTTP: cluster mode, where
    /// LogSphere consumes the topic. Idempotent producer, acks=all, lz4, batching.
    #[arg(long, env = "LOGSPHERE_SHIP_KAFKA")]
    pub kafka: Option<String>,
    /// Keep reading as the file grows, and across rotation (like `tail -F`).
    #[arg(long)]
    pub follow: bool,
    /// Most lines per request.
    #[arg(long, default_value_t = 5000)]
    pub batch_lines: usize,
    /// Most bytes per request.
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// Give up on a batch after this many failed attempts (0: never give up); a 409 (its
    /// Idempotency-Key still held by an earlier attempt) is waited out, not counted.
    #[arg(long, default_value_t = 30)]
    pub max_retries: u32,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

struct Input {
    reader: Box<dyn BufRead>,
    /// `(device, inode)` of a file, for stable keys and rotation checks.
    identity: Option<(u64, u64)>,
    path: Option<PathBuf>,
    offset: u64,
    total: Option<u64>,
}

impl Input {
    fn open(path: Option<&PathBuf>) -> anyhow::Result<Self> {
        match path {
            Some(p) if p.as_os_str() != "-" => {
                let f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
                let meta = f
                    .metadata()
                    .with_context(|| format!("cannot stat {}", p.display()))?;
                Ok(Self {
                    reader: Box::new(BufReader::with_capacity(1 << 20, f)),
                    identity: Some((meta.dev(), meta.ino())),
                    path: Some(p.clone()),
                    offset: 0,
                    total: Some(meta.len()),
                })
            }
            _ => Ok(Self {
                reader: Box::new(BufReader::new(std::io::stdin())),
                identity: None,
                path: None,
                offset: 0,
                total: None,
            }),
        }
    }

    /// True when the path now names another file (rotated) or the file shrank (truncated).
    fn replaced(&self) -> bool {
        let (Some(path), Some(id)) = (&self.path, self.identity) else {
            return false;
        };
        match std::fs::metadata(path) {
            Ok(m) => (m.dev(), m.ino()) != id || m.len() < self.offset,
            Err(_) => false,
        }
    }
}

/// Where batches go.
enum Target {
    Http {
        agent: ureq::Agent,
        url: String,
        content_type: &'static str,
    },
    Kafka {
        producer: logsphere_engine::cluster::produce::LogProducer,
        topic: String,
        runtime: tokio::runtime::Runtime,
    },
}

/// `--source`, else the file name, else `stdin`.
fn default_source(args: &ShipArgs) -> String {
    args.source.clone().unwrap_or_else(|| match &args.file {
        Some(p) if p.as_os_str() != "-" => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        _ => "stdin".into(),
    })
}

struct Shipper {
    target: Target,
    max_retries: u32,
    run_id: String,
    batches: u64,
    lines: u64,
    bytes: u64,
    accepted: u64,
    rejected: u64,
}

impl Shipper {
    fn send(&mut self, body: &[u8], key: String, lines: u64) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(100);
        let (mut attempt, mut failures) = (0u32, 0u32);
        loop {
            attempt += 1;
            let retry = match self.attempt(body, &key)? {
                Ok((accepted, rejected)) => {
                    self.accepted += accepted;
                    self.rejected += rejected;
                    self.batches += 1;
                    self.lines += lines;
                    self.bytes += body.len() as u64;
                    return Ok(());
                }
                Err(retry) => retry,
            };
            let reason = &retry.reason;
            // A key still held elsewhere is not a failure: the lease bounds the wait.
            if !retry.held {
                failures += 1;
            }
            if self.max_retries != 0 && failures > self.max_retries {
                bail!("giving up on a batch after {attempt} attempts: {reason}");
            }
            // The server's Retry-After (e.g. a 409 while another attempt with this batch's
            // Idempotency-Key is still being stored) replaces the backoff step.
            let wait = retry.after.unwrap_or(delay);
            eprintln!(
                "\nlogsphere ship: attempt {attempt} failed ({reason}); retrying in {wait:?}"
            );
            std::thread::sleep(wait);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Why an attempt is worth repeating, and when the server asked to be asked again.
struct Retry {
    reason: String,
    after: Option<Duration>,
    /// 409: another request with the batch's `Idempotency-Key` is being stored.
    held: bool,
}

impl Retry {
    fn now(reason: String) -> Self {
        Self {
            reason,
            after: None,
            held: false,
        }
    }
}

/// A `Retry-After` header in seconds (the HTTP-date form is not used by LogSphere), capped at
/// a minute so a confused proxy cannot stall the shipper.
fn retry_after(resp: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

impl Shipper {
    /// One try: `Ok(Ok((accepted, rejected)))` when stored, `Ok(Err(retry))` when worth
    /// retrying, `Err` when the batch is refused for good.
    fn attempt(&self, body: &[u8], key: &str) -> anyhow::Result<Result<(u64, u64), Retry>> {
        match &self.target {
            Target::Http {
                agent,
                url,
                content_type,
            } => {
                let result = agent
                    .post(url)
                    .header("Content-Type", *content_type)
                    .header("Idempotency-Key", key)
                    .send(body);
                match result {
                    Ok(mut resp) => {
                        let status = resp.status().as_u16();
                        let after = retry_after(&resp);
                        let text = resp.body_mut().read_to_string().unwrap_or_default();
                        if status == 200 {
                            let v: serde_json::Value =
                                serde_json::from_str(&text).unwrap_or_default();
                            return Ok(Ok((
                                v["accepted"].as_u64().unwrap_or(0),
                                v["rejected"].as_u64().unwrap_or(0),
                            )));
                        }
                        // 409: another attempt with this key is being stored (cluster mode);
                        // once it is, the retry gets its answer.
                        if status == 409 || status == 429 || status >= 500 {
                            Ok(Err(Retry {
                                reason: format!("HTTP {status}: {text}"),
                                after,
                                held: status == 409,
                            }))
                        } else {
                            bail!("{url} refused the batch: HTTP {status}: {text}");
                        }
                    }
                    Err(e) => Ok(Err(Retry::now(e.to_string()))),
                }
            }
            Target::Kafka {
                producer,
                topic,
                runtime,
            } => {
                // Records are decoded where LogSphere consumes them: all count as accepted
                // here, and undecodable ones show up in dead_letters.
                match runtime.block_on(producer.send_body(topic, body)) {
                    Ok(n) => Ok(Ok((n as u64, 0))),
                    Err(e) => Ok(Err(Retry::now(e.to_string()))),
                }
            }
        }
    }
}

struct Progress {
    started: Instant,
    last: Instant,
    tty: bool,
    quiet: bool,
}

impl Progress {
    fn show(&mut self, s: &Shipper, input: &Input, done: bool) {
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        if self.quiet || (!done && self.last.elapsed() < every) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = match input.total {
            Some(t) if t > 0 => format!(
                " ({:.0}%)",
                (input.offset as f64 / t as f64 * 100.0).min(100.0)
            ),
            _ => String::new(),
        };
        let line = format!(
            "shipped {} lines, {:.1} MiB{pct}, {:.0} lines/s; accepted {}, rejected {}",
            s.lines,
            s.bytes as f64 / (1 << 20) as f64,
            s.lines as f64 / secs,
            s.accepted,
            s.rejected
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if done {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// Runs `logsphere ship`.
pub fn run(args: ShipArgs) -> anyhow::Result<()> {
    let mut shipper = Shipper {
        target: target(&args)?,
        max_retries: args.max_retries,
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        batches: 0,
        lines: 0,
        bytes: 0,
        accepted: 0,
        rejected: 0,
    };
    let source = default_source(&args);
    let mut input = Input::open(args.file.as_ref())?;
    let mut progress = Progress {
        started: Instant::now(),
        last: Instant::now(),
        tty: std::io::stderr().is_terminal(),
        quiet: args.quiet,
    };
    let mut body = Vec::with_capacity(args.batch_bytes + 4096);
    let mut body_lines = 0u64;
    let mut batch_start = 0u64;
    let mut line = Vec::new();
    let mut pending_partial = Vec::new();
    let mut draining = false;
    loop {
        line.clear();
        let n = input
            .reader
            .read_until(b'\n', &mut line)
            .context("cannot read input")?;
        if n > 0 && line.last() != Some(&b'\n') && args.follow {
            // A line still being written: keep it until its newline arrives.
            pending_partial.extend_from_slice(&line);
            input.offset += n as u64;
            continue;
        }
        if n > 0 {
            input.offset += n as u64;
            let mut full = std::mem::take(&mut pending_partial);
            full.extend_from_slice(&line);
            let text = trim_newline(&full);
            if !text.iter().all(|c| c.is_ascii_whitespace()) {
                append_record(&mut body, text, args.format, &source, &args.level);
                body_lines += 1;
            }
        }
        let eof = n == 0;
        let full_batch = body_lines as usize >= args.batch_lines || body.len() >= args.batch_bytes;
        if body_lines > 0 && (full_batch || eof) {
            let key = match input.identity {
                Some((dev, ino)) => format!("ship-{dev}-{ino}-{batch_start}-{}", input.offset),
                None => format!("ship-{}-{}", shipper.run_id, shipper.batches),
            };
            shipper.send(&body, key, body_lines)?;
            body.clear();
            body_lines = 0;
            batch_start = input.offset;
        }
        progress.show(&shipper, &input, false);
        if eof {
            if !args.follow {
                break;
            }
            if input.replaced() {
                // Read the old file to its end once more (a writer may have appended
                // between our last read and the rename), then switch to the new one.
                if draining {
                    let path = input.path.clone();
                    input = Input::open(path.as_ref())?;
                    batch_start = 0;
                    draining = false;
                } else {
                    draining = true;
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    progress.show(&shipper, &input, true);
    if shipper.rejected > 0 && !args.quiet {
        eprintln!(
            "{} records were rejected; see SELECT reason, raw_text FROM dead_letters",
            shipper.rejected
        );
    }
    Ok(())
}

/// The HTTP endpoint, or with `--kafka` a producer to the topic.
fn target(args: &ShipArgs) -> anyhow::Result<Target> {
    if let Some(brokers) = &args.kafka {
        if brokers.trim().is_empty() {
            bail!("--kafka is empty: give host:port[,host:port…]");
        }
        if let Some(f) = args.format.server_side() {
            bail!(
                "--format {f} is parsed by the HTTP endpoint; with --kafka use --format json \
                 or --format text"
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        // Created inside the runtime: librdkafka's delivery futures need it.
        let producer = runtime.block_on(async {
            logsphere_engine::cluster::produce::LogProducer::new(brokers, Duration::from_secs(60))
        })?;
        return Ok(Target::Kafka {
            producer,
            topic: args.topic.clone().unwrap_or_else(|| "logs".into()),
            runtime,
        });
    }
    let mut params = Vec::new();
    if let Some(t) = &args.topic {
        params.push(format!("topic={}", urlencode(t)));
    }
    if let Some(f) = args.format.server_side() {
        params.push(format!("format={f}"));
        params.push(format!("source={}", urlencode(&default_source(args))));
    }
    let mut url = format!("{}/v1/logs", args.to.trim_end_matches('/'));
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build();
    Ok(Target::Http {
        agent: ureq::Agent::new_with_config(config),
        url,
        content_type: match args.format.server_side() {
            Some(_) => "text/plain; charset=utf-8",
            None => "application/x-ndjson",
        },
    })
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn append_record(body: &mut Vec<u8>, line: &[u8], format: Format, source: &str, level: &str) {
    match format {
        Format::Text => {
            let message = String::from_utf8_lossy(line);
            let rec = serde_json::json!({ "message": message, "source": source, "level": level });
            body.extend_from_slice(rec.to_string().as_bytes());
        }
        // JSON as is; the server parses the other formats.
        _ => body.extend_from_slice(line),
    }
    body.push(b'\n');
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
