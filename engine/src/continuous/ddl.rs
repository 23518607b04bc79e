//! CREATE, DROP and ALTER of continuous queries.

use std::collections::BTreeMap;
use std::sync::Arc;

use logsphere_sql::CreateContinuousQuery;

use super::backfill::BackfillPlan;
use super::definitions::{CqDefinition, CqState};
use super::hosting::{HostedCq, checkpoint_path, event_now, notify_on};
use super::lifecycle::AlertBook;
use super::notify::AlertEvent;
use super::registry::{CqRegistry, History};
use super::{CqError, StorageError};

/// What `CREATE CONTINUOUS QUERY` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Replaced,
    /// `IF NOT EXISTS` and the name was taken: nothing changed.
    Exists,
}
/// The version and creation time a definition has cluster-wide (cluster mode): every node
/// builds it with these, so its alerts get the same ids everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedVersion {
    pub version: u64,
    pub created_at: i64,
}

impl CqRegistry {
    /// `CREATE [OR REPLACE] CONTINUOUS QUERY [IF NOT EXISTS]`: validates the body by
    /// building the runtime, then stores the definition. `START FROM` other than NOW needs
    /// the stored logs: see [`Self::create_with_history`].
    pub async fn create(
        &self,
        cq: &CreateContinuousQuery,
        now_us: i64,
    ) -> Result<Created, CqError> {
        self.create_with_history(cq, now_us, None, None).await
    }

    /// [`Self::create`] with `history`, which, called under the registry lock with the start
    /// (µs) and the last WAL sequence number fed to CQs, fixes what a `START FROM`
    /// backfill reads. The caller then runs the backfill ([`super::backfill::run`]).
    pub(crate) async fn create_with_history(
        &self,
        cq: &CreateContinuousQuery,
        now_us: i64,
        history: Option<&History<'_>>,
        shared: Option<SharedVersion>,
    ) -> Result<Created, CqError> {
        let start = super::backfill::start_from_us(cq).await?;
        // Cluster mode reads its history from the shared tiers (`cluster/continuous.rs`).
        let cluster = self
            .cut_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed);
        if start.is_some() && history.is_none() && !cluster {
            return Err(CqError::Unsupported {
                sql: cq.body_sql.clone(),
                reason: "START FROM needs the engine's stored logs".into(),
            });
        }
        let name = cq.name.to_string();
        let existing = {
            let inner = self.lock();
            (inner.live.get(&name).map(|l| l.def.version))
                .or_else(|| inner.failed.get(&name).map(|(d, _)| d.version))
        };
        if let (Some(v), Some(wanted)) = (existing, shared)
            && v == wanted.version
        {
            return Ok(Created::Exists);
        }
        if existing.is_some() && shared.is_none() {
            if cq.if_not_exists {
                return Ok(Created::Exists);
            }
            if !cq.or_replace {
                return Err(CqError::AlreadyExists(name));
            }
        }
        let def = CqDefinition {
            name: name.clone(),
            version: shared.map_or_else(|| existing.map_or(1, |v| v + 1), |s| s.version),
            sql_text: cq.sql_text.clone(),
            state: CqState::Running,
            created_at: shared.map_or(now_us, |s| s.created_at),
            from_seq: 0,
            backfill: None,
        };
        let mut live = HostedCq::build(def, None, &self.notifier, &self.tables).await?;
        let mut inner = self.lock();
        let taken = inner.live.contains_key(&name) || inner.failed.contains_key(&name);
        if taken != existing.is_some() {
            return Err(CqError::AlreadyExists(name));
        }
        let mut cut = inner.last_seq;
        if let Some(from_us) = start {
            let plan = match history {
                Some(history) => history(from_us, inner.last_seq)?,
                // Cluster mode: no WAL; the live feed is queued from here on.
                None => BackfillPlan {
                    from_us,
                    files: Vec::new(),
                    wal_from: cut + 1,
                    cut,
                },
            };
            cut = plan.cut;
            live.def.backfill = Some(plan);
            live.backfill_queue = Some(Vec::new());
        }
        live.def.from_seq = cut + 1;
        live.seq = cut;
        live.checkpointed_seq = cut;
        let created_tables = live.ensure_tables()?;
        let old_failed = inner.failed.remove(&name);
        let old = inner.live.insert(name.clone(), live);
        let outcome = if let Some(old) = old {
            // A new version starts with fresh state; the old version's alerts stay listed
            // (and are resolved `rule_replaced` once the new definition is stored).
            let l = inner.live.get_mut(&name).expect("just inserted");
            l.book.alerts.extend(old.book.alerts);
            l.replaced_channels = old.channels;
            let old_events =
                std::mem::take(&mut *old.events.lock().unwrap_or_else(|p| p.into_inner()));
            l.events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(old_events);
            Created::Replaced
        } else if old_failed.is_some() {
            Created::Replaced
        } else {
            Created::New
        };
        if let Err(e) = self.save_definitions(&inner) {
            inner.live.remove(&name);
            if let Some(f) = old_failed {
                inner.failed.insert(name, f);
            }
            for t in created_tables {
                let _ = self.tables.remove(&t);
            }
            return Err(e);
        }
        // Hold the WAL from the new CQ's first entry before anything can flush it away.
        self.update_hold(&inner);
        let dir = self.ckpt_dir.clone();
        if let Some(l) = inner.live.get_mut(&name) {
            let version = l.def.version;
            let at = event_now(l);
            let replaced =
                l.book
                    .close_all(|a| a.cq_version == version, "rule_replaced", at, now_us);
            // The old version's channels deliver its `rule_replaced` notices; the events are
            // this CQ's now, so the new version's ticks retry them on those channels too.
            let old_channels = std::mem::take(&mut l.replaced_channels);
            notify_on(&l.notifier, &l.events, &old_channels, &replaced, now_us);
            for c in old_channels {
                if !l.channels.iter().any(|k| k.name() == c.name()) {
                    l.channels.push(c);
                }
            }
            l.checkpoint(&dir, now_us)?;
        }
        self.update_hold(&inner);
        Ok(outcome)
    }

    /// `DROP CONTINUOUS QUERY [IF EXISTS]`; returns whether one was dropped. Its pending
    /// and firing alerts resolve with reason `rule_dropped` (notified on its channels once,
    /// with retries) and stay listed, with its events, for their retention.
    pub fn drop_query(&self, name: &str, if_exists: bool) -> Result<bool, CqError> {
        let now_us = super::now_us();
        let mut inner = self.lock();
        if let Some(failed) = inner.failed.remove(name) {
            if let Err(e) = self.save_definitions(&inner) {
                inner.failed.insert(name.to_string(), failed);
                return Err(e);
            }
            return Ok(true);
        }
        let Some(old) = inner.live.remove(name) else {
            return if if_exists {
                Ok(false)
            } else {
                Err(CqError::NotFound(name.to_string()))
            };
        };
        // Resolve copies, so a failed save leaves the CQ as it was.
        let mut closing = AlertBook::new(
            old.book.alerts.values().cloned(),
            BTreeMap::new(),
            old.def.version,
        );
        let resolved = closing.close_all(|_| false, "rule_dropped", event_now(&old), now_us);
        let kept_before = inner.dropped.clone();
        inner.dropped.extend(closing.alerts);
        let old_events: Vec<AlertEvent> = old
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let events_before = {
            let mut dropped = inner
                .dropped_events
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let before = dropped.clone();
            dropped.extend(old_events.into_iter().map(|e| (e.event_id.clone(), e)));
            before
        };
        if let Err(e) = self.save_definitions(&inner) {
            inner.dropped = kept_before;
            *inner
                .dropped_events
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = events_before;
            inner.live.insert(name.to_string(), old);
            return Err(e);
        }
        let events = Arc::clone(&inner.dropped_events);
        notify_on(&self.notifier, &events, &old.channels, &resolved, now_us);
        for c in old.channels {
            if !inner.dropped_channels.iter().any(|k| k.name() == c.name()) {
                inner.dropped_channels.push(c);
            }
        }
        self.update_hold(&inner);
        let path = checkpoint_path(&self.ckpt_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }

    /// `ALTER CONTINUOUS QUERY … PAUSE | RESUME`. A resumed CQ re-reads the WAL from
    /// where it paused (its WAL hold kept those entries), so a pause skips nothing.
    pub fn set_state(&self, name: &str, state: CqState) -> Result<(), CqError> {
        let resume_from = self.store_state(name, state, true)?;
        // Not under the registry lock: the feed's lock is taken first when it goes live.
        if let (Some(from), Some(feed)) = (resume_from, self.feed.get()) {
            feed.rewind(from);
        }
        Ok(())
    }

    /// Stores `state` for `name`. With `replay`, a resumed CQ is marked catching up and the
    /// position to re-read from is returned; without, it goes on with what comes next.
    pub(super) fn store_state(
        &self,
        name: &str,
        state: CqState,
        replay: bool,
    ) -> Result<Option<u64>, CqError> {
        let mut inner = self.lock();
        let live = inner
            .live
            .get_mut(name)
            .ok_or_else(|| CqError::NotFound(name.to_string()))?;
        let before = (live.def.state, live.catching_up);
        live.def.state = state;
        let resumed = replay && before.0 != CqState::Running && state == CqState::Running;
        let from = live.seq + 1;
        live.catching_up = resumed || (replay && before.1);
        if let Err(e) = self.save_definitions(&inner) {
            if let Some(l) = inner.live.get_mut(name) {
                (l.def.state, l.catching_up) = before;
            }
            return Err(e);
        }
        Ok(resumed.then_some(from))
    }
}
