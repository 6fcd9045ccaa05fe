//! The notification endpoints. They find the notifier in
//! [`AppState::notifier`]; without one they answer 503
//! `notifications_disabled`.
//!
//! - `GET /api/realtime/notifications?unread=true&offset=0&limit=50[&user_id=]`
//! - `POST /api/realtime/notifications/{id}/read`
//! - `GET|PUT /api/realtime/notifications/preferences[?user_id=]`
//! - `POST /api/realtime/notifications/send` (admin user or a key with the admin scope)
//!
//! A user acts on their own notifications; an admin user, an app (API key)
//! or anyone when auth is off names the user with `user_id`.

use super::auth::{authenticate, require_admin};
use super::error::ApiError;
use super::openapi::ErrorBody;
use super::state::AppState;
use crate::auth::Principal;
use crate::notifier::NotifierHandle;
use crate::notifier::policy::{Alert, Preferences};
use crate::notifier::store::StoreError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes, documented in the OpenAPI document (see
/// [`super::openapi`]).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(mark_read))
        .routes(routes!(get_prefs, put_prefs))
        .routes(routes!(send))
}

const ERR: &str = "`{\"error\":{\"code\",\"message\",\"field\"?}}`; 503 `notifications_disabled` or `store_unavailable`";

fn notifier(s: &AppState) -> Result<NotifierHandle, ApiError> {
    s.notifier.clone().ok_or(ApiError::NotificationsDisabled)
}

fn store_error(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "notification store error");
    ApiError::NotificationStoreUnavailable
}

/// Whose notifications: the caller's, or `user_id` for admins (an admin
/// user, a key with the `admin` scope, anyone when auth is off). Also says
/// whether the caller is an admin. Keys without `admin` hold no user and
/// may not act for one.
async fn target_user(
    s: &AppState,
    headers: &HeaderMap,
    user_id: Option<String>,
) -> Result<(String, bool), ApiError> {
    let principal = authenticate(s, headers, None).await?;
    let admin = principal.is_admin();
    match principal {
        Principal::User(u) => match user_id {
            Some(other) if other != u.id && !admin => {
                Err(ApiError::forbidden("only admins may act for another user"))
            }
            Some(other) => Ok((other, admin)),
            None => Ok((u.id, admin)),
        },
        Principal::App(_) if !admin => Err(ApiError::forbidden(
            "notifications of users need an API key with the admin scope",
        )),
        Principal::App(_) | Principal::Anonymous => user_id
            .filter(|u| !u.is_empty())
            .map(|u| (u, admin))
            .ok_or_else(|| ApiError::MissingField {
                message: "user_id is required for apps (and when auth is off)".into(),
                field: "user_id".into(),
            }),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only unread notifications.
    #[serde(default)]
    unread: bool,
    /// Notifications to skip (newest first).
    #[serde(default)]
    offset: usize,
    /// Page size, 1–200 (default 50).
    #[serde(default = "default_limit")]
    limit: usize,
    /// Another user's (admins, or anyone when auth is off).
    user_id: Option<String>,
}

fn default_limit() -> usize {
    50
}

/// A user's in-app notifications, newest first.
#[utoipa::path(get, path = "/api/realtime/notifications", tag = "notifications", params(ListQuery),
    responses((status = 200, description = "`{user_id, notifications, total, offset, limit}`", body = Object),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let n = notifier(&s)?;
    let (user, _) = target_user(&s, &headers, q.user_id).await?;
    let limit = q.limit.clamp(1, 200);
    let (items, total) = n
        .store
        .in_app_list(&user, q.unread, q.offset, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "user_id": user,
        "notifications": items,
        "total": total,
        "offset": q.offset,
        "limit": limit,
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UserQuery {
    /// Another user's (admins, or anyone when auth is off).
    user_id: Option<String>,
}

/// Marks one notification read.
#[utoipa::path(post, path = "/api/realtime/notifications/{id}/read", tag = "notifications",
    params(("id" = String, Path, description = "Notification id"), UserQuery),
    responses((status = 200, description = "`{id, read: true}`", body = Object),
        (status = 404, description = ERR, body = ErrorBody),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn mark_read(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<UserQuery>,
) -> Result<Json<Value>, ApiError> {
    let n = notifier(&s)?;
    let (user, _) = target_user(&s, &headers, q.user_id).await?;
    if !n
        .store
        .in_app_mark_read(&user, &id)
        .await
        .map_err(store_error)?
    {
        return Err(ApiError::NotFound {
            message: format!("no notification {id:?} for this user"),
            field: None,
        });
    }
    Ok(Json(json!({"id": id, "read": true})))
}

/// A user's notification preferences (the configured defaults until set).
#[utoipa::path(get, path = "/api/realtime/notifications/preferences", tag = "notifications", params(UserQuery),
    responses((status = 200, description = "`{user_id, preferences}`", body = Object),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn get_prefs(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UserQuery>,
) -> Result<Json<Value>, ApiError> {
    let n = notifier(&s)?;
    let (user, _) = target_user(&s, &headers, q.user_id).await?;
    Ok(Json(
        json!({"user_id": user, "preferences": n.prefs(&user)}),
    ))
}

/// Sets a user's preferences: timezone, quiet_hours, channels per priority,
/// digest frequency and hour, email, phone, webhook_url, flow_hold.
#[utoipa::path(put, path = "/api/realtime/notifications/preferences", tag = "notifications", params(UserQuery),
    request_body(content = Object, description = "Preferences; missing fields take the defaults, unknown ones are refused"),
    responses((status = 200, description = "`{user_id, preferences}`", body = Object),
        (status = 422, description = ERR, body = ErrorBody),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn put_prefs(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UserQuery>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let n = notifier(&s)?;
    let (user, privileged) = target_user(&s, &headers, q.user_id).await?;
    // Missing fields take the configured defaults, unknown ones are refused.
    let defaults = serde_json::to_value(&n.config().defaults).unwrap_or(Value::Null);
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(format!("malformed JSON: {e}")))?;
    let Value::Object(patch) = patch else {
        return Err(ApiError::InvalidJson("expected a JSON object".into()));
    };
    let mut merged = defaults;
    for (k, v) in patch {
        merged[k] = v;
    }
    let prefs: Preferences =
        serde_json::from_value(merged).map_err(|e| ApiError::InvalidField {
            message: e.to_string(),
            field: None,
        })?;
    prefs
        .validate()
        .map_err(|(field, msg)| ApiError::invalid_field(field, msg))?;
    // The server POSTs to a webhook URL: letting any user choose it would
    // let them make it call internal addresses (SSRF).
    if prefs.webhook_url.is_some() && !privileged && !n.config().webhook.allow_user_urls {
        return Err(ApiError::Forbidden {
            message:
                "only admins may set webhook_url (notifications.webhook.allow_user_urls = false)"
                    .into(),
            field: Some("webhook_url".into()),
        });
    }
    n.set_prefs(&user, prefs.clone())
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"user_id": user, "preferences": prefs})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    /// A user id, `role:admin` or `project:<id>`.
    recipient: String,
    #[serde(default = "default_priority")]
    priority: schemas::payload::Priority,
    title: String,
    #[serde(default)]
    body: String,
    /// Auto-mute key (default: a key of its own, so never muted).
    dedup_key: Option<String>,
    /// Idempotency key of the request (default: generated).
    id: Option<String>,
}

fn default_priority() -> schemas::payload::Priority {
    schemas::payload::Priority::Medium
}

/// Sends a custom notification through the policy (admin).
#[utoipa::path(post, path = "/api/realtime/notifications/send", tag = "notifications",
    request_body(content = Object, description = "`{recipient, priority?, title, body, dedup_key?, id?}`"),
    responses((status = 202, description = "`{id, recipients}`", body = Object),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 422, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn send(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(b): Json<SendBody>,
) -> Result<Response, ApiError> {
    let n = notifier(&s)?;
    require_admin(&s, &headers).await?;
    if b.title.trim().is_empty() {
        return Err(ApiError::invalid_field("title", "title must not be empty"));
    }
    let recipients = n.config().resolve(&b.recipient).len();
    let id = b.id.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("send-{nanos:x}")
    });
    let alert = Alert {
        dedup_key: b.dedup_key.unwrap_or_else(|| format!("send:{id}")),
        // Its own namespace: a client id never collides with a derived one.
        id: format!("send:{id}"),
        rule: None,
        priority: b.priority,
        recipient: b.recipient,
        title: b.title,
        body: b.body,
    };
    if !n.try_send(alert) {
        return Err(ApiError::NotifierQueueFull);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "recipients": recipients})),
    )
        .into_response())
}
