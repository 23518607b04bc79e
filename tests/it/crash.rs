//! Crash tests: SIGKILL at random moments, during ingest and during flushes. Every
//! acknowledged record must be present exactly once afterwards.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logsphere_tests::{Server, ServerOptions, post_logs};
use rand::Rng;

const SENDERS: usize = 4;
const BATCHES: usize = 40;
const PER_BATCH: usize = 25;

fn batch_body(sender: usize, batch: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..PER_BATCH {
        s.push_str(&format!(
            "{{\"message\":\"crash\",\"source\":\"s{sender}\",\"rid\":\"{sender}-{batch}-{i}\"}}\n"
        ));
    }
    s.into_bytes()
}

/// Posts every batch, retrying each (same key) until the server acknowledges it.
fn sender(
    url: Arc<Mutex<String>>,
    sender: usize,
    acked: Arc<Mutex<HashSet<String>>>,
    done: Arc<AtomicBool>,
) {
    for batch in 0..BATCHES {
        let key = format!("crash-{sender}-{batch}");
        let body = batch_body(sender, batch);
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 2000, "batch {key} never acknowledged");
            let base = url.lock().unwrap().clone();
            match post_logs(&base, &body, Some(&key)) {
                Ok((200, text)) => {
                    assert_eq!(text, format!("{{\"accepted\":{PER_BATCH},\"rejected\":0}}"));
                    acked.lock().unwrap().insert(key.clone());
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if done.load(Ordering::Relaxed) {
            return;
        }
    }
}

async fn check_exactly_once(server: &Server, acked: &HashSet<String>) {
    let client = server.pg_client().await;
    let total: i64 = client
        .query_one("SELECT count(*) FROM logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        total as usize,
        acked.len() * PER_BATCH,
        "count(*) equals the acknowledged records"
    );
    let dups = client
        .query("SELECT attr(attributes, 'rid') AS rid, count(*) FROM logs GROUP BY 1 HAVING count(*) > 1", &[])
        .await
        .unwrap();
    assert!(dups.is_empty(), "{} records stored twice", dups.len());
    let rids: HashSet<String> = client
        .query("SELECT attr(attributes, 'rid') FROM logs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for key in acked {
        let (sender, batch) = key.trim_start_matches("crash-").split_once('-').unwrap();
        for i in 0..PER_BATCH {
            assert!(
                rids.contains(&format!("{sender}-{batch}-{i}")),
                "acknowledged record {sender}-{batch}-{i} is missing"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_concurrent_ingest_loses_and_doubles_nothing() {
    // Small flush thresholds so kills also land around flushes and WAL segment deletion.
    let config =
        "[storage]\nflush_interval_secs = 1\nflush_max_rows = 400\nwal_segment_bytes = 65536\n";
    let mut server = Server::start_with(ServerOptions {
        config: Some(config.into()),
        ..Default::default()
    });
    let url = Arc::new(Mutex::new(server.http_url()));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (url, acked, done) = (Arc::clone(&url), Arc::clone(&acked), Arc::clone(&done));
            std::thread::spawn(move || sender(url, s, acked, done))
        })
        .collect();
    let mut rng = rand::rng();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
        server.kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
        server.restart();
    }
    for t in threads {
        t.join().expect("sender thread");
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), SENDERS * BATCHES);
    check_exactly_once(&server, &acked).await;
    // And once more after a final crash, with everything flushed or not.
    server.restart();
    check_exactly_once(&server, &acked).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_inside_a_flush_loses_and_doubles_nothing() {
    let options = ServerOptions {
        config: Some("[storage]\nflush_interval_secs = 3600\n".into()),
        env: vec![("LOGSPHERE_FAULT_FLUSH_PAUSE_MS".into(), "1500".into())],
    };
    let mut server = Server::start_with(options);
    let mut acked = HashSet::new();
    for batch in 0..8 {
        let key = format!("crash-0-{batch}");
        assert_eq!(
            server.post(&batch_body(0, batch), Some(&key)).unwrap().0,
            200
        );
        acked.insert(key);
    }
    // Start a flush; it writes its Parquet files, then pauses before the commit.
    let flush_url = format!("{}/v1/flush", server.http_url());
    let flusher = std::thread::spawn(move || ureq::post(&flush_url).send_empty().map(|_| ()));
    let data = server.data_dir().join("cold").join("logs");
    let mut waited = 0;
    while count_parquet(&data) == 0 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
        assert!(waited < 1000, "the flush wrote no file:\n{}", server.log());
    }
    server.kill();
    let _ = flusher.join();
    server.restart();
    assert!(
        server
            .log()
            .contains("removing a cold file no commit names"),
        "{}",
        server.log()
    );
    assert_eq!(
        count_parquet(&data),
        0,
        "uncommitted files are removed at start"
    );
    check_exactly_once(&server, &acked).await;
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs_hot").await as usize,
        acked.len() * PER_BATCH
    );

    // The next flush completes; the rows move to the cold tier, still exactly once.
    assert_eq!(server.flush() as usize, acked.len() * PER_BATCH);
    assert!(count_parquet(&data) > 0);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs_cold").await as usize,
        acked.len() * PER_BATCH
    );
    check_exactly_once(&server, &acked).await;
    // Killed after the commit: the WAL still holds the entries, the horizon skips them.
    server.restart();
    assert_eq!(server.query_i64("SELECT count(*) FROM logs_hot").await, 0);
    check_exactly_once(&server, &acked).await;
}

fn count_parquet(dir: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path, n: &mut usize) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, n);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// A mounted tmpfs of `mb` MiB at a fresh directory, unmounted on drop. Needs root, as the
/// test command has (it installs Debian packages); without it the test fails and says so.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mb: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("logsphere-full-")
            .tempdir()
            .expect("temp dir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a {mb} MiB tmpfs needs root (scripts/test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// The data disk fills up during ingest: every request that got a 2xx is durable, the rest
/// get 503 naming the full disk (never a 2xx for a record not stored); when space returns,
/// ingest and flushing resume without a restart; after `kill -9` exactly the acknowledged
/// records are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_then_resumes_and_loses_nothing() {
    let disk = SmallDisk::new(24);
    // Most of the disk taken by something else, freed later.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 14 * 1024 * 1024]).expect("filler");
    let data = disk.path().join("data");
    let mut server = Server::start_in(ServerOptions::default(), Some(data));
    let body: String = (0..2000)
        .map(|i| {
            format!(
                "{{\"message\":\"m{i} {}\",\"level\":\"info\"}}\n",
                "x".repeat(200)
            )
        })
        .collect();
    let url = server.http_url();
    let (acked, refused) = tokio::task::spawn_blocking(move || {
        let (mut acked, mut refused) = (0i64, Vec::new());
        for _ in 0..60 {
            let (status, text) = post_logs(&url, body.as_bytes(), None).expect("POST");
            match status {
                200 => acked += 2000,
                _ => refused.push((status, text)),
            }
        }
        (acked, refused)
    })
    .await
    .expect("senders");
    assert!(acked > 0, "some requests fit");
    assert!(!refused.is_empty(), "the disk filled up");
    for (status, text) in &refused {
        assert_eq!(*status, 503, "{text}");
        assert!(text.contains("No space left on device"), "{text}");
    }
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, acked);

    std::fs::remove_file(&filler).expect("free space");
    server.post_expect(b"{\"message\":\"after\"}\n", 1, 0);
    assert_eq!(server.flush(), (acked + 1) as u64, "the flush works again");
    server.post_expect(b"{\"message\":\"hot\"}\n", 1, 0);
    server.restart();
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs").await,
        acked + 2,
        "after kill -9, exactly the acknowledged records"
    );
    drop(server);
}

/// Fills `dir`'s file system to the last byte with one file; removing it frees the space.
fn fill_disk(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler-all");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // What is left is smaller than a chunk.
    while f.write_all(&[0u8; 512]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// Every path that writes survives a disk full to the last byte, not only the WAL: a
/// flush (Parquet and catalog) fails cleanly and keeps its rows hot, the continuous query
/// goes on in memory while its checkpoint and `INTO` table cannot be written, ingest is
/// refused; once space returns the flush works, and after `kill -9` the rows, the `INTO`
/// table, the query and the catalog are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_survives_a_full_disk() {
    let disk = SmallDisk::new(32);
    let data = disk.path().join("data");
    let mut server = Server::start_in(ServerOptions::default(), Some(data));
    let client = server.pg_client().await;
    client
        .batch_execute(
            "CREATE CONTINUOUS QUERY per_min INTO per_min WATERMARK INTERVAL '1 second' \
             AS SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, count(*) AS n \
                FROM logs GROUP BY 1, 2",
        )
        .await
        .expect("create per_min");
    // Minute M, four minutes back (within the default max_ingest_delay): 100 lines of `a`;
    // a line in minute M + 1 closes it.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let m: i64 = (now_us / 60_000_000 - 4) * 60_000_000;
    let lines = |n: usize, source: &str, at: i64| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"timestamp\":{},\"source\":\"{source}\",\"message\":\"m{i}\"}}\n",
                    at + i as i64 * 1000
                )
            })
            .collect()
    };
    server.post_expect(lines(100, "a", m).as_bytes(), 100, 0);
    server.post_expect(lines(1, "tick", m + 61_000_000).as_bytes(), 1, 0);
    let per_min = "SELECT coalesce(sum(n), 0) FROM per_min WHERE source = 'a'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.query_i64(per_min).await != 100 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let filler = fill_disk(disk.path());
    // A flush cannot write its Parquet file: it fails, says why, and moves nothing.
    let url = server.http_url();
    let (status, text) = tokio::task::spawn_blocking(move || {
        logsphere_tests::post_flush(&url, Duration::from_secs(60)).expect("POST /v1/flush")
    })
    .await
    .expect("flush thread");
    assert_ne!(status, 200, "a flush on a full disk: {text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert_eq!(server.query_i64("SELECT count(*) FROM logs_cold").await, 0);
    assert_eq!(server.query_i64("SELECT count(*) FROM logs").await, 101);
    // Ingest is refused with 503 — or, while the WAL segment's preallocated space lasts,
    // acknowledged and then durable (checked after the kill below).
    let (status, text) = server
        .post(lines(5, "late", m).as_bytes(), None)
        .expect("POST");
    let acked: i64 = match status {
        200 => 5,
        _ => {
            assert_eq!(status, 503, "{text}");
            0
        }
    };
    // The query's checkpoints fail meanwhile, and it says so; it keeps its state.
    let error = "SELECT count(*) FROM continuous_queries \
                 WHERE name = 'per_min' AND error LIKE '%No space left on device%'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.query_i64(error).await != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(server.query_i64(per_min).await, 100);

    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(server.flush(), 101 + acked as u64, "the flush works again");
    // Minute M + 1: 7 lines of `b`, closed by a line in M + 2.
    server.post_expect(lines(7, "b", m + 62_000_000).as_bytes(), 7, 0);
    server.post_expect(lines(1, "tick", m + 125_000_000).as_bytes(), 1, 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs").await,
        109 + acked
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs_cold").await,
        101 + acked
    );
    assert_eq!(server.query_i64(per_min).await, 100);
    let b = "SELECT coalesce(sum(n), 0) FROM per_min WHERE source = 'b'";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.query_i64(b).await != 7 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = server.pg_client().await;
    let row = client
        .query_one(
            "SELECT state, error FROM continuous_queries WHERE name = 'per_min'",
            &[],
        )
        .await
        .expect("per_min after the restart");
    assert_eq!(row.get::<_, String>(0), "RUNNING");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    drop(server);
}

/// A failed WAL fsync (injected after three good ones) is never retried into a false
/// success: that request and every later one get 503 naming the fsync, `/healthz` says the
/// node does not accept writes, and after a restart exactly the acknowledged records are
/// there and ingest works again.
#[tokio::test]
async fn a_failed_fsync_stops_acknowledging_until_a_restart() {
    let mut server = Server::start_with(ServerOptions {
        config: None,
        env: vec![("LOGSPHERE_FAULT_WAL_FSYNC_FAIL_AFTER".into(), "3".into())],
    });
    for i in 0..3 {
        server.post_expect(format!("{{\"message\":\"acked {i}\"}}\n").as_bytes(), 1, 0);
    }
    for _ in 0..3 {
        let (status, text) = server
            .post(b"{\"message\":\"not durable\"}\n", None)
            .expect("POST");
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("fsync"), "{text}");
    }
    let mut health = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .get(&format!("{}/healthz", server.http_url()))
        .call()
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 503);
    let text = health.body_mut().read_to_string().expect("healthz text");
    assert!(text.contains("fsync"), "{text}");

    server.restart();
    assert_eq!(
        server.query_i64("SELECT count(*) FROM logs").await,
        3,
        "exactly the acknowledged records"
    );
    server.post_expect(b"{\"message\":\"after the restart\"}\n", 1, 0);
}
