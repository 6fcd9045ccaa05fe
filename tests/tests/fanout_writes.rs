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

/// `/api/realtime/websocket/stats`' connections and subscriptions.
async fn stats(server: &Server) -> (u64, u64, serde_json::Value) {
    let s: serde_json::Value = reqwest::get(server.url("/api/realtime/websocket/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        s["connections"].as_u64().unwrap(),
        s["subscriptions"].as_u64().unwrap(),
        s,
    )
}

/// Publishes ~64 KB broadcasts on `channel` until `done` holds (checked
/// every 20) or 1,000 were sent (64 MB: far past any send buffer).
async fn flood_until<F, Fut>(server: &Server, channel: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let pad = "x".repeat(64 * 1024);
    // A client per 20 broadcasts, dropped before `done` asks: with
    // `server.max_connections = 2` (the stuck subscriber and one more) its
    // idle keep-alive connection would hold the other slot.
    let mut http = reqwest::Client::new();
    for i in 0..1_000u64 {
        let r = http
            .post(server.url("/api/realtime/websocket/broadcast"))
            .json(&json!({"channel": channel, "data": {"i": i, "pad": pad}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "broadcast {i}");
        if i % 20 == 19 {
            // The old client (and its connection) goes; a new one follows.
            drop(std::mem::take(&mut http));
            if done().await {
                return;
            }
        }
    }
}

/// Two fresh subscribers at once (the whole of `server.max_connections = 2`),
/// within a deadline: no connection of the past still holds a slot.
async fn two_fresh_subscribers(server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let both = tokio::time::timeout(Duration::from_secs(5), async {
            let a = subscribe(server, "project:p2").await;
            let b = subscribe(server, "project:p2").await;
            (a, b)
        })
        .await;
        if both.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: two fresh connections were not served within 30 s with \
             server.max_connections = 2 (a slot is still held)"
        );
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_once_a_write_takes_nothing_for_the_idle_timeout() {
    // No slow close (the queue may hold 256 MB) and no fanout idle close:
    // only the bound on a write that makes no progress can end it.
    let server = Server::start(&[
        "--set",
        "server.idle_timeout=2s",
        "--set",
        "server.max_connections=2",
        "--set",
        "fanout.max_queue_bytes=268435456",
        "--set",
        "fanout.idle_timeout=1h",
    ])
    .await;
    let mut ws = inkstream_tests::small_window_client(&server, "/ws/analytics").await;
    ws.send(Message::text(
        json!({"op":"subscribe","channel":"project:p1"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        inkstream_tests::next_json(&mut ws).await["op"],
        "subscribed"
    );
    // From here on the client reads nothing.
    flood_until(&server, "project:p1", || async {
        stats(&server).await.0 == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (connections, subscriptions, s) = stats(&server).await;
        let open = inkstream_tests::metric(&server, "inkstream_ws_connections").await;
        if connections == 0 && subscriptions == 0 && open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber that stopped reading was not disconnected within 60 s of \
             the flood (server.idle_timeout = 2s): inkstream_ws_connections {open}, stats {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    two_fresh_subscribers(&server, "after the stuck subscriber was cut").await;
    assert_eq!(
        inkstream_tests::metric(&server, "inkstream_ws_slow_disconnects_total").await,
        0.0,
        "the queue bound was not what closed it"
    );
    drop(ws);
}

#[tokio::test]
async fn a_subscriber_closed_as_slow_inside_a_stuck_write_is_released_at_once_then_gets_4008() {
    // The connection limit's inactivity bound out of reach: what frees the
    // queue and subscriptions is the slow close, while the hub's write to
    // this client is stuck on a full send buffer. The queue's bound (8 MB)
    // is past what the kernel buffers for the client (at most
    // `net.ipv4.tcp_wmem`'s 4 MB + our 4 KiB), so the queue only fills once
    // the write is stuck, not because the connection's task lagged behind a
    // burst (with 256 KiB it closed before the kernel's buffer was full:
    // the close went out at once and the test passed without the fix).
    let server = Server::start(&[
        "--set",
        "server.idle_timeout=1h",
        "--set",
        "fanout.max_queue_bytes=8388608",
        "--set",
        "fanout.idle_timeout=1h",
    ])
    .await;
    let mut ws = inkstream_tests::small_window_client(&server, "/ws/analytics").await;
    ws.send(Message::text(
        json!({"op":"subscribe","channel":"project:p1"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        inkstream_tests::next_json(&mut ws).await["op"],
        "subscribed"
    );
    let slow = || async {
        inkstream_tests::metric(&server, "inkstream_ws_slow_disconnects_total").await >= 1.0
    };
    flood_until(&server, "project:p1", slow).await;
    assert!(slow().await, "no slow close after 64 MB of broadcasts");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (connections, subscriptions, s) = stats(&server).await;
        if connections == 0 && subscriptions == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow-closed subscriber's subscriptions were not released within 30 s \
             while its write was stuck: stats {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The client catches up now: what the kernel buffered, then 4008.
    let closed_with = loop {
        match next(&mut ws, "catching up after the slow close").await {
            Message::Close(frame) => {
                break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            _ => continue,
        }
    };
    assert_eq!(closed_with, Some((4008, "slow".to_owned())));
}
