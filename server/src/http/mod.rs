//! HTTP: `POST /v1/logs` ingest (LogSphere JSON, text formats, OTLP), the shippers'
//! endpoints (`_bulk`, Loki push; see `shippers.rs`), `POST /v1/flush`, `POST /v1/compact`,
//! `GET /healthz`, `GET /metrics`.

mod metrics;
mod shippers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use logsphere_engine::ingest::shippers::otlp;
use logsphere_engine::ingest::{DecodeOptions, Format};
use logsphere_engine::{Engine, EngineError};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::HttpConfig;

/// What every handler sees.
struct HttpState {
    engine: Arc<Engine>,
    max_record_bytes: usize,
    /// `http.max_body_bytes`: also the bound on a gzip body once inflated.
    max_body_bytes: usize,
    /// `POST /v1/logs` requests being read or stored (`http.max_concurrent_requests`).
    ingest_slots: Arc<tokio::sync::Semaphore>,
    max_concurrent: usize,
    /// Requests refused with 429 because every slot was taken.
    ingest_refused_busy: std::sync::atomic::AtomicU64,
    /// The PostgreSQL listener's connection counts.
    pg: Arc<crate::pgwire::PgStats>,
    /// The syslog listeners' counts.
    syslog: Arc<crate::syslog::SyslogStats>,
    /// Requests read by the shippers' endpoints: OTLP, `_bulk`, Loki push.
    shipper_requests: [std::sync::atomic::AtomicU64; 3],
}

/// The other listeners' counters `/metrics` shows.
pub struct Stats {
    pub pg: Arc<crate::pgwire::PgStats>,
    pub syslog: Arc<crate::syslog::SyslogStats>,
}

/// Serves HTTP until `shutdown` turns true; requests in flight are answered first.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    cfg: HttpConfig,
    stats: Stats,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state = Arc::new(HttpState {
        engine,
        max_record_bytes: cfg.max_record_bytes,
        max_body_bytes: cfg.max_body_bytes,
        ingest_slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_requests)),
        max_concurrent: cfg.max_concurrent_requests,
        ingest_refused_busy: Default::default(),
        pg: stats.pg,
        syslog: stats.syslog,
        shipper_requests: Default::default(),
    });
    // Every ingest route takes a slot of http.max_concurrent_requests before its body is read.
    let slot = || axum::middleware::from_fn_with_state(Arc::clone(&state), ingest_slot);
    let app = Router::new()
        .route("/v1/logs", post(ingest).route_layer(slot()))
        .route(
            "/_bulk",
            post(shippers::bulk).put(shippers::bulk).route_layer(slot()),
        )
        .route(
            "/{index}/_bulk",
            post(shippers::bulk).put(shippers::bulk).route_layer(slot()),
        )
        .route(
            "/loki/api/v1/push",
            post(shippers::loki).route_layer(slot()),
        )
        .route("/", get(shippers::es_root))
        .route("/_license", get(shippers::es_license))
        .route("/_xpack", get(shippers::es_xpack))
        .route("/_cluster/health", get(shippers::es_health))
        .route("/v1/flush", post(flush))
        .route("/v1/compact", post(compact))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await?;
    Ok(())
}

/// Admits a `POST /v1/logs` only while fewer than `http.max_concurrent_requests` are in
/// flight, before its body is read: memory for request bodies stays bounded by the limit
/// times `http.max_body_bytes`. Beyond it: `429` with `Retry-After`, nothing stored, so a
/// shipper retries (as `logsphere ship`, Vector and Fluent Bit do) instead of the server
/// queueing without bound.
async fn ingest_slot(
    State(state): State<Arc<HttpState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = Arc::clone(&state.ingest_slots).try_acquire_owned() else {
        state
            .ingest_refused_busy
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many ingest requests in flight (http.max_concurrent_requests = {}); \
                 nothing was stored, retry",
                state.max_concurrent
            ),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(1u32));
        return resp;
    };
    next.run(request).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn ingest(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match shippers::inflate(&headers, body, state.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // OTLP/HTTP logs share the path: protobuf by Content-Type (an empty protobuf request is
    // a valid one with no records), JSON by its shape.
    if !params.contains_key("format")
        && (shippers::is_protobuf(&headers) || otlp::is_otlp_json(&body))
    {
        return shippers::otlp(state, peer, params, headers, body).await;
    }
    if body.iter().all(|c| c.is_ascii_whitespace()) {
        return error(
            StatusCode::BAD_REQUEST,
            "empty body: send NDJSON (one JSON object per line) or a JSON array of objects",
        );
    }
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let format = match body_format(&params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let opts = DecodeOptions {
        max_record_bytes: state.max_record_bytes,
        default_topic: params
            .get("topic")
            .cloned()
            .unwrap_or_else(|| "logs".into()),
        origin: format!("http {peer}"),
        format,
        default_source: params.get("source").filter(|s| !s.is_empty()).cloned(),
        rejected: Vec::new(),
    };
    match state.engine.ingest(body, key, opts).await {
        Ok(o) => {
            let resp = axum::Json(json!({ "accepted": o.accepted, "rejected": o.rejected }))
                .into_response();
            replayed(resp, o)
        }
        Err(e) => ingest_error(e, peer),
    }
}

/// The `Idempotency-Key` header, checked; a bad one is a 400.
#[allow(clippy::result_large_err)]
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Response> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if !k.is_empty() && k.len() <= 256 => Ok(Some(k.to_string())),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1 to 256 visible ASCII characters",
        )),
    }
}

/// Marks the answer to a repeated `Idempotency-Key` (`Idempotent-Replayed: true`).
fn replayed(mut resp: Response, o: logsphere_engine::IngestOutcome) -> Response {
    if o.replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    resp
}

/// The answer when storing failed: nothing was stored, the client retries.
fn ingest_error(e: EngineError, peer: SocketAddr) -> Response {
    match e {
        e @ EngineError::KeyInProgress {
            retry_after_secs, ..
        } => {
            let mut resp = error(StatusCode::CONFLICT, e.to_string());
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(retry_after_secs),
            );
            resp
        }
        EngineError::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down; retry"),
        e => {
            tracing::error!(peer = %peer, error = %e, "ingest failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not stored, retry: {e}"),
            )
        }
    }
}

/// The body's format: `?format=` when given, else JSON (NDJSON or an array), as before
/// formats existed. The Content-Type is not consulted: clients post JSON as `text/plain`
/// too, and their arrays and dead letters must keep working.
fn body_format(params: &HashMap<String, String>) -> Result<Format, String> {
    match params.get("format") {
        Some(f) => f
            .parse()
            .map_err(|e| format!("query parameter format: {e}")),
        None => Ok(Format::Json),
    }
}

/// `200 ok` when the node can serve; `503` when the WAL refuses writes after a failed
/// fsync, and in cluster mode with what it waits for
/// (Cassandra or Kafka not answering yet).
async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    if let Some(why) = state.engine.not_durable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not accepting writes: {why}\n"),
        )
            .into_response();
    }
    match state.engine.cluster() {
        None => "ok\n".into_response(),
        Some(cluster) => match cluster.ping().await {
            Ok(()) => "ok\n".into_response(),
            Err(waiting) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {waiting}\n"),
            )
                .into_response(),
        },
    }
}

async fn flush(State(state): State<Arc<HttpState>>) -> Response {
    match state.engine.flush().await {
        Ok(rows) => axum::Json(json!({ "flushed_rows": rows })).into_response(),
        Err(e @ EngineError::Unsupported(_)) => error(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("flush failed: {e}"),
        ),
    }
}

/// Runs one compaction round now; answers once it is committed.
async fn compact(State(state): State<Arc<HttpState>>) -> Response {
    match state.engine.compact().await {
        Ok(r) => axum::Json(json!({
            "groups": r.groups,
            "files_before": r.files_before,
            "files_after": r.files_after,
            "files_merged": r.files_merged,
            "rows": r.rows,
            "bytes": r.bytes,
            "retired_removed": r.retired_removed,
        }))
        .into_response(),
        Err(e @ EngineError::Unsupported(_)) => error(StatusCode::NOT_IMPLEMENTED, e.to_string()),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("compaction failed (committed files are untouched): {e}"),
        ),
    }
}
