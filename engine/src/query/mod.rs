//! SQL over both tiers: the table providers DataFusion plans against.

pub mod json;
pub mod managed;
mod promoted;
pub mod system;
pub mod tables;

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

/// A DataFusion session set up as every LogSphere session is, before any table is added:
/// catalog `logsphere`, schema `public`, `information_schema`, DataFusion's default
/// features, the log functions of `logsphere-udfs` (with its `EXTRACT` planner ahead of
/// DataFusion's, so that `EXTRACT(second FROM t)` keeps the fraction) and PostgreSQL's JSON
/// operators ([`json`]). Object stores (the cold tier) come from `runtime`.
///
/// [`crate::Engine::session_context`] adds the engine's tables to one; `logsphere report`
/// adds the cold tier's files.
pub fn base_session(runtime: Arc<RuntimeEnv>) -> SessionContext {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("logsphere", "public");
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features();
    if let Some(planners) = builder.expr_planners() {
        planners.insert(0, Arc::new(logsphere_udfs::date_part::ExtractPlanner));
    }
    let state = builder.build();
    let ctx = SessionContext::new_with_state(state);
    logsphere_udfs::register_all(&ctx);
    json::register(&ctx).expect("registering the JSON functions");
    ctx
}
