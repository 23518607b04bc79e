//! HTTP ingest end to end: ship, idempotency, malformed input, restart — checked over the
//! PostgreSQL protocol with real clients.

use std::process::Command;

use logsphere_tests::{Server, ServerOptions, binary};

#[tokio::test]
async fn shipped_file_is_queryable_with_bound_parameters() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let lines: String = (0..2500)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"level\":\"{}\",\"msg\":\"op {i}\",\"host\":\"h{}\"}}\n",
                1_764_590_400_000i64 + i * 1000,
                if i % 10 == 0 { "ERROR" } else { "INFO" },
                i % 5
            )
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let out = Command::new(binary())
        .args(["ship", "--to", &server.http_url(), "--batch-lines", "1000"])
        .arg(&file)
        .output()
        .expect("run logsphere ship");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ship failed: {stderr}");
    assert!(
        stderr.contains("shipped 2500 lines") && stderr.contains("accepted 2500, rejected 0"),
        "{stderr}"
    );

    let client = server.pg_client().await;
    let row = client
        .query_one(
            "SELECT count(*) FROM logs WHERE log_level = $1 AND source = $2 AND timestamp >= $3",
            &[&"ERROR", &"h0", &std::time::SystemTime::UNIX_EPOCH],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 250);
    let rows = client
        .query("SELECT message FROM logs WHERE message = $1", &[&"op 1234"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // Text lines, with a source and level given on the command line, through psql too.
    let text = dir.path().join("plain.txt");
    std::fs::write(&text, "first line\nsecond line\n\nthird line").unwrap();
    let out = Command::new(binary())
        .args([
            "ship",
            "--format",
            "text",
            "--source",
            "batch-7",
            "--level",
            "warn",
            "-q",
            "--to",
            &server.http_url(),
        ])
        .arg(&text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let psql = Command::new("/usr/bin/psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &server.pg_port().to_string(), "-U", "logsphere"])
        .args(["-c", "SELECT log_level || ' ' || message FROM logs WHERE source = 'batch-7' ORDER BY message"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&psql.stdout),
        "WARN first line\nWARN second line\nWARN third line\n"
    );
}

#[tokio::test]
async fn retries_with_an_idempotency_key_store_nothing_twice() {
    let mut server = Server::start();
    let body = b"{\"message\":\"a\"}\n{\"message\":\"b\"}\nnot json\n";
    let first = server.post(body, Some("req-1")).unwrap();
    assert_eq!(first, (200, r#"{"accepted":2,"rejected":1}"#.to_string()));
    assert_eq!(
        server.post(body, Some("req-1")).unwrap(),
        first,
        "a retry is answered like the first"
    );
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 2);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM dead_letters").await,
        1
    );
    // ...also after a crash, when only the WAL remembers the key.
    server.restart();
    assert_eq!(server.post(body, Some("req-1")).unwrap(), first);
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 2);
    assert_eq!(server.post(body, Some("req-2")).unwrap().0, 200);
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 4);
}

#[tokio::test]
async fn malformed_input_gets_clear_answers_and_dead_letters() {
    let server = Server::start();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json\n".to_vec(), "not valid JSON"),
        (
            "not an object",
            b"[1, 2, 3]\n\"just a string\"\n".to_vec(),
            "not an object",
        ),
        (
            "bad timestamp",
            b"{\"timestamp\":\"next tuesday\",\"message\":\"x\"}\n".to_vec(),
            "does not parse",
        ),
        (
            "invalid UTF-8",
            b"{\"message\":\"caf\xc3\x28\"}\n".to_vec(),
            "not valid UTF-8",
        ),
        (
            "10 MB line",
            {
                let mut v = b"{\"message\":\"".to_vec();
                v.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
                v.extend_from_slice(b"\"}\n");
                v
            },
            "over the limit",
        ),
    ];
    let mut expected_dead = 0;
    for (what, body, reason) in &cases {
        let (status, text) = server.post(body, None).unwrap();
        assert_eq!(status, 200, "{what}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["accepted"], 0, "{what}: {text}");
        let rejected = v["rejected"].as_i64().unwrap();
        assert!(rejected >= 1, "{what}: {text}");
        expected_dead += rejected;
        let n = server
            .query_i64(&format!(
                "SELECT count(*) FROM dead_letters WHERE reason LIKE '%{reason}%'"
            ))
            .await;
        assert!(
            n >= 1,
            "{what}: no dead letter with reason containing {reason:?}"
        );
    }
    assert_eq!(
        server.query_i64("SELECT count(*) FROM dead_letters").await,
        expected_dead
    );
    let client = server.pg_client().await;
    let row = client
        .query_one("SELECT octet_length(raw_text), reason FROM dead_letters WHERE reason LIKE '%over the limit%'", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        4096,
        "an oversized record keeps its first 4 KiB"
    );
    assert!(
        row.get::<_, String>(1).contains("10485774 bytes"),
        "{}",
        row.get::<_, String>(1)
    );

    // An empty body is a client error; no record was involved, so no dead letter.
    let (status, text) = server.post(b"", None).unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("empty body"), "{text}");
    let (status, _) = server.post(b"   \n\n", None).unwrap();
    assert_eq!(status, 400);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM dead_letters").await,
        expected_dead
    );

    // A mixed body keeps the good records; the server keeps serving.
    let (status, text) = server
        .post(
            b"{\"message\":\"ok\"}\n{broken\n{\"message\":\"ok too\"}\n",
            None,
        )
        .unwrap();
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"accepted":2,"rejected":1}"#)
    );
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 2);
}

#[tokio::test]
async fn body_over_the_limit_is_refused_and_nothing_is_stored() {
    let server = Server::start_with(ServerOptions {
        config: Some("[http]\nmax_body_bytes = 1000\n".into()),
        ..Default::default()
    });
    let body = "{\"message\":\"x\"}\n".repeat(100);
    let (status, _) = server.post(body.as_bytes(), None).unwrap();
    assert_eq!(status, 413);
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 0);
}

#[tokio::test]
async fn graceful_stop_and_restart_keep_everything() {
    let mut server = Server::start();
    for i in 0..20 {
        let body = format!("{{\"message\":\"m{i}\",\"level\":\"warning\"}}\n");
        assert_eq!(server.post(body.as_bytes(), None).unwrap().0, 200);
    }
    assert!(server.stop(), "SIGTERM exits 0:\n{}", server.log());
    server.restart();
    assert_eq!(
        server
            .query_i64("SELECT count(*) FROM logs WHERE log_level = 'WARN'")
            .await,
        20
    );
}

#[test]
fn bad_config_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[storage]\nflush_max_rowz = 5\n").unwrap();
    let out = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flush_max_rowz"), "{err}");
    let out = Command::new(binary())
        .args(["serve", "--pg-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pg.users"), "{err}");
}

#[tokio::test]
async fn ship_follow_keeps_reading_across_rotation() {
    use std::io::Write;
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let append = |p: &std::path::Path, from: usize, to: usize| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        for i in from..to {
            writeln!(f, "{{\"message\":\"line {i}\",\"host\":\"follow\"}}").unwrap();
        }
    };
    append(&path, 0, 10);
    let mut ship = Command::new(binary())
        .args(["ship", "--follow", "-q", "--to", &server.http_url()])
        .arg(&path)
        .spawn()
        .unwrap();
    assert!(wait_for(&server, 10).await, "the first 10 lines arrive");
    append(&path, 10, 15);
    assert!(wait_for(&server, 15).await, "appended lines arrive");
    // Rotate like logrotate: rename, then a new file under the old name.
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    append(&path, 15, 25);
    assert!(
        wait_for(&server, 25).await,
        "lines in the new file arrive after rotation"
    );
    let _ = ship.kill();
    let _ = ship.wait();
    let distinct = server
        .query_i64("SELECT count(DISTINCT message) FROM logs WHERE source = 'follow'")
        .await;
    assert_eq!(distinct, 25, "no line twice");

    let metrics = ureq::get(&format!("{}/metrics", server.http_url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("logsphere_records_accepted_total 25"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE logsphere_wal_fsyncs_total counter"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("logsphere_queries_total 0\n"),
        "queries are counted: {metrics}"
    );
}

async fn wait_for(server: &Server, n: i64) -> bool {
    for _ in 0..200 {
        if server
            .query_i64("SELECT count(*) FROM logs WHERE source = 'follow'")
            .await
            == n
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// With every `http.max_concurrent_requests` slot held (here one slow upload), another
/// `POST /v1/logs` is refused at once with 429 and `Retry-After`, nothing stored, and
/// counted on `/metrics`; when the slot frees, ingest goes on.
#[test]
fn ingest_beyond_the_concurrency_limit_gets_429_and_stores_nothing() {
    use std::io::Write;
    let server = Server::start_with_config("[http]\nmax_concurrent_requests = 1\n");
    let addr = server.http_url().trim_start_matches("http://").to_string();
    // Headers announce 1000 bytes; the body never comes: the request holds its slot.
    let open_slow = || {
        let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
        slow.write_all(
            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n\
              Content-Length: 1000\r\n\r\n{\"message\":",
        )
        .expect("send headers");
        slow.set_nonblocking(true).expect("nonblocking");
        slow
    };
    let mut slow = open_slow();
    let record = b"{\"message\":\"hello\"}\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Until the server has the slow request's headers, a POST may still get in; and if the
    // slow request's headers arrive while such a POST holds the slot, the slow one is the
    // request refused (it is answered 429 and holds nothing): then open another.
    let mut admitted = 0;
    let (status, body) = loop {
        let mut peek = [0u8; 1];
        if matches!(slow.peek(&mut peek), Ok(n) if n > 0) {
            slow = open_slow();
        }
        let answer = server.post(record, None).expect("POST");
        if answer.0 == 429 || std::time::Instant::now() > deadline {
            break answer;
        }
        admitted += i64::from(answer.0 == 200);
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_concurrent_requests"), "{body}");
    let metrics = ureq::get(&format!("{}/metrics", server.http_url()))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics text");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("logsphere_ingest_refused_busy_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("logsphere_ingest_refused_busy_total");
    assert!(refused >= 1, "{refused}");
    drop(slow);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = server.post(record, None).expect("POST");
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let client = tokio::runtime::Runtime::new().expect("runtime");
    let stored = client.block_on(server.query_i64("SELECT count(*) FROM logs"));
    assert_eq!(stored, admitted + 1, "only the admitted records are stored");
}

/// A committed Parquet file damaged on disk (truncated, as by a failing disk) is found at
/// start-up, moved to `cold/quarantine/`, named in the log with its row count and dropped
/// from the catalog: the server starts and answers from everything else instead of failing
/// every query over `logs`.
#[tokio::test]
async fn a_damaged_cold_file_is_set_aside_at_start() {
    let mut server = Server::start();
    for hour in [10, 11] {
        let body: String = (0..50)
            .map(|i| {
                format!("{{\"ts\":\"2026-11-24T{hour}:00:{i:02}Z\",\"level\":\"info\",\"message\":\"m{i}\"}}\n")
            })
            .collect();
        server.post_expect(body.as_bytes(), 50, 0);
    }
    assert_eq!(server.flush(), 100);
    assert!(server.stop(), "clean stop");
    let cold = server.data_dir().join("cold");
    let hour_11 = cold.join("logs/date=2026-11-24/hour=11");
    let file = std::fs::read_dir(&hour_11)
        .expect("hour 11 was flushed")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .expect("a Parquet file of hour 11");
    let bytes = std::fs::read(&file).expect("read the file");
    std::fs::write(&file, &bytes[..bytes.len() - 20]).expect("truncate it");

    server.restart();
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 50);
    let name = file
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let log = server.log();
    assert!(
        log.contains("a committed cold file is damaged") && log.contains(&name),
        "{log}"
    );
    assert!(!file.exists(), "moved away");
    let aside = cold
        .join("quarantine/logs/date=2026-11-24/hour=11")
        .join(&name);
    assert!(aside.exists(), "kept in {}", aside.display());
    let catalog = std::fs::read_to_string(server.data_dir().join("catalog.json")).expect("catalog");
    assert!(!catalog.contains(&name), "the catalog no longer names it");
    // A second start finds nothing more to set aside, and ingest goes on.
    server.restart();
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 50);
    server.post_expect(b"{\"message\":\"after\"}\n", 1, 0);
}

/// POSTs `body` to `/v1/logs?{query}`: status and answer.
fn post_query(server: &Server, query: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{}/v1/logs?{query}", server.http_url()))
        .header("Content-Type", "text/plain")
        .send(body.as_bytes())
        .expect("POST /v1/logs");
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (resp.status().as_u16(), text)
}

#[tokio::test]
async fn text_formats_become_rows_with_time_level_source_and_attributes() {
    let server = Server::start();
    let body = "\
<165>1 2026-11-24T13:00:00.250Z web-1 nginx 4242 ID47 [origin@1 ip=\"10.0.0.9\"] upstream timed out\n\
<11>Nov 24 13:00:01 db-2 postgres[99]: could not write block\n\
10.1.2.3 - alice [24/Nov/2026:13:00:02 +0100] \"POST /api/v1/items HTTP/1.1\" 503 17 \"-\" \"curl/8.5\"\n\
ts=2026-11-24T13:00:03Z level=warn msg=\"cache \\\"hot\\\" miss\" host=cache-1 key=user:7\n\
2026-11-24 13:00:04,500 ERROR [main] com.example.Billing: charge failed\n\
{\"ts\":\"2026-11-24T13:00:05Z\",\"msg\":\"json line\",\"host\":\"api-3\"}\n\
no format at all\n";
    let (status, answer) = post_query(&server, "format=auto&source=fallback", body);
    assert_eq!(
        (status, answer.as_str()),
        (200, r#"{"accepted":7,"rejected":0}"#)
    );

    let (status, answer) = post_query(&server, "format=yaml", "x\n");
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("format") && answer.contains("yaml") && answer.contains("logfmt"),
        "{answer}"
    );

    let client = server.pg_client().await;
    let rows = client
        .query(
            "SELECT timestamp, log_level, source, message, \
               coalesce(attributes ->> 'program', attributes ->> 'method', \
                        attributes ->> 'key', attributes ->> 'logger', ''), \
               coalesce(attributes #>> '{sd,origin@1,ip}', attributes ->> 'status', \
                        attributes ->> 'pid', attributes ->> 'thread', '') \
             FROM logs ORDER BY message",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4),
                r.get::<_, String>(5),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str, d: &str, e: &str| {
        (
            a.to_string(),
            b.to_string(),
            c.to_string(),
            d.to_string(),
            e.to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            s(
                "ERROR",
                "fallback",
                "POST /api/v1/items HTTP/1.1",
                "POST",
                "503"
            ),
            s("WARN", "cache-1", "cache \"hot\" miss", "user:7", ""),
            s(
                "ERROR",
                "fallback",
                "charge failed",
                "com.example.Billing",
                "main"
            ),
            s("ERROR", "db-2", "could not write block", "postgres", "99"),
            s("INFO", "api-3", "json line", "", ""),
            s("INFO", "fallback", "no format at all", "", ""),
            s("INFO", "web-1", "upstream timed out", "nginx", "10.0.0.9"),
        ]
    );
    let at = |m: &str| {
        let row = rows
            .iter()
            .find(|r| r.get::<_, String>(3) == m)
            .unwrap_or_else(|| panic!("no row {m:?}"));
        row.get::<_, std::time::SystemTime>(0)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let base = 1_795_525_200_000u128; // 2026-11-24T13:00:00Z
    assert_eq!(at("upstream timed out"), base + 250);
    assert_eq!(
        at("POST /api/v1/items HTTP/1.1"),
        base + 2_000 - 3_600_000,
        "+0100 zone"
    );
    assert_eq!(at("cache \"hot\" miss"), base + 3_000);
    assert_eq!(at("charge failed"), base + 4_500, "no zone: UTC");
    assert_eq!(at("json line"), base + 5_000);

    // `ship --format syslog` sends the lines as they are; the server parses them.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages");
    std::fs::write(
        &file,
        "Nov 24 13:00:06 mail-1 postfix/smtpd[311]: connect from unknown\n\
         Nov 24 13:00:07 postfix/qmgr[312]: removed\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args([
            "ship",
            "--format",
            "syslog",
            "-q",
            "--to",
            &server.http_url(),
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = client
        .query(
            "SELECT source, attributes ->> 'program', message FROM logs \
             WHERE attributes ->> 'program' LIKE 'postfix/%' ORDER BY message",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "mail-1".into(),
                "postfix/smtpd".into(),
                "connect from unknown".into()
            ),
            ("messages".into(), "postfix/qmgr".into(), "removed".into()),
        ]
    );
}
