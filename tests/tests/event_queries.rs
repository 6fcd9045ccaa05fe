//! Event queries against the real binary on Redis: time-range pages merged
//! over the 8 shards of a category, resumed exactly by the cursor while new
//! events arrive, bounded by `from`/`to`; the XINFO figures of `/info`; and
//! the errors. (The embedded backend is covered in
//! `connectors/tests/event_queries.rs`: its log only holds what the dataflow
//! has not yet acknowledged; one test here checks that its pages show an
//! authenticated caller's own ids.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, api_key_config, now_ms, redis_url, unique};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

async fn ingest(server: &Server, events: &[Value]) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

/// `n` writing events of 20 users (so every shard gets some), tagged `batch`.
fn batch(tag: &str, batch: usize, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": format!("{tag}-{batch}-{i}"), "type": "writing.keystroke", "ts": now_ms(),
                   "user_id": format!("{tag}-u{}", i % 20), "project_id": "p1",
                   "data": {"keystrokes": 1, "words": 0, "chars": 1}})
        })
        .collect()
}

async fn get(server: &Server, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The batch number of an event id `tag-batch-i`.
fn batch_of(id: &str) -> usize {
    id.rsplit('-').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn event_pages_merge_the_shards_in_log_order_and_the_cursor_resumes_exactly() {
    let prefix = unique("evq");
    let server = Server::start(&[
        "--redis-url",
        &redis_url(),
        "--set",
        &format!("redis.prefix=\"{prefix}\""),
    ])
    .await;
    let tag = unique("t");
    let start = now_ms();
    // Five batches, appended one after the other (2 ms apart, so their
    // append times differ).
    for b in 0..5 {
        ingest(&server, &batch(&tag, b, 50)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(2)).await;

    // Page through everything since `start`, 40 at a time; halfway through,
    // more events arrive: they must come once, after the rest.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/realtime/events/writing?limit=40&cursor={c}"),
            None => format!("/api/realtime/events/writing?limit=40&from={start}"),
        };
        let (status, page) = get(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 40);
        for e in events {
            assert_eq!(e["type"], "writing.keystroke", "the JSON envelope: {e}");
            assert!(e["data"]["keystrokes"].is_i64());
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if pages == 3 {
            ingest(&server, &batch(&tag, 5, 30)).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ours: Vec<&String> = seen.iter().filter(|id| id.starts_with(&tag)).collect();
    assert_eq!(ours.len(), 280, "every event exactly once");
    assert_eq!(ours.iter().collect::<HashSet<_>>().len(), 280, "no repeats");
    let batches: Vec<usize> = ours.iter().map(|id| batch_of(id)).collect();
    assert!(
        batches.windows(2).all(|w| w[0] <= w[1]),
        "pages follow the append order across shards: {batches:?}"
    );

    // `to` (exclusive) stops before what was appended after it.
    let (_, upto) = get(
        &server,
        &format!("/api/realtime/events/writing?limit=1000&from={start}&to={between}"),
    )
    .await;
    let upto: Vec<&str> = upto["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .filter(|id| id.starts_with(&tag))
        .collect();
    assert_eq!(upto.len(), 250, "batches 0-4 only");
    assert!(upto.iter().all(|id| batch_of(id) < 5));

    // Another category is empty; RFC 3339 times work too.
    let (status, other) = get(
        &server,
        "/api/realtime/events/publishing?from=2001-01-01T00:00:00Z&to=2001-01-02T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(other["events"], json!([]));
    assert_eq!(other["next_cursor"], Value::Null);

    // XINFO figures: 8 shards whose lengths add up, and the dataflow's
    // group. They count entries: an append packs up to 16 events of one
    // shard into one entry.
    let (status, info) = get(&server, "/api/realtime/events/writing/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["backend"], "redis");
    let shards = info["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 8);
    let sum: u64 = shards.iter().map(|s| s["length"].as_u64().unwrap()).sum();
    assert_eq!(info["length"].as_u64().unwrap(), sum);
    assert!((280 / 16..280).contains(&sum), "{info}");
    assert!(shards.iter().all(|s| s["length"].as_u64().unwrap() > 0));
    assert!(info["first_id"].is_string() && info["last_id"].is_string());
    let group = info["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "dataflow")
        .unwrap_or_else(|| panic!("no dataflow group: {info}"));
    assert!(group["consumers"].as_u64().unwrap() >= 1, "{group}");
    assert!(
        group["pending"].is_u64() && group["lag"].is_u64(),
        "{group}"
    );
    for s in shards {
        assert!(s["stream"].as_str().unwrap().starts_with(&prefix), "{s}");
        assert!(s["groups"][0]["last_delivered_id"].is_string(), "{s}");
    }
}

#[tokio::test]
async fn event_queries_name_the_bad_parameter_and_the_known_categories() {
    let server = Server::start(&[]).await;
    for (path, status, field) in [
        ("/api/realtime/events/writing?from=yesterday", 400, "from"),
        ("/api/realtime/events/writing?to=12x", 400, "to"),
        ("/api/realtime/events/writing?limit=0", 400, "limit"),
        ("/api/realtime/events/writing?limit=1001", 400, "limit"),
        ("/api/realtime/events/writing?cursor=bm9wZQ", 400, "cursor"),
        ("/api/realtime/events/poetry", 404, "category"),
        ("/api/realtime/events/poetry/info", 404, "category"),
    ] {
        let (got, body) = get(&server, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    // `to` before `from` is an empty range, not an error (docs/API.md): a
    // schema cannot say "to ≥ from", so the contract answers it with no rows.
    let (got, body) = get(&server, "/api/realtime/events/writing?from=10&to=5").await;
    assert_eq!(got, 200, "{body}");
    assert_eq!(body["events"], serde_json::json!([]), "{body}");
    assert_eq!(body["next_cursor"], serde_json::Value::Null, "{body}");
    let (_, body) = get(&server, "/api/realtime/events/poetry").await;
    assert_eq!(body["error"]["code"], "unknown_category");
    assert_eq!(
        body["error"]["known"],
        json!([
            "writing",
            "collaboration",
            "publishing",
            "analytics",
            "automation",
            "system"
        ])
    );
    // The embedded log answers /info in the same shape.
    let (status, info) = get(&server, "/api/realtime/events/system/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["backend"], "embedded");
    assert_eq!(info["shards"].as_array().unwrap().len(), 1);
    assert!(info["groups"].is_array() && info["length"].is_u64());
}

/// The embedded log stores each event under the id the dataflow knows it
/// by (`<namespace>/<id>` for an authenticated caller); a page still shows
/// the caller's own ids. (No dataflow here, so nothing is acknowledged and
/// trimmed while the test reads.)
#[tokio::test]
async fn embedded_pages_show_the_callers_ids() {
    let cfg = api_key_config("evq-app", "key-evq-app", r#"scopes = ["ingest", "read"]"#);
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "dataflow.enabled=false",
    ])
    .await;
    let tag = unique("t");
    let events = batch(&tag, 0, 30);
    let client = reqwest::Client::new();
    let r = client
        .post(server.url("/v1/events"))
        .bearer_auth("key-evq-app")
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let page: Value = client
        .get(server.url("/api/realtime/events/writing?limit=100"))
        .bearer_auth("key-evq-app")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {page}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let sent: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, sent, "the caller's ids, in append order");
}
