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
use super::error::{ApiError, PathParam, path_param};
use super::openapi::ErrorBody;
use super::state::AppState;
use crate::auth::Principal;
use crate::notifier::NotifierHandle;
use crate::notifier::policy::{Alert, Preferences};
use crate::notifier::store::StoreError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
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
fn target_user(principal: Principal, user_id: Option<String>) -> Result<(String, bool), ApiError> {
    if user_id.as_deref() == Some("") {
        return Err(ApiError::invalid_parameter(
            "user_id",
            "expected a user id, got an empty string",
        ));
    }
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
        Principal::App(_) | Principal::Anonymous => user_id.map(|u| (u, admin)).ok_or_else(|| {
            ApiError::invalid_parameter(
                "user_id",
                "user_id is required for API keys (and when auth is off)",
            )
        }),
    }
}

/// Authenticates, then reads the query (authentication first: a caller
/// without credentials learns nothing about its parameters).
async fn caller<T>(
    s: &AppState,
    headers: &HeaderMap,
    q: Result<Query<T>, QueryRejection>,
) -> Result<(Principal, T), ApiError> {
    let principal = authenticate(s, headers, None).await?;
    let Query(q) = q.map_err(|r| ApiError::from_query(&r))?;
    Ok((principal, q))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only unread notifications.
    #[serde(default)]
    unread: bool,
    /// Notifications to skip (newest first).
    #[serde(default)]
    #[param(minimum = 0, maximum = 4294967295_u64)]
    offset: u32,
    /// Page size, 1–200 (default 50).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 200)]
    limit: usize,
    /// Whose notifications: required for API keys; an end user's own when
    /// left out (another user's: admins only).
    #[param(min_length = 1)]
    user_id: Option<String>,
}

fn default_limit() -> usize {
    50
}

/// A user's in-app notifications, newest first.
#[utoipa::path(get, path = "/api/realtime/notifications", tag = "notifications", params(ListQuery),
    responses((status = 200, description = "`{user_id, notifications, total, offset, limit}`", body = Object),
        (status = 400, description = "A bad parameter (`field` names it; `user_id` is required for API keys)", body = ErrorBody),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (principal, q) = caller(&s, &headers, q).await?;
    let (user, _) = target_user(principal, q.user_id)?;
    if !(1..=200).contains(&q.limit) {
        return Err(ApiError::invalid_parameter(
            "limit",
            format!("expected 1 to 200, got {}", q.limit),
        ));
    }
    let n = notifier(&s)?;
    let limit = q.limit;
    let (items, total) = n
        .store
        .in_app_list(&user, q.unread, q.offset as usize, limit)
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
    /// Whose: required for API keys; an end user's own when left out
    /// (another user's: admins only).
    #[param(min_length = 1)]
    user_id: Option<String>,
}

/// Marks one notification read.
#[utoipa::path(post, path = "/api/realtime/notifications/{id}/read", tag = "notifications",
    params(("id" = String, Path, description = "Notification id"), UserQuery),
    responses((status = 200, description = "`{id, read: true}`", body = Object),
        (status = 400, description = "A bad parameter (`user_id` is required for API keys)", body = ErrorBody),
        (status = 404, description = ERR, body = ErrorBody),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn mark_read(
    State(s): State<AppState>,
    headers: HeaderMap,
    id: PathParam<String>,
    q: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (principal, q) = caller(&s, &headers, q).await?;
    let id = path_param(id)?;
    let (user, _) = target_user(principal, q.user_id)?;
    let n = notifier(&s)?;
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
        (status = 400, description = "A bad parameter (`user_id` is required for API keys)", body = ErrorBody),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn get_prefs(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let (principal, q) = caller(&s, &headers, q).await?;
    let (user, _) = target_user(principal, q.user_id)?;
    let n = notifier(&s)?;
    Ok(Json(
        json!({"user_id": user, "preferences": n.prefs(&user)}),
    ))
}

/// Sets a user's preferences: timezone, quiet_hours, channels per priority,
/// digest frequency and hour, email, phone, webhook_url, flow_hold.
#[utoipa::path(put, path = "/api/realtime/notifications/preferences", tag = "notifications", params(UserQuery),
    request_body(content = Object, description = "Preferences; missing fields take the defaults, unknown ones are refused"),
    responses((status = 200, description = "`{user_id, preferences}`", body = Object),
        (status = 400, description = "A bad parameter or a body that is not a JSON object", body = ErrorBody),
        (status = 422, description = ERR, body = ErrorBody),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn put_prefs(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<UserQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (principal, q) = caller(&s, &headers, q).await?;
    let (user, privileged) = target_user(principal, q.user_id)?;
    let n = notifier(&s)?;
    let body = body.map_err(|r| ApiError::from_body(&r, s.config.max_body_bytes))?;
    // Missing fields take the configured defaults, unknown ones are refused.
    let defaults = serde_json::to_value(&n.config().defaults).unwrap_or(Value::Null);
    let mut patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(format!("malformed JSON: {e}")))?;
    schemas::json::integral_floats(&mut patch);
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SendBody {
    /// A user id, `role:admin` or `project:<id>`.
    recipient: String,
    /// LOW, MEDIUM (default), HIGH or CRITICAL.
    #[serde(default = "default_priority")]
    #[schema(value_type = Option<String>, pattern = "^(LOW|MEDIUM|HIGH|CRITICAL)$")]
    priority: schemas::payload::Priority,
    /// Not blank.
    #[schema(pattern = r"[^\t\n\x0b\x0c\r ]")]
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
    request_body(content = SendBody, description = "`{recipient, priority?, title, body?, dedup_key?, id?}`"),
    responses((status = 202, description = "`{id, recipients}`", body = Object),
        (status = 401, description = ERR, body = ErrorBody),
        (status = 403, description = ERR, body = ErrorBody),
        (status = 422, description = ERR, body = ErrorBody),
        (status = 503, description = ERR, body = ErrorBody)))]
async fn send(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Who is asking comes first: nothing of the body is read, and nothing
    // about the notifier said, to a caller that may not send.
    require_admin(&s, &headers).await?;
    let n = notifier(&s)?;
    let body = body.map_err(|r| ApiError::from_body(&r, s.config.max_body_bytes))?;
    let b: SendBody = ApiError::parse_json(&body)?;
    if b.title
        .chars()
        .all(|c| matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' '))
    {
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
    // Accepted once queued: in Redis, durably, for whichever instance
    // runs the notifier.
    if !n.send(alert).await.map_err(store_error)? {
        return Err(ApiError::NotifierQueueFull);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "recipients": recipients})),
    )
        .into_response())
}
