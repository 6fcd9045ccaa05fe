//! Several gateways on one Redis: two `inkstream serve` processes share the
//! numbering, the history and every publication of the fanout
//! (`fanout.broker = redis`, the default with a Redis URL). One runs the
//! dataflow; the other is a gateway only (`dataflow.enabled = false`). No
//! sticky routing: a client may ingest on one, listen on the other, and
//! reconnect to either with `since`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::SinkExt;
use inkstream_tests::{
    PrivateRedis, Server, Ws, metric, next_json, now_ms, redis_url, subscribe_frame as subscribe,
    unique, until_quiet,
};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Publications the shared Redis history keeps per channel in these tests.
const HISTORY: u64 = 5;

/// The processing instance and a gateway-only instance on one Redis prefix.
async fn two_gateways(prefix: &str) -> (Server, Server) {
    two_gateways_on(&redis_url(), prefix).await
}

async fn two_gateways_on(url: &str, prefix: &str) -> (Server, Server) {
    let history = format!("fanout.history_size={HISTORY}");
    let pre = format!("redis.prefix={prefix}");
    let a = Server::start(&["--redis-url", url, "--set", &pre, "--set", &history]).await;
    let b = Server::start(&[
        "--redis-url",
        url,
        "--set",
        &pre,
        "--set",
        &history,
        "--set",
        "dataflow.enabled=false",
    ])
    .await;
    (a, b)
}

async fn connect(server: &Server, path: &str) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url(path))
        .await
        .unwrap()
        .0
}

/// The next `n` message frames.
async fn messages(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = next_json(ws).await;
        if m["op"] == "message" {
            out.push(m);
        }
    }
    out
}

async fn keystroke(server: &Server, user: &str, ts: i64) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(&json!({"type":"writing.keystroke","ts":ts,"user_id":user,
                      "data":{"keystrokes":5,"words":1,"chars":5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn broadcast(server: &Server, channel: &str, n: u64) -> Value {
    let r = reqwest::Client::new()
        .post(server.url("/api/realtime/websocket/broadcast"))
        .json(&json!({"path":"/ws/analytics","channel":channel,"data":{"n":n}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|m| m["op"] == "message")
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn both_gateways_deliver_every_derived_message_with_the_same_offsets() {
    let (a, b) = two_gateways(&unique("gw")).await;
    let user = unique("u");
    let sub = json!({"op":"subscribe","channel":format!("user:{user}")});
    let mut on_a = connect(&a, "/ws/analytics").await;
    let mut on_b = connect(&b, "/ws/analytics").await;
    let (_, sa) = subscribe(&mut on_a, sub.clone()).await;
    let (_, sb) = subscribe(&mut on_b, sub.clone()).await;
    assert_eq!(
        (&sa["epoch"], &sa["offset"]),
        (&sb["epoch"], &sb["offset"]),
        "one numbering for the channel on both gateways"
    );

    // Ingested on the gateway-only instance; derived by the other one's
    // dataflow; delivered by both. Live WPM: one update per second of
    // event time, so three batches a second apart give three messages.
    let t0 = now_ms();
    for i in 0..3 {
        keystroke(&b, &user, t0 + i * 1_100).await;
    }
    let from_a = messages(&mut on_a, 3).await;
    let from_b = messages(&mut on_b, 3).await;
    assert_eq!(from_a, from_b, "the same frames, offsets and bodies");
    assert_eq!(offsets(&from_a), vec![1, 2, 3]);
    assert!(
        from_a
            .iter()
            .all(|m| m["data"]["type"] == "analytics.metric_updated"),
        "{from_a:?}"
    );
    let stats: Value = reqwest::get(b.url("/api/realtime/websocket/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["broker"], "redis", "{stats}");
    assert!(metric(&b, "inkstream_ws_subscribers").await >= 1.0);
    assert!(metric(&b, "inkstream_ws_bytes_out_total").await > 0.0);
}

#[tokio::test]
async fn a_client_recovers_on_the_other_gateway_what_it_missed_or_learns_it_cannot() {
    let (a, b) = two_gateways(&unique("gw")).await;
    let channel = format!("user:{}", unique("u"));
    let sub = json!({"op":"subscribe","channel":channel});

    let mut on_b = connect(&b, "/ws/analytics").await;
    let (_, first) = subscribe(&mut on_b, sub.clone()).await;
    broadcast(&a, &channel, 1).await;
    broadcast(&a, &channel, 2).await;
    let seen = messages(&mut on_b, 2).await;
    let epoch = first["epoch"].clone();
    drop(on_b);

    // Missed while away: three publications (within the history of 5).
    for n in 3..=5 {
        broadcast(&b, &channel, n).await;
    }
    let mut on_a = connect(&a, "/ws/analytics").await;
    let (replayed, reply) = subscribe(
        &mut on_a,
        json!({"op":"subscribe","channel":channel,"since":seen[1]["offset"],"epoch":epoch}),
    )
    .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(offsets(&replayed), vec![3, 4, 5]);
    assert_eq!(
        replayed
            .iter()
            .map(|m| m["data"]["n"].clone())
            .collect::<Vec<_>>(),
        vec![json!(3), json!(4), json!(5)]
    );
    assert_eq!(reply["offset"], 5);
    // Then live, from either gateway, with no duplicate of the replay.
    broadcast(&b, &channel, 6).await;
    assert_eq!(offsets(&messages(&mut on_a, 1).await), vec![6]);
    assert!(
        until_quiet(&mut on_a, Duration::from_millis(300))
            .await
            .is_empty(),
        "no duplicate of the replay"
    );

    // Too far back: seven more publications push offset 2 out of the history.
    for n in 7..=13 {
        broadcast(&a, &channel, n).await;
    }
    let mut late = connect(&b, "/ws/analytics").await;
    let (replayed, reply) = subscribe(
        &mut late,
        json!({"op":"subscribe","channel":channel,"since":2,"epoch":epoch}),
    )
    .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(replayed.is_empty(), "no partial replay: {replayed:?}");
    assert_eq!(reply["offset"], 13);
    // A different epoch is never recovered either.
    let (replayed, reply) = subscribe(
        &mut late,
        json!({"op":"subscribe","channel":channel,"since":12,"epoch":"another"}),
    )
    .await;
    assert_eq!(
        (reply["recovered"].clone(), replayed.len()),
        (json!(false), 0)
    );
}

#[tokio::test]
async fn a_lost_pubsub_connection_loses_nothing_the_history_still_holds() {
    // A Redis of its own: killing every Pub/Sub connection must not touch
    // the other tests' gateways.
    let redis = PrivateRedis::start("pubsub-kill");
    let (a, b) = two_gateways_on(&redis.url(), &unique("gw")).await;
    let channel = format!("user:{}", unique("u"));
    let mut on_b = connect(&b, "/ws/analytics").await;
    subscribe(&mut on_b, json!({"op":"subscribe","channel":channel})).await;

    // Cut every gateway's Pub/Sub connection, then publish at once: what
    // the gateway missed while reconnecting is read back from the history.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "the gateways' pub/sub connections exist");
    for n in 1..=4 {
        broadcast(&a, &channel, n).await;
    }
    let got = messages(&mut on_b, 4).await;
    assert_eq!(offsets(&got), vec![1, 2, 3, 4], "in order, none lost");
    assert!(metric(&b, "inkstream_ws_broker_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn broadcast_reports_the_gateways_that_received_it() {
    let (a, b) = two_gateways(&unique("gw")).await;
    let channel = format!("user:{}", unique("u"));
    let sub = json!({"op":"subscribe","channel":channel});
    // Nobody listening anywhere: no gateway subscribed to the channel.
    assert_eq!(broadcast(&a, &channel, 0).await["delivered_to"], 0);
    let mut on_a = connect(&a, "/ws/analytics").await;
    let mut on_b = connect(&b, "/ws/analytics").await;
    subscribe(&mut on_a, sub.clone()).await;
    subscribe(&mut on_b, sub.clone()).await;
    assert_eq!(broadcast(&b, &channel, 1).await["delivered_to"], 2);
    // The last subscriber of a gateway leaving unsubscribes it from Redis.
    on_a.send(Message::text(
        json!({"op":"unsubscribe","channel":channel}).to_string(),
    ))
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = broadcast(&b, &channel, 2).await["delivered_to"]
            .as_u64()
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway a still subscribed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn active(server: &Server) -> bool {
    metric(server, "inkstream_dataflow_active").await == 1.0
}

#[tokio::test]
async fn identical_instances_run_one_dataflow_and_a_standby_takes_over() {
    let url = redis_url();
    let pre = format!("redis.prefix={}", unique("gw"));
    let args = [
        "--redis-url",
        url.as_str(),
        "--set",
        pre.as_str(),
        "--set",
        "dataflow.lease_ttl=1s",
        "--set",
        "dataflow.idle_advance_after=200ms",
    ];
    let mut first = Server::start(&args).await;
    let second = Server::start(&args).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !active(&first).await {
        assert!(
            std::time::Instant::now() < deadline,
            "first never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!active(&second).await, "one dataflow at a time");

    // Every derived message once on each gateway (two dataflows would each
    // publish it: duplicates with new offsets).
    let user = unique("u");
    let sub = json!({"op":"subscribe","channel":format!("user:{user}")});
    let mut on_second = connect(&second, "/ws/analytics").await;
    subscribe(&mut on_second, sub.clone()).await;
    let t0 = now_ms();
    for i in 0..3 {
        keystroke(&second, &user, t0 + i * 1_100).await;
    }
    // The three live WPM updates (with session changes between them), then
    // nothing more: a second dataflow would publish everything again.
    let mut got = Vec::new();
    while got
        .iter()
        .filter(|m: &&Value| m["data"]["type"] == "analytics.metric_updated")
        .count()
        < 3
    {
        got.extend(messages(&mut on_second, 1).await);
    }
    got.extend(until_quiet(&mut on_second, Duration::from_millis(1500)).await);
    let n = got.len() as u64;
    assert_eq!(offsets(&got), (1..=n).collect::<Vec<_>>(), "{got:?}");
    let ids: std::collections::HashSet<_> = got.iter().map(|m| m["data"]["id"].clone()).collect();
    assert_eq!(ids.len() as u64, n, "no derived event twice: {got:?}");
    let wpm = got
        .iter()
        .filter(|m| m["data"]["type"] == "analytics.metric_updated")
        .count();
    assert_eq!(wpm, 3, "one live WPM per batch, from one dataflow: {got:?}");

    // The active instance dies; the standby takes the lease within its TTL,
    // picks up the log where it was acknowledged, and publishes on.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !active(&second).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keystroke(&second, &user, t0 + 4_000).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = messages(&mut on_second, 1).await.remove(0);
        assert!(m["offset"].as_u64().unwrap() > n, "{m}");
        if m["data"]["type"] == "analytics.metric_updated" && m["data"]["ts"] == t0 + 4_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no WPM from the new dataflow"
        );
    }
}

/// A holder whose lease moved on (paused past its TTL, cut off) keeps
/// deriving until it notices; what it derives meanwhile is not published:
/// the new holder publishes those outputs. Its admin broadcasts still are.
#[tokio::test]
async fn a_holder_that_lost_the_lease_publishes_nothing_its_dataflow_still_derives() {
    let prefix = unique("gw");
    let pre = format!("redis.prefix={prefix}");
    let holder = Server::start(&["--redis-url", &redis_url(), "--set", &pre]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !active(&holder).await {
        assert!(std::time::Instant::now() < deadline, "never took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let user = unique("u");
    let channel = format!("user:{user}");
    let mut ws = connect(&holder, "/ws/analytics").await;
    subscribe(&mut ws, json!({"op":"subscribe","channel":channel})).await;
    let t0 = now_ms();
    keystroke(&holder, &user, t0).await;
    let first = messages(&mut ws, 1).await;
    assert_eq!(first[0]["data"]["type"], "analytics.metric_updated");

    // Another instance took the lease over: the fence moved past this one's.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let fence_key = format!("{prefix}:lease:dataflow:dataflow:fence");
    let () = redis::cmd("INCR")
        .arg(&fence_key)
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .unwrap();
    let fenced = "inkstream_ws_broker_publications_total{outcome=\"fenced\"}";
    assert_eq!(metric(&holder, fenced).await, 0.0);
    keystroke(&holder, &user, t0 + 1_100).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while metric(&holder, fenced).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second update was never refused as fenced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broadcast after it, on the same channel: the next message. Had the
    // update been published, it would have come first.
    assert_eq!(broadcast(&holder, &channel, 7).await["delivered_to"], 1);
    let next = messages(&mut ws, 1).await;
    assert_eq!(next[0]["data"], json!({"n": 7}), "{next:?}");
    assert_eq!(offsets(&next), vec![2], "the update took no offset");
}

#[tokio::test]
async fn an_instance_that_loses_the_lease_stops_rather_than_run_a_second_dataflow() {
    let url = redis_url();
    let prefix = unique("gw");
    let pre = format!("redis.prefix={prefix}");
    let mut server = Server::start(&[
        "--redis-url",
        url.as_str(),
        "--set",
        pre.as_str(),
        "--set",
        "dataflow.lease_ttl=600ms",
    ])
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !active(&server).await {
        assert!(std::time::Instant::now() < deadline, "never took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another holder now (as after a stall past the TTL): fenced off.
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:lease:dataflow:dataflow"))
        .arg("someone-else")
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running without the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "exits with an error: {status}");
    let owner: String = redis::cmd("GET")
        .arg(format!("{prefix}:lease:dataflow:dataflow"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        owner, "someone-else",
        "never deletes another holder's lease"
    );
}

#[tokio::test]
async fn a_subscribe_undone_at_once_leaves_no_subscriber_behind() {
    let (a, b) = two_gateways(&unique("gw")).await;
    let channel = format!("user:{}", unique("u"));
    let mut ws = connect(&b, "/ws/analytics").await;
    // Both frames at once: the unsubscribe must undo the subscribe even
    // though the broker is still joining it.
    ws.send(Message::text(
        json!({"op":"subscribe","channel":channel}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"op":"unsubscribe","channel":channel}).to_string(),
    ))
    .await
    .unwrap();
    let frames = until_quiet(&mut ws, Duration::from_millis(500)).await;
    assert!(
        frames.iter().any(|f| f["op"] == "unsubscribed"),
        "{frames:?}"
    );
    broadcast(&a, &channel, 1).await;
    let after = until_quiet(&mut ws, Duration::from_millis(500)).await;
    assert!(offsets(&after).is_empty(), "still subscribed: {after:?}");
    assert_eq!(metric(&b, "inkstream_ws_subscribers").await, 0.0);
}

#[tokio::test]
async fn a_channel_nobody_listened_to_for_its_history_age_is_not_recovered() {
    let url = redis_url();
    let pre = format!("redis.prefix={}", unique("gw"));
    let args = [
        "--redis-url",
        url.as_str(),
        "--set",
        pre.as_str(),
        "--set",
        "fanout.history_max_age=1s",
    ];
    let server = Server::start(&args).await;
    let channel = format!("user:{}", unique("u"));
    let mut ws = connect(&server, "/ws/analytics").await;
    let (_, first) = subscribe(&mut ws, json!({"op":"subscribe","channel":channel})).await;
    broadcast(&server, &channel, 1).await;
    let seen = messages(&mut ws, 1).await;
    drop(ws);
    // Nobody subscribed for longer than the history is kept: what is
    // published now is neither numbered nor kept, and nobody may believe
    // they missed nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    broadcast(&server, &channel, 2).await;
    let mut back = connect(&server, "/ws/analytics").await;
    let (replayed, reply) = subscribe(
        &mut back,
        json!({"op":"subscribe","channel":channel,"since":seen[0]["offset"],"epoch":first["epoch"]}),
    )
    .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(replayed.is_empty());
}

#[tokio::test]
async fn an_instance_restarted_in_place_takes_its_own_lease_back_at_once() {
    let url = redis_url();
    let pre = format!("redis.prefix={}", unique("gw"));
    // A long TTL: a standby would wait 30 s; the same instance (host and
    // port) must not.
    let args = [
        "--redis-url",
        url.as_str(),
        "--set",
        pre.as_str(),
        "--set",
        "dataflow.lease_ttl=30s",
    ];
    let port = inkstream_tests::free_port();
    let mut first = Server::start_on(port, &args).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !active(&first).await {
        assert!(std::time::Instant::now() < deadline, "never took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let restarted = Server::start_on(port, &args).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !active(&restarted).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted instance waited for its own lease to expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
