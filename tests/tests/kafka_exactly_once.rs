//! The derived topics are part of the checkpoint. With
//! `kafka.derived_delivery = exactly_once` the derived producer is
//! transactional and commits with each checkpoint: a `read_committed`
//! consumer sees every derived event exactly once across a kill -9 of
//! inkstream (and a restarted dataflow waiting for its partitions counts
//! none of what it then reads as late); with the broker stopped, the source
//! cannot confirm it has read everything, the watermark stands still and no
//! checkpoint completes (nothing is acknowledged), and once it is back
//! everything arrives, still once. Run with both checkpoint stores (Redis, the default
//! with a Redis log, and a directory): the guarantee must not depend on it.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{
    PrivateKafka, Server, checking_consumer, exit_within, free_port, keystrokes, metric, now_ms,
    post_events, redis_url, unique,
};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WPM_TOPIC: &str = "inkstream.derived.analytics.metric_updated";

/// How the tests that make their topics beforehand make them: one
/// partition each.
fn one_partition() -> connectors::kafka::NewTopics {
    connectors::kafka::NewTopics {
        partitions: 1,
        ..Default::default()
    }
}

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
        let consumer: StreamConsumer = checking_consumer(brokers, "read-committed")
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
                *self.seen.entry(e.id.to_string()).or_default() += 1;
            }
        }
    }

    /// Fails naming every derived event seen more than once.
    fn assert_once(&self) {
        let duplicated: Vec<_> = self.seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicated.is_empty(),
            "read_committed saw these derived events more than once: {duplicated:?}"
        );
    }
}

/// A new process (after a kill), then 20 new keystrokes for `user`: the
/// reader sees the 60 WPM updates, and none of the input was late.
async fn restart_with_20_more(
    args: &[&str],
    prefix: &str,
    user: &str,
    project: &str,
    reader: &mut Committed,
) -> Server {
    let server = Server::start(args).await;
    let after = keystrokes(&format!("{prefix}-after"), user, project, now_ms(), 20);
    ingest(&server, &after).await;
    reader
        .until("the 60 live WPM updates", |s| s.len() >= 60)
        .await;
    assert_eq!(
        metric(&server, "inkstream_dataflow_late_events_total").await,
        0.0,
        "the restarted dataflow dead-lettered events as late"
    );
    server
}

/// The latest complete checkpoint in Redis (`<base>:latest`).
async fn redis_latest(base: &str) -> Option<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(format!("{base}:latest"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The newest complete checkpoint of the `dir` store (`ckpt-<barrier>`
/// with its completion marker).
fn dir_latest(dir: &std::path::Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().join("COMPLETE.p0").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .max()
}

/// Where the checkpoints are kept: the guarantee must not depend on it.
#[derive(Clone, Copy)]
enum Store {
    Redis,
    Dir,
}

/// `serve`'s arguments: Redis log, Kafka, exactly-once derived topics,
/// checkpoints every 5 s of event time in `store`.
fn serve_args(
    store: Store,
    brokers: &str,
    prefix: &str,
    checkpoints: &std::path::Path,
) -> Vec<String> {
    let mut args = vec![
        "--redis-url".to_owned(),
        redis_url(),
        "--kafka-brokers".to_owned(),
        brokers.to_owned(),
        "--set".to_owned(),
        format!("redis.prefix={prefix}"),
        "--set".to_owned(),
        format!("kafka.dataflow_group=\"{prefix}-g\""),
        "--set".to_owned(),
        "kafka.derived_delivery=exactly_once".to_owned(),
        // Event time: 40 s of keystrokes cross 8 checkpoints.
        "--set".to_owned(),
        "checkpoint.interval=5s".to_owned(),
    ];
    match store {
        // The default with a Redis log: shared by the group's instances.
        Store::Redis => args.extend(["--set".to_owned(), "checkpoint.store=\"redis\"".to_owned()]),
        Store::Dir => args.extend([
            "--set".to_owned(),
            "checkpoint.store=\"dir\"".to_owned(),
            "--set".to_owned(),
            format!("checkpoint.dir='{}'", checkpoints.display()),
        ]),
    }
    args
}

#[tokio::test]
async fn read_committed_sees_each_derived_event_once_with_checkpoints_in_redis() {
    exactly_once_across_kill_9_and_a_broker_outage(Store::Redis).await;
}

#[tokio::test]
async fn read_committed_sees_each_derived_event_once_with_checkpoints_in_a_directory() {
    exactly_once_across_kill_9_and_a_broker_outage(Store::Dir).await;
}

/// The worst moment for a kill: a checkpoint is complete, and the derived
/// topics' transaction holding what was derived before it is not yet
/// committed (the second phase of the commit). librdkafka cannot resume
/// that transaction in a new process, so the checkpoint holds the events
/// themselves, and the restarted process commits them when it restores
/// it. A `read_committed` reader must see each of the 60 updates exactly
/// once. (Before the two phases, the transaction committed first, and a
/// kill between it and the process's first checkpoint lost 12 of the 60.)
#[tokio::test]
async fn a_kill_between_a_checkpoint_and_its_derived_commit_loses_nothing() {
    for store in [Store::Redis, Store::Dir] {
        killed_between_checkpoint_and_commit(store).await;
    }
}

async fn killed_between_checkpoint_and_commit(store: Store) {
    let kafka = PrivateKafka::start();
    let brokers = kafka.brokers();
    let prefix = unique("eos-crash");
    let (user, project) = (format!("{prefix}-u"), format!("{prefix}-p"));
    let checkpoints = std::env::temp_dir().join(unique("eos-crash-ckpt"));
    let args = serve_args(store, &brokers, &prefix, &checkpoints);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut reader = Committed::new(&brokers, &user);
    let latest = || async {
        match store {
            Store::Redis => redis_latest(&format!("{prefix}:ckpt:dataflow")).await,
            Store::Dir => dir_latest(&checkpoints),
        }
    };

    // 1. The process aborts right after its first checkpoint completes,
    //    before that checkpoint's derived transaction (a debug build's
    //    crash point).
    let mut server = Server::start_with_env(
        free_port(),
        &[("INKSTREAM_CRASH_AT", "checkpoint-completed")],
        &args,
    )
    .await;
    let events = keystrokes(&prefix, &user, &project, now_ms() - 120_000, 40);
    ingest(&server, &events).await;
    let (status, _) = exit_within(&mut server.child, Duration::from_secs(90))
        .await
        .expect(
            "the server did not reach its crash point (a first complete checkpoint) within 90 s",
        );
    assert!(!status.success(), "the server exited cleanly: {status:?}");
    let crashed_at = latest().await;
    assert!(
        crashed_at.is_some(),
        "no checkpoint completed before the crash"
    );

    // 2. A new process restores that checkpoint and commits its derived
    //    events; then 20 new keystrokes: the 60 updates, each once, none
    //    late.
    let server = restart_with_20_more(&args, &prefix, &user, &project, &mut reader).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while latest().await == crashed_at {
        assert!(
            Instant::now() < deadline,
            "the restarted process completed no checkpoint within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.assert_once();
    assert_eq!(reader.seen.len(), 60);
    drop(server);
    let _ = std::fs::remove_dir_all(&checkpoints);
}

async fn exactly_once_across_kill_9_and_a_broker_outage(store: Store) {
    let mut kafka = PrivateKafka::start();
    let brokers = kafka.brokers();
    let prefix = unique("eos");
    let (user, project) = (format!("{prefix}-u"), format!("{prefix}-p"));
    let checkpoints = std::env::temp_dir().join(unique("eos-ckpt"));
    let args = serve_args(store, &brokers, &prefix, &checkpoints);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut reader = Committed::new(&brokers, &user);
    let t0 = now_ms() - 120_000;
    let events = keystrokes(&prefix, &user, &project, t0, 40);
    let latest = || async {
        match store {
            Store::Redis => redis_latest(&format!("{prefix}:ckpt:dataflow")).await,
            Store::Dir => dir_latest(&checkpoints),
        }
    };

    // 1. 40 keystrokes; once a first derived event is committed (so its
    //    checkpoint is complete: the transaction commits after it), kill -9
    //    (whatever was derived but not committed is invisible to
    //    read_committed). A kill between a checkpoint and its commit:
    //    `a_kill_between_a_checkpoint_and_its_derived_commit_loses_nothing`.
    let mut server = Server::start(&args).await;
    ingest(&server, &events).await;
    reader
        .until("a first committed derived event", |s| !s.is_empty())
        .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while latest().await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed within 90 s of the first committed derived event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.child.kill().unwrap();
    let _ = server.child.wait();

    // 2. A new process resumes from its checkpoint, and 20 new keystrokes
    //    arrive at once. Until its consumer has its partitions (at once:
    //    static membership replaces the killed member) and has read them to
    //    the end, silence is not "caught up", so its idle watermark waits
    //    and nothing it reads then is late: the 60 updates, once.
    let server = restart_with_20_more(&args, &prefix, &user, &project, &mut reader).await;

    // 3. The broker stops. The source can no longer confirm that it has
    //    read everything (its checks fail, counted), so the idle watermark
    //    stands still instead of passing what the broker may still hold,
    //    and no checkpoint completes: nothing more is acknowledged.
    kafka.stop();
    let failed_checks = || {
        metric(
            &server,
            "inkstream_dataflow_source_checks_total{outcome=\"failed\"}",
        )
    };
    let watermark = || metric(&server, "inkstream_dataflow_watermark_seconds");
    let deadline = Instant::now() + Duration::from_secs(120);
    while failed_checks().await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the source counted no two failed read checks within 120 s of the broker stopping"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (before, stood_at) = (latest().await, watermark().await);
    assert!(
        before.is_some(),
        "no checkpoint completed before the outage"
    );
    let checks = failed_checks().await;
    while failed_checks().await < checks + 4.0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "the source counted no further failed read checks while the broker is stopped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        watermark().await,
        stood_at,
        "the idle watermark moved while the source could not reach the broker"
    );
    assert_eq!(
        latest().await,
        before,
        "a checkpoint completed while the broker was stopped"
    );

    // 4. Back with its data: checkpoints commit again, and no derived event
    //    was seen twice.
    let ok = metric(&server, "inkstream_derived_syncs_total{outcome=\"ok\"}").await;
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&server, "inkstream_derived_syncs_total{outcome=\"ok\"}").await <= ok {
        assert!(
            Instant::now() < deadline,
            "no checkpoint committed within 120 s of the broker's return"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while latest().await == before {
        assert!(
            Instant::now() < deadline,
            "no checkpoint completed within 60 s of a committed derived transaction"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reader
        .until("the 60 live WPM updates again", |s| s.len() >= 60)
        .await;
    reader.assert_once();
    assert_eq!(reader.seen.len(), 60);
    drop(server);
    let _ = std::fs::remove_dir_all(&checkpoints);
}

/// At least once with checkpoints (`Backpressure::Wait`): while the broker
/// is away the derived producer gives nothing up. Its queue fills and the
/// sender (the dataflow) waits for room for as long as the broker takes to
/// come back — longer than the 5 s after which it used to drop an event, and
/// after a drop no checkpoint could complete again until a restart (the 1 M
/// chaos run: 3 events dropped in a 23 s outage). Checkpoints fail while it
/// is away and complete once it is back; every event is on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_with_checkpoints_a_broker_outage_holds_the_producer_back_and_drops_nothing()
{
    use connectors::kafka::Brokers;
    use connectors::kafka::derived::{Backpressure, Delivery, DerivedProducer};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // librdkafka's default queue (queue.buffering.max.messages) holds
    // 100,000: the events beyond it wait for the broker.
    const QUEUE: usize = 100_000;
    const OUTAGE: usize = QUEUE + 500;
    let mut kafka = PrivateKafka::start();
    let brokers = Brokers::plaintext(kafka.brokers());
    connectors::kafka::ensure_topics(brokers.clone(), &[WPM_TOPIC.to_owned()], one_partition())
        .await
        .unwrap();
    let prefix = unique("wait");
    let event = {
        let prefix = prefix.clone();
        move |i: usize| schemas::Event {
            id: format!("{prefix}-{i}").into(),
            ts: now_ms(),
            user_id: Some(format!("{prefix}-u").into()),
            project_id: None,
            document_id: None,
            data: schemas::Payload::example("analytics.metric_updated").unwrap(),
        }
    };
    let metrics = connectors::Metrics::standalone();
    let producer = Arc::new(
        DerivedProducer::new(
            &brokers,
            metrics.clone(),
            &Delivery::AtLeastOnce,
            Backpressure::Wait,
        )
        .unwrap(),
    );
    let sync_until_ok = |barrier: u64, what: &'static str| {
        let producer = producer.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let p = producer.clone();
                let result = tokio::task::spawn_blocking(move || p.sync(barrier))
                    .await
                    .unwrap();
                match result {
                    Ok(()) => break,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "no checkpoint of the derived topics completed within 120 s {what}: {e}"
                    ),
                }
            }
        }
    };
    producer.send(None, &(0..10).map(&event).collect::<Vec<_>>());
    sync_until_ok(1, "with the broker up").await;

    // The broker stops; the dataflow goes on deriving.
    kafka.stop();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (producer, sent, event) = (producer.clone(), sent.clone(), event.clone());
        std::thread::spawn(move || {
            for i in 10..10 + OUTAGE {
                producer.send(None, &[event(i)]);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while sent.load(Ordering::Relaxed) < QUEUE - 1_000 {
        assert!(
            Instant::now() < deadline,
            "the sender did not fill the producer's queue within 120 s ({} sent)",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = producer.clone();
    let while_away = tokio::task::spawn_blocking(move || p.sync(2))
        .await
        .unwrap();
    assert!(
        while_away.is_err(),
        "a checkpoint of the derived topics completed while the broker was stopped"
    );
    // Back (the broker's own start takes well over 5 s): the queue drains
    // and the sender finishes.
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sender.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the sender was still held back 120 s after the broker's return ({} of {OUTAGE} sent)",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sender.join().unwrap();
    sync_until_ok(3, "after the broker's return").await;
    let count = |outcome: &str| metrics.derived_produced.with_label_values(&[outcome]).get();
    assert_eq!(count("dropped"), 0, "derived events were dropped");
    assert_eq!(count("failed"), 0, "derived deliveries failed");

    // Every event is on the topic.
    let consumer: StreamConsumer = checking_consumer(&kafka.brokers(), "wait-check")
        .create()
        .unwrap();
    consumer.subscribe(&[WPM_TOPIC]).unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 10 + OUTAGE {
        assert!(
            Instant::now() < deadline,
            "only {} of {} derived events reached the topic within 120 s",
            seen.len(),
            10 + OUTAGE
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
            && let Some(id) = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "event_id").and_then(|h| h.value))
        {
            seen.insert(String::from_utf8_lossy(id).into_owned());
        }
    }
}

/// The exactly-once producer's two phases against a real broker, as a
/// restarted process meets them: what `pending` gives for a checkpoint is
/// what `commit` commits; a commit that fails (the broker stopped) keeps
/// its events for the next one; a new producer with the same id (a restart)
/// that restores a checkpoint commits the events it holds only when the
/// marker does not show them committed. A `read_committed` reader sees
/// each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_commits_what_a_checkpoint_holds_once_across_failures_and_restarts() {
    use connectors::kafka::Brokers;
    use connectors::kafka::derived::{Backpressure, Delivery, DerivedProducer};
    use std::sync::Arc;

    let mut kafka = PrivateKafka::start();
    let brokers = Brokers::plaintext(kafka.brokers());
    let marker_topic = connectors::kafka::derived_topic("system.dead_letter");
    connectors::kafka::ensure_topics(
        brokers.clone(),
        &[WPM_TOPIC.to_owned(), marker_topic],
        one_partition(),
    )
    .await
    .unwrap();
    let prefix = unique("2pc");
    let user = format!("{prefix}-u");
    let event = |i: usize| schemas::Event {
        id: format!("{prefix}-{i}").into(),
        ts: now_ms(),
        user_id: Some(user.clone().into()),
        project_id: None,
        document_id: None,
        data: schemas::Payload::example("analytics.metric_updated").unwrap(),
    };
    let delivery = Delivery::ExactlyOnce {
        transactional_id: format!("{prefix}-derived-p0"),
    };
    let open = || {
        let (brokers, delivery) = (brokers.clone(), delivery.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                Arc::new(
                    DerivedProducer::new(
                        &brokers,
                        connectors::Metrics::standalone(),
                        &delivery,
                        Backpressure::Wait,
                    )
                    .unwrap(),
                )
            })
            .await
            .unwrap()
        }
    };
    let blocking = |p: &Arc<DerivedProducer>, f: fn(&DerivedProducer) -> bool| {
        let p = p.clone();
        async move { tokio::task::spawn_blocking(move || f(&p)).await.unwrap() }
    };
    let mut reader = Committed::new(&kafka.brokers(), &user);

    // Checkpoint 100 holds events 0..10 (times 10..20); they are committed.
    let producer = open().await;
    for i in 0..10 {
        producer.send(Some(10 + i as u64), &[event(i)]);
    }
    producer.send(Some(150), &[event(10)]);
    let held = producer.pending(100).unwrap().unwrap();
    assert_eq!(held.len(), 10, "checkpoint 100 holds the events before it");
    assert!(blocking(&producer, |p| p.commit(100).is_ok()).await);
    assert_eq!(producer.pending(100).unwrap(), None, "100 is committed");

    // Checkpoint 200: the broker is stopped, its commit fails; the events
    // stay (and event 10 with them), and checkpoint 300 commits them all.
    producer.send(Some(160), &[event(11)]);
    let held_200 = producer.pending(200).unwrap().unwrap();
    assert_eq!(held_200.len(), 2);
    kafka.stop();
    assert!(
        blocking(&producer, |p| p.commit(200).is_err()).await,
        "a commit succeeded with the broker stopped"
    );
    kafka.restart();
    producer.send(Some(250), &[event(12)]);
    let held_300 = producer.pending(300).unwrap().unwrap();
    assert_eq!(
        held_300.len(),
        3,
        "the failed commit's events are held again"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !blocking(&producer, |p| p.commit(300).is_ok()).await {
        assert!(
            Instant::now() < deadline,
            "no commit succeeded within 120 s of the broker's return"
        );
    }
    drop(producer);

    // A restart restoring checkpoint 300, whose transaction is committed:
    // nothing is committed again.
    let restarted = open().await;
    restarted.restore(Some(300), Some(held_300)).unwrap();

    // Checkpoint 400 completes and its process dies before committing: the
    // next process restores it and commits what it holds.
    restarted.send(Some(350), &[event(13), event(14)]);
    let held_400 = restarted.pending(400).unwrap().unwrap();
    drop(restarted);
    let after_crash = open().await;
    let p = after_crash.clone();
    tokio::task::spawn_blocking(move || p.restore(Some(400), Some(held_400)))
        .await
        .unwrap()
        .unwrap();
    reader
        .until("the 15 derived events", |s| s.len() >= 15)
        .await;
    // One more transaction after them: whatever was committed twice would
    // be read before its records.
    after_crash.send(Some(450), &[event(15)]);
    assert!(blocking(&after_crash, |p| p.commit(500).is_ok()).await);
    reader
        .until("the 16th derived event", |s| s.len() >= 16)
        .await;
    reader.assert_once();
}

/// A zombie must not fence the process that replaced it. A newer producer
/// with the derived topics' transactional id (here the test's own; in a
/// deployment the process that took over after this one paused past its
/// lease) fences this one. Its next commit fails with a fatal error, and
/// the process stops with it instead of making a new producer, whose
/// `init_transactions` would fence the newer one back (the two taking
/// turns, each committing what the other commits as well). The newer
/// producer can still commit after the old process is gone, and a restart
/// commits everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_derived_producer_stops_its_process_instead_of_fencing_back() {
    use rdkafka::producer::{BaseProducer, Producer};
    let brokers = inkstream_tests::kafka_brokers();
    let prefix = unique("eos-fence");
    let (user, project) = (format!("{prefix}-u"), format!("{prefix}-p"));
    let unused = std::env::temp_dir().join(unique("eos-fence-ckpt"));
    let args = serve_args(Store::Redis, &brokers, &prefix, &unused);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut reader = Committed::new(&brokers, &user);

    // 1. A first committed derived event: the process holds the id.
    let (mut server, log) = Server::start_logged(&args).await;
    let t0 = now_ms() - 120_000;
    ingest(&server, &keystrokes(&prefix, &user, &project, t0, 40)).await;
    reader
        .until("a first committed derived event", |s| !s.is_empty())
        .await;

    // 2. A newer producer with its transactional id fences it; then more
    //    events, whose commit is the fenced producer's next call.
    let newer: BaseProducer = connectors::kafka::client_config(brokers.as_str())
        .set("transactional.id", format!("{prefix}-g-derived-p0"))
        .create()
        .unwrap();
    newer.init_transactions(Duration::from_secs(30)).unwrap();
    let later = keystrokes(&format!("{prefix}-later"), &user, &project, now_ms(), 20);
    ingest(&server, &later).await;
    let (status, _) = exit_within(&mut server.child, Duration::from_secs(90))
        .await
        .expect("the fenced process did not stop within 90 s of more events to commit");
    let log = log.lock().unwrap().clone();
    assert!(!status.success(), "the fenced process exited cleanly");
    assert!(
        log.contains("the Kafka derived hit a fatal error") && log.contains("fencing it back"),
        "the fenced process did not say that its derived producer was fenced: {log}"
    );

    // 3. It did not fence the newer producer back: that one still commits.
    newer.begin_transaction().unwrap();
    newer
        .commit_transaction(Duration::from_secs(30))
        .expect("the newer producer was fenced back by the process it fenced");
    drop(newer);

    // 4. A restart takes the id over again and commits the 60 updates, once.
    let _server = Server::start(&args).await;
    reader
        .until("the 60 live WPM updates after the restart", |s| {
            s.len() >= 60
        })
        .await;
    reader.assert_once();
    assert_eq!(reader.seen.len(), 60);
}
