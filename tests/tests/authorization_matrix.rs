//! The authorization matrix (docs/API.md, "Security model"): every HTTP route
//! and WebSocket path of `/openapi.json` × the eleven kinds of caller →
//! the expected outcome, generated from the one table below and run against
//! the real binary. The test fails on any unexpected allow or unexpected
//! refusal, and when a documented route has no row (a new route must say who
//! may call it).
//!
//! Outcome codes, per caller column: `a` allowed (anything but 401/403),
//! `1` refused with 401, `3` refused with 403. For a subscribe path, `a`
//! means the upgrade succeeded and `document:d1` was subscribed, `3` that the
//! subscription was refused with `forbidden`. For `/ws/ingest`, `3` is an
//! error frame with status 403.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::SinkExt;
use inkstream_tests::{Server, free_port, inkstream_bin, next_json, now_ms, unique};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"matrix-secret";

/// The callers, in the order of the table's columns.
const CALLERS: [&str; 11] = [
    "anonymous",
    "ingest key",
    "ingest key (writing only)",
    "read key",
    "admin key",
    "member of p1",
    "member of p2",
    "analyst",
    "admin",
    "expired token",
    "forged token",
];

/// How a caller authenticates, and whose events it writes (`{me}`).
struct Caller {
    bearer: Option<String>,
    me: &'static str,
}

fn jwt(claims: Value, secret: &[u8]) -> String {
    connectors::auth::sign_jwt(&claims, secret)
}

fn callers() -> Vec<Caller> {
    let exp = now_ms() / 1000 + 600;
    let user = |sub: &str, role: &str, p: &str, d: &str| {
        jwt(
            json!({"sub": sub, "role": role, "projects": [p], "documents": [d], "exp": exp}),
            SECRET,
        )
    };
    let c = |bearer: Option<String>, me| Caller { bearer, me };
    vec![
        c(None, "u1"),
        c(Some("k-ingest".into()), "u1"),
        c(Some("k-writing".into()), "u1"),
        c(Some("k-read".into()), "u1"),
        c(Some("k-admin".into()), "u1"),
        c(Some(user("u1", "member", "p1", "d1")), "u1"),
        c(Some(user("u2", "member", "p2", "d2")), "u2"),
        c(Some(user("u3", "analyst", "p9", "d9")), "u3"),
        c(Some(user("u9", "admin", "p9", "d9")), "u9"),
        c(
            Some(jwt(
                json!({"sub": "u1", "role": "admin", "projects": ["p1"], "documents": ["d1"], "exp": now_ms() / 1000 - 5}),
                SECRET,
            )),
            "u1",
        ),
        c(
            Some(jwt(
                json!({"sub": "u1", "role": "admin", "exp": exp}),
                b"not-the-secret",
            )),
            "u1",
        ),
    ]
}

/// A row: the OpenAPI route (method, template), the concrete request, and the
/// expected outcome per caller (columns as in [`CALLERS`]).
struct Row {
    method: &'static str,
    template: &'static str,
    path: &'static str,
    /// The body; `{me}` becomes the caller's own user id.
    body: Option<&'static str>,
    expect: &'static str,
}

const PUBLIC: &str = "a a a a a a a a a a a";
/// Ingest of a collaboration event in p1/d1 written by the caller.
const INGEST_COLLAB: &str = "1 a 3 3 a a 3 3 a 1 1";
/// Ingest of a writing event (no project) written by the caller: members of
/// p2 and analysts write their own events, which is allowed.
const INGEST_WRITING: &str = "1 a a 3 a a a a a 1 1";
/// Ingest of a writing event in p1 written by the caller.
const INGEST_WRITING_P1: &str = "1 a a 3 a a 3 3 a 1 1";
/// Reading p1/d1 (views, subscriptions).
const READ_P1: &str = "1 3 3 a a a 3 a a 1 1";
/// Reading the log (admins, analysts, read keys).
const READ_LOG: &str = "1 3 3 a a 3 3 a a 1 1";
/// Acting on user u1's data: u1 and admins.
const USER_U1: &str = "1 3 3 3 a a 3 3 a 1 1";
const ADMIN: &str = "1 3 3 3 a 3 3 3 a 1 1";

const COLLAB_EVENT: &str = r#"{"type":"collaboration.cursor_moved","ts":{ts},"user_id":"{me}","project_id":"p1","document_id":"d1","data":{"paragraph":1,"offset":2}}"#;
const SESSION: &str = "s-matrix";

fn rows() -> Vec<Row> {
    let r = |method, template, path, body, expect| Row {
        method,
        template,
        path,
        body,
        expect,
    };
    vec![
        // Public: probes, metrics, the contract.
        r("get", "/", "/", None, PUBLIC),
        r("get", "/healthz", "/healthz", None, PUBLIC),
        r("get", "/readyz", "/readyz", None, PUBLIC),
        r("get", "/metrics", "/metrics", None, PUBLIC),
        r("get", "/openapi.json", "/openapi.json", None, PUBLIC),
        r("get", "/subjects", "/subjects", None, PUBLIC),
        r(
            "get",
            "/subjects/{subject}/versions",
            "/subjects/inkstream-writing-value/versions",
            None,
            PUBLIC,
        ),
        r(
            "get",
            "/subjects/{subject}/versions/{version}",
            "/subjects/inkstream-writing-value/versions/1",
            None,
            PUBLIC,
        ),
        r("get", "/schemas/ids/{id}", "/schemas/ids/1", None, PUBLIC),
        r(
            "get",
            "/schemas/ids/{id}/subjects",
            "/schemas/ids/1/subjects",
            None,
            PUBLIC,
        ),
        // Ingest.
        r(
            "post",
            "/v1/events",
            "/v1/events",
            Some(COLLAB_EVENT),
            INGEST_COLLAB,
        ),
        r(
            "post",
            "/api/realtime/events/publish",
            "/api/realtime/events/publish",
            Some(COLLAB_EVENT),
            INGEST_COLLAB,
        ),
        r(
            "get",
            "/ws/ingest",
            "/ws/ingest",
            Some(COLLAB_EVENT),
            INGEST_COLLAB,
        ),
        r(
            "post",
            "/api/realtime/writing/sessions/start",
            "/api/realtime/writing/sessions/start",
            Some(r#"{"user_id":"{me}","project_id":"p1","session_id":"s-matrix-{me}"}"#),
            INGEST_WRITING_P1,
        ),
        r(
            "post",
            "/api/realtime/writing/sessions/{id}/keystroke",
            "/api/realtime/writing/sessions/s-matrix/keystroke",
            Some(r#"{"user_id":"{me}","keystrokes":1,"words":1,"chars":1}"#),
            INGEST_WRITING,
        ),
        r(
            "post",
            "/api/realtime/writing/sessions/{id}/end",
            "/api/realtime/writing/sessions/s-matrix-end/end",
            Some(r#"{"user_id":"{me}","project_id":"p1","reason":"done"}"#),
            INGEST_WRITING_P1,
        ),
        r(
            "post",
            "/api/realtime/writing/sessions/{id}/resume",
            "/api/realtime/writing/sessions/s-matrix-end/resume",
            Some(r#"{"user_id":"{me}","project_id":"p1"}"#),
            INGEST_WRITING_P1,
        ),
        r(
            "post",
            "/api/realtime/collaboration/presence",
            "/api/realtime/collaboration/presence",
            Some(r#"{"user_id":"{me}","project_id":"p1","document_id":"d1","status":"online"}"#),
            INGEST_COLLAB,
        ),
        r(
            "post",
            "/api/realtime/collaboration/cursor",
            "/api/realtime/collaboration/cursor",
            Some(
                r#"{"user_id":"{me}","project_id":"p1","document_id":"d1","paragraph":3,"offset":10}"#,
            ),
            INGEST_COLLAB,
        ),
        r(
            "post",
            "/api/realtime/collaboration/edit",
            "/api/realtime/collaboration/edit",
            Some(
                r#"{"user_id":"{me}","project_id":"p1","document_id":"d1","paragraph":3,"offset":10,"inserted":5,"deleted":0}"#,
            ),
            INGEST_COLLAB,
        ),
        // Subscriptions (to document:d1).
        r("get", "/ws/analytics", "/ws/analytics", None, READ_P1),
        r(
            "get",
            "/ws/collaboration",
            "/ws/collaboration",
            None,
            READ_P1,
        ),
        r("get", "/ws/presence", "/ws/presence", None, READ_P1),
        r(
            "get",
            "/ws/notifications",
            "/ws/notifications",
            None,
            READ_P1,
        ),
        // Event queries.
        r(
            "get",
            "/api/realtime/events/{category}",
            "/api/realtime/events/collaboration",
            None,
            READ_LOG,
        ),
        r(
            "get",
            "/api/realtime/events/{category}/info",
            "/api/realtime/events/collaboration/info",
            None,
            READ_LOG,
        ),
        // Views.
        r(
            "get",
            "/api/realtime/writing/sessions/{id}/metrics",
            "/api/realtime/writing/sessions/s-matrix/metrics",
            None,
            READ_P1,
        ),
        r(
            "get",
            "/api/realtime/writing/sessions/active",
            "/api/realtime/writing/sessions/active?project=p1",
            None,
            READ_P1,
        ),
        r(
            "get",
            "/api/realtime/analytics/project/{projectId}/writing",
            "/api/realtime/analytics/project/p1/writing",
            None,
            READ_P1,
        ),
        r(
            "get",
            "/api/realtime/collaboration/document/{id}/collaborators",
            "/api/realtime/collaboration/document/d1/collaborators",
            None,
            READ_P1,
        ),
        r(
            "get",
            "/api/realtime/collaboration/document/{id}/conflicts",
            "/api/realtime/collaboration/document/d1/conflicts",
            None,
            READ_P1,
        ),
        r(
            "get",
            "/api/realtime/collaboration/project/{pId}/document/{dId}/metrics",
            "/api/realtime/collaboration/project/p1/document/d1/metrics",
            None,
            READ_P1,
        ),
        // Notifications of user u1.
        r(
            "get",
            "/api/realtime/notifications",
            "/api/realtime/notifications?user_id=u1",
            None,
            USER_U1,
        ),
        r(
            "post",
            "/api/realtime/notifications/{id}/read",
            "/api/realtime/notifications/n1/read?user_id=u1",
            None,
            USER_U1,
        ),
        r(
            "get",
            "/api/realtime/notifications/preferences",
            "/api/realtime/notifications/preferences?user_id=u1",
            None,
            USER_U1,
        ),
        r(
            "put",
            "/api/realtime/notifications/preferences",
            "/api/realtime/notifications/preferences?user_id=u1",
            Some(r#"{"timezone":"UTC"}"#),
            USER_U1,
        ),
        // The server POSTs to a webhook URL: only admins choose it.
        r(
            "put",
            "/api/realtime/notifications/preferences",
            "/api/realtime/notifications/preferences?user_id=u1",
            Some(r#"{"webhook_url":"https://hooks.example.com/u1"}"#),
            ADMIN,
        ),
        // Admin.
        r(
            "post",
            "/api/realtime/notifications/send",
            "/api/realtime/notifications/send",
            Some(r#"{"recipient":"u1","title":"hi"}"#),
            ADMIN,
        ),
        r(
            "get",
            "/api/realtime/websocket/stats",
            "/api/realtime/websocket/stats",
            None,
            ADMIN,
        ),
        r(
            "post",
            "/api/realtime/websocket/broadcast",
            "/api/realtime/websocket/broadcast",
            Some(r#"{"channel":"document:d1","data":{"x":1}}"#),
            ADMIN,
        ),
        r(
            "post",
            "/api/realtime/websocket/send-to-user",
            "/api/realtime/websocket/send-to-user",
            Some(r#"{"user_id":"u1","data":{"x":1}}"#),
            ADMIN,
        ),
    ]
}

fn config_file() -> std::path::PathBuf {
    let key = |name: &str, raw: &str, extra: &str| {
        format!(
            "[[auth.api_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
            connectors::auth::hash_api_key(raw)
        )
    };
    let toml = format!(
        "[auth]\njwt_secret = \"matrix-secret\"\n{}{}{}{}",
        key("ingest", "k-ingest", ""),
        key("writing", "k-writing", "categories = [\"writing\"]"),
        key("reader", "k-read", "scopes = [\"read\"]"),
        key("ops", "k-admin", "scopes = [\"admin\"]"),
    );
    let path = std::env::temp_dir().join(unique("matrix.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// What a caller got: `a`, `1` or `3` (see the module doc), plus the status
/// or frame for the failure message.
async fn outcome(server: &Server, row: &Row, caller: &Caller) -> (char, String) {
    let body = row.body.map(|b| {
        b.replace("{me}", caller.me)
            .replace("{ts}", &now_ms().to_string())
            .replace("s-matrix-", &unique("s-matrix-"))
    });
    if row.path.starts_with("/ws/") {
        return ws_outcome(server, row, caller, body).await;
    }
    let http = reqwest::Client::new();
    let url = server.url(row.path);
    let mut req = match row.method {
        "get" => http.get(url),
        "post" => http.post(url),
        "put" => http.put(url),
        other => panic!("no method {other}"),
    };
    if let Some(b) = &caller.bearer {
        req = req.bearer_auth(b);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let code = match status {
        401 => '1',
        403 => '3',
        _ => 'a',
    };
    (
        code,
        format!("{status} {}", text.chars().take(200).collect::<String>()),
    )
}

async fn ws_outcome(
    server: &Server,
    row: &Row,
    caller: &Caller,
    body: Option<String>,
) -> (char, String) {
    let url = match &caller.bearer {
        Some(t) => server.ws_url(&format!("{}?token={t}", row.path)),
        None => server.ws_url(row.path),
    };
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let code = match status {
                401 => '1',
                403 => '3',
                _ => 'a',
            };
            return (code, format!("upgrade {status}"));
        }
        Err(e) => panic!("{}: {e}", row.path),
    };
    let frame = match &body {
        Some(event) => event.clone(),
        None => json!({"op": "subscribe", "channel": "document:d1"}).to_string(),
    };
    ws.send(Message::text(frame)).await.unwrap();
    let reply = next_json(&mut ws).await;
    let _ = ws.close(None).await;
    let refused = reply["status"] == 403 || reply["code"] == "forbidden";
    (if refused { '3' } else { 'a' }, reply.to_string())
}

/// Waits until u1's session `s-matrix` (project p1) is in the sessions view,
/// so that reading its metrics is decided by authorization, not by a 404.
async fn session_in_view(server: &Server) {
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/api/realtime/writing/sessions/start"))
        .bearer_auth("k-admin")
        .json(&json!({"user_id": "u1", "project_id": "p1", "session_id": SESSION}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .get(server.url(&format!("/api/realtime/writing/sessions/{SESSION}/metrics")))
            .bearer_auth("k-admin")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the session {SESSION} never reached the sessions view: last {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_ws_path_times_every_caller_is_as_documented() {
    let cfg = config_file();
    let server = Server::start(&["--config", cfg.to_str().unwrap()]).await;
    let rows = rows();
    let callers = callers();

    // Every documented route has a row.
    let doc: Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let covered: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_owned(), r.template.to_owned()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    documented.insert(("get".into(), "/openapi.json".into()));
    let missing: Vec<_> = documented.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "routes without a row in the matrix: {missing:?}"
    );

    session_in_view(&server).await;

    let mut unexpected_allows = Vec::new();
    let mut unexpected_refusals = Vec::new();
    let mut cells = 0;
    for row in &rows {
        let expected: Vec<char> = row
            .expect
            .split(' ')
            .map(|c| c.chars().next().unwrap())
            .collect();
        assert_eq!(expected.len(), CALLERS.len(), "{} {}", row.method, row.path);
        for (i, caller) in callers.iter().enumerate() {
            let (got, detail) = outcome(&server, row, caller).await;
            cells += 1;
            let line = format!(
                "{} {} as {}: expected {}, got {got} ({detail})",
                row.method, row.path, CALLERS[i], expected[i]
            );
            if got == expected[i] {
                continue;
            }
            if got == 'a' {
                unexpected_allows.push(line);
            } else {
                unexpected_refusals.push(line);
            }
        }
    }
    println!(
        "authorization matrix: {} routes/paths × {} callers = {cells} cells; {} unexpected allows, {} unexpected refusals",
        rows.len(),
        CALLERS.len(),
        unexpected_allows.len(),
        unexpected_refusals.len()
    );
    assert!(
        unexpected_allows.is_empty() && unexpected_refusals.is_empty(),
        "unexpected allows:\n{}\nunexpected refusals:\n{}",
        unexpected_allows.join("\n"),
        unexpected_refusals.join("\n")
    );
    let _ = std::fs::remove_file(cfg);
}

/// Anonymous access exists only on loopback: without credentials, a loopback
/// server admits anonymous callers (as admins), and binding any other
/// address refuses to start, naming `auth.allow_anonymous`.
#[tokio::test]
async fn anonymous_access_needs_loopback_or_an_explicit_setting() {
    let server = Server::start(&[]).await;
    let r = reqwest::get(server.url("/api/realtime/websocket/stats"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "anonymous on loopback is an admin");

    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(inkstream_bin())
            .args([
                "serve",
                "--port",
                &free_port().to_string(),
                "--set",
                "server.bind=\"0.0.0.0\"",
            ])
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "serve on 0.0.0.0 without credentials started"
    );
    assert!(stderr.contains("auth.allow_anonymous"), "{stderr}");

    // With the setting, it starts (and says so loudly).
    let port = free_port();
    let allowed = Server::start_on(
        port,
        &[
            "--set",
            "server.bind=\"0.0.0.0\"",
            "--set",
            "auth.allow_anonymous=true",
        ],
    )
    .await;
    drop(allowed);
}

/// Anonymous callers are rate-limited like users, per peer address; a batch
/// over the burst is 413 naming it (a 429 could never succeed).
#[tokio::test]
async fn anonymous_callers_are_rate_limited_and_a_batch_over_the_burst_is_413() {
    let server = Server::start(&[
        "--set",
        "ingest.anonymous_rate_per_sec=0.001", // no refill between the requests, however slow the machine
        "--set",
        "ingest.anonymous_burst=10",
    ])
    .await;
    let event = |i: usize| {
        json!({"id": unique(&format!("anon-{i}")), "type": "writing.keystroke", "ts": now_ms(),
               "user_id": "u1", "data": {"keystrokes": 1, "words": 1, "chars": 1}})
    };
    let post = |body: Value| {
        reqwest::Client::new()
            .post(server.url("/v1/events"))
            .json(&body)
            .send()
    };
    let r = post(Value::Array((0..11).map(event).collect()))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "batch_over_burst");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("burst of 10"),
        "{body}"
    );
    let r = post(Value::Array((0..10).map(event).collect()))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = post(event(99)).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // A body without a Content-Type, or a type a cross-site form can send: 415.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = reqwest::Client::new()
            .post(server.url("/api/realtime/collaboration/cursor"))
            .body(r#"{"user_id":"u1","document_id":"d1","paragraph":1,"offset":1}"#);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        assert_eq!(req.send().await.unwrap().status(), 415, "{ct:?}");
    }
}
