//! Synthetic but realistic log records, written straight into NDJSON bodies.
//!
//! Deterministic: a record depends only on its index and the dataset's time span, so a
//! dataset is the same whatever the number of senders, and a rerun makes the same rows.

use std::io::Write as _;

/// Every record line (JSON object plus `\n`) is padded to this many bytes when it is shorter.
pub const RECORD_BYTES: usize = 200;

/// Number of distinct `host` values (the `source` column).
pub const SOURCES: u64 = 50;

const HOST_ROLES: [&str; 5] = ["web", "api", "worker", "db", "cache"];
const SERVICES: [&str; 6] = [
    "checkout",
    "search",
    "auth",
    "billing",
    "inventory",
    "gateway",
];
const RESOURCES: [&str; 6] = ["orders", "users", "carts", "invoices", "items", "sessions"];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];
/// Filler that pads a message to the record size; deliberately free of the words queries look for.
const FILLER: &str = "client=mobile-app ver=4.12.3 locale=en-GB route=primary shard=7 pool=default \
                      tenant=acme-corp flags=none retry_budget=3 feature=new-cart-flow";

/// SplitMix64: tiny, fast and good enough to vary log records.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The name of source `i` (`0..SOURCES`), e.g. `web-03`.
pub fn host_name(i: u64) -> String {
    let role = HOST_ROLES[(i % HOST_ROLES.len() as u64) as usize];
    format!("{role}-{:02}", i / HOST_ROLES.len() as u64 + 1)
}

/// Appends one record line (padded to [`RECORD_BYTES`]) to `out`.
///
/// Levels: ~85% INFO, 6% WARN, 5% ERROR, 4% DEBUG. About half the ERROR messages and a few
/// WARN ones mention a timeout, so `LIKE '%timeout%'` matches a few percent of the rows.
pub fn write_record(out: &mut Vec<u8>, ts_us: i64, rng: &mut Rng, hosts: &[String]) {
    let start = out.len();
    let host = &hosts[rng.below(hosts.len() as u64) as usize];
    let roll = rng.below(100);
    let ms = 1 + rng.below(900);
    let id = rng.below(1_000_000);
    let res = rng.pick(&RESOURCES);
    let svc = rng.pick(&SERVICES);
    let (level, topic) = match roll {
        0..=84 => ("INFO", "logs.activity"),
        85..=90 => ("WARN", "logs.activity"),
        91..=95 => ("ERROR", "logs.error"),
        _ => ("DEBUG", "logs.debug"),
    };
    let ts = chrono::DateTime::from_timestamp_micros(ts_us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // Messages never need JSON escaping, so the line is written by hand (fast, no allocation per field).
    let _ = write!(
        out,
        "{{\"ts\":\"{ts}\",\"level\":\"{level}\",\"message\":\""
    );
    let _ = match (level, rng.below(4)) {
        ("INFO", 0) => write!(out, "GET /api/v1/{res}/{id} 200 {ms}ms"),
        ("INFO", 1) => write!(out, "POST /api/v1/{res} 201 {ms}ms"),
        ("INFO", 2) => write!(
            out,
            "user u{id} signed in from 10.{}.{}.{}",
            id % 256,
            ms % 256,
            roll
        ),
        ("INFO", _) => write!(out, "job {id} finished {res} sync in {ms}ms"),
        ("WARN", 0) => write!(out, "client timeout raised to {ms}ms for {svc}"),
        ("WARN", 1) => write!(out, "slow query on {res}: {ms}ms"),
        ("WARN", _) => write!(out, "retrying call to {svc} (attempt {})", 1 + id % 5),
        ("ERROR", 0) => write!(out, "upstream timeout after {ms}ms calling {svc}"),
        ("ERROR", 1) => write!(out, "read timeout on socket to {svc}:{}", 8000 + id % 100),
        ("ERROR", 2) => write!(out, "connection refused by {svc} database"),
        ("ERROR", _) => write!(out, "request to /api/v1/{res}/{id} failed with 500"),
        _ => write!(out, "span {:016x} closed", rng.next_u64()),
    };
    let tail_start = out.len();
    let _ = writeln!(
        out,
        "\",\"host\":\"{host}\",\"topic\":\"{topic}\",\"service\":\"{svc}\",\"region\":\"{}\",\"duration_ms\":{ms}}}",
        rng.pick(&REGIONS)
    );
    let len = out.len() - start;
    if len < RECORD_BYTES {
        // Pad the message (before its closing quote) with " " + filler.
        let pad = (RECORD_BYTES - len).min(FILLER.len() + 1);
        let mut filler = Vec::with_capacity(pad);
        filler.push(b' ');
        filler.extend_from_slice(&FILLER.as_bytes()[..pad - 1]);
        out.splice(tail_start..tail_start, filler);
    }
}

/// All source names.
pub fn hosts() -> Vec<String> {
    (0..SOURCES).map(host_name).collect()
}

/// `count` NDJSON bodies of `batch` records each, stamped around `now_us`, for the ingest bench.
pub fn body_pool(count: usize, batch: usize, now_us: i64) -> Vec<Vec<u8>> {
    let hosts = hosts();
    (0..count)
        .map(|b| {
            let mut rng = Rng::new(b as u64);
            let mut body = Vec::with_capacity(batch * (RECORD_BYTES + 8));
            for i in 0..batch {
                write_record(
                    &mut body,
                    now_us + (b * batch + i) as i64 * 10,
                    &mut rng,
                    &hosts,
                );
            }
            body
        })
        .collect()
}

/// The query bench's dataset: `rows` records spread evenly over `[start_us, end_us)`.
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    /// Total records.
    pub rows: u64,
    /// Event time of the first record.
    pub start_us: i64,
    /// End of the time span (exclusive).
    pub end_us: i64,
}

impl Dataset {
    /// Appends records `first..first + n` to `body`.
    pub fn write_batch(&self, body: &mut Vec<u8>, first: u64, n: u64, hosts: &[String]) {
        let mut rng = Rng::new(first.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let span = (self.end_us - self.start_us).max(1) as f64;
        let step = span / self.rows.max(1) as f64;
        for i in first..first + n {
            // Up to 2 s of jitter: records arrive slightly out of order, as real logs do.
            let jitter = rng.below(2_000_000) as i64;
            let ts = (self.start_us + (i as f64 * step) as i64 + jitter).min(self.end_us - 1);
            write_record(body, ts, &mut rng, hosts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_valid_json_of_the_target_size() {
        let hosts = hosts();
        let mut rng = Rng::new(1);
        let mut levels = std::collections::HashMap::new();
        for i in 0..2000 {
            let mut out = Vec::new();
            write_record(&mut out, 1_790_000_000_000_000 + i, &mut rng, &hosts);
            assert_eq!(out.last(), Some(&b'\n'));
            assert!(
                out.len() >= RECORD_BYTES - 1 && out.len() <= RECORD_BYTES + 40,
                "{} bytes",
                out.len()
            );
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            *levels
                .entry(v["level"].as_str().unwrap_or("").to_string())
                .or_insert(0) += 1;
            assert!(
                v["host"]
                    .as_str()
                    .is_some_and(|h| hosts.iter().any(|x| x == h))
            );
        }
        assert!(levels["ERROR"] > 40 && levels["ERROR"] < 200, "{levels:?}");
    }

    #[test]
    fn dataset_is_deterministic_and_inside_its_span() {
        let d = Dataset {
            rows: 1000,
            start_us: 0,
            end_us: 3_600_000_000,
        };
        let hosts = hosts();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        d.write_batch(&mut a, 100, 50, &hosts);
        d.write_batch(&mut b, 100, 50, &hosts);
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|c| **c == b'\n').count(), 50);
    }

    #[test]
    fn host_names_are_distinct() {
        let h = hosts();
        let set: std::collections::HashSet<_> = h.iter().collect();
        assert_eq!(set.len(), SOURCES as usize);
    }
}
