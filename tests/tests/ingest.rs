//! Ingest for real: idempotency, authentication and authorization, rate
//! limits, WebSocket ingest, the command endpoints, limits, and Redis outages
//! — against the real binary and real redis-servers.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::{SinkExt, StreamExt};
use inkstream_tests::{PrivateRedis, Server, now_ms, redis_url, unique};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// An XRANGE entry: id and fields.
type StreamEntry = (String, std::collections::HashMap<String, redis::Value>);

fn keystroke(id: &str, user: &str) -> Value {
    json!({"id": id, "type":"writing.keystroke","ts": now_ms(),"user_id": user,
           "data":{"keystrokes":5,"words":1,"chars":5}})
}

async fn post(server: &Server, path: &str, auth: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(server.url(path)).json(body);
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    req.send().await.unwrap()
}

/// The events in the log's streams (an entry holds up to 16).
async fn xlen_all(url: &str, prefix: &str) -> u64 {
    log_ids(url, prefix).await.len() as u64
}

/// The id of every event in the log's streams, entry by entry.
async fn log_ids(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:events:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for k in keys {
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(&k)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for (_, fields) in entries {
            for event in connectors::event_log::redis::events_of_fields(&fields) {
                ids.push(event.expect("every stored event decodes").id.to_string());
            }
        }
    }
    ids
}

#[tokio::test]
async fn retried_batches_are_stored_exactly_once_across_a_restart_of_inkstream() {
    let url = redis_url();
    let prefix = unique("idem");
    let args = [
        "--redis-url",
        &url,
        "--set",
        &format!("redis.prefix={prefix}"),
    ];
    let batch: Vec<Value> = (0..20)
        .map(|i| keystroke(&format!("{prefix}-{i}"), "u1"))
        .collect();
    {
        let server = Server::start(&args).await;
        let r: Value = post(&server, "/v1/events", None, &Value::Array(batch.clone()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (r["accepted"].as_u64(), r["duplicates"].as_u64()),
            (Some(20), Some(0))
        );
        let r: Value = post(&server, "/v1/events", None, &Value::Array(batch.clone()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r["duplicates"], 20, "a retry is reported as duplicates");
        assert_eq!(r["duplicate_ids"].as_array().unwrap().len(), 20);
    }
    // A new process remembers: the dedup state lives in Redis.
    let server = Server::start(&args).await;
    let mut half = batch[10..].to_vec();
    half.push(keystroke(&format!("{prefix}-new"), "u1"));
    let r: Value = post(&server, "/v1/events", None, &Value::Array(half))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(11), Some(10))
    );
    assert_eq!(
        xlen_all(&url, &prefix).await,
        21,
        "every acknowledged event exactly once"
    );
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("inkstream_ingest_duplicates_total 10"),
        "duplicates are counted"
    );
}

#[tokio::test]
async fn api_keys_jwts_and_session_cookies_authenticate_and_are_authorized() {
    let url = redis_url();
    let prefix = unique("auth");
    let key_hash = connectors::auth::hash_api_key("key-writer");
    let cfg_dir = std::env::temp_dir().join(unique("authcfg"));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("inkstream.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\njwt_secret = \"jwt-s3cret\"\nsession_secret = \"keyboard cat\"\n\
             [[auth.api_keys]]\nname = \"writer-app\"\nsha256 = \"{key_hash}\"\ncategories = [\"writing\"]\n"
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--redis-url",
        &url,
        "--set",
        &format!("redis.prefix={prefix}"),
    ])
    .await;
    let ks = keystroke(&unique("k"), "u1");

    // No credentials, a wrong key, a forged or expired token: 401.
    let r = post(&server, "/v1/events", None, &ks).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unauthenticated"
    );
    assert_eq!(
        post(&server, "/v1/events", Some("nope"), &ks)
            .await
            .status(),
        401
    );
    let exp = now_ms() / 1000 + 60;
    let forged = connectors::auth::sign_jwt(&json!({"sub":"u1","exp":exp}), b"other");
    assert_eq!(
        post(&server, "/v1/events", Some(&forged), &ks)
            .await
            .status(),
        401
    );
    let expired = connectors::auth::sign_jwt(
        &json!({"sub":"u1","exp":now_ms() / 1000 - 5}),
        b"jwt-s3cret",
    );
    let r = post(&server, "/v1/events", Some(&expired), &ks).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "token_expired"
    );

    // An API key limited to writing: writing passes, system is forbidden.
    assert_eq!(
        post(&server, "/v1/events", Some("key-writer"), &ks)
            .await
            .status(),
        202
    );
    let err = json!({"type":"system.error","ts":now_ms(),"data":{"service":"a","message":"b"}});
    let r = post(&server, "/v1/events", Some("key-writer"), &err).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );

    // A user may ingest their own events (user_id filled in when absent), not others'.
    let token = connectors::auth::sign_jwt(&json!({"sub":"u1","exp":exp}), b"jwt-s3cret");
    assert_eq!(
        post(
            &server,
            "/v1/events",
            Some(&token),
            &keystroke(&unique("k"), "u1")
        )
        .await
        .status(),
        202
    );
    let mut mine = keystroke(&unique("k"), "u1");
    mine.as_object_mut().unwrap().remove("user_id");
    assert_eq!(
        post(&server, "/v1/events", Some(&token), &mine)
            .await
            .status(),
        202
    );
    let r = post(
        &server,
        "/v1/events",
        Some(&token),
        &keystroke(&unique("k"), "u2"),
    )
    .await;
    assert_eq!(r.status(), 403);

    // The express-session cookie, with the session in Redis as connect-redis stores it.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let sid = unique("sid");
    let _: () = redis::cmd("SET")
        .arg(format!("sess:{sid}"))
        .arg(json!({"cookie":{},"userId":"u7"}).to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let cookie = connectors::auth::sign_cookie(&sid, b"keyboard cat").replace(':', "%3A");
    let send = |body: Value, cookie: String| {
        reqwest::Client::new()
            .post(server.url("/v1/events"))
            .header("cookie", format!("connect.sid={cookie}"))
            .json(&body)
            .send()
    };
    assert_eq!(
        send(keystroke(&unique("k"), "u7"), cookie.clone())
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        send(keystroke(&unique("k"), "u1"), cookie.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let bad = connectors::auth::sign_cookie(&sid, b"wrong").replace(':', "%3A");
    assert_eq!(
        send(keystroke(&unique("k"), "u7"), bad)
            .await
            .unwrap()
            .status(),
        401
    );
    let _ = std::fs::remove_dir_all(&cfg_dir);
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_retry_after() {
    let server = Server::start(&[
        "--set",
        "auth.jwt_secret=\"s\"",
        "--set",
        // One token per 1,000 s: the bucket cannot refill between the two
        // requests however slow the machine is (the test must not race the
        // refill).
        "ingest.user_rate_per_sec=0.001",
        "--set",
        "ingest.user_burst=10",
    ])
    .await;
    let token = connectors::auth::sign_jwt(&json!({"sub":"u1","exp":now_ms() / 1000 + 60}), b"s");
    let batch: Vec<Value> = (0..10).map(|_| keystroke(&unique("r"), "u1")).collect();
    assert_eq!(
        post(&server, "/v1/events", Some(&token), &Value::Array(batch))
            .await
            .status(),
        202
    );
    let r = post(
        &server,
        "/v1/events",
        Some(&token),
        &keystroke(&unique("r"), "u1"),
    )
    .await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
}

/// The burst and the rate are checked on the count of a body's or a
/// `/ws/ingest` frame's events, before any is decoded: events that are
/// countable but not JSON (`{x}`) from a caller over its burst or its rate
/// get 413 `batch_over_burst` / 429 `rate_limited`, not the decode's 400
/// `invalid_json`. Until 2026-12-08 a WS frame was decoded first.
#[tokio::test]
async fn a_caller_over_its_rate_is_refused_before_its_events_are_decoded_on_http_and_ws() {
    let server = Server::start(&[
        "--set",
        "auth.jwt_secret=\"s\"",
        "--set",
        "ingest.user_rate_per_sec=0.001", // no refill within the test
        "--set",
        "ingest.user_burst=10",
    ])
    .await;
    let token = connectors::auth::sign_jwt(&json!({"sub":"u1","exp":now_ms() / 1000 + 60}), b"s");
    let malformed = |n: usize| format!("[{}]", vec!["{x}"; n].join(","));
    let post_raw = |body: String| {
        reqwest::Client::new()
            .post(server.url("/v1/events"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(&format!("/ws/ingest?token={token}")))
            .await
            .unwrap();

    // The burst spent, the caller is over its rate: 429 on either route.
    let batch: Vec<Value> = (0..10).map(|_| keystroke(&unique("rd"), "u1")).collect();
    let r = post(&server, "/v1/events", Some(&token), &Value::Array(batch)).await;
    assert_eq!(r.status(), 202);
    let r = post_raw(malformed(2)).await.unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    ws.send(Message::text(malformed(2))).await.unwrap();
    let reply = inkstream_tests::next_json(&mut ws).await;
    assert_eq!(
        (&reply["op"], &reply["frame"], &reply["status"]),
        (&json!("error"), &json!(0), &json!(429)),
        "a frame over the rate is refused before its decode: {reply}"
    );
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert!(
        reply["error"]["retry_after_s"].as_u64() >= Some(1),
        "{reply}"
    );

    // More than the burst: 413 on either route, whatever the bucket holds.
    let r = post_raw(malformed(11)).await.unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "batch_over_burst", "{body}");
    ws.send(Message::text(malformed(11))).await.unwrap();
    let reply = inkstream_tests::next_json(&mut ws).await;
    assert_eq!(
        (&reply["frame"], &reply["status"], &reply["error"]["code"]),
        (&json!(1), &json!(413), &json!("batch_over_burst")),
        "a frame over the burst is refused before its decode: {reply}"
    );
}

#[tokio::test]
async fn ws_ingest_acknowledges_every_frame_in_order() {
    let server = Server::start(&[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/ws/ingest"))
        .await
        .unwrap();
    let a = keystroke(&unique("w"), "u1");
    let frames = [
        a.to_string(),
        json!([keystroke(&unique("w"), "u1"), keystroke(&unique("w"), "u2")]).to_string(),
        json!({"type":"writing.keystroke","ts":now_ms(),"user_id":"u1","data":{"words":"x"}})
            .to_string(),
        "{not json".to_owned(),
        a.to_string(),
    ];
    for f in &frames {
        ws.send(Message::text(f.clone())).await.unwrap();
    }
    let mut replies = Vec::new();
    while replies.len() < frames.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            replies.push(serde_json::from_str::<Value>(&t).unwrap());
        }
    }
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["frame"], i, "in order: {r}");
    }
    assert_eq!(
        (replies[0]["op"].as_str(), replies[0]["accepted"].as_u64()),
        (Some("ack"), Some(1))
    );
    assert_eq!(replies[1]["accepted"], 2);
    assert_eq!(replies[2]["op"], "error");
    assert_eq!(replies[2]["error"]["field"], "data.words");
    assert_eq!(replies[3]["error"]["code"], "invalid_json");
    assert_eq!(
        replies[4]["duplicates"], 1,
        "the same id again is a duplicate"
    );
}

#[tokio::test]
async fn ws_ingest_refuses_the_upgrade_without_credentials() {
    let server = Server::start(&["--set", "auth.jwt_secret=\"s\""]).await;
    let err = tokio_tungstenite::connect_async(server.ws_url("/ws/ingest"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let token = connectors::auth::sign_jwt(&json!({"sub":"u1","exp":now_ms() / 1000 + 60}), b"s");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(&format!("/ws/ingest?token={token}")))
            .await
            .unwrap();
    ws.send(Message::text(keystroke(&unique("w"), "u1").to_string()))
        .await
        .unwrap();
    let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["op"], "ack");
}

#[tokio::test]
async fn command_endpoints_turn_requests_into_events() {
    let server = Server::start(&[]).await;
    let r = post(
        &server,
        "/api/realtime/writing/sessions/start",
        None,
        &json!({"user_id":"u1","project_id":"p1"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let sid = body["session_id"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("s-"));
    let path = format!("/api/realtime/writing/sessions/{sid}/keystroke");
    let r = post(
        &server,
        &path,
        None,
        &json!({"user_id":"u1","keystrokes":10,"words":2,"chars":11}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let r = post(
        &server,
        &path,
        None,
        &json!({"user_id":"u1","keystrokes":10,"words":-2,"chars":11}),
    )
    .await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "data.words"
    );
    for (p, body) in [
        (
            format!("/api/realtime/writing/sessions/{sid}/end"),
            json!({"user_id":"u1","reason":"done"}),
        ),
        (
            format!("/api/realtime/writing/sessions/{sid}/resume"),
            json!({"user_id":"u1"}),
        ),
        (
            "/api/realtime/collaboration/presence".into(),
            json!({"user_id":"u1","document_id":"d1","status":"online"}),
        ),
        (
            "/api/realtime/collaboration/cursor".into(),
            json!({"user_id":"u1","document_id":"d1","paragraph":3,"offset":10,"selection":[10,20]}),
        ),
        (
            "/api/realtime/collaboration/edit".into(),
            json!({"user_id":"u1","document_id":"d1","paragraph":3,"offset":10,"inserted":5,"deleted":0}),
        ),
    ] {
        let r = post(&server, &p, None, &body).await;
        assert_eq!(r.status(), 202, "{p}: {}", r.text().await.unwrap());
    }
    let r = post(
        &server,
        "/api/realtime/collaboration/cursor",
        None,
        &json!({"user_id":"u1","paragraph":3,"offset":1}),
    )
    .await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["field"],
        "document_id"
    );
}

#[tokio::test]
async fn limits_answer_413_with_their_codes() {
    let server = Server::start(&[
        "--set",
        "ingest.max_batch_events=3",
        "--set",
        "ingest.max_body_bytes=2000",
    ])
    .await;
    let batch: Vec<Value> = (0..4).map(|_| keystroke(&unique("l"), "u1")).collect();
    let r = post(&server, "/v1/events", None, &Value::Array(batch)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "batch_too_large"
    );
    let big = json!({"type":"system.error","ts":now_ms(),"data":{"service":"a","message":"m".repeat(3000)}});
    let r = post(&server, "/v1/events", None, &big).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "body_too_large"
    );
}

/// The server's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A body of millions of tiny events over `ingest.max_batch_events` is
/// refused from a count of its events, before any is decoded: the server's
/// peak memory grows by far less than the decode of 4 M events would take
/// (1.3 GB in a release build, one error object per line, until
/// 2026-12-07), for NDJSON and for a JSON array alike.
#[tokio::test]
async fn a_batch_over_the_limit_is_refused_before_any_event_is_decoded() {
    let server = Server::start(&[]).await;
    let lines = 4_194_303; // "1\n" each: just under the 8 MiB body limit
    let ndjson = "1\n".repeat(lines);
    let array = format!("[{}1]", "1,".repeat(lines - 1));
    for (body, ct, message) in [
        (
            ndjson,
            "application/x-ndjson",
            format!("{lines} events in one request; the limit is 10000"),
        ),
        (
            array,
            "application/json",
            "more than 10000 events in one request; the limit is 10000".to_owned(),
        ),
    ] {
        let before = peak_rss(&server);
        let r = reqwest::Client::new()
            .post(server.url("/v1/events"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{ct}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "batch_too_large", "{body}");
        assert_eq!(body["error"]["message"], message.as_str(), "{body}");
        let grown = peak_rss(&server).saturating_sub(before);
        assert!(
            grown < 100 << 20,
            "{ct}: peak memory grew by {} MiB for an 8 MiB body",
            grown >> 20
        );
    }
}

/// A 422 lists at most 100 of the rejected events (the message counts them
/// all); `?partial=true` still lists every one.
#[tokio::test]
async fn a_422_lists_at_most_100_rejected_events() {
    let server = Server::start(&[]).await;
    let mut body = "1\n".repeat(150);
    body.push_str(&keystroke(&unique("lst"), "u1").to_string());
    let send = |path: &'static str| {
        reqwest::Client::new()
            .post(server.url(path))
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
    };
    let r = send("/v1/events").await.unwrap();
    assert_eq!(r.status(), 422);
    let answer: Value = r.json().await.unwrap();
    let rejected = answer["error"]["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 100, "{answer}");
    assert_eq!(rejected[0]["index"], 0);
    assert_eq!(rejected[99]["index"], 99);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("150 of 151 events are invalid") && message.contains("first 100"),
        "{message}"
    );
    let r = send("/v1/events?partial=true").await.unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 150);
}

/// Media types are case-insensitive: `Application/JSON` is JSON.
#[tokio::test]
async fn the_content_type_is_matched_in_any_case() {
    let server = Server::start(&[]).await;
    for ct in [
        "Application/JSON",
        "APPLICATION/JSON; charset=UTF-8",
        "Application/X-NDJSON",
    ] {
        let r = reqwest::Client::new()
            .post(server.url("/v1/events"))
            .header("content-type", ct)
            .body(keystroke(&unique("ct"), "u1").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{ct}: {}", r.text().await.unwrap());
    }
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .header("content-type", "Application/XML")
        .body("<e/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
}

/// A path that exists, with a method it does not take: 405 with the JSON
/// error body and the `Allow` header (axum's own answer had an empty body).
#[tokio::test]
async fn a_method_not_allowed_is_405_with_the_json_error_and_allow() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    for (req, allowed) in [
        (client.get(server.url("/v1/events")), "POST"),
        (client.put(server.url("/ws/ingest")), "GET"),
        (client.delete(server.url("/healthz")), "GET"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 405);
        let allow = r.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains(allowed), "Allow: {allow}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
}

/// A path parameter that is not UTF-8 (`%FF`) is 400 `invalid_parameter`
/// naming it, in the JSON error shape, after authentication (axum's own
/// answer was plain text, before it).
#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_json_400_naming_it() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    for (req, field) in [
        (
            client.post(server.url("/api/realtime/notifications/%FF/read?user_id=u1")),
            "id",
        ),
        (
            client.get(server.url("/api/realtime/writing/sessions/%FF/metrics")),
            "id",
        ),
        (
            client
                .post(server.url("/api/realtime/writing/sessions/%FF/end"))
                .header("content-type", "application/json")
                .body(r#"{"user_id":"u1"}"#),
            "id",
        ),
        (
            client.get(server.url("/api/realtime/events/%FF")),
            "category",
        ),
    ] {
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{text}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn a_redis_outage_answers_503_and_ingest_recovers_without_a_restart() {
    let mut redis = PrivateRedis::start("outage");
    let url = redis.url();
    let server = Server::start(&["--redis-url", &url, "--set", "ingest.append_timeout=2s"]).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let id = unique(&format!("before{i}"));
        assert_eq!(
            post(&server, "/v1/events", None, &keystroke(&id, "u1"))
                .await
                .status(),
            202
        );
        acknowledged.push(id);
    }

    redis.stop();
    let started = Instant::now();
    let r = post(
        &server,
        "/v1/events",
        None,
        &keystroke(&unique("during"), "u1"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "log_unavailable"
    );
    assert!(
        took < Duration::from_secs(6),
        "answered in {took:?}: no hang"
    );
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);

    redis.restart();
    // Retry as a client would: the same id until it is acknowledged.
    let retried = unique("after");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&server, "/v1/events", None, &keystroke(&retried, "u1")).await;
        if r.status() == 202 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < deadline, "ingest did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    acknowledged.push(retried);
    // Everything acknowledged, before and after the outage, is in Redis once.
    let ids = log_ids(&url, "inkstream").await;
    for id in &acknowledged {
        assert_eq!(ids.iter().filter(|x| *x == id).count(), 1, "{id}");
    }
    assert_eq!(
        reqwest::get(server.url("/readyz")).await.unwrap().status(),
        200
    );
}

/// What a session cookie gets while the session store cannot be read.
const SESSION_STORE_UNAVAILABLE: &str = "the session store is unavailable; try again";

/// A session cookie with the session store (Redis) down is a 503 whose
/// message names what is unavailable and nothing else: not Redis's address,
/// not its error (until 2026-12-07 the caller got Redis's error; it is
/// logged).
#[tokio::test]
async fn a_session_cookie_with_redis_down_answers_503_without_the_redis_error() {
    let mut redis = PrivateRedis::start("sessions-down");
    let url = redis.url();
    let (server, log) = Server::start_logged(&[
        "--redis-url",
        &url,
        "--set",
        "auth.session_secret=\"keyboard cat\"",
    ])
    .await;
    // A connect-redis session, as express-session stores it.
    let sid = unique("sid");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("sess:{sid}"))
        .arg(json!({"cookie":{},"userId":"u7"}).to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let cookie = connectors::auth::sign_cookie(&sid, b"keyboard cat").replace(':', "%3A");
    let send = || {
        reqwest::Client::new()
            .post(server.url("/v1/events"))
            .header("cookie", format!("connect.sid={cookie}"))
            .timeout(Duration::from_secs(20))
            .json(&keystroke(&unique("sc"), "u7"))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 202, "the session is valid");

    redis.stop();
    let r = send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "session_store_unavailable", "{body}");
    assert_eq!(
        body["error"]["message"], SESSION_STORE_UNAVAILABLE,
        "{body}"
    );
    let lower = text.to_ascii_lowercase();
    for cause in [
        &redis.port.to_string(),
        "127.0.0.1",
        "redis",
        "refused",
        "os error",
        "io error",
        "broken pipe",
    ] {
        assert!(!lower.contains(cause), "the answer names {cause:?}: {text}");
    }
    // The cause is for the operator: logged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log
        .lock()
        .unwrap()
        .contains("reading a session from the session store failed")
    {
        assert!(
            Instant::now() < deadline,
            "the session store's error was not logged within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Slowloris: a client that starts a request and trickles its head a byte
/// at a time (so the connection is never idle) is disconnected once
/// `server.header_read_timeout` has passed; other clients are served
/// meanwhile, and a client that sends its head in time is unaffected.
#[tokio::test]
async fn a_request_head_not_finished_within_the_header_read_timeout_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--set", "server.header_read_timeout=\"1s\""]).await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // Generous: the point is that it closes long before the 60 s idle
    // timeout could, while bytes keep arriving.
    let deadline = started + Duration::from_secs(40);
    let mut buf = [0u8; 512];
    let closed = loop {
        assert!(
            Instant::now() < deadline,
            "a client trickling its request head was not disconnected within 40 s \
             (server.header_read_timeout = 1s)"
        );
        // Keep the connection busy: one header byte every 200 ms.
        if slow.write_all(b"X").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            // hyper may answer 408 before closing: keep reading to the close.
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
        // Another client is served meanwhile.
        if started.elapsed() < Duration::from_millis(500) {
            let r = reqwest::get(server.url("/healthz")).await.unwrap();
            assert!(r.status().is_success());
        }
    };
    assert!(closed);
    let r = reqwest::get(server.url("/healthz")).await.unwrap();
    assert!(r.status().is_success(), "the server still answers");
}

#[tokio::test]
async fn a_ws_ingest_client_that_never_reads_its_acks_is_cut_and_its_slot_freed() {
    let server = Server::start(&[
        "--set",
        "server.idle_timeout=2s",
        "--set",
        "server.max_connections=2",
    ])
    .await;
    // A 4 KiB receive buffer: the server's send buffer fills after a few
    // megabytes of replies at most.
    let ws = inkstream_tests::small_window_client(&server, "/ws/ingest").await;
    // Frames, each answered (binary: an `unsupported_media_type` error, no
    // event stored), and no reply ever read: the server's ack write stops
    // moving, then our own sends stop once the server stops reading.
    let (mut tx, rx) = ws.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        while tx.send(Message::binary(vec![0u8; 16])).await.is_ok() {
            sent += 1;
        }
        sent
    });
    let gauge = || inkstream_tests::metric(&server, "inkstream_ws_ingest_connections");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge().await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the /ws/ingest connection was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = gauge().await;
        if open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the /ws/ingest client that never reads its acks was not disconnected within \
             60 s (server.idle_timeout = 2s): inkstream_ws_ingest_connections {open}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its slot is free: the whole `server.max_connections = 2` can be used.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let both = tokio::time::timeout(Duration::from_secs(5), async {
            let a = tokio_tungstenite::connect_async(server.ws_url("/ws/ingest"))
                .await
                .unwrap();
            let b = tokio_tungstenite::connect_async(server.ws_url("/ws/ingest"))
                .await
                .unwrap();
            (a, b)
        })
        .await;
        if both.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two fresh /ws/ingest connections were not served within 30 s with \
             server.max_connections = 2 (a slot is still held)"
        );
    }
    // The sender saw the connection end too.
    let sent = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .expect("the never-reading client's sends did not fail once the server cut it")
        .unwrap();
    assert!(sent > 0);
    drop(rx);
}
