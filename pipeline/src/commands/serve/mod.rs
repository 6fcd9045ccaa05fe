//! `inkstream serve`: ingest, log, dataflow and fanout in one process.
//!
//! With no Redis URL and no Kafka brokers everything runs in-process (the
//! embedded log is not durable, and says so at startup).
//!
//! Shutdown (SIGINT/SIGTERM): stop accepting connections and let in-flight
//! requests finish; close WebSocket clients with 1001; stop reading the log;
//! drain the dataflow (every derived event of what was read is emitted); and
//! acknowledge what it processed. Nothing acknowledged to a client is lost:
//! it is in the log, and unprocessed entries stay pending for the next start.

use crate::bridge::{Bridge, BridgeEnds};
use crate::config::{Config, FanoutBroker};
use crate::dataflow::DerivedSink;
use crate::file_sink::FileSink;
use crate::source::{self, SourceConfig};
use connectors::auth::{Authenticator, RateLimiter};
use connectors::event_log::EmbeddedLog;
use connectors::http_ingest::{self, AppState, LimitedListener};
use connectors::kafka::derived::DerivedProducer;
use connectors::kafka::mirror::MirrorConfig;
use connectors::kafka::source::KafkaSourceConfig;
use connectors::notifier::NotifierHandle;
use connectors::redis_stream::lease::Lease;
use connectors::redis_stream::{RedisLog, RedisLogConfig};
use connectors::websocket_fanout::{Hub, RedisBrokerConfig};
use connectors::{EventLog, Metrics};
use schemas::Event;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why `serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot reach the log: {0}")]
    Log(#[from] connectors::LogError),
    #[error("cannot reach Kafka: {0}")]
    Kafka(#[from] connectors::kafka::KafkaError),
    #[error("cannot start the dataflow: {0}")]
    Dataflow(String),
    #[error("server error: {0}")]
    Server(std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
}

/// Trims acknowledged entries older than the retention, forever.
async fn trim_periodically(
    log: EventLog,
    groups: Vec<String>,
    retention: std::time::Duration,
    every: std::time::Duration,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let keep_after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(retention.as_millis() as u64);
        match log.trim(&groups, keep_after).await {
            Ok(n) if n > 0 => tracing::debug!(entries = n, "trimmed the log"),
            Ok(_) => {}
            Err(e) => {
                metrics
                    .log_errors
                    .with_label_values(&[log.backend(), "trim"])
                    .inc();
                tracing::warn!(error = %e, "trimming the log failed");
            }
        }
    }
}

/// Sends derived events to the fanout hub (and the derived topics when Kafka
/// is configured) and counts them.
struct FanoutSink {
    hub: Arc<Hub>,
    metrics: Metrics,
    derived: Option<Arc<DerivedProducer>>,
    /// `derived.dir`: every derived event, appended as NDJSON.
    files: Option<FileSink>,
    /// The notifier's bounded queue (alerts and flow changes), when enabled.
    notify: Option<NotifierHandle>,
    /// The view store's queue (never blocks this worker thread).
    views: connectors::view_store::ViewFeed,
}

impl DerivedSink for FanoutSink {
    fn emit(&self, events: &mut Vec<Event>) {
        if let Some(files) = &self.files {
            files.emit(&mut events.clone());
            if let Some(error) = files.take_error() {
                tracing::error!(%error, "derived events not written to derived.dir");
            }
        }
        self.views.offer(events);
        for e in events.drain(..) {
            self.metrics
                .dataflow_derived
                .with_label_values(&[e.event_type()])
                .inc();
            if let schemas::Payload::SystemDeadLetter(d) = &e.data {
                tracing::debug!(id = %e.id, reason = %d.reason, "dead-lettered");
            }
            if let Some(n) = &self.notify {
                n.offer(&e);
            }
            self.hub.publish(&e);
            if let Some(p) = &self.derived {
                p.send(&e);
            }
        }
    }

    /// Before a checkpoint completes, the derived topics have everything
    /// derived so far (the fanout is live only; its history is its own).
    fn sync(&self) -> Result<(), crate::dataflow::SinkError> {
        if let Some(p) = &self.derived {
            p.flush(std::time::Duration::from_secs(10));
        }
        match &self.files {
            Some(files) => files.sync(),
            None => Ok(()),
        }
    }
}

/// Opens the log the config asks for.
pub async fn open_log(config: &Config) -> Result<EventLog, ServeError> {
    match &config.redis.url {
        Some(url) => {
            let mut rc = RedisLogConfig::new(url.clone());
            rc.prefix = config.redis.prefix.clone();
            rc.shards = config.redis.shards;
            rc.dedup_window = config.ingest.dedup_window;
            let log = RedisLog::connect(&rc).await?;
            tracing::info!(prefix = %rc.prefix, "event log: redis streams");
            Ok(EventLog::Redis(log))
        }
        None => {
            tracing::warn!(
                "event log: EMBEDDED (in-process, NOT durable: events are lost when the process \
                 stops). Set --redis-url / REDIS_URL for a durable log."
            );
            Ok(EventLog::Embedded(EmbeddedLog::new(
                &config.redis.prefix,
                config.ingest.dedup_window,
                config.ingest.dedup_max_ids_embedded,
            )))
        }
    }
}

/// Runs until `shutdown` resolves, then shuts down cleanly. Calls `on_bound`
/// with the bound address once the listener is up (port 0 picks a free port).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let metrics = Metrics::standalone();
    let log = open_log(&config).await?;
    let hub = Arc::new(Hub::new(config.fanout.to_hub_config(), metrics.clone()));
    let via_redis = match (config.fanout.broker, &config.redis.url) {
        (FanoutBroker::Memory, _) | (FanoutBroker::Auto, None) => None,
        (FanoutBroker::Auto | FanoutBroker::Redis, Some(url)) => Some(url),
        (FanoutBroker::Redis, None) => {
            return Err(ServeError::Config(
                "fanout.broker = redis needs redis.url (--redis-url / REDIS_URL)".into(),
            ));
        }
    };
    if let Some(url) = via_redis {
        hub.attach_redis(&RedisBrokerConfig {
            url: url.clone(),
            prefix: config.redis.prefix.clone(),
            publish_queue: config.fanout.publish_queue,
        })
        .await
        .map_err(|e| ServeError::Config(format!("fanout through redis: {e}")))?;
        tracing::info!("fanout: through redis (numbering and history shared by every gateway)");
    }
    let derived = match &config.kafka.brokers {
        Some(brokers) if config.dataflow.enabled => {
            let topics: Vec<String> = schemas::EventType::all()
                .filter(|t| t.derived)
                .map(|t| connectors::kafka::derived_topic(t.name))
                .collect();
            if let Err(e) =
                connectors::kafka::ensure_topics(brokers, &topics, config.kafka.partitions).await
            {
                // Not fatal: the broker may be down now; production retries.
                tracing::warn!(error = %e, "creating the derived topics failed");
            }
            Some(Arc::new(DerivedProducer::new(brokers, metrics.clone())?))
        }
        _ => None,
    };
    let files = match &config.derived.dir {
        Some(dir) => Some(
            FileSink::new(dir, String::new(), true)
                .map_err(|e| ServeError::Config(e.to_string()))?,
        ),
        None => None,
    };
    // The notifier's handle serves the routes on every instance; its task
    // (deliveries, retries, digests) runs only beside the dataflow, so that
    // instances sharing Redis never both send a pending delivery.
    let (notifier, notifier_run) = start_notifier(&config, &hub, &metrics).await?;
    let (views, view_feed) = connectors::view_store::ViewStore::start(
        connectors::view_store::ViewStoreConfig {
            redis_url: config.redis.url.clone(),
            prefix: config.redis.prefix.clone(),
            ..Default::default()
        },
        &metrics,
    )
    .await
    .map_err(|e| ServeError::Config(format!("view store: {e}")))?;
    let sink = Arc::new(FanoutSink {
        hub: hub.clone(),
        metrics: metrics.clone(),
        derived: derived.clone(),
        files,
        notify: notifier.clone(),
        views: view_feed,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // The dataflow reads the event topics when Kafka is configured (each
    // record is then in Redis, mirrored, and in Kafka) — one consumer per
    // worker, sharing the partitions — and the log otherwise (one reader, so
    // every key's events reach one worker in log order).
    let readers = if config.kafka.brokers.is_some() {
        config.dataflow.workers
    } else {
        1
    };
    let epoch_ms = config.dataflow.epoch.as_millis().max(1) as u64;
    let checkpoints = crate::runtime::checkpoint::Checkpoints::open(&config.checkpoint, epoch_ms)
        .map_err(|e| ServeError::Dataflow(e.to_string()))?
        .map(Arc::new);
    if let Some(b) = checkpoints.as_ref().and_then(|c| c.restored()) {
        tracing::info!(barrier = b, "dataflow state restored from checkpoint");
    }
    // Started now, or — when several instances share Redis — once this
    // instance holds the dataflow lease (until then it is a gateway).
    let start_dataflow = {
        let config = config.clone();
        let log = log.clone();
        let metrics = metrics.clone();
        let stop_rx = stop_rx.clone();
        move || -> Result<RunningDataflow, ServeError> {
            let notifier = notifier_run.map(|(stop_tx, notifier, rx, stop_rx)| {
                (stop_tx, tokio::spawn(notifier.run(rx, stop_rx)))
            });
            let (bridge, ends) =
                Bridge::start(&config, sink, metrics.clone(), readers, checkpoints)
                    .map_err(ServeError::Dataflow)?;
            let sources = ends
                .into_iter()
                .map(
                    |BridgeEnds { entries, processed }| match &config.kafka.brokers {
                        Some(brokers) => tokio::spawn(connectors::kafka::source::run(
                            KafkaSourceConfig {
                                brokers: brokers.clone(),
                                group: config.kafka.dataflow_group.clone(),
                                batch: config.dataflow.read_batch,
                            },
                            entries,
                            processed,
                            stop_rx.clone(),
                            metrics.clone(),
                        )),
                        None => tokio::spawn(source::run(
                            log.clone(),
                            SourceConfig {
                                group: config.dataflow.group.clone(),
                                consumer: config.dataflow.consumer.clone(),
                                batch: config.dataflow.read_batch,
                                claim_idle_after: config.redis.claim_idle_after,
                            },
                            entries,
                            processed,
                            stop_rx.clone(),
                            metrics.clone(),
                        )),
                    },
                )
                .collect();
            Ok(RunningDataflow {
                bridge,
                sources,
                notifier,
            })
        }
    };
    let running: Arc<std::sync::Mutex<Option<RunningDataflow>>> = Arc::default();
    // 1 while this process runs the dataflow (holds the lease): which
    // instance is the active one, for operators and tests.
    let active = prometheus::IntGauge::new(
        "inkstream_dataflow_active",
        "1 while this process runs the dataflow (holds the dataflow lease), else 0.",
    )
    .map_err(|e| ServeError::Config(e.to_string()))?;
    metrics
        .registry()
        .register(Box::new(active.clone()))
        .map_err(|e| ServeError::Config(e.to_string()))?;
    // Set when this instance must stop: its dataflow failed to start or it
    // lost the lease (another instance runs the dataflow now).
    let (fatal_tx, fatal_rx) = watch::channel(None::<String>);
    let mut lease_task = None;
    match (&config.redis.url, config.dataflow.enabled) {
        (_, false) => {
            tracing::info!(
                "dataflow: off in this process (dataflow.enabled = false): gateway only"
            );
        }
        (Some(url), true) if config.dataflow.lease => {
            let conn = redis::Client::open(url.as_str())
                .and_then(|c| {
                    redis::aio::ConnectionManager::new_lazy_with_config(
                        c,
                        redis::aio::ConnectionManagerConfig::new(),
                    )
                })
                .map_err(|e| ServeError::Config(format!("redis.url: {e}")))?;
            // One lease per process of a timely cluster: its processes run
            // together, each standing in for one index.
            let name = if config.dataflow.processes() > 1 {
                format!(
                    "dataflow:{}:p{}",
                    config.dataflow.group, config.dataflow.process_index
                )
            } else {
                format!("dataflow:{}", config.dataflow.group)
            };
            let prefix = config.redis.prefix.clone();
            let ttl = config.dataflow.lease_ttl;
            // Stable per instance (two instances on one host need two
            // ports): a restarted instance takes its own lease back at once.
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            let holder = match config.server.port {
                // Port chosen at bind: no stable name, so a unique one.
                0 => format!(
                    "{host}:0-{}-{:x}",
                    std::process::id(),
                    std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8)
                ),
                port => format!("{host}:{port}"),
            };
            let running = running.clone();
            let mut stop = stop_rx.clone();
            let stop_now = stop_tx.clone();
            lease_task = Some(tokio::spawn(async move {
                let lease =
                    Lease::acquire(conn, &prefix, &name, &holder, ttl, stop.clone()).await?;
                // Starting may block (a cluster waits for its peers).
                let started = tokio::task::spawn_blocking(start_dataflow)
                    .await
                    .unwrap_or_else(|e| Err(ServeError::Dataflow(e.to_string())));
                match started {
                    Ok(d) => {
                        *running.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
                        active.set(1);
                    }
                    Err(e) => {
                        let _ = fatal_tx.send(Some(e.to_string()));
                        return Some(lease);
                    }
                }
                let mut lost = lease.lost();
                tokio::select! {
                    _ = lost.wait_for(|l| *l) => {
                        // Stop reading at once (another instance may hold the
                        // lease soon); the rest shuts down as usual.
                        let _ = stop_now.send(true);
                        active.set(0);
                        let _ = fatal_tx.send(Some(
                            "the dataflow lease was lost (another instance runs the dataflow now)".into(),
                        ));
                    }
                    _ = stop.wait_for(|s| *s) => {}
                }
                Some(lease)
            }));
        }
        (_, true) => {
            *running.lock().unwrap_or_else(|p| p.into_inner()) = Some(start_dataflow()?);
            active.set(1);
        }
    }

    let auth_config = config
        .auth
        .to_auth_config(&config.ingest)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let sessions = match &config.redis.url {
        Some(url) if auth_config.session_secret.is_some() => Some(
            redis::Client::open(url.as_str())
                .and_then(|c| {
                    redis::aio::ConnectionManager::new_lazy_with_config(
                        c,
                        redis::aio::ConnectionManagerConfig::new(),
                    )
                })
                .map_err(|e| ServeError::Config(format!("redis.url: {e}")))?,
        ),
        _ => None,
    };
    let auth = Authenticator::new(auth_config, sessions);
    if !auth.enabled() {
        tracing::warn!(
            "AUTHENTICATION IS OFF: anyone who can reach this port may ingest and subscribe. \
             Configure auth.api_keys, auth.jwt_secret or auth.session_secret to turn it on."
        );
    }
    // Trimming waits for the consumers that read the log: the dataflow (when
    // it reads Redis) and the mirror (when Kafka is configured).
    let mut required_groups = Vec::new();
    if config.kafka.brokers.is_none() {
        required_groups.push(config.dataflow.group.clone());
    }
    let mut mirror = None;
    if let Some(brokers) = &config.kafka.brokers {
        let mut mc = MirrorConfig::new(brokers.clone());
        mc.partitions = config.kafka.partitions;
        mc.batch = config.kafka.mirror_batch;
        required_groups.push(mc.group.clone());
        tracing::info!(%brokers, "mirroring the log to Kafka");
        tokio::spawn(connectors::kafka::mirror::report_lag(
            log.clone(),
            mc.group.clone(),
            metrics.clone(),
            std::time::Duration::from_secs(5),
            stop_rx.clone(),
        ));
        mirror = Some(tokio::spawn(connectors::kafka::mirror::run(
            log.clone(),
            mc,
            metrics.clone(),
            stop_rx.clone(),
        )));
    }
    if matches!(log, EventLog::Redis(_)) {
        tokio::spawn(trim_periodically(
            log.clone(),
            required_groups,
            config.redis.retention,
            config.redis.trim_interval,
            metrics.clone(),
        ));
    }
    let state = AppState {
        log,
        hub: hub.clone(),
        metrics: metrics.clone(),
        config: Arc::new(config.ingest.to_ingest_config()),
        auth,
        limiter: Arc::new(RateLimiter::new(100_000)),
        views,
    };
    let addr = format!("{}:{}", config.server.bind, config.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Server)?;
    tracing::info!(addr = %local, "listening");
    on_bound(local);

    let (signal_tx, signal_rx) = watch::channel(false);
    let mut fatal = fatal_rx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fatal.wait_for(|f| f.is_some()) => {}
        }
        let _ = signal_tx.send(true);
    });
    let mut graceful = signal_rx.clone();
    let hub_for_close = hub.clone();
    let listener = LimitedListener::new(
        listener,
        config.server.max_connections,
        metrics.http_connection_limit_waits.clone(),
    );
    let mut app = http_ingest::router(state);
    if let Some(n) = notifier {
        app = app.layer(axum::Extension(n));
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
        tracing::info!("shutting down: finishing in-flight requests");
        // Upgraded WebSocket connections are not tracked by the HTTP
        // server's graceful shutdown: close them explicitly.
        hub_for_close.close_all();
    });
    let result = server.await.map_err(ServeError::Server);

    // HTTP is down: nothing new can be acknowledged. Drain the dataflow.
    let _ = stop_tx.send(true);
    let grace = config.server.shutdown_grace;
    // The lease task ends at the stop signal; after it, `running` is final.
    let lease = match lease_task {
        Some(t) => t.await.ok().flatten(),
        None => None,
    };
    let (bridge, sources, notifier_task) =
        match running.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(RunningDataflow {
                bridge,
                sources,
                notifier,
            }) => (Some(bridge), sources, notifier),
            None => (None, Vec::new(), None),
        };
    if tokio::time::timeout(grace, futures_util::future::join_all(sources))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "dataflow drain exceeded the grace period"
        );
    }
    if let Some(m) = mirror
        && tokio::time::timeout(grace, m).await.is_err()
    {
        tracing::warn!("the mirror did not stop within the grace period");
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(bridge) = bridge {
            bridge.join();
        }
        // The dataflow has drained: deliver what it derived before exiting.
        if let Some(p) = derived {
            p.flush(grace);
        }
    })
    .await;
    // After the drain: what the dataflow derived last is routed too.
    if let Some((stop, task)) = notifier_task {
        let _ = stop.send(true);
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("the notifier did not stop within the grace period");
        }
    }
    // Drained and acknowledged: a standby may take over right away.
    if let Some(lease) = lease {
        lease.release().await;
    }
    if let Some(reason) = fatal_rx.borrow().clone() {
        return Err(ServeError::Dataflow(reason));
    }
    tracing::info!("stopped");
    result
}

/// The dataflow of this process, once started.
struct RunningDataflow {
    bridge: Bridge,
    sources: Vec<tokio::task::JoinHandle<()>>,
    notifier: Option<NotifierTask>,
}

type NotifierTask = (watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// The notifier, ready to run beside the dataflow.
type NotifierRun = (
    watch::Sender<bool>,
    connectors::notifier::Notifier<connectors::notifier::SystemClock>,
    tokio::sync::mpsc::Receiver<connectors::notifier::runner::Input>,
    watch::Receiver<bool>,
);

/// Starts the notifier task (`[notifications]`), its store in Redis when
/// `redis.url` is set (in-process otherwise).
async fn start_notifier(
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Metrics,
) -> Result<(Option<NotifierHandle>, Option<NotifierRun>), ServeError> {
    use connectors::notifier::{Notifier, Store, SystemClock, metrics::NotifierMetrics};
    if !config.notifications.enabled {
        return Ok((None, None));
    }
    let store = match &config.redis.url {
        Some(url) => Store::redis(url, &config.redis.prefix)
            .map_err(|e| ServeError::Config(format!("redis.url: {e}")))?,
        None => Store::memory(),
    };
    let nm = NotifierMetrics::register(metrics.registry())
        .map_err(|e| ServeError::Config(format!("notifier metrics: {e}")))?;
    let (notifier, rx) = Notifier::start(
        config.notifications.clone(),
        store,
        Some(hub.clone()),
        nm,
        SystemClock,
    )
    .await
    .map_err(|e| ServeError::Config(e.to_string()))?;
    let handle = notifier.handle();
    let (stop_tx, stop_rx) = watch::channel(false);
    Ok((Some(handle), Some((stop_tx, notifier, rx, stop_rx))))
}
