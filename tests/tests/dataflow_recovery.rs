//! `inkstream serve` with checkpoints, killed with SIGKILL mid-stream and
//! restarted, derives the same events (deduplicated by id) as a run that was
//! never interrupted: open sessions, presence, conflicts and windows survive
//! the crash through the checkpoint, and what followed the checkpoint's cut
//! is read again from the log.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{PrivateKafka, Server, inkstream_bin, redis_url, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A generated stream (many users co-editing, flow bursts, pauses, client
/// retries): NDJSON lines.
fn events() -> Vec<String> {
    let out = std::process::Command::new(inkstream_bin())
        .args([
            "generate", "--events", "12000", "--users", "16", "--seed", "7",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn args(prefix: &str, brokers: &str, checkpoints: &Path) -> Vec<String> {
    [
        "--redis-url",
        &redis_url(),
        "--kafka-brokers",
        brokers,
        "--set",
        &format!("redis.prefix={prefix}"),
        // The generated file is in January 2026: no clock skew check.
        "--set",
        "ingest.check_skew=false",
        // Pure event time: the wall clock must not move the watermark, or
        // the two runs would see different idle gaps.
        "--set",
        "dataflow.idle_advance_after=1h",
        "--set",
        "checkpoint.interval=2m",
        "--set",
        &format!("checkpoint.dir='{}'", checkpoints.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn start(args: &[String]) -> Server {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&refs).await
}

async fn post(server: &Server, lines: &[String]) {
    let client = reqwest::Client::new();
    for chunk in lines.chunks(1000) {
        let r = client
            .post(server.url("/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the dataflow has taken `n` events in and its output has
/// settled.
async fn settle(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(server, "inkstream_dataflow_events_in_total").await < n as f64 {
        assert!(
            Instant::now() < deadline,
            "the dataflow did not take every event in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = -1.0;
    loop {
        let now = metric(server, "inkstream_dataflow_derived_events_total").await;
        if now == last {
            return;
        }
        last = now;
        assert!(Instant::now() < deadline, "derived events did not settle");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// Every derived event on the derived topics, deduplicated by id (a second
/// copy must be the same event). Dead letters are left out: a record the
/// at-least-once mirror delivered twice may be dead-lettered as late the
/// second time, which says nothing about the dataflow's state.
async fn derived(brokers: &str) -> BTreeMap<String, String> {
    let topics: Vec<String> = schemas::EventType::all()
        .filter(|t| t.derived && t.name != "system.dead_letter")
        .map(|t| connectors::kafka::derived_topic(t.name))
        .collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let consumer: StreamConsumer = connectors::kafka::client_config(brokers)
        .set("group.id", unique("recovery-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&refs).unwrap();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(4) {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        quiet_since = Instant::now();
        let e = schemas::confluent::decode(m.payload().unwrap()).unwrap();
        let json = serde_json::to_string(&e).unwrap();
        if let Some(first) = out.get(&e.id) {
            assert_eq!(first, &json, "two different events with id {}", e.id);
        }
        out.insert(e.id, json);
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn complete_checkpoints(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("COMPLETE.p0").exists())
        .count()
}

#[tokio::test]
async fn serve_killed_mid_stream_resumes_from_its_checkpoint_with_the_same_outputs() {
    let lines = events();
    let (first, second) = lines.split_at(lines.len() / 2);

    // The run that is never interrupted.
    let kafka_a = PrivateKafka::start();
    let dir_a = scratch("ckpt-a");
    let a = args(&unique("reca"), &kafka_a.brokers(), &dir_a);
    let server = start(&a).await;
    post(&server, &lines).await;
    let accepted = metric(&server, "inkstream_dataflow_events_in_total").await;
    settle(&server, (lines.len() as f64 * 0.98) as usize).await;
    let _ = accepted;
    let expected = derived(&kafka_a.brokers()).await;
    drop(server);
    assert!(expected.len() > 500, "{} derived events", expected.len());

    // The same stream, killed with SIGKILL after a checkpoint, then resumed.
    let kafka_b = PrivateKafka::start();
    let dir_b = scratch("ckpt-b");
    let b = args(&unique("recb"), &kafka_b.brokers(), &dir_b);
    let mut server = start(&b).await;
    post(&server, first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while complete_checkpoints(&dir_b) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle(&server, (first.len() as f64 * 0.98) as usize).await;
    server.child.kill().unwrap(); // SIGKILL: nothing is flushed
    server.child.wait().unwrap();
    let server = start(&b).await;
    post(&server, second).await;
    settle(&server, 1).await;
    // Everything re-read and new is in once the totals match the first run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = derived(&kafka_b.brokers()).await;
    while got.len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        got = derived(&kafka_b.brokers()).await;
    }
    drop(server);
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} expected, {} after the crash; missing e.g. {:?}, extra e.g. {:?}",
        expected.len(),
        got.len(),
        missing.iter().map(|k| &expected[*k]).collect::<Vec<_>>(),
        extra.iter().map(|k| &got[*k]).collect::<Vec<_>>()
    );
    for (id, json) in &expected {
        assert_eq!(&got[id], json, "event {id} differs after the crash");
    }
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}
