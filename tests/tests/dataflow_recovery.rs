//! `inkstream serve` with checkpoints, killed with SIGKILL mid-stream and
//! restarted, derives the same events (deduplicated by id) as a run that was
//! never interrupted: open sessions, flow state, presence and WPM windows
//! survive the crash through the checkpoint, and what followed the
//! checkpoint's cut is read again from the log. (Every operator's recovery,
//! conflicts and team windows included, is also tested through `replay`.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, inkstream_bin, metric, redis_url, unique};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The writing events of a generated stream (users writing in bursts, flow,
/// pauses, breaks, client retries): NDJSON lines. Writing only, into one
/// shard: the log then is one stream, read back in the order it was written,
/// so both runs see the same arrival order. (Events spread over several
/// streams are read stream by stream, and a bulk post of old events then
/// arrives out of order by more than the disorder bound; which of them are
/// late would differ between any two runs, crash or not.)
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
        .filter(|l| l.contains(r#""type":"writing."#))
        .map(str::to_owned)
        .collect()
}

fn args(prefix: &str, checkpoints: &Path, derived: &Path) -> Vec<String> {
    let mut args = base_args(prefix, derived);
    // This test reads the directory: keep the checkpoints there (with a
    // Redis log they would go to Redis by default).
    args.extend([
        "--set".into(),
        "checkpoint.store=dir".into(),
        "--set".into(),
        format!("checkpoint.dir='{}'", checkpoints.display()),
    ]);
    args
}

/// Everything but where checkpoints go.
fn base_args(prefix: &str, derived: &Path) -> Vec<String> {
    [
        "--redis-url",
        &redis_url(),
        "--set",
        &format!("derived.dir='{}'", derived.display()),
        "--set",
        &format!("redis.prefix={prefix}"),
        "--set",
        "redis.shards=1",
        // The generated file is in January 2026: no clock skew check.
        "--set",
        "ingest.check_skew=false",
        // Pure event time: the wall clock must not move the watermark, or
        // the two runs would see different idle gaps.
        "--set",
        "dataflow.idle_advance_after=1h",
        "--set",
        "checkpoint.interval=2m",
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

/// Every derived event the server wrote to `derived.dir`, deduplicated by
/// id (a second copy must be the same event). A last line without its
/// newline (a process killed while writing it) is not an event.
fn derived(dir: &Path) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    derived_into(dir, &mut out);
    out
}

fn derived_into(dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue; // not an output: derived.dir's journal
        }
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_str().unwrap().to_owned();
            let json = v.to_string();
            if let Some(first) = out.get(&id) {
                assert_eq!(first, &json, "two different events with id {id}");
            }
            out.insert(id, json);
        }
    }
}

/// How many derived events `dir` holds, copies included.
fn copies(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .count()
        })
        .sum()
}

/// A clean stop (SIGTERM): the dataflow drains and the files are flushed.
async fn stop(mut server: Server) {
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(status.expect("stopped within 30 s").success());
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

/// Compares two sets of derived events by id and content.
fn assert_same(expected: &BTreeMap<String, String>, got: &BTreeMap<String, String>, what: &str) {
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
        "{} expected, {} {what}; missing e.g. {:?}, extra e.g. {:?}",
        expected.len(),
        got.len(),
        missing.iter().map(|k| &expected[*k]).collect::<Vec<_>>(),
        extra.iter().map(|k| &got[*k]).collect::<Vec<_>>()
    );
    for (id, json) in expected {
        assert_eq!(&got[id], json, "event {id} differs {what}");
    }
}

/// The derived events of an uninterrupted run over `lines`.
async fn uninterrupted(lines: &[String]) -> BTreeMap<String, String> {
    let (dir, out) = (scratch("ckpt-a"), scratch("derived-a"));
    let server = start(&args(&unique("reca"), &dir, &out)).await;
    post(&server, lines).await;
    settle(&server, (lines.len() as f64 * 0.98) as usize).await;
    stop(server).await;
    let expected = derived(&out);
    assert!(expected.len() > 5000, "{} derived events", expected.len());
    for d in [dir, out] {
        let _ = std::fs::remove_dir_all(d);
    }
    expected
}

async fn active(server: &Server) -> bool {
    metric(server, "inkstream_dataflow_active").await == 1.0
}

/// The barrier of the latest complete checkpoint in Redis, if any.
async fn latest_checkpoint(prefix: &str) -> Option<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(format!("{prefix}:ckpt:dataflow:latest"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Two instances share Redis; the one holding the dataflow lease is killed
/// with SIGKILL mid-stream, with sessions open. The standby takes the lease,
/// restores the holder's last complete checkpoint from Redis (the default
/// store with a Redis log) and continues: the union of what both derived is
/// what an uninterrupted run derives, event for event.
#[tokio::test]
async fn a_standby_that_takes_over_continues_open_sessions_with_the_same_outputs() {
    let lines = events();
    let (first, second) = lines.split_at(lines.len() / 2);
    let expected = uninterrupted(&lines).await;

    let prefix = unique("failover");
    let (out_a, out_b) = (scratch("derived-holder"), scratch("derived-standby"));
    let with = |out: &Path| {
        let mut a = base_args(&prefix, out);
        a.extend([
            "--set".into(),
            "checkpoint.store=redis".into(),
            "--set".into(),
            "dataflow.lease_ttl=3s".into(),
        ]);
        a
    };
    let mut holder = start(&with(&out_a)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !active(&holder).await {
        assert!(
            Instant::now() < deadline,
            "the first instance never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let standby = start(&with(&out_b)).await;
    post(&holder, first).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest_checkpoint(&prefix).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed in Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle(&holder, (first.len() as f64 * 0.98) as usize).await;
    assert!(!active(&standby).await, "the standby runs no dataflow yet");
    holder.child.kill().unwrap(); // SIGKILL: nothing flushed, lease not released
    holder.child.wait().unwrap();
    let before = derived(&out_a).len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !active(&standby).await {
        assert!(
            Instant::now() < deadline,
            "the standby never took the lease over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    post(&standby, second).await;
    settle(&standby, 1).await;
    stop(standby).await;
    let mut got = derived(&out_a);
    derived_into(&out_b, &mut got);
    assert!(before < got.len(), "the standby derived more");
    assert_same(&expected, &got, "after the failover");
    for d in [out_a, out_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test]
async fn serve_killed_mid_stream_resumes_from_its_checkpoint_with_the_same_outputs() {
    let lines = events();
    let (first, second) = lines.split_at(lines.len() / 2);

    let expected = uninterrupted(&lines).await;

    // The same stream, killed with SIGKILL after a checkpoint, then resumed.
    let (dir_b, out_b) = (scratch("ckpt-b"), scratch("derived-b"));
    let b = args(&unique("recb"), &dir_b, &out_b);
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
    let before_crash = derived(&out_b).len();
    let server = start(&b).await;
    post(&server, second).await;
    settle(&server, 1).await;
    stop(server).await;
    let got = derived(&out_b);
    assert!(
        before_crash < got.len(),
        "the restarted server derived more"
    );
    assert_same(&expected, &got, "after the crash");
    // Exactly once: the restore cut what it derived again (until
    // 2026-12-07 it was there twice).
    assert_eq!(
        copies(&out_b),
        got.len(),
        "derived.dir holds some events twice after the crash"
    );
    for d in [dir_b, out_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A backfill of old events of every category, spread over all sharded
/// streams and read back stream by stream: with a watermark per stream,
/// none of it is late (with one watermark for all, a quarter of it was).
///
/// The events are historical, so wall-clock idleness is set out of reach:
/// a pause between two posts longer than `idle_advance_after` plus the
/// allowed disorder (a loaded machine) rightly moves event time on with the
/// clock, and would make the next post's older events late — that is idle
/// advance working, not what this test is about.
#[tokio::test]
async fn a_bulk_backfill_over_many_streams_has_no_late_events() {
    let out = std::process::Command::new(inkstream_bin())
        .args([
            "generate", "--events", "12000", "--users", "16", "--seed", "7",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let prefix = unique("backfill");
    let server = Server::start(&[
        "--redis-url",
        &redis_url(),
        "--set",
        &format!("redis.prefix={prefix}"),
        "--set",
        "ingest.check_skew=false",
        "--set",
        "dataflow.idle_advance_after=10m",
    ])
    .await;
    post(&server, &lines).await;
    settle(&server, (lines.len() as f64 * 0.98) as usize).await;
    assert_eq!(
        metric(&server, "inkstream_dataflow_late_events_total").await,
        0.0,
        "late events in an in-order backfill"
    );
}

/// Where a rescale test keeps its checkpoints.
#[derive(Clone, Copy, Debug)]
enum Store {
    Redis,
    Dir,
}

/// A checkpoint taken with 2 workers, then a restart with 1: the state is
/// partitioned by worker, so restoring it with another count would silently
/// lose the other workers' parts. The restart refuses to run the dataflow,
/// exits with an error naming both counts, and leaves the checkpoint alone.
async fn a_restart_with_another_worker_count_is_refused(store: Store) {
    let prefix = unique("rescale");
    let (dir, out) = (scratch("ckpt-rescale"), scratch("derived-rescale"));
    let with = |workers: usize| {
        let mut a = base_args(&prefix, &out);
        match store {
            Store::Redis => a.extend(["--set".into(), "checkpoint.store=redis".into()]),
            Store::Dir => a.extend([
                "--set".into(),
                "checkpoint.store=dir".into(),
                "--set".into(),
                format!("checkpoint.dir='{}'", dir.display()),
            ]),
        }
        a.extend(["--set".into(), format!("dataflow.workers={workers}")]);
        a
    };
    let lines = events();
    let mut server = start(&with(2)).await;
    post(&server, &lines[..lines.len() / 2]).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let checkpointed = || async {
        match store {
            Store::Redis => latest_checkpoint(&prefix).await.is_some(),
            Store::Dir => complete_checkpoints(&dir) > 0,
        }
    };
    while !checkpointed().await {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed ({store:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // The same process with 1 worker: it must stop with the error (once
    // the killed holder's lease expired, `dataflow.lease_ttl`), not run
    // with half the state.
    let log = dir.join("rescaled-stderr.log");
    let mut child = std::process::Command::new(inkstream_bin())
        .arg("serve")
        .args(["--port", &inkstream_tests::free_port().to_string()])
        .args(with(1))
        .env_remove("REDIS_URL")
        .env_remove("KAFKA_BROKERS")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let Some((status, _)) = inkstream_tests::exit_within(&mut child, Duration::from_secs(90)).await
    else {
        panic!(
            "serve with another worker count still runs after 90 s ({store:?}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{store:?}: {stderr}");
    assert!(
        stderr.contains("was taken with 2 worker(s) (1 process(es) × 2 worker(s))")
            && stderr.contains("this run has 1 worker(s) (1 process(es) × 1 worker(s))"),
        "{store:?}: the error does not name both counts:\n{stderr}"
    );
    assert!(checkpointed().await, "the checkpoint is left alone");
    for d in [dir, out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test]
async fn a_restart_with_another_worker_count_is_refused_with_checkpoints_in_redis() {
    a_restart_with_another_worker_count_is_refused(Store::Redis).await;
}

#[tokio::test]
async fn a_restart_with_another_worker_count_is_refused_with_checkpoints_in_a_directory() {
    a_restart_with_another_worker_count_is_refused(Store::Dir).await;
}
