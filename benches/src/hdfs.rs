//! Copying the cold tier's Parquet files out of HDFS, so a local peer (DuckDB) reads the very
//! same files from local disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// The store behind `hdfs://host:port/prefix` and the prefix.
fn open(url: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(
        parsed.scheme() == "hdfs",
        "{url:?}: only hdfs:// URLs are copied"
    );
    let authority = format!(
        "hdfs://{}:{}",
        parsed.host_str().unwrap_or_default(),
        parsed.port().unwrap_or(9000)
    );
    let store = hdfs_native_object_store::HdfsObjectStoreBuilder::new()
        .with_url(authority.clone())
        .build()
        .with_context(|| format!("cannot connect to {authority}"))?;
    Ok((Arc::new(store), parsed.path().trim_matches('/').to_string()))
}

/// Deletes every file under `url` (a fresh dataset starts empty).
pub async fn clear(url: &str) -> anyhow::Result<u64> {
    let (store, prefix) = open(url)?;
    let files: Vec<_> = store
        .list(Some(&ObjectPath::from(prefix.as_str())))
        .try_collect()
        .await
        .with_context(|| format!("cannot list {url}"))?;
    for f in &files {
        store
            .delete(&f.location)
            .await
            .with_context(|| format!("cannot delete {}", f.location))?;
    }
    Ok(files.len() as u64)
}

/// Copies every file under `url/sub` to `to/sub/…` (same relative paths); returns files and
/// bytes, printing progress.
pub async fn copy_out(url: &str, sub: &str, to: &Path) -> anyhow::Result<(u64, u64)> {
    let (store, prefix) = open(url)?;
    let root = ObjectPath::from(format!("{prefix}/{sub}").trim_start_matches('/'));
    let files: Vec<_> = store
        .list(Some(&root))
        .try_collect()
        .await
        .with_context(|| format!("cannot list {url}/{sub}"))?;
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    for f in &files {
        let name = f.location.as_ref();
        if name.rsplit('/').next().is_some_and(|b| b.starts_with('.')) {
            continue; // a temporary file of a write in progress
        }
        let relative = name.strip_prefix(prefix.as_str()).unwrap_or(name);
        let target = to.join(relative.trim_start_matches('/'));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let data = store
            .get(&f.location)
            .await
            .with_context(|| format!("cannot read {name}"))?
            .bytes()
            .await
            .with_context(|| format!("cannot read {name}"))?;
        std::fs::write(&target, &data)
            .with_context(|| format!("cannot write {}", target.display()))?;
        n += 1;
        bytes += data.len() as u64;
        if n.is_multiple_of(50) || n == files.len() as u64 {
            eprintln!(
                "hdfs: copied {n}/{} files ({:.0} MB) in {:.1} s",
                files.len(),
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok((n, bytes))
}
