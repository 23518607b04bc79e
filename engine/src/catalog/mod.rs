//! The catalog: the cold tier's manifest and horizon, committed by compare-and-set.
//!
//! - [`local`]: embedded mode. One JSON manifest file, replaced atomically.
//! - Cluster mode keeps the same manifest in Cassandra behind a lightweight transaction
//!   (`hot/cassandra`'s progress rows use the same fencing); see `docs/cluster.md`.

pub mod local;

pub(crate) use local::atomic_write;
pub use local::{ColdFile, LocalCatalog, Manifest, RetiredFile, TierCut};
