//! Per-connection state: the connection's own DataFusion session and its run-time
//! parameters (what `SET` changes and `SHOW` / `current_setting()` report).
//!
//! Nothing here is shared between connections, so a `SET` in one connection is invisible in
//! every other one, including `SET datafusion.*` (see [`Session::set`] for which DataFusion
//! options a client may change).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::execution::{SessionState, TaskContext};
use datafusion::prelude::SessionContext;
use pgwire::error::PgWireResult;
use pgwire::types::format::FormatOptions;

use super::errors::{sqlstate, user_error};

/// `server_version` as sent in ParameterStatus: a 16.x value, so psql and pgjdbc pick their
/// modern catalog queries, in the `N.N (vendor …)` shape packaged PostgreSQL builds use.
pub(crate) const SERVER_VERSION: &str = concat!("16.6 (LogSphere ", env!("CARGO_PKG_VERSION"), ")");
/// `server_version_num` for [`SERVER_VERSION`].
pub(crate) const SERVER_VERSION_NUM: &str = "160006";

/// One run-time parameter.
#[derive(Debug, Clone)]
struct Param {
    /// The spelling PostgreSQL uses (`DateStyle`, `TimeZone`), for ParameterStatus and SHOW ALL.
    name: String,
    value: String,
    default: String,
    /// Sent to the client in a ParameterStatus message whenever it changes (GUC_REPORT).
    reported: bool,
    read_only: bool,
}

/// A connection's run-time parameters, keyed by lower-case name.
#[derive(Debug, Clone)]
pub(crate) struct SessionVars {
    params: BTreeMap<String, Param>,
}

/// The parameters every connection starts with: (name, value, reported, read-only).
fn defaults(user: &str) -> Vec<(&'static str, String, bool, bool)> {
    vec![
        ("application_name", String::new(), true, false),
        ("client_encoding", "UTF8".into(), true, false),
        ("client_min_messages", "notice".into(), false, false),
        ("DateStyle", "ISO, MDY".into(), true, false),
        ("IntervalStyle", "postgres".into(), true, false),
        ("TimeZone", "UTC".into(), true, false),
        ("search_path", "public".into(), true, false),
        ("standard_conforming_strings", "on".into(), true, false),
        ("extra_float_digits", "1".into(), false, false),
        ("bytea_output", "hex".into(), false, false),
        ("statement_timeout", "0".into(), false, false),
        (
            "transaction_isolation",
            "read committed".into(),
            false,
            false,
        ),
        (
            "default_transaction_isolation",
            "read committed".into(),
            false,
            false,
        ),
        ("transaction_read_only", "on".into(), false, true),
        ("default_transaction_read_only", "on".into(), true, true),
        ("session_authorization", user.to_owned(), true, true),
        ("is_superuser", "off".into(), true, true),
        ("in_hot_standby", "off".into(), true, true),
        ("integer_datetimes", "on".into(), true, true),
        ("server_encoding", "UTF8".into(), true, true),
        ("server_version", SERVER_VERSION.into(), true, true),
        ("server_version_num", SERVER_VERSION_NUM.into(), false, true),
        ("max_identifier_length", "63".into(), false, true),
        ("lc_collate", "C".into(), false, true),
        ("lc_ctype", "C".into(), false, true),
    ]
}

impl SessionVars {
    /// The startup values for a connection of `user`.
    pub(crate) fn new(user: &str) -> Self {
        let params = defaults(user)
            .into_iter()
            .map(|(name, value, reported, read_only)| {
                let param = Param {
                    name: name.to_owned(),
                    default: value.clone(),
                    value,
                    reported,
                    read_only,
                };
                (name.to_ascii_lowercase(), param)
            })
            .collect();
        Self { params }
    }

    /// These parameters, with `name`'s startup value (and what `RESET` returns to) set to
    /// `value`: the server's configured default.
    pub(crate) fn with_default(mut self, name: &str, value: &str) -> PgWireResult<Self> {
        let key = name.to_ascii_lowercase();
        let value = normalise_value(&key, value)?;
        if let Some(p) = self.params.get_mut(&key) {
            p.default = value.clone();
            p.value = value;
        }
        Ok(self)
    }

    /// The value of `name` (case-insensitive), if the parameter exists.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(&name.to_ascii_lowercase())
            .map(|p| p.value.as_str())
    }

    /// Every parameter as (name, value), for `SHOW ALL`.
    pub(crate) fn all(&self) -> Vec<(String, String)> {
        self.params
            .values()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// The parameters a client is told about right after authentication.
    pub(crate) fn reported(&self) -> Vec<(String, String)> {
        self.params
            .values()
            .filter(|p| p.reported)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// Sets `name` to `value`. Returns the (name, value) to report in a ParameterStatus
    /// message, if the parameter is one clients track.
    pub(crate) fn set(
        &mut self,
        name: &str,
        value: &str,
    ) -> PgWireResult<Option<(String, String)>> {
        let key = name.to_ascii_lowercase();
        let value = normalise_value(&key, value)?;
        match self.params.get_mut(&key) {
            Some(p) if p.read_only => Err(user_error(
                sqlstate::CANT_CHANGE_RUNTIME_PARAM,
                format!("parameter \"{}\" cannot be changed", p.name),
            )),
            Some(p) => {
                p.value = value;
                Ok(p.reported.then(|| (p.name.clone(), p.value.clone())))
            }
            None => {
                // PostgreSQL refuses unknown names; clients (Tableau, BI tools) send settings
                // LogSphere has no use for, and refusing them would break their startup.
                let param = Param {
                    name: key.clone(),
                    default: String::new(),
                    value,
                    reported: false,
                    read_only: false,
                };
                self.params.insert(key, param);
                Ok(None)
            }
        }
    }

    /// Applies a parameter from the startup packet: it also becomes what RESET returns to.
    pub(crate) fn set_startup(&mut self, name: &str, value: &str) -> PgWireResult<()> {
        self.set(name, value)?;
        if let Some(p) = self.params.get_mut(&name.to_ascii_lowercase()) {
            p.default = p.value.clone();
        }
        Ok(())
    }

    /// Records the authenticated user (`session_authorization`, read-only for clients).
    pub(crate) fn set_login(&mut self, user: &str) {
        if let Some(p) = self.params.get_mut("session_authorization") {
            p.value = user.to_owned();
            p.default = user.to_owned();
        }
    }

    /// Resets `name` to its startup value; returns what to report, as for [`Self::set`].
    pub(crate) fn reset(&mut self, name: &str) -> Option<(String, String)> {
        let p = self.params.get_mut(&name.to_ascii_lowercase())?;
        if p.read_only || p.value == p.default {
            return None;
        }
        p.value = p.default.clone();
        p.reported.then(|| (p.name.clone(), p.value.clone()))
    }

    /// Resets every parameter (`RESET ALL`, `DISCARD ALL`); returns what to report.
    pub(crate) fn reset_all(&mut self) -> Vec<(String, String)> {
        let names: Vec<String> = self.params.keys().cloned().collect();
        names.iter().filter_map(|n| self.reset(n)).collect()
    }

    /// Text output options (DateStyle, IntervalStyle, bytea_output, extra_float_digits).
    pub(crate) fn format_options(&self) -> FormatOptions {
        let mut options = FormatOptions::default();
        if let Some(v) = self.get("datestyle") {
            options.date_style = v.to_owned();
        }
        if let Some(v) = self.get("intervalstyle") {
            options.interval_style = v.to_owned();
        }
        if let Some(v) = self.get("bytea_output") {
            options.bytea_output = v.to_owned();
        }
        if let Some(v) = self
            .get("extra_float_digits")
            .and_then(|v| v.parse::<i8>().ok())
        {
            options.extra_float_digits = v;
        }
        if let Some(v) = self.get("timezone") {
            options.time_zone = v.to_owned();
        }
        options
    }
}

/// Validates the values whose meaning LogSphere depends on.
fn normalise_value(key: &str, value: &str) -> PgWireResult<String> {
    match key {
        "client_encoding" | "names" => {
            let v = value.trim().to_ascii_uppercase().replace(['-', '_'], "");
            if v == "UTF8" || v == "UNICODE" {
                Ok("UTF8".to_owned())
            } else {
                Err(user_error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "client_encoding \"{value}\" is not supported: LogSphere speaks UTF8 only"
                    ),
                ))
            }
        }
        "timezone"
            if value.eq_ignore_ascii_case("local") || value.eq_ignore_ascii_case("default") =>
        {
            Ok("UTC".to_owned())
        }
        "timezone" => time_zone(value).ok_or_else(|| {
            user_error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"TimeZone\": \"{value}\" (expected a time zone \
                     name such as 'Europe/Paris' or 'UTC', or an offset such as '+02:00')"
                ),
            )
        }),
        "extra_float_digits" => match value.trim().parse::<i8>() {
            Ok(n) if (-15..=3).contains(&n) => Ok(n.to_string()),
            _ => Err(user_error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"extra_float_digits\": \"{value}\" (expected -15 to 3)"
                ),
            )),
        },
        "statement_timeout" => match timeout_ms(value) {
            Some(ms) => Ok(format_ms(ms)),
            None => Err(user_error(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"statement_timeout\": \"{value}\" \
                     (expected milliseconds, or a number with a unit: ms, s, min, h, d)"
                ),
            )),
        },
        _ => Ok(value.to_owned()),
    }
}

/// A TimeZone value as Arrow reads it: an IANA name (`Europe/Paris`, `UTC`), an offset
/// (`+02:00`), or a number of hours as in `SET TIME ZONE -7`. `None` if it is none of these.
fn time_zone(value: &str) -> Option<String> {
    use datafusion::arrow::array::timezone::Tz;
    let v = value.trim();
    if let Ok(hours) = v.parse::<f64>() {
        if !(-15.0..=15.0).contains(&hours) {
            return None;
        }
        let minutes = (hours * 60.0).round() as i64;
        let sign = if minutes < 0 { '-' } else { '+' };
        return Some(format!(
            "{sign}{:02}:{:02}",
            minutes.abs() / 60,
            minutes.abs() % 60
        ));
    }
    v.parse::<Tz>().is_ok().then(|| v.to_owned())
}

/// A `statement_timeout` value in milliseconds: a bare number is milliseconds, as in
/// PostgreSQL; `us`, `ms`, `s`, `min`, `h`, `d` units are accepted. `0` disables it.
pub(crate) fn timeout_ms(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    let ms = number * factor;
    (ms.is_finite() && (0.0..=i32::MAX as f64).contains(&ms)).then(|| ms.round() as u64)
}

/// Milliseconds as PostgreSQL shows a time setting: in the largest unit that divides it.
fn format_ms(ms: u64) -> String {
    match ms {
        0 => "0".to_owned(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The run-time parameters of one connection, shared with the SQL functions that read them
/// (`current_setting`).
pub(crate) type SharedVars = Arc<Mutex<SessionVars>>;

/// Locks `vars`; a poisoned lock (a panic elsewhere) still holds usable values.
pub(crate) fn lock(vars: &SharedVars) -> MutexGuard<'_, SessionVars> {
    vars.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything one client connection owns.
pub(crate) struct Session {
    /// The connection's own DataFusion session (tables, pg_catalog, options).
    pub(crate) ctx: SessionContext,
    /// The connection's run-time parameters.
    pub(crate) vars: SharedVars,
    /// The engine, for its query counter.
    pub(crate) engine: std::sync::Arc<logsphere_engine::Engine>,
    /// The connection's open SQL cursors.
    pub(crate) cursors: Arc<super::cursor::Cursors>,
    /// The connection as the server sees it: its running statement, and how to stop it.
    pub(crate) backend: Arc<super::backend::Backend>,
    /// The session's DataFusion state as planning reuses it (see [`Session::planning`]).
    pub(crate) planning: Planning,
}

/// The session's DataFusion state, taken once and reused by every statement until the
/// session's DataFusion options change: `SessionContext::state()` copies the whole state
/// (options, every function registry) and a task context copies it again, which costs more
/// than a small query's whole execution.
#[derive(Default)]
pub(crate) struct Planning {
    /// Bumped by every change of the session's DataFusion options (`SET datafusion.…`, the
    /// time zone); a plan optimized under another generation is optimized again.
    generation: AtomicU64,
    snapshot: Mutex<Option<PlanningState>>,
}

/// One snapshot of the session's DataFusion state, at a generation of its options.
#[derive(Clone)]
pub(crate) struct PlanningState {
    pub(crate) generation: u64,
    pub(crate) state: Arc<SessionState>,
    pub(crate) task: Arc<TaskContext>,
}

impl Planning {
    /// The generation of the session's DataFusion options.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks the session's DataFusion options as changed.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Re-creates the functions that read the session's options (`now()` reads the time zone),
/// as DataFusion's own `SET` does.
fn refresh_udfs(state: &mut datafusion::execution::SessionState) {
    use datafusion::execution::registry::FunctionRegistry;
    let options = state.config().options();
    let updated: Vec<_> = state
        .scalar_functions()
        .values()
        .filter_map(|udf| udf.inner().with_updated_config(options))
        .collect();
    for udf in updated {
        if let Err(e) = state.register_udf(Arc::new(udf)) {
            tracing::debug!(error = %e, "cannot re-register a function after a config change");
        }
    }
}

/// DataFusion option groups a client may change for its own session. The rest
/// (`datafusion.runtime.*`: memory and spill files, `datafusion.catalog.*`: where tables
/// live) concern the server, not the query.
const SETTABLE_DATAFUSION_PREFIXES: &[&str] = &[
    "datafusion.execution.",
    "datafusion.optimizer.",
    "datafusion.explain.",
    "datafusion.sql_parser.",
    "datafusion.format.",
];

impl Session {
    /// Sets a run-time parameter. `datafusion.*` names change this session's DataFusion
    /// options (only the groups in `SETTABLE_DATAFUSION_PREFIXES`); everything else is a
    /// PostgreSQL-style parameter.
    pub(crate) fn set(&self, name: &str, value: &str) -> PgWireResult<Option<(String, String)>> {
        let key = name.to_ascii_lowercase();
        if key.starts_with("datafusion.") {
            if !SETTABLE_DATAFUSION_PREFIXES
                .iter()
                .any(|p| key.starts_with(p))
            {
                return Err(user_error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "parameter \"{name}\" cannot be set over SQL: it configures the server, not this session \
                         (settable: {})",
                        SETTABLE_DATAFUSION_PREFIXES
                            .iter()
                            .map(|p| format!("{p}*"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let state = self.ctx.state_ref();
            let mut state = state.write();
            state
                .config_mut()
                .options_mut()
                .set(&key, value)
                .map_err(|e| {
                    user_error(sqlstate::INVALID_PARAMETER_VALUE, e.message().into_owned())
                })?;
            refresh_udfs(&mut state);
            self.planning.changed();
            return Ok(None);
        }
        lock(&self.vars).set(&key, value)
    }

    /// The connection's `TimeZone`.
    pub(crate) fn time_zone(&self) -> Option<String> {
        lock(&self.vars).get("timezone").map(str::to_owned)
    }

    /// Makes DataFusion's session time zone the connection's `TimeZone`, so that `now()`
    /// and casts to `timestamptz` are in it, as in PostgreSQL.
    pub(crate) fn sync_time_zone(&self) {
        let tz = self.time_zone();
        let state = self.ctx.state_ref();
        if state.read().config().options().execution.time_zone == tz {
            return;
        }
        let mut state = state.write();
        state.config_mut().options_mut().execution.time_zone = tz;
        refresh_udfs(&mut state);
        self.planning.changed();
    }

    /// The session's DataFusion state for planning and running a statement, taken anew
    /// only when the options changed since the last one. Its query start time is that of
    /// the snapshot: only plans without `now()` and other non-immutable functions may use
    /// it (see `query::Reusable`).
    pub(crate) fn planning(&self) -> PlanningState {
        let generation = self.planning.generation();
        let mut snapshot = self
            .planning
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(current) = snapshot.as_ref()
            && current.generation == generation
        {
            return current.clone();
        }
        let state = self.ctx.state();
        let task = Arc::new(TaskContext::from(&state));
        let current = PlanningState {
            generation,
            state: Arc::new(state),
            task,
        };
        *snapshot = Some(current.clone());
        current
    }

    /// The value `SHOW name` reports, or `None` for an unknown parameter.
    pub(crate) fn show(&self, name: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        if key.starts_with("datafusion.") {
            let state = self.ctx.state();
            return state
                .config()
                .options()
                .entries()
                .into_iter()
                .find(|e| e.key == key)
                .map(|e| e.value.unwrap_or_default());
        }
        lock(&self.vars).get(&key).map(str::to_owned)
    }
}

#[cfg(test)]
mod tests;
