//! The operational endpoints: `/metrics` (Prometheus), `/healthz`
//! (liveness) and `/readyz` (the log answers).

use super::error::ApiError;
use super::openapi;
use super::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Object)))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the log answers.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "`{\"status\":\"ready\",\"log\":\"redis\"}`", body = Object),
        (status = 503, description = "The log does not answer", body = openapi::ErrorBody)))]
pub(crate) async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.log.ping().await.map_err(ApiError::LogUnavailable)?;
    Ok(Json(json!({"status": "ready", "log": s.log.backend()})))
}
