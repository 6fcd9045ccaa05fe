//! The derived topics are part of the checkpoint. With
//! `kafka.derived_delivery = exactly_once` the derived producer is
//! transactional and commits with each checkpoint: a `read_committed`
//! consumer sees every derived event exactly once across a kill -9 of
//! inkstream; with the broker stopped, checkpoints fail (counted), nothing is
//! acknowledged, and once it is back everything arrives, still once.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{
    PrivateKafka, Server, keystrokes, metric, now_ms, post_events, redis_url, unique,
};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WPM_TOPIC: &str = "inkstream.derived.analytics.metric_updated";

async fn ingest(server: &Server, events: &[serde_json::Value]) {
    assert_eq!(post_events(server, events).await, 202);
}

/// A `read_committed` reader of the WPM topic: derived id → copies seen,
/// for `user`'s updates.
struct Committed {
    consumer: StreamConsumer,
    user: String,
    seen: HashMap<String, usize>,
}

impl Committed {
    fn new(brokers: &str, user: &str) -> Committed {
        let consumer: StreamConsumer = connectors::kafka::client_config(brokers)
            .set("group.id", unique("read-committed"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        consumer.subscribe(&[WPM_TOPIC]).unwrap();
        Committed {
            consumer,
            user: user.to_owned(),
            seen: HashMap::new(),
        }
    }

    /// Reads until `done(seen)` or the deadline (then fails saying `what`).
    async fn until(&mut self, what: &str, done: impl Fn(&HashMap<String, usize>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done(&self.seen) {
            assert!(
                Instant::now() < deadline,
                "a read_committed consumer did not see {what} within 90 s ({} distinct derived \
                 events seen)",
                self.seen.len()
            );
            let Ok(Ok(m)) =
                tokio::time::timeout(Duration::from_millis(500), self.consumer.recv()).await
            else {
                continue;
            };
            let e = schemas::confluent::decode(m.payload().unwrap()).unwrap();
            if e.user_id.as_deref() == Some(self.user.as_str()) {
                *self.seen.entry(e.id).or_default() += 1;
            }
        }
    }
}

#[tokio::test]
async fn read_committed_sees_each_derived_event_once_across_kill_9_and_a_broker_outage() {
    let mut kafka = PrivateKafka::start();
    let brokers = kafka.brokers();
    let prefix = unique("eos");
    let (user, project) = (format!("{prefix}-u"), format!("{prefix}-p"));
    let checkpoints = std::env::temp_dir().join(unique("eos-ckpt"));
    let args = [
        "--redis-url".to_owned(),
        redis_url(),
        "--kafka-brokers".to_owned(),
        brokers.clone(),
        "--set".to_owned(),
        format!("redis.prefix={prefix}"),
        "--set".to_owned(),
        format!("kafka.dataflow_group=\"{prefix}-g\""),
        "--set".to_owned(),
        "kafka.derived_delivery=exactly_once".to_owned(),
        "--set".to_owned(),
        format!("checkpoint.dir='{}'", checkpoints.display()),
        // This test is about the derived topics' transactions with the
        // directory store; the Redis store (the default with a Redis log
        // since shared checkpoints) is covered by dataflow_recovery.
        "--set".to_owned(),
        "checkpoint.store=\"dir\"".to_owned(),
        // Event time: 40 s of keystrokes cross 8 checkpoints.
        "--set".to_owned(),
        "checkpoint.interval=5s".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut reader = Committed::new(&brokers, &user);
    let t0 = now_ms() - 120_000;

    // 1. Part of the updates committed, then kill -9 (whatever was derived
    //    but not committed is invisible to read_committed).
    let mut server = Server::start(&args).await;
    ingest(&server, &keystrokes(&prefix, &user, &project, t0, 40)).await;
    reader
        .until("a first committed derived event", |s| !s.is_empty())
        .await;
    server.child.kill().unwrap();
    let _ = server.child.wait();

    // 2. A new process resumes from its checkpoint: the 40 updates, once.
    let server = Server::start(&args).await;
    reader
        .until("the 40 live WPM updates", |s| s.len() >= 40)
        .await;

    // 3. The broker stops: checkpoints fail (the transaction cannot commit),
    //    counted; nothing is acknowledged.
    kafka.stop();
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&server, "inkstream_derived_syncs_total{outcome=\"failed\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no failed derived-topics sync counted within 120 s of the broker stopping"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // 4. Back with its data: checkpoints commit again, and no derived event
    //    was seen twice.
    let failed = metric(&server, "inkstream_derived_syncs_total{outcome=\"failed\"}").await;
    let ok = metric(&server, "inkstream_derived_syncs_total{outcome=\"ok\"}").await;
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&server, "inkstream_derived_syncs_total{outcome=\"ok\"}").await <= ok {
        assert!(
            Instant::now() < deadline,
            "no checkpoint committed within 120 s of the broker's return ({failed} failed)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reader
        .until("the 40 live WPM updates again", |s| s.len() >= 40)
        .await;
    let duplicated: Vec<_> = reader.seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "read_committed saw these derived events more than once: {duplicated:?}"
    );
    assert_eq!(reader.seen.len(), 40);
    drop(server);
    let _ = std::fs::remove_dir_all(&checkpoints);
}
