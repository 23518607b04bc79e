//! `Idempotency-Key` in cluster mode: `POST /v1/logs` repeated with one key — on one node,
//! on two, at once on two, after the node storing it was killed mid-request — stores its
//! records once. "Once" is checked three ways: the ingest topic holds exactly the records of
//! one request (nothing was produced twice), every partition's progress reached the end of
//! the topic (nothing is still to come), and SQL counts exactly those rows (nothing was
//! stored twice on the way from Kafka to Cassandra).
//!
//! The records carry no timestamp, as most HTTP clients send them: their time is then their
//! Kafka timestamp, which makes a record consumed twice (a rebalance when the second node
//! joins, a takeover after a kill) rewrite its own row.

use std::time::{Duration, Instant};

use logsphere_tests::services::unique_name;
use logsphere_tests::{Server, ServerOptions};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{Names, SERIAL, create_topics, wait_for_count};

/// Partitions of each test's ingest topic.
pub(super) const PARTITIONS: i32 = 3;
/// Records per request.
const RECORDS: usize = 3;

/// One answer to `POST /v1/logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
    /// The `idempotent-replayed: true` header: answered from an earlier request.
    replayed: bool,
    /// `Retry-After`, seconds.
    retry_after: Option<u64>,
}

/// The body of one request: [`RECORDS`] records whose `source` is `key`, without timestamps.
fn body(key: &str) -> Vec<u8> {
    (0..RECORDS)
        .map(|i| {
            serde_json::json!({"message": format!("{key} record {i}"), "source": key, "level": "info"})
                .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

/// What a first request with a key is answered.
fn stored_answer() -> String {
    format!("{{\"accepted\":{RECORDS},\"rejected\":0}}")
}

/// `POST /v1/logs` with `key`, once, with no retry of any kind (a client-side retry is
/// exactly what these tests must control).
fn post(base: &str, key: &str, timeout: Duration) -> Result<Answer, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{base}/v1/logs"))
        .header("Content-Type", "application/x-ndjson")
        .header("Idempotency-Key", key)
        .send(&body(key)[..])
        .map_err(|e| e.to_string())?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        body,
        replayed,
        retry_after,
    })
}

/// Posts `key` as a client should: again after `Retry-After` on a 409, again on a 503, until
/// a 200 (panics after `within`). Every answer, the last one the 200.
fn post_until_stored(base: &str, key: &str, within: Duration) -> Vec<Answer> {
    let deadline = Instant::now() + within;
    let mut answers = Vec::new();
    loop {
        let answer = post(base, key, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("POST {key} to {base}: {e}; before: {answers:?}"));
        let wait = match answer.status {
            200 => {
                answers.push(answer);
                return answers;
            }
            409 => {
                let secs = answer
                    .retry_after
                    .unwrap_or_else(|| panic!("409 without Retry-After: {answer:?}"));
                Duration::from_secs(secs)
            }
            503 => Duration::from_millis(500),
            _ => panic!("POST {key} to {base}: {answer:?}"),
        };
        answers.push(answer);
        assert!(
            Instant::now() < deadline,
            "{key} not stored within {within:?}: {answers:?}"
        );
        std::thread::sleep(wait);
    }
}

/// A node whose `[cluster]` table also holds `cluster_keys`, with extra environment.
fn node(names: &Names, id: &str, topic: &str, cluster_keys: &str, env: &[(&str, &str)]) -> Server {
    let config = names.config(id, &[topic], "").replacen(
        "[cluster]\n",
        &format!("[cluster]\n{cluster_keys}\n"),
        1,
    );
    Server::start_with(ServerOptions {
        config: Some(config),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

/// Messages in `topic` (the sum of its [`PARTITIONS`] partitions' high watermarks), asked of
/// Kafka itself.
pub(super) fn topic_messages(brokers: &str, topic: &str) -> i64 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("kafka metadata client");
    (0..PARTITIONS)
        .map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .sum()
}

/// Asserts `topic` holds exactly `keys.len()` requests' records, waits until the group has
/// consumed all of them, then asserts each key's records are in `logs` exactly once, naming
/// each row's Kafka partition, offset and time if not (the same offset twice: consumed twice;
/// different offsets: produced twice).
async fn assert_stored_once(names: &Names, node: &Server, topic: &str, keys: &[&str]) {
    let want = (keys.len() * RECORDS) as i64;
    assert_eq!(
        topic_messages(&names.brokers, topic),
        want,
        "messages produced to {topic} for {keys:?}"
    );
    wait_for_count(
        node,
        &format!(
            "SELECT coalesce(sum(next_offset), 0) FROM kafka_partitions WHERE topic = '{topic}'"
        ),
        want,
        Duration::from_secs(180),
    )
    .await;
    let client = node.pg_client().await;
    for key in keys {
        let rows = client
            .query(
                &format!(
                    "SELECT attr(attributes, 'kafka_partition'), attr(attributes, 'kafka_offset'), \
                     CAST(timestamp AS VARCHAR), message FROM logs WHERE source = '{key}' \
                     ORDER BY 1, 2"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("rows of {key}: {e}"));
        let rows: Vec<(Option<String>, Option<String>, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            rows.len(),
            RECORDS,
            "{key}: (kafka_partition, kafka_offset, timestamp, message) of every row: {rows:#?}"
        );
        let mut messages: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        messages.sort_unstable();
        let want: Vec<String> = (0..RECORDS).map(|i| format!("{key} record {i}")).collect();
        assert_eq!(messages, want, "{key}");
    }
    let total = client
        .query_one(
            &format!("SELECT count(*) FROM logs WHERE topic = '{topic}'"),
            &[],
        )
        .await
        .expect("count of the topic's rows");
    assert_eq!(total.get::<_, i64>(0), want, "rows of {topic}");
}

/// One node, one key posted three times: stored once; the second and third answers are the
/// first one's (status and body), flagged as replays. A second key stores its own records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_repeats_on_one_node_store_once() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("idem_one");
    create_topics(&names.brokers, &[&topic], PARTITIONS).await;
    let n1 = node(&names, "n1", &topic, "", &[]);
    let url = n1.http_url();
    let answers = tokio::task::spawn_blocking(move || {
        let mut answers = Vec::new();
        for key in ["idem-a", "idem-a", "idem-a", "idem-b"] {
            answers.push(post(&url, key, Duration::from_secs(30)).expect("POST /v1/logs"));
        }
        answers
    })
    .await
    .expect("posting thread");
    let first = Answer {
        status: 200,
        body: stored_answer(),
        replayed: false,
        retry_after: None,
    };
    let replay = Answer {
        replayed: true,
        ..first.clone()
    };
    assert_eq!(
        answers,
        vec![first.clone(), replay.clone(), replay, first],
        "{}",
        n1.log()
    );
    assert_stored_once(&names, &n1, &topic, &["idem-a", "idem-b"]).await;

    // Reading the same messages again must rewrite the same rows: a node of another group
    // reads the topic from the start into the same keyspace, as a node does with records
    // it consumed but had not yet recorded progress for when it was killed or lost its
    // partitions. The records have no timestamp: their row key holds their Kafka time.
    let config = names.config("n2", &[&topic], "").replace(
        &format!("group = \"{}\"", names.group),
        &format!("group = \"{}\"", unique_name("group_again")),
    );
    let n2 = Server::start_with(ServerOptions {
        config: Some(config),
        env: Vec::new(),
    });
    wait_for_count(
        &n2,
        &format!(
            "SELECT coalesce(sum(next_offset), 0) FROM kafka_partitions WHERE topic = '{topic}'"
        ),
        (2 * RECORDS) as i64,
        Duration::from_secs(180),
    )
    .await;
    assert_stored_once(&names, &n2, &topic, &["idem-a", "idem-b"]).await;
}

/// Two nodes: a key posted to A then to B is stored once and B answers as A did. Then keys
/// posted to both at the same moment, each client retrying as told: exactly one request
/// stores each key, the other is told 409 or given the stored answer, and both end with
/// the same 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_on_two_nodes_stores_once_even_at_once() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("idem_two");
    create_topics(&names.brokers, &[&topic], PARTITIONS).await;
    let lease = "ingest_key_lease_secs = 6";
    let a = node(&names, "a", &topic, lease, &[]);
    let b = node(&names, "b", &topic, lease, &[]);
    let (url_a, url_b) = (a.http_url(), b.http_url());
    let (ua, ub) = (url_a.clone(), url_b.clone());
    let (on_a, on_b) = tokio::task::spawn_blocking(move || {
        let on_a = post(&ua, "seq-1", Duration::from_secs(30)).expect("POST to A");
        let on_b = post(&ub, "seq-1", Duration::from_secs(30)).expect("POST to B");
        (on_a, on_b)
    })
    .await
    .expect("posting thread");
    assert_eq!(
        (on_a.status, on_a.body.as_str(), on_a.replayed),
        (200, stored_answer().as_str(), false)
    );
    assert_eq!(
        (on_b.status, on_b.body.as_str(), on_b.replayed),
        (200, stored_answer().as_str(), true)
    );

    let race_keys = ["race-1", "race-2", "race-3", "race-4", "race-5"];
    let mut conflicts = 0;
    for key in race_keys {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [url_a.clone(), url_b.clone()]
            .into_iter()
            .map(|url| {
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    post_until_stored(&url, key, Duration::from_secs(90))
                })
            })
            .collect();
        let runs: Vec<Vec<Answer>> = racers
            .into_iter()
            .map(|r| r.join().expect("racing client"))
            .collect();
        let stored_by: Vec<&Vec<Answer>> = runs
            .iter()
            .filter(|run| run.iter().any(|a| a.status == 200 && !a.replayed))
            .collect();
        assert_eq!(
            stored_by.len(),
            1,
            "{key}: exactly one request stores: {runs:?}"
        );
        for run in &runs {
            let last = run.last().expect("at least one answer");
            assert_eq!(
                (last.status, last.body.as_str()),
                (200, stored_answer().as_str()),
                "{key}: {runs:?}"
            );
            // Before the 200: 409 (the other request holds the key) or, on a loaded
            // machine, a 503 that asks for a retry; never another 200.
            for earlier in &run[..run.len() - 1] {
                assert!(
                    [409, 503].contains(&earlier.status),
                    "{key}: only 409 or 503 before the 200: {runs:?}"
                );
            }
            conflicts += run.iter().filter(|a| a.status == 409).count();
        }
    }
    eprintln!(
        "{conflicts} 409 answers over {} racing keys",
        race_keys.len()
    );
    let mut keys = vec!["seq-1"];
    keys.extend(race_keys);
    assert_stored_once(&names, &a, &topic, &keys).await;
}

/// Nodes A (with the fault point `fault` pausing it) and B on `topic`, with a 6 s lease:
/// posts `key` to A, waits for A to log `marker` (it is paused there), kills A and checks
/// its client got no answer. B, the lease, and when A was killed.
async fn kill_a_in_fault(
    names: &Names,
    topic: &str,
    key: &'static str,
    fault: &str,
    marker: &str,
) -> (Server, Duration, Instant) {
    let lease = Duration::from_secs(6);
    let lease_key = format!("ingest_key_lease_secs = {}", lease.as_secs());
    let mut a = node(names, "a", topic, &lease_key, &[(fault, "600000")]);
    let b = node(names, "b", topic, &lease_key, &[]);
    let url_a = a.http_url();
    // The client of A: its request hangs in the pause, then the connection dies.
    let client_a = std::thread::spawn(move || post(&url_a, key, Duration::from_secs(120)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.log().contains(marker) {
        assert!(
            Instant::now() < deadline,
            "A never reached {marker:?}:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = Instant::now();
    a.kill();
    let a_answer = client_a.join().expect("client of A");
    assert!(
        a_answer.is_err(),
        "A answered although killed: {a_answer:?}"
    );
    (b, lease, killed)
}

/// A node killed between claiming a key and producing leaves the key `pending`: another node
/// answers 409 with Retry-After while the lease runs, then stores the records, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_claimed_by_a_killed_node_is_stored_once_after_the_lease() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("idem_kill");
    create_topics(&names.brokers, &[&topic], PARTITIONS).await;
    let (b, lease, claimed) = kill_a_in_fault(
        &names,
        &topic,
        "crash-1",
        "LOGSPHERE_FAULT_INGEST_CLAIM_PAUSE_MS",
        "fault injection: pausing between claiming",
    )
    .await;
    let lease_secs = lease.as_secs();
    let url_b = b.http_url();
    let (first, answered_after, answers) = tokio::task::spawn_blocking(move || {
        let first = post(&url_b, "crash-1", Duration::from_secs(30)).expect("POST to B");
        let answered_after = claimed.elapsed();
        let rest = match first.status {
            200 => vec![first.clone()],
            _ => post_until_stored(&url_b, "crash-1", Duration::from_secs(90)),
        };
        (first, answered_after, rest)
    })
    .await
    .expect("client of B");
    eprintln!("B's first answer, {answered_after:?} after A's claim: {first:?}");
    // The lease began a little before A logged the claim: well inside it, B must refuse.
    if answered_after < Duration::from_secs(lease_secs - 2) {
        assert_eq!(
            (first.status, first.retry_after),
            (409, Some(1)),
            "B answered {answered_after:?} into A's {lease_secs} s lease: {first:?}"
        );
    }
    let last = answers.last().expect("an answer");
    assert_eq!(
        (last.status, last.body.as_str(), last.replayed),
        (200, stored_answer().as_str(), false),
        "B stores the records itself (first answer {first:?}): {answers:?}"
    );
    assert_stored_once(&names, &b, &topic, &["crash-1"]).await;
}

/// A produce that fails after part of the request was acknowledged (a broker timeout
/// halfway): A answers 503, and the retry — here on B — produces only the records that are
/// not in the topic. The topic holds each record once and every record is stored once, all
/// in the one partition the key's records go to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_produce_failed_halfway_is_completed_not_repeated() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("idem_half");
    create_topics(&names.brokers, &[&topic], PARTITIONS).await;
    let a = node(
        &names,
        "a",
        &topic,
        "",
        &[("LOGSPHERE_FAULT_INGEST_PRODUCE_FAIL_AFTER", "1")],
    );
    let b = node(&names, "b", &topic, "", &[]);
    let (url_a, url_b) = (a.http_url(), b.http_url());
    let failed =
        tokio::task::spawn_blocking(move || post(&url_a, "half-1", Duration::from_secs(30)))
            .await
            .expect("client of A")
            .expect("POST to A");
    assert_eq!(failed.status, 503, "A's produce failed halfway: {failed:?}");
    assert_eq!(
        topic_messages(&names.brokers, &topic),
        1,
        "the failed attempt left one record in the topic"
    );
    let answers = tokio::task::spawn_blocking(move || {
        post_until_stored(&url_b, "half-1", Duration::from_secs(60))
    })
    .await
    .expect("client of B");
    let last = answers.last().expect("an answer");
    assert_eq!(
        (last.status, last.body.as_str(), last.replayed),
        (200, stored_answer().as_str(), false),
        "B completes the request: {answers:?}"
    );
    assert!(
        b.log().contains("producing only what is not in the topic"),
        "B read what A had stored:\n{}",
        b.log()
    );
    assert_stored_once(&names, &b, &topic, &["half-1"]).await;
    let client = b.pg_client().await;
    let partitions = client
        .query_one(
            "SELECT count(DISTINCT attr(attributes, 'kafka_partition')), \
             count(DISTINCT attr(attributes, 'kafka_key')), min(attr(attributes, 'kafka_key')) \
             FROM logs WHERE source = 'half-1'",
            &[],
        )
        .await
        .expect("partitions of the key's rows");
    assert_eq!(
        (
            partitions.get::<_, i64>(0),
            partitions.get::<_, i64>(1),
            partitions.get::<_, Option<String>>(2)
        ),
        (1, 1, Some("half-1".to_string())),
        "a key's records share one partition and carry the key"
    );
}

/// A node killed after its records were acknowledged but before the key was marked done:
/// after the lease, the retry on B finds every record in the topic, produces none, and
/// answers as the first request would have. Nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_acknowledged_by_a_killed_node_is_not_produced_again() {
    let _serial = SERIAL.lock().await;
    let names = Names::new();
    let topic = unique_name("idem_acked");
    create_topics(&names.brokers, &[&topic], PARTITIONS).await;
    let (b, _, _) = kill_a_in_fault(
        &names,
        &topic,
        "acked-1",
        "LOGSPHERE_FAULT_INGEST_ACKED_PAUSE_MS",
        "fault injection: pausing between the acknowledgements",
    )
    .await;
    assert_eq!(
        topic_messages(&names.brokers, &topic),
        RECORDS as i64,
        "A's records were acknowledged before the kill"
    );
    let url_b = b.http_url();
    let answers = tokio::task::spawn_blocking(move || {
        post_until_stored(&url_b, "acked-1", Duration::from_secs(90))
    })
    .await
    .expect("client of B");
    let last = answers.last().expect("an answer");
    assert_eq!(
        (last.status, last.body.as_str()),
        (200, stored_answer().as_str()),
        "B answers as A would have: {answers:?}"
    );
    assert_stored_once(&names, &b, &topic, &["acked-1"]).await;
}
