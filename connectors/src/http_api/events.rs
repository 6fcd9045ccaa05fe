//! Event queries: `GET /api/realtime/events/{category}` (time-range pages
//! over the log) and `GET /api/realtime/events/{category}/info` (XINFO).
//!
//! Who may read: the same principals that may subscribe to the WS channel
//! `category:{name}` (admins, analysts, apps; everyone with auth off).
//!
//! The cursor is opaque to callers: base64url of `v1;<from>;<to>;<id per
//! shard>`. It carries the bounds, so the next page is the same URL plus
//! `cursor` (with a cursor, `from` and `to` are ignored).

use super::auth::authenticate;
use super::error::{ApiError, PathParam, path_param};
use super::state::AppState;
use crate::event_log::query::{CategoryInfo, DEFAULT_LIMIT, MAX_LIMIT, RangeQuery};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use schemas::Category;
use serde::{Deserialize, Serialize};

/// Query string of a range read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    /// Inclusive lower bound on the append time: ms since the epoch or RFC 3339.
    from: Option<String>,
    /// Exclusive upper bound on the append time: ms since the epoch or RFC 3339.
    to: Option<String>,
    /// Events per page, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// One page of events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub category: String,
    /// The events as their JSON envelope, oldest append first.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Entries in this page's range that did not decode (skipped).
    pub undecodable: u64,
    /// Pass as `cursor` for the next page; `null` when this page is the last.
    pub next_cursor: Option<String>,
}

fn bad(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_parameter(field, message)
}

fn category(name: &str) -> Result<Category, ApiError> {
    Category::parse(name).ok_or_else(|| ApiError::UnknownCategory {
        name: name.to_owned(),
    })
}

/// ms since the epoch, or an RFC 3339 time (one before 1970 is the epoch:
/// nothing was appended earlier).
fn time_param(field: &'static str, v: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| u64::try_from((t.unix_timestamp_nanos() / 1_000_000).max(0)).unwrap_or(0))
        .ok_or_else(|| {
            bad(
                field,
                format!("expected ms since the epoch or an RFC 3339 time, got {v:?}"),
            )
        })
}

fn encode_cursor(from: Option<u64>, to: Option<u64>, after: &[Option<String>]) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let ids: Vec<&str> = after.iter().map(|a| a.as_deref().unwrap_or("")).collect();
    let raw = format!("v1;{};{};{}", opt(from), opt(to), ids.join(","));
    URL_SAFE_NO_PAD.encode(raw)
}

type Cursor = (Option<u64>, Option<u64>, Vec<Option<String>>);

fn decode_cursor(cursor: &str, shards: usize) -> Result<Cursor, ApiError> {
    let invalid = || bad("cursor", "not a cursor this server issued");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let mut parts = raw.split(';');
    if parts.next() != Some("v1") {
        return Err(invalid());
    }
    let num = |p: Option<&str>| -> Result<Option<u64>, ApiError> {
        match p {
            Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| invalid()),
            None => Err(invalid()),
        }
    };
    let from = num(parts.next())?;
    let to = num(parts.next())?;
    let after: Vec<Option<String>> = parts
        .next()
        .ok_or_else(invalid)?
        .split(',')
        .map(|id| {
            if id.is_empty() {
                Ok(None)
            } else if crate::event_log::query::parse_position(id).is_some() {
                Ok(Some(id.to_owned()))
            } else {
                Err(invalid())
            }
        })
        .collect::<Result<_, _>>()?;
    if after.len() != shards || parts.next().is_some() {
        // Issued by a log with another shard count.
        return Err(invalid());
    }
    Ok((from, to, after))
}

/// Reading the log: the callers that may subscribe to `category:` channels
/// (checked before the category is: the same for every category).
async fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let principal = authenticate(s, headers, None).await?;
    let c = Category::Writing;
    if crate::websocket_fanout::may_subscribe(&principal, &format!("category:{}", c.as_str())) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "reading the log needs the admin or analyst role",
        ))
    }
}

/// Time-range read over a category's log, paged.
#[utoipa::path(
    get,
    path = "/api/realtime/events/{category}",
    tag = "events",
    params(("category" = String, Path, description = "writing, collaboration, publishing, analytics, automation or system"), RangeParams),
    responses(
        (status = 200, description = "One page, oldest first", body = EventPage),
        (status = 400, description = "Bad `from`, `to`, `limit` or `cursor` (`field` names it); `to` before `from` is an empty page", body = super::openapi::ErrorBody),
        (status = 401, description = "Not authenticated", body = super::openapi::ErrorBody),
        (status = 403, description = "Not an admin or analyst", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown category (the known ones are listed)", body = super::openapi::ErrorBody),
        (status = 503, description = "The log is unavailable", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn range(
    State(s): State<AppState>,
    name: PathParam<String>,
    p: Result<Query<RangeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<EventPage>, ApiError> {
    authorize(&s, &headers).await?;
    let name = path_param(name)?;
    let c = category(&name)?;
    let Query(p) = p.map_err(|r| ApiError::from_query(&r))?;
    let limit = match p.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(
                    "limit",
                    format!("expected an integer from 1 to {MAX_LIMIT}, got {l:?}"),
                ));
            }
        },
    };
    let (from_ms, to_ms, after) = match p.cursor.as_deref() {
        Some(cursor) => decode_cursor(cursor, s.log.shard_count())?,
        None => (
            p.from
                .as_deref()
                .map(|v| time_param("from", v))
                .transpose()?,
            p.to.as_deref().map(|v| time_param("to", v)).transpose()?,
            Vec::new(),
        ),
    };
    if let (Some(f), Some(t)) = (from_ms, to_ms)
        && f > t
    {
        // An empty range: nothing in it.
        return Ok(Json(EventPage {
            category: c.as_str().to_owned(),
            events: Vec::new(),
            undecodable: 0,
            next_cursor: None,
        }));
    }
    let q = RangeQuery {
        category: c,
        from_ms,
        to_ms,
        after,
        limit,
    };
    let page = s.log.range(&q).await.map_err(ApiError::LogUnavailable)?;
    let mut undecodable = 0;
    let mut events = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        // With the id its caller gave it (the embedded log stores the
        // dataflow's form).
        match e.caller_event().map(|ev| serde_json::to_value(&*ev)) {
            Ok(Ok(v)) => events.push(v),
            _ => undecodable += 1,
        }
    }
    Ok(Json(EventPage {
        category: c.as_str().to_owned(),
        events,
        undecodable,
        next_cursor: page.next.map(|after| encode_cursor(from_ms, to_ms, &after)),
    }))
}

/// Statistics of a category's streams, as XINFO STREAM / GROUPS report them.
#[utoipa::path(
    get,
    path = "/api/realtime/events/{category}/info",
    tag = "events",
    params(("category" = String, Path, description = "writing, collaboration, publishing, analytics, automation or system")),
    responses(
        (status = 200, description = "Per shard and totalled", body = CategoryInfo),
        (status = 401, description = "Not authenticated", body = super::openapi::ErrorBody),
        (status = 403, description = "Not an admin or analyst", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown category (the known ones are listed)", body = super::openapi::ErrorBody),
        (status = 503, description = "The log is unavailable", body = super::openapi::ErrorBody),
    )
)]
pub(crate) async fn info(
    State(s): State<AppState>,
    name: PathParam<String>,
    headers: HeaderMap,
) -> Result<Json<CategoryInfo>, ApiError> {
    authorize(&s, &headers).await?;
    let name = path_param(name)?;
    let c = category(&name)?;
    s.log
        .info(c)
        .await
        .map(Json)
        .map_err(ApiError::LogUnavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_another_shard_count() {
        let after = vec![Some("5-1".to_owned()), None];
        let c = encode_cursor(Some(3), None, &after);
        assert_eq!(decode_cursor(&c, 2).ok(), Some((Some(3), None, after)));
        assert!(decode_cursor(&c, 8).is_err());
        assert!(decode_cursor("garbage!", 2).is_err());
    }

    #[test]
    fn times_are_ms_or_rfc3339() {
        assert_eq!(time_param("from", "1500").ok(), Some(1500));
        assert_eq!(
            time_param("from", "1970-01-01T00:00:01.5Z").ok(),
            Some(1500)
        );
        assert_eq!(
            time_param("from", "yesterday")
                .err()
                .and_then(|e| e.field()),
            Some("from".to_owned())
        );
    }
}
