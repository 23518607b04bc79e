//! Apache Superset 6.1 (the real application from PyPI, in the venv `scripts/test` builds from
//! tests/clients/superset-requirements.txt: `LOGSPHERE_SUPERSET_PYTHON`) against LogSphere:
//! `tests/clients/superset_probe.py` adds LogSphere as a database through Superset's REST
//! API, lists schemas, tables and columns, creates a dataset on the physical table `logs`,
//! runs SQL Lab and gets charts' data from `/api/v1/chart/data` (count by level, count per
//! hour and per day under dashboard time ranges, a table with an adhoc filter and a
//! calculated JSON column, a filter's value list, samples); this test asserts every answer
//! against the records it ingested.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::Server;
use serde_json::{Value, json};

pub(crate) fn superset_python() -> String {
    std::env::var("LOGSPHERE_SUPERSET_PYTHON").unwrap_or_else(|_| {
        panic!(
            "LOGSPHERE_SUPERSET_PYTHON is not set: it names a python with the packages of \
             tests/clients/superset-requirements.txt. scripts/test builds it; or run \
             `python3 -m venv ~/.cache/logsphere/superset && ~/.cache/logsphere/superset/bin/pip \
             install -r tests/clients/superset-requirements.txt` and set \
             LOGSPHERE_SUPERSET_PYTHON=~/.cache/logsphere/superset/bin/python"
        )
    })
}

/// One ingested record: event time (s since the epoch), level and the `user` attribute.
struct Record {
    ts: i64,
    level: &'static str,
    user: String,
}

/// Records over the last 60 hours, every 37 minutes, levels in a fixed rotation: some fall
/// in "Last day" (yesterday, UTC), some in the last 24 hours, some in both or neither.
fn records(now: i64) -> Vec<Record> {
    const LEVELS: [&str; 5] = ["ERROR", "INFO", "WARN", "INFO", "DEBUG"];
    (0..97)
        .map(|i| Record {
            ts: now - 300 - i * 37 * 60,
            level: LEVELS[(i as usize * 7) % LEVELS.len()],
            user: format!("u{}", i % 3),
        })
        .collect()
}

/// Count per `bucket` seconds (bucket start in ms since the epoch) of the records in
/// `[from, to)` (ms).
fn per_bucket(records: &[Record], from_ms: i64, to_ms: i64, bucket: i64) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for r in records {
        let ms = r.ts * 1000;
        if ms >= from_ms && ms < to_ms {
            *out.entry(r.ts / bucket * bucket * 1000).or_insert(0) += 1;
        }
    }
    out
}

fn per_hour(records: &[Record], from_ms: i64, to_ms: i64) -> BTreeMap<i64, i64> {
    per_bucket(records, from_ms, to_ms, 3600)
}

/// A chart's `data` rows `{timestamp: ms, count: n}` as a map.
fn chart_per_time(chart: &Value) -> BTreeMap<i64, i64> {
    chart["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data rows in {chart}"))
        .iter()
        .map(|row| {
            let ts = row["timestamp"].as_f64().unwrap_or(f64::NAN);
            let n = row["count"].as_i64().unwrap_or(-1);
            (ts as i64, n)
        })
        .collect()
}

fn ms(v: &Value) -> i64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("not a time in ms: {v}")) as i64
}

#[test]
fn superset_adds_logs_as_a_dataset_and_charts_it() {
    let python = superset_python();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let records = records(now);
    let server = Server::start();
    // The older half is flushed to the cold tier (Parquet), the rest stays hot: the charts
    // read both.
    let ndjson = |rs: &[Record]| {
        rs.iter()
            .enumerate()
            .map(|(i, r)| {
                json!({"ts": r.ts, "level": r.level, "msg": format!("event {i}"), "host": "web-1", "user": r.user})
                    .to_string()
                    + "\n"
            })
            .collect::<String>()
    };
    let (old, recent) = records.split_at(records.len() / 2);
    server.post_expect(ndjson(recent).as_bytes(), recent.len(), 0);
    assert_eq!(server.flush(), recent.len() as u64);
    server.post_expect(ndjson(old).as_bytes(), old.len(), 0);

    let work = tempfile::Builder::new()
        .prefix("superset-")
        .tempdir()
        .expect("temp dir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/superset_probe.py");
    let started = Instant::now();
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.pg_port().to_string())
        .arg(work.path())
        // Superset's "today" (the "Last day" range) is the process's local midnight.
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed = || {
        format!(
            "superset_probe.py:\n{stdout}\n{stderr}\n--- server log ---\n{}",
            server.log()
        )
    };
    assert!(
        out.status.success() && stdout.contains("superset ok"),
        "{}",
        failed()
    );
    println!("superset_probe.py took {:?}", started.elapsed());
    // The latest "now" Superset can have used for its time ranges.
    let run_end = now + started.elapsed().as_secs() as i64 + 2;
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("superset-result "))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no superset-result line: {}", failed()));

    // The database's schemas, the tables of `public` and the columns of `logs`, as the
    // dataset editor lists them.
    assert_eq!(result["schemas"], json!(["public"]), "{result}");
    assert_eq!(
        result["tables"],
        json!(["dead_letters", "logs", "logs_cold", "logs_hot"]),
        "{result}"
    );
    assert_eq!(
        result["columns"],
        json!([
            ["timestamp", "TIMESTAMP"],
            ["log_level", "TEXT"],
            ["message", "TEXT"],
            ["source", "TEXT"],
            ["topic", "TEXT"],
            ["attributes", "TEXT"],
            ["ingest_time", "TIMESTAMP"],
            // `user`, in every record, became a column when the older half was tiered.
            ["user", "TEXT"]
        ]),
        "{result}"
    );
    // The dataset on the physical table: reflected columns, the two time columns temporal,
    // `timestamp` the default time column, Superset's COUNT(*) metric.
    assert_eq!(
        result["dataset_columns"],
        json!([
            ["attributes", "TEXT", false],
            ["ingest_time", "TIMESTAMP WITH TIME ZONE", true],
            ["log_level", "TEXT", false],
            ["message", "TEXT", false],
            ["source", "TEXT", false],
            ["timestamp", "TIMESTAMP WITH TIME ZONE", true],
            ["topic", "TEXT", false],
            ["user", "TEXT", false]
        ]),
        "{result}"
    );
    assert_eq!(result["dataset_metrics"], json!(["count"]), "{result}");
    assert_eq!(result["main_dttm_col"], json!("timestamp"), "{result}");

    // SQL Lab: a query typed by hand, its column named as PostgreSQL names it.
    assert_eq!(
        result["sqllab"],
        json!({"columns": ["count"], "data": [{"count": records.len()}]}),
        "{result}"
    );

    // Bar chart: COUNT(*) by log_level over every record.
    let mut want_levels: BTreeMap<String, i64> = BTreeMap::new();
    for r in &records {
        *want_levels.entry(r.level.to_owned()).or_insert(0) += 1;
    }
    let got_levels: BTreeMap<String, i64> = result["count_by_level"]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .map(|row| {
            (
                row["log_level"].as_str().unwrap_or_default().to_owned(),
                row["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(got_levels, want_levels, "{result}");

    // Time series, count per hour under "Last day": yesterday 00:00 to today 00:00 (UTC),
    // sent as PostgreSQL to_timestamp templates.
    let day = &result["per_hour_last_day"];
    let (from, to) = (ms(&day["from_dttm"]), ms(&day["to_dttm"]));
    assert_eq!(to % 86_400_000, 0, "Last day ends at midnight: {day}");
    assert_eq!(to - from, 86_400_000, "Last day is one day: {day}");
    assert!(
        to <= run_end * 1000 && now * 1000 < to + 86_400_000,
        "Last day is yesterday: {day}"
    );
    let query = day["query"].as_str().unwrap_or_default();
    assert!(
        query.contains("TO_TIMESTAMP(") && query.contains("'YYYY-MM-DD HH24:MI:SS.US'"),
        "{query}"
    );
    let want = per_hour(&records, from, to);
    assert!(want.len() >= 20, "the records cover yesterday: {want:?}");
    assert_eq!(chart_per_time(day), want, "{day}");

    // ... and under the advanced range `DATEADD(DATETIME("now"), -24, hour) : now`.
    let last24 = &result["per_hour_last_24h"];
    let (from, to) = (ms(&last24["from_dttm"]), ms(&last24["to_dttm"]));
    // Superset reads the clock once per end, so the range can be a second longer.
    assert!(
        (86_400_000..=86_401_000).contains(&(to - from)),
        "24 hours: {last24}"
    );
    assert!(
        (now - 1) * 1000 <= to && to <= run_end * 1000,
        "the range ends now: {last24}"
    );
    let want = per_hour(&records, from, to);
    assert!(
        want.values().sum::<i64>() >= 35,
        "most of a day of records: {want:?}"
    );
    assert_eq!(chart_per_time(last24), want, "{last24}");

    // A dashboard filter's value list for log_level: the distinct levels (in no order).
    let mut levels: Vec<&str> = records.iter().map(|r| r.level).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut got: Vec<&str> = result["level_values"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    got.sort_unstable();
    assert_eq!(got, levels, "{result}");

    // A table chart: count by level and a calculated column over the attributes JSON
    // (`attributes::json ->> 'user'`), under an adhoc filter `log_level IN ('ERROR', 'WARN')`.
    let table = &result["table_by_user"];
    let mut want: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| ["ERROR", "WARN"].contains(&r.level))
    {
        *want
            .entry((r.level.to_owned(), r.user.clone()))
            .or_insert(0) += 1;
    }
    let got: BTreeMap<(String, String), i64> = table["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{table}"))
        .iter()
        .map(|row| {
            let text = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
            (
                (text("log_level"), text("user")),
                row["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(got, want, "{table}");

    // Count per day (time grain P1D) under "Last week": the seven days before today.
    let week = &result["per_day_last_week"];
    let (from, to) = (ms(&week["from_dttm"]), ms(&week["to_dttm"]));
    assert_eq!((to % 86_400_000, to - from), (0, 7 * 86_400_000), "{week}");
    let want = per_bucket(&records, from, to, 86_400);
    assert!(want.len() >= 2, "{want:?}");
    assert_eq!(chart_per_time(week), want, "{week}");

    // The samples pane: the first rows with every column.
    let samples = &result["samples"]["data"];
    let rows = samples.as_array().unwrap_or_else(|| panic!("{samples}"));
    assert_eq!(rows.len(), 3, "{samples}");
    for row in rows {
        let mut keys: Vec<&str> = row
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attributes",
                "ingest_time",
                "log_level",
                "message",
                "source",
                "timestamp",
                "topic",
                "user"
            ],
            "{samples}"
        );
        assert_eq!(
            row["user"],
            Value::String(attributes_user(row)),
            "{samples}"
        );
        let attributes: Value =
            serde_json::from_str(row["attributes"].as_str().unwrap_or_default())
                .unwrap_or_default();
        assert!(attributes["user"].is_string(), "{samples}");
    }
}

/// The `user` key of a sample row's `attributes`, which the promoted `user` column equals.
fn attributes_user(row: &Value) -> String {
    let attributes: Value =
        serde_json::from_str(row["attributes"].as_str().unwrap_or_default()).unwrap_or_default();
    attributes["user"].as_str().unwrap_or_default().to_owned()
}
