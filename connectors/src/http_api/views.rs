//! The view endpoints under `/api/realtime`. Every answer carries `as_of`
//! (the dataflow watermark the view reflects, ms since the epoch) and
//! `lag_ms` (now − `as_of`).
//!
//! Authorization follows the WS channels
//! ([`crate::websocket_fanout::may_subscribe`]): a user reads their own
//! sessions (`user:`), members read their projects and documents
//! (`project:` / `document:` claims), admins and analysts read everything;
//! apps and an auth-off server read everything. Refusals are 403.

use super::auth::authenticate;
use super::error::{ApiError, PathParam, path_param};
use super::openapi::ErrorBody;
use super::state::AppState;
use crate::auth::Principal;
use crate::view_store::state::{
    Collaborator, ConflictView, SessionView, TeamFigure, WritingTotals, day_of, ms_of_day,
};
use crate::view_store::{ActiveScope, Fresh, ViewError};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The view routes (documented), merged into the app.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(session_metrics))
        .routes(routes!(active_sessions))
        .routes(routes!(project_writing))
        .routes(routes!(collaborators))
        .routes(routes!(conflicts))
        .routes(routes!(document_metrics))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lag(as_of: i64) -> i64 {
    (now_ms() - as_of).max(0)
}

fn unavailable(e: ViewError) -> ApiError {
    ApiError::ViewsUnavailable(e)
}

/// May `principal` read what the WS channel `channels` would carry (any one)?
fn may_read(principal: &Principal, channels: &[String]) -> bool {
    principal.reads_everything()
        || channels
            .iter()
            .any(|c| crate::websocket_fanout::may_subscribe(principal, c))
}

fn forbidden(what: &str) -> ApiError {
    ApiError::forbidden(format!("not a member of {what}"))
}

fn session_channels(s: &SessionView) -> Vec<String> {
    let mut c = vec![format!("user:{}", s.user_id)];
    if let Some(p) = &s.project_id {
        c.push(format!("project:{p}"));
    }
    c
}

async fn fetch<T>(
    f: impl std::future::Future<Output = Result<Fresh<T>, ViewError>>,
) -> Result<Fresh<T>, ApiError> {
    f.await.map_err(unavailable)
}

/// One writing session's live metrics.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionMetrics {
    pub session: SessionView,
    /// The watermark (event time, ms) the view reflects.
    pub as_of: i64,
    /// now − as_of, ms.
    pub lag_ms: i64,
}

/// A writing session's state, live WPM, flow and (once ended) summary.
#[utoipa::path(get, path = "/api/realtime/writing/sessions/{id}/metrics", tag = "views",
    params(("id" = String, Path, description = "The session id: the client's `session_id`, or `<user>@<start ms>` for an implicit session")),
    responses(
        (status = 200, body = SessionMetrics),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not a session the caller may read (also when there is none, for callers that cannot read every session)", body = ErrorBody),
        (status = 404, description = "No such session in the view (callers that read every session)", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn session_metrics(
    State(s): State<AppState>,
    id: PathParam<String>,
    headers: HeaderMap,
) -> Result<Json<SessionMetrics>, ApiError> {
    let principal = authenticate(&s, &headers, None).await?;
    let id = path_param(id)?;
    let (session, as_of) = fetch(s.views.session(&id)).await?;
    // Authorization before existence: a caller that may not read every
    // session gets the same 403 for another's session and for none at all,
    // so session ids cannot be probed.
    let session = match session {
        Some(v) if may_read(&principal, &session_channels(&v)) => v,
        Some(_) => return Err(forbidden("this session's user or project")),
        None if principal.reads_everything() => {
            return Err(ApiError::NotFound {
                message: format!("no session {id:?}"),
                field: Some("id".into()),
            });
        }
        None => {
            return Err(ApiError::forbidden(format!(
                "no session {id:?} that you may read"
            )));
        }
    };
    Ok(Json(SessionMetrics {
        session,
        as_of,
        lag_ms: lag(as_of),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ActiveParams {
    /// Only this user's sessions.
    user: Option<String>,
    /// Only sessions in this project.
    project: Option<String>,
}

/// Open sessions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActiveSessions {
    /// Most recently updated first, only those the caller may read.
    pub sessions: Vec<SessionView>,
    pub as_of: i64,
    pub lag_ms: i64,
}

/// Open writing sessions, filtered by user and/or project.
#[utoipa::path(get, path = "/api/realtime/writing/sessions/active", tag = "views",
    params(ActiveParams),
    responses(
        (status = 200, body = ActiveSessions),
        (status = 400, description = "A bad parameter (`field` names it)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "`user` is another user / `project` one the caller is not a member of", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn active_sessions(
    State(s): State<AppState>,
    q: Result<Query<ActiveParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<ActiveSessions>, ApiError> {
    let principal = authenticate(&s, &headers, None).await?;
    let Query(q) = q.map_err(|r| ApiError::from_query(&r))?;
    if let Some(p) = &q.project
        && !may_read(&principal, &[format!("project:{p}")])
    {
        return Err(ApiError::Forbidden {
            message: format!("not a member of project {p:?}"),
            field: Some("project".into()),
        });
    }
    if let Some(u) = &q.user
        && q.project.is_none()
        && !may_read(&principal, &[format!("user:{u}")])
    {
        return Err(ApiError::Forbidden {
            message: "another user's sessions need a project you are a member of, or the admin or analyst role".into(),
            field: Some("user".into()),
        });
    }
    let (all, as_of) = fetch(s.views.active(&active_scopes(&principal, &q))).await?;
    let sessions = all
        .into_iter()
        .filter(|v| q.user.as_ref().is_none_or(|u| *u == v.user_id))
        .filter(|v| {
            q.project
                .as_ref()
                .is_none_or(|p| v.project_id.as_ref() == Some(p))
        })
        .filter(|v| may_read(&principal, &session_channels(v)))
        .collect();
    Ok(Json(ActiveSessions {
        sessions,
        as_of,
        lag_ms: lag(as_of),
    }))
}

/// Whose open sessions to read for an allowed query: the user or project
/// asked for; else everyone's for a caller who reads everything, and a
/// member's own and their projects' otherwise (the 1000 newest are chosen
/// among what the caller may read, not cut from everyone's first).
fn active_scopes(principal: &Principal, q: &ActiveParams) -> Vec<ActiveScope> {
    if let Some(u) = &q.user {
        return vec![ActiveScope::User(u.clone())];
    }
    if let Some(p) = &q.project {
        return vec![ActiveScope::Project(p.clone())];
    }
    match principal {
        Principal::User(u) if !principal.reads_everything() => {
            std::iter::once(ActiveScope::User(u.id.clone()))
                .chain(u.projects.iter().map(|p| ActiveScope::Project(p.clone())))
                .collect()
        }
        _ => vec![ActiveScope::All],
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RangeParams {
    /// Start (inclusive): ms since the epoch, RFC 3339, or `YYYY-MM-DD`; the
    /// UTC day holding it is included. Default: 30 days before `to`.
    from: Option<String>,
    /// End (inclusive, same forms). Default: now. Before `from`: no rows.
    to: Option<String>,
}

/// Totals of one (day, user).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WritingRow {
    pub day: String,
    pub user_id: String,
    #[serde(flatten)]
    pub totals: WritingTotals,
}

/// A project's writing over a range of days.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectWriting {
    pub project_id: String,
    /// First and last UTC day of the range.
    pub from: String,
    pub to: String,
    pub totals: WritingTotals,
    pub per_user: BTreeMap<String, WritingTotals>,
    pub per_day: BTreeMap<String, WritingTotals>,
    pub rows: Vec<WritingRow>,
    pub as_of: i64,
    pub lag_ms: i64,
}

fn day_param(field: &'static str, v: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid_parameter(
            field,
            format!("expected ms since the epoch, RFC 3339 or YYYY-MM-DD, got {v:?}"),
        )
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(day_of(ms));
    }
    if v.len() == 10 {
        return ms_of_day(v).map(day_of).ok_or_else(bad);
    }
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    Ok(day_of((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// Per-user and per-day words, sessions, active and flow time of a project
/// (ended sessions, by the UTC day they started).
#[utoipa::path(get, path = "/api/realtime/analytics/project/{projectId}/writing", tag = "views",
    params(("projectId" = String, Path, description = "Project id"), RangeParams),
    responses(
        (status = 200, body = ProjectWriting),
        (status = 400, description = "Bad `from`/`to` (`field` names it)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn project_writing(
    State(s): State<AppState>,
    project: PathParam<String>,
    q: Result<Query<RangeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<ProjectWriting>, ApiError> {
    let principal = authenticate(&s, &headers, None).await?;
    let project = path_param(project)?;
    let Query(q) = q.map_err(|r| ApiError::from_query(&r))?;
    let to = match &q.to {
        Some(v) => day_param("to", v)?,
        None => day_of(now_ms()),
    };
    let from = match &q.from {
        Some(v) => day_param("from", v)?,
        None => day_of(ms_of_day(&to).unwrap_or_else(now_ms) - 29 * 86_400_000),
    };
    // `to` before `from`: an empty range, answered with no rows.
    if !may_read(&principal, &[format!("project:{project}")]) {
        return Err(forbidden(&format!("project {project:?}")));
    }
    let (all, as_of) = fetch(s.views.writing(&project)).await?;
    let mut out = ProjectWriting {
        project_id: project,
        from: from.clone(),
        to: to.clone(),
        totals: WritingTotals::default(),
        per_user: BTreeMap::new(),
        per_day: BTreeMap::new(),
        rows: Vec::new(),
        as_of,
        lag_ms: lag(as_of),
    };
    for (day, user, t) in all {
        if day < from || day > to {
            continue;
        }
        out.totals.add(&t);
        out.per_user.entry(user.clone()).or_default().add(&t);
        out.per_day.entry(day.clone()).or_default().add(&t);
        out.rows.push(WritingRow {
            day,
            user_id: user,
            totals: t,
        });
    }
    Ok(Json(out))
}

/// Who is in a document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Collaborators {
    pub document_id: String,
    /// Online and away collaborators with their cursors.
    pub collaborators: Vec<Collaborator>,
    pub as_of: i64,
    pub lag_ms: i64,
}

/// Collaborators present in a document (online or away), with cursor,
/// selection, viewport, mode and typing speed.
#[utoipa::path(get, path = "/api/realtime/collaboration/document/{id}/collaborators", tag = "views",
    params(("id" = String, Path, description = "Document id")),
    responses((status = 200, body = Collaborators),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn collaborators(
    State(s): State<AppState>,
    doc: PathParam<String>,
    headers: HeaderMap,
) -> Result<Json<Collaborators>, ApiError> {
    let principal = authenticate(&s, &headers, None).await?;
    let doc = path_param(doc)?;
    if !may_read(&principal, &[format!("document:{doc}")]) {
        return Err(forbidden(&format!("document {doc:?}")));
    }
    let (collaborators, as_of) = fetch(s.views.collaborators(&doc)).await?;
    Ok(Json(Collaborators {
        document_id: doc,
        collaborators,
        as_of,
        lag_ms: lag(as_of),
    }))
}

/// A document's conflicts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Conflicts {
    pub document_id: String,
    pub open: Vec<ConflictView>,
    /// Resolved within the last hour (event time), newest first, at most 50.
    pub recent: Vec<ConflictView>,
    pub as_of: i64,
    pub lag_ms: i64,
}

/// Open and recently resolved conflicts of a document, with severity and
/// the suggestion shown to each user.
#[utoipa::path(get, path = "/api/realtime/collaboration/document/{id}/conflicts", tag = "views",
    params(("id" = String, Path, description = "Document id")),
    responses((status = 200, body = Conflicts),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn conflicts(
    State(s): State<AppState>,
    doc: PathParam<String>,
    headers: HeaderMap,
) -> Result<Json<Conflicts>, ApiError> {
    let principal = authenticate(&s, &headers, None).await?;
    let doc = path_param(doc)?;
    if !may_read(&principal, &[format!("document:{doc}")]) {
        return Err(forbidden(&format!("document {doc:?}")));
    }
    let (all, as_of) = fetch(s.views.conflicts(&doc)).await?;
    let (mut open, mut recent): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|c| c.status == "open");
    open.sort_by_key(|c| std::cmp::Reverse(c.detected_at));
    recent.sort_by_key(|c| std::cmp::Reverse(c.resolved_at));
    Ok(Json(Conflicts {
        document_id: doc,
        open,
        recent,
        as_of,
        lag_ms: lag(as_of),
    }))
}

/// One window's team figures.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct WindowMetrics {
    pub window_ms: Option<i64>,
    /// Event time of the latest update in this window length, ms.
    pub ts: i64,
    /// Document-wide figures by metric name (`team.edit_velocity_per_min`, …).
    pub metrics: BTreeMap<String, f64>,
    /// Per-user figures: user → metric → value (`team.words`, `team.edits`).
    pub users: BTreeMap<String, BTreeMap<String, f64>>,
}

/// A document's team metrics.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentMetrics {
    pub project_id: String,
    pub document_id: String,
    /// Window label (`1m`, `1h`) → the latest window's figures.
    pub windows: BTreeMap<String, WindowMetrics>,
    pub as_of: i64,
    pub lag_ms: i64,
}

/// The latest team metrics of a document (per window length): per-user
/// words and edits, edit velocity, conflicts, resolution and comment
/// response times, collaboration efficiency.
#[utoipa::path(get, path = "/api/realtime/collaboration/project/{pId}/document/{dId}/metrics", tag = "views",
    params(("pId" = String, Path, description = "Project id"), ("dId" = String, Path, description = "Document id")),
    responses((status = 200, body = DocumentMetrics),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn document_metrics(
    State(s): State<AppState>,
    ids: PathParam<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<DocumentMetrics>, ApiError> {
    let principal = authenticate(&s, &headers, None).await?;
    let (project, doc) = path_param(ids)?;
    if !may_read(
        &principal,
        &[format!("project:{project}"), format!("document:{doc}")],
    ) {
        return Err(forbidden(&format!(
            "project {project:?} or document {doc:?}"
        )));
    }
    let (figures, as_of) = fetch(s.views.team(&project, Some(&doc))).await?;
    // Each series holds its latest value; a window's figures are those of
    // its latest update (a user idle in that window has none).
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for f in &figures {
        let t = latest.entry(f.window.as_str()).or_insert(f.ts);
        *t = (*t).max(f.ts);
    }
    let latest: BTreeMap<String, i64> =
        latest.into_iter().map(|(w, t)| (w.to_owned(), t)).collect();
    let mut windows: BTreeMap<String, WindowMetrics> = BTreeMap::new();
    for f in figures {
        if latest.get(&f.window) != Some(&f.ts) {
            continue;
        }
        let w = windows.entry(f.window.clone()).or_default();
        w.window_ms = w.window_ms.or(f.window_ms);
        w.ts = w.ts.max(f.ts);
        let TeamFigure {
            metric,
            user_id,
            value,
            ..
        } = f;
        match user_id {
            Some(u) => {
                w.users.entry(u).or_default().insert(metric, value);
            }
            None => {
                w.metrics.insert(metric, value);
            }
        }
    }
    Ok(Json(DocumentMetrics {
        project_id: project,
        document_id: doc,
        windows,
        as_of,
        lag_ms: lag(as_of),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, User};

    fn user(role: Role) -> Principal {
        Principal::User(User {
            id: "me".into(),
            role,
            projects: vec!["p1".into(), "p2".into()],
            documents: vec!["d1".into()],
            expires_at: None,
        })
    }

    fn params(user: Option<&str>, project: Option<&str>) -> ActiveParams {
        ActiveParams {
            user: user.map(Into::into),
            project: project.map(Into::into),
        }
    }

    /// A member's open sessions are chosen among their own and their
    /// projects' (the newest 1000 of everyone's could hold none of them);
    /// whoever reads everything reads everyone's.
    #[test]
    fn active_sessions_are_read_from_what_the_caller_may_read() {
        let (member, admin) = (user(Role::Member), user(Role::Admin));
        assert_eq!(
            active_scopes(&member, &params(None, None)),
            [
                ActiveScope::User("me".into()),
                ActiveScope::Project("p1".into()),
                ActiveScope::Project("p2".into()),
            ]
        );
        assert_eq!(
            active_scopes(&admin, &params(None, None)),
            [ActiveScope::All]
        );
        assert_eq!(
            active_scopes(&member, &params(Some("u2"), Some("p1"))),
            [ActiveScope::User("u2".into())]
        );
        assert_eq!(
            active_scopes(&member, &params(None, Some("p2"))),
            [ActiveScope::Project("p2".into())]
        );
    }
}
