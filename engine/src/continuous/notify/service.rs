//! The delivery service: a fixed set of worker threads behind one bounded queue, shared by
//! every CQ of an engine.
//!
//! The `alert_events` rows are the schedule. [`Notifier::dispatch`] (after a batch records
//! transitions, and on every 250 ms tick) queues, per (alert, channel), the oldest
//! transition not yet settled if its `next_attempt` is due and none of that pair is in
//! flight — so a `resolved` never overtakes its `fired`, and a compacted Kafka topic ends
//! on the latest state. A full queue leaves the rest for the next sweep: the CQ task never
//! waits on a receiver, and a dead receiver holds at most the workers, never more threads.
//! A worker makes one attempt and writes its outcome and next attempt back ([`RetryPolicy`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::producer::FutureProducer;

use super::super::CqError;
use super::super::alerts::hex_hash;
use super::channel::KafkaTopic;
use super::{AlertEvent, Events, NotifyChannel, NotifyConfig, kafka, webhook};

/// Attempt rows kept per transition; older ones are dropped, `attempts` keeps the count.
pub(crate) const KEEP_ATTEMPT_ROWS: u64 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// When a failed attempt is tried again.
///
/// - Attempts 1..=`retries` failed: `pending`, again after 100 ms doubling up to 5 s.
/// - Later ones: `failed`, re-queued after `requeue_after` doubling up to `requeue_max`,
///   as long as that is within `give_up_after` of the event being recorded; after that
///   `failed` with no next attempt, for good (a restart does not revive it either).
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    requeue_after: Duration,
    requeue_max: Duration,
    give_up_after: Duration,
}

impl RetryPolicy {
    pub(crate) fn from_config(config: &NotifyConfig) -> Self {
        Self {
            requeue_after: config.requeue_after,
            requeue_max: config.requeue_max.max(config.requeue_after),
            give_up_after: config.give_up_after,
        }
    }

    /// `(status, next attempt)` after `attempts` failed attempts.
    pub(crate) fn after_failure(
        &self,
        attempts: u64,
        retries: u32,
        created_at: i64,
        now_us: i64,
    ) -> (&'static str, Option<i64>) {
        let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let doubled = |first: Duration, max: Duration, n: u64| {
            let factor = 1u32 << n.min(20);
            first.saturating_mul(factor).min(max)
        };
        if attempts <= u64::from(retries) {
            let delay = doubled(FIRST_BACKOFF, MAX_BACKOFF, attempts.saturating_sub(1));
            return ("pending", Some(now_us.saturating_add(us(delay))));
        }
        let n = attempts - u64::from(retries) - 1;
        let next = now_us.saturating_add(us(doubled(self.requeue_after, self.requeue_max, n)));
        if next.saturating_sub(created_at) > us(self.give_up_after) {
            ("failed", None)
        } else {
            ("failed", Some(next))
        }
    }
}

struct Job {
    events: Events,
    channel: NotifyChannel,
    event_id: String,
    /// (alert id, channel name): at most one in flight.
    key: (String, String),
}

struct Shared {
    policy: RetryPolicy,
    in_flight: Mutex<HashSet<(String, String)>>,
    /// One idempotent producer per (broker list, timeout), shared by the KAFKA channels
    /// using it.
    producers: Mutex<HashMap<(String, Duration), FutureProducer>>,
    /// Cluster mode: who sends each event (see [`DeliveryClaims`]).
    claims: std::sync::OnceLock<Arc<dyn DeliveryClaims>>,
}

/// What a node is told when it asks to send an event (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node sends it.
    Mine,
    /// Another node delivered it.
    Done,
    /// Another node is sending it: look again later.
    Held,
}

/// Cluster mode: several nodes derive the same events (same ids); each event is sent by
/// the node that claims it, and recorded done after.
pub trait DeliveryClaims: Send + Sync {
    /// Claims `event_id` for this node.
    fn claim(&self, event_id: &str) -> Result<Claim, String>;
    /// `event_id` was delivered by this node.
    fn done(&self, event_id: &str);
}

/// How long an event held by another node waits before it is looked at again.
const HELD_RETRY: Duration = Duration::from_secs(2);

fn now() -> i64 {
    super::super::now_us()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine's NOTIFY delivery service (see the module docs).
pub(crate) struct Notifier {
    config: NotifyConfig,
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// Starts `config.workers` threads; they stop when the notifier is dropped.
    pub(crate) fn new(config: &NotifyConfig) -> Self {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(config.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            policy: RetryPolicy::from_config(config),
            in_flight: Mutex::new(HashSet::new()),
            producers: Mutex::new(HashMap::new()),
            claims: std::sync::OnceLock::new(),
        });
        for i in 0..config.workers.max(1) {
            let (rx, shared) = (Arc::clone(&rx), Arc::clone(&shared));
            let spawned = std::thread::Builder::new()
                .name(format!("cq-notify-{i}"))
                .spawn(move || work(&rx, &shared));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, worker = i, "cannot start a NOTIFY delivery thread");
            }
        }
        Self {
            config: config.clone(),
            jobs,
            shared,
        }
    }

    /// Sends only the events `claims` gives this node (cluster mode).
    pub(crate) fn set_claims(&self, claims: Arc<dyn DeliveryClaims>) {
        let _ = self.shared.claims.set(claims);
    }

    /// What the service was started with.
    pub(crate) fn config(&self) -> &NotifyConfig {
        &self.config
    }

    /// Creates the channel's shared producer now (at CREATE), so a broker list librdkafka
    /// refuses is refused there.
    pub(crate) fn check(&self, channel: &NotifyChannel) -> Result<(), CqError> {
        match channel {
            NotifyChannel::Kafka(k) => self.shared.producer(k).map(drop),
            NotifyChannel::Webhook(_) => Ok(()),
        }
    }

    /// Queues the due transitions of `events` (see the module docs). Never blocks.
    pub(crate) fn dispatch(&self, events: &Events, channels: &[NotifyChannel], now_us: i64) {
        if channels.is_empty() {
            return;
        }
        let mut first: BTreeMap<(String, String), &AlertEvent> = BTreeMap::new();
        let guard = lock(events);
        for e in guard.values() {
            if e.kind == "delivery" || e.status == "delivered" || e.next_attempt.is_none() {
                continue;
            }
            let order = |e: &AlertEvent| (e.created_at, e.kind == "resolved", e.event_id.clone());
            first
                .entry((e.alert_id.clone(), e.channel.clone()))
                .and_modify(|f| {
                    if order(e) < order(f) {
                        *f = e;
                    }
                })
                .or_insert(e);
        }
        let mut in_flight = lock(&self.shared.in_flight);
        for (key, e) in first {
            if e.next_attempt.is_some_and(|t| t > now_us) || in_flight.contains(&key) {
                continue;
            }
            let Some(channel) = channels.iter().find(|c| c.name() == e.channel) else {
                continue;
            };
            let job = Job {
                events: Arc::clone(events),
                channel: channel.clone(),
                event_id: e.event_id.clone(),
                key: key.clone(),
            };
            match self.jobs.try_send(job) {
                Ok(()) => {
                    in_flight.insert(key);
                }
                Err(TrySendError::Full(_)) => break,
                Err(TrySendError::Disconnected(_)) => {
                    tracing::warn!("NOTIFY delivery threads are gone; events stay pending");
                    break;
                }
            }
        }
    }
}

/// Removes what `alert_events` no longer needs, `retention` after its last change: attempt
/// rows of (alert, channel) pairs with nothing left to deliver, and transition rows of
/// alerts not in `listed` (rows of listed alerts stay: they are what keeps a replay from
/// recording and sending the same transition again).
pub(crate) fn prune(
    events: &mut BTreeMap<String, AlertEvent>,
    listed: &HashSet<&str>,
    retention: Duration,
    now_us: i64,
) {
    let before = now_us.saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
    let open: HashSet<(String, String)> = events
        .values()
        .filter(|e| e.kind != "delivery" && e.status != "delivered" && e.next_attempt.is_some())
        .map(|e| (e.alert_id.clone(), e.channel.clone()))
        .collect();
    events.retain(|_, e| {
        if e.at >= before {
            return true;
        }
        if e.kind == "delivery" {
            return open.contains(&(e.alert_id.clone(), e.channel.clone()));
        }
        listed.contains(e.alert_id.as_str())
    });
}

impl Shared {
    fn producer(&self, topic: &KafkaTopic) -> Result<FutureProducer, CqError> {
        let key = (topic.brokers.clone(), topic.timeout);
        let mut producers = lock(&self.producers);
        if let Some(p) = producers.get(&key) {
            return Ok(p.clone());
        }
        let p = kafka::producer(&topic.brokers, topic.timeout)?;
        producers.insert(key, p.clone());
        Ok(p)
    }

    /// One attempt of `job`, its outcome written back to the event.
    fn attempt(&self, job: Job) {
        let current = lock(&job.events)
            .get(&job.event_id)
            .filter(|e| e.status != "delivered")
            .map(|e| (e.payload.clone(), e.fingerprint.clone(), e.kind.clone()));
        if let Some((payload, fingerprint, kind)) = current {
            let claims = self.claims.get();
            match claims.map(|c| c.claim(&job.event_id)) {
                None | Some(Ok(Claim::Mine)) => {}
                Some(Ok(Claim::Done)) => {
                    let mut events = lock(&job.events);
                    self.record(&mut events, &job.channel, &job.event_id, None, now());
                    lock(&self.in_flight).remove(&job.key);
                    return;
                }
                Some(Ok(Claim::Held)) => {
                    if let Some(e) = lock(&job.events).get_mut(&job.event_id) {
                        let wait = i64::try_from(HELD_RETRY.as_micros()).unwrap_or(i64::MAX);
                        e.next_attempt = Some(now().saturating_add(wait));
                    }
                    lock(&self.in_flight).remove(&job.key);
                    return;
                }
                Some(Err(error)) => {
                    tracing::warn!(event_id = %job.event_id, error = %error, "cannot claim a NOTIFY delivery");
                    let mut events = lock(&job.events);
                    self.record(&mut events, &job.channel, &job.event_id, Some(error), now());
                    lock(&self.in_flight).remove(&job.key);
                    return;
                }
            }
            let outcome = match &job.channel {
                NotifyChannel::Webhook(h) => webhook::post(h, &job.event_id, &payload),
                NotifyChannel::Kafka(k) => {
                    self.producer(k).map_err(|e| e.to_string()).and_then(|p| {
                        kafka::produce(&p, k, &fingerprint, &job.event_id, &kind, &payload)
                    })
                }
            };
            if let Err(error) = &outcome {
                tracing::warn!(
                    channel = %job.channel.name(), event_id = %job.event_id, error = %error,
                    "NOTIFY delivery attempt failed"
                );
            }
            if outcome.is_ok()
                && let Some(c) = claims
            {
                c.done(&job.event_id);
            }
            let mut events = lock(&job.events);
            self.record(
                &mut events,
                &job.channel,
                &job.event_id,
                outcome.err(),
                now(),
            );
        }
        lock(&self.in_flight).remove(&job.key);
    }

    /// Writes one attempt's outcome into the transition row and appends its attempt row,
    /// keeping the last [`KEEP_ATTEMPT_ROWS`].
    fn record(
        &self,
        events: &mut BTreeMap<String, AlertEvent>,
        channel: &NotifyChannel,
        event_id: &str,
        error: Option<String>,
        now_us: i64,
    ) {
        let Some(e) = events.get_mut(event_id) else {
            return;
        };
        e.attempts += 1;
        e.at = now_us;
        e.last_error = error.clone();
        let (status, next) = match &error {
            None => ("delivered", None),
            Some(_) => {
                self.policy
                    .after_failure(e.attempts, channel.retries(), e.created_at, now_us)
            }
        };
        e.status = status.into();
        e.next_attempt = next;
        if next.is_none() {
            // Settled: the body is not needed any more (and not checkpointed again).
            e.payload.clear();
        }
        let attempts = e.attempts;
        let row = AlertEvent {
            event_id: hex_hash(&[event_id, "delivery", &attempts.to_string()]),
            alert_id: e.alert_id.clone(),
            cq_name: e.cq_name.clone(),
            kind: "delivery".into(),
            channel: e.channel.clone(),
            status: if error.is_none() {
                "delivered"
            } else {
                "failed"
            }
            .into(),
            attempts,
            last_error: error,
            at: now_us,
            created_at: now_us,
            ..AlertEvent::default()
        };
        events.insert(row.event_id.clone(), row);
        if attempts > KEEP_ATTEMPT_ROWS {
            let old = (attempts - KEEP_ATTEMPT_ROWS).to_string();
            events.remove(&hex_hash(&[event_id, "delivery", &old]));
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = lock(rx).recv();
        match job {
            Ok(job) => shared.attempt(job),
            Err(_) => return,
        }
    }
}
