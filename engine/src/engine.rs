//! The embedded engine (stub: the real implementation replaces this module).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::EngineError;
use crate::model::{dead_letters_schema, logs_schema};

/// How the embedded engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory holding the WAL, the cold tier and the catalog.
    pub data_dir: PathBuf,
}

impl EngineConfig {
    /// A configuration with defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into() }
    }
}

/// The running engine, shared by every connection.
pub struct Engine {
    _config: EngineConfig,
}

impl Engine {
    /// Opens (or creates) the data directory and replays the WAL.
    pub async fn open(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        Ok(Arc::new(Self { _config: config }))
    }

    /// A fresh DataFusion session (one per client connection) with `logs`, `logs_hot`,
    /// `logs_cold` and `dead_letters` registered and `information_schema` on.
    pub fn session_context(&self) -> SessionContext {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("logsphere", "public");
        let ctx = SessionContext::new_with_config(config);
        for (name, schema) in [
            ("logs", logs_schema()),
            ("logs_hot", logs_schema()),
            ("logs_cold", logs_schema()),
            ("dead_letters", dead_letters_schema()),
        ] {
            if let Ok(t) = MemTable::try_new(schema, vec![vec![]]) {
                let _ = ctx.register_table(name, Arc::new(t));
            }
        }
        ctx
    }
}
