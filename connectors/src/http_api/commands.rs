//! The command endpoints of the original specification: requests that become
//! events (validated exactly like `POST /v1/events`, so errors name
//! `data.<field>`), appended, and answered `202` once in the log.
//!
//! Envelope fields (`id`, `ts`, `user_id`, `project_id`, `document_id`) are
//! taken from the body; `ts` defaults to the server clock and `user_id` to
//! the authenticated user. Every other body field is the payload.

use super::auth::authenticate;
use super::error::{ApiError, PathParam, path_param};
use super::ingest::ingest_events;
use super::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(keystroke))
        .routes(routes!(end))
        .routes(routes!(resume))
        .routes(routes!(presence))
        .routes(routes!(cursor))
        .routes(routes!(edit))
}

const ENVELOPE: [&str; 5] = ["id", "ts", "user_id", "project_id", "document_id"];

/// Authenticates, then reads the body as a JSON object (in that order: a
/// caller without credentials learns nothing about its body).
async fn caller_and_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(crate::auth::Principal, Map<String, Value>), ApiError> {
    let principal = authenticate(s, headers, None).await?;
    let body = body.map_err(|r| ApiError::from_body(&r, s.config.max_body_bytes))?;
    Ok((principal, body_object(&body)?))
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::InvalidJson("expected a JSON object".into())),
        Err(e) => Err(ApiError::InvalidJson(format!("malformed JSON: {e}"))),
    }
}

/// Builds the event of `event_type` from the body (plus `extra` payload
/// fields), ingests it, and answers 202 with `reply` merged in.
async fn command(
    s: &AppState,
    principal: &crate::auth::Principal,
    headers: &HeaderMap,
    mut fields: Map<String, Value>,
    event_type: &str,
    extra: &[(&str, Value)],
    mut reply: Value,
) -> Result<Response, ApiError> {
    let mut event = Map::new();
    event.insert("type".into(), event_type.into());
    for k in ENVELOPE {
        if let Some(v) = fields.remove(k) {
            event.insert(k.into(), v);
        }
    }
    if !event.contains_key("ts") {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        event.insert("ts".into(), now.into());
    }
    if let (crate::auth::Principal::User(u), false) = (principal, event.contains_key("user_id")) {
        event.insert("user_id".into(), u.id.clone().into());
    }
    for (k, v) in extra {
        fields.insert((*k).into(), v.clone());
    }
    event.insert("data".into(), Value::Object(fields));
    let mut limits = s.config.limits.clone();
    if s.config.check_skew {
        limits.now_ms = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        );
    }
    let decoded = vec![schemas::decode_value(Value::Object(event), &limits)];
    let outcome = ingest_events(s, principal, super::auth::peer(headers), decoded, false).await?;
    if let (Value::Object(r), Value::Object(o)) = (&mut reply, outcome.body) {
        r.extend(o);
    }
    Ok((StatusCode::ACCEPTED, Json(reply)).into_response())
}

/// Starts a writing session (`session_id` generated when absent and echoed back). Becomes a `writing.session_started` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/writing/sessions/start", tag = "commands",
    request_body(content = Object, description = "Envelope fields plus the `writing.session_started` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn start(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (principal, fields) = caller_and_body(&s, &headers, body).await?;
    // Generated only when absent (or null): a given one is validated.
    let given = fields.get("session_id").filter(|v| !v.is_null()).cloned();
    let session_id = match &given {
        Some(v) => v.clone(),
        None => Value::from(format!("s-{}", uuid_v7())),
    };
    let extra = if given.is_some() {
        vec![]
    } else {
        vec![("session_id", session_id.clone())]
    };
    command(
        &s,
        &principal,
        &headers,
        fields,
        "writing.session_started",
        &extra,
        json!({"session_id": session_id}),
    )
    .await
}

fn uuid_v7() -> String {
    // The schemas crate generates ids the same way for events without one.
    schemas::json::new_id()
}

/// Records keystrokes (`keystrokes`, `words`, `chars`, `source`). Becomes a `writing.keystroke` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/writing/sessions/{id}/keystroke", tag = "commands",
    params(("id" = String, Path, description = "The session id")),
    request_body(content = Object, description = "Envelope fields plus the `writing.keystroke` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn keystroke(
    State(s): State<AppState>,
    id: PathParam<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (principal, fields) = caller_and_body(&s, &headers, body).await?;
    let id = path_param(id)?;
    // The keystroke payload has no session id: sessions are derived from
    // activity; the path's id is echoed back.
    command(
        &s,
        &principal,
        &headers,
        fields,
        "writing.keystroke",
        &[],
        json!({"session_id": id}),
    )
    .await
}

/// `…/sessions/:id/end` and `/resume`: the path's session id goes into the payload.
async fn session_command(
    s: &AppState,
    id: PathParam<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    event_type: &str,
) -> Result<Response, ApiError> {
    let (principal, fields) = caller_and_body(s, headers, body).await?;
    let id = path_param(id)?;
    if fields.contains_key("session_id") {
        return Err(ApiError::InvalidField {
            message: "the session id is the path's; leave it out of the body".into(),
            field: Some("session_id".into()),
        });
    }
    command(
        s,
        &principal,
        headers,
        fields,
        event_type,
        &[("session_id", id.clone().into())],
        json!({"session_id": id}),
    )
    .await
}

/// Ends a writing session. Becomes a `writing.session_ended` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/writing/sessions/{id}/end", tag = "commands",
    params(("id" = String, Path, description = "The session id")),
    request_body(content = Object, description = "Envelope fields plus the `writing.session_ended` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn end(
    State(s): State<AppState>,
    id: PathParam<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    session_command(&s, id, &headers, body, "writing.session_ended").await
}

/// Resumes a paused writing session. Becomes a `writing.session_resumed` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/writing/sessions/{id}/resume", tag = "commands",
    params(("id" = String, Path, description = "The session id")),
    request_body(content = Object, description = "Envelope fields plus the `writing.session_resumed` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn resume(
    State(s): State<AppState>,
    id: PathParam<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    session_command(&s, id, &headers, body, "writing.session_resumed").await
}

/// Reports the presence of a collaborator (`status`, cursor fields). Becomes a `collaboration.presence_updated` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/collaboration/presence", tag = "commands",
    request_body(content = Object, description = "Envelope fields plus the `collaboration.presence_updated` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn presence(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (principal, fields) = caller_and_body(&s, &headers, body).await?;
    command(
        &s,
        &principal,
        &headers,
        fields,
        "collaboration.presence_updated",
        &[],
        json!({}),
    )
    .await
}

/// Reports a cursor move (`paragraph`, `offset`, `selection`). Becomes a `collaboration.cursor_moved` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/collaboration/cursor", tag = "commands",
    request_body(content = Object, description = "Envelope fields plus the `collaboration.cursor_moved` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn cursor(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (principal, fields) = caller_and_body(&s, &headers, body).await?;
    command(
        &s,
        &principal,
        &headers,
        fields,
        "collaboration.cursor_moved",
        &[],
        json!({}),
    )
    .await
}

/// Reports an applied edit. Becomes a `collaboration.edit_applied` event; envelope fields (`id`, `ts`, `user_id`,
/// `project_id`, `document_id`) come from the body, the rest is the payload.
#[utoipa::path(post, path = "/api/realtime/collaboration/edit", tag = "commands",
    request_body(content = Object, description = "Envelope fields plus the `collaboration.edit_applied` payload fields", content_type = "application/json"),
    responses(
        (status = 202, description = "In the log", body = Object),
        (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody),
        (status = 403, description = "The caller may not write this event (scope, category, project, user)", body = super::openapi::ErrorBody),
        (status = 422, description = "Invalid payload (`field` names it, e.g. `data.words`)", body = super::openapi::ErrorBody),
        (status = 429, body = super::openapi::ErrorBody), (status = 503, body = super::openapi::ErrorBody)))]
async fn edit(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (principal, fields) = caller_and_body(&s, &headers, body).await?;
    command(
        &s,
        &principal,
        &headers,
        fields,
        "collaboration.edit_applied",
        &[],
        json!({}),
    )
    .await
}
