//! Queries run on their own Tokio runtime, not on the one serving connections and ingest.
//!
//! DataFusion computes on the tasks of whatever runtime polls it. On the server's runtime a
//! CPU-bound plan (a cross join, a big sort) that does not yield for a while occupies its
//! worker threads, and then nothing else on them runs: not the HTTP ingest, not the other
//! connections, not even the timer of the connection's own `statement_timeout` or its
//! CancelRequest. Here every query is executed by a task of the query runtime and its
//! batches reach the connection through a small channel. The connection's side stays
//! responsive: a cancel or timeout answers at once and drops the receiver, which aborts the
//! executing task (and with it the DataFusion tasks it owns) at their next yield. The query
//! runtime's threads still compete for the cores, but through the OS scheduler, like any
//! other process' threads, instead of starving the server's own.
//!
//! The same idea as InfluxDB IOx's `DedicatedExecutor` and GreptimeDB's separate runtimes.

use std::sync::OnceLock;

use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::runtime::{Handle, Runtime};

static QUERY_RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// The query runtime (built on first use; `None` if it could not be, then queries run on
/// the caller's runtime as before).
fn query_runtime() -> Option<Handle> {
    QUERY_RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("logsphere-query")
                .enable_all()
                .build()
            {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the query runtime; queries run on the server's");
                    None
                }
            }
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
}

/// Aborts the executing task when the stream is dropped (cancel, timeout, disconnect).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `df.execute_stream()`, executed on the query runtime; see the module docs.
pub(crate) async fn execute_stream(
    df: DataFrame,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let Some(runtime) = query_runtime() else {
        return df.execute_stream().await;
    };
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    // Two batches in flight: enough to overlap computing and sending, little memory.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = runtime.spawn(async move {
        match df.execute_stream().await {
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
            Ok(mut stream) => {
                let _ = ready_tx.send(Ok(()));
                while let Some(item) = stream.next().await {
                    if tx.send(item).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let guard = AbortOnDrop(task);
    ready_rx.await.map_err(|_| {
        DataFusionError::Execution("the query task ended before its plan started".into())
    })??;
    let batches = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|item| (item, (rx, guard)))
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
}
