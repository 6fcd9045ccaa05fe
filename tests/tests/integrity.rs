//! "202 means it counts": acknowledged events are neither dropped nor made
//! late by what other callers send (issue 16). Against the real binary, with
//! the embedded log and with Redis.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, metric, now_ms, redis_url, unique};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn keystroke(id: &str, user: &str, ts: i64) -> Value {
    json!({"id": id, "type":"writing.keystroke","ts": ts,"user_id": user,
           "data":{"keystrokes":5,"words":1,"chars":5}})
}

/// POSTs `body` with `key` (an API key) or no credential; expects 202 and
/// returns the answer.
async fn ingest(server: &Server, key: Option<&str>, body: &Value) -> Value {
    let mut req = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 202, "ingest refused");
    r.json().await.unwrap()
}

/// Waits (up to 60 s) until the metric family `name` sums to at least
/// `want`, then returns its value.
async fn metric_reaches(server: &Server, name: &str, want: f64, what: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = metric(server, name).await;
        if v >= want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name} is {v} after 60 s, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SESSIONS_STARTED: &str =
    "inkstream_dataflow_derived_events_total{type=\"writing.session_started\"}";
const WPM_UPDATES: &str =
    "inkstream_dataflow_derived_events_total{type=\"analytics.metric_updated\"}";

/// Both log backends: the embedded one, and Redis under a fresh prefix.
fn backends() -> Vec<Vec<String>> {
    vec![
        Vec::new(),
        vec![
            "--redis-url".into(),
            redis_url(),
            "--set".into(),
            format!("redis.prefix=\"{}\"", unique("integrity")),
        ],
    ]
}

#[tokio::test]
async fn an_event_from_a_fast_clock_makes_nobody_late() {
    for backend in backends() {
        let args: Vec<&str> = backend.iter().map(String::as_str).collect();
        let server = Server::start(&args).await;
        // One client 4 min ahead (ingest accepts up to 5 min)...
        let now = now_ms();
        ingest(
            &server,
            None,
            &keystroke(&unique("f"), "fast-clock", now + 240_000),
        )
        .await;
        // ...then everyone else, on time.
        let users: Vec<String> = (0..5).map(|i| unique(&format!("on-time-{i}"))).collect();
        for round in 0..4 {
            let batch: Vec<Value> = users
                .iter()
                .map(|u| keystroke(&unique("k"), u, now_ms() + round))
                .collect();
            ingest(&server, None, &Value::Array(batch)).await;
        }
        // Their sessions start once the watermark passes their events...
        metric_reaches(
            &server,
            SESSIONS_STARTED,
            users.len() as f64,
            "the on-time users' sessions did not start",
        )
        .await;
        // ...and none of their events was late.
        assert_eq!(
            metric(&server, "inkstream_dataflow_late_events_total").await,
            0.0,
            "acknowledged on-time events were dead-lettered as late"
        );
        // The future event waits for its own time (4 min: not in this test;
        // the dataflow's unit test moves a fake clock there).
        assert_eq!(
            metric(&server, SESSIONS_STARTED).await,
            users.len() as f64,
            "the future event ran ahead of its time"
        );
    }
}

#[tokio::test]
async fn the_same_id_from_two_apps_is_two_events_and_a_retry_is_one() {
    for backend in backends() {
        let dir = std::env::temp_dir().join(unique("integrity-cfg"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("inkstream.toml");
        let (a, b) = (
            connectors::auth::hash_api_key("key-app-a"),
            connectors::auth::hash_api_key("key-app-b"),
        );
        std::fs::write(
            &cfg,
            format!(
                "[[auth.api_keys]]\nname = \"app-a\"\nsha256 = \"{a}\"\n\
                 [[auth.api_keys]]\nname = \"app-b\"\nsha256 = \"{b}\"\n"
            ),
        )
        .unwrap();
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "wpm.min_interval=0s",
        ];
        args.extend(backend.iter().map(String::as_str));
        let server = Server::start(&args).await;
        let user = unique("shared-user");
        let now = now_ms();
        // Both apps number their events from "1".
        let first = ingest(&server, Some("key-app-a"), &keystroke("1", &user, now)).await;
        let second = ingest(&server, Some("key-app-b"), &keystroke("1", &user, now + 1)).await;
        assert_eq!(
            (&first["duplicates"], &second["duplicates"]),
            (&json!(0), &json!(0))
        );
        // App a retries its "1": stored once, processed once.
        let retry = ingest(&server, Some("key-app-a"), &keystroke("1", &user, now)).await;
        assert_eq!(retry["duplicates"], 1, "{retry}");
        // A later event of app a: once it is processed, so is everything before it.
        ingest(&server, Some("key-app-a"), &keystroke("2", &user, now + 2)).await;
        let updates = metric_reaches(&server, WPM_UPDATES, 3.0, "an event never reached WPM").await;
        assert_eq!(
            updates, 3.0,
            "app a's 1, app b's 1 and app a's 2, each once (the retry not again)"
        );
        assert_eq!(
            metric(&server, "inkstream_dataflow_duplicate_events_total").await,
            0.0,
            "the dataflow dropped an event the log stored as new"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A client of the Redis at `url` (for checkpoint stores) and a connection
/// (for leases).
async fn lease_connection(url: &str) -> (redis::Client, connectors::redis_conn::PrimaryConnection) {
    let client = redis::Client::open(url).unwrap();
    let conn = connectors::redis_conn::PrimaryConnection::new_with_config(
        client.clone(),
        redis::aio::ConnectionManagerConfig::new(),
    )
    .await
    .unwrap();
    (client, conn)
}

/// The checkpoint store in Redis: a checkpoint is readable only once every
/// process completed it (the pointer flips in the completing script), and a
/// holder whose lease was taken over in place (same host:port, a newer
/// process start) can no longer write a part or complete a checkpoint: its
/// fence token is stale.
#[tokio::test]
async fn a_holder_replaced_in_place_is_fenced_off_the_shared_checkpoints() {
    use connectors::checkpoint_store::{CheckpointStoreError, RedisCheckpointStore};
    use connectors::lease::{Lease, holder_at};
    let prefix = unique("fence");
    let (client, conn) = lease_connection(&redis_url()).await;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let ttl = Duration::from_secs(30);
    let old = holder_at(Some("host-a:8080"));
    let first = Lease::acquire(
        conn.clone(),
        &prefix,
        "dataflow:g",
        (&old.0, &old.1),
        (ttl, Default::default()),
        stop.clone(),
    )
    .await
    .unwrap();
    let store = |fence| RedisCheckpointStore::new(client.clone(), &prefix, "g", fence);
    let old_store = store(Some(first.fence()));
    tokio::task::spawn_blocking(move || {
        // Two processes: complete only with both; a part bigger than a chunk.
        let big = vec![7u8; connectors::checkpoint_store::CHUNK * 2 + 3];
        old_store.put(100, "part-0", &big).unwrap();
        assert!(!old_store.complete(100, 0, 2, 1).unwrap());
        assert_eq!(
            old_store.latest().unwrap(),
            None,
            "half complete is not readable"
        );
        assert!(old_store.complete(100, 1, 2, 1).unwrap());
        assert_eq!(old_store.latest().unwrap().unwrap().barrier, 100);
        assert_eq!(old_store.get(100, "part-0").unwrap().unwrap(), big);
        old_store
    })
    .await
    .unwrap();
    // The same place, a new process start: takes the lease at once.
    let new = holder_at(Some("host-a:8080"));
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        Lease::acquire(
            conn.clone(),
            &prefix,
            "dataflow:g",
            (&new.0, &new.1),
            (ttl, Default::default()),
            stop.clone(),
        ),
    )
    .await
    .expect("a restart in place waited for the TTL")
    .unwrap();
    assert!(second.fence().token > first.fence().token);
    // Another place waits.
    let other = holder_at(Some("host-b:8080"));
    let waited = tokio::time::timeout(
        Duration::from_millis(300),
        Lease::acquire(
            conn.clone(),
            &prefix,
            "dataflow:g",
            (&other.0, &other.1),
            (ttl, Default::default()),
            stop,
        ),
    )
    .await;
    assert!(waited.is_err(), "another place took a held lease");
    let (old_store, new_store) = (store(Some(first.fence())), store(Some(second.fence())));
    tokio::task::spawn_blocking(move || {
        assert!(matches!(
            old_store.put(200, "part-0", b"stale"),
            Err(CheckpointStoreError::Fenced { .. })
        ));
        assert!(matches!(
            old_store.complete(100, 0, 1, 1),
            Err(CheckpointStoreError::Fenced { .. })
        ));
        new_store.put(200, "part-0", b"fresh").unwrap();
        new_store.complete(200, 0, 2, 1).unwrap();
        assert!(new_store.complete(200, 1, 2, 1).unwrap());
        assert_eq!(new_store.get(200, "part-0").unwrap().unwrap(), b"fresh");
        assert_eq!(
            new_store.get(100, "part-0").unwrap(),
            None,
            "the older one is deleted"
        );
    })
    .await
    .unwrap();
}

/// With `redis.min_replica_acks`, a lease take and a checkpoint's
/// completion count only once a replica holds them. Redis replicates
/// asynchronously: a failover could otherwise lose a take (the next take
/// hands out the same fence token: two holders pass each other's fence) or
/// a completed checkpoint whose log entries were already acknowledged
/// (its events would be in no state a restore finds). While the replica is
/// frozen the lease is not handed out and completing fails, retryably;
/// once it is back both go through.
#[tokio::test]
async fn with_min_replica_acks_leases_and_checkpoints_wait_for_a_replica() {
    use connectors::checkpoint_store::{CheckpointStoreError, RedisCheckpointStore};
    use connectors::lease::{Lease, holder_at};
    use connectors::redis_conn::ReplicaAcks;
    use schemas::Classify;
    let (primary, replica) = (
        inkstream_tests::PrivateRedis::start("acks-primary"),
        inkstream_tests::PrivateRedis::start("acks-replica"),
    );
    replica.replicate(&primary);
    let replicas = ReplicaAcks {
        needed: 1,
        timeout: Duration::from_millis(200),
    };
    let prefix = unique("acks");
    let (client, conn) = lease_connection(&primary.url()).await;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let me = holder_at(Some("host-a:8080"));
    // A take is tried again every third of the TTL: every second here.
    let acquire = |name: &'static str| {
        Lease::acquire(
            conn.clone(),
            &prefix,
            name,
            (&me.0, &me.1),
            (Duration::from_secs(3), replicas),
            stop.clone(),
        )
    };
    // A completion the replica confirms within the 200 ms: tried until it
    // does (a loaded machine may take longer once; trying again is safe).
    fn complete_until_confirmed(store: &RedisCheckpointStore, barrier: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = store.complete(barrier, 0, 1, 1) {
            assert!(
                Instant::now() < deadline,
                "checkpoint {barrier} not completed within 30 s of the replica being online: {e}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(store.latest().unwrap().unwrap().barrier, barrier);
    }
    let held = tokio::time::timeout(Duration::from_secs(30), acquire("dataflow:g"))
        .await
        .expect("the lease is taken while the replica confirms")
        .unwrap();
    let store = RedisCheckpointStore::new(client.clone(), &prefix, "g", Some(held.fence()))
        .with_replicas(replicas);
    let store = tokio::task::spawn_blocking(move || {
        store.put(100, "part-0", b"state").unwrap();
        complete_until_confirmed(&store, 100);
        store
    })
    .await
    .unwrap();

    replica.pause();
    let unconfirmed = tokio::time::timeout(Duration::from_secs(2), acquire("mirror")).await;
    let store = tokio::task::spawn_blocking(move || {
        store.put(200, "part-0", b"later").unwrap();
        let e = store
            .complete(200, 0, 1, 1)
            .expect_err("no replica confirms the completion while it is frozen");
        assert!(
            matches!(e, CheckpointStoreError::NotReplicated { barrier: 200, .. }),
            "{e}"
        );
        assert!(
            e.retryable() && e.to_string().contains("redis.min_replica_acks"),
            "{e}"
        );
        store
    })
    .await
    .unwrap();
    replica.resume();
    assert!(
        unconfirmed.is_err(),
        "a lease was handed out that no replica holds"
    );
    let mirror = tokio::time::timeout(Duration::from_secs(30), acquire("mirror"))
        .await
        .expect("the lease is taken once the replica is back")
        .unwrap();
    assert!(mirror.fence().token > 0);
    tokio::task::spawn_blocking(move || complete_until_confirmed(&store, 200))
        .await
        .unwrap();
}

/// With checkpoints, an entry that cannot be decoded is acknowledged like
/// any other: once a checkpoint after it is complete, so its dead letter is
/// durable with the derived outputs first. (It used to be acknowledged as
/// soon as it was read: a crash before the next checkpoint lost its dead
/// letter, and with it the only trace of the entry.)
#[tokio::test]
async fn an_undecodable_entry_waits_for_a_checkpoint_like_any_other() {
    let prefix = unique("undecodable");
    let server = Server::start(&[
        "--redis-url",
        &redis_url(),
        "--set",
        &format!("redis.prefix=\"{prefix}\""),
        "--set",
        "checkpoint.store=\"redis\"",
        // One barrier an hour: the first event takes one at once, and no
        // other comes while the test runs unless the clock crosses an hour.
        "--set",
        "checkpoint.interval=1h",
    ])
    .await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let latest_key = format!("{prefix}:ckpt:dataflow:latest");
    ingest(
        &server,
        None,
        &json!([keystroke(&unique("k"), "u-undecodable", now_ms())]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first: String = loop {
        let latest: Option<String> = redis::cmd("GET")
            .arg(&latest_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(l) = latest {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no first checkpoint completed within 60 s of the first event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stream = format!("{prefix}:events:writing:0");
    let id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("ns")
        .arg("")
        .arg("events")
        .arg(&b"\xffnot an event"[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    metric_reaches(
        &server,
        "inkstream_dataflow_dead_letters_total{reason=\"undecodable\"}",
        1.0,
        "the undecodable entry was not dead-lettered",
    )
    .await;
    // The log reader acknowledges what is done before each read: two more
    // events read and handed over mean at least one acknowledgement round
    // after the dead letter (where the entry used to be acknowledged).
    for n in [2.0, 3.0] {
        ingest(
            &server,
            None,
            &json!([keystroke(&unique("k"), "u-undecodable", now_ms())]),
        )
        .await;
        metric_reaches(
            &server,
            "inkstream_dataflow_events_in_total",
            n,
            "an event after the undecodable entry was not read",
        )
        .await;
    }
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("dataflow")
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    let latest: Option<String> = redis::cmd("GET")
        .arg(&latest_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    if latest.as_deref() == Some(first.as_str()) {
        assert!(
            pending.iter().any(|p| p.0 == id),
            "the undecodable entry {id} was acknowledged before any checkpoint after it \
             completed (pending: {pending:?})"
        );
    }
}
