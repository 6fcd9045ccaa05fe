//! `/ws/ingest`: clients stream events as JSON text frames (one event or an
//! array); each frame is answered, in order, with the stored ids or the
//! per-event errors:
//!
//! - `{"op":"ack","frame":N,"accepted","duplicates","ids","events"}`
//! - `{"op":"error","frame":N,"error":{"code","message","field"?,…}}`
//!
//! Backpressure: a frame is read only after the previous one is in the log,
//! so a slow log slows the socket (TCP flow control) instead of buffering.

use super::auth::authenticate;
use super::error::ApiError;
use super::ingest::{self, ingest_events};
use super::state::AppState;
use crate::auth::Principal;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WsParams {
    /// Accept the valid events of a frame and report the rejected ones.
    #[serde(default)]
    partial: bool,
}

/// Streams events over a WebSocket: JSON text frames (one event or an
/// array), each answered in order with `{"op":"ack",…}` or `{"op":"error",…}`.
#[utoipa::path(get, path = "/ws/ingest", tag = "websocket", params(WsParams),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "Not a WebSocket handshake, or a bad parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "Missing or bad credentials: no upgrade", body = super::openapi::ErrorBody)))]
pub(crate) async fn upgrade(
    State(s): State<AppState>,
    params: Result<Query<WsParams>, QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Nothing is sent before authentication: a bad credential refuses the
    // upgrade; then the request is checked (a handshake, known parameters).
    let token = super::auth::query_token(&uri);
    let principal = authenticate(&s, &headers, token.as_deref()).await?;
    super::auth::check_ws_origin(&s, &headers, token.as_deref())?;
    let Query(params) = params.map_err(|r| ApiError::from_query(&r))?;
    let ws = ws.map_err(|r| ApiError::InvalidUpgrade(r.body_text()))?;
    let max = s.config.max_body_bytes;
    let peer = super::auth::peer(&headers);
    let ends = credential_end(
        &principal,
        s.auth.session_end(&headers, token.as_deref(), &principal),
    );
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| serve(socket, s, principal, peer, params.partial, ends))
        .into_response())
}

/// Resolves, with the close reason, when the credential the connection was
/// opened with ends: a JWT at its `exp`, a session cookie once its session
/// no longer holds (`session_end`). Never for API keys.
fn credential_end(
    principal: &Principal,
    session_end: Option<crate::auth::SessionEnd>,
) -> impl Future<Output = &'static str> + Send + 'static {
    let exp = match principal {
        Principal::User(u) => u.expires_at,
        _ => None,
    };
    async move {
        let expired = async {
            match exp {
                Some(exp) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    tokio::time::sleep(std::time::Duration::from_secs_f64(
                        (exp as f64 - now).max(0.0),
                    ))
                    .await;
                }
                None => std::future::pending().await,
            }
        };
        let ended = async {
            match session_end {
                Some(end) => end.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => "the token expired: reconnect with a new one",
            () = ended => "the session ended or changed: reconnect",
        }
    }
}

/// Reads and answers frames until the client closes, or its credential
/// ends (`ends`: closed with 4001, between two frames, so no event is
/// accepted for a caller who is no longer who it was).
async fn serve(
    socket: WebSocket,
    s: AppState,
    principal: Principal,
    peer: Option<std::net::IpAddr>,
    partial: bool,
    ends: impl Future<Output = &'static str>,
) {
    let gauge = s.metrics.ws_ingest_connections.clone();
    gauge.inc();
    let (mut sink, mut stream) = socket.split();
    let mut frame: u64 = 0;
    tokio::pin!(ends);
    loop {
        let msg = tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
            reason = &mut ends => {
                let close = CloseFrame {
                    code: crate::websocket_fanout::CLOSE_TOKEN_EXPIRED,
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
        };
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                let reply = json!({"op":"error","frame":frame,"error":{
                    "code":"unsupported_media_type","message":"send events as JSON text frames"}});
                frame += 1;
                if sink
                    .send(Message::Text(reply.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let result = match ingest::decode_body(&s, &principal, peer, text.as_bytes(), false) {
            Ok(decoded) => ingest_events(&s, &principal, peer, decoded, partial).await,
            Err(e) => Err(e),
        };
        let reply = match result {
            Ok(outcome) => {
                let mut body = outcome.body;
                body["op"] = "ack".into();
                body["frame"] = frame.into();
                body
            }
            Err(e) => {
                json!({"op": "error", "frame": frame, "status": e.status().as_u16(), "error": e.body()})
            }
        };
        frame += 1;
        if sink
            .send(Message::Text(reply.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    gauge.dec();
}
