//! The HTTP edge: ingest (`POST /v1/events`, `/api/realtime/events/publish`,
//! the command endpoints, `/ws/ingest`), the WebSocket fanout paths,
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! [`router`] builds the whole app from an [`AppState`] so that tests can drive
//! it with `oneshot` requests, without a socket.
//!
//! Contract: an ingest request is answered `202` only after every event it
//! carries is in the log (the append returned). Errors are JSON
//! `{"error":{"code","message","field"?}}`.

mod commands;
mod console;
mod error;
mod events_query;
mod ingest;
mod listener;
pub mod openapi;
mod ws_ingest;

pub use error::ApiError;
pub use ingest::{IngestOutcome, ingest_events};
pub use listener::LimitedListener;

use crate::auth::{Authenticator, Principal, Rate, RateLimiter};
use crate::event_log::EventLog;
use crate::metrics::Metrics;
use crate::websocket_fanout::{Hub, WsPath};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Settings of the ingest API.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest accepted request body or WS frame, in bytes (default 8 MiB).
    pub max_body_bytes: usize,
    /// Most events in one request or frame (default 10,000).
    pub max_batch_events: usize,
    /// Per-event decode limits; `now_ms` is filled per request when
    /// `check_skew` is on.
    pub limits: schemas::Limits,
    /// Whether `ts` must lie within the skew window of the server clock.
    pub check_skew: bool,
    /// How long an append may take before the request answers 503.
    pub append_timeout: Duration,
    /// Rate of an end user (JWT or session), in events.
    pub user_rate: Rate,
    /// Rate of an app whose key sets none, in events.
    pub app_rate: Rate,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 8 << 20,
            max_batch_events: 10_000,
            limits: schemas::Limits::default(),
            check_skew: true,
            append_timeout: Duration::from_secs(5),
            user_rate: Rate {
                per_second: 200.0,
                burst: 1_000.0,
            },
            app_rate: Rate {
                per_second: 50_000.0,
                burst: 100_000.0,
            },
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
    pub auth: Authenticator,
    pub limiter: Arc<RateLimiter>,
    /// The materialised views the query endpoints read.
    pub views: crate::view_store::ViewStore,
}

/// The whole HTTP app. Every route is registered through utoipa-axum, so
/// it is in the OpenAPI document (`GET /openapi.json`) by construction; see
/// [`openapi`] for how to add one.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let app = OpenApiRouter::new()
        .routes(routes!(ingest_v1))
        .routes(routes!(publish))
        .routes(routes!(ws_ingest::upgrade))
        .merge(commands::routes())
        .merge(crate::schema_registry::routes())
        .routes(routes!(events_query::range))
        .routes(routes!(events_query::info))
        .merge(crate::view_store::routes())
        .merge(crate::notifier::routes())
        .routes(routes!(ws_stats))
        .routes(routes!(ws_broadcast))
        .routes(routes!(ws_send_to_user))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz));
    let (mut app, mut api) = app.split_for_parts();
    // The live console: static assets, documented as the one page `GET /`.
    app = app.merge(console::routes());
    openapi::add_console(&mut api);
    for path in WsPath::ALL {
        openapi::add_websocket(
            &mut api,
            path.as_str(),
            "Subscribe to derived events: send `{\"op\":\"subscribe\",\"channel\":\"document:d1\"}`; \
             frames are `subscribed`, `message` (with a per-channel offset), `error`, `ping`. See docs/API.md.",
        );
        app = app.route(
            path.as_str(),
            get(
                move |State(s): State<AppState>,
                      Query(params): Query<IngestParams>,
                      headers: HeaderMap,
                      ws: WebSocketUpgrade| async move {
                    // Nothing is sent before authentication: bad or missing
                    // credentials refuse the upgrade with 401.
                    let principal = authenticate(&s, &headers, params.token.as_deref()).await?;
                    // Small buffers: tens of thousands of subscribers, each
                    // sending only small control frames (tungstenite's 128 KiB
                    // read and write buffers would be ~5 GB at 20 K); the hub's
                    // own byte-bounded queue is the outbound buffer.
                    Ok::<_, ApiError>(
                        ws.read_buffer_size(4 * 1024)
                            .write_buffer_size(4 * 1024)
                            .max_message_size(64 * 1024)
                            .on_upgrade(move |socket| s.hub.serve(socket, path, principal)),
                    )
                },
            ),
        );
    }
    openapi::add_self(&mut api);
    openapi::finish(&mut api);
    let document: Arc<str> = api.to_json().unwrap_or_default().into();
    let app = app.route(
        "/openapi.json",
        get(move || async move {
            (
                [(header::CONTENT_TYPE, "application/json")],
                document.to_string(),
            )
        }),
    );
    app.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

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

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Object)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the log answers.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "`{\"status\":\"ready\",\"log\":\"redis\"}`", body = Object),
        (status = 503, description = "The log does not answer", body = openapi::ErrorBody)))]
async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.log
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(&e.to_string()))?;
    Ok(Json(json!({"status": "ready", "log": s.log.backend()})))
}

/// Authenticates a request (headers, `?token=`), answering 401 on failure.
pub(crate) async fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Principal, ApiError> {
    s.auth.authenticate(headers, token).await.map_err(|e| {
        s.metrics.auth_failures.with_label_values(&[e.code()]).inc();
        ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    })
}

/// Admin-only endpoints: an admin user or an app (service key); open when
/// auth is off.
async fn require_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate(s, headers, None).await? {
        Principal::Anonymous | Principal::App(_) => Ok(()),
        Principal::User(u) if u.role == crate::auth::Role::Admin => Ok(()),
        Principal::User(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin only",
        )),
    }
}

/// Fanout statistics (admin).
#[utoipa::path(get, path = "/api/realtime/websocket/stats", tag = "websocket",
    responses((status = 200, description = "Connections, channels, subscribers, queues", body = Object),
        (status = 401, body = openapi::ErrorBody), (status = 403, body = openapi::ErrorBody)))]
async fn ws_stats(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers).await?;
    Ok(Json(s.hub.stats()))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Broadcast {
    /// `/ws/analytics` (default), `/ws/collaboration`, `/ws/presence`, `/ws/notifications`.
    #[serde(default)]
    path: Option<String>,
    /// `user:{id}`, `project:{id}`, `document:{id}` or `category:{name}`.
    channel: String,
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// Publishes `data` to a channel of a fanout path (admin).
#[utoipa::path(post, path = "/api/realtime/websocket/broadcast", tag = "websocket",
    request_body = Broadcast,
    responses((status = 200, description = "`{\"delivered_to\":N}` subscribers", body = Object),
        (status = 401, body = openapi::ErrorBody), (status = 403, body = openapi::ErrorBody),
        (status = 422, description = "Bad `path` or `channel` (`field` names it)", body = openapi::ErrorBody)))]
async fn ws_broadcast(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(b): Json<Broadcast>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers).await?;
    let path = match b.path.as_deref() {
        None => WsPath::Analytics,
        Some(p) => WsPath::ALL
            .into_iter()
            .find(|w| w.as_str() == p)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!("unknown path {p:?}"),
                )
                .with_field(Some("path"))
            })?,
    };
    if !crate::websocket_fanout::valid_channel(&b.channel) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "expected user:{id}, project:{id}, document:{id} or category:{name}",
        )
        .with_field(Some("channel")));
    }
    let n = s
        .hub
        .publish_raw(path, &b.channel, &b.data)
        .await
        .map_err(fanout_unavailable)?;
    Ok(Json(json!({"delivered_to": n})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SendToUser {
    user_id: String,
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// Sends `data` to a user's `/ws/notifications` channel (admin).
#[utoipa::path(post, path = "/api/realtime/websocket/send-to-user", tag = "websocket",
    request_body = SendToUser,
    responses((status = 200, description = "`{\"delivered_to\":N}` connections", body = Object),
        (status = 401, body = openapi::ErrorBody), (status = 403, body = openapi::ErrorBody)))]
async fn ws_send_to_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(b): Json<SendToUser>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers).await?;
    let n = s
        .hub
        .publish_raw(
            WsPath::Notifications,
            &format!("user:{}", b.user_id),
            &b.data,
        )
        .await
        .map_err(fanout_unavailable)?;
    Ok(Json(json!({"delivered_to": n})))
}

/// The fanout could not publish (Redis unreachable): 503, retry later.
fn fanout_unavailable(reason: String) -> ApiError {
    tracing::warn!(%reason, "broadcast failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "fanout_unavailable",
        "the fanout cannot publish right now; retry later",
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct IngestParams {
    /// Accept the valid events of a batch and report the rejected ones,
    /// instead of rejecting the whole batch (the default).
    #[serde(default)]
    partial: bool,
    /// A user token, for clients that cannot set headers.
    #[serde(default)]
    token: Option<String>,
}

/// Ingests one event, a JSON array of events, or NDJSON; answers 202 once
/// every event is in the log.
#[utoipa::path(post, path = "/v1/events", tag = "ingest", params(IngestParams),
    request_body(content(
        (openapi::IngestBody = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"type\":\"writing.keystroke\",…}\n{…}\n")),
    )),
    responses(
        (status = 202, description = "Stored (duplicates are reported, not stored twice)", body = openapi::IngestAccepted),
        (status = 400, description = "Malformed body, or an invalid event (`field` names it)", body = openapi::ErrorBody),
        (status = 401, body = openapi::ErrorBody),
        (status = 413, body = openapi::ErrorBody),
        (status = 415, body = openapi::ErrorBody),
        (status = 422, description = "Schema violation (`field` names it)", body = openapi::ErrorBody),
        (status = 429, body = openapi::ErrorBody),
        (status = 503, description = "The log is unavailable (Retry-After)", body = openapi::ErrorBody)))]
async fn ingest_v1(
    s: State<AppState>,
    params: Query<IngestParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ingest_http(s, params, headers, body).await
}

/// `POST /v1/events` under the original specification's name.
#[utoipa::path(post, path = "/api/realtime/events/publish", tag = "ingest", params(IngestParams),
    request_body(content(
        (openapi::IngestBody = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 202, body = openapi::IngestAccepted),
        (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody),
        (status = 413, body = openapi::ErrorBody), (status = 415, body = openapi::ErrorBody),
        (status = 422, body = openapi::ErrorBody), (status = 429, body = openapi::ErrorBody),
        (status = 503, body = openapi::ErrorBody)))]
async fn publish(
    s: State<AppState>,
    params: Query<IngestParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ingest_http(s, params, headers, body).await
}

async fn ingest_http(
    State(s): State<AppState>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&s, &headers, params.token.as_deref()).await?;
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
    let decoded = ingest::decode_body(&s, &principal, &body, ndjson)?;
    let outcome = ingest_events(&s, &principal, decoded, params.partial).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome.body)).into_response())
}
