//! The same dataflow outputs in all three modes — embedded, Redis only, and
//! Redis + Kafka (the dataflow then reads the event topics and writes the
//! derived topics) — and, with Kafka, a restart resumes from the committed
//! offsets instead of reprocessing.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::StreamExt;
use inkstream_tests::{
    PrivateKafka, Server, Ws, checking_consumer, now_ms, post_events, redis_url, subscribe, unique,
};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// WPM messages (derived id → value) until `n` arrived or the timeout.
async fn collect(ws: &mut Ws, n: usize, timeout: Duration) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    while out.len() < n && Instant::now() < deadline {
        let Ok(Some(Ok(WsMessage::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(500), ws.next()).await
        else {
            continue;
        };
        let m: Value = serde_json::from_str(&t).unwrap();
        // Live WPM only (session transitions share the user's channel).
        if m["op"] == "message" && m["data"]["data"]["metric"] == "wpm" {
            out.insert(
                m["data"]["id"].as_str().unwrap().to_owned(),
                m["data"]["data"]["value"].as_f64().unwrap(),
            );
        }
    }
    out
}

/// 40 keystroke batches a second apart: each one emits a WPM update (live
/// WPM updates at most once per second of event time per user).
fn scenario(prefix: &str, user: &str) -> Vec<Value> {
    let t0 = now_ms() - 50_000;
    (0..40)
        .map(|i| {
            json!({"id": format!("{prefix}-{i}"), "type":"writing.keystroke","ts": t0 + i * 1_000,
                        "user_id": user, "project_id": "p1",
                        "data":{"keystrokes": 6, "words": 1 + i % 3, "chars": 6}})
        })
        .collect()
}

async fn run_mode(args: &[&str], prefix: &str, user: &str) -> BTreeMap<String, f64> {
    let server = Server::start(args).await;
    let mut ws = subscribe(&server, &format!("user:{user}")).await;
    let events = scenario(prefix, user);
    assert_eq!(post_events(&server, &events).await, 202);
    let got = collect(&mut ws, events.len(), Duration::from_secs(30)).await;
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("inkstream_derived_produced"))
    {
        println!("{line}");
    }
    // Stop cleanly: producers flush, offsets are committed.
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.expect("exited within 20 s").success());
    got
}

#[tokio::test]
async fn embedded_redis_and_kafka_modes_produce_the_same_outputs() {
    let prefix = unique("modes");
    let user = unique("u");
    let redis = redis_url();
    // A private broker: the shared one holds other tests' events with later
    // event times, which would (rightly) make this scenario's events late.
    let kafka_broker = PrivateKafka::start();
    let brokers = kafka_broker.brokers();
    let embedded = run_mode(&[], &prefix, &user).await;
    let redis_only = run_mode(
        &[
            "--redis-url",
            &redis,
            "--set",
            &format!("redis.prefix={prefix}-r"),
        ],
        &prefix,
        &user,
    )
    .await;
    let kafka = run_mode(
        &[
            "--redis-url",
            &redis,
            "--kafka-brokers",
            &brokers,
            "--set",
            &format!("redis.prefix={prefix}-k"),
            "--set",
            &format!("kafka.dataflow_group=\"{prefix}-g\""),
        ],
        &prefix,
        &user,
    )
    .await;
    // Kafka with two workers: each worker's consumer takes its share of the
    // partitions (one of them idle here), same outputs. Its own broker: the
    // topics above already hold this scenario once, and a second copy of the
    // same events at later offsets is a different (at-least-once) input.
    let second_broker = PrivateKafka::start();
    let brokers_two = second_broker.brokers();
    let kafka_two = run_mode(
        &[
            "--redis-url",
            &redis,
            "--kafka-brokers",
            &brokers_two,
            "--workers",
            "2",
            "--set",
            &format!("redis.prefix={prefix}-k2"),
            "--set",
            &format!("kafka.dataflow_group=\"{prefix}-g2\""),
        ],
        &prefix,
        &user,
    )
    .await;
    assert_eq!(
        embedded.len(),
        40,
        "one live WPM message per keystroke event"
    );
    let differing: Vec<_> = embedded
        .iter()
        .filter(|(k, v)| kafka_two.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), *v, kafka_two.get(k).copied()))
        .collect();
    assert!(
        differing.is_empty(),
        "Kafka with two workers disagrees on {differing:?} ({} vs {} messages)",
        embedded.len(),
        kafka_two.len()
    );
    assert_eq!(embedded, redis_only, "embedded and Redis-only agree");
    assert_eq!(embedded, kafka, "embedded and Redis + Kafka agree");

    // With Kafka, the derived events are on their topic too, same ids.
    let consumer: StreamConsumer = checking_consumer(&brokers, "derived").create().unwrap();
    consumer
        .subscribe(&["inkstream.derived.analytics.metric_updated"])
        .unwrap();
    let mut found = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while found < kafka.len() && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        let e = schemas::confluent::decode(m.payload().unwrap()).unwrap();
        if kafka.contains_key(e.id.as_str()) {
            found += 1;
        }
    }
    assert_eq!(
        found,
        kafka.len(),
        "every derived event is on inkstream.derived.analytics.metric_updated"
    );
}

#[tokio::test]
async fn with_kafka_a_restart_resumes_from_committed_offsets() {
    let kafka = PrivateKafka::start();
    let prefix = unique("resume");
    let user = unique("u");
    let redis = redis_url();
    let brokers = kafka.brokers();
    let args = [
        "--redis-url",
        redis.as_str(),
        "--kafka-brokers",
        brokers.as_str(),
        "--set",
        &format!("redis.prefix={prefix}"),
    ];
    let first = {
        let mut server = Server::start(&args).await;
        let mut ws = subscribe(&server, &format!("user:{user}")).await;
        let events = scenario(&prefix, &user);
        let r = reqwest::Client::new()
            .post(server.url("/v1/events"))
            .json(&Value::Array(events))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let got = collect(&mut ws, 40, Duration::from_secs(30)).await;
        let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(status.expect("exited").success());
        got
    };
    assert_eq!(first.len(), 40);
    // A new process with the same group: nothing of before is processed again.
    let server = Server::start(&args).await;
    let mut ws = subscribe(&server, &format!("user:{user}")).await;
    let again = collect(&mut ws, 1, Duration::from_secs(6)).await;
    assert!(again.is_empty(), "re-processed after restart: {again:?}");
    // New events still flow.
    let more: Vec<Value> = scenario(&format!("{prefix}-more"), &user);
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(&Value::Array(more))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        collect(&mut ws, 40, Duration::from_secs(30)).await.len(),
        40
    );
}
