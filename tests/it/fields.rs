//! Promoted fields end to end, over the real Apache access log: the fields become columns
//! of `logs` when tiering writes Parquet, queries over them answer as the JSON path does in
//! every tier, `kill -9` keeps them exact, the catalog lists them, and continuous queries
//! fire as before. Also measures the cold tier's bytes per record with and without.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::{Server, ServerOptions};
use tokio_postgres::Client;

const ACCESS_LOG: &str = "../../shared/datasets/apache-access/apache_logs";

/// `17/May/2015:10:05:03 +0000` → `2015-05-17T10:05:03Z` (the log is in UTC).
fn rfc3339(clf: &str) -> Option<String> {
    let (date, rest) = clf.split_once(':')?;
    let time = rest.split_whitespace().next()?;
    let mut parts = date.split('/');
    let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == month)? + 1;
    Some(format!("{year}-{m:02}-{day}T{time}Z"))
}

/// One combined-format line as the JSON record a shipper would send: the fields as
/// top-level keys, `status` and `bytes` as numbers (`bytes` left out when `-`).
fn record(line: &str) -> Option<serde_json::Value> {
    let (client, rest) = line.split_once(' ')?;
    let ts = rest.split_once('[')?.1.split_once(']')?.0;
    let mut quoted = line.split('"');
    let request = quoted.nth(1)?;
    let after = quoted.next()?.split_whitespace().collect::<Vec<_>>();
    let referrer = quoted.next()?;
    let agent = quoted.nth(1)?;
    let mut req = request.split_whitespace();
    let (method, path) = (req.next()?, req.next()?);
    let status: i64 = after.first()?.parse().ok()?;
    let mut r = serde_json::json!({
        "ts": rfc3339(ts)?,
        "message": request,
        "host": format!("web-{}", client.len() % 3),
        "client": client,
        "method": method,
        "path": path,
        "status": status,
        "referrer": referrer,
        "agent": agent,
    });
    if let Some(bytes) = after.get(1).and_then(|b| b.parse::<i64>().ok()) {
        r["bytes"] = bytes.into();
    }
    Some(r)
}

/// The access log as NDJSON bodies of about 1000 records; `one_hour`: every record moved
/// into the log's first hour (minutes and seconds kept), so tiering writes one big file.
fn access_log(one_hour: bool) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(ACCESS_LOG);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the shared datasets)", path.display()));
    let records: Vec<String> = text
        .lines()
        .filter_map(record)
        .map(|mut r| {
            if one_hour && let Some(ts) = r["ts"].as_str() {
                r["ts"] = format!("2015-05-17T10{}", &ts[13..]).into();
            }
            r.to_string()
        })
        .collect();
    assert!(records.len() > 9_900, "{} records parsed", records.len());
    records
        .chunks(1000)
        .map(|c| (c.join("\n") + "\n").into_bytes())
        .collect()
}

/// Every row of `sql` as text, sorted (the simple protocol renders every type as text).
async fn rows(client: &Client, sql: &str) -> Vec<String> {
    let mut out: Vec<String> = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// Access-log questions over the promoted columns (and through `attr()`/`->>`, which the
/// engine rewrites to them) next to the JSON path (`attributes || ''` is not rewritten).
const PAIRS: [(&str, &str); 6] = [
    (
        "SELECT status, count(*) FROM {t} GROUP BY status",
        "SELECT CAST(attr(attributes || '', 'status') AS BIGINT), count(*) FROM {t} GROUP BY 1",
    ),
    (
        "SELECT attr(attributes, 'status'), count(*) FROM {t} GROUP BY 1",
        "SELECT attr(attributes || '', 'status'), count(*) FROM {t} GROUP BY 1",
    ),
    (
        "SELECT sum(bytes), count(bytes) FROM {t}",
        "SELECT sum(CAST(attr(attributes || '', 'bytes') AS BIGINT)), \
         count(attr(attributes || '', 'bytes')) FROM {t}",
    ),
    (
        "SELECT path, sum(bytes) FROM {t} WHERE path LIKE '%.php%' GROUP BY path",
        "SELECT attr(attributes || '', 'path'), sum(CAST(attr(attributes || '', 'bytes') AS BIGINT)) \
         FROM {t} WHERE attr(attributes || '', 'path') LIKE '%.php%' GROUP BY 1",
    ),
    (
        "SELECT date_trunc('hour', timestamp), count(*) FROM {t} \
         WHERE (attributes ->> 'status') LIKE '5%' GROUP BY 1",
        "SELECT date_trunc('hour', timestamp), count(*) FROM {t} \
         WHERE attr(attributes || '', 'status') LIKE '5%' GROUP BY 1",
    ),
    (
        "SELECT status, count(*) FROM {t} WHERE agent LIKE '%bot%' GROUP BY status",
        "SELECT CAST(attr(attributes || '', 'status') AS BIGINT), count(*) FROM {t} \
         WHERE attr(attributes || '', 'agent') LIKE '%bot%' GROUP BY 1",
    ),
];

async fn assert_same_as_json(client: &Client) {
    for t in ["logs", "logs_hot", "logs_cold"] {
        for (fast, json) in PAIRS {
            let (fast, json) = (fast.replace("{t}", t), json.replace("{t}", t));
            assert_eq!(
                rows(client, &fast).await,
                rows(client, &json).await,
                "{fast}"
            );
        }
    }
}

async fn cold_bytes_per_record(client: &Client) -> f64 {
    let row = client
        .query_one("SELECT cold_bytes, cold_rows FROM tiering", &[])
        .await
        .unwrap();
    let (bytes, rows): (i64, i64) = (row.get(0), row.get(1));
    assert!(rows > 0);
    bytes as f64 / rows as f64
}

#[tokio::test]
async fn access_log_fields_are_columns_equal_to_the_json_path_and_survive_kill_9() {
    let bodies = access_log(false);
    let mut server = Server::start();
    let client = server.pg_client().await;
    // Two thirds go cold (one file per hour), the rest stays hot: `logs` is mixed.
    let cold = bodies.len() * 2 / 3;
    for b in &bodies[..cold] {
        server.post_expect(b, b.iter().filter(|c| **c == b'\n').count(), 0);
    }
    assert!(server.flush() > 0);
    for b in &bodies[cold..] {
        server.post_expect(b, b.iter().filter(|c| **c == b'\n').count(), 0);
    }

    let fields = rows(
        &client,
        "SELECT name, type, conflicts FROM promoted_fields ORDER BY name",
    )
    .await;
    for want in [
        "agent|text|0",
        "bytes|bigint|0",
        "client|text|0",
        "method|text|0",
        "path|text|0",
        "referrer|text|0",
        "status|bigint|0",
    ] {
        assert!(fields.contains(&want.to_string()), "{fields:?}");
    }
    // The catalog lists them after the fixed columns.
    let columns = rows(
        &client,
        "SELECT ordinal_position, column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'logs' AND column_name IN ('attributes', 'status', 'path')",
    )
    .await;
    assert_eq!(columns.len(), 3, "{columns:?}");
    assert!(
        columns
            .iter()
            .any(|c| c.ends_with("|status|Int64") || c.ends_with("|status|bigint")),
        "{columns:?}"
    );
    assert_same_as_json(&client).await;
    let before = rows(
        &client,
        "SELECT status, count(*), sum(bytes) FROM logs GROUP BY status",
    )
    .await;
    let statuses = rows(&client, "SELECT count(DISTINCT status) FROM logs").await;
    assert!(statuses[0].parse::<i64>().unwrap() >= 5, "{statuses:?}");

    // kill -9 with both tiers populated: the manifest keeps the registry and the file
    // columns, the WAL the hot rows.
    drop(client);
    server.restart();
    let client = server.pg_client().await;
    assert_eq!(
        rows(
            &client,
            "SELECT status, count(*), sum(bytes) FROM logs GROUP BY status"
        )
        .await,
        before
    );
    assert_same_as_json(&client).await;
    // Everything cold, then killed again.
    assert!(server.flush() > 0);
    drop(client);
    server.restart();
    let client = server.pg_client().await;
    assert_eq!(
        rows(
            &client,
            "SELECT status, count(*), sum(bytes) FROM logs GROUP BY status"
        )
        .await,
        before
    );
    assert_eq!(
        rows(&client, "SELECT count(*) FROM logs_hot").await,
        ["0".to_string()]
    );
    assert_same_as_json(&client).await;
    let promoted = cold_bytes_per_record(&client).await;

    // The same records with promotion off, for the cost on disk.
    let plain = Server::start_with(ServerOptions {
        config: Some("[fields]\npromote = false\n".into()),
        ..Default::default()
    });
    for b in &bodies {
        plain.post_expect(b, b.iter().filter(|c| **c == b'\n').count(), 0);
    }
    assert!(plain.flush() > 0);
    let pc = plain.pg_client().await;
    assert!(
        rows(&pc, "SELECT name FROM promoted_fields")
            .await
            .is_empty()
    );
    let without = cold_bytes_per_record(&pc).await;
    eprintln!(
        "cold bytes per record, access log in hour files of ~100 records: {promoted:.1} with \
         promotion, {without:.1} without ({:.2}×)",
        promoted / without
    );
    // Small files: each promoted column adds its metadata and statistics to every file.
    assert!(promoted < without * 2.0, "{promoted} vs {without}");
}

/// The cost on disk where files are big: the whole log as one hour, one file.
#[tokio::test]
async fn promoted_columns_cost_on_disk_in_one_big_file() {
    let bodies = access_log(true);
    let mut per_record = Vec::new();
    for config in ["", "[fields]\npromote = false\n"] {
        let server = Server::start_with(ServerOptions {
            config: Some(config.into()),
            ..Default::default()
        });
        for b in &bodies {
            server.post_expect(b, b.iter().filter(|c| **c == b'\n').count(), 0);
        }
        assert!(server.flush() > 0);
        let client = server.pg_client().await;
        assert_eq!(
            rows(&client, "SELECT cold_files FROM tiering").await,
            ["1".to_string()]
        );
        per_record.push(cold_bytes_per_record(&client).await);
    }
    let (promoted, without) = (per_record[0], per_record[1]);
    eprintln!(
        "cold bytes per record, access log in one file: {promoted:.1} with promotion, \
         {without:.1} without ({:.2}×)",
        promoted / without
    );
    // The columns repeat what `attributes` holds; zstd keeps them small.
    assert!(promoted < without * 1.5, "{promoted} vs {without}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn wait_i64(client: &Client, sql: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn continuous_queries_fire_as_before_with_promoted_fields() {
    let server = Server::start();
    let client = server.pg_client().await;
    // Seed rule A, and a rule over a field that becomes a promoted column.
    client
        .batch_execute(
            "CREATE CONTINUOUS QUERY critical_log_alert
               ALERT (SEVERITY 'critical', DEDUP BY (source, log_level))
               NOTIFY (TABLE alerts)
             AS SELECT timestamp, source, log_level, message FROM logs
                WHERE log_level IN ('CRITICAL', 'FATAL')",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE CONTINUOUS QUERY server_errors
               ALERT (SEVERITY 'warning', DEDUP BY (source))
               NOTIFY (TABLE alerts)
             AS SELECT timestamp, source, message FROM logs
                WHERE attr(attributes, 'status') = '503'",
        )
        .await
        .unwrap();
    let body = |t: i64, level: &str, source: &str, status: i64| {
        format!(
            "{{\"ts\":{t},\"level\":\"{level}\",\"source\":\"{source}\",\"message\":\"m\",\
             \"status\":{status},\"path\":\"/x\"}}\n"
        )
        .into_bytes()
    };
    let t = now_ms();
    server.post_expect(&body(t, "INFO", "web-1", 200), 1, 0);
    server.post_expect(&body(t, "CRITICAL", "web-1", 503), 1, 0);
    let crit = "SELECT count(*) FROM alerts WHERE cq_name = 'critical_log_alert'";
    let errs = "SELECT count(*) FROM alerts WHERE cq_name = 'server_errors'";
    assert_eq!(wait_i64(&client, crit, 1).await, 1);
    assert_eq!(wait_i64(&client, errs, 1).await, 1);
    // Tiering promotes status and path; the rules keep firing on new records.
    assert!(server.flush() > 0);
    let promoted = rows(&client, "SELECT name FROM promoted_fields ORDER BY name").await;
    assert_eq!(promoted, ["path", "status"]);
    server.post_expect(&body(t + 1000, "CRITICAL", "web-2", 503), 1, 0);
    assert_eq!(wait_i64(&client, crit, 2).await, 2);
    assert_eq!(wait_i64(&client, errs, 2).await, 2);
    // The stored rows answer the rule's question the same way through the column.
    assert_eq!(
        rows(&client, "SELECT count(*) FROM logs WHERE status = 503").await,
        ["2".to_string()]
    );
}
