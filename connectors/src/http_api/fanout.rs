//! The fanout's HTTP side: the WebSocket subscribe paths (`/ws/analytics`,
//! `/ws/collaboration`, `/ws/presence`, `/ws/notifications`) and the admin
//! endpoints (stats, broadcast, send-to-user). The hub itself
//! ([`crate::websocket_fanout`]) knows nothing of HTTP.

use super::auth::{authenticate, check_ws_origin, require_admin};
use super::error::ApiError;
use super::ingest::IngestParams;
use super::openapi;
use super::state::AppState;
use crate::websocket_fanout::{PublishError, WsPath, valid_channel};
use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
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
              Query(params): Query<IngestParams>,
              headers: HeaderMap,
              ws: WebSocketUpgrade| async move {
            // Nothing is sent before authentication: bad or missing
            // credentials refuse the upgrade with 401.
            let principal = authenticate(&s, &headers, params.token.as_deref()).await?;
            check_ws_origin(&s, &headers, params.token.as_deref())?;
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
    )
}

/// Fanout statistics (admin).
#[utoipa::path(get, path = "/api/realtime/websocket/stats", tag = "websocket",
    responses((status = 200, description = "Connections, channels, subscribers, queues", body = Object),
        (status = 401, body = openapi::ErrorBody), (status = 403, body = openapi::ErrorBody)))]
pub(crate) async fn ws_stats(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&s, &headers).await?;
    Ok(Json(s.hub.stats()))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Broadcast {
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
pub(crate) async fn ws_broadcast(
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
pub(crate) struct SendToUser {
    user_id: String,
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// Sends `data` to a user's `/ws/notifications` channel (admin).
#[utoipa::path(post, path = "/api/realtime/websocket/send-to-user", tag = "websocket",
    request_body = SendToUser,
    responses((status = 200, description = "`{\"delivered_to\":N}` connections", body = Object),
        (status = 401, body = openapi::ErrorBody), (status = 403, body = openapi::ErrorBody)))]
pub(crate) async fn ws_send_to_user(
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
fn fanout_unavailable(reason: PublishError) -> ApiError {
    tracing::warn!(%reason, "broadcast failed");
    ApiError::FanoutUnavailable
}
