//! The parts of the OpenAPI document that the handlers' annotations cannot
//! say, added to the generated document so that it states what the server
//! enforces (schemathesis `--checks all` holds the server to it,
//! `tests/tests/schemathesis.rs`):
//!
//! - the event envelope and one `data` schema per type, generated from the
//!   Avro schemas ([`schemas::json_schema`]), with the limits in force
//!   (`ts` window, id lengths, batch size) and the NDJSON media type;
//! - the command endpoints' bodies (envelope fields plus the payload's);
//! - how callers authenticate (security schemes), when credentials are
//!   configured;
//! - the answers every route can give besides its own: 401 (secured),
//!   400/413/415 (a body), 503 (`server.request_timeout`), all with the
//!   shared error body;
//! - the WebSocket handshake headers.
//!
//! `ts` is bounded by the server clock, so [`render`] fills in the bounds
//! each time the document is served.

use super::state::IngestConfig;
use serde_json::{Map, Value, json};

const REFS: &str = "#/components/schemas/";
const ERROR: &str = "#/components/schemas/ErrorBody";
/// Slack on the past bound of `ts` in a served document: an event dated at
/// the bound stays acceptable for this long after the document was served.
const PAST_SLACK_MS: i64 = 10 * 60 * 1000;

/// The command endpoints: path → (event type, payload fields taken from
/// the path instead of the body).
const COMMANDS: &[(&str, &str, &[&str])] = &[
    (
        "/api/realtime/writing/sessions/start",
        "writing.session_started",
        &[],
    ),
    (
        "/api/realtime/writing/sessions/{id}/keystroke",
        "writing.keystroke",
        &[],
    ),
    (
        "/api/realtime/writing/sessions/{id}/end",
        "writing.session_ended",
        &["session_id"],
    ),
    (
        "/api/realtime/writing/sessions/{id}/resume",
        "writing.session_resumed",
        &["session_id"],
    ),
    (
        "/api/realtime/collaboration/presence",
        "collaboration.presence_updated",
        &[],
    ),
    (
        "/api/realtime/collaboration/cursor",
        "collaboration.cursor_moved",
        &[],
    ),
    (
        "/api/realtime/collaboration/edit",
        "collaboration.edit_applied",
        &[],
    ),
];

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR}}}
    })
}

/// Adds `status` to an operation's responses unless it documents it.
fn add_response(op: &mut Value, status: &str, description: &str) {
    let responses = &mut op["responses"];
    if responses.get(status).is_none() {
        responses[status] = error_response(description);
    } else if responses[status]["description"] == "" {
        responses[status]["description"] = description.into();
    }
}

/// Whether callers of `path` authenticate.
fn secured(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/api/") || path.starts_with("/ws/")
}

/// Completes the generated document (see the module doc). `secured_server`:
/// whether any credential is configured (otherwise nobody authenticates).
pub(crate) fn complete(doc: &mut Value, cfg: &IngestConfig, secured_server: bool) {
    add_event_schemas(doc, cfg);
    let ingest_body = json!({
        "required": true,
        "content": {
            "application/json": {"schema": {"oneOf": [
                {"$ref": format!("{REFS}Event")}, {"$ref": format!("{REFS}EventBatch")}]}},
            "application/x-ndjson": {"schema": {
                "$ref": format!("{REFS}EventBatch"),
                "description": "One event per line (each item of the array on its own line)"
            }},
            "application/ndjson": {"schema": {"$ref": format!("{REFS}EventBatch")}}
        }
    });
    let paths = doc["paths"].as_object_mut().cloned().unwrap_or_default();
    let mut out = Map::new();
    for (path, mut item) in paths {
        if let Some(ops) = item.as_object_mut() {
            for (method, op) in ops.iter_mut() {
                if path == "/v1/events" || path == "/api/realtime/events/publish" {
                    op["requestBody"] = ingest_body.clone();
                }
                if let Some((_, ty, from_path)) = COMMANDS.iter().find(|(p, ..)| *p == path) {
                    op["requestBody"] = command_body(ty, from_path, cfg);
                }
                if path.starts_with("/ws/") && method == "get" {
                    websocket(op);
                }
                common_responses(op, &path, secured_server);
            }
        }
        out.insert(path, item);
    }
    doc["paths"] = Value::Object(out);
    fix_ups(doc);
    if secured_server {
        doc["components"]["securitySchemes"] = json!({
            "bearer": {"type": "http", "scheme": "bearer",
                "description": "An API key (scopes ingest, read, admin) or an end user's JWT"},
            "token": {"type": "apiKey", "in": "query", "name": "token",
                "description": "A user JWT in the query, for clients that cannot set headers \
                                (WebSocket paths and ingest only)"},
            "session": {"type": "apiKey", "in": "cookie", "name": "connect.sid",
                "description": "The express-session cookie (when auth.session_secret is set)"}
        });
    }
}

fn common_responses(op: &mut Value, path: &str, secured_server: bool) {
    let takes_token =
        path.starts_with("/ws/") || path == "/v1/events" || path == "/api/realtime/events/publish";
    // `?token=` is a way to authenticate, stated as a security scheme.
    // (`get_mut`, not indexing: indexing a JSON object inserts a null.)
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        params.retain(|p| !(p["name"] == "token" && p["in"] == "query"));
    }
    if op
        .get("parameters")
        .is_some_and(|p| p.as_array().is_none_or(Vec::is_empty))
    {
        op.as_object_mut().map(|o| o.remove("parameters"));
    }
    if secured(path) && secured_server {
        let mut security = vec![json!({"bearer": []}), json!({"session": []})];
        if takes_token {
            security.push(json!({"token": []}));
        }
        op["security"] = security.into();
        add_response(op, "401", "No, bad or expired credentials");
    }
    if op.get("requestBody").is_some() {
        add_response(
            op,
            "400",
            "The body is not the JSON expected (`invalid_json`, `bad_body`)",
        );
        add_response(
            op,
            "413",
            "The body is larger than ingest.max_body_bytes (`body_too_large`)",
        );
        add_response(
            op,
            "415",
            "No Content-Type, or one this route does not take (`unsupported_media_type`)",
        );
    }
    add_response(
        op,
        "503",
        "Not answered within server.request_timeout (`request_timed_out`), or a \
         dependency is unavailable (Retry-After when a retry helps)",
    );
}

/// Sets the schema of a parameter of an operation.
fn param_schema(doc: &mut Value, path: &str, method: &str, name: &str, schema: Value) {
    let params = doc
        .get_mut("paths")
        .and_then(|p| p.get_mut(path))
        .and_then(|p| p.get_mut(method))
        .and_then(|o| o.get_mut("parameters"))
        .and_then(Value::as_array_mut);
    for p in params.into_iter().flatten().filter(|p| p["name"] == name) {
        p["schema"] = schema.clone();
    }
}

/// Marks a parameter of an operation required.
fn param_required(doc: &mut Value, path: &str, method: &str, name: &str) {
    let params = doc
        .get_mut("paths")
        .and_then(|p| p.get_mut(path))
        .and_then(|p| p.get_mut(method))
        .and_then(|o| o.get_mut("parameters"))
        .and_then(Value::as_array_mut);
    for p in params.into_iter().flatten().filter(|p| p["name"] == name) {
        p["required"] = true.into();
    }
}

/// What the annotations cannot express: alternatives of a parameter,
/// enums of types from other crates, the preferences body.
fn fix_ups(doc: &mut Value) {
    let categories: Vec<&str> = schemas::Category::ALL.iter().map(|c| c.as_str()).collect();
    let category = json!({"type": "string", "enum": categories});
    for path in [
        "/api/realtime/events/{category}",
        "/api/realtime/events/{category}/info",
    ] {
        param_schema(doc, path, "get", "category", category.clone());
    }
    let log_time = json!({"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": u64::MAX},
        {"type": "string", "format": "date-time"}]});
    for name in ["from", "to"] {
        param_schema(
            doc,
            "/api/realtime/events/{category}",
            "get",
            name,
            log_time.clone(),
        );
        param_schema(
            doc,
            "/api/realtime/analytics/project/{projectId}/writing",
            "get",
            name,
            json!({"anyOf": [
                {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
                {"type": "string", "format": "date-time"},
                {"type": "string", "format": "date"}]}),
        );
    }
    // An API key names the user (400 without); an end user may leave it out
    // (their own): the document states the stricter rule, which works for both.
    for (path, method) in [
        ("/api/realtime/notifications", "get"),
        ("/api/realtime/notifications/{id}/read", "post"),
        ("/api/realtime/notifications/preferences", "get"),
        ("/api/realtime/notifications/preferences", "put"),
    ] {
        param_required(doc, path, method, "user_id");
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["SendBody"]["properties"]["priority"] = json!({
        "type": "string", "enum": ["LOW", "MEDIUM", "HIGH", "CRITICAL"], "default": "MEDIUM"});
    let paths: Vec<&str> = crate::websocket_fanout::WsPath::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    schemas["Broadcast"]["properties"]["path"] = json!({
        "type": ["string", "null"], "enum": paths.iter().map(|p| json!(p)).chain([Value::Null]).collect::<Vec<_>>(),
        "description": "The fanout path (default /ws/analytics)"});
    if let Some(op) = doc["paths"]["/api/realtime/notifications/preferences"].get_mut("put") {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": preferences_schema()}}
        });
    }
}

/// The body of `PUT …/notifications/preferences`
/// ([`crate::notifier::policy::Preferences`]; missing fields take the defaults).
fn preferences_schema() -> Value {
    let channel = json!({"type": "string", "enum": ["in_app", "email", "sms", "webhook"]});
    let channels = json!({"type": "array", "items": channel});
    let hm = json!({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
                    "minLength": 5, "maxLength": 5, "description": "HH:MM, local time"});
    let zones: Vec<Value> = jiff::tz::db()
        .available()
        .map(|n| Value::from(n.to_string()))
        .collect();
    let text = |d: &str| json!({"type": ["string", "null"], "description": d});
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "timezone": {"type": "string", "enum": zones,
                         "description": "IANA time zone (the server's time zone database)"},
            "quiet_hours": {"anyOf": [{"type": "null"}, {
                "type": "object", "additionalProperties": false,
                "required": ["start", "end"],
                "properties": {"start": hm.clone(), "end": hm}}]},
            "channels": {"type": "object", "additionalProperties": false,
                "properties": {"critical": channels.clone(), "high": channels.clone(),
                               "medium": channels.clone()}},
            "digest": {"type": "string", "enum": ["hourly", "daily", "weekly"]},
            "digest_hour": {"type": "integer", "minimum": 0, "maximum": 23},
            "digest_weekday": {"type": "integer", "minimum": 1, "maximum": 7,
                               "description": "1 = Monday … 7 = Sunday"},
            "digest_channels": channels,
            "email": text("Email address; null = no email"),
            "phone": text("Phone number (E.164); null = no SMS"),
            "webhook_url": text("The user's own webhook (admins only, unless \
                                 notifications.webhook.allow_user_urls)"),
            "flow_hold": {"type": "boolean"}
        }
    })
}

/// The WebSocket handshake a GET on a `/ws/` path must carry.
fn websocket(op: &mut Value) {
    let header = |name: &str, schema: Value, description: &str| {
        json!({"name": name, "in": "header", "required": true, "schema": schema,
               "description": description})
    };
    let mut params = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    params.extend([
        header(
            "Connection",
            json!({"type": "string", "enum": ["Upgrade"]}),
            "WebSocket handshake",
        ),
        header(
            "Upgrade",
            json!({"type": "string", "enum": ["websocket"]}),
            "WebSocket handshake",
        ),
        header(
            "Sec-WebSocket-Version",
            json!({"type": "string", "enum": ["13"]}),
            "WebSocket handshake",
        ),
        header(
            "Sec-WebSocket-Key",
            json!({"type": "string"}),
            "WebSocket handshake (16 random bytes, base64)",
        ),
    ]);
    op["parameters"] = params.into();
    add_response(
        op,
        "400",
        "Not a WebSocket handshake (`invalid_upgrade`, naming the header)",
    );
    add_response(
        op,
        "403",
        "An upgrade without a token (session cookie, or auth off) from an origin not allowed \
         (server.allowed_origins)",
    );
}

/// `Ts`, `Event`, `EventBatch`, and per type `Data.<type>` and `Event.<type>`.
fn add_event_schemas(doc: &mut Value, cfg: &IngestConfig) {
    let schemas = &mut doc["components"]["schemas"];
    let ts_ref = format!("{REFS}Ts");
    let mut variants = Vec::new();
    let mut mapping = Map::new();
    for (name, schema) in schemas::json_schema::components(&cfg.limits, &ts_ref, REFS) {
        if let Some(ty) = name.strip_prefix("Event.") {
            variants.push(json!({"$ref": format!("{REFS}{name}")}));
            mapping.insert(ty.to_owned(), format!("{REFS}{name}").into());
        }
        schemas[name] = schema;
    }
    schemas["Ts"] = json!({
        "type": "integer",
        "minimum": 0,
        "maximum": i64::MAX,
        "description": ts_description(cfg),
    });
    schemas["Event"] = json!({
        "description": "One event (DESIGN.md \"The event contract\"; docs/EVENTS.md): the \
                        envelope of its `type`, with that type's `data`",
        "oneOf": variants,
        "discriminator": {"propertyName": "type", "mapping": mapping},
    });
    schemas["EventBatch"] = json!({
        "type": "array",
        "items": {"$ref": format!("{REFS}Event")},
        "minItems": 1,
        "maxItems": cfg.max_batch_events,
        "description": format!(
            "1 to {} events (ingest.max_batch_events; more: 413 `batch_too_large`); also \
             at most the caller's burst (413 `batch_over_burst`)",
            cfg.max_batch_events
        ),
    });
    // Superseded by `Event` / `EventBatch`.
    if let Some(m) = schemas.as_object_mut() {
        m.remove("EventIn");
        m.remove("IngestBody");
    }
}

fn ts_description(cfg: &IngestConfig) -> String {
    let mut d = String::from(
        "Event time, integer ms since the Unix epoch (an RFC 3339 string is also accepted, \
         within the same bounds).",
    );
    if cfg.check_skew {
        d.push_str(&format!(
            " Accepted from {} ms before to {} ms after the server clock (ingest.max_past, \
             ingest.max_future; otherwise 422 `ts_out_of_range`): the bounds here are those at \
             the time this document was served, the lower one moved {} min later.",
            cfg.limits.max_past_ms,
            cfg.limits.max_future_ms,
            PAST_SLACK_MS / 60_000
        ));
    }
    d
}

/// A command's body: the envelope fields (all optional but the ids its
/// category requires; `ts` defaults to now) and the payload's fields.
fn command_body(ty: &str, from_path: &[&str], cfg: &IngestConfig) -> Value {
    let data = schemas::json_schema::data_schema(ty).unwrap_or_else(|| json!({}));
    let limits = &cfg.limits;
    let id = |d: &str| schemas::json_schema::id_schema(limits, d);
    let mut properties = Map::new();
    properties.insert("id".into(), id("Idempotency key; generated when absent"));
    properties.insert("ts".into(), json!({"$ref": format!("{REFS}Ts")}));
    properties.insert(
        "user_id".into(),
        id("The acting user; an end user may leave it out (their own)"),
    );
    properties.insert("project_id".into(), id("The project"));
    properties.insert("document_id".into(), id("The document"));
    let mut required: Vec<Value> = schemas::EventType::lookup(ty)
        .map(|t| {
            t.category
                .required_fields()
                .iter()
                .map(|f| json!(f))
                .collect()
        })
        .unwrap_or_default();
    if let Some(fields) = data["properties"].as_object() {
        for (k, v) in fields {
            if !from_path.contains(&k.as_str()) {
                properties.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(r) = data["required"].as_array() {
        required.extend(r.iter().cloned());
    }
    for id in ["user_id", "project_id", "document_id"] {
        if required.contains(&json!(id)) {
            properties[id]["type"] = "string".into();
        }
    }
    json!({
        "required": true,
        "description": format!(
            "Becomes a `{ty}` event: envelope fields plus the payload's fields (docs/EVENTS.md)"
        ),
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        }}}
    })
}

/// The document as served at `now_ms`: the `ts` bounds filled in.
pub(crate) fn render(doc: &Value, cfg: &IngestConfig, now_ms: i64) -> String {
    if !cfg.check_skew {
        return doc.to_string();
    }
    let mut doc = doc.clone();
    let ts = &mut doc["components"]["schemas"]["Ts"];
    ts["minimum"] = (now_ms - cfg.limits.max_past_ms + PAST_SLACK_MS)
        .max(0)
        .into();
    ts["maximum"] = (now_ms + cfg.limits.max_future_ms).into();
    doc.to_string()
}
