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
//! other process' threads, instead of starving the server's own — and at a lower priority
//! (`pg.query_nice`, default 10: Linux's scheduler then gives ingest and the continuous
//! queries about ten times a query thread's share of a busy core, while a query alone still
//! gets every idle core). Measured by `logsphere-bench isolation`.
//!
//! The same idea as InfluxDB IOx's `DedicatedExecutor` and GreptimeDB's separate runtimes.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tokio::runtime::{Handle, Runtime};

static QUERY_RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();

/// `pg.query_nice`, set once at start-up before the first query.
static QUERY_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Sets the nice value of the query threads (`pg.query_nice`); call before serving.
pub(crate) fn set_query_nice(nice: i32) {
    QUERY_NICE.store(nice, std::sync::atomic::Ordering::Relaxed);
}

/// Lowers the calling thread's scheduling priority to `pg.query_nice`.
fn lower_priority() {
    let nice = QUERY_NICE.load(std::sync::atomic::Ordering::Relaxed);
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority take no pointers; on Linux PRIO_PROCESS with a thread
    // id changes that thread alone.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower a query thread's priority");
    }
}

/// The query runtime (built on first use; `None` if it could not be, then queries run on
/// the caller's runtime as before).
fn query_runtime() -> Option<Handle> {
    QUERY_RUNTIME
        .get_or_init(|| {
            // More workers than cores: a heavy query's partitions (one per core) keep
            // theirs busy, and a small query arriving meanwhile (a dashboard panel, a
            // client polling `alerts`) still finds a free worker at once; the OS then
            // shares the cores between them.
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("logsphere-query")
                .on_thread_start(lower_priority)
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

/// What a statement runs: how much of its planning is still to do.
pub(crate) enum Execution {
    /// A DataFrame: optimized, planned and run on the query runtime.
    DataFrame(DataFrame),
    /// A plan optimized at Parse, its parameters bound: planned physically under the session
    /// state it was optimized in (see [`execute`]).
    Optimized {
        plan: LogicalPlan,
        state: Arc<SessionState>,
        task: Arc<TaskContext>,
    },
    /// A physical plan, ready to run.
    Physical {
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
    },
}

impl Execution {
    /// The schema of the rows it gives.
    pub(crate) fn schema(&self) -> SchemaRef {
        match self {
            Execution::DataFrame(df) => Arc::new(df.schema().as_arrow().clone()),
            Execution::Optimized { plan, .. } => Arc::new(plan.schema().as_arrow().clone()),
            Execution::Physical { plan, .. } => plan.schema(),
        }
    }

    /// An optimized plan planned physically; the others as they are.
    async fn plan_physically(self) -> Result<Self, DataFusionError> {
        match self {
            Execution::Optimized { plan, state, task } => {
                let plan = state
                    .query_planner()
                    .create_physical_plan(&plan, state.as_ref())
                    .await?;
                Ok(Execution::Physical { plan, task })
            }
            other => Ok(other),
        }
    }

    /// Plans what is left to plan and starts it.
    async fn start(self) -> Result<SendableRecordBatchStream, DataFusionError> {
        match self.plan_physically().await? {
            Execution::DataFrame(df) => df.execute_stream().await,
            Execution::Physical { plan, task } => {
                datafusion::physical_plan::execute_stream(plan, task)
            }
            Execution::Optimized { .. } => Err(DataFusionError::Internal(
                "an optimized plan left unplanned".into(),
            )),
        }
    }
}

/// Runs `execution`: on the query runtime (see the module docs), except a small plan.
///
/// A plan optimized at Parse is planned physically here, on the connection's task, and a
/// physical plan that can only do a little work ([`is_small`]) runs here too: handing it
/// to the query runtime and its batches back costs more than running it (issue: a prepared
/// point query over the hot tier spent most of its round trip in thread hand-offs).
pub(crate) async fn execute(
    execution: Execution,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let execution = execution.plan_physically().await?;
    if let Execution::Physical { plan, .. } = &execution
        && is_small(plan)
    {
        return execution.start().await;
    }
    let Some(runtime) = query_runtime() else {
        return execution.start().await;
    };
    let schema = execution.schema();
    // Two batches in flight: enough to overlap computing and sending, little memory.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = runtime.spawn(async move {
        match execution.start().await {
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

/// The most rows of in-memory input a plan run on the connection's task may read.
const SMALL_PLAN_ROWS: usize = 65_536;

/// Operators of a plan run on the connection's task: each does work in proportion to its
/// input, so with at most [`SMALL_PLAN_ROWS`] rows in, the whole plan is a few milliseconds
/// at most. No join (its output can be the product of its inputs), no file or Cassandra
/// scan, no table function.
const SMALL_PLAN_OPERATORS: &[&str] = &[
    "DataSourceExec",
    "EmptyExec",
    "PlaceholderRowExec",
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
    "UnionExec",
    "GlobalLimitExec",
    "LocalLimitExec",
];

/// Whether `plan` reads at most [`SMALL_PLAN_ROWS`] rows, all from memory (the hot tier's
/// batches, `VALUES`), through the operators of [`SMALL_PLAN_OPERATORS`] only.
fn is_small(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut rows = 0usize;
    let mut small = true;
    let _ = plan.apply(|node| {
        let allowed = SMALL_PLAN_OPERATORS.contains(&node.name());
        let in_memory = match node.downcast_ref::<DataSourceExec>() {
            Some(source) => match source.data_source().downcast_ref::<MemorySourceConfig>() {
                Some(memory) => {
                    rows += memory
                        .partitions()
                        .iter()
                        .flatten()
                        .map(|b| b.num_rows())
                        .sum::<usize>();
                    true
                }
                None => false,
            },
            None => true,
        };
        if allowed && in_memory && rows <= SMALL_PLAN_ROWS {
            Ok(TreeNodeRecursion::Continue)
        } else {
            small = false;
            Ok(TreeNodeRecursion::Stop)
        }
    });
    small
}

/// `df.execute_stream()`, executed on the query runtime; see the module docs.
pub(crate) async fn execute_stream(
    df: DataFrame,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    execute(Execution::DataFrame(df)).await
}
