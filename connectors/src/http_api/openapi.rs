//! The OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! It cannot drift from the router because both come from the same
//! declarations: every route is registered with utoipa-axum's
//! `.routes(routes!(handler))`, which adds the handler to the axum router
//! *and* its `#[utoipa::path(...)]` annotation to the document. The few
//! routes that are not plain handlers (the WebSocket fanout paths, this
//! document) are added to both in the same loop (`super::router`).
//!
//! **Adding a route** (another module): annotate the handler with
//! `#[utoipa::path(get, path = "/api/realtime/…", responses((status = 200, body = T)))]`
//! and register it with one line in `super::router`:
//! `.routes(routes!(my_module::my_handler))` — or merge a whole module's
//! `OpenApiRouter` with `.merge(my_module::routes())` (a plain axum `Router`
//! converts with `OpenApiRouter::from(router)`, but is then undocumented).

use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::{OpenApi, PathItem, ResponseBuilder};

/// The error body of every endpoint (the Schema Registry routes use the
/// registry's own `{error_code, message}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong. 4xx echo the reason; 5xx say little.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_field`, `unknown_category`, `forbidden`, …
    pub code: String,
    pub message: String,
    /// The offending field or parameter (`data.words`, `from`, `cursor`, …).
    pub field: Option<String>,
    /// Seconds to wait before retrying (429, 503).
    pub retry_after_s: Option<u32>,
    /// Per-event errors of a rejected batch (ingest).
    #[schema(value_type = Option<Vec<Object>>)]
    pub rejected: Option<Vec<serde_json::Value>>,
    /// The known categories (unknown category).
    pub known: Option<Vec<String>>,
}

/// One event as clients send it (DESIGN.md "The event contract").
#[derive(Debug, Serialize, ToSchema)]
pub struct EventIn {
    /// Idempotency key (≤ 128 bytes); a UUIDv7 is generated when absent.
    pub id: Option<String>,
    /// `category.name`, e.g. `writing.keystroke`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Event time: ms since the epoch (integer) or an RFC 3339 string.
    #[schema(value_type = Object)]
    pub ts: serde_json::Value,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub document_id: Option<String>,
    /// The type's payload (see docs/EVENTS.md and `schemas/avro`).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// `application/json` body of `POST /v1/events`: one event or an array.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum IngestBody {
    One(EventIn),
    Many(Vec<EventIn>),
}

/// `202` answer of an ingest: every event is in the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestAccepted {
    pub accepted: u64,
    pub duplicates: u64,
    /// Stored ids, in request order.
    pub ids: Vec<String>,
    pub duplicate_ids: Option<Vec<String>>,
    /// With `?partial=true`: the events refused, with their errors.
    #[schema(value_type = Option<Vec<Object>>)]
    pub rejected: Option<Vec<serde_json::Value>>,
}

/// Adds a `GET` that upgrades to a WebSocket (`101`) to the document.
pub(crate) fn add_websocket(api: &mut OpenApi, path: &str, description: &str) {
    let op = OperationBuilder::new()
        .tag("websocket")
        .summary(Some(format!("WebSocket {path}")))
        .description(Some(description))
        .parameter(
            ParameterBuilder::new()
                .name("token")
                .parameter_in(ParameterIn::Query)
                .description(Some(
                    "A user token, for clients that cannot set the Authorization header",
                ))
                .schema(Some(utoipa::openapi::schema::Object::with_type(
                    utoipa::openapi::schema::Type::String,
                ))),
        )
        .response(
            "101",
            ResponseBuilder::new().description("Switching Protocols: the WebSocket is open"),
        )
        .response(
            "401",
            ResponseBuilder::new().description("Missing or bad credentials: no upgrade"),
        )
        .build();
    api.paths
        .paths
        .insert(path.to_owned(), PathItem::new(HttpMethod::Get, op));
}

/// `GET /`: the live console page (its scripts and styles under `/console/`).
pub(crate) fn add_console(api: &mut OpenApi) {
    let op = OperationBuilder::new()
        .tag("meta")
        .summary(Some("The live console (HTML)"))
        .description(Some(
            "A page that subscribes over WebSocket and shows presence, sessions, conflicts and \
             notifications live. Query: `project`, `document`, `user`, `token`.",
        ))
        .response(
            "200",
            ResponseBuilder::new().description("text/html; its assets are under /console/"),
        )
        .build();
    api.paths
        .paths
        .insert("/".to_owned(), PathItem::new(HttpMethod::Get, op));
}

/// Fills in the document's info and adds the shared schemas.
pub(crate) fn finish(api: &mut OpenApi) {
    api.info.title = "inkstream".into();
    api.info.description = Some(
        "Real-time event ingest, derived streams, views and WebSocket fanout. \
         Errors are `{\"error\":{\"code\",\"message\",\"field\"?}}`. See docs/API.md."
            .into(),
    );
}

/// Adds `GET /openapi.json` (this document) to the document.
pub(crate) fn add_self(api: &mut OpenApi) {
    let op = OperationBuilder::new()
        .tag("meta")
        .summary(Some("This OpenAPI 3.1 document"))
        .response(
            "200",
            ResponseBuilder::new().description("The document, generated from the router"),
        )
        .build();
    api.paths.paths.insert(
        "/openapi.json".to_owned(),
        PathItem::new(HttpMethod::Get, op),
    );
}
