//! The read side of the Confluent Schema Registry REST API, for inkstream's
//! own schemas, so that standard Kafka consumers (Java, Python
//! confluent-kafka, …) decode the topics by pointing their registry URL at
//! inkstream.
//!
//! One schema (the published envelope `inkstream.Event`) under one subject per
//! event topic: `inkstream.events.<category>-value`, version 1, id
//! [`schemas::confluent::schema_id`] (stable across restarts). Errors use the
//! registry's own format (`{"error_code","message"}`), which its clients parse.

use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry routes (merged into the app at the root).
pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(schema_by_id))
        .routes(routes!(subjects_of_id))
        .routes(routes!(subjects))
        .routes(routes!(versions))
        .routes(routes!(version))
}

/// Every subject: `<topic>-value` for each event topic.
pub fn subject_names() -> Vec<String> {
    schemas::Category::ALL
        .iter()
        .map(|c| format!("{}-value", crate::kafka::events_topic(*c)))
        .collect()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], Json(body)).into_response()
}

fn not_found(code: u32, message: &str) -> Response {
    reply(
        StatusCode::NOT_FOUND,
        json!({"error_code": code, "message": message}),
    )
}

/// Whether a path's id is this registry's one schema id (anything else,
/// numeric or not, is a schema it does not have: 404 40403, as the
/// registry's clients expect).
fn ours(id: &str) -> bool {
    id.parse::<u32>().ok() == Some(schemas::confluent::schema_id())
}

#[utoipa::path(get, path = "/schemas/ids/{id}", tag = "schema-registry",
    params(("id" = u32, Path, description = "Schema id (another value, numeric or not: 404 40403)")),
    responses(
        (status = 200, description = "`{\"schema\": \"<Avro JSON>\"}`", body = Object, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Registry error `{error_code, message}` (40401 subject, 40402 version, 40403 schema)", body = Object, content_type = "application/vnd.schemaregistry.v1+json")))]
async fn schema_by_id(id: Result<Path<String>, PathRejection>) -> Response {
    // A path that does not decode (not UTF-8) names no schema either.
    if !id.is_ok_and(|Path(id)| ours(&id)) {
        return not_found(40403, "Schema not found");
    }
    reply(
        StatusCode::OK,
        json!({"schema": schemas::confluent::published_schema()}),
    )
}

#[utoipa::path(get, path = "/schemas/ids/{id}/subjects", tag = "schema-registry",
    params(("id" = u32, Path, description = "Schema id (another value, numeric or not: 404 40403)")),
    responses(
        (status = 200, description = "Subjects using the schema", body = Vec<String>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Registry error `{error_code, message}` (40401 subject, 40402 version, 40403 schema)", body = Object, content_type = "application/vnd.schemaregistry.v1+json")))]
async fn subjects_of_id(id: Result<Path<String>, PathRejection>) -> Response {
    if !id.is_ok_and(|Path(id)| ours(&id)) {
        return not_found(40403, "Schema not found");
    }
    reply(StatusCode::OK, json!(subject_names()))
}

#[utoipa::path(get, path = "/subjects", tag = "schema-registry",
    responses(
        (status = 200, description = "Every subject: `inkstream.events.<category>-value`", body = Vec<String>, content_type = "application/vnd.schemaregistry.v1+json")))]
async fn subjects() -> Response {
    reply(StatusCode::OK, json!(subject_names()))
}

#[utoipa::path(get, path = "/subjects/{subject}/versions", tag = "schema-registry",
    params(("subject" = String, Path, description = "Subject name")),
    responses(
        (status = 200, description = "`[1]`", body = Vec<u32>, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Registry error `{error_code, message}` (40401 subject, 40402 version, 40403 schema)", body = Object, content_type = "application/vnd.schemaregistry.v1+json")))]
async fn versions(subject: Result<Path<String>, PathRejection>) -> Response {
    if !subject.is_ok_and(|Path(subject)| subject_names().contains(&subject)) {
        return not_found(40401, "Subject not found");
    }
    reply(StatusCode::OK, json!([1]))
}

#[utoipa::path(get, path = "/subjects/{subject}/versions/{version}", tag = "schema-registry",
    params(("subject" = String, Path, description = "Subject name"), ("version" = String, Path, description = "`1` or `latest`")),
    responses(
        (status = 200, description = "`{subject, version, id, schema}`", body = Object, content_type = "application/vnd.schemaregistry.v1+json"),
        (status = 404, description = "Registry error `{error_code, message}` (40401 subject, 40402 version, 40403 schema)", body = Object, content_type = "application/vnd.schemaregistry.v1+json")))]
async fn version(path: Result<Path<(String, String)>, PathRejection>) -> Response {
    // A path that does not decode names neither a subject nor a version.
    let Ok(Path((subject, version))) = path else {
        return not_found(40401, "Subject not found");
    };
    if !subject_names().contains(&subject) {
        return not_found(40401, "Subject not found");
    }
    if version != "latest" && version != "1" {
        return not_found(40402, "Version not found");
    }
    reply(
        StatusCode::OK,
        json!({
            "subject": subject,
            "version": 1,
            "id": schemas::confluent::schema_id(),
            "schema": schemas::confluent::published_schema(),
        }),
    )
}
