//! The object store a report reads the cold tier through: read-only, and blind to hidden
//! files.
//!
//! HDFS writes `.<name>.tmp.<n>` and renames it into place; other writers use `_temporary/`
//! or `_SUCCESS`. Below the cold root, any file or directory whose name starts with `.` or
//! `_` is left out of listings, so a report never reads a half-written file, whatever
//! its extension.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// `inner` as a report sees it: listings without hidden entries below `root`, and every
/// write refused.
#[derive(Debug)]
pub struct VisibleFiles {
    inner: Arc<dyn ObjectStore>,
    /// The cold root inside `inner` (e.g. `user/logsphere/cold`).
    root: Path,
}

impl VisibleFiles {
    pub fn new(inner: Arc<dyn ObjectStore>, root: Path) -> Self {
        Self { inner, root }
    }

    fn hidden(&self, location: &Path) -> bool {
        hidden_below(&self.root, location)
    }

    fn read_only(operation: &str) -> object_store::Error {
        object_store::Error::NotSupported {
            source: format!("logsphere report only reads the cold tier ({operation} refused)")
                .into(),
        }
    }
}

/// True when `location` is below `root` and a part of it below `root` (a directory or the
/// file name) starts with `.` or `_`.
pub fn hidden_below(root: &Path, location: &Path) -> bool {
    location.prefix_match(root).is_some_and(|mut parts| {
        parts.any(|p| p.as_ref().starts_with('.') || p.as_ref().starts_with('_'))
    })
}

/// The path of a cold root URL (`hdfs://nn:9000/a/b/` → `a/b`) in its file system.
pub fn root_path(root_url: &str) -> Path {
    url::Url::parse(root_url)
        .ok()
        .and_then(|u| Path::from_url_path(u.path()).ok())
        .unwrap_or_default()
}

impl fmt::Display for VisibleFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VisibleFiles({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for VisibleFiles {
    async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
        Err(Self::read_only("put"))
    }

    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(Self::read_only("multipart put"))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        locations.map(|_| Err(Self::read_only("delete"))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = Self::new(Arc::clone(&self.inner), self.root.clone());
        self.inner
            .list(prefix)
            .filter(move |m| {
                let keep = m.as_ref().map_or(true, |m| !this.hidden(&m.location));
                std::future::ready(keep)
            })
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = Self::new(Arc::clone(&self.inner), self.root.clone());
        self.inner
            .list_with_offset(prefix, offset)
            .filter(move |m| {
                let keep = m.as_ref().map_or(true, |m| !this.hidden(&m.location));
                std::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.common_prefixes.retain(|p| !self.hidden(p));
        listed.objects.retain(|m| !self.hidden(&m.location));
        Ok(listed)
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> Result<()> {
        Err(Self::read_only("copy"))
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn hidden_files_are_not_listed_and_writes_are_refused() -> anyhow::Result<()> {
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for p in [
            "_data/cold/logs/date=2026-11-24/hour=10/a.parquet",
            "_data/cold/logs/date=2026-11-24/hour=10/.b.parquet.tmp.0",
            "_data/cold/logs/date=2026-11-24/hour=10/.c.parquet",
            "_data/cold/logs/date=2026-11-24/_temporary/d.parquet",
            "_data/cold/logs/.staging/e.parquet",
        ] {
            mem.put(&Path::from(p), Bytes::from_static(b"x").into())
                .await?;
        }
        // The root itself may have a name starting with `_`: only what is below counts.
        let store = VisibleFiles::new(Arc::clone(&mem), Path::from("_data/cold"));
        let listed: Vec<String> = store
            .list(Some(&Path::from("_data/cold/logs")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await?;
        assert_eq!(
            listed,
            ["_data/cold/logs/date=2026-11-24/hour=10/a.parquet"]
        );
        let dirs = store
            .list_with_delimiter(Some(&Path::from("_data/cold/logs/date=2026-11-24")))
            .await?;
        let dirs: Vec<String> = dirs.common_prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!(dirs, ["_data/cold/logs/date=2026-11-24/hour=10"]);
        let refused = store
            .put(&Path::from("_data/cold/x"), Bytes::from_static(b"x").into())
            .await;
        assert!(matches!(
            refused,
            Err(object_store::Error::NotSupported { .. })
        ));
        Ok(())
    }
}
