//! Who is calling, for a handler: [`authenticate`] turns credentials into a
//! [`Principal`] (401 and a counted failure otherwise), [`require_admin`]
//! guards the admin endpoints (403).

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Principal;
use axum::http::HeaderMap;

/// Authenticates a request (headers, `?token=`), answering 401 on failure.
/// With auth off, an anonymous request must be addressed to a loopback
/// `Host` unless `auth.allow_anonymous` (403 otherwise, [`loopback_host`]).
pub(crate) async fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Principal, ApiError> {
    let principal = s.auth.authenticate(headers, token).await.map_err(|e| {
        s.metrics.auth_failures.with_label_values(&[e.code()]).inc();
        ApiError::Unauthenticated(e)
    })?;
    if matches!(principal, Principal::Anonymous) && !s.config.anonymous_any_host {
        let host = headers
            .get(axum::http::header::HOST)
            .map(|h| h.to_str().unwrap_or("(not text)"));
        // No Host: not a browser (every browser sends it), so not a page.
        if let Some(host) = host
            && !loopback_host(host)
        {
            s.metrics
                .auth_failures
                .with_label_values(&["host_not_allowed"])
                .inc();
            return Err(ApiError::forbidden(format!(
                "authentication is off, so only requests addressed to this machine by a \
                 loopback name or address (localhost, 127.0.0.1, [::1]) are served, not \
                 Host {host:?} (a web page could reach this server by rebinding its own \
                 name to it); configure a credential in [auth], or auth.allow_anonymous = true"
            )));
        }
    }
    Ok(principal)
}

/// Whether a `Host` header names this machine's loopback interface:
/// `localhost` or a name under it (browsers resolve those to loopback
/// themselves), or a loopback IP, with or without a port. DNS rebinding
/// needs a name the attacker's DNS answers for, which these are not.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            ip => ip.is_loopback(),
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

/// Cross-site WebSocket hijacking: a browser opens a WebSocket to any
/// address from any page, with the session cookie and any `Authorization:
/// Basic` it holds, and no CORS check. So an upgrade that is not
/// authenticated by a token (`Authorization: Bearer`, `?token=`; a page
/// cannot take one from another origin) — one that the session cookie
/// authenticates, or any upgrade while auth is off — must come from this
/// server's own origin (the `Host` it was asked for) or one of
/// `server.allowed_origins`.
pub(crate) fn check_ws_origin(
    s: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ApiError> {
    use axum::http::header;
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        // Browsers always send Origin on an upgrade; other clients need not.
        return Ok(());
    };
    if s.auth.by_token(headers, query_token) {
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
            "a WebSocket from origin {origin:?} without a token is not allowed \
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

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_and_addresses_are_loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "app.localhost:3000",
            "127.0.0.1",
            "127.1.2.3:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "localhost.evil.example",
            "evillocalhost",
            "127.0.0.1.nip.io:8080",
            "10.0.0.5:8080",
            "[::2]:8080",
            "[::1",
            "",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
