//! Ingest: `POST /v1/events` (and its alias `/api/realtime/events/publish`),
//! and the pipeline it shares with the command endpoints and `/ws/ingest`:
//! count (batch limit, burst, rate: refused before any decode) → decode →
//! rate limit → authorize → append (idempotent) → answer.
//!
//! Contract: an ingest request is answered `202` only after every event it
//! carries is in the log (the append returned).

use super::auth::authenticate;
use super::error::ApiError;
use super::openapi;
use super::state::AppState;
use crate::auth::{ApiKey, Principal, Role, Scope};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemas::{DecodeError, Event};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What an accepted ingest answers.
pub struct IngestOutcome {
    /// `{"accepted","duplicates","ids","duplicate_ids"?,"rejected"?}`.
    pub body: Value,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Decodes a body or frame (`POST /v1/events`, a `/ws/ingest` frame) into
/// per-event results (400 when the body itself is bad). Counted first:
/// over `ingest.max_batch_events` (413 `batch_too_large`), the caller's
/// burst (413 `batch_over_burst`) or its rate (429 `rate_limited`), it is
/// refused before any event is decoded. `peer` keys an anonymous caller's
/// rate, as in [`ingest_events`].
pub(crate) fn decode_body(
    s: &AppState,
    principal: &Principal,
    peer: Option<std::net::IpAddr>,
    body: &[u8],
    ndjson: bool,
) -> Result<Vec<Result<Event, DecodeError>>, ApiError> {
    if let Some(events) = refuse_over_max(s, body, ndjson)? {
        admit(s, principal, peer, events, false)?;
    }
    decode_counted(s, principal, body, ndjson)
}

/// Counts the events of a body without decoding them (see
/// [`schemas::count_events`]) and refuses more than `ingest.max_batch_events`
/// with 413 `batch_too_large`: a body of millions of tiny lines costs a scan
/// of its bytes, not millions of decode results. The count, when there is
/// one, is exact (and within the limit).
fn refuse_over_max(s: &AppState, body: &[u8], ndjson: bool) -> Result<Option<usize>, ApiError> {
    let limit = s.config.max_batch_events;
    let counted = schemas::count_events(body, ndjson, limit);
    match counted {
        Some(events) if events > limit => {
            s.metrics
                .ingest_events_rejected
                .with_label_values(&["batch_too_large"])
                .inc_by(events as u64);
            Err(ApiError::BatchTooLarge {
                events,
                limit,
                // An array is scanned only up to its first item over the limit.
                at_least: !ndjson,
            })
        }
        _ => Ok(counted),
    }
}

/// [`decode_body`] after its checks on the count.
fn decode_counted(
    s: &AppState,
    principal: &Principal,
    body: &[u8],
    ndjson: bool,
) -> Result<Vec<Result<Event, DecodeError>>, ApiError> {
    let mut limits = s.config.limits.clone();
    if let Principal::User(u) = principal {
        // An end user's events are theirs: `user_id` may be left out.
        limits.default_user_id = Some(u.id.clone());
    }
    if s.config.check_skew {
        limits.now_ms = Some(now_ms());
    }
    let decoded = schemas::decode_batch(body, ndjson, &limits).map_err(|e| {
        s.metrics
            .ingest_events_rejected
            .with_label_values(&[e.code])
            .inc();
        ApiError::Malformed(e)
    })?;
    // What the count could not see (an array serde_json parses but the
    // count's scan found not well formed) is still bounded here.
    if decoded.len() > s.config.max_batch_events {
        s.metrics
            .ingest_events_rejected
            .with_label_values(&["batch_too_large"])
            .inc_by(decoded.len() as u64);
        return Err(ApiError::BatchTooLarge {
            events: decoded.len(),
            limit: s.config.max_batch_events,
            at_least: false,
        });
    }
    Ok(decoded)
}

/// Whether `principal` may ingest `events` events now: 413
/// `batch_over_burst` for more than its burst, 429 `rate_limited` over its
/// rate. `take` takes the events from the caller's bucket; without it the
/// bucket is only looked at (the check before decoding, so a caller over
/// its rate costs no decode; the events are taken after the decode, as
/// before: a body refused as malformed takes nothing).
fn admit(
    s: &AppState,
    principal: &Principal,
    peer: Option<std::net::IpAddr>,
    events: usize,
    take: bool,
) -> Result<(), ApiError> {
    // Anonymous callers are limited like users, keyed by peer address.
    let key = principal.rate_key(peer);
    let rate = match principal {
        Principal::App(k) => k.rate.unwrap_or(s.config.app_rate),
        Principal::User(_) => s.config.user_rate,
        Principal::Anonymous => s.config.anonymous_rate,
    };
    if events as f64 > rate.burst {
        // Waiting never helps: a 429 would be retried forever.
        s.metrics
            .ingest_events_rejected
            .with_label_values(&["batch_over_burst"])
            .inc_by(events as u64);
        return Err(ApiError::BatchOverBurst {
            events,
            burst: rate.burst,
            per_second: rate.per_second,
        });
    }
    let checked = if take {
        s.limiter.check(&key, events, rate)
    } else {
        s.limiter.peek(&key, events, rate)
    };
    if let Err(wait) = checked {
        s.metrics
            .ingest_events_rejected
            .with_label_values(&["rate_limited"])
            .inc_by(events as u64);
        return Err(ApiError::RateLimited {
            per_second: rate.per_second,
            burst: rate.burst,
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u32,
        });
    }
    Ok(())
}

/// The most rejected events a 422 `invalid_events` answer lists (its
/// message still counts them all); a `?partial=true` answer lists every one
/// (the caller needs them to retry), at most `ingest.max_batch_events`.
const MAX_REJECTED_LISTED: usize = 100;

/// Why a caller may not ingest an event (the whole request is refused, 403).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotAllowed(String);

/// Whether `principal` may ingest `event` (the table in docs/API.md):
/// - a key needs the `ingest` scope, and its `categories`/`projects` narrow it;
/// - a user's events are their own (an event without `user_id` is taken as
///   theirs) and stay within their `projects`/`documents` claims; admins may
///   ingest anything, analysts only like members.
fn authorize(principal: &Principal, event: &mut Event) -> Result<(), NotAllowed> {
    match principal {
        Principal::Anonymous => Ok(()),
        Principal::App(key) => authorize_app(key, event),
        Principal::User(user) if user.role == Role::Admin => {
            event.user_id.get_or_insert_with(|| user.id.as_str().into());
            Ok(())
        }
        Principal::User(user) => {
            let owner = event.user_id.get_or_insert_with(|| user.id.as_str().into());
            if *owner != user.id {
                return Err(NotAllowed(format!(
                    "user {:?} may not ingest events of user {owner:?}",
                    user.id
                )));
            }
            if let Some(p) = event.project_id.as_deref()
                && !user.projects.iter().any(|m| m == p)
            {
                return Err(NotAllowed(format!(
                    "user {:?} is not a member of project {p:?}",
                    user.id
                )));
            }
            if let Some(d) = event.document_id.as_deref()
                && !user.documents.iter().any(|m| m == d)
            {
                return Err(NotAllowed(format!(
                    "user {:?} is not a member of document {d:?}",
                    user.id
                )));
            }
            Ok(())
        }
    }
}

fn authorize_app(key: &ApiKey, event: &Event) -> Result<(), NotAllowed> {
    if !key.has(Scope::Ingest) {
        return Err(NotAllowed(format!(
            "the API key {:?} has no ingest scope",
            key.name
        )));
    }
    if let Some(allowed) = &key.categories
        && !allowed.contains(&event.category())
    {
        return Err(NotAllowed(format!(
            "the API key {:?} may not ingest {} events",
            key.name,
            event.category()
        )));
    }
    if let Some(allowed) = &key.projects
        && !event
            .project_id
            .as_deref()
            .is_some_and(|p| allowed.iter().any(|a| a == p))
    {
        return Err(NotAllowed(format!(
            "the API key {:?} may only ingest events of its projects (project_id {:?})",
            key.name, event.project_id
        )));
    }
    Ok(())
}

/// Rate-limits, authorizes and appends decoded events for `principal`.
pub async fn ingest_events(
    s: &AppState,
    principal: &Principal,
    peer: Option<std::net::IpAddr>,
    decoded: Vec<Result<Event, DecodeError>>,
    partial: bool,
) -> Result<IngestOutcome, ApiError> {
    admit(s, principal, peer, decoded.len(), true)?;

    let total = decoded.len();
    let mut events = Vec::with_capacity(total);
    let mut rejected = Vec::new();
    let mut rejected_count = 0usize;
    for (index, result) in decoded.into_iter().enumerate() {
        match result {
            Ok(mut e) => match authorize(principal, &mut e) {
                Ok(()) => events.push(e),
                Err(message) => {
                    s.metrics
                        .ingest_events_rejected
                        .with_label_values(&["forbidden"])
                        .inc();
                    return Err(ApiError::forbidden(format!(
                        "event {index}: {message}; nothing was stored"
                    )));
                }
            },
            Err(e) => {
                s.metrics
                    .ingest_events_rejected
                    .with_label_values(&[e.code])
                    .inc();
                rejected_count += 1;
                if partial || rejected.len() < MAX_REJECTED_LISTED {
                    rejected.push(json!({
                        "index": index, "code": e.code, "field": e.field, "message": e.message,
                    }));
                }
            }
        }
    }
    if !rejected.is_empty() && !partial {
        let first = &rejected[0];
        let message = format!(
            "{} of {} events are invalid; nothing was stored (event {}: {}{}){}",
            rejected_count,
            total,
            first["index"],
            first["field"]
                .as_str()
                .map(|f| format!("{f}: "))
                .unwrap_or_default(),
            first["message"].as_str().unwrap_or(""),
            if rejected_count > rejected.len() {
                format!("; `rejected` lists the first {}", rejected.len())
            } else {
                String::new()
            },
        );
        let field = first["field"].as_str().map(str::to_owned);
        return Err(ApiError::InvalidEvents {
            message,
            field,
            rejected,
        });
    }
    if events.is_empty() {
        return Err(ApiError::InvalidEvents {
            message: "no valid event in the request".into(),
            field: None,
            rejected,
        });
    }

    let start = Instant::now();
    let app = principal.dedup_namespace();
    // What the answer and the metrics need, taken before the events move
    // into the log (the embedded log keeps them without copying).
    let types: Vec<&'static str> = events.iter().map(Event::event_type).collect();
    let ids: Vec<schemas::Text> = events.iter().map(|e| e.id.clone()).collect();
    let count = events.len();
    let appended =
        tokio::time::timeout(s.config.append_timeout, s.log.append_owned(&app, events)).await;
    let backend = s.log.backend();
    let stored = match appended {
        Ok(Ok(stored)) => stored,
        Ok(Err(e)) => {
            s.metrics
                .log_errors
                .with_label_values(&[backend, "append"])
                .inc();
            s.metrics
                .ingest_events_rejected
                .with_label_values(&["log_unavailable"])
                .inc_by(count as u64);
            tracing::warn!(error = %e, backend, "log append failed");
            return Err(ApiError::LogRefusedWrite);
        }
        Err(_) => {
            s.metrics
                .log_errors
                .with_label_values(&[backend, "append"])
                .inc();
            s.metrics
                .ingest_events_rejected
                .with_label_values(&["log_unavailable"])
                .inc_by(count as u64);
            tracing::warn!(backend, "log append timed out");
            return Err(ApiError::LogTimedOut);
        }
    };
    s.metrics
        .log_append_seconds
        .with_label_values(&[backend])
        .observe(start.elapsed().as_secs_f64());
    s.metrics.ingest_batch_size.observe(count as f64);
    // Accepted events counted per type: one metric update per type present
    // in the batch, not one per event.
    let mut per_type: Vec<(&'static str, u64)> = Vec::new();
    let mut duplicate_ids = Vec::new();
    for ((ty, id), a) in types.iter().zip(&ids).zip(&stored) {
        if a.duplicate {
            duplicate_ids.push(Value::String(id.to_string()));
        } else {
            match per_type.iter_mut().find(|(t, _)| t == ty) {
                Some((_, n)) => *n += 1,
                None => per_type.push((ty, 1)),
            }
        }
    }
    for (ty, n) in per_type {
        s.metrics
            .ingest_events_accepted
            .with_label_values(&[ty])
            .inc_by(n);
    }
    let duplicates = duplicate_ids.len();
    if duplicates > 0 {
        s.metrics.ingest_duplicates.inc_by(duplicates as u64);
    }
    // Ids in request order; duplicates (already stored, not stored again)
    // listed apart. Offsets stay internal: they are the log's business.
    let mut body = serde_json::Map::new();
    body.insert("accepted".into(), count.into());
    body.insert("duplicates".into(), duplicates.into());
    body.insert(
        "ids".into(),
        Value::Array(ids.into_iter().map(|id| Value::String(id.into())).collect()),
    );
    if duplicates > 0 {
        body.insert("duplicate_ids".into(), Value::Array(duplicate_ids));
    }
    if !rejected.is_empty() {
        body.insert("rejected".into(), rejected.into());
    }
    Ok(IngestOutcome {
        body: Value::Object(body),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct IngestParams {
    /// Accept the valid events of a batch and report the rejected ones,
    /// instead of rejecting the whole batch (the default).
    #[serde(default)]
    pub(crate) partial: bool,
}

/// Ingests one event, a JSON array of events, or NDJSON; answers 202 once
/// every event is in the log.
#[utoipa::path(post, path = "/v1/events", tag = "ingest", params(IngestParams),
    request_body(content(
        (openapi::IngestBody = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"type\":\"writing.keystroke\",…}\n{…}\n")),
    )),
    responses(
        (status = 202, description = "Stored (duplicates are reported, not stored twice)", body = openapi::IngestAccepted),
        (status = 400, description = "Malformed body, or an invalid event (`field` names it)", body = openapi::ErrorBody),
        (status = 401, body = openapi::ErrorBody),
        (status = 403, description = "The caller may not write an event of the request (scope, category, project, user); nothing was stored", body = openapi::ErrorBody),
        (status = 413, description = "Body over ingest.max_body_bytes, more events than ingest.max_batch_events, or than the caller's burst", body = openapi::ErrorBody),
        (status = 415, description = "Not application/json, application/x-ndjson or application/ndjson", body = openapi::ErrorBody),
        (status = 422, description = "Schema violation (`field` names it)", body = openapi::ErrorBody),
        (status = 429, description = "Over the caller's rate (Retry-After)", body = openapi::ErrorBody),
        (status = 503, description = "The log is unavailable (Retry-After)", body = openapi::ErrorBody)))]
pub(crate) async fn ingest_v1(
    s: State<AppState>,
    params: Result<Query<IngestParams>, QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ingest_http(s, params, uri, headers, body).await
}

/// `POST /v1/events` under the original specification's name.
#[utoipa::path(post, path = "/api/realtime/events/publish", tag = "ingest", params(IngestParams),
    request_body(content(
        (openapi::IngestBody = "application/json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 202, body = openapi::IngestAccepted),
        (status = 400, body = openapi::ErrorBody), (status = 401, body = openapi::ErrorBody),
        (status = 403, description = "The caller may not write an event of the request; nothing was stored", body = openapi::ErrorBody),
        (status = 413, body = openapi::ErrorBody), (status = 415, body = openapi::ErrorBody),
        (status = 422, body = openapi::ErrorBody), (status = 429, body = openapi::ErrorBody),
        (status = 503, body = openapi::ErrorBody)))]
pub(crate) async fn publish(
    s: State<AppState>,
    params: Result<Query<IngestParams>, QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ingest_http(s, params, uri, headers, body).await
}

async fn ingest_http(
    State(s): State<AppState>,
    params: Result<Query<IngestParams>, QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Authentication first: a caller without credentials learns nothing
    // about its parameters or body.
    let token = super::auth::query_token(&uri);
    let principal = authenticate(&s, &headers, token.as_deref()).await?;
    let Query(params) = params.map_err(|r| ApiError::from_query(&r))?;
    let body = body.map_err(|r| ApiError::from_body(&r, s.config.max_body_bytes))?;
    // No default: a body without a type is refused (415), see `refuse_body_type`.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no Content-Type");
    // Media types are case-insensitive (RFC 9110 §8.3.1).
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let ndjson = match essence.to_ascii_lowercase().as_str() {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" => true,
        _ => {
            return Err(ApiError::UnsupportedMediaType(essence.to_owned()));
        }
    };
    let peer = super::auth::peer(&headers);
    let decoded = decode_body(&s, &principal, peer, &body, ndjson)?;
    let outcome = ingest_events(&s, &principal, peer, decoded, params.partial).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome.body)).into_response())
}
