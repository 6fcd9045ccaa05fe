//! The fanout's HTTP side: the WebSocket subscribe paths (`/ws/analytics`,
//! `/ws/collaboration`, `/ws/presence`, `/ws/notifications`) and the admin
//! endpoints (stats, broadcast, send-to-user). The hub itself
//! ([`crate::websocket_fanout`]) knows nothing of HTTP.

use super::auth::{authenticate, check_ws_origin, require_admin};
use super::error::ApiError;
use super::ingest::IngestParams;
use super::openapi;
use super::state::AppState;
use super::ws_upgrade::{NotAHandshake, RawUpgrade};
use crate::websocket_fanout::{PublishError, WsPath, valid_channel};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::{MethodRouter, get};
use serde::Deserialize;
use serde_json::json;

/// `GET` on a subscribe path: authenticates, then upgrades to a WebSocket
/// served by the hub.
pub(crate) fn subscribe(path: WsPath) -> MethodRouter<AppState> {
    get(
        move |State(s): State<AppState>,
              params: Result<Query<IngestParams>, QueryRejection>,
              uri: axum::http::Uri,
              headers: HeaderMap,
              ws: Result<RawUpgrade, NotAHandshake>| async move {
            // Nothing is sent before authentication: bad or missing
            // credentials refuse the upgrade with 401; then the request
            // is checked (a handshake, known parameters).
            let token = super::auth::query_token(&uri);
            let principal = authenticate(&s, &headers, token.as_deref()).await?;
            check_ws_origin(&s, &headers, token.as_deref())?;
            params.map_err(|r| ApiError::from_query(&r))?;
            let ws = ws.map_err(|r| ApiError::InvalidUpgrade(r.body_text()))?;
            let session_end = s.auth.session_end(&headers, token.as_deref(), &principal);
            Ok::<_, ApiError>(
                ws.on_upgrade(move |io| s.hub.serve(io, path, principal, session_end)),
            )
        },
    )
}

/// Fanout statistics (admin).
#[utoipa::path(get, path = "/api/realtime/websocket/stats", tag = "websocket",
    responses((status = 200, description = "Connections, channels, subscribers, queues", body = Object),
        (status = 401, body = openapi::ErrorBody), (status = 403, description = "Not an admin", body = openapi::ErrorBody)))]
pub(crate) async fn ws_stats(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers).await?;
    Ok(Json(s.hub.stats()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Broadcast {
    /// `/ws/analytics` (default), `/ws/collaboration`, `/ws/presence`, `/ws/notifications`.
    #[serde(default)]
    path: Option<String>,
    /// `user:{id}`, `project:{id}`, `document:{id}` or `category:{name}`
    /// (at most 200 characters).
    #[schema(
        pattern = r"^(user|project|document|category):[\s\S]+$",
        max_length = 200
    )]
    channel: String,
    /// Any JSON value, sent as the frame's `data`.
    #[schema(value_type = Value)]
    data: serde_json::Value,
}

/// Publishes `data` to a channel of a fanout path (admin).
#[utoipa::path(post, path = "/api/realtime/websocket/broadcast", tag = "websocket",
    request_body = Broadcast,
    responses((status = 200, description = "`{\"delivered_to\":N}` subscribers", body = Delivered),
        (status = 401, body = openapi::ErrorBody), (status = 403, description = "Not an admin", body = openapi::ErrorBody),
        (status = 422, description = "Bad `path` or `channel` (`field` names it)", body = openapi::ErrorBody),
        (status = 503, description = "The fanout cannot publish (`fanout_unavailable`)", body = openapi::ErrorBody)))]
pub(crate) async fn ws_broadcast(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Who is asking comes first: nothing of the body is read for a caller
    // that may not broadcast.
    require_admin(&s, &headers).await?;
    let body = body.map_err(|r| ApiError::from_body(&r, s.config.max_body_bytes))?;
    let b: Broadcast = ApiError::parse_json(&body)?;
    let path = match b.path.as_deref() {
        None => WsPath::Analytics,
        Some(p) => WsPath::ALL
            .into_iter()
            .find(|w| w.as_str() == p)
            .ok_or_else(|| ApiError::invalid_field("path", format!("unknown path {p:?}")))?,
    };
    if !valid_channel(&b.channel) {
        return Err(ApiError::invalid_field(
            "channel",
            "expected user:{id}, project:{id}, document:{id} or category:{name}",
        ));
    }
    let n = s
        .hub
        .publish_raw(path, &b.channel, &b.data)
        .await
        .map_err(fanout_unavailable)?;
    Ok(Json(json!({"delivered_to": n})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendToUser {
    /// The user whose `user:{id}` channel of `/ws/notifications` gets the frame.
    #[schema(min_length = 1, max_length = 195)]
    user_id: String,
    /// Any JSON value, sent as the frame's `data`.
    #[schema(value_type = Value)]
    data: serde_json::Value,
}

/// How many subscribers a frame was handed to.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Delivered {
    delivered_to: u64,
}

/// Sends `data` to a user's `/ws/notifications` channel (admin).
#[utoipa::path(post, path = "/api/realtime/websocket/send-to-user", tag = "websocket",
    request_body = SendToUser,
    responses((status = 200, description = "`{\"delivered_to\":N}` connections", body = Delivered),
        (status = 401, body = openapi::ErrorBody), (status = 403, description = "Not an admin", body = openapi::ErrorBody),
        (status = 422, description = "A field is missing or wrong (`field` names it)", body = openapi::ErrorBody),
        (status = 503, description = "The fanout cannot publish (`fanout_unavailable`)", body = openapi::ErrorBody)))]
pub(crate) async fn ws_send_to_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers).await?;
    let body = body.map_err(|r| ApiError::from_body(&r, s.config.max_body_bytes))?;
    let b: SendToUser = ApiError::parse_json(&body)?;
    if b.user_id.is_empty() || !valid_channel(&format!("user:{}", b.user_id)) {
        return Err(ApiError::invalid_field(
            "user_id",
            "expected 1 to 195 characters",
        ));
    }
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
fn fanout_unavailable(reason: PublishError) -> ApiError {
    tracing::warn!(%reason, "broadcast failed");
    ApiError::FanoutUnavailable
}
