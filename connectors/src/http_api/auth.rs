//! Who is calling, for a handler: [`authenticate`] turns credentials into a
//! [`Principal`] (401 and a counted failure otherwise), [`require_admin`]
//! guards the admin endpoints (403).

use super::error::ApiError;
use super::state::AppState;
use crate::auth::{Principal, Role};
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

/// Admin-only endpoints: an admin user or an app (service key); open when
/// auth is off.
pub(crate) async fn require_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate(s, headers, None).await? {
        Principal::Anonymous | Principal::App(_) => Ok(()),
        Principal::User(u) if u.role == Role::Admin => Ok(()),
        Principal::User(_) => Err(ApiError::forbidden("admin only")),
    }
}
