//! The fanout's bounds against one hostile client, through a real Redis
//! broker (`fanout.broker = redis`): a connection flooding subscribe and
//! unsubscribe frames waits on its own budget of commands in flight
//! (`fanout.max_pending_commands`), so another client's subscribe is not
//! stuck behind the flood; and a connection's channels are bounded
//! (`fanout.max_subscriptions`), each refusal counted.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::{SinkExt, StreamExt};
use inkstream_tests::{Server, Ws, metric, next_json, redis_url, subscribe_frame, unique};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

async fn connect(server: &Server, path: &str) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url(path))
        .await
        .unwrap()
        .0
}

/// Waits (generously) until `name` reaches at least `min`.
async fn until_metric(server: &Server, name: &str, min: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(server, name).await;
        if v >= min {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_subscribe_flood_waits_on_its_own_budget_and_another_clients_subscribe_completes() {
    let prefix = format!("redis.prefix={}", unique("flood"));
    let server = Server::start(&[
        "--redis-url",
        &redis_url(),
        "--set",
        &prefix,
        "--set",
        "fanout.broker=redis",
        "--set",
        "fanout.max_pending_commands=2",
        // The control-frame rate limit would close the flooder first: this
        // test is about the broker's queue, so it is lifted here.
        "--set",
        "fanout.control_rate_per_sec=1000000",
        "--set",
        "fanout.control_burst=1000000",
        // A few MiB of replies the flooder reads anyway.
        "--set",
        "fanout.max_queue_bytes=67108864",
    ])
    .await;
    const WAITS: &str = r#"inkstream_ws_broker_command_waits_total{reason="connection_budget"}"#;
    assert_eq!(metric(&server, WAITS).await, 0.0);

    // The flooder: 20 000 subscribe/unsubscribe frames over 100 channels,
    // written as fast as the socket takes them; its replies are drained.
    let flooder = connect(&server, "/ws/analytics").await;
    let (mut sink, mut stream) = flooder.split();
    // The flooder's subscribes answered so far (the broker's task answers
    // each after its Redis round trips).
    let answered = Arc::new(AtomicUsize::new(0));
    let counted = answered.clone();
    let drain = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = m
                && t.contains(r#""op":"subscribed""#)
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let flood = tokio::spawn(async move {
        for i in 0..10_000u32 {
            let channel = format!("user:flood-{}", i % 100);
            for op in ["subscribe", "unsubscribe"] {
                let f = json!({"op": op, "channel": channel}).to_string();
                if sink.feed(Message::text(f)).await.is_err() {
                    return;
                }
            }
        }
        let _ = sink.flush().await;
        // The connection stays open until the test ends.
        std::future::pending::<()>().await;
    });

    // The flood is on, and it is waiting on its own budget.
    until_metric(&server, WAITS, 1.0, "the flooding connection never waited").await;

    // Meanwhile another client subscribes: answered while the flood goes on.
    let started = Instant::now();
    let mut other = connect(&server, "/ws/analytics").await;
    let channel = format!("user:{}", unique("calm"));
    let (_, reply) = tokio::time::timeout(
        Duration::from_secs(10),
        subscribe_frame(&mut other, json!({"op":"subscribe","channel":channel})),
    )
    .await
    .expect("the other client's subscribe was answered within 10 s during the flood");
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["channel"], channel.as_str());
    eprintln!(
        "other client's subscribe during the flood: {:?}",
        started.elapsed()
    );
    // Behind an unbounded queue the other client's subscribe waited for
    // every subscribe of the flood that was read before it.
    let flood_answered = answered.load(Ordering::SeqCst);
    eprintln!("flood subscribes answered by then: {flood_answered} of 10000");
    assert!(
        flood_answered < 10_000,
        "the other client's subscribe was answered before the flood's last one \
         (the flood was still being served)"
    );
    flood.abort();
    drain.abort();
}

#[tokio::test]
async fn channels_per_connection_are_bounded_and_the_refusal_is_counted() {
    let server = Server::start(&["--set", "fanout.max_subscriptions=2"]).await;
    const HITS: &str = r#"inkstream_limit_hits_total{limit="ws_channels_per_connection"}"#;
    assert_eq!(metric(&server, HITS).await, 0.0);
    let mut ws = connect(&server, "/ws/analytics").await;
    for n in 0..2 {
        let (_, r) = subscribe_frame(
            &mut ws,
            json!({"op":"subscribe","channel":format!("user:u{n}")}),
        )
        .await;
        assert_eq!(r["op"], "subscribed", "{r}");
    }
    ws.send(Message::text(
        json!({"op":"subscribe","channel":"user:u3"}).to_string(),
    ))
    .await
    .unwrap();
    let r = next_json(&mut ws).await;
    assert_eq!(r["op"], "error", "{r}");
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    assert_eq!(r["channel"], "user:u3", "{r}");
    assert!(r["message"].as_str().unwrap().contains("at most 2"), "{r}");
    assert_eq!(metric(&server, HITS).await, 1.0);
    // Unsubscribing frees a slot.
    ws.send(Message::text(
        json!({"op":"unsubscribe","channel":"user:u0"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["op"], "unsubscribed");
    let (_, r) = subscribe_frame(&mut ws, json!({"op":"subscribe","channel":"user:u3"})).await;
    assert_eq!(r["op"], "subscribed", "{r}");
}
