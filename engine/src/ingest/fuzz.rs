//! Bounded fuzzing of every ingest decoder, on stable Rust, as part of the test suite.
//!
//! Each target starts from its corpus (`engine/fuzz/corpus/<target>/`, kept in the
//! repository) and mutates it — bit flips, byte and chunk insertions and deletions,
//! splices of two inputs, truncation, bytes that matter to the formats (`"`, `{`, `\`,
//! newline, `\xff`, huge numbers) — for a bounded time per target
//! (`LOGSPHERE_FUZZ_SECS`, 2 s by default; set it higher to fuzz for real). Each input
//! must decode without a panic, and what it decodes to must stay within a fixed multiple
//! of its size (no unbounded allocation). A failing input is written to
//! `$CARGO_TARGET_TMPDIR`-like `target/fuzz-failures/<target>-<hash>` and named in the
//! panic, so it can be added to the corpus once fixed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::shippers::{bulk, loki, otlp};
use super::{DecodeOptions, Format, decode_body};

/// Inputs are cut to this size: the decoders' limits are tested elsewhere.
const MAX_INPUT: usize = 16 * 1024;
/// What one input may decode to, at most: this many bytes per input byte, plus a constant.
const MAX_AMPLIFICATION: usize = 64;
const SLACK_BYTES: usize = 256 * 1024;

/// A small deterministic generator (xorshift64*): a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\x00",
    b"=",
    b" ",
    b":",
    b",",
    b"<",
    b">",
    b"-",
    b"99999999999999999999999999",
    b"1e999",
    b"-0",
    b"null",
    b"true",
    b"\"timestamp\":",
    b"\"level\":",
    b"[10/Oct/2000:13:55:36 -0700]",
    b"<34>1 ",
    b"\xe2\x82",
    b"\"\"\"",
];

/// One mutation of `input` (sometimes spliced with `other`).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 if !out.is_empty() => {
                let from = rng.below(out.len());
                let end = (from + 1 + rng.below(64)).min(out.len());
                let chunk = out[from..end].to_vec();
                out.splice(at..at, chunk);
            }
            4 if !other.is_empty() => {
                let cut = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[cut..]);
            }
            5 => out.truncate(at),
            _ => out.insert(at, rng.next() as u8),
        }
    }
    out.truncate(MAX_INPUT);
    out
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn budget() -> Duration {
    let secs = std::env::var("LOGSPHERE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// Runs `decode` over the corpus and its mutations for the time budget; returns how many
/// inputs it ran. `decode` answers the bytes its output holds.
fn fuzz(target: &str, mut seeds: Vec<Vec<u8>>, decode: impl Fn(&[u8]) -> usize) -> u64 {
    seeds.extend(corpus(target));
    assert!(!seeds.is_empty(), "no corpus for {target}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let started = Instant::now();
    let mut runs = 0u64;
    let check = |input: &[u8]| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(input)));
        let failure = match result {
            Ok(bytes) if bytes <= input.len() * MAX_AMPLIFICATION + SLACK_BYTES => None,
            Ok(bytes) => Some(format!("decoded to {bytes} bytes")),
            Err(_) => Some("panicked".to_string()),
        };
        if let Some(why) = failure {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            let name = format!("{target}-{hash:016x}");
            let _ = std::fs::write(dir.join(&name), input);
            panic!(
                "fuzz target {target}: an input of {} bytes {why}; saved as target/fuzz-failures/{name}",
                input.len()
            );
        }
    };
    for seed in &seeds {
        check(seed);
        runs += 1;
    }
    while started.elapsed() < budget() || runs < seeds.len() as u64 * 10 {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        check(&input);
        runs += 1;
    }
    eprintln!(
        "fuzz target {target}: {runs} inputs in {:.1?}",
        started.elapsed()
    );
    runs
}

fn batch_bytes(d: &super::Decoded) -> usize {
    d.logs.get_array_memory_size() + d.dead_letters.get_array_memory_size()
}

fn body_target(target: &str, format: Format) {
    let opts = DecodeOptions {
        format,
        ..DecodeOptions::default()
    };
    let runs = fuzz(target, Vec::new(), |input| {
        let d = decode_body(input, 1_764_000_000_000_000, &opts);
        batch_bytes(&d)
    });
    assert!(runs > 0);
}

#[test]
fn fuzz_json() {
    body_target("json", Format::Json);
}

#[test]
fn fuzz_auto_and_text() {
    body_target("auto", Format::Auto);
    body_target("auto", Format::Text);
}

#[test]
fn fuzz_syslog() {
    body_target("syslog", Format::Syslog);
}

#[test]
fn fuzz_access() {
    body_target("access", Format::Access);
}

#[test]
fn fuzz_logfmt() {
    body_target("logfmt", Format::Logfmt);
}

#[test]
fn fuzz_app() {
    body_target("app", Format::App);
}

/// A shipper's envelope, then the records it yields through the JSON decoder, as the
/// server does.
fn shipped_bytes(shipped: &super::shippers::Shipped) -> usize {
    let opts = DecodeOptions {
        rejected: shipped.rejected.clone(),
        ..DecodeOptions::default()
    };
    batch_bytes(&decode_body(&shipped.body, 1_764_000_000_000_000, &opts))
}

#[test]
fn fuzz_bulk() {
    fuzz("bulk", Vec::new(), |input| {
        match bulk::parse(input, None, "logs") {
            Ok(b) => shipped_bytes(&b.shipped),
            Err(e) => e.len(),
        }
    });
}

#[test]
fn fuzz_loki_json() {
    fuzz("loki_json", Vec::new(), |input| {
        loki::from_json(input, "logs").map_or_else(|e| e.len(), |s| shipped_bytes(&s))
    });
}

#[test]
fn fuzz_loki_protobuf() {
    fuzz("loki_protobuf", Vec::new(), |input| {
        loki::from_snappy_protobuf(input, "logs", 1 << 20)
            .map_or_else(|e| e.len(), |s| shipped_bytes(&s))
    });
}

#[test]
fn fuzz_otlp_json() {
    fuzz("otlp_json", Vec::new(), |input| {
        otlp::from_json(input, "logs").map_or_else(|e| e.len(), |s| shipped_bytes(&s))
    });
}

#[test]
fn fuzz_otlp_protobuf() {
    use prost::Message;
    let seed = super::shippers::tests::otlp_request().encode_to_vec();
    fuzz("otlp_protobuf", vec![seed], |input| {
        otlp::from_protobuf(input, "logs").map_or_else(|e| e.len(), |s| shipped_bytes(&s))
    });
}
