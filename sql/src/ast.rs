//! The statements LogSphere adds to SQL, as typed values.
//!
//! Expressions, names and the query body stay sqlparser AST nodes, so the planner hands
//! them to DataFusion unchanged. Durations are resolved at parse time; anything that needs
//! a schema (is `SEVERITY` a constant? is the body shape A or B?) is the planner's job.

use std::time::Duration;

use datafusion::sql::parser::Statement as DataFusionStatement;
use datafusion::sql::sqlparser::ast::{Expr, Ident, ObjectName, Query};

/// Watermark used when a continuous query has no `WATERMARK` clause *(design default)*.
pub const DEFAULT_WATERMARK: Duration = Duration::from_secs(5);

/// Checkpoint period used when `WITH (checkpoint_interval = …)` is absent *(design default)*.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// How long resolved alerts stay listed when `alert_retention` is not given *(design)*.
pub const DEFAULT_ALERT_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Event-time column used when a continuous query has no `EVENT TIME` clause.
pub const DEFAULT_EVENT_TIME_COLUMN: &str = "timestamp";

/// One parsed statement: LogSphere's own, or one for DataFusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// Anything that is not a LogSphere statement, exactly as DataFusion's `DFParser`
    /// parsed it; plan it with `SessionState::statement_to_plan`.
    DataFusion(Box<DataFusionStatement>),
    /// `CREATE [OR REPLACE] CONTINUOUS QUERY [IF NOT EXISTS] name … AS query`.
    CreateContinuousQuery(Box<CreateContinuousQuery>),
    /// `SHOW CONTINUOUS QUERIES [LIKE 'pattern' | WHERE expr]`.
    ShowContinuousQueries {
        /// The optional `LIKE` or `WHERE` filter.
        filter: Option<ShowFilter>,
    },
    /// `SHOW CREATE CONTINUOUS QUERY name`.
    ShowCreateContinuousQuery {
        /// The continuous query to show.
        name: ObjectName,
    },
    /// `SHOW ALERTS [FOR name] [WHERE expr]`.
    ShowAlerts {
        /// Only the alerts of this continuous query.
        cq: Option<ObjectName>,
        /// A predicate over the columns of the `alerts` system table.
        filter: Option<Box<Expr>>,
    },
    /// `DROP CONTINUOUS QUERY [IF EXISTS] name`.
    DropContinuousQuery {
        /// The continuous query to drop.
        name: ObjectName,
        /// `IF EXISTS` was given: a missing query is not an error.
        if_exists: bool,
    },
    /// `ALTER CONTINUOUS QUERY name PAUSE | RESUME`.
    AlterContinuousQuery {
        /// The continuous query to change.
        name: ObjectName,
        /// What to do to it.
        action: AlterAction,
    },
    /// `EXPLAIN CONTINUOUS QUERY name` or `EXPLAIN CREATE CONTINUOUS QUERY …`.
    ExplainContinuousQuery(CqTarget),
    /// `BACKTEST (CONTINUOUS QUERY name | create_cq) FROM expr TO expr`.
    Backtest {
        /// The rule to replay over history.
        target: CqTarget,
        /// Start of the replayed event-time range (inclusive).
        from: Box<Expr>,
        /// End of the replayed event-time range (exclusive).
        to: Box<Expr>,
    },
}

/// The continuous query an `EXPLAIN` or `BACKTEST` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqTarget {
    /// An existing continuous query, by name.
    Name(ObjectName),
    /// A definition given inline, not (yet) created.
    Create(Box<CreateContinuousQuery>),
}

/// The filter of `SHOW CONTINUOUS QUERIES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShowFilter {
    /// `LIKE 'pattern'` on the name.
    Like(String),
    /// `WHERE expr` over the columns of `information_schema.continuous_queries`.
    Where(Box<Expr>),
}

/// What `ALTER CONTINUOUS QUERY` does (v1: pause and resume only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlterAction {
    /// Stop consuming input; the checkpoint is kept.
    Pause,
    /// Continue from the last checkpoint.
    Resume,
}

/// A `CREATE CONTINUOUS QUERY` statement with every clause resolved to a typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateContinuousQuery {
    /// The query's name.
    pub name: ObjectName,
    /// `OR REPLACE` was given.
    pub or_replace: bool,
    /// `IF NOT EXISTS` was given.
    pub if_not_exists: bool,
    /// `EVENT TIME col`; [`DEFAULT_EVENT_TIME_COLUMN`] when absent.
    pub event_time: Ident,
    /// `PROCESSING TIME`: window on arrival time (parsed; not supported by the v1 planner).
    pub processing_time: bool,
    /// `WATERMARK interval`; [`DEFAULT_WATERMARK`] when absent.
    pub watermark: Duration,
    /// `ALLOWED LATENESS interval`; zero when absent.
    pub allowed_lateness: Duration,
    /// `ON LATE action` after `ALLOWED LATENESS`; [`LateAction::Drop`] when absent.
    pub on_late: LateAction,
    /// `EMIT policy`; `None` lets the planner choose (see the design notes, §5.3).
    pub emit: Option<EmitPolicy>,
    /// `INTO table`: materialize the output rows.
    pub into: Option<ObjectName>,
    /// `ALERT [(…)]`: the output rows are alert observations.
    pub alert: Option<AlertSpec>,
    /// `NOTIFY (…)` channels, in the order written.
    pub notify: Vec<Channel>,
    /// `START FROM`; [`StartFrom::Now`] when absent.
    pub start_from: StartFrom,
    /// `MODE`; [`Mode::Active`] when absent.
    pub mode: Mode,
    /// `COMMENT 'text'`.
    pub comment: Option<String>,
    /// `WITH (key = expr, …)` as written (keys lower-cased); validated into [`Self::options`].
    pub with_options: Vec<(String, Expr)>,
    /// The engine knobs of `WITH (…)`, checked and typed.
    pub options: CqOptions,
    /// The body after `AS`.
    pub query: Box<Query>,
    /// The statement's raw text from `CREATE` to the end of the body, for `SHOW CREATE`.
    pub sql_text: String,
    /// The raw text of the body after `AS`.
    pub body_sql: String,
}

impl CreateContinuousQuery {
    /// The checkpoint period: `WITH (checkpoint_interval = …)` or [`DEFAULT_CHECKPOINT_INTERVAL`].
    pub fn checkpoint_interval(&self) -> Duration {
        self.options
            .checkpoint_interval
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL)
    }

    /// The cap on live (window, key) state, if `WITH (max_keys = n)` set one.
    pub fn max_keys(&self) -> Option<u64> {
        self.options.max_keys
    }

    /// How long a silent Kafka partition holds back the watermark, if set.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.options.idle_timeout
    }

    /// The ingest delay allowed for in the wall-clock watermark floor, if set.
    pub fn max_ingest_delay(&self) -> Option<Duration> {
        self.options.max_ingest_delay
    }

    /// How long resolved alerts are kept: `WITH (alert_retention = …)` or
    /// [`DEFAULT_ALERT_RETENTION`].
    pub fn alert_retention(&self) -> Duration {
        self.options
            .alert_retention
            .unwrap_or(DEFAULT_ALERT_RETENTION)
    }
}

/// The engine knobs a continuous query's `WITH (…)` may set; `None` means not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CqOptions {
    /// `max_keys = n` (a positive integer): cap on live (window, key) state.
    pub max_keys: Option<u64>,
    /// `checkpoint_interval = interval`.
    pub checkpoint_interval: Option<Duration>,
    /// `idle_timeout = interval`: a partition silent this long is left out of the watermark.
    pub idle_timeout: Option<Duration>,
    /// `max_ingest_delay = interval`: slack in the wall-clock watermark floor.
    pub max_ingest_delay: Option<Duration>,
    /// `max_notify_delay = interval`: older transitions after a restart are summarized.
    pub max_notify_delay: Option<Duration>,
    /// `alert_retention = interval`: how long resolved alerts stay listed.
    pub alert_retention: Option<Duration>,
}

/// The option names [`CqOptions`] knows, as they may appear in `WITH (…)`.
pub const CQ_OPTION_NAMES: &[&str] = &[
    "max_keys",
    "checkpoint_interval",
    "idle_timeout",
    "max_ingest_delay",
    "max_notify_delay",
    "alert_retention",
];

/// What happens to a row later than the watermark but within the allowed lateness.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LateAction {
    /// Count it in `late_rows_dropped` and drop it.
    #[default]
    Drop,
    /// Re-evaluate the window in memory.
    Update,
    /// Re-run the body in batch over the window and upsert (later than v1).
    Recompute,
    /// Divert the row to this table (later than v1).
    Into(ObjectName),
}

/// When a windowed continuous query emits rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitPolicy {
    /// `ON THRESHOLD`: at the first row that makes a monotone `HAVING` true.
    OnThreshold,
    /// `ON WINDOW CLOSE`: once the watermark passes the window's end.
    OnWindowClose,
    /// `ON UPDATE`: every change, as a changelog (later than v1).
    OnUpdate,
    /// `EVERY interval`: periodic partial results (later than v1).
    Every(Duration),
}

/// Where a continuous query starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// New rows only.
    #[default]
    Now,
    /// Everything still stored.
    Earliest,
    /// Backfill from this event time (a `TIMESTAMP '…'` literal or a string).
    Timestamp(Box<Expr>),
}

/// Whether alerts of a continuous query are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Alerts are recorded and notified.
    #[default]
    Active,
    /// Alerts are recorded with `shadow = true`; nothing is sent (later than v1).
    Shadow,
}

/// The `ALERT (…)` clause: how output rows become alert instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertSpec {
    /// `SEVERITY expr`: a constant or an expression over output columns.
    pub severity: Option<Expr>,
    /// `DEDUP BY (col, …)`; empty means the planner's default key.
    pub dedup_by: Vec<Ident>,
    /// `FOR interval | FOR n WINDOWS`: the pending period (later than v1).
    pub for_: Option<For>,
    /// `KEEP FIRING FOR interval` (later than v1).
    pub keep_firing_for: Option<Duration>,
    /// `COOLDOWN interval`: minimum gap between repeat notifications of one instance.
    pub cooldown: Option<Duration>,
    /// `RESOLVE AFTER interval`: quiet period that resolves a per-row alert (later than v1).
    pub resolve_after: Option<Duration>,
    /// `ABSENT FOR interval`: fire when a known instance stops producing rows (later than v1).
    pub absent_for: Option<Duration>,
    /// `LABELS (key = expr, …)`, keys as written.
    pub labels: Vec<(String, Expr)>,
    /// `ANNOTATIONS (key = 'template', …)`, keys as written; `{column}` placeholders kept.
    pub annotations: Vec<(String, String)>,
}

/// The pending period of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For {
    /// The condition holds for this much event time.
    Duration(Duration),
    /// The condition holds for this many consecutive windows.
    Windows(u64),
}

/// A `NOTIFY` push channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// `TABLE name`: a copy of the rows.
    Table(ObjectName),
    /// `KAFKA 'topic' [WITH (…)]`.
    Kafka {
        /// The topic to produce to.
        topic: String,
        /// Producer options, keys as written.
        options: Vec<(String, Expr)>,
    },
    /// `WEBHOOK 'url' [WITH (…)]`: an Alertmanager-compatible JSON payload.
    Webhook {
        /// The URL to POST to.
        url: String,
        /// Delivery options (`timeout`, …), keys as written.
        options: Vec<(String, Expr)>,
    },
}
