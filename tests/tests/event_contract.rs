//! The event contract over HTTP: the real binary accepts a valid example of
//! every type and, for every category, rejects a wrong-typed field, a missing
//! required field and an unknown type, naming the field.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, now_ms};
use schemas::payload::examples;
use schemas::{Category, EventType};
use serde_json::{Value, json};

fn envelope(ty: &str, data: Value, i: usize) -> Value {
    let category = Category::of_type(ty).unwrap();
    let mut e =
        json!({"id": format!("contract-{ty}-{i}"), "type": ty, "ts": now_ms(), "data": data});
    for f in category.required_fields() {
        e[*f] = json!(format!("{f}-1"));
    }
    e
}

async fn post(server: &Server, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_example_of_every_type_is_accepted() {
    let server = Server::start(&[]).await;
    let mut events = Vec::new();
    for (i, (ty, minimal, maximal)) in examples().into_iter().enumerate() {
        events.push(envelope(ty, minimal, 2 * i));
        events.push(envelope(ty, maximal, 2 * i + 1));
    }
    let n = events.len();
    assert_eq!(n, 2 * EventType::all().count());
    let (status, body) = post(&server, &Value::Array(events)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], n);
    assert_eq!(body["duplicates"], 0);
}

#[tokio::test]
async fn every_category_rejects_wrong_types_missing_fields_and_unknown_types_by_name() {
    let server = Server::start(&[]).await;
    for category in Category::ALL {
        let (ty, minimal, _) = examples()
            .into_iter()
            .find(|(t, m, _)| {
                Category::of_type(t) == Some(category)
                    && m.as_object().is_some_and(|o| !o.is_empty())
            })
            .unwrap();
        let first_field = minimal.as_object().unwrap().keys().next().unwrap().clone();

        // A wrong-typed field: swap its value for one of another JSON type.
        let mut wrong = minimal.clone();
        wrong[&first_field] = if minimal[&first_field].is_string() {
            json!(12)
        } else {
            json!("x")
        };
        let (status, body) = post(&server, &envelope(ty, wrong, 0)).await;
        assert_eq!(status, 422, "{ty}: {body}");
        assert_eq!(
            body["error"]["field"],
            format!("data.{first_field}"),
            "{ty}: {body}"
        );
        assert_eq!(
            body["error"]["rejected"][0]["code"], "invalid_field",
            "{ty}: {body}"
        );
        assert!(
            body["error"]["rejected"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with("expected "),
            "{ty}: {body}"
        );

        // A missing required field.
        let mut missing = minimal.clone();
        missing.as_object_mut().unwrap().remove(&first_field);
        let (status, body) = post(&server, &envelope(ty, missing, 1)).await;
        assert_eq!(status, 422, "{ty}: {body}");
        assert_eq!(
            body["error"]["field"],
            format!("data.{first_field}"),
            "{ty}: {body}"
        );
        assert_eq!(
            body["error"]["rejected"][0]["code"], "missing_field",
            "{ty}: {body}"
        );

        // A missing required envelope field, where the category has one.
        if let Some(required) = category.required_fields().first() {
            let mut e = envelope(ty, minimal.clone(), 2);
            e.as_object_mut().unwrap().remove(*required);
            let (status, body) = post(&server, &e).await;
            assert_eq!(status, 422, "{ty}: {body}");
            assert_eq!(body["error"]["field"], *required, "{ty}: {body}");
        }

        // An unknown type of the category, with suggestions.
        let unknown = format!("{}.no_such_thing", category.as_str());
        let (status, body) = post(&server, &envelope(&unknown, minimal.clone(), 3)).await;
        assert_eq!(status, 422, "{unknown}: {body}");
        assert_eq!(body["error"]["field"], "type");
        assert_eq!(body["error"]["rejected"][0]["code"], "unknown_type");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("did you mean"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_contract_example_error_message_is_exact() {
    let server = Server::start(&[]).await;
    let e = json!({"type":"collaboration.cursor_moved","ts":now_ms(),"user_id":"u1","document_id":"d1",
                   "data":{"paragraph":"3","offset":0}});
    let (status, body) = post(&server, &e).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["error"]["rejected"][0]["message"],
        "expected non-negative integer, got \"3\""
    );
    assert_eq!(body["error"]["field"], "data.paragraph");
    // ids over 128 bytes, and event times too far from the server clock.
    let long = json!({"id": "x".repeat(129), "type":"system.error","ts":now_ms(),"data":{"service":"a","message":"b"}});
    let (status, body) = post(&server, &long).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "id");
    let old = json!({"type":"system.error","ts":now_ms() - 25 * 3600 * 1000,"data":{"service":"a","message":"b"}});
    let (status, body) = post(&server, &old).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["rejected"][0]["code"], "ts_out_of_range");
}

#[tokio::test]
async fn oversized_events_and_invalid_utf8_are_refused_with_their_codes() {
    let server = Server::start(&["--set", "ingest.max_event_bytes=1000"]).await;
    let client = reqwest::Client::new();
    let big = json!({"type":"system.error","ts":now_ms(),"data":{"service":"a","message":"m".repeat(2000)}});
    let small = json!({"type":"system.error","ts":now_ms(),"data":{"service":"a","message":"ok"}});
    let body = format!("{small}\n{big}\n");
    let resp = client
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["rejected"][0]["index"], 1);
    assert_eq!(err["error"]["rejected"][0]["code"], "event_too_large");

    let resp = client
        .post(server.url("/v1/events"))
        .header("content-type", "application/json")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_utf8");
}
