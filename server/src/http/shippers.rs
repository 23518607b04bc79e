//! The endpoints log shippers post to unchanged: OTLP/HTTP logs (on `POST /v1/logs`, see
//! `mod.rs`), the Elasticsearch `_bulk` API with the probes clients make first (`GET /`,
//! `/_license`, `/_xpack`, `/_cluster/health`), and Loki's push API.
//!
//! Each reads its envelope into LogSphere JSON records (`logsphere_engine::ingest::shippers`)
//! and hands them to `Engine::ingest` exactly as `POST /v1/logs` does: the same decoder, the
//! same WAL fsync (or Kafka acknowledgement) before the answer, the same `Idempotency-Key`
//! rules. An envelope that does not decode is a 400 with nothing stored; a body compressed
//! with `Content-Encoding: gzip` is inflated first, up to `http.max_body_bytes`.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use logsphere_engine::IngestOutcome;
use logsphere_engine::ingest::shippers::{Shipped, bulk as es, loki as lk, otlp as ot};
use logsphere_engine::ingest::{DecodeOptions, Format, Rejected, decode_body};
use serde_json::{Value, json};

use super::{HttpState, error, idempotency_key, ingest_error, replayed};

type Params = Query<HashMap<String, String>>;

/// Whether the request says `Content-Type: application/x-protobuf`.
pub(super) fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-protobuf"))
        })
}

/// The body, inflated when it came with `Content-Encoding: gzip`; at most `limit` bytes.
#[allow(clippy::result_large_err)]
pub(super) fn inflate(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, String> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(body),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(body.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("Content-Encoding gzip: the body does not inflate: {e}"))?;
            if out.len() > limit {
                return Err(format!(
                    "Content-Encoding gzip: the body inflates to more than \
                     http.max_body_bytes ({limit} bytes)"
                ));
            }
            Ok(out.into())
        }
        Some(other) => Err(format!(
            "Content-Encoding {other:?} is not supported (gzip or none)"
        )),
    }
}

/// Stores a shipper's records as `POST /v1/logs` stores a body. `Err` is the answer to
/// give when nothing was stored.
#[allow(clippy::result_large_err)]
async fn store(
    state: &HttpState,
    peer: SocketAddr,
    what: &str,
    key: Option<String>,
    (body, records, rejected): (Bytes, usize, Vec<Rejected>),
    params: &HashMap<String, String>,
) -> Result<(IngestOutcome, DecodeOptions), Response> {
    let endpoint = match what {
        "otlp" => 0,
        "_bulk" => 1,
        _ => 2,
    };
    state.shipper_requests[endpoint].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let opts = DecodeOptions {
        max_record_bytes: state.max_record_bytes,
        default_topic: topic(params),
        origin: format!("{what} http {peer}"),
        format: Format::Json,
        default_source: params.get("source").filter(|s| !s.is_empty()).cloned(),
        rejected,
    };
    if records == 0 && opts.rejected.is_empty() {
        // Nothing to store (an export with no records): answered as stored, no WAL write.
        let none = IngestOutcome {
            accepted: 0,
            rejected: 0,
            replayed: false,
        };
        return Ok((none, opts));
    }
    match state.engine.ingest(body.clone(), key, opts.clone()).await {
        Ok(mut o) => {
            if what == "otlp" && state.engine.cluster().is_some() {
                // The nodes consuming the records decode them; OTLP's answer counts the ones
                // they store as dead letters, found by decoding here with the same options
                // (a replay of the request is counted alike).
                o.rejected = decode_body(&body, 0, &opts).rejected();
            }
            Ok((o, opts))
        }
        Err(e) => Err(ingest_error(e, peer)),
    }
}

/// Reads an envelope with `decode` (given the topic) and stores its records; a body that
/// does not decode is a 400 naming `what`.
async fn decode_and_store(
    state: &HttpState,
    peer: SocketAddr,
    what: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    decode: impl FnOnce(&str) -> Result<Shipped, String>,
) -> Result<IngestOutcome, Response> {
    let shipped = decode(&topic(params))
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("{what}: {e}")))?;
    let key = idempotency_key(headers)?;
    let (o, _) = store(state, peer, what, key, parts(shipped), params).await?;
    Ok(o)
}

fn parts(s: Shipped) -> (Bytes, usize, Vec<Rejected>) {
    (s.body.into(), s.records, s.rejected)
}

fn topic(params: &HashMap<String, String>) -> String {
    params
        .get("topic")
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| "logs".into())
}

/// OTLP/HTTP logs: protobuf or JSON in, the same encoding out.
pub(super) async fn otlp(
    state: Arc<HttpState>,
    peer: SocketAddr,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // `body` is inflated already (`mod.rs` reads it for its shape).
    let protobuf = is_protobuf(&headers);
    let decoded = decode_and_store(&state, peer, "otlp", &headers, &params, |topic| {
        if protobuf {
            ot::from_protobuf(&body, topic)
        } else {
            ot::from_json(&body, topic)
        }
    });
    match decoded.await {
        Ok(o) => {
            let ct = if protobuf {
                "application/x-protobuf"
            } else {
                "application/json"
            };
            let resp = (
                [(header::CONTENT_TYPE, ct)],
                ot::response(o.rejected, protobuf),
            );
            replayed(resp.into_response(), o)
        }
        Err(resp) => resp,
    }
}

/// `POST /_bulk` and `POST /{index}/_bulk`.
pub(super) async fn bulk(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    index: Option<Path<String>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let index = index.map(|Path(i)| i);
    bulk_into(state, peer, index, params, headers, body).await
}

async fn bulk_into(
    state: Arc<HttpState>,
    peer: SocketAddr,
    index: Option<String>,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let body = match inflate(&headers, body, state.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "parse_exception", e),
    };
    let key = match idempotency_key(&headers) {
        Ok(Some(k)) => k,
        Ok(None) => bulk_key(index.as_deref(), &params, &body),
        Err(resp) => return es_product(resp),
    };
    let mut parsed = match es::parse(&body, index.as_deref(), &topic(&params)) {
        Ok(b) => b,
        Err(e) => return es_error(StatusCode::BAD_REQUEST, "illegal_argument_exception", e),
    };
    let records = Bytes::from(std::mem::take(&mut parsed.shipped.body));
    let parts = (
        records.clone(),
        parsed.shipped.records,
        parsed.shipped.rejected.clone(),
    );
    match store(&state, peer, "_bulk", Some(key.clone()), parts, &params).await {
        Ok((o, opts)) => {
            let took = started.elapsed().as_millis() as u64;
            // Embedded mode counts the dead letters; in cluster mode records are decoded
            // where they are consumed, so the answer decodes them here to tell.
            let decoder_rejected = match state.engine.cluster() {
                Some(_) => None,
                None => Some(o.rejected.saturating_sub(opts.rejected.len())),
            };
            // Ids from the key: a replay names the same ones.
            let id_prefix = format!("{}-", &blake3::hash(key.as_bytes()).to_hex()[..20]);
            let answer = parsed.response(&records, &opts, took, decoder_rejected, &id_prefix);
            replayed(es_json(StatusCode::OK, answer), o)
        }
        Err(resp) => es_product(resp),
    }
}

/// The `Idempotency-Key` of a `_bulk` request that brings none: a hash of the body and of
/// what else decides its rows (the index in the URL, `?topic=`, `?source=`). Fluent Bit
/// sends a whole chunk again when any item of the answer failed, and shippers resend a
/// request after a timeout; byte for byte the same, it is now a replay instead of a second
/// copy of every record.
fn bulk_key(index: Option<&str>, params: &HashMap<String, String>, body: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    for part in [
        index,
        params.get("topic").map(String::as_str),
        params.get("source").map(String::as_str),
    ] {
        let part = part.unwrap_or_default().as_bytes();
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(body);
    format!("_bulk blake3 {}", h.finalize().to_hex())
}

/// Loki push: 204 once stored.
pub(super) async fn loki(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match inflate(&headers, body, state.max_body_bytes) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let protobuf = is_protobuf(&headers);
    let max = state.max_body_bytes;
    let decoded = decode_and_store(&state, peer, "loki", &headers, &params, |topic| {
        if protobuf {
            lk::from_snappy_protobuf(&body, topic, max)
        } else {
            lk::from_json(&body, topic)
        }
    });
    match decoded.await {
        Ok(o) => replayed(StatusCode::NO_CONTENT.into_response(), o),
        Err(resp) => resp,
    }
}

/// Every Elasticsearch answer names the product: clients (elasticsearch-py, the Java
/// client, Beats) refuse a server that does not.
fn es_product(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "x-elastic-product",
        header::HeaderValue::from_static("Elasticsearch"),
    );
    resp
}

fn es_json(status: StatusCode, body: Value) -> Response {
    es_product((status, axum::Json(body)).into_response())
}

fn es_error(status: StatusCode, kind: &str, reason: String) -> Response {
    es_json(
        status,
        json!({
            "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
            "status": status.as_u16(),
        }),
    )
}

/// The version Elasticsearch clients are told; 8.x is what Fluent Bit, Vector (API v8),
/// Filebeat 8 and elasticsearch-py 8/9 accept.
const ES_VERSION: &str = "8.17.0";

/// `GET /` (and `HEAD /`): the cluster banner clients read the version from.
pub(super) async fn es_root() -> Response {
    es_json(
        StatusCode::OK,
        json!({
            "name": "logsphere",
            "cluster_name": "logsphere",
            "cluster_uuid": "logsphere",
            "version": {
                "number": ES_VERSION,
                "build_flavor": "default",
                "build_type": "logsphere",
                "lucene_version": "9.12.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        }),
    )
}

/// `GET /_license`: Beats check it before they ship.
pub(super) async fn es_license() -> Response {
    es_json(
        StatusCode::OK,
        json!({"license": {"status": "active", "uid": "logsphere", "type": "basic", "mode": "basic"}}),
    )
}

/// `GET /_xpack`.
pub(super) async fn es_xpack() -> Response {
    es_json(
        StatusCode::OK,
        json!({
            "build": {"hash": "logsphere", "date": "2026-01-01T00:00:00Z"},
            "license": {"uid": "logsphere", "type": "basic", "mode": "basic", "status": "active"},
            "features": {},
        }),
    )
}

/// `GET /_cluster/health` (Vector's healthcheck).
pub(super) async fn es_health() -> Response {
    es_json(
        StatusCode::OK,
        json!({"cluster_name": "logsphere", "status": "green", "timed_out": false,
               "number_of_nodes": 1, "number_of_data_nodes": 1}),
    )
}
