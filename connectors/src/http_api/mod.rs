//! The HTTP edge, every handler and the router: ingest (`POST /v1/events`,
//! `/api/realtime/events/publish`, the command endpoints, `/ws/ingest`), the
//! WebSocket fanout paths and their admin endpoints, the event queries, the
//! views, the notifications, the Schema Registry read API, the console,
//! `/metrics`, `/healthz`, `/readyz` and `/openapi.json`.
//!
//! [`router`] builds the whole app from an [`AppState`] so that tests can drive
//! it with `oneshot` requests, without a socket. Handlers reach the
//! components (log, hub, views, notifier) only through `State<AppState>`; the
//! components know nothing of HTTP, and no other module of this crate
//! imports this one: only the binary assembles it.
//!
//! Contract: an ingest request is answered `202` only after every event it
//! carries is in the log (the append returned). Errors are JSON
//! `{"error":{"code","message","field"?}}`, all built by [`ApiError`]
//! (`error.rs`).
//!
//! Files: `state.rs` (what handlers share), `error.rs`, `auth.rs` (credentials
//! → principal), `openapi.rs`, `listener.rs`, `meta.rs` (health, metrics),
//! `ingest.rs`, `commands.rs`, `ws_ingest.rs`, `events.rs` (log queries),
//! `fanout.rs` (subscribe paths and admin), `ws_upgrade.rs` (their handshake), `notifications.rs`, `views.rs`,
//! `schema_registry.rs`, `console/`.

mod auth;
mod commands;
mod console;
mod contract;
mod error;
mod events;
mod fanout;
mod ingest;
mod listener;
mod meta;
mod notifications;
pub mod openapi;
mod schema_registry;
mod server;
mod state;
mod views;
mod ws_ingest;
mod ws_upgrade;

pub use error::ApiError;
pub use ingest::{IngestOutcome, ingest_events};
pub use listener::{LimitedListener, PeerAddr};
pub use server::serve;
pub use state::{AppState, IngestConfig};

use crate::websocket_fanout::WsPath;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The whole HTTP app. Every route is registered through utoipa-axum, so
/// it is in the OpenAPI document (`GET /openapi.json`) by construction; see
/// [`openapi`] for how to add one.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let app = OpenApiRouter::new()
        .routes(routes!(ingest::ingest_v1))
        .routes(routes!(ingest::publish))
        .routes(routes!(ws_ingest::upgrade))
        .merge(commands::routes())
        .merge(schema_registry::routes())
        .routes(routes!(events::range))
        .routes(routes!(events::info))
        .merge(views::routes())
        .merge(notifications::routes())
        .routes(routes!(fanout::ws_stats))
        .routes(routes!(fanout::ws_broadcast))
        .routes(routes!(fanout::ws_send_to_user))
        .routes(routes!(meta::metrics))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::readyz));
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
        app = app.route(path.as_str(), fanout::subscribe(path));
    }
    openapi::add_self(&mut api);
    openapi::finish(&mut api);
    let mut document = serde_json::to_value(&api).unwrap_or_default();
    contract::complete(&mut document, &state.config, state.auth.enabled());
    let document = Arc::new(document);
    let config = state.config.clone();
    let app = app.route(
        "/openapi.json",
        get(move || async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            (
                [(header::CONTENT_TYPE, "application/json")],
                contract::render(&document, &config, now),
            )
        }),
    );
    // After every route: the 405 fallback is set on the routes registered
    // so far (axum keeps the `Allow` header on its answer).
    app.fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A request with a body must say what it is (415 otherwise), and may not be
/// one of the types a cross-site form or `no-cors` fetch sends without a
/// CORS preflight (`text/plain`, form encodings): with a session cookie,
/// those would let any web page write as the user.
fn refuse_body_type(req: &Request) -> Option<ApiError> {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return None;
    }
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Some(ApiError::UnsupportedMediaType("no Content-Type".into()));
    };
    let essence = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
    )
    .then_some(ApiError::UnsupportedMediaType(essence))
}

/// Counts every request by route template and status, and times it. It
/// also records the TCP peer in [`auth::PEER_HEADER`] (removing any value a
/// client sent), which keys anonymous callers' rate limits.
async fn track(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<listener::PeerAddr>>()
        .map(|c| c.0.0.ip());
    let headers = req.headers_mut();
    headers.remove(auth::PEER_HEADER);
    if let Some(ip) = peer
        && let Ok(v) = header::HeaderValue::from_str(&ip.to_string())
    {
        headers.insert(auth::PEER_HEADER, v);
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let resp = match refuse_body_type(&req) {
        Some(refusal) => refusal.into_response(),
        None => match tokio::time::timeout(s.config.request_timeout, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => ApiError::RequestTimedOut {
                seconds: s.config.request_timeout.as_secs_f64(),
            }
            .into_response(),
        },
    };
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
