//! Accuracy against real logs nobody here wrote: Loghub's hand-parsed 2,000-line samples
//! and 10,000 Apache access-log lines, read from `<repository>/../shared/datasets` (or
//! `LOGSPHERE_DATASETS`). For each system whose layout a format claims, every field the
//! format defines is compared with the CSV's; the table is printed and each field must
//! match on at least 99% of the lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use serde_json::Value;

use super::*;

/// 2026-12-07T05:00:00Z; yearless times are compared without their (inferred) year.
const INGEST: i64 = 1_796_619_600_000_000;
const REQUIRED: f64 = 0.99;

fn datasets() -> PathBuf {
    let dir = std::env::var_os("LOGSPHERE_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets"));
    assert!(
        dir.join("loghub-2k").is_dir() && dir.join("apache-access").is_dir(),
        "the real-log datasets are missing: expected loghub-2k/ and apache-access/ under {} \
         (the shared datasets folder beside the repository; set LOGSPHERE_DATASETS to \
         where they are)",
        dir.display()
    );
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One CSV record (fields may be quoted, `""` inside quotes is `"`).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', q) => quoted = !q,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// What one parsed line says, as text to compare with the CSV.
struct Parsed {
    ts: Option<i64>,
    level: String,
    source: String,
    message: String,
    attrs: Value,
}

impl Parsed {
    fn attr(&self, key: &str) -> String {
        match &self.attrs[key] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    fn time(&self, fmt: &str) -> String {
        self.ts
            .and_then(DateTime::from_timestamp_micros)
            .map(|t| t.format(fmt).to_string())
            .unwrap_or_default()
    }
}

fn parse(format: Format, line: &str) -> Option<Parsed> {
    let mut a = Attrs::default();
    let row = parse_line(format, line, INGEST, &mut a)?;
    Some(Parsed {
        ts: row.ts,
        level: row.raw_level.unwrap_or(row.level).to_string(),
        source: row.source.to_string(),
        message: row.message.into_owned(),
        attrs: serde_json::from_str(a.finish()).unwrap_or(Value::Null),
    })
}

/// Field name → (expected from the CSV row, actual from the parse).
type Field = (
    &'static str,
    fn(&HashMap<String, String>) -> String,
    fn(&Parsed) -> String,
);

struct System {
    name: &'static str,
    format: Format,
    /// The Loghub line carries a prefix that is no part of the format (OpenStack's file name).
    strip_column: Option<&'static str>,
    fields: Vec<Field>,
}

fn systems() -> Vec<System> {
    fn c(r: &HashMap<String, String>, k: &str) -> String {
        r.get(k).cloned().unwrap_or_default()
    }
    let content: Field = ("content", |r| c(r, "Content"), |p| p.message.clone());
    let level: Field = ("level", |r| c(r, "Level"), |p| p.level.clone());
    let pid: Field = ("pid", |r| c(r, "Pid"), |p| p.attr("pid"));
    let logger: Field = ("component", |r| c(r, "Component"), |p| p.attr("logger"));
    vec![
        System {
            name: "Linux",
            format: Format::Syslog,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {} {}", c(r, "Month"), c(r, "Date"), c(r, "Time")),
                    |p| p.time("%b %-d %H:%M:%S"),
                ),
                // Loghub's Linux CSV names the host column `Level`.
                ("host", |r| c(r, "Level"), |p| p.source.clone()),
                ("program", |r| c(r, "Component"), |p| p.attr("program")),
                ("pid", |r| c(r, "PID"), |p| p.attr("pid")),
                content,
            ],
        },
        System {
            name: "OpenSSH",
            format: Format::Syslog,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {} {}", c(r, "Date"), c(r, "Day"), c(r, "Time")),
                    |p| p.time("%b %-d %H:%M:%S"),
                ),
                // Loghub's OpenSSH CSV names the host column `Component`.
                ("host", |r| c(r, "Component"), |p| p.source.clone()),
                pid,
                content,
            ],
        },
        System {
            name: "Mac",
            format: Format::Syslog,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {} {}", c(r, "Month"), c(r, "Date"), c(r, "Time")),
                    |p| p.time("%b %-d %H:%M:%S"),
                ),
                ("host", |r| c(r, "User"), |p| p.source.clone()),
                ("program", |r| c(r, "Component"), |p| p.attr("program")),
                ("pid", |r| c(r, "PID"), |p| p.attr("pid")),
                content,
            ],
        },
        System {
            name: "Apache",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| c(r, "Time"),
                    |p| p.time("%a %b %d %H:%M:%S %Y"),
                ),
                level,
                content,
            ],
        },
        System {
            name: "Hadoop",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%Y-%m-%d %H:%M:%S,%3f"),
                ),
                level,
                ("thread", |r| c(r, "Process"), |p| p.attr("thread")),
                logger,
                content,
            ],
        },
        System {
            name: "Zookeeper",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%Y-%m-%d %H:%M:%S,%3f"),
                ),
                level,
                // Loghub splits `[thread:Class@line]` at the first `:`; compare it whole.
                (
                    "thread:component@line",
                    |r| format!("{}:{}@{}", c(r, "Node"), c(r, "Component"), c(r, "Id")),
                    |p| {
                        format!(
                            "{}:{}@{}",
                            p.attr("thread"),
                            p.attr("logger"),
                            p.attr("line")
                        )
                    },
                ),
                content,
            ],
        },
        System {
            name: "Spark",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%y/%m/%d %H:%M:%S"),
                ),
                level,
                logger,
                content,
            ],
        },
        System {
            name: "HDFS",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{:0>6} {:0>6}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%y%m%d %H%M%S"),
                ),
                pid,
                level,
                logger,
                content,
            ],
        },
        System {
            name: "OpenStack",
            format: Format::App,
            strip_column: Some("Logrecord"),
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%Y-%m-%d %H:%M:%S%.3f"),
                ),
                pid,
                level,
                logger,
                ("context", |r| c(r, "ADDR"), |p| p.attr("context")),
                content,
            ],
        },
        System {
            name: "Android",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%m-%d %H:%M:%S%.3f"),
                ),
                pid,
                ("tid", |r| c(r, "Tid"), |p| p.attr("tid")),
                level,
                logger,
                content,
            ],
        },
        System {
            name: "Windows",
            format: Format::App,
            strip_column: None,
            fields: vec![
                (
                    "timestamp",
                    |r| format!("{} {}", c(r, "Date"), c(r, "Time")),
                    |p| p.time("%Y-%m-%d %H:%M:%S"),
                ),
                level,
                logger,
                content,
            ],
        },
    ]
}

/// Matches per field, and a few misses to show.
#[derive(Default)]
struct Tally {
    ok: usize,
    total: usize,
    misses: Vec<String>,
}

impl Tally {
    fn add(&mut self, expected: &str, actual: &str, line: &str) {
        self.total += 1;
        if expected.trim() == actual.trim() {
            self.ok += 1;
        } else if self.misses.len() < 3 {
            self.misses
                .push(format!("expected {expected:?}, got {actual:?} in {line:?}"));
        }
    }

    /// Levels compare without case: the row keeps `ERROR` for `error`, `INFO` for `Info`.
    fn add_level(&mut self, expected: &str, actual: &str, line: &str) {
        self.total += 1;
        if expected.trim().eq_ignore_ascii_case(actual.trim()) {
            self.ok += 1;
        } else if self.misses.len() < 3 {
            self.misses
                .push(format!("expected {expected:?}, got {actual:?} in {line:?}"));
        }
    }

    fn rate(&self) -> f64 {
        self.ok as f64 / self.total.max(1) as f64
    }
}

/// Runs every claimed system, in `format` and in `auto`; returns the failures.
fn check(system: &System, dir: &Path, results: &mut Vec<(String, String, Tally)>) {
    let base = dir.join("loghub-2k").join(system.name);
    let log = read(&base.join(format!("{}_2k.log", system.name)));
    let csv = read(&base.join(format!("{}_2k.log_structured.csv", system.name)));
    let mut rows = csv.lines();
    let header = csv_fields(rows.next().unwrap_or_default());
    let records: Vec<HashMap<String, String>> = rows
        .map(|l| header.iter().cloned().zip(csv_fields(l)).collect())
        .collect();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.len(),
        records.len(),
        "{}: log and CSV differ in length",
        system.name
    );
    for format in [system.format, Format::Auto] {
        let label = format!("{} ({format})", system.name);
        let mut parsed_tally = Tally::default();
        let mut tallies: Vec<Tally> = system.fields.iter().map(|_| Tally::default()).collect();
        for (line, rec) in lines.iter().zip(&records) {
            let line = match system.strip_column.and_then(|c| rec.get(c)) {
                Some(prefix) => line
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(line)
                    .trim_start(),
                None => line,
            };
            let parsed = parse(format, line);
            parsed_tally.add(
                "parsed",
                if parsed.is_some() {
                    "parsed"
                } else {
                    "no match"
                },
                line,
            );
            let Some(p) = parsed else {
                for t in &mut tallies {
                    t.add("a parse", "no match", line);
                }
                continue;
            };
            for ((name, expected, actual), t) in system.fields.iter().zip(&mut tallies) {
                if *name == "level" {
                    t.add_level(&expected(rec), &actual(&p), line);
                } else {
                    t.add(&expected(rec), &actual(&p), line);
                }
            }
        }
        results.push((label.clone(), "parsed".into(), parsed_tally));
        for ((name, _, _), t) in system.fields.iter().zip(tallies) {
            results.push((label.clone(), (*name).into(), t));
        }
    }
}

/// The Apache combined log: each field against a split on `"` (an independent reading),
/// and the whole line rebuilt from the parse.
fn check_access(dir: &Path, results: &mut Vec<(String, String, Tally)>) {
    let log = read(&dir.join("apache-access/apache_logs"));
    for format in [Format::Access, Format::Auto] {
        let label = format!("apache_logs ({format})");
        let names = [
            "client",
            "timestamp",
            "request",
            "status",
            "bytes",
            "referer",
            "user_agent",
            "rebuilt line",
        ];
        let mut tallies: Vec<Tally> = names.iter().map(|_| Tally::default()).collect();
        for line in log.lines() {
            let q: Vec<&str> = line.split('"').collect();
            let head: Vec<&str> = q[0].split(' ').collect();
            let tail: Vec<&str> = q
                .get(2)
                .map(|t| t.trim().split(' ').collect())
                .unwrap_or_default();
            let time = q[0]
                .split_once('[')
                .and_then(|(_, t)| t.split_once(']'))
                .map(|t| t.0);
            let expected = [
                head[0].to_string(),
                time.unwrap_or_default().to_string(),
                q.get(1).copied().unwrap_or_default().to_string(),
                tail.first().copied().unwrap_or_default().to_string(),
                tail.get(1).copied().unwrap_or_default().to_string(),
                q.get(3).copied().unwrap_or_default().to_string(),
                q.get(5).copied().unwrap_or_default().to_string(),
                line.to_string(),
            ];
            let Some(p) = parse(format, line) else {
                for t in &mut tallies {
                    t.add("a parse", "no match", line);
                }
                continue;
            };
            let or_dash = |k: &str| match p.attr(k) {
                s if s.is_empty() => "-".to_string(),
                s => s,
            };
            let time = p.time("%d/%b/%Y:%H:%M:%S +0000");
            let actual = [
                p.attr("client"),
                time.clone(),
                p.message.clone(),
                p.attr("status"),
                or_dash("bytes"),
                or_dash("referer"),
                or_dash("user_agent"),
                format!(
                    "{} {} {} [{}] \"{}\" {} {} \"{}\" \"{}\"",
                    p.attr("client"),
                    or_dash("ident"),
                    or_dash("user"),
                    time,
                    p.message,
                    p.attr("status"),
                    or_dash("bytes"),
                    or_dash("referer"),
                    or_dash("user_agent"),
                ),
            ];
            for ((e, a), t) in expected.iter().zip(&actual).zip(&mut tallies) {
                t.add(e, a, line);
            }
        }
        for (name, t) in names.iter().zip(tallies) {
            results.push((label.clone(), (*name).into(), t));
        }
    }
}

#[test]
fn real_logs_parse_field_by_field() {
    let dir = datasets();
    let mut results = Vec::new();
    for system in systems() {
        check(&system, &dir, &mut results);
    }
    check_access(&dir, &mut results);
    let mut failures = Vec::new();
    eprintln!(
        "{:<24} {:<24} {:>12} {:>8}",
        "system (format)", "field", "matched", "accuracy"
    );
    for (system, field, t) in &results {
        eprintln!(
            "{system:<24} {field:<24} {:>12} {:>7.2}%",
            format!("{}/{}", t.ok, t.total),
            t.rate() * 100.0
        );
        if t.rate() < 1.0 {
            for m in &t.misses {
                eprintln!("    {m}");
            }
        }
        if t.rate() < REQUIRED {
            failures.push(format!(
                "{system} {field}: {:.2}%\n    {}",
                t.rate() * 100.0,
                t.misses.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "fields under {}%:\n{}",
        REQUIRED * 100.0,
        failures.join("\n")
    );
}
