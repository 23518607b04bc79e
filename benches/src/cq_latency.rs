//! Alert latency, event ingested → `alerts` row visible over pgwire, under an open-loop
//! background load (the `cq` bench's part (a)).
//!
//! Requests are scheduled at fixed times (`t0 + i · interval`) and taken by a pool of
//! sender threads; a request sent late is measured from its scheduled time, so a stalled
//! server cannot hide its stall (no coordinated omission). Every `every`-th request also
//! carries two probes: a CRITICAL record for a fresh source (seed rule A fires on it) and
//! the 101st ERROR record of a fresh source whose first 100 went out half a sample
//! earlier (seed rule B fires on it, in its open window). A poller thread queries `alerts`
//! over pgwire every `poll` ms and notes when each probe's row first shows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::pg::Pg;
use crate::server::Server;

/// Seed rule A (README "Alerts").
pub const RULE_A: &str = "CREATE CONTINUOUS QUERY critical_log_alert
  ALERT (SEVERITY 'critical', DEDUP BY (source, log_level),
         RESOLVE AFTER INTERVAL '15 minutes', LABELS (team = 'sre'),
         ANNOTATIONS (summary = '{log_level} from {source}: {message}'))
AS SELECT timestamp, source, log_level, message
   FROM logs WHERE log_level IN ('CRITICAL', 'FATAL')";

/// Seed rule B (README "Alerts").
pub const RULE_B: &str = "CREATE CONTINUOUS QUERY error_burst_per_source
  WATERMARK INTERVAL '10 seconds'
  ALLOWED LATENESS INTERVAL '2 minutes' ON LATE UPDATE
  ALERT (SEVERITY 'warning')
AS SELECT window_start, window_end, source, count(*) AS error_count
   FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
   WHERE log_level = 'ERROR'
   GROUP BY window_start, window_end, source
   HAVING count(*) > 100";

/// One open-loop run's settings.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    /// Records per second, probes included.
    pub rate: f64,
    pub batch: usize,
    pub senders: usize,
    pub duration: Duration,
    /// Probe pairs per second.
    pub probes_per_s: f64,
    pub poll: Duration,
    /// Number of the first probe: runs against one server need their own, since a probe
    /// source already alerting would not alert again.
    pub first_probe: u64,
}

/// One probe's timeline, in µs since the epoch (client clock; the server runs on the same
/// machine, so `first_seen` is comparable).
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe {
    pub scheduled_us: i64,
    pub sent_us: i64,
    pub acked_us: i64,
    /// When the poller first saw the row (0: never).
    pub visible_us: i64,
    /// The alert's `first_seen`: when the CQ task created it.
    pub first_seen_us: i64,
}

/// What a run measured: per rule (`"A"`, `"B"`), its probes; plus the load it achieved.
#[derive(Debug, Clone, Default)]
pub struct LatencyRun {
    pub probes: HashMap<&'static str, Vec<Probe>>,
    pub records: u64,
    pub secs: f64,
    /// Requests sent more than 10 ms after their scheduled time.
    pub late_requests: u64,
    pub requests: u64,
    pub polls: u64,
}

fn epoch_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn probe_a(k: u64) -> String {
    format!(
        "{{\"level\":\"CRITICAL\",\"source\":\"lat-a-{k}\",\"message\":\"latency probe {k}\"}}\n"
    )
}

fn probe_b(k: u64, ts_us: i64, n: usize) -> String {
    let line = format!(
        "{{\"ts\":{ts_us},\"level\":\"ERROR\",\"source\":\"lat-b-{k}\",\"message\":\"latency probe {k}\"}}\n"
    );
    line.repeat(n)
}

/// Runs one open-loop load against `server` (seed rules already created) and returns the
/// probes' timelines.
pub fn run(server: &Server, pool: &[Vec<u8>], cfg: OpenLoop) -> anyhow::Result<LatencyRun> {
    let interval = Duration::from_secs_f64(cfg.batch as f64 / cfg.rate);
    let requests = (cfg.duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    let req_per_s = cfg.rate / cfg.batch as f64;
    let every = ((req_per_s / cfg.probes_per_s).round() as u64).max(1);
    let prime_ahead = (every / 2).max(1);
    let probes = requests / every;
    // Rule B probe k: 100 ERRORs at slot k·every − prime_ahead, the 101st at slot k·every,
    // all stamped with the priming time so both land in the same (open) window.
    let prime_ts: Vec<AtomicU64> = (0..=probes).map(|_| AtomicU64::new(0)).collect();
    let timeline: Mutex<HashMap<(char, u64), Probe>> = Mutex::new(HashMap::new());
    let next = AtomicU64::new(0);
    let late = AtomicU64::new(0);
    let records = AtomicU64::new(0);
    let url = server.url("/v1/logs");
    let poller_pg = Pg::connect(server)?;
    let t0 = Instant::now() + Duration::from_millis(200);
    let t0_us = epoch_us() + 200_000;
    let mut polls = 0;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let senders: Vec<_> = (0..cfg.senders)
            .map(|_| {
                let agent = server.agent();
                let (url, next, late, records, timeline, prime_ts) =
                    (&url, &next, &late, &records, &timeline, &prime_ts);
                s.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            return Ok(());
                        }
                        let at = t0 + interval.mul_f64(i as f64);
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        } else if now - at > Duration::from_millis(10) {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        let scheduled_us = t0_us + (interval.as_secs_f64() * 1e6 * i as f64) as i64;
                        let mut body = pool[(i as usize) % pool.len()].clone();
                        let mut extra = 0;
                        let primes = (i + prime_ahead).is_multiple_of(every)
                            && (i + prime_ahead) / every <= probes;
                        if primes {
                            let k = (i + prime_ahead) / every;
                            let ts = epoch_us();
                            prime_ts[k as usize].store(ts as u64, Ordering::Relaxed);
                            body.extend_from_slice(
                                probe_b(cfg.first_probe + k, ts, 100).as_bytes(),
                            );
                            extra += 100;
                        }
                        let probe = i.is_multiple_of(every) && i > 0;
                        let k = i / every;
                        if probe {
                            body.extend_from_slice(probe_a(cfg.first_probe + k).as_bytes());
                            // 0 only if the primer's thread was preempted before it
                            // stamped; then the probe is at least in the current window.
                            let ts = match prime_ts[k as usize].load(Ordering::Relaxed) as i64 {
                                0 => epoch_us(),
                                ts => ts,
                            };
                            body.extend_from_slice(probe_b(cfg.first_probe + k, ts, 1).as_bytes());
                            extra += 2;
                        }
                        let sent_us = epoch_us();
                        let accepted = crate::ingest::post_logs(&agent, url, &body)?;
                        let acked_us = epoch_us();
                        anyhow::ensure!(
                            accepted as usize == cfg.batch + extra,
                            "accepted {accepted} of {}",
                            cfg.batch + extra
                        );
                        records.fetch_add(accepted, Ordering::Relaxed);
                        if probe {
                            let p = Probe {
                                scheduled_us,
                                sent_us,
                                acked_us,
                                ..Probe::default()
                            };
                            let mut t = timeline.lock().expect("timeline");
                            for rule in ['A', 'B'] {
                                let e = t.entry((rule, k)).or_default();
                                (e.scheduled_us, e.sent_us, e.acked_us) =
                                    (p.scheduled_us, p.sent_us, p.acked_us);
                            }
                        }
                    }
                })
            })
            .collect();
        // The poller: new probe alerts since the newest first_seen seen so far.
        let mut cursor_us = 0i64;
        let mut grace_end: Option<Instant> = None;
        loop {
            let sql = format!(
                "SELECT cq_name, labels, CAST(to_unixtime(first_seen) * 1000000 AS BIGINT) \
                 FROM alerts WHERE first_seen >= to_timestamp_micros({cursor_us}) \
                 AND labels LIKE '%\"source\":\"lat-%'"
            );
            let rows = poller_pg.query(&sql)?;
            let seen_us = epoch_us();
            polls += 1;
            {
                let mut t = timeline.lock().expect("timeline");
                for r in &rows {
                    let cq: String = r.try_get(0)?;
                    let labels: String = r.try_get(1)?;
                    let first_seen: i64 = r.try_get(2)?;
                    cursor_us = cursor_us.max(first_seen);
                    let v: serde_json::Value = serde_json::from_str(&labels)
                        .with_context(|| format!("labels {labels}"))?;
                    let source = v["source"].as_str().unwrap_or("");
                    let (rule, k) = match (cq.as_str(), source.rsplit_once('-')) {
                        ("critical_log_alert", Some((_, k))) => ('A', k),
                        ("error_burst_per_source", Some((_, k))) => ('B', k),
                        _ => continue,
                    };
                    let Some(k) = k
                        .parse::<u64>()
                        .ok()
                        .and_then(|k| k.checked_sub(cfg.first_probe))
                    else {
                        continue;
                    };
                    let e = t.entry((rule, k)).or_default();
                    if e.visible_us == 0 {
                        e.visible_us = seen_us;
                        e.first_seen_us = first_seen;
                    }
                }
            }
            let all_sent = senders.iter().all(|h| h.is_finished());
            if all_sent && grace_end.is_none() {
                grace_end = Some(Instant::now() + Duration::from_secs(5));
            }
            if let Some(end) = grace_end {
                let t = timeline.lock().expect("timeline");
                let missing = t.values().filter(|p| p.visible_us == 0).count();
                if missing == 0 || Instant::now() > end {
                    break;
                }
            }
            std::thread::sleep(cfg.poll);
        }
        for r in crate::server::join_senders(senders) {
            r?;
        }
        Ok(())
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let mut out = LatencyRun {
        records: records.load(Ordering::Relaxed),
        secs,
        late_requests: late.load(Ordering::Relaxed),
        requests,
        polls,
        ..LatencyRun::default()
    };
    let timeline = timeline.into_inner().expect("timeline");
    for ((rule, _), p) in timeline {
        if p.sent_us == 0 {
            continue; // a row for a probe the run did not send (cannot happen; be safe)
        }
        let name = if rule == 'A' { "A" } else { "B" };
        out.probes.entry(name).or_default().push(p);
    }
    Ok(out)
}
