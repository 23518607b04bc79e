//! Issue 4's crash proof for alert rules: SIGKILL the server 10 times while the seed rules
//! count open windows and deliver webhooks; after the last restart `alerts` holds each
//! expected alert exactly once, with the exact final counts, and the webhook receiver saw
//! every alert at least once and never under two Idempotency-Keys.
//!
//! Deterministic by construction: one sender streams the windows in order (every row of
//! window w before any row of w + 1, so no row is late), each batch keyed and re-sent until
//! acknowledged; kills are placed at acknowledged-batch counts, not at wall-clock guesses,
//! and every wait polls with a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logsphere_tests::{Server, post_logs};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

use crate::webhook_receiver::{Delivery, WebhookReceiver};

const SOURCES: [&str; 4] = ["api", "db", "web", "queue"];
const WINDOWS: usize = 5;
const PER_BATCH: usize = 25;
const KILLS: usize = 10;
/// ERROR counts per (window, source) cycle through these: at, just over and well over 100.
const COUNTS: [usize; 5] = [60, 100, 101, 130, 160];

/// Seed rule B (§6 example 2) with a webhook, its window start as an annotation (the
/// webhook body has no window otherwise), a 1 s checkpoint so kills land on both sides of
/// one, and a wall-clock floor an hour back so event times 20 minutes old are not late.
fn rule_b(hook: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY error_burst_per_source
  WATERMARK INTERVAL '10 seconds'
  ALLOWED LATENESS INTERVAL '2 minutes' ON LATE UPDATE
  ALERT (SEVERITY 'warning', ANNOTATIONS (window = '{{window_start}}'))
  NOTIFY (WEBHOOK '{hook}')
  WITH (checkpoint_interval = '1s', max_ingest_delay = '1 hour')
AS SELECT window_start, window_end, source, count(*) AS error_count
   FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
   WHERE log_level = 'ERROR'
   GROUP BY window_start, window_end, source
   HAVING count(*) > 100"
    )
}

/// Seed rule A (§6 example 1), delivering to the receiver.
fn rule_a(hook: &str) -> String {
    format!(
        "CREATE CONTINUOUS QUERY critical_log_alert
  ALERT (SEVERITY 'critical', DEDUP BY (source, log_level),
         RESOLVE AFTER INTERVAL '15 minutes', LABELS (team = 'sre'))
  NOTIFY (WEBHOOK '{hook}')
  WITH (checkpoint_interval = '1s', max_ingest_delay = '1 hour')
AS SELECT timestamp, source, log_level, message
   FROM logs
   WHERE log_level IN ('CRITICAL', 'FATAL')"
    )
}

/// The stream: batches in send order, each with its window, plus what each rule must end
/// up with.
struct Plan {
    batches: Vec<(usize, Vec<u8>)>,
    /// (source, window start ms) → ERROR count, for every window that crosses 100.
    bursts: BTreeMap<(String, i64), i64>,
    /// source → CRITICAL records.
    criticals: BTreeMap<String, i64>,
    end_ms: i64,
}

fn plan(seed: u64, base_ms: i64) -> Plan {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut batches = Vec::new();
    let (mut bursts, mut criticals) = (BTreeMap::new(), BTreeMap::new());
    let mut rid = 0;
    for w in 0..WINDOWS {
        let start = base_ms + w as i64 * 60_000;
        let mut rows: Vec<(&str, &str)> = Vec::new();
        for (s, source) in SOURCES.iter().enumerate() {
            let n = COUNTS[(w + 2 * s + seed as usize) % COUNTS.len()];
            rows.extend(std::iter::repeat_n(("ERROR", *source), n));
            if n > 100 {
                bursts.insert((source.to_string(), start), n as i64);
            }
            rows.extend(std::iter::repeat_n(("INFO", *source), 10));
        }
        // Rule A: the first three sources log a CRITICAL or FATAL now and then.
        for source in &SOURCES[..3] {
            if rng.random_bool(0.6) {
                let level = if rng.random_bool(0.5) {
                    "CRITICAL"
                } else {
                    "FATAL"
                };
                rows.push((level, *source));
                *criticals.entry(source.to_string()).or_insert(0) += 1;
            }
        }
        rows.shuffle(&mut rng);
        for chunk in rows.chunks(PER_BATCH) {
            let mut body = String::new();
            for (level, source) in chunk {
                let ts = start + rng.random_range(0..60_000);
                rid += 1;
                body.push_str(&format!(
                    "{{\"ts\":{ts},\"level\":\"{level}\",\"source\":\"{source}\",\"message\":\"m {rid}\"}}\n"
                ));
            }
            batches.push((w, body.into_bytes()));
        }
    }
    Plan {
        batches,
        bursts,
        criticals,
        end_ms: base_ms + WINDOWS as i64 * 60_000,
    }
}

/// Posts each batch in order under its own key until it is acknowledged; counts acks.
fn send_all(url: String, batches: Vec<Vec<u8>>, acked: Arc<AtomicUsize>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    for (i, body) in batches.iter().enumerate() {
        let key = format!("cq-crash-{i}");
        loop {
            match post_logs(&url, body, Some(&key)) {
                Ok((200, _)) => break,
                Ok((400, text)) => {
                    return Err(format!("batch {i}: 400 {text}"));
                }
                _ if Instant::now() > deadline => {
                    return Err(format!("batch {i} not acknowledged in 90 s"));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        acked.store(i + 1, Ordering::SeqCst);
    }
    Ok(())
}

/// Polls `check` (which returns `Ok` when satisfied) for at most 30 s; the last `Err` fails.
async fn eventually<F, Fut>(what: &str, server: &Server, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: {e}\n--- server log ---\n{}", server.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One row of `alerts`: (cq, source, window start ms or -1, count or observations,
/// fingerprint, annotations.window).
type AlertRow = (String, String, i64, i64, String, String);

async fn alert_rows(client: &Client) -> Result<Vec<AlertRow>, String> {
    let rows = client
        .query(
            "SELECT cq_name, labels, \
             COALESCE(CAST(to_unixtime(window_start) * 1000 AS BIGINT), -1), \
             observation_count, value, fingerprint, annotations FROM alerts \
             ORDER BY cq_name, labels, window_start",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in rows {
        let cq: String = r.get(0);
        let labels: serde_json::Value =
            serde_json::from_str(&r.get::<_, String>(1)).map_err(|e| e.to_string())?;
        let value: serde_json::Value =
            serde_json::from_str(&r.get::<_, String>(4)).map_err(|e| e.to_string())?;
        let annotations: serde_json::Value = r
            .get::<_, Option<String>>(6)
            .map_or(Ok(serde_json::Value::Null), |a| serde_json::from_str(&a))
            .map_err(|e| e.to_string())?;
        let n = if cq == "error_burst_per_source" {
            value["error_count"].as_i64().unwrap_or(-1)
        } else {
            r.get(3)
        };
        out.push((
            cq,
            labels["source"].as_str().unwrap_or("").to_string(),
            r.get(2),
            n,
            r.get(5),
            annotations["window"].as_str().unwrap_or("").to_string(),
        ));
    }
    Ok(out)
}

/// The expected `alerts` rows. Rule B has one alert per *episode* of a source: consecutive
/// qualifying minutes fold into one alert (its latest window and count), and a minute that
/// closes without 100 errors resolves it, so the next burst is a new alert (§5.4).
fn expected_rows(plan: &Plan) -> Vec<(String, String, i64, i64)> {
    let mut bursts: Vec<(String, String, i64, i64)> = Vec::new();
    for ((s, w), n) in &plan.bursts {
        let row = ("error_burst_per_source".to_string(), s.clone(), *w, *n);
        match bursts.last_mut() {
            Some(last) if last.1 == *s && last.2 + 60_000 == *w => *last = row,
            _ => bursts.push(row),
        }
    }
    let mut want: Vec<(String, String, i64, i64)> = plan
        .criticals
        .iter()
        .map(|(s, n)| ("critical_log_alert".to_string(), s.clone(), -1, *n))
        .chain(bursts)
        .collect();
    want.sort();
    want
}

fn project(rows: &[AlertRow]) -> Vec<(String, String, i64, i64)> {
    let mut got: Vec<_> = rows
        .iter()
        .map(|r| (r.0.clone(), r.1.clone(), r.2, r.3))
        .collect();
    got.sort();
    got
}

/// A delivery's alert and transition, from the body alone: (receiver = cq, fingerprint,
/// annotations.window, status).
fn identity(d: &Delivery) -> (String, String, String, String) {
    let alert = &d.body["alerts"][0];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    (
        text(&d.body["receiver"]),
        text(&alert["fingerprint"]),
        text(&alert["annotations"]["window"]),
        text(&d.body["status"]),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_ten_times_during_windows_keeps_alerts_exactly_once() {
    let seed: u64 = std::env::var("LOGSPHERE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("continuous_crash seed {seed} (rerun with LOGSPHERE_TEST_SEED={seed})");
    let receiver = WebhookReceiver::start();
    let mut server = Server::start_with_config("[storage]\nwal_segment_bytes = 65536\n");
    let client = server.pg_client().await;
    client
        .batch_execute(&rule_b(&receiver.url("/b")))
        .await
        .unwrap();
    client
        .batch_execute(&rule_a(&receiver.url("/a")))
        .await
        .unwrap();
    drop(client);

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let plan = plan(seed, now_ms / 60_000 * 60_000 - 20 * 60_000);
    let total = plan.batches.len();
    let window_of: Vec<usize> = plan.batches.iter().map(|b| b.0).collect();

    // Kill points: distinct acknowledged-batch counts, none on a window boundary, so every
    // kill finds a window open and partly counted (and often a webhook in flight).
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut points = BTreeSet::new();
    while points.len() < KILLS {
        let k = rng.random_range(2..total - 2);
        if window_of[k - 1] == window_of[k] {
            points.insert(k);
        }
    }

    let acked = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (url, acked) = (server.http_url(), Arc::clone(&acked));
        let bodies = plan.batches.iter().map(|b| b.1.clone()).collect();
        std::thread::spawn(move || send_all(url, bodies, acked))
    };
    let mut mid_window = 0;
    for &point in &points {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < point {
            assert!(
                Instant::now() < deadline,
                "sender stuck before batch {point}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..15)));
        let at = acked.load(Ordering::SeqCst).min(total - 1);
        if at > 0 && window_of[at - 1] == window_of[at] {
            mid_window += 1;
        }
        server.kill();
        server.restart();
    }
    sender
        .join()
        .expect("sender thread")
        .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", server.log()));
    assert_eq!(acked.load(Ordering::SeqCst), total);
    assert!(
        mid_window >= KILLS / 2,
        "only {mid_window} kills inside a window"
    );

    // One record 30 s past the last window moves the watermark (10 s) beyond its end:
    // every window is closed and its final count written to its alert.
    let close = format!(
        "{{\"ts\":{},\"level\":\"INFO\",\"source\":\"api\",\"message\":\"close\"}}\n",
        plan.end_ms + 30_000
    );
    let (status, _) = server
        .post(close.as_bytes(), Some("cq-crash-close"))
        .unwrap();
    assert_eq!(status, 200);

    let want = expected_rows(&plan);
    let client = server.pg_client().await;
    eventually("alerts hold each expected alert once", &server, || async {
        let got = project(&alert_rows(&client).await?);
        if got == want {
            Ok(())
        } else {
            Err(format!("alerts\n  got  {got:?}\n  want {want:?}"))
        }
    })
    .await;
    let rows = alert_rows(&client).await.unwrap();
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs").await as usize,
        plan.batches
            .iter()
            .map(|b| b.1.iter().filter(|c| **c == b'\n').count())
            .sum::<usize>()
            + 1,
        "every acknowledged record stored once"
    );

    // Every alert fired exactly once: one `fired` event (one channel per rule) per row.
    let fired_of = |r: &tokio_postgres::Row| (r.get::<_, String>(0), r.get::<_, String>(1));
    let fired: Vec<(String, String)> = client
        .query(
            "SELECT e.event_id, e.alert_id FROM alert_events e JOIN alerts a \
             ON e.alert_id = a.alert_id WHERE e.kind = 'fired'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(fired_of)
        .collect();
    let fired_alerts: BTreeSet<&String> = fired.iter().map(|f| &f.1).collect();
    assert_eq!(
        fired.len(),
        rows.len(),
        "one fired event per alert: {fired:?}"
    );
    assert_eq!(
        fired_alerts.len(),
        rows.len(),
        "every alert has its fired event"
    );
    let fired_ids: BTreeSet<String> = fired.iter().map(|f| f.0.clone()).collect();
    let all_ids: BTreeSet<String> = client
        .query(
            "SELECT event_id FROM alert_events WHERE kind <> 'delivery'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // The receiver saw a `firing` POST for every alert (at least once) ...
    let got = receiver
        .wait(Duration::from_secs(30), |d| {
            let seen: BTreeSet<&String> = d
                .iter()
                .filter(|d| identity(d).3 == "firing")
                .map(|d| &d.key)
                .collect();
            fired_ids.iter().all(|id| seen.contains(id))
        })
        .await;
    let mut keys: BTreeMap<(String, String, String, String), BTreeSet<String>> = BTreeMap::new();
    for d in &got {
        assert!(!d.key.is_empty(), "a POST without Idempotency-Key: {d:?}");
        let hook = match d.body["receiver"].as_str() {
            Some("critical_log_alert") => "/a",
            _ => "/b",
        };
        assert_eq!(
            d.path, hook,
            "each rule posts to its own WEBHOOK url: {d:?}"
        );
        keys.entry(identity(d)).or_default().insert(d.key.clone());
    }
    // ... under exactly the recorded fired ids, so never two distinct ids for one alert
    // (each alert has one fired id), and nothing for a transition that was not recorded.
    let sent_firing: BTreeSet<String> = keys
        .iter()
        .filter(|(id, _)| id.3 == "firing")
        .flat_map(|(_, k)| k.iter().cloned())
        .collect();
    assert_eq!(
        sent_firing, fired_ids,
        "firing Idempotency-Keys = fired event ids"
    );
    for (id, k) in &keys {
        for key in k {
            assert!(
                all_ids.contains(key),
                "a POST {id:?} for no recorded event: {key}"
            );
        }
    }
    eventually("every fired event delivered", &server, || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM alert_events WHERE kind = 'fired' AND status <> 'delivered'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} fired events not delivered"))
        }
    })
    .await;

    // And one more kill after all of it: the replay finds the same rows, adds none.
    drop(client);
    server.restart();
    let client = server.pg_client().await;
    let after = alert_rows(&client).await.unwrap();
    assert_eq!(after, rows, "alerts after a final restart");
}
