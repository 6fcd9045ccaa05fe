//! Who is calling, for a handler: [`authenticate`] turns credentials into a
//! [`Principal`] (401 and a counted failure otherwise), [`require_admin`]
//! guards the admin endpoints (403).

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Principal;
use axum::http::HeaderMap;

/// Authenticates a request (headers, `?token=`), answering 401 on failure.
pub(crate) async fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Principal, ApiError> {
    s.auth.authenticate(headers, token).await.map_err(|e| {
        s.metrics.auth_failures.with_label_values(&[e.code()]).inc();
        ApiError::Unauthenticated(e)
    })
}

/// Admin-only endpoints: an admin user or a key with the `admin` scope;
/// open when auth is off (loopback only).
pub(crate) async fn require_admin(
    s: &AppState,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let principal = authenticate(s, headers, None).await?;
    if principal.is_admin() {
        Ok(principal)
    } else {
        Err(ApiError::forbidden(
            "admin only (an admin user or an API key with the admin scope)",
        ))
    }
}

/// The header the router's outermost middleware sets to the TCP peer's
/// address (any value a client sent under this name is removed first): how
/// anonymous callers are told apart for rate limits.
pub(crate) const PEER_HEADER: &str = "x-inkstream-peer";

/// The caller's peer address, as the middleware recorded it.
pub(crate) fn peer(headers: &HeaderMap) -> Option<std::net::IpAddr> {
    headers.get(PEER_HEADER)?.to_str().ok()?.parse().ok()
}

/// Cross-site WebSocket hijacking: a browser sends the session cookie on a
/// WebSocket upgrade from any page, so a cookie-authenticated upgrade must
/// come from this server's own origin (the `Host` it was asked for) or one
/// of `server.allowed_origins`. Upgrades carrying a token (header or
/// `?token=`) are not checked: a page cannot take one from another origin.
pub(crate) fn check_ws_origin(
    s: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ApiError> {
    use axum::http::header;
    let by_cookie = query_token.is_none()
        && !headers.contains_key(header::AUTHORIZATION)
        && headers.contains_key(header::COOKIE);
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        // Browsers always send Origin on an upgrade; other clients need not.
        return Ok(());
    };
    if !by_cookie {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, rest)| Some(rest) == host);
    if same_origin || s.config.allowed_origins.iter().any(|o| o == origin) {
        return Ok(());
    }
    s.metrics
        .auth_failures
        .with_label_values(&["origin_not_allowed"])
        .inc();
    Err(ApiError::Forbidden {
        message: format!(
            "a cookie-authenticated WebSocket from origin {origin:?} is not allowed \
             (server.allowed_origins)"
        ),
        field: None,
    })
}

/// The `?token=` of a request's query string, read on its own so that
/// authentication comes before the other parameters are checked.
pub(crate) fn query_token(uri: &axum::http::Uri) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenOnly {
        token: Option<String>,
    }
    axum::extract::Query::<TokenOnly>::try_from_uri(uri)
        .ok()
        .and_then(|axum::extract::Query(t)| t.token)
}
