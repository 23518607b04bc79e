//! The cold tier: Parquet files behind `object_store`, Hive-partitioned by date and hour.
//!
//! Files are written whole and only then named in the catalog, so a file the catalog does
//! not name is debris of an interrupted flush and is removed at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::datasource::listing::ListingTableUrl;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::EngineError;
use crate::catalog::{ColdFile, Manifest};

/// Rows per Parquet row group: big enough for fast scans, small enough to prune.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// Where cold files live and how they are written.
#[derive(Debug, Clone)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    /// `file:///…/cold/` (always ends with `/`).
    root_url: String,
    /// The local directory behind `store`, for fsync.
    local_root: PathBuf,
}

impl ColdStore {
    /// A cold store on the local disk under `root`.
    pub fn local(root: &Path) -> Result<Self, EngineError> {
        std::fs::create_dir_all(root).map_err(|source| EngineError::Io {
            path: root.into(),
            source,
        })?;
        let root = std::fs::canonicalize(root).map_err(|source| EngineError::Io {
            path: root.into(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&root)?;
        let root_url = format!("file://{}/", root.display());
        Ok(Self {
            store: Arc::new(store),
            root_url,
            local_root: root,
        })
    }

    /// The table URL DataFusion reads one file through.
    pub fn file_url(&self, path: &str) -> Result<ListingTableUrl, EngineError> {
        Ok(ListingTableUrl::parse(format!("{}{path}", self.root_url))?)
    }

    /// Writes `batch` as one Parquet file at `path` (zstd, page statistics) and makes it
    /// durable. `time_col` is the column whose range the catalog records.
    pub async fn write(
        &self,
        path: &str,
        batch: &RecordBatch,
        time_col: usize,
    ) -> Result<ColdFile, EngineError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4);
        let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
        writer.write(batch)?;
        writer.close()?;
        let bytes = buf.len() as u64;
        self.store.put(&ObjectPath::from(path), buf.into()).await?;
        // object_store's local put renames a finished temporary file into place; fsync the
        // file and its directory so the catalog never names a file a power cut could lose.
        let local = self.local_root.join(path);
        let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(&local).map_err(|source| EngineError::Io {
            path: local.clone(),
            source,
        })?;
        if let Some(dir) = local.parent() {
            sync(dir).map_err(|source| EngineError::Io {
                path: dir.into(),
                source,
            })?;
        }
        let (min_ts, max_ts) = crate::hot::timestamps(batch, time_col)
            .and_then(|t| Some((*t.iter().min()?, *t.iter().max()?)))
            .unwrap_or((0, 0));
        Ok(ColdFile {
            path: path.to_string(),
            min_ts,
            max_ts,
            rows: batch.num_rows() as u64,
            bytes,
        })
    }

    /// Deletes files under the table prefixes that `manifest` does not name.
    pub async fn remove_orphans(&self, manifest: &Manifest) -> Result<usize, EngineError> {
        let named: std::collections::HashSet<&str> = manifest
            .logs
            .iter()
            .chain(&manifest.dead_letters)
            .map(|f| f.path.as_str())
            .collect();
        let mut removed = 0;
        for prefix in ["logs", "dead_letters"] {
            let listed: Vec<_> = self
                .store
                .list(Some(&ObjectPath::from(prefix)))
                .try_collect()
                .await?;
            for meta in listed {
                if !named.contains(meta.location.as_ref()) {
                    tracing::info!(file = %meta.location, "removing a cold file no commit names (an interrupted flush)");
                    self.store.delete(&meta.location).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
