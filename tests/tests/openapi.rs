//! The OpenAPI document served by the real binary: valid OpenAPI 3.1 (checked
//! by `openapi-spec-validator`), every documented operation served by the
//! router, and every endpoint of DESIGN.md's API in the document.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, python, unique};
use serde_json::Value;
use std::process::Command;

/// DESIGN.md's API (this branch's part; `notify`'s and the console's routes
/// join the document when they are registered through `routes!`).
const DESIGN_ENDPOINTS: &[(&str, &str)] = &[
    ("post", "/api/realtime/writing/sessions/start"),
    ("post", "/api/realtime/writing/sessions/{id}/keystroke"),
    ("get", "/api/realtime/writing/sessions/{id}/metrics"),
    ("post", "/api/realtime/writing/sessions/{id}/end"),
    ("post", "/api/realtime/writing/sessions/{id}/resume"),
    ("get", "/api/realtime/writing/sessions/active"),
    ("get", "/api/realtime/analytics/project/{projectId}/writing"),
    ("post", "/api/realtime/collaboration/presence"),
    ("post", "/api/realtime/collaboration/cursor"),
    ("post", "/api/realtime/collaboration/edit"),
    (
        "get",
        "/api/realtime/collaboration/document/{id}/collaborators",
    ),
    ("get", "/api/realtime/collaboration/document/{id}/conflicts"),
    (
        "get",
        "/api/realtime/collaboration/project/{pId}/document/{dId}/metrics",
    ),
    ("post", "/api/realtime/events/publish"),
    ("get", "/api/realtime/events/{category}"),
    ("get", "/api/realtime/events/{category}/info"),
    ("get", "/api/realtime/notifications"),
    ("post", "/api/realtime/notifications/{id}/read"),
    ("get", "/api/realtime/notifications/preferences"),
    ("put", "/api/realtime/notifications/preferences"),
    ("post", "/api/realtime/notifications/send"),
    ("get", "/api/realtime/websocket/stats"),
    ("post", "/api/realtime/websocket/broadcast"),
    ("post", "/api/realtime/websocket/send-to-user"),
    ("post", "/v1/events"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/ws/ingest"),
    ("get", "/ws/collaboration"),
    ("get", "/ws/analytics"),
    ("get", "/ws/notifications"),
    ("get", "/ws/presence"),
    ("get", "/schemas/ids/{id}"),
    ("get", "/subjects"),
    ("get", "/subjects/{subject}/versions/{version}"),
];

#[tokio::test]
async fn openapi_document_is_valid_3_1_and_matches_the_router() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    let r = client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    // Validated by an independent implementation of the specification.
    let file = std::env::temp_dir().join(format!("{}.json", unique("openapi")));
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in DESIGN_ENDPOINTS {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is not in the document"
        );
    }
    // Every error answer is the shared error body.
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    // Every documented operation is served: requests reach a handler (any
    // answer but the router's own "no such route" 404 or a 405).
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let req = match method.as_str() {
                "get" => client.get(server.url(&concrete)),
                "post" => client
                    .post(server.url(&concrete))
                    .header("content-type", "application/json")
                    .body("{}"),
                "put" => client
                    .put(server.url(&concrete))
                    .header("content-type", "application/json")
                    .body("{}"),
                other => panic!("unexpected method {other} for {path}"),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let unrouted = status == 404 && body["error"]["message"] == "no such route";
            assert!(
                !unrouted && status != 405,
                "{method} {path} is documented but not served ({status} {body})"
            );
            operations += 1;
        }
    }
    assert!(operations >= DESIGN_ENDPOINTS.len(), "{operations}");
}
