//! The server's view of its connections ("backends", as PostgreSQL calls them): who is
//! connected, what each one is running, and how to stop it.
//!
//! Every connection owns a [`Backend`]. Once the client is authenticated it is registered in
//! [`Backends`] under its process id and secret key (the BackendKeyData the client got), so
//! that a CancelRequest — which arrives on a separate, unauthenticated connection with that
//! pair — or `pg_cancel_backend(pid)` can reach it, and `pg_stat_activity` can list it.
//!
//! Stopping a query: each statement starts a new epoch of the connection's
//! [`QueryControl`], with a fresh cancellation token and the deadline `statement_timeout`
//! gives it. Planning is raced against [`QueryControl::stopped`], and every result stream is
//! wrapped in [`Guarded`], which ends it with `57014` as soon as the token fires or the
//! deadline passes. Ending the stream drops the DataFusion stream, which aborts its tasks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use pgwire::api::cancel::CancelHandler;
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::TransactionStatus;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::errors::sqlstate;
use super::session::{SharedVars, lock};

/// Why a statement was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// A CancelRequest or `pg_cancel_backend()`.
    User,
    /// `statement_timeout` passed.
    Timeout,
}

impl StopReason {
    /// The error PostgreSQL answers with (57014 query_canceled, either way).
    pub(crate) fn error(self) -> PgWireError {
        let message = match self {
            StopReason::User => "canceling statement due to user request",
            StopReason::Timeout => "canceling statement due to statement timeout",
        };
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_owned(),
            sqlstate::QUERY_CANCELED.to_owned(),
            message.to_owned(),
        )))
    }
}

struct Current {
    token: CancellationToken,
    deadline: Option<Instant>,
    reason: Option<StopReason>,
}

/// How one connection's running statement is stopped (see the module docs).
pub(crate) struct QueryControl {
    epoch: AtomicU64,
    current: Mutex<Current>,
}

impl QueryControl {
    fn new() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            current: Mutex::new(Current {
                token: CancellationToken::new(),
                deadline: None,
                reason: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a statement: a cancel that arrived while the connection was idle is
    /// forgotten, and `timeout` (if any) starts counting.
    fn begin(&self, timeout: Option<Duration>) {
        let mut current = self.lock();
        if current.token.is_cancelled() {
            current.token = CancellationToken::new();
        }
        current.reason = None;
        current.deadline = timeout.map(|t| Instant::now() + t);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops the running statement (if one runs; otherwise the next statement forgets it).
    pub(crate) fn cancel(&self, reason: StopReason) {
        let mut current = self.lock();
        current.reason.get_or_insert(reason);
        current.token.cancel();
    }

    fn snapshot(&self) -> (u64, CancellationToken, Option<Instant>) {
        let current = self.lock();
        (
            self.epoch.load(Ordering::SeqCst),
            current.token.clone(),
            current.deadline,
        )
    }

    fn reason(&self) -> StopReason {
        self.lock().reason.unwrap_or(StopReason::User)
    }

    /// Resolves, with the error to answer, when the current statement is cancelled or runs
    /// out of time. Race planning and other up-front work against it.
    pub(crate) fn stopped(self: &Arc<Self>) -> impl Future<Output = PgWireError> + Send + 'static {
        let control = Arc::clone(self);
        let (_, token, deadline) = self.snapshot();
        async move {
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::time::sleep_until(deadline) => control.cancel(StopReason::Timeout),
                    }
                }
                None => token.cancelled().await,
            }
            control.reason().error()
        }
    }

    /// Wraps a result stream so it ends with 57014 when the statement polling it is stopped.
    pub(crate) fn guard<S, T>(self: &Arc<Self>, inner: S) -> Guarded<S>
    where
        S: Stream<Item = Result<T, PgWireError>> + Unpin,
    {
        Guarded {
            inner: Some(inner),
            control: Arc::clone(self),
            epoch: u64::MAX,
            cancelled: None,
            deadline: None,
        }
    }
}

/// A result stream that stops with 57014 when its connection's statement is cancelled or
/// times out. It follows the statement that polls it: a portal suspended in one Execute and
/// resumed in the next obeys the second one's cancel and deadline.
pub(crate) struct Guarded<S> {
    inner: Option<S>,
    control: Arc<QueryControl>,
    epoch: u64,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S, T> Stream for Guarded<S>
where
    S: Stream<Item = Result<T, PgWireError>> + Unpin,
{
    type Item = Result<T, PgWireError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        let epoch = this.control.epoch.load(Ordering::SeqCst);
        if epoch != this.epoch {
            let (epoch, token, deadline) = this.control.snapshot();
            this.epoch = epoch;
            this.cancelled = Some(Box::pin(token.cancelled_owned()));
            this.deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        }
        let mut stop = None;
        if let Some(cancelled) = this.cancelled.as_mut()
            && cancelled.as_mut().poll(cx).is_ready()
        {
            stop = Some(this.control.reason());
        }
        if stop.is_none()
            && let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.control.cancel(StopReason::Timeout);
            stop = Some(this.control.reason());
        }
        if let Some(reason) = stop {
            // Dropping the DataFusion stream aborts the tasks computing it.
            this.inner = None;
            return Poll::Ready(Some(Err(reason.error())));
        }
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// What `pg_stat_activity` shows about a connection's current or last statement.
#[derive(Debug, Clone)]
pub(crate) struct ActivityRow {
    pub(crate) pid: i32,
    pub(crate) user: String,
    pub(crate) application_name: String,
    pub(crate) client_addr: String,
    pub(crate) client_port: i32,
    pub(crate) backend_start: DateTime<Utc>,
    pub(crate) query_start: Option<DateTime<Utc>>,
    pub(crate) state_change: DateTime<Utc>,
    pub(crate) state: &'static str,
    pub(crate) query: String,
}

struct Status {
    state: &'static str,
    query: String,
    query_start: Option<DateTime<Utc>>,
    state_change: DateTime<Utc>,
}

/// One connection, as the rest of the server sees it.
pub(crate) struct Backend {
    peer: SocketAddr,
    started: DateTime<Utc>,
    vars: SharedVars,
    /// (pid, secret key), once the client is authenticated.
    key: OnceLock<(i32, Bytes)>,
    status: Mutex<Status>,
    pub(crate) control: Arc<QueryControl>,
}

impl Backend {
    pub(crate) fn new(peer: SocketAddr, vars: SharedVars) -> Self {
        let now = Utc::now();
        Self {
            peer,
            started: now,
            vars,
            key: OnceLock::new(),
            status: Mutex::new(Status {
                state: "starting",
                query: String::new(),
                query_start: None,
                state_change: now,
            }),
            control: Arc::new(QueryControl::new()),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process id the client was given (0 before authentication).
    pub(crate) fn pid(&self) -> i32 {
        self.key.get().map(|k| k.0).unwrap_or(0)
    }

    /// A statement (`sql`) starts: it becomes `active`, and `statement_timeout` starts.
    pub(crate) fn begin_statement(&self, sql: &str) {
        let timeout = lock(&self.vars)
            .get("statement_timeout")
            .and_then(super::session::timeout_ms)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        self.control.begin(timeout);
        let now = Utc::now();
        let mut status = self.status();
        status.state = "active";
        status.query = sql.to_owned();
        status.query_start = Some(now);
        status.state_change = now;
    }

    /// The statement ended; `transaction` is the connection's transaction status now.
    pub(crate) fn end_statement(&self, transaction: TransactionStatus) {
        let mut status = self.status();
        status.state = match transaction {
            TransactionStatus::Idle => "idle",
            TransactionStatus::Transaction => "idle in transaction",
            TransactionStatus::Error => "idle in transaction (aborted)",
        };
        status.state_change = Utc::now();
    }

    fn row(&self) -> ActivityRow {
        let (user, application_name) = {
            let vars = lock(&self.vars);
            (
                vars.get("session_authorization").unwrap_or("").to_owned(),
                vars.get("application_name").unwrap_or("").to_owned(),
            )
        };
        let status = self.status();
        ActivityRow {
            pid: self.pid(),
            user,
            application_name,
            client_addr: self.peer.ip().to_string(),
            client_port: i32::from(self.peer.port()),
            backend_start: self.started,
            query_start: status.query_start,
            state_change: status.state_change,
            state: status.state,
            query: status.query.clone(),
        }
    }
}

/// Every authenticated connection, by process id.
#[derive(Default)]
pub(crate) struct Backends {
    map: RwLock<HashMap<i32, Arc<Backend>>>,
}

impl Backends {
    /// Makes `backend` reachable as `pid` (by CancelRequest with `secret`, and in
    /// `pg_stat_activity`). It stays until [`Self::remove`].
    pub(crate) fn register(&self, backend: &Arc<Backend>, pid: i32, secret: Bytes) {
        if backend.key.set((pid, secret)).is_err() {
            return;
        }
        backend.status().state = "idle";
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, Arc::clone(backend));
    }

    /// Forgets a closed connection.
    pub(crate) fn remove(&self, backend: &Backend) {
        if let Some((pid, _)) = backend.key.get() {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            if map
                .get(pid)
                .is_some_and(|b| std::ptr::eq(Arc::as_ptr(b), backend))
            {
                map.remove(pid);
            }
        }
    }

    fn get(&self, pid: i32) -> Option<Arc<Backend>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned()
    }

    /// Cancels `pid`'s running statement for `user` (`pg_cancel_backend`); false if there
    /// is no such backend, an error if it belongs to another user.
    pub(crate) fn cancel_pid(&self, pid: i32, user: &str) -> datafusion::error::Result<bool> {
        let Some(backend) = self.get(pid) else {
            return Ok(false);
        };
        let owner = lock(&backend.vars)
            .get("session_authorization")
            .unwrap_or("")
            .to_owned();
        if owner != user {
            return Err(datafusion::error::DataFusionError::Execution(format!(
                "permission denied to cancel query: only the role \"{owner}\" may cancel it"
            )));
        }
        tracing::info!(pid, user, "pg_cancel_backend");
        backend.control.cancel(StopReason::User);
        Ok(true)
    }

    /// One row per connection, for `pg_stat_activity`.
    pub(crate) fn activity(&self) -> Vec<ActivityRow> {
        let backends: Vec<Arc<Backend>> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut rows: Vec<ActivityRow> = backends.iter().map(|b| b.row()).collect();
        rows.sort_by_key(|r| r.pid);
        rows
    }
}

/// Answers CancelRequest: the pid must come with the secret key that connection was given.
pub(crate) struct CancelRequests(pub(crate) Arc<Backends>);

#[async_trait]
impl CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let Some(backend) = self.0.get(request.pid) else {
            tracing::debug!(pid = request.pid, "cancel request for an unknown backend");
            return;
        };
        let matches = backend
            .key
            .get()
            .is_some_and(|(_, secret)| *secret == request.secret_key.to_bytes());
        if matches {
            tracing::info!(pid = request.pid, "cancel request");
            backend.control.cancel(StopReason::User);
        } else {
            tracing::warn!(
                pid = request.pid,
                "cancel request with a wrong secret key ignored"
            );
        }
    }
}
