//! `logsphere report`: SQL straight over the cold tier on the real HDFS, compared value by
//! value with the same SQL over pgwire; `--from`/`--to` pruning; hidden files never read;
//! clear errors; and the cold files read by pyarrow and DuckDB (`LOGSPHERE_PYTHON`, the
//! environment `scripts/test` builds from tests/clients/requirements.txt).

use crate::clients::python;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use logsphere_tests::services::{service_endpoint, unique_name};
use logsphere_tests::{Server, binary};

const FORMATS: [&str; 4] = ["csv", "json", "parquet", "markdown"];
const BUILTINS: [&str; 3] = ["daily-summary", "error-rate", "top-errors"];

/// One synthetic record: over three days, many hours, every level, ids in the messages.
struct Record {
    day: u32,
    hour: u32,
    json: String,
}

fn records() -> Vec<Record> {
    let levels = ["info", "error", "warn", "fatal", "debug", "error", "info"];
    (0..280u32)
        .map(|i| {
            let day = 24 + i % 3;
            let hour = (i * 7 + i / 3) % 24;
            let message = match i % 5 {
                0 => format!("user {i} login failed from 10.0.{}.{}", i % 5, i % 200),
                1 => format!(
                    "payment {:08x}-{:04x}-4{:03x}-a{:03x}-{:012x} declined after {}ms",
                    i * 7919,
                    i,
                    i,
                    i,
                    u64::from(i) * 104_729,
                    i * 10
                ),
                2 => format!("cache miss for key 0x{:x}", i * 4099),
                3 => format!("request {:x}{:06x} took {}.{}s", i + 0xab, i * 31, i % 9, i % 10),
                _ => "disk full".to_string(),
            };
            let json = serde_json::json!({
                "ts": format!("2026-11-{day:02}T{hour:02}:{:02}:{:02}.{:06}Z", i % 60, i % 60, i * 37),
                "level": levels[i as usize % levels.len()],
                "msg": message,
                "host": format!("web-{}", i % 4),
                "topic": if i % 6 == 0 { "billing" } else { "app" },
                "region": if i % 2 == 0 { "eu" } else { "us" },
            })
            .to_string();
            Record { day, hour, json }
        })
        .collect()
}

/// A server whose cold tier is a fresh directory on the test HDFS, holding `records()`
/// (and two dead letters) flushed to Parquet.
fn server_with_cold_data() -> (Server, String, Vec<Record>) {
    let cold = format!(
        "{}/{}",
        service_endpoint("LOGSPHERE_TEST_HDFS"),
        unique_name("report")
    );
    let server = Server::start_with_config(&format!("[cold]\nurl = \"{cold}\"\n"));
    let recs = records();
    let mut body: String = recs.iter().map(|r| format!("{}\n", r.json)).collect();
    body.push_str("not json at all\n{\"level\": \"error\", \"msg\": [1, 2\n");
    server.post_expect(body.as_bytes(), recs.len(), 2);
    let mut flushed = server.flush();
    // An interval flush may have taken the rows first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while flushed == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        flushed = server.flush();
    }
    (server, cold, recs)
}

/// Runs `logsphere report` with `args`.
fn report(args: &[&str]) -> Output {
    Command::new(binary())
        .arg("report")
        .args(args)
        .env("LOGSPHERE_LOG", "warn")
        .env_remove("LOGSPHERE_COLD")
        .output()
        .expect("run logsphere report")
}

/// Runs a report that must succeed; returns standard output and standard error.
fn report_ok(args: &[&str]) -> (String, String) {
    let out = report(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "logsphere report {args:?} failed ({}):\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn cold_readers(mode: &str, path: &Path) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/cold_readers.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(mode)
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "cold_readers.py {mode} {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A table as compared: column names and rows of canonical cell texts.
#[derive(Debug, PartialEq)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A cell in one spelling for every format: times as `YYYY-MM-DD HH:MM:SS[.f]` (UTC,
/// fraction without trailing zeros), numbers as Rust prints an f64, NULL as ``.
fn canon(s: &str) -> String {
    let b = s.as_bytes();
    let looks_like_time = b.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':';
    if looks_like_time {
        let mut t = format!("{} {}", &s[..10], &s[11..]);
        for zone in ["+00:00", "+00", "Z"] {
            if let Some(stripped) = t.strip_suffix(zone) {
                t = stripped.to_string();
                break;
            }
        }
        if t.contains('.') {
            t = t.trim_end_matches('0').trim_end_matches('.').to_string();
        }
        return t;
    }
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
        && let Ok(x) = s.parse::<f64>()
    {
        return format!("{x}");
    }
    s.to_string()
}

/// `sql` over pgwire (simple protocol: every value as PostgreSQL text).
async fn pg_table(server: &Server, sql: &str) -> Table {
    use tokio_postgres::SimpleQueryMessage;
    let client = server.pg_client().await;
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("pgwire: {sql}: {e}"));
    let mut columns = vec![];
    let mut rows = vec![];
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push(
                    (0..row.len())
                        .map(|i| canon(row.get(i).unwrap_or("")))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Table { columns, rows }
}

/// RFC 4180 CSV (quoted fields may hold commas, quotes and line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = vec![];
    let mut row = vec![];
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// A Markdown table's cells, `\|` and `\\` unescaped, `<br>` as a line break.
fn parse_markdown(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().filter(|l| l.starts_with('|'));
    let split = |line: &str| -> Vec<String> {
        let inner = line
            .strip_prefix("| ")
            .and_then(|l| l.strip_suffix(" |"))
            .unwrap_or_else(|| panic!("not a Markdown table row: {line:?}"));
        let mut cells = vec![];
        let mut cell = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cell.extend(chars.next()),
                '|' => {
                    cells.push(cell.trim().replace("<br>", "\n"));
                    cell.clear();
                }
                c => cell.push(c),
            }
        }
        cells.push(cell.trim().replace("<br>", "\n"));
        cells
    };
    let header = lines.next().map(split).unwrap_or_default();
    let rule = lines.next().map(split).unwrap_or_default();
    assert!(
        rule.iter().all(|r| r == "---" || r == "---:"),
        "second line is not a rule: {rule:?}"
    );
    std::iter::once(header).chain(lines.map(split)).collect()
}

/// NDJSON rows, read by the column names the server answered with.
fn parse_ndjson(text: &str, columns: &[String]) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("not a JSON object: {l}"));
            assert_eq!(
                obj.len(),
                columns.len(),
                "keys of {l} vs columns {columns:?}"
            );
            columns
                .iter()
                .map(|c| match obj.get(c) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) => String::new(),
                    Some(other) => other.to_string(),
                    None => panic!("column {c} missing from {l}"),
                })
                .collect()
        })
        .collect()
}

/// Runs a report into a file of `format` and reads it back as a table.
fn report_table(args: &[&str], format: &str, dir: &Path, columns: &[String]) -> Table {
    let out = dir.join(format!("{}.{format}", unique_name("out")));
    let out_s = out.to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", format, "--out", &out_s]);
    let (stdout, stderr) = report_ok(&all);
    assert!(
        stdout.is_empty(),
        "stdout must stay clean with --out: {stdout}"
    );
    assert!(stderr.contains("report:"), "progress on stderr: {stderr}");
    let (columns, rows) = match format {
        "csv" | "markdown" => {
            let text = std::fs::read_to_string(&out).expect("read the report");
            let mut rows = if format == "csv" {
                parse_csv(&text)
            } else {
                parse_markdown(&text)
            };
            assert!(!rows.is_empty(), "{format} has no header:\n{text}");
            let header = rows.remove(0);
            (header, rows)
        }
        "json" => {
            let text = std::fs::read_to_string(&out).expect("read the report");
            (columns.to_vec(), parse_ndjson(&text, columns))
        }
        "parquet" => {
            let text = cold_readers("parquet", &out);
            (columns.to_vec(), parse_ndjson(&text, columns))
        }
        other => panic!("unknown format {other}"),
    };
    let rows = rows
        .into_iter()
        .map(|r| r.iter().map(|c| canon(c)).collect())
        .collect();
    Table { columns, rows }
}

/// The number after `: ` and before ` Parquet files` in the report's first progress line.
fn planned_files(stderr: &str) -> usize {
    stderr
        .lines()
        .find_map(|l| {
            let (head, _) = l.split_once(" Parquet files")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no file count in: {stderr}"))
}

#[tokio::test]
async fn report_over_hdfs_matches_pgwire_in_every_format() {
    let (server, cold, recs) = server_with_cold_data();
    let dir = tempfile::tempdir().expect("temp dir");

    // The built-in reports: each format holds exactly what psql shows.
    for builtin in BUILTINS {
        let (sql, _) = report_ok(&["--builtin", builtin, "--show-sql"]);
        let want = pg_table(&server, &sql).await;
        assert!(!want.rows.is_empty(), "{builtin}: pgwire answered no rows");
        for format in FORMATS {
            let got = report_table(
                &["--cold", &cold, "--builtin", builtin],
                format,
                dir.path(),
                &want.columns,
            );
            assert_eq!(got, want, "--builtin {builtin} --format {format}");
        }
    }
    // The built-ins say what they claim: three days, 24 hours or fewer each, templates.
    let (daily, _) = report_ok(&["--cold", &cold, "--builtin", "daily-summary", "-q"]);
    let days: BTreeSet<&str> = daily.lines().skip(1).filter_map(|l| l.get(..10)).collect();
    assert_eq!(
        days.into_iter().collect::<Vec<_>>(),
        ["2026-11-24", "2026-11-25", "2026-11-26"]
    );
    let (top, _) = report_ok(&["--cold", &cold, "--builtin", "top-errors", "-q"]);
    assert!(top.contains("user <num> login failed from <ip>,"), "{top}");
    assert!(
        top.contains("payment <uuid> declined after <num>ms,"),
        "{top}"
    );

    // A report of one's own from a file: functions, attributes, every format.
    let sql = "SELECT source, log_level, count(*) AS n,
                      count(DISTINCT log_template(message)) AS templates,
                      max(length(message)) AS longest, min(timestamp) AS first_seen
               FROM logs WHERE attr(attributes, 'region') = 'eu'
               GROUP BY 1, 2 ORDER BY 1, 2";
    let sql_file = dir.path().join("custom.sql");
    std::fs::write(&sql_file, format!("-- EU traffic\n{sql};\n")).expect("write sql");
    let sql_path = sql_file.to_string_lossy().into_owned();
    let want = pg_table(&server, sql).await;
    assert!(want.rows.len() > 4, "{want:?}");
    for format in FORMATS {
        let got = report_table(
            &["--cold", &cold, "--sql", &sql_path],
            format,
            dir.path(),
            &want.columns,
        );
        assert_eq!(got, want, "--sql --format {format}");
    }

    // --from/--to: rows outside are excluded, whole hours outside are not even listed.
    let count_sql =
        "SELECT count(*) AS n, min(timestamp) AS first_seen, max(timestamp) AS last_seen FROM logs";
    let range = ["--from", "2026-11-25T06:00:00Z", "--to", "2026-11-26"];
    let in_range: Vec<&Record> = recs.iter().filter(|r| r.day == 25 && r.hour >= 6).collect();
    let hours: BTreeSet<(u32, u32)> = in_range.iter().map(|r| (r.day, r.hour)).collect();
    let all_hours: BTreeSet<(u32, u32)> = recs.iter().map(|r| (r.day, r.hour)).collect();
    assert!(in_range.len() > 10 && in_range.len() < recs.len() / 2);
    let mut args = vec!["--cold", cold.as_str(), "--query", count_sql];
    args.extend(range);
    let want = pg_table(
        &server,
        &format!(
            "{count_sql} WHERE timestamp >= '2026-11-25T06:00:00Z' AND timestamp < '2026-11-26T00:00:00Z'"
        ),
    )
    .await;
    assert_eq!(want.rows[0][0], in_range.len().to_string());
    for format in ["csv", "json"] {
        assert_eq!(
            report_table(&args, format, dir.path(), &want.columns),
            want,
            "{range:?} --format {format}"
        );
    }
    // (A query that must read rows: a bare count(*) is answered from file statistics.)
    let scan_sql = "SELECT sum(length(message)) AS chars FROM logs";
    let mut args = vec!["--cold", cold.as_str(), "--query", scan_sql];
    args.extend(range);
    let (_, stderr) = report_ok(&args);
    assert_eq!(
        planned_files(&stderr),
        hours.len(),
        "only the hours in range are read: {stderr}"
    );
    let (_, stderr) = report_ok(&["--cold", &cold, "--query", scan_sql]);
    assert_eq!(planned_files(&stderr), all_hours.len(), "{stderr}");
    // Dates alone: the 24th only (--to excluded), and the partition columns are there.
    let (csv, _) = report_ok(&[
        "--cold",
        &cold,
        "-q",
        "--from",
        "2026-11-24",
        "--to",
        "2026-11-25",
        "--query",
        "SELECT count(*) AS n, count(DISTINCT date) AS dates, min(hour) AS h0, max(hour) AS h1 FROM logs",
    ]);
    let day24: Vec<&Record> = recs.iter().filter(|r| r.day == 24).collect();
    let h0 = day24.iter().map(|r| r.hour).min().unwrap_or_default();
    let h1 = day24.iter().map(|r| r.hour).max().unwrap_or_default();
    assert_eq!(csv, format!("n,dates,h0,h1\n{},1,{h0},{h1}\n", day24.len()));

    // dead_letters is there too.
    let want = pg_table(&server, "SELECT count(*) AS n FROM dead_letters").await;
    assert_eq!(want.rows, [["2"]]);
    let got = report_table(
        &[
            "--cold",
            &cold,
            "--query",
            "SELECT count(*) AS n FROM dead_letters",
        ],
        "csv",
        dir.path(),
        &want.columns,
    );
    assert_eq!(got, want);

    // Hidden files (HDFS's `.name.tmp.N` while writing, `_temporary/`) are never read:
    // broken ones would fail the report, copies would count twice.
    hide_files_next_to_the_data(&cold).await;
    let want = pg_table(&server, count_sql).await;
    assert_eq!(want.rows[0][0], recs.len().to_string());
    let got = report_table(
        &["--cold", &cold, "--query", count_sql],
        "csv",
        dir.path(),
        &want.columns,
    );
    assert_eq!(got, want, "hidden files were read");

    // Standard output: only the data.
    let (stdout, _) = report_ok(&["--cold", &cold, "--query", "SELECT count(*) AS n FROM logs"]);
    assert_eq!(stdout, format!("n\n{}\n", recs.len()));
}

/// Puts a broken `.x.parquet.tmp.0`, a broken `.y.parquet` and a `_temporary/` copy of a real
/// file into the cold tier's first hour directory.
async fn hide_files_next_to_the_data(cold: &str) {
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};

    let (store, root) = hdfs_store(cold);
    let logs = root.clone().join("logs");
    let files: Vec<ObjectPath> = list(&store, &logs).await;
    let first = files.first().expect("a cold file").clone();
    let hour_dir = first
        .as_ref()
        .rsplit_once('/')
        .map(|(d, _)| d.to_string())
        .expect("a directory");
    let real = store
        .get(&first)
        .await
        .expect("read a cold file")
        .bytes()
        .await
        .expect("read a cold file");
    let garbage = PutPayload::from_static(b"PAR1 not really");
    for (name, body) in [
        (".5e1f.parquet.tmp.0", garbage.clone()),
        (".broken.parquet", garbage),
        ("_temporary/copy.parquet", PutPayload::from(real.clone())),
        (".copy.parquet", PutPayload::from(real)),
    ] {
        let path = ObjectPath::from(format!("{hour_dir}/{name}"));
        store
            .put(&path, body)
            .await
            .unwrap_or_else(|e| panic!("hdfs: write {path}: {e}"));
    }
}

/// The HDFS store of `url`'s namenode and the path of `url` in it.
fn hdfs_store(url: &str) -> (impl object_store::ObjectStore, object_store::path::Path) {
    let rest = url
        .strip_prefix("hdfs://")
        .unwrap_or_else(|| panic!("not an hdfs:// URL: {url}"));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let store = hdfs_native_object_store::HdfsObjectStoreBuilder::new()
        .with_url(format!("hdfs://{authority}"))
        .build()
        .unwrap_or_else(|e| panic!("hdfs client for {url}: {e}"));
    (store, object_store::path::Path::from(path))
}

async fn list(
    store: &impl object_store::ObjectStore,
    prefix: &object_store::path::Path,
) -> Vec<object_store::path::Path> {
    use futures::TryStreamExt;
    let mut files: Vec<object_store::path::Path> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("hdfs: list {prefix}: {e}"));
    files.sort();
    files
}

#[tokio::test]
async fn cold_hours_copied_out_of_hdfs_are_read_by_pyarrow_and_duckdb() {
    use object_store::ObjectStoreExt;

    let (server, cold, _) = server_with_cold_data();
    let (store, root) = hdfs_store(&cold);
    let logs = root.clone().join("logs");
    // Two tiered hours of the 25th, copied with their `date=…/hour=…` directories.
    let files: Vec<_> = list(&store, &logs)
        .await
        .into_iter()
        .filter(|p| p.as_ref().contains("/date=2026-11-25/"))
        .take(2)
        .collect();
    assert_eq!(files.len(), 2, "two hour files of 2026-11-25");
    let local = tempfile::tempdir().expect("temp dir");
    let mut hours = vec![];
    for f in &files {
        let below = f
            .as_ref()
            .strip_prefix(&format!("{}/", logs.as_ref()))
            .expect("below logs/");
        let hour: u32 = below
            .split('/')
            .find_map(|p| p.strip_prefix("hour="))
            .and_then(|h| h.parse().ok())
            .expect("an hour= directory");
        hours.push(hour);
        let bytes = store
            .get(f)
            .await
            .unwrap_or_else(|e| panic!("hdfs: read {f}: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("hdfs: read {f}: {e}"));
        let dest = local.path().join(below);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&dest, &bytes).expect("write the copy");
    }

    let text = cold_readers("hive", local.path());
    let read: serde_json::Value = serde_json::from_str(&text).expect("readers' JSON");

    // The same rows over pgwire, in the readers' shape.
    let hour_list: Vec<String> = hours.iter().map(|h| h.to_string()).collect();
    let sql = format!(
        "SELECT CAST(timestamp AS BIGINT) AS us, log_level, message, source,
                topic, attributes, to_char(timestamp, 'YYYY-MM-DD') AS date,
                CAST(date_part('hour', timestamp) AS INT) AS hour
         FROM logs
         WHERE timestamp >= '2026-11-25T00:00:00Z' AND timestamp < '2026-11-26T00:00:00Z'
           AND date_part('hour', timestamp) IN ({})",
        hour_list.join(", ")
    );
    let client = server.pg_client().await;
    let pg_rows = client
        .query(sql.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut want: Vec<serde_json::Value> = pg_rows
        .iter()
        .map(|r| {
            serde_json::json!([
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4),
                r.get::<_, String>(5),
                r.get::<_, String>(6),
                r.get::<_, i32>(7),
            ])
        })
        .collect();
    want.sort_by_key(|v| v.to_string());
    assert!(want.len() >= 2, "{want:?}");
    for tool in ["pyarrow", "duckdb"] {
        let mut got: Vec<serde_json::Value> = read[tool]
            .as_array()
            .unwrap_or_else(|| panic!("{tool}: no rows in {text}"))
            .clone();
        got.sort_by_key(|v| v.to_string());
        assert_eq!(
            got, want,
            "{tool} reads the copied hours (types: {})",
            read["types"]
        );
    }
}

#[test]
fn report_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cold = dir.path().join("cold");
    std::fs::create_dir_all(cold.join("logs")).expect("mkdir");
    let url = format!("file://{}", cold.display());

    let failed = |args: &[&str], wants: &[&str]| {
        let out = report(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail:\n{stderr}");
        assert_eq!(out.status.code(), Some(1), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        for want in wants {
            assert!(
                stderr.contains(want),
                "{args:?}: {want:?} not in:\n{stderr}"
            );
        }
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    };
    // Bad SQL, from a file or the command line.
    let bad = dir.path().join("bad.sql");
    std::fs::write(&bad, "SELEC count(*) FROM logs").expect("write");
    let bad_s = bad.to_string_lossy().into_owned();
    failed(
        &["--cold", &url, "--sql", &bad_s],
        &["the SQL of", "bad.sql", "SELEC"],
    );
    failed(
        &["--cold", &url, "--query", "SELECT nope FROM logs"],
        &["the SQL of --query is wrong", "nope"],
    );
    failed(
        &["--cold", &url, "--query", "SELECT * FROM no_such_table"],
        &["no_such_table"],
    );
    // Reports read: no DDL, no COPY TO.
    failed(
        &["--cold", &url, "--query", "CREATE TABLE t AS SELECT 1"],
        &["DDL not supported"],
    );
    // Unreadable inputs.
    failed(
        &["--cold", &url, "--sql", "/no/such/report.sql"],
        &["cannot read the SQL file /no/such/report.sql"],
    );
    failed(
        &["--cold", "s3://bucket/cold", "--builtin", "error-rate"],
        &["s3://", "not supported"],
    );
    failed(
        &["--cold", "not a url", "--builtin", "error-rate"],
        &["--cold", "not a URL"],
    );
    failed(
        &["--cold", "file:///no/such/cold", "--builtin", "error-rate"],
        &["/no/such/cold", "does not exist"],
    );
    let not_cold = format!("file://{}", dir.path().display());
    failed(
        &["--cold", &not_cold, "--builtin", "error-rate"],
        &["holds neither logs/ nor dead_letters/"],
    );
    failed(
        &[
            "--cold",
            &url,
            "--builtin",
            "error-rate",
            "--from",
            "last week",
        ],
        &["--from \"last week\""],
    );
    failed(
        &[
            "--cold",
            &url,
            "--builtin",
            "error-rate",
            "--out",
            "/no/such/dir/r.csv",
        ],
        &["/no/such/dir/r.csv"],
    );
    // A garbage file where a Parquet file should be: named, not a panic.
    let hour = cold.join("logs/date=2026-11-24/hour=10");
    std::fs::create_dir_all(&hour).expect("mkdir");
    std::fs::write(hour.join("x.parquet"), b"not parquet").expect("write");
    failed(&["--cold", &url, "--builtin", "error-rate"], &["x.parquet"]);
    // With a good query the empty tier answers with a header only.
    std::fs::remove_file(hour.join("x.parquet")).expect("rm");
    let (stdout, _) = report_ok(&["--cold", &url, "--builtin", "error-rate"]);
    assert_eq!(stdout, "hour_start,total,errors,error_ratio\n");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let (stdout, _) = report_ok(&["--data-dir", &data_dir, "--builtin", "error-rate", "-q"]);
    assert_eq!(stdout, "hour_start,total,errors,error_ratio\n");
}
