//! The cold tier: Parquet files behind `object_store`, Hive-partitioned by date and hour.
//!
//! Files are written whole and only then named in the catalog, so a file the catalog does
//! not name (live or retired by a compaction) is debris of an interrupted flush or
//! compaction and is removed at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::EngineError;
use crate::catalog::{ColdFile, Manifest};

mod timed;

/// The default of [`ColdStore::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Rows per Parquet row group: big enough for fast scans, small enough to prune.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// Where cold files live and how they are written.
#[derive(Debug, Clone)]
pub struct ColdStore {
    /// The store rooted at the cold root: paths are `logs/date=…/…`.
    store: Arc<dyn ObjectStore>,
    /// The store DataFusion reads through, registered under [`Self::base_url`] (for HDFS the
    /// whole file system, for local disk the file system root).
    reader: Arc<dyn ObjectStore>,
    /// `scheme://authority` the reader is registered for.
    base_url: url::Url,
    /// `file:///…/cold/` or `hdfs://nn:9000/…/` (always ends with `/`).
    root_url: String,
    /// The local directory behind `store`, for fsync (local stores only).
    local_root: Option<PathBuf>,
    /// How long one write may take before it counts as failed (a hung namenode or
    /// datanode must not hang tiering: the round fails and is retried), and one read
    /// before the query fails (a hung HDFS must not hang a query and its client).
    timeout: Duration,
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
        let base_url = url::Url::parse("file:///").map_err(|e| bad_url(&root_url, e))?;
        Ok(Self {
            store: Arc::new(store),
            reader: Arc::new(LocalFileSystem::new()),
            base_url,
            root_url,
            local_root: Some(root),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The cold store a URL names: `file:///dir` (local disk) or `hdfs://namenode:port/dir`
    /// (native HDFS; `core-site.xml`/`hdfs-site.xml` are read from `HADOOP_CONF_DIR` when
    /// it is set, so a logical name service works too). `key` names the setting in errors.
    pub fn open(url: &str, key: &str) -> Result<Self, EngineError> {
        let parsed = url::Url::parse(url).map_err(|e| EngineError::Config {
            key: key.into(),
            reason: format!("{url:?} is not a URL: {e}"),
        })?;
        match parsed.scheme() {
            "file" => {
                let path = parsed.to_file_path().map_err(|()| EngineError::Config {
                    key: key.into(),
                    reason: format!("{url:?} is not an absolute local path"),
                })?;
                Self::local(&path)
            }
            "hdfs" | "viewfs" => {
                let authority = match parsed.port() {
                    Some(port) => format!(
                        "{}://{}:{port}",
                        parsed.scheme(),
                        parsed.host_str().unwrap_or_default()
                    ),
                    None => format!(
                        "{}://{}",
                        parsed.scheme(),
                        parsed.host_str().unwrap_or_default()
                    ),
                };
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(EngineError::Config {
                        key: key.into(),
                        reason: format!("{url:?} names no namenode (hdfs://host:port/path)"),
                    });
                }
                let hdfs = hdfs_native_object_store::HdfsObjectStoreBuilder::new()
                    .with_url(authority.clone())
                    .build()
                    .map_err(|e| EngineError::Config {
                        key: key.into(),
                        reason: format!("cannot set up the HDFS client for {authority}: {e}"),
                    })?;
                let hdfs: Arc<dyn ObjectStore> = Arc::new(hdfs);
                let prefix = parsed.path().trim_matches('/').to_string();
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::clone(&hdfs)
                } else {
                    Arc::new(PrefixStore::new(Arc::clone(&hdfs), prefix.as_str()))
                };
                let root_url = if prefix.is_empty() {
                    format!("{authority}/")
                } else {
                    format!("{authority}/{prefix}/")
                };
                let base_url = url::Url::parse(&authority).map_err(|e| bad_url(&authority, e))?;
                Ok(Self {
                    store,
                    reader: hdfs,
                    base_url,
                    root_url,
                    local_root: None,
                    timeout: DEFAULT_TIMEOUT,
                })
            }
            other => Err(EngineError::Config {
                key: key.into(),
                reason: format!(
                    "{url:?}: the {other}:// scheme is not supported; use file:///path or \
                     hdfs://namenode:port/path"
                ),
            }),
        }
    }

    /// The same store with another time limit per write.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long one write or listing may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The cold root as a URL, ending with `/` (what other tools are pointed at).
    pub fn root_url(&self) -> &str {
        &self.root_url
    }

    /// The store rooted at the cold root (paths like `logs/date=…/hour=…/x.parquet`).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Makes the files of this store readable by DataFusion sessions that use `runtime`;
    /// every read is bounded by [`Self::timeout`] (`timed.rs`).
    pub fn register(&self, runtime: &RuntimeEnv) {
        runtime.register_object_store(&self.base_url, self.timed_reader());
    }

    fn timed_reader(&self) -> Arc<dyn ObjectStore> {
        Arc::new(timed::TimedReads::new(
            Arc::clone(&self.reader),
            self.timeout,
        ))
    }

    /// Like [`Self::register`], with the reader passed through `wrap` first (`logsphere
    /// report` registers a read-only view of it that hides temporary files). The wrapped
    /// store sees whole paths of the reader's file system (`user/x/cold/logs/…`), not paths
    /// below the cold root.
    pub fn register_wrapped(
        &self,
        runtime: &RuntimeEnv,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) {
        runtime.register_object_store(&self.base_url, wrap(self.timed_reader()));
    }

    /// The table URL DataFusion reads one file through.
    pub fn file_url(&self, path: &str) -> Result<ListingTableUrl, EngineError> {
        Ok(ListingTableUrl::parse(format!("{}{path}", self.root_url))?)
    }

    /// How every cold file is written: zstd, page statistics, [`ROW_GROUP_ROWS`] rows per
    /// row group.
    pub fn writer_properties() -> Result<WriterProperties, EngineError> {
        Ok(WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build())
    }

    /// Writes a stream of batches as one Parquet file at `path`, with the same properties
    /// as [`ColdStore::write`], and makes it durable. Memory stays bounded: one row group
    /// is buffered, and the encoded bytes go out as a multipart upload (a staging file
    /// renamed into place on completion, so a reader never sees half a file).
    pub async fn write_stream<S, E>(
        &self,
        path: &str,
        schema: arrow::datatypes::SchemaRef,
        mut batches: S,
        time_col: usize,
    ) -> Result<ColdFile, EngineError>
    where
        S: futures::Stream<Item = Result<RecordBatch, E>> + Unpin,
        EngineError: From<E>,
    {
        use futures::StreamExt;
        let location = ObjectPath::from(path);
        let sink = object_store::buffered::BufWriter::new(Arc::clone(&self.store), location);
        let mut writer = parquet::arrow::AsyncArrowWriter::try_new(
            sink,
            schema,
            Some(Self::writer_properties()?),
        )?;
        let mut rows = 0u64;
        let mut range: Option<(i64, i64)> = None;
        let written: Result<(), EngineError> = async {
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                if let Some(t) = crate::hot::timestamps(&batch, time_col)
                    && let (Some(lo), Some(hi)) = (t.iter().min(), t.iter().max())
                {
                    range = Some(match range {
                        Some((a, b)) => (a.min(*lo), b.max(*hi)),
                        None => (*lo, *hi),
                    });
                }
                rows += batch.num_rows() as u64;
                writer.write(&batch).await?;
            }
            writer.finish().await?;
            Ok(())
        }
        .await;
        if let Err(e) = written {
            // Nothing is named yet: drop the staged upload (what is left is debris that
            // start-up removes).
            let _ = writer.into_inner().abort().await;
            return Err(EngineError::Cold {
                context: format!("writing {}{path}", self.root_url),
                reason: e.to_string(),
            });
        }
        let bytes = writer.bytes_written() as u64;
        if let Some(root) = &self.local_root {
            Self::fsync(&root.join(path))?;
        }
        let (min_ts, max_ts) = range.unwrap_or((0, 0));
        Ok(ColdFile {
            path: path.to_string(),
            min_ts,
            max_ts,
            rows,
            bytes,
            columns: Vec::new(),
        })
    }

    /// Deletes cold files (e.g. retired by a compaction); a file already gone is not an
    /// error, so a crash between deleting and committing is harmless.
    pub async fn delete(&self, paths: &[String]) -> Result<(), EngineError> {
        for path in paths {
            match self.store.delete(&ObjectPath::from(path.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(EngineError::Cold {
                        context: format!("deleting {}{path}", self.root_url),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes `batch` as one Parquet file at `path` (zstd, page statistics) and makes it
    /// durable. `time_col` is the column whose range the catalog records.
    pub async fn write(
        &self,
        path: &str,
        batch: &RecordBatch,
        time_col: usize,
    ) -> Result<ColdFile, EngineError> {
        let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4);
        let mut writer =
            ArrowWriter::try_new(&mut buf, batch.schema(), Some(Self::writer_properties()?))?;
        writer.write(batch)?;
        writer.close()?;
        let bytes = buf.len() as u64;
        // Both stores write a temporary file and rename it into place, so a reader never
        // sees half a file; names are never reused (HDFS renames would overwrite).
        let context = || format!("writing {}{path}", self.root_url);
        tokio::time::timeout(
            self.timeout,
            self.store.put(&ObjectPath::from(path), buf.into()),
        )
        .await
        .map_err(|_| EngineError::Cold {
            context: context(),
            reason: format!("no answer within {:?}", self.timeout),
        })?
        .map_err(|e| EngineError::Cold {
            context: context(),
            reason: e.to_string(),
        })?;
        if let Some(root) = &self.local_root {
            Self::fsync(&root.join(path))?;
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
            columns: Vec::new(),
        })
    }

    /// fsyncs a finished local file and its directory, so the catalog never names a file
    /// a power cut could lose.
    fn fsync(local: &Path) -> Result<(), EngineError> {
        let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(local).map_err(|source| EngineError::Io {
            path: local.into(),
            source,
        })?;
        if let Some(dir) = local.parent() {
            sync(dir).map_err(|source| EngineError::Io {
                path: dir.into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Deletes files under the table prefixes that `manifest` does not name.
    pub async fn remove_orphans(&self, manifest: &Manifest) -> Result<usize, EngineError> {
        let named: std::collections::HashSet<&str> = manifest
            .logs
            .iter()
            .chain(&manifest.dead_letters)
            .map(|f| f.path.as_str())
            // Retired by a compaction but maybe still read by a query planned before it:
            // deleted by `compaction::remove_retired` once their grace period is over.
            .chain(manifest.retired.iter().map(|r| r.path.as_str()))
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
                    tracing::info!(file = %meta.location, "removing a cold file no commit names (an interrupted flush or compaction)");
                    self.store.delete(&meta.location).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A committed cold file that cannot be read, found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedFile {
    /// Its path below the cold root.
    pub path: String,
    /// Where it was moved (`quarantine/…`), if it still existed.
    pub set_aside: Option<String>,
    /// Rows the manifest said it held: no longer answered.
    pub rows: u64,
    /// Why it counts as damaged.
    pub reason: String,
}

impl ColdStore {
    /// Checks the footer of every file `manifest` names. A file that is gone, or whose
    /// footer does not parse (truncated, bit-flipped), is moved to `quarantine/<path>` and
    /// dropped from `manifest` (the caller commits it), so every query does not fail on it:
    /// its rows are lost to SQL either way, and the log names it with its row count. A file
    /// that cannot be *read* right now (permissions, a store that does not answer) is left
    /// alone: that is not damage.
    pub async fn set_aside_damaged(
        &self,
        manifest: &mut Manifest,
    ) -> Result<Vec<DamagedFile>, EngineError> {
        let mut damaged = Vec::new();
        for table in [&mut manifest.logs, &mut manifest.dead_letters] {
            let mut kept = Vec::with_capacity(table.len());
            for file in table.drain(..) {
                let location = ObjectPath::from(file.path.as_str());
                let reason = match tokio::time::timeout(
                    self.timeout,
                    footer_damage(&*self.store, &location),
                )
                .await
                {
                    Ok(Ok(damage)) => damage,
                    Ok(Err(e)) => {
                        tracing::warn!(file = %file.path, error = %e, "cannot check a cold file now; keeping it");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(file = %file.path, "no answer while checking a cold file; keeping it");
                        None
                    }
                };
                let Some(reason) = reason else {
                    kept.push(file);
                    continue;
                };
                let aside = format!("quarantine/{}", file.path);
                let set_aside = match self
                    .store
                    .rename(&location, &ObjectPath::from(aside.as_str()))
                    .await
                {
                    Ok(()) => Some(aside),
                    Err(_) => None,
                };
                tracing::error!(
                    file = %file.path,
                    set_aside = set_aside.as_deref().unwrap_or("-"),
                    rows = file.rows,
                    reason = %reason,
                    "a committed cold file is damaged: set aside; its rows are no longer answered"
                );
                damaged.push(DamagedFile {
                    path: file.path,
                    set_aside,
                    rows: file.rows,
                    reason,
                });
            }
            *table = kept;
        }
        Ok(damaged)
    }
}

/// Why the Parquet file at `location` is damaged (gone, or its footer does not parse: a
/// truncation loses the magic at the end), or `None` when its footer parses; `Err` when it
/// cannot be read now. Damage inside data pages shows only when a query reads them.
async fn footer_damage(
    store: &dyn ObjectStore,
    location: &ObjectPath,
) -> Result<Option<String>, object_store::Error> {
    let size = match store.head(location).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => return Ok(Some("the file is gone".into())),
        Err(e) => return Err(e),
    };
    if size < 12 {
        return Ok(Some(format!("{size} bytes is too short for Parquet")));
    }
    let tail = store.get_range(location, size - 8..size).await?;
    if tail.len() != 8 || &tail[4..] != b"PAR1" {
        return Ok(Some("no Parquet magic at its end".into()));
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 12 > size {
        return Ok(Some(format!("its footer length {len} exceeds the file")));
    }
    let footer = store.get_range(location, size - 8 - len..size - 8).await?;
    match parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer) {
        Ok(_) => Ok(None),
        Err(e) => Ok(Some(format!("its footer does not parse: {e}"))),
    }
}

fn bad_url(url: &str, e: url::ParseError) -> EngineError {
    EngineError::Catalog {
        path: PathBuf::from(url),
        reason: format!("not a URL: {e}"),
    }
}
