//! The alert state machine of CONTINUOUS_QUERIES.md §5.4, in event time.
//!
//! ```text
//! INACTIVE --observation--> PENDING --FOR met--> FIRING --false + KEEP FIRING FOR--> RESOLVED
//! PENDING  --false--> INACTIVE (the row is removed; it was never notified)
//! ```
//!
//! Every input is a fact of the data: observations carry event times (shape A the row's,
//! shape B the window's), and the condition is judged false only from the watermark
//! (shape B: the window after the latest qualifying one closed without a qualifying row;
//! shape A: RESOLVE AFTER passed without a match). So live and BACKTEST make the same
//! transitions, and a replay after a crash makes the same ones with the same ids.
//! Each change is a [`Transition`] with a deterministic id; `notify.rs` turns the ones
//! that notify into `alert_events` rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::alerts::{Alert, AlertRule, Observation, Pending, fingerprint, hex_hash};
use super::{CqError, CqOutput, QueryShape};

/// Event-time bookkeeping of one instance (checkpointed with the alert, not a column).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Episode {
    /// Event time of the episode's first observation: the alert id's anchor.
    pub anchor: i64,
    /// Shape B: the end of the latest qualifying window.
    pub last_window_end: i64,
    /// Shape B: qualifying windows so far (FOR n WINDOWS).
    pub windows: u64,
    /// Event time it started firing.
    pub fired_event: Option<i64>,
    /// Event time it resolved.
    pub resolved_event: Option<i64>,
    /// Rank of the highest severity notified (escalations notify above it).
    pub notified_rank: u8,
    /// Event time of the latest notification (COOLDOWN counts from here).
    pub last_notified: i64,
    /// Repeat notifications sent so far.
    pub repeats: u64,
    /// An ABSENT FOR instance.
    pub absent: bool,
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransitionKind {
    /// Observed, FOR not yet met.
    Pending,
    /// Pending ended without firing (not notified).
    Inactive,
    /// Entered FIRING.
    Fired,
    /// Severity rose above every severity notified so far.
    Escalated,
    /// Still firing, COOLDOWN after the last notification.
    Repeated,
    Resolved,
}

impl TransitionKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Pending => "pending",
            TransitionKind::Inactive => "inactive",
            TransitionKind::Fired => "fired",
            TransitionKind::Escalated => "escalated",
            TransitionKind::Repeated => "repeated",
            TransitionKind::Resolved => "resolved",
        }
    }
}

/// One transition, with the alert as it stood right after it.
#[derive(Debug, Clone)]
pub(crate) struct Transition {
    /// Hash of alert id, kind and what tells repeats apart (severity, repeat number).
    pub id: String,
    pub kind: TransitionKind,
    /// Event time (µs) of the transition.
    pub at: i64,
    pub alert: Alert,
}

impl Transition {
    fn new(kind: TransitionKind, detail: &str, at: i64, alert: &Alert) -> Self {
        Self {
            id: hex_hash(&[&alert.alert_id, kind.as_str(), detail]),
            kind,
            at,
            alert: alert.clone(),
        }
    }

    /// Whether NOTIFY channels hear of it: entering FIRING, an escalation, a repeat, and
    /// the resolution of an instance that had fired.
    pub(crate) fn notifies(&self) -> bool {
        match self.kind {
            TransitionKind::Fired | TransitionKind::Escalated | TransitionKind::Repeated => true,
            TransitionKind::Resolved => self.alert.episode.fired_event.is_some(),
            TransitionKind::Pending | TransitionKind::Inactive => false,
        }
    }
}

/// ABSENT FOR: the last rows of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    /// The key's labels, as a JSON object.
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Event time the key's rows covered up to (shape B: the latest window's end).
    pub last: i64,
    pub value: String,
    pub severity: String,
    pub annotations: String,
}

/// The label an `absent` instance carries beside its key.
const ABSENT_LABEL: &str = "absent";

/// A CQ's alert instances and heartbeats, with an index of the live (pending or firing)
/// instance per fingerprint of the current version.
#[derive(Debug, Default)]
pub(crate) struct AlertBook {
    pub alerts: BTreeMap<String, Alert>,
    /// ABSENT FOR: per key fingerprint.
    pub heartbeats: BTreeMap<String, Heartbeat>,
    active: BTreeMap<String, String>,
}

fn is_live(a: &Alert) -> bool {
    a.state == "pending" || a.state == "firing"
}

/// Severity order for escalation: info < warning < error < critical; others rank lowest.
pub(crate) fn rank(severity: &str) -> u8 {
    match severity.to_ascii_lowercase().as_str() {
        "info" => 1,
        "warning" => 2,
        "error" => 3,
        "critical" => 4,
        _ => 0,
    }
}

impl AlertBook {
    /// A book over restored alerts; `version` is the CQ version whose instances are live.
    pub(crate) fn new(
        alerts: impl IntoIterator<Item = Alert>,
        heartbeats: BTreeMap<String, Heartbeat>,
        version: u64,
    ) -> Self {
        let alerts: BTreeMap<String, Alert> = alerts
            .into_iter()
            .map(|a| (a.alert_id.clone(), a))
            .collect();
        let active = alerts
            .values()
            .filter(|a| a.cq_version == version && is_live(a))
            .map(|a| (a.fingerprint.clone(), a.alert_id.clone()))
            .collect();
        Self {
            alerts,
            heartbeats,
            active,
        }
    }

    /// Resolves every pending or firing alert with `reason` (DROP, or the old version on
    /// CREATE OR REPLACE) at event time `at`.
    pub(crate) fn close_all(
        &mut self,
        keep: impl Fn(&Alert) -> bool,
        reason: &str,
        at: i64,
        now_us: i64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for a in self.alerts.values_mut().filter(|a| is_live(a) && !keep(a)) {
            a.resolved_reason = Some(reason.to_string());
            out.push(resolve(a, at, now_us));
            self.active.remove(&a.fingerprint);
        }
        out
    }

    /// Forgets resolved alerts that resolved more than `retention_us` ago (wall clock).
    pub(crate) fn prune(&mut self, retention_us: i64, now_us: i64) -> usize {
        let before = self.alerts.len();
        self.alerts.retain(|_, a| {
            a.resolved_at
                .is_none_or(|r| r.saturating_add(retention_us) >= now_us)
        });
        before - self.alerts.len()
    }
}

fn resolve(a: &mut Alert, at: i64, now_us: i64) -> Transition {
    a.state = "resolved".into();
    a.resolved_at = Some(now_us);
    a.episode.resolved_event = Some(at);
    Transition::new(TransitionKind::Resolved, "", at, a)
}

impl AlertRule {
    /// Folds the rows of `out` into `book`; returns the transitions they caused.
    pub(crate) fn observe(
        &self,
        out: &CqOutput,
        book: &mut AlertBook,
        now_us: i64,
    ) -> Result<Vec<Transition>, CqError> {
        let mut transitions = Vec::new();
        for obs in self.observations(out, now_us)? {
            if self.absent_us.is_some() {
                self.heartbeat(obs, book, now_us, &mut transitions);
            } else {
                self.fold(obs, book, now_us, &mut transitions);
            }
        }
        Ok(transitions)
    }

    fn fold(&self, obs: Observation, book: &mut AlertBook, now_us: i64, out: &mut Vec<Transition>) {
        let live = book
            .active
            .get(&obs.fingerprint)
            .and_then(|id| book.alerts.get_mut(id));
        if let Some(a) = live {
            a.observation_count += 1;
            a.last_seen = now_us;
            a.last_event = a.last_event.max(obs.at);
            a.value = obs.value;
            a.annotations = obs.annotations;
            a.severity = obs.severity;
            if let Some((start, end)) = obs.window {
                if a.window_start.is_none_or(|s| start > s) {
                    a.episode.windows += 1;
                    a.window_start = Some(start);
                    a.window_end = Some(end);
                }
                a.episode.last_window_end = a.episode.last_window_end.max(end);
            }
            if a.state == "pending" {
                if self.ripe(a) {
                    out.push(fire(a, obs.at, now_us));
                }
                return;
            }
            let severity_rank = rank(&a.severity);
            if severity_rank > a.episode.notified_rank {
                a.episode.notified_rank = severity_rank;
                a.episode.last_notified = a.episode.last_notified.max(obs.at);
                let severity = a.severity.clone();
                out.push(Transition::new(
                    TransitionKind::Escalated,
                    &severity,
                    obs.at,
                    a,
                ));
            } else if obs.at >= a.episode.last_notified.saturating_add(self.cooldown_us) {
                a.episode.repeats += 1;
                a.episode.last_notified = obs.at;
                let n = a.episode.repeats.to_string();
                out.push(Transition::new(TransitionKind::Repeated, &n, obs.at, a));
            }
            return;
        }
        let alert = self.instance(&obs, book, now_us);
        let id = alert.alert_id.clone();
        book.active.insert(alert.fingerprint.clone(), id.clone());
        let a = book.alerts.entry(id).or_insert(alert);
        if self.ripe(a) {
            out.push(fire(a, obs.at, now_us));
        } else {
            out.push(Transition::new(TransitionKind::Pending, "", obs.at, a));
        }
    }

    /// A new pending instance for `obs`, its id anchored at `obs.at` (salted with an
    /// episode number if an earlier episode had the same anchor, e.g. after late data).
    fn instance(&self, obs: &Observation, book: &AlertBook, now_us: i64) -> Alert {
        let version = self.version.to_string();
        let anchor = obs.at.to_string();
        let mut alert_id = hex_hash(&[&self.cq_name, &version, &obs.fingerprint, &anchor]);
        let mut n: u64 = 1;
        while book.alerts.contains_key(&alert_id) {
            n += 1;
            alert_id = hex_hash(&[
                &self.cq_name,
                &version,
                &obs.fingerprint,
                &anchor,
                &n.to_string(),
            ]);
        }
        Alert {
            alert_id,
            cq_name: self.cq_name.clone(),
            cq_version: self.version,
            fingerprint: obs.fingerprint.clone(),
            labels: serde_json::Value::Object(obs.labels.clone()).to_string(),
            severity: obs.severity.clone(),
            state: "pending".into(),
            first_seen: now_us,
            fired_at: now_us,
            last_seen: now_us,
            observation_count: 1,
            window_start: obs.window.map(|w| w.0),
            window_end: obs.window.map(|w| w.1),
            value: obs.value.clone(),
            late: obs.late,
            resolved_at: None,
            last_event: obs.at,
            annotations: obs.annotations.clone(),
            resolved_reason: None,
            episode: Episode {
                anchor: obs.at,
                last_window_end: obs.window.map_or(0, |w| w.1),
                windows: 1,
                ..Episode::default()
            },
        }
    }

    /// FOR is met.
    fn ripe(&self, a: &Alert) -> bool {
        match self.pending {
            Pending::None => true,
            Pending::Windows(n) => a.episode.windows >= n,
            Pending::Micros(d) => a.last_event.saturating_sub(a.episode.anchor) >= d,
        }
    }

    /// ABSENT FOR: a row is a heartbeat of its key; a newer one ends the key's absence.
    fn heartbeat(
        &self,
        obs: Observation,
        book: &mut AlertBook,
        now_us: i64,
        out: &mut Vec<Transition>,
    ) {
        let hb = book
            .heartbeats
            .entry(obs.fingerprint.clone())
            .or_insert_with(|| Heartbeat {
                labels: obs.labels.clone(),
                last: i64::MIN,
                value: String::new(),
                severity: String::new(),
                annotations: String::new(),
            });
        if obs.covers_to <= hb.last {
            return;
        }
        hb.last = obs.covers_to;
        hb.value = obs.value;
        hb.severity = obs.severity;
        hb.annotations = obs.annotations;
        let absent = fingerprint(&absent_labels(&hb.labels));
        if let Some(a) = book
            .active
            .remove(&absent)
            .and_then(|id| book.alerts.get_mut(&id))
        {
            a.last_seen = now_us;
            out.push(resolve(a, obs.at, now_us));
        }
    }

    /// The watermark reached `w`: ends pending and firing instances whose condition has
    /// been false long enough, and opens `absent` instances for silent keys.
    pub(crate) fn advance(&self, book: &mut AlertBook, w: i64, now_us: i64) -> Vec<Transition> {
        let mut out = Vec::new();
        let live: Vec<(String, String)> = book
            .active
            .iter()
            .map(|(f, id)| (f.clone(), id.clone()))
            .collect();
        for (fp, id) in live {
            let Some(a) = book.alerts.get_mut(&id) else {
                book.active.remove(&fp);
                continue;
            };
            if a.episode.absent {
                continue;
            }
            // The event time from which the condition counts as false.
            let false_since = match self.shape {
                QueryShape::PerRow => a.last_event.saturating_add(self.resolve_after_us),
                QueryShape::Windowed => a.episode.last_window_end.saturating_add(self.slide_us),
            };
            if w < false_since {
                continue;
            }
            if a.state == "pending" {
                out.push(Transition::new(
                    TransitionKind::Inactive,
                    "",
                    false_since,
                    a,
                ));
                book.alerts.remove(&id);
                book.active.remove(&fp);
                continue;
            }
            let end = false_since.saturating_add(self.keep_firing_us);
            if w >= end {
                out.push(resolve(a, end, now_us));
                book.active.remove(&fp);
            }
        }
        if let Some(d) = self.absent_us {
            self.absences(book, w, d, now_us, &mut out);
        }
        out
    }

    fn absences(
        &self,
        book: &mut AlertBook,
        w: i64,
        d: i64,
        now_us: i64,
        out: &mut Vec<Transition>,
    ) {
        let silent: Vec<Heartbeat> = book
            .heartbeats
            .values()
            .filter(|hb| hb.last.saturating_add(d) <= w)
            .cloned()
            .collect();
        for hb in silent {
            let labels = absent_labels(&hb.labels);
            let fp = fingerprint(&labels);
            if book.active.contains_key(&fp) {
                continue;
            }
            let since = hb.last.saturating_add(d);
            let obs = Observation {
                fingerprint: fp.clone(),
                labels,
                value: hb.value.clone(),
                annotations: hb.annotations.clone(),
                severity: hb.severity.clone(),
                at: since,
                covers_to: since,
                window: None,
                late: false,
            };
            let mut alert = self.instance(&obs, book, now_us);
            alert.observation_count = 0;
            alert.window_start = Some(hb.last);
            alert.window_end = Some(since);
            alert.episode.absent = true;
            let id = alert.alert_id.clone();
            book.active.insert(fp, id.clone());
            let a = book.alerts.entry(id).or_insert(alert);
            out.push(fire(a, since, now_us));
        }
    }
}

fn absent_labels(
    key: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut labels = key.clone();
    labels.insert(
        ABSENT_LABEL.into(),
        serde_json::Value::String("true".into()),
    );
    labels
}

fn fire(a: &mut Alert, at: i64, now_us: i64) -> Transition {
    a.state = "firing".into();
    a.fired_at = now_us;
    a.episode.fired_event = Some(at);
    a.episode.notified_rank = rank(&a.severity);
    a.episode.last_notified = at;
    Transition::new(TransitionKind::Fired, "", at, a)
}

#[cfg(test)]
mod tests;
