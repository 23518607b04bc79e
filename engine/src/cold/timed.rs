//! The cold store as queries read it: every read bounded by `cold.timeout_secs`.
//!
//! A hung namenode or datanode (a long GC pause, a partition, a frozen process) answers
//! nothing and closes nothing, so a Parquet scan over HDFS would wait for it forever, with
//! the client's query and its connection. Here each read call — and each step of a listing
//! or of a streamed body — gets the limit; past it the query fails with an error that says
//! which store did not answer, and the next query tries again. Writes pass through: the
//! flush, tiering and compaction paths bound them themselves (`ColdStore::write`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// `inner` with a time limit on every read.
#[derive(Debug)]
pub(crate) struct TimedReads {
    inner: Arc<dyn ObjectStore>,
    limit: Duration,
}

impl TimedReads {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

/// The error of a read that got no answer in time.
fn no_answer(store: &str, what: &str, limit: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "cold",
        source: format!(
            "the cold store ({store}) gave no answer within {}s while {what} (cold.timeout_secs)",
            limit.as_secs_f64()
        )
        .into(),
    }
}

/// `fut`, or the no-answer error after `limit`.
async fn within<T>(
    limit: Duration,
    store: &str,
    what: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(no_answer(store, &what(), limit)),
    }
}

/// `stream` with `limit` on the wait for each item; after a timeout it ends.
fn timed_stream<T: Send + 'static>(
    stream: BoxStream<'static, Result<T>>,
    limit: Duration,
    store: String,
    what: String,
) -> BoxStream<'static, Result<T>> {
    futures::stream::unfold(Some(stream), move |state| {
        let (store, what) = (store.clone(), what.clone());
        async move {
            let mut stream = state?;
            match tokio::time::timeout(limit, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => Some((Err(no_answer(&store, &what, limit)), None)),
            }
        }
    })
    .boxed()
}

impl fmt::Display for TimedReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimedReads({}, {:?})", self.inner, self.limit)
    }
}

#[async_trait::async_trait]
impl ObjectStore for TimedReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let store = self.inner.to_string();
        let what = || format!("reading {location}");
        let mut got = within(
            self.limit,
            &store,
            what,
            self.inner.get_opts(location, options),
        )
        .await?;
        if let GetResultPayload::Stream(body) = got.payload {
            got.payload = GetResultPayload::Stream(timed_stream(body, self.limit, store, what()));
        }
        Ok(got)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let what = || format!("reading {} ranges of {location}", ranges.len());
        within(
            self.limit,
            &self.inner.to_string(),
            what,
            self.inner.get_ranges(location, ranges),
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let what = format!("listing {}", prefix.map(Path::as_ref).unwrap_or("/"));
        timed_stream(
            self.inner.list(prefix),
            self.limit,
            self.inner.to_string(),
            what,
        )
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let what = format!("listing {}", prefix.map(Path::as_ref).unwrap_or("/"));
        let stream = self.inner.list_with_offset(prefix, offset);
        timed_stream(stream, self.limit, self.inner.to_string(), what)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let what = || format!("listing {}", prefix.map(Path::as_ref).unwrap_or("/"));
        within(
            self.limit,
            &self.inner.to_string(),
            what,
            self.inner.list_with_delimiter(prefix),
        )
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    /// A store that answers like `inner`, or never while `hung` is set.
    #[derive(Debug)]
    struct Hangs {
        inner: InMemory,
        hung: AtomicBool,
    }

    impl fmt::Display for Hangs {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Hangs")
        }
    }

    impl Hangs {
        async fn gate(&self) {
            if self.hung.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Hangs {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.gate().await;
            self.inner.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(l)
        }
        fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            if self.hung.load(Ordering::SeqCst) {
                return futures::stream::pending().boxed();
            }
            self.inner.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.gate().await;
            self.inner.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.inner.copy_opts(f, t, o).await
        }
    }

    #[tokio::test]
    async fn reads_of_a_hung_store_fail_in_time_and_work_again_after()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let hangs = Arc::new(Hangs {
            inner: InMemory::new(),
            hung: AtomicBool::new(false),
        });
        let path = Path::from("logs/date=2026-11-24/hour=10/a.parquet");
        hangs.put(&path, Bytes::from_static(b"PAR1").into()).await?;
        let limit = Duration::from_millis(200);
        let store = TimedReads::new(Arc::clone(&hangs) as Arc<dyn ObjectStore>, limit);
        assert_eq!(store.get(&path).await?.bytes().await?, "PAR1");

        hangs.hung.store(true, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let err = store.get_range(&path, 0..2).await.map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("no answer within 0.2s"), "{err}");
        assert!(err.to_string().contains("cold.timeout_secs"), "{err}");
        let listed: Result<Vec<ObjectMeta>> = store.list(None).try_collect().await;
        assert!(listed.is_err(), "a hung listing fails");
        assert!(store.list_with_delimiter(None).await.is_err());
        assert!(store.head(&path).await.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "each read gave up"
        );

        hangs.hung.store(false, Ordering::SeqCst);
        assert_eq!(store.get_range(&path, 0..2).await?, "PA");
        Ok(())
    }
}
