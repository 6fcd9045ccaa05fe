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
use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry routes (merged into the app at the root).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}/versions", get(versions))
        .route("/subjects/{subject}/versions/{version}", get(version))
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

async fn schema_by_id(Path(id): Path<u32>) -> Response {
    if id != schemas::confluent::schema_id() {
        return not_found(40403, "Schema not found");
    }
    reply(
        StatusCode::OK,
        json!({"schema": schemas::confluent::published_schema()}),
    )
}

async fn subjects_of_id(Path(id): Path<u32>) -> Response {
    if id != schemas::confluent::schema_id() {
        return not_found(40403, "Schema not found");
    }
    reply(StatusCode::OK, json!(subject_names()))
}

async fn subjects() -> Response {
    reply(StatusCode::OK, json!(subject_names()))
}

async fn versions(Path(subject): Path<String>) -> Response {
    if !subject_names().contains(&subject) {
        return not_found(40401, "Subject not found");
    }
    reply(StatusCode::OK, json!([1]))
}

async fn version(Path((subject, version)): Path<(String, String)>) -> Response {
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
