//! How the fanout writes to a subscriber's socket: the hub's frames are
//! encoded once and written raw, while tungstenite answers the client's
//! pings; the two must never interleave inside a frame. And
//! `fanout.write_delay`: at most one write per delay per connection, so
//! what is published meanwhile leaves in the same write.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::{SinkExt, StreamExt};
use inkstream_tests::{Server, Ws, subscribe};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

async fn broadcast(server: &Server, channel: &str, i: u64) {
    let r = reqwest::Client::new()
        .post(server.url("/api/realtime/websocket/broadcast"))
        .json(&json!({"channel": channel, "data": {"i": i}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "broadcast {i}: {}",
        r.text().await.unwrap()
    );
}

/// The next frame, whatever its kind, within a generous deadline.
async fn next(ws: &mut Ws, what: &str) -> Message {
    tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .unwrap_or_else(|_| panic!("no frame within 30 s: {what}"))
        .unwrap_or_else(|| panic!("connection closed: {what}"))
        .unwrap_or_else(|e| panic!("bad frame ({e}): {what}"))
}

#[tokio::test]
async fn a_clients_pings_are_answered_between_whole_frames_of_a_busy_channel() {
    let server = Server::start(&[]).await;
    let channel = "category:pings";
    let mut ws = subscribe(&server, channel).await;
    // Publications and pings interleave: the pongs tungstenite writes go
    // out between the hub's raw frames, never inside one (the client's
    // parser would fail on a frame cut by another).
    let n = 200u64;
    let publisher = {
        let url = server.url("/api/realtime/websocket/broadcast");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..n {
                let r = http
                    .post(&url)
                    .json(&json!({"channel": channel, "data": {"i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    let mut pongs = 0;
    let mut next_i = 0;
    let mut pinged = 0u32;
    while next_i < n || pongs < pinged {
        if pinged < 50 {
            ws.send(Message::Ping(format!("p{pinged}").into_bytes().into()))
                .await
                .unwrap();
            pinged += 1;
        }
        match next(&mut ws, &format!("message {next_i} or pong {pongs}")).await {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["op"], "message", "{v}");
                assert_eq!(v["data"]["i"], next_i, "in order, none lost: {v}");
                next_i += 1;
            }
            Message::Pong(p) => {
                assert_eq!(&p[..], format!("p{pongs}").as_bytes(), "pongs in order");
                pongs += 1;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    publisher.await.unwrap();
    assert_eq!((next_i, pongs), (n, 50));
}

#[tokio::test]
async fn with_a_write_delay_frames_published_after_a_write_wait_for_it_then_leave_in_order() {
    let delay = Duration::from_millis(400);
    let server = Server::start(&["--set", "fanout.write_delay=400ms"]).await;
    let channel = "category:delayed";
    // The `subscribed` reply is the connection's first write (at once: it
    // had not written before); it happens after `asked`.
    let asked = Instant::now();
    let mut ws = subscribe(&server, channel).await;
    for i in 0..3 {
        broadcast(&server, channel, i).await;
    }
    for i in 0..3u64 {
        let Message::Text(t) = next(&mut ws, &format!("message {i}")).await else {
            panic!("a text frame");
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["data"]["i"], i, "in order: {v}");
        // A lower bound only, so it holds however loaded the machine is:
        // the next write comes at least the delay after the reply's write,
        // which came after `asked`.
        assert!(
            asked.elapsed() >= delay,
            "message {i} arrived {:?} after the subscribe, within the {delay:?} write delay",
            asked.elapsed()
        );
    }
}

/// `inkstream load --mode fanout` with several publishers at once (the
/// benchmark's `--publishers`): every subscriber gets every broadcast, and
/// the report counts those deliveries.
#[tokio::test]
async fn the_fanout_load_with_several_publishers_delivers_every_broadcast_to_every_subscriber() {
    let server = Server::start(&[]).await;
    let mut load = std::process::Command::new(inkstream_tests::inkstream_bin());
    load.args(["load", "--mode", "fanout", "--addr"])
        .arg(format!("127.0.0.1:{}", server.port))
        .args(["--connections", "5", "--events", "61", "--publishers", "4"])
        .env_remove("INKSTREAM_LOAD_TOKEN");
    let out = tokio::task::spawn_blocking(move || load.output());
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("inkstream load did not finish within 120 s")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inkstream load failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("fanout: 305 messages over 5 connections"),
        "61 broadcasts × 5 subscribers: {stdout}"
    );
}
