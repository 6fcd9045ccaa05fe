//! A Redis read that was served but whose reply never arrived (a timeout, a
//! dropped connection) leaves its entries pending with the reader's own
//! consumer, and a consumer never claims its own entries. Both readers of
//! the log — the dataflow's and the Kafka mirror's — must read them again
//! at once instead of leaving them until a restart. Seen in a benchmark: a
//! mirror read timed out under load, and 16,000 entries waited for 11
//! minutes, until the run was stopped.
//!
//! The fault is real: a loopback proxy in front of the real redis-server
//! drops the reply holding a marked event and closes that connection. And
//! an acknowledgement that failed through an outage (a private
//! redis-server, stopped and started again) is made once Redis is back:
//! left pending, the entry would hold back trimming until a restart.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::event_log::reader::{self, CaughtUp, SourceConfig};
use inkstream_connectors::event_log::redis::{RedisLog, RedisLogConfig};
use inkstream_connectors::kafka::mirror::{self, MirrorConfig};
use inkstream_connectors::{EntryRef, EventLog, LogEntry, Metrics};
use inkstream_tests::cut_proxy::CutProxy;
use inkstream_tests::{PrivateRedis, kafka_brokers, now_ms, redis_url, unique};
use schemas::Event;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

fn keystroke(id: &str) -> Event {
    Event {
        id: id.into(),
        ts: now_ms(),
        user_id: Some("u1".into()),
        project_id: Some("p1".into()),
        document_id: Some("d1".into()),
        data: schemas::Payload::example("writing.keystroke").unwrap(),
    }
}

async fn open(url: String, prefix: &str) -> EventLog {
    let mut config = RedisLogConfig::new(url);
    config.prefix = prefix.into();
    EventLog::Redis(RedisLog::connect(&config).await.expect("connect to redis"))
}

/// The test's redis-server, and a log through a proxy to it.
async fn direct_and_proxied(prefix: &str) -> (EventLog, EventLog, CutProxy) {
    let url = redis_url();
    let upstream = url.trim_start_matches("redis://").trim_end_matches('/');
    let proxy = CutProxy::start(upstream).await;
    let proxied = open(format!("redis://127.0.0.1:{}", proxy.port()), prefix).await;
    (open(url.clone(), prefix).await, proxied, proxy)
}

/// The dataflow's reader on `log` (group `dataflow`, consumer `c`), with
/// the test in the dataflow's place.
struct ReaderRun {
    entries: mpsc::Receiver<Vec<LogEntry>>,
    processed: mpsc::UnboundedSender<Vec<EntryRef>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
}

impl ReaderRun {
    fn start(log: EventLog) -> ReaderRun {
        let (tx, entries) = mpsc::channel(16);
        let (processed, processed_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let metrics = Metrics::standalone();
        let config = SourceConfig {
            group: "dataflow".into(),
            consumer: "c".into(),
            batch: 100,
            claim_idle_after: Duration::from_secs(60),
        };
        let task = tokio::spawn(reader::run(
            log,
            config,
            tx,
            processed_rx,
            stop_rx,
            metrics.clone(),
            CaughtUp::default(),
        ));
        ReaderRun {
            entries,
            processed,
            stop,
            task,
            metrics,
        }
    }

    /// Waits (30 s at most) for the reader to hand over `id`; returns the
    /// ids of every event handed over meanwhile (`id` included).
    async fn handed_over(&mut self, id: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(batch)) = tokio::time::timeout(left, self.entries.recv()).await else {
                panic!(
                    "{id} never reached the dataflow in 30 s: it stays pending with the reader's consumer"
                );
            };
            seen.extend(
                batch
                    .iter()
                    .filter_map(|e| e.event.as_ref().ok().map(|ev| ev.id.to_string())),
            );
            if seen.iter().any(|s| s == id) {
                return seen;
            }
        }
    }

    /// Stopped, the reader waits for the dataflow's reports until the
    /// dataflow (the test here) is gone.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        drop((self.entries, self.processed));
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the reader stops")
            .unwrap();
    }
}

/// The transactional mirror (consumer `m`) on a log through a proxy.
struct MirrorRun {
    direct: EventLog,
    proxy: CutProxy,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MirrorRun {
    async fn start(prefix: &str) -> MirrorRun {
        let (direct, proxied, proxy) = direct_and_proxied(prefix).await;
        let metrics = Metrics::standalone();
        let (stop, stop_rx) = watch::channel(false);
        let mut config = MirrorConfig::new(kafka_brokers());
        config.consumer = "m".into();
        config.transactional_id = Some(format!("{prefix}.mirror"));
        let task = tokio::spawn(mirror::run(proxied, config, metrics.clone(), stop_rx));
        MirrorRun {
            direct,
            proxy,
            metrics,
            stop,
            task,
        }
    }

    /// Appends `id` and waits (60 s at most) until the mirror counts `n`
    /// entries in Kafka and acknowledged.
    async fn append_and_wait(&self, id: &str, n: u64, what: &str) {
        self.direct.append("app", &[keystroke(id)]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metrics.mirror_events.get() < n {
            assert!(
                Instant::now() < deadline,
                "{id} ({what}) was not mirrored and acknowledged in 60 s (inkstream_mirror_events_total {})",
                self.metrics.mirror_events.get()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pending(&self) -> usize {
        self.direct
            .read_pending("mirror", "m", 10)
            .await
            .unwrap()
            .len()
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the mirror stops")
            .unwrap();
    }
}

#[tokio::test]
async fn the_dataflow_reader_reads_again_what_a_lost_reply_left_pending() {
    let prefix = unique("lostread");
    let (direct, proxied, proxy) = direct_and_proxied(&prefix).await;
    let mut reader = ReaderRun::start(proxied);
    let before = format!("{prefix}-before");
    direct.append("app", &[keystroke(&before)]).await.unwrap();
    reader.handed_over(&before).await;

    let lost = format!("{prefix}-lost");
    proxy.arm(&lost);
    direct.append("app", &[keystroke(&lost)]).await.unwrap();
    let seen = reader.handed_over(&lost).await;
    assert_eq!(proxy.cuts(), 1, "the reply holding {lost} was lost once");
    // Still pending too (not yet reported processed), but handed over
    // already: the re-read starts past it.
    assert_eq!(
        seen,
        vec![lost.clone()],
        "only the lost entry is read again"
    );
    reader.stop().await;
}

#[tokio::test]
async fn the_mirror_reads_again_what_a_lost_reply_left_pending() {
    let prefix = unique("lostmirror");
    let run = MirrorRun::start(&prefix).await;
    run.append_and_wait(&format!("{prefix}-before"), 1, "the first")
        .await;

    let lost = format!("{prefix}-lost");
    run.proxy.arm(&lost);
    run.append_and_wait(&lost, 2, "its read's reply was lost")
        .await;
    assert_eq!(
        run.proxy.cuts(),
        1,
        "the reply holding {lost} was lost once"
    );
    assert_eq!(
        run.pending().await,
        0,
        "nothing is left pending with the mirror"
    );
    run.stop().await;
}

#[tokio::test]
async fn the_mirror_acknowledges_again_what_a_lost_xack_left_pending() {
    let prefix = unique("lostack");
    let run = MirrorRun::start(&prefix).await;
    run.append_and_wait(&format!("{prefix}-first"), 1, "the first")
        .await;

    // The XACK of the next entry never reaches Redis; it counts once it does.
    run.proxy.arm_request("XACK");
    let second = format!("{prefix}-second");
    run.append_and_wait(&second, 2, "its XACK was lost").await;
    assert_eq!(run.proxy.cuts(), 1, "the XACK was lost once");
    assert_eq!(run.pending().await, 0, "{second} is not left pending");
    assert_eq!(
        run.metrics.mirror_errors.with_label_values(&["ack"]).get(),
        1,
        "the lost XACK is counted"
    );
    run.stop().await;
}

#[tokio::test]
async fn an_acknowledgement_that_failed_through_an_outage_is_made_after_it() {
    let prefix = unique("ackretry");
    let mut redis = PrivateRedis::start("ackretry");
    let log = open(redis.url(), &prefix).await;
    let mut reader = ReaderRun::start(log.clone());
    let id = format!("{prefix}-e");
    let stored = log.append("app", &[keystroke(&id)]).await.unwrap();
    reader.handed_over(&id).await;

    // Processed while Redis is away: every XACK try fails.
    redis.stop();
    reader
        .processed
        .send(vec![stored[0].entry.clone()])
        .unwrap();
    let failed_acks = || {
        reader
            .metrics
            .log_errors
            .with_label_values(&["redis", "ack"])
            .get()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while failed_acks() < 5 {
        assert!(
            Instant::now() < deadline,
            "the reader did not try (and fail) its XACK 5 times with Redis stopped: {} failures",
            failed_acks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.restart();
    let check = open(redis.url(), &prefix).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = check.read_pending("dataflow", "c", 10).await;
        if matches!(&pending, Ok(p) if p.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is still pending 30 s after Redis came back: its failed XACK was not made again ({pending:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.stop().await;
}

/// A hub publishing through the cutting proxy to the suite's Redis, and a
/// channel a gateway is interested in (so its publications are numbered and
/// kept: the keys of `broker/redis.rs`'s `Keys`).
struct Fanout {
    hub: std::sync::Arc<inkstream_connectors::websocket_fanout::Hub>,
    proxy: CutProxy,
    /// The channel's tag (`/ws/analytics`, `project:p1`).
    tag: String,
    /// A connection to Redis that bypasses the proxy.
    direct: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Fanout {
    async fn through_proxy(name: &str) -> Fanout {
        use inkstream_connectors::websocket_fanout::{Hub, HubConfig, RedisBrokerConfig};
        let url = redis_url();
        let upstream = url.trim_start_matches("redis://").trim_end_matches('/');
        let proxy = CutProxy::start(upstream).await;
        let prefix = unique(name);
        let hub = std::sync::Arc::new(Hub::new(HubConfig::default(), Metrics::standalone()));
        hub.attach_redis(&RedisBrokerConfig {
            url: format!("redis://127.0.0.1:{}", proxy.port()),
            prefix: prefix.clone(),
            publish_queue: 1024,
            tls: Default::default(),
        })
        .await
        .unwrap();
        let tag = format!("{prefix}:ws:{{/ws/analytics|project:p1}}");
        let mut direct = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("SET")
            .arg(format!("{tag}:i"))
            .arg(1)
            .arg("EX")
            .arg(600)
            .query_async::<()>(&mut direct)
            .await
            .unwrap();
        Fanout {
            hub,
            proxy,
            tag,
            direct,
            prefix,
        }
    }
}

/// The channel's history: (entry id, body) in order.
async fn history(
    direct: &mut redis::aio::MultiplexedConnection,
    tag: &str,
) -> Vec<(String, String)> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{tag}:h"))
        .arg("-")
        .arg("+")
        .query_async(direct)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(id, fields)| {
            let body = fields
                .into_iter()
                .find(|(k, _)| k == "d")
                .map_or(String::new(), |(_, v)| v);
            (id, body)
        })
        .collect()
}

/// A fanout publication whose reply was lost after Redis ran the publish
/// script (the reply cut by the proxy, the connection closed) is not
/// published again by the retry: the channel's history holds it once, at
/// offset 1, and the next publication takes offset 2. Before, the retry
/// published it a second time, under a new offset.
#[tokio::test]
async fn a_publication_whose_reply_was_lost_is_not_published_twice() {
    use inkstream_connectors::websocket_fanout::WsPath;
    let Fanout {
        hub,
        proxy,
        tag,
        mut direct,
        ..
    } = Fanout::through_proxy("fanout-lost-reply").await;

    // The script's reply for one publication at offset 1, to no gateway.
    proxy.arm("*2\r\n:1\r\n:0\r\n");
    let first = hub
        .publish_raw(
            WsPath::Analytics,
            "project:p1",
            &serde_json::json!({"n": 1}),
        )
        .await;
    assert!(first.is_err(), "the reply was cut: {first:?}");
    assert_eq!(proxy.cuts(), 1);
    // The next publication goes after the retry of the first (one
    // publisher per lane, batches in order).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if hub
            .publish_raw(
                WsPath::Analytics,
                "project:p1",
                &serde_json::json!({"n": 2}),
            )
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing still fails 30 s after the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        history(&mut direct, &tag).await,
        [("1-0", r#"{"n":1}"#), ("2-0", r#"{"n":2}"#)].map(|(a, b)| (a.to_owned(), b.to_owned())),
        "each publication once, in order"
    );
}

/// A fanout batch that reaches Redis only after its retry and a later batch
/// ran (held on a connection the publisher gave up on) is not published
/// again: the script skips a batch number at or below the last one its
/// publisher ran. Before, it skipped only the last number itself, and the
/// late batch published `{"n":1}` a second time, at offset 3.
#[tokio::test]
async fn a_publication_that_arrives_after_its_retry_is_not_published_twice() {
    use inkstream_connectors::websocket_fanout::WsPath;
    let Fanout {
        hub,
        proxy,
        tag,
        mut direct,
        prefix,
    } = Fanout::through_proxy("fanout-late-batch").await;
    let publish = |n: u32| {
        let hub = hub.clone();
        async move {
            hub.publish_raw(
                WsPath::Analytics,
                "project:p1",
                &serde_json::json!({ "n": n }),
            )
            .await
        }
    };

    proxy.arm_hold(r#"{"n":1}"#);
    let first = publish(1).await;
    assert!(
        first.is_err(),
        "the batch's connection was closed: {first:?}"
    );
    assert!(proxy.holds());
    // Its retry and the next batch run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while publish(2).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "publishing still fails 30 s after the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the held batch arrives, and has run.
    proxy
        .release(&format!("{prefix}:late-batch-done"), &redis_url())
        .await;
    assert_eq!(
        history(&mut direct, &tag).await,
        [("1-0", r#"{"n":1}"#), ("2-0", r#"{"n":2}"#)].map(|(a, b)| (a.to_owned(), b.to_owned())),
        "each publication once, in order, after the late batch"
    );
}
