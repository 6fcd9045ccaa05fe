//! The HTTP edge: `POST /v1/events`, the WebSocket paths, `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! [`router`] builds the whole app from an [`AppState`] so that tests can drive
//! it with `oneshot` requests, without a socket.
//!
//! Contract: an ingest request is answered `202` only after every event it
//! carries is in the log (the append returned). Errors are JSON
//! `{"error":{"code","message","field"?}}`.

mod error;

pub use error::ApiError;

use crate::event_log::EventLog;
use crate::metrics::Metrics;
use crate::websocket_fanout::{Hub, WsPath};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Settings of the ingest API.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest accepted request body, in bytes (default 8 MiB).
    pub max_body_bytes: usize,
    /// Most events in one request (default 10,000).
    pub max_batch_events: usize,
    /// Per-event decode limits; `now_ms` is filled per request when
    /// `check_skew` is on.
    pub limits: schemas::Limits,
    /// Whether `ts` must lie within the skew window of the server clock.
    pub check_skew: bool,
    /// How long an append may take before the request answers 503.
    pub append_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 8 << 20,
            max_batch_events: 10_000,
            limits: schemas::Limits::default(),
            check_skew: true,
            append_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub config: Arc<IngestConfig>,
}

/// The whole HTTP app.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let mut app = Router::new()
        .route("/v1/events", post(ingest))
        .route("/api/realtime/events/publish", post(ingest))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz));
    for path in WsPath::ALL {
        app = app.route(
            path.as_str(),
            get(
                move |State(s): State<AppState>, ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(move |socket| s.hub.serve(socket, path))
                },
            ),
        );
    }
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

use axum::Json;

/// Counts every request by route template and status, and times it.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    s.metrics
        .http_request_seconds
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    s.metrics
        .http_requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.log
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(&e.to_string()))?;
    Ok(Json(json!({"status": "ready", "log": s.log.backend()})))
}

#[derive(Deserialize)]
struct IngestParams {
    /// Accept the valid events of a batch and report the rejected ones,
    /// instead of rejecting the whole batch (the default).
    #[serde(default)]
    partial: bool,
}

/// The dedup namespace of unauthenticated ingest.
const ANONYMOUS_APP: &str = "anonymous";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn ingest(
    State(s): State<AppState>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {} bytes", s.config.max_body_bytes),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", r.body_text())
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let ndjson = match essence {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" => true,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected application/json or application/x-ndjson, got {other:?}"),
            ));
        }
    };
    let mut limits = s.config.limits.clone();
    if s.config.check_skew {
        limits.now_ms = Some(now_ms());
    }
    let decoded = schemas::decode_batch(&body, ndjson, &limits).map_err(|e| {
        s.metrics
            .ingest_events_rejected
            .with_label_values(&[e.code])
            .inc();
        ApiError::from_decode(StatusCode::BAD_REQUEST, &e)
    })?;
    if decoded.len() > s.config.max_batch_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} events in one request; the limit is {}",
                decoded.len(),
                s.config.max_batch_events
            ),
        ));
    }
    let mut events = Vec::with_capacity(decoded.len());
    let mut rejected = Vec::new();
    for (index, result) in decoded.into_iter().enumerate() {
        match result {
            Ok(e) => events.push(e),
            Err(e) => {
                s.metrics
                    .ingest_events_rejected
                    .with_label_values(&[e.code])
                    .inc();
                rejected.push(json!({
                    "index": index, "code": e.code, "field": e.field, "message": e.message,
                }));
            }
        }
    }
    if !rejected.is_empty() && !params.partial {
        let first = &rejected[0];
        let message = format!(
            "{} of {} events are invalid; nothing was stored (event {}: {}{})",
            rejected.len(),
            rejected.len() + events.len(),
            first["index"],
            first["field"]
                .as_str()
                .map(|f| format!("{f}: "))
                .unwrap_or_default(),
            first["message"].as_str().unwrap_or(""),
        );
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_events", message)
                .with_field(first["field"].as_str())
                .with_details(json!({ "rejected": rejected })),
        );
    }
    if events.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_events",
            "no valid event in the request",
        )
        .with_details(json!({ "rejected": rejected })));
    }

    let start = Instant::now();
    let appended = tokio::time::timeout(
        s.config.append_timeout,
        s.log.append(ANONYMOUS_APP, &events),
    )
    .await;
    let backend = s.log.backend();
    let stored = match appended {
        Ok(Ok(stored)) => stored,
        Ok(Err(e)) => {
            s.metrics
                .log_errors
                .with_label_values(&[backend, "append"])
                .inc();
            tracing::warn!(error = %e, backend, "log append failed");
            return Err(ApiError::unavailable(
                "the event log cannot take writes right now",
            ));
        }
        Err(_) => {
            s.metrics
                .log_errors
                .with_label_values(&[backend, "append"])
                .inc();
            tracing::warn!(backend, "log append timed out");
            return Err(ApiError::unavailable(
                "the event log did not answer in time",
            ));
        }
    };
    s.metrics
        .log_append_seconds
        .with_label_values(&[backend])
        .observe(start.elapsed().as_secs_f64());
    s.metrics.ingest_batch_size.observe(events.len() as f64);
    let mut duplicates = 0;
    for (e, a) in events.iter().zip(&stored) {
        if a.duplicate {
            duplicates += 1;
        } else {
            s.metrics
                .ingest_events_accepted
                .with_label_values(&[e.category().as_str()])
                .inc();
        }
    }
    if duplicates > 0 {
        s.metrics.ingest_duplicates.inc_by(duplicates);
    }
    let mut body = json!({
        "accepted": events.len(),
        "duplicates": duplicates,
        "ids": events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        "events": events.iter().zip(&stored).map(|(e, a)| json!({
            "id": e.id, "offset": a.entry.id, "duplicate": a.duplicate,
        })).collect::<Vec<_>>(),
    });
    if !rejected.is_empty() {
        body["rejected"] = rejected.into();
    }
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
