//! DDL to spec: the parsed `CREATE CONTINUOUS QUERY` as the runtime needs it ([`CqSpec`]),
//! refusing what this version cannot run yet.

use logsphere_sql::{CreateContinuousQuery, Statement};

use super::alerts::body_with_severity;
use super::{CqError, CqSpec, EmitPolicy, OnLate, StorageError};

/// The `CREATE CONTINUOUS QUERY` in `sql_text`.
pub(super) fn parse_create(sql_text: &str) -> Result<CreateContinuousQuery, CqError> {
    let statements = logsphere_sql::parse_statements(sql_text).map_err(StorageError::from)?;
    match statements.into_iter().next() {
        Some(Statement::CreateContinuousQuery(cq)) => Ok(*cq),
        _ => Err(StorageError::NotACreate.into()),
    }
}

/// The runtime spec for a parsed `CREATE`, refusing what v1 cannot run yet.
pub fn spec_from(cq: &CreateContinuousQuery) -> Result<CqSpec, CqError> {
    let unsupported = |what: &str| {
        Err(CqError::Unsupported {
            sql: cq.body_sql.clone(),
            reason: format!("{what} is not supported yet"),
        })
    };
    if cq.processing_time {
        return unsupported("PROCESSING TIME");
    }
    if cq.mode != logsphere_sql::Mode::Active {
        return unsupported("MODE SHADOW");
    }
    if !cq.event_time.value.eq_ignore_ascii_case("timestamp") {
        return unsupported("EVENT TIME other than `timestamp`");
    }
    // A SEVERITY expression runs as a hidden output column of the body.
    let body = body_with_severity(cq)?.unwrap_or_else(|| cq.body_sql.clone());
    let mut spec = CqSpec::new(body);
    spec.watermark = cq.watermark;
    spec.allowed_lateness = cq.allowed_lateness;
    spec.on_late = match cq.on_late {
        logsphere_sql::LateAction::Drop => OnLate::Drop,
        logsphere_sql::LateAction::Update => OnLate::Update,
        logsphere_sql::LateAction::Recompute => {
            return unsupported(
                "ON LATE RECOMPUTE (use ON LATE UPDATE: it corrects the window, and an INTO row, in memory within ALLOWED LATENESS)",
            );
        }
        logsphere_sql::LateAction::Into(_) => return unsupported("ON LATE INTO"),
    };
    spec.emit = match cq.emit {
        // §5.3: a materialised row is written once, when its window is final.
        None if cq.into.is_some() => Some(EmitPolicy::OnWindowClose),
        None => None,
        Some(logsphere_sql::EmitPolicy::OnThreshold) => Some(EmitPolicy::OnThreshold),
        Some(logsphere_sql::EmitPolicy::OnWindowClose) => Some(EmitPolicy::OnWindowClose),
        Some(logsphere_sql::EmitPolicy::OnUpdate) => return unsupported("EMIT ON UPDATE"),
        Some(logsphere_sql::EmitPolicy::Every(_)) => return unsupported("EMIT EVERY"),
    };
    spec.max_keys = cq
        .max_keys()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if let Some(d) = cq.idle_timeout() {
        spec.idle_timeout = d;
    }
    if let Some(d) = cq.max_ingest_delay() {
        spec.max_ingest_delay = d;
    }
    Ok(spec)
}
