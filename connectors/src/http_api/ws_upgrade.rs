//! The WebSocket handshake of the subscribe paths, answered here so that
//! the hub gets the connection itself: it writes its frames, encoded once
//! per publication, straight to the socket (`websocket_fanout/socket.rs`).
//! The checks and their messages are those of axum's `WebSocketUpgrade`,
//! which `/ws/ingest` still uses.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request to upgrade to a WebSocket; see [`RawUpgrade::on_upgrade`].
pub(crate) struct RawUpgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake (400 `invalid_upgrade`).
#[derive(Debug)]
pub(crate) struct NotAHandshake(&'static str);

impl NotAHandshake {
    pub(crate) fn body_text(&self) -> String {
        self.0.to_owned()
    }
}

impl axum::response::IntoResponse for NotAHandshake {
    fn into_response(self) -> Response {
        super::error::ApiError::InvalidUpgrade(self.body_text()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RawUpgrade {
    type Rejection = NotAHandshake;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotAHandshake> {
        if parts.method != Method::GET {
            return Err(NotAHandshake("Request method must be `GET`"));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAHandshake("Connection header did not include 'upgrade'"));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAHandshake(
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(NotAHandshake("`Sec-WebSocket-Key` header missing"));
        };
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotAHandshake(
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| NotAHandshake("`Sec-WebSocket-Key` header missing"))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotAHandshake(
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ))?;
        Ok(RawUpgrade { accept, on_upgrade })
    }
}

impl RawUpgrade {
    /// Answers 101 and runs `serve` on the connection once hyper hands it
    /// over (after the response is written).
    pub(crate) fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(TokioIo<Upgraded>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let RawUpgrade { accept, on_upgrade } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                // The client went away between the response and the switch.
                Err(error) => tracing::debug!(error = %error, "WebSocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// Whether `name` lists `token` (case-insensitive), as in `Connection:
/// keep-alive, Upgrade`.
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_header_is_a_token_list() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&h, header::CONNECTION, "upgrade"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgraded-not"));
        assert!(!header_has_token(&h, header::CONNECTION, "upgrade"));
    }

    /// RFC 6455 §1.3's example.
    #[test]
    fn the_accept_key_is_the_rfc_s() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
