//! Recovery on reconnect against the real binary: a client that drops off
//! and resubscribes with `since` gets exactly what it missed, in order, with
//! the original offsets and `recovered: true`; a `since` the history no longer
//! reaches gets `recovered: false` and no replay.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{
    Server, Ws, next_json, now_ms, subscribe_frame as subscribe, unique, until_quiet,
};
use serde_json::{Value, json};
use std::time::Duration;

/// Publications kept per channel by the server under test: small, so that a
/// `since` from before the test's first batches is out of reach.
const HISTORY: u64 = 5;

async fn connect(server: &Server) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url("/ws/analytics"))
        .await
        .unwrap()
        .0
}

/// One keystroke now; live WPM updates are limited to one per user per
/// second of event time, so batches a second apart each yield one.
async fn keystroke(server: &Server, user: &str) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(
            &json!({"type":"writing.keystroke","ts":now_ms(),"user_id":user,
                      "data":{"keystrokes":5,"words":1,"chars":5}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_reconnecting_client_recovers_exactly_what_it_missed() {
    let server = Server::start(&["--set", &format!("fanout.history_size={HISTORY}")]).await;
    let user = unique("rec");
    let channel = format!("user:{user}");
    let sub = json!({"op":"subscribe","channel":channel});

    // A client that stays connected throughout: the reference for what was published.
    let mut stayer = connect(&server).await;
    let (_, first) = subscribe(&mut stayer, sub.clone()).await;
    assert_eq!(first["offset"], 0, "{first}");
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    let mut client = connect(&server).await;
    let (_, reply) = subscribe(&mut client, sub.clone()).await;
    assert_eq!(
        (&reply["epoch"], reply.get("recovered")),
        (&first["epoch"], None)
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        keystroke(&server, &user).await;
        seen.push(next_json(&mut client).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    seen.extend(until_quiet(&mut client, Duration::from_millis(500)).await);
    assert!(seen.iter().all(|m| m["op"] == "message"), "{seen:?}");
    let last_seen = seen.last().unwrap()["offset"].as_u64().unwrap();
    client.close(None).await.unwrap();

    // Missed while away: three more updates.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        keystroke(&server, &user).await;
    }
    let mut published = Vec::new();
    while published.len() < 2 + 3 {
        published.push(next_json(&mut stayer).await);
    }
    published.extend(until_quiet(&mut stayer, Duration::from_millis(1000)).await);
    let missed: Vec<Value> = published
        .iter()
        .filter(|m| m["offset"].as_u64().unwrap() > last_seen)
        .cloned()
        .collect();
    assert_eq!(offsets(&missed).len(), 3, "{published:?}");
    let newest = published.last().unwrap()["offset"].as_u64().unwrap();

    let mut back = connect(&server).await;
    let (replayed, reply) = subscribe(
        &mut back,
        json!({"op":"subscribe","channel":channel,"since":last_seen,"epoch":epoch}),
    )
    .await;
    assert_eq!(replayed, missed, "exactly the missed messages, in order");
    assert_eq!(
        (
            reply["recovered"].as_bool(),
            reply["offset"].as_u64(),
            reply["epoch"].as_str()
        ),
        (Some(true), Some(newest), Some(epoch.as_str()))
    );
    // ...and then live again, continuing the offsets.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    keystroke(&server, &user).await;
    assert_eq!(next_json(&mut back).await["offset"], newest + 1);

    // A since older than the history: nothing replayed, reload.
    assert!(
        newest + 1 > HISTORY + 1,
        "the history no longer holds offset 1"
    );
    let mut stale = connect(&server).await;
    let (replayed, reply) = subscribe(
        &mut stale,
        json!({"op":"subscribe","channel":channel,"since":0,"epoch":epoch}),
    )
    .await;
    assert_eq!(replayed, Vec::<Value>::new());
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(false), Some(newest + 1))
    );

    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "inkstream_ws_recoveries_total{outcome=\"recovered\"} 1",
        "inkstream_ws_recoveries_total{outcome=\"not_recovered\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    assert!(metrics.contains("inkstream_ws_history_channels "));
}
