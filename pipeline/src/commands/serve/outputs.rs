//! Where `serve` sends what it ingests and derives: the log, the fanout hub
//! (in-process or through Redis), and [`DerivedOutputs`], the dataflow's sink
//! that feeds the hub, the Kafka derived topics, `derived.dir`, the notifier
//! and the view store.

use super::error::ServeError;
use crate::config::{Config, DerivedDelivery, FanoutBroker};
use crate::dataflow::{DerivedSink, Pending, SinkError};
use crate::file_sink::FileSink;
use connectors::event_log::EmbeddedLog;
use connectors::event_log::redis::{RedisLog, RedisLogConfig};
use connectors::kafka::derived::{Backpressure, Delivery, DerivedProducer};
use connectors::notifier::NotifierHandle;
use connectors::view_store::{ViewFeed, ViewStore, ViewStoreConfig};
use connectors::websocket_fanout::{Hub, Pacer, Priority, RedisBrokerConfig};
use connectors::{EventLog, Metrics};
use schemas::Event;
use std::sync::Arc;
use tokio::sync::watch;

/// Sends derived events to every output and counts them.
pub(super) struct DerivedOutputs {
    hub: Arc<Hub>,
    /// Window results to the hub at `fanout.paced_rate` (none when 0).
    pacer: Option<Pacer>,
    metrics: Metrics,
    /// The Kafka derived topics, when Kafka is configured.
    derived: Option<Arc<DerivedProducer>>,
    /// `derived.dir`: every derived event, appended as NDJSON.
    files: Option<FileSink>,
    /// The notifier's bounded queue (alerts and flow changes), when enabled.
    notify: Option<NotifierHandle>,
    /// The view store's queue (never blocks this worker thread).
    views: ViewFeed,
}

impl DerivedOutputs {
    /// The dataflow starts under the lease's `fence` (`None`: no lease):
    /// the view store's writes and the fanout's publications through Redis
    /// carry it from now on.
    pub fn fenced(&self, fence: Option<connectors::lease::Fence>) {
        self.hub.fenced(fence.clone());
        self.views.fenced(fence);
    }
}

impl DerivedSink for DerivedOutputs {
    /// The bridge's dead letters: in exactly-once mode, committed with the
    /// next checkpoint.
    fn emit(&self, events: &mut Vec<Event>) {
        self.deliver(None, None, events);
    }

    /// The bridge's dead letters, stamped for `derived.dir`'s journal.
    fn emit_input(&self, stamp: Option<u64>, events: &mut Vec<Event>) {
        self.deliver(None, stamp, events);
    }

    fn emit_at(&self, time: u64, events: &mut Vec<Event>) {
        self.deliver(Some(time), Some(time), events);
    }

    /// Before the checkpoint at `barrier` completes, the derived topics have
    /// everything stamped before it (flushed with every delivery successful,
    /// or committed in a transaction), `derived.dir` is fsynced, and the
    /// alerts the notifier has not routed yet are queued in its store (the
    /// fanout is live only; its history is its own). Any failing fails the
    /// checkpoint: nothing is acknowledged, the next one tries again.
    fn sync(&self, barrier: u64) -> Result<(), SinkError> {
        if let Some(p) = &self.derived {
            p.sync(barrier)?;
        }
        if let Some(n) = &self.notify {
            n.persist_unrouted()?;
        }
        match &self.files {
            Some(files) => files.sync(barrier),
            None => Ok(()),
        }
    }

    /// Exactly-once derived topics: the uncommitted events before `barrier`.
    fn pending(&self, barrier: u64) -> Result<Option<Pending>, SinkError> {
        match &self.derived {
            Some(p) => Ok(p.pending(barrier)?),
            None => Ok(None),
        }
    }

    fn commit(&self, barrier: u64) -> Result<(), SinkError> {
        if let Some(files) = &self.files
            && let Err(error) = files.commit(barrier)
        {
            // The journal stays as it was: longer, still right.
            tracing::warn!(%error, "derived.dir journal not rotated");
        }
        match &self.derived {
            Some(p) => Ok(p.commit(barrier)?),
            None => Ok(()),
        }
    }

    /// `derived.dir` cuts what the restored dataflow derives again (if it
    /// cannot, the error is logged and those outputs will be there twice);
    /// the derived topics commit what the checkpoint saved.
    fn restore(&self, barrier: Option<u64>, pending: Option<Pending>) -> Result<(), SinkError> {
        let files = match &self.files {
            Some(files) => files.restore(barrier, None),
            None => Ok(()),
        };
        if let Some(p) = &self.derived {
            p.restore(barrier, pending)?;
        }
        files
    }
}

impl DerivedOutputs {
    /// `time`: the dataflow's output time (`None`: the bridge's dead
    /// letters); `stamp`: what `derived.dir`'s journal notes.
    fn deliver(&self, time: Option<u64>, stamp: Option<u64>, events: &mut Vec<Event>) {
        if let Some(files) = &self.files {
            files.emit_input(stamp, &mut events.clone());
            if let Some(error) = files.take_error() {
                tracing::error!(%error, "derived events not written to derived.dir");
            }
        }
        self.views.offer(events);
        if let Some(p) = &self.derived {
            p.send(time, events);
        }
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
            match &self.pacer {
                Some(p) if crate::operators::team_metrics::is_window_figure(&e) => p.offer(e),
                _ if is_burst_result(&e) => self.hub.publish_with(&e, Priority::Background),
                _ => self.hub.publish(&e),
            }
        }
    }
}

/// Whether a derived event is a result of an event-time operator that
/// comes in bursts: a session or flow transition (ten thousand writers
/// starting at once start ten thousand sessions in one epoch) or a team
/// window's figure. Such results go to a shared fanout broker behind the
/// live updates (WPM, presence, conflicts, alerts), which they must not
/// delay ([`Priority`]).
fn is_burst_result(e: &Event) -> bool {
    use schemas::payload::Payload;
    matches!(
        e.data,
        Payload::WritingSessionStarted(_)
            | Payload::WritingSessionEnded(_)
            | Payload::WritingSessionPaused(_)
            | Payload::WritingSessionResumed(_)
            | Payload::WritingSessionStateChanged(_)
            | Payload::WritingFlowStateEntered(_)
            | Payload::WritingFlowStateExited(_)
    ) || crate::operators::team_metrics::is_window_figure(e)
}

/// Every output of this process, opened.
pub(super) struct Outputs {
    pub hub: Arc<Hub>,
    /// Flushed once more after the dataflow has drained.
    pub derived: Option<Arc<DerivedProducer>>,
    /// The notifier's handle, for the routes (every instance).
    pub notifier: Option<NotifierHandle>,
    /// The views, for the routes.
    pub views: ViewStore,
    /// The dataflow's sink and the notifier's task, for the dataflow.
    pub for_dataflow: (Arc<DerivedOutputs>, Option<NotifierRun>),
}

/// The notifier's task once started: its stop signal and its handle.
pub(super) type NotifierTask = (watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// The notifier, ready to run beside the dataflow.
pub(super) type NotifierRun = (
    watch::Sender<bool>,
    connectors::notifier::Notifier<connectors::notifier::SystemClock>,
    tokio::sync::mpsc::Receiver<connectors::notifier::runner::Input>,
    watch::Receiver<bool>,
);

impl Outputs {
    /// Opens, in order: the hub, the derived topics, `derived.dir`, the
    /// notifier and the view store.
    pub async fn open(config: &Config, metrics: &Metrics) -> Result<Outputs, ServeError> {
        let hub = open_hub(config, metrics).await?;
        let derived = match &config.kafka.cluster().map_err(ServeError::Auth)? {
            Some(brokers) if config.dataflow.enabled => {
                // Every type: besides the derived ones, the dataflow emits
                // `writing.session_started` and `collaboration.presence_updated`
                // (a producer writing to a missing topic loses the event).
                let topics: Vec<String> = schemas::EventType::all()
                    .map(|t| connectors::kafka::derived_topic(t.name))
                    .collect();
                // Made before anything is produced; if the broker does not
                // answer yet (pods starting together), made in the background
                // as soon as it does: the producer does not create topics,
                // and a record for a missing one fails after librdkafka's
                // metadata wait (30 s). Until 2026-12-07 one failed try was
                // the only one.
                let new = config.kafka.new_topics();
                if let Err(e) = connectors::kafka::ensure_topics(brokers, &topics, new).await {
                    tracing::warn!(error = %e, "creating the derived topics failed; retrying");
                    let (brokers, metrics) = (brokers.clone(), metrics.clone());
                    tokio::spawn(async move {
                        // Each failed try counts in
                        // inkstream_log_errors_total{backend="kafka",op="derived_topics"}.
                        let failed =
                            |e: &connectors::kafka::KafkaError, retry_in: std::time::Duration| {
                                metrics
                                    .log_errors
                                    .with_label_values(&["kafka", "derived_topics"])
                                    .inc();
                                tracing::warn!(error = %e, retry_in_ms = retry_in.as_millis() as u64, "creating the derived topics failed");
                            };
                        connectors::kafka::ensure_topics_until_made(
                            &brokers, &topics, new, failed, None,
                        )
                        .await
                    });
                }
                let delivery = match config.kafka.derived_delivery {
                    DerivedDelivery::AtLeastOnce => Delivery::AtLeastOnce,
                    // One transactional id per process of the dataflow: a
                    // restarted process fences its predecessor.
                    DerivedDelivery::ExactlyOnce => Delivery::ExactlyOnce {
                        transactional_id: format!(
                            "{}-derived-p{}",
                            config.kafka.dataflow_group, config.dataflow.process_index
                        ),
                    },
                };
                // With checkpoints nothing may be given up (no later
                // checkpoint could complete): delivery and a full queue wait.
                let backpressure = if checkpointed(config) {
                    Backpressure::Wait
                } else {
                    Backpressure::Drop
                };
                Some(Arc::new(DerivedProducer::new(
                    brokers,
                    metrics.clone(),
                    &delivery,
                    backpressure,
                )?))
            }
            _ => None,
        };
        let files = open_derived_dir(config)?;
        // The notifier's handle serves the routes on every instance; its task
        // (deliveries, retries, digests) runs only beside the dataflow, so that
        // instances sharing Redis never both send a pending delivery.
        let (notifier, notifier_run) = start_notifier(config, &hub, metrics).await?;
        let (views, view_feed) = ViewStore::start(
            ViewStoreConfig {
                redis_url: config.redis.url.clone(),
                redis_tls: config.redis.tls.clone(),
                prefix: config.redis.prefix.clone(),
                max_keys: config.views.max_keys,
                ..Default::default()
            },
            metrics,
        )
        .await
        .map_err(ServeError::ViewStore)?;
        let pacer = match config.fanout.paced_rate {
            0 => None,
            rate => Some(
                Pacer::start(hub.clone(), rate, config.fanout.paced_queue, metrics)
                    .map_err(ServeError::Pacer)?,
            ),
        };
        let sink = Arc::new(DerivedOutputs {
            hub: hub.clone(),
            pacer,
            metrics: metrics.clone(),
            derived: derived.clone(),
            files,
            notify: notifier.clone(),
            views: view_feed,
        });
        Ok(Outputs {
            hub,
            derived,
            notifier,
            views,
            for_dataflow: (sink, notifier_run),
        })
    }
}

/// Whether the dataflow runs with checkpoints.
fn checkpointed(config: &Config) -> bool {
    config
        .checkpoint
        .resolved(config.redis.url.is_some())
        .is_some()
}

/// `derived.dir`, when set: with checkpoints, journaled, so that each
/// event is there once across a restore.
fn open_derived_dir(config: &Config) -> Result<Option<FileSink>, ServeError> {
    let Some(dir) = &config.derived.dir else {
        return Ok(None);
    };
    let files = FileSink::new(dir, String::new(), true)
        .map_err(ServeError::DerivedDir)?
        .format(config.derived.format);
    Ok(Some(if checkpointed(config) {
        files.journaled().map_err(ServeError::DerivedDir)?
    } else {
        files
    }))
}

/// With TLS or SASL configured, connects to Kafka once: refused credentials
/// or a failed handshake stop the start with a message naming the settings
/// (brokers that do not answer only earn a warning: the clients retry).
pub(super) async fn check_kafka(config: &Config, metrics: &Metrics) -> Result<(), ServeError> {
    let Some(brokers) = config.kafka.cluster().map_err(ServeError::Auth)? else {
        return Ok(());
    };
    if brokers.security == Default::default() {
        return Ok(());
    }
    let metrics = metrics.clone();
    tokio::task::spawn_blocking(move || {
        connectors::kafka::security::check_access(
            &brokers,
            &metrics,
            std::time::Duration::from_secs(10),
        )
    })
    .await
    .map_err(ServeError::StartPanicked)?
    .map_err(ServeError::KafkaAccess)
}

/// With `kafka.schema_registry_url`: the published schema registered for
/// every topic inkstream produces (the event topics, and the derived ones
/// when the dataflow runs here); the registry's ids. Without: the built-in id.
pub(super) async fn register_schemas(
    config: &Config,
) -> Result<connectors::kafka::registry::SchemaIds, ServeError> {
    let Some(registry) = config.kafka.schema_registry() else {
        return Ok(Default::default());
    };
    if config.kafka.brokers.is_none() {
        return Err(ServeError::RegistryWithoutKafka);
    }
    let mut topics: Vec<String> = schemas::Category::ALL
        .iter()
        .map(|c| connectors::kafka::events_topic(*c))
        .collect();
    topics.extend(schemas::EventType::all().map(|t| connectors::kafka::derived_topic(t.name)));
    connectors::kafka::registry::register(&registry, &topics)
        .await
        .map_err(ServeError::SchemaRegistry)
}

/// Opens the log the config asks for.
pub async fn open_log(
    config: &Config,
    metrics: &connectors::Metrics,
) -> Result<EventLog, ServeError> {
    match &config.redis.url {
        Some(url) => {
            let mut rc = RedisLogConfig::new(url.clone());
            rc.prefix = config.redis.prefix.clone();
            rc.shards = config.redis.shards;
            rc.dedup_window = config.ingest.dedup_window;
            rc.tls = config.redis.tls.clone();
            rc.min_replica_acks = config.redis.min_replica_acks;
            rc.replica_ack_timeout = config.redis.replica_ack_timeout;
            let log = RedisLog::connect(&rc).await?;
            tracing::info!(prefix = %rc.prefix, "event log: redis streams");
            Ok(EventLog::Redis(log))
        }
        None => {
            tracing::warn!(
                "event log: EMBEDDED (in-process, NOT durable: events are lost when the process \
                 stops). Set --redis-url / REDIS_URL for a durable log."
            );
            Ok(EventLog::Embedded(
                EmbeddedLog::new(
                    &config.redis.prefix,
                    config.ingest.dedup_window,
                    config.ingest.dedup_max_ids_embedded,
                )
                .with_max_entries(config.ingest.embedded_max_events)
                .with_forgotten_early_counter(metrics.ingest_dedup_forgotten_early.clone()),
            ))
        }
    }
}

/// The fanout hub, through Redis when `fanout.broker` says so.
async fn open_hub(config: &Config, metrics: &Metrics) -> Result<Arc<Hub>, ServeError> {
    let hub = Arc::new(Hub::new(config.fanout.to_hub_config(), metrics.clone()));
    let via_redis = match (config.fanout.broker, &config.redis.url) {
        (FanoutBroker::Memory, _) | (FanoutBroker::Auto, None) => None,
        (FanoutBroker::Auto | FanoutBroker::Redis, Some(url)) => Some(url),
        (FanoutBroker::Redis, None) => return Err(ServeError::FanoutNeedsRedis),
    };
    if let Some(url) = via_redis {
        hub.attach_redis(&RedisBrokerConfig {
            url: url.clone(),
            prefix: config.redis.prefix.clone(),
            publish_queue: config.fanout.publish_queue,
            tls: config.redis.tls.clone(),
        })
        .await
        .map_err(ServeError::FanoutRedis)?;
        tracing::info!("fanout: through redis (numbering and history shared by every gateway)");
    }
    Ok(hub)
}

/// Starts the notifier (`[notifications]`), its store in Redis when
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
        Some(url) => Store::redis(url, &config.redis.prefix, &config.redis.tls)
            .map_err(ServeError::NotifierStore)?,
        None => Store::memory(),
    };
    let nm = NotifierMetrics::register(metrics.registry()).map_err(ServeError::NotifierMetrics)?;
    let (notifier, rx) = Notifier::start(
        config.notifications.clone(),
        store,
        Some(hub.clone()),
        nm,
        SystemClock,
    )
    .await
    .map_err(ServeError::Notifier)?;
    let handle = notifier.handle();
    let (stop_tx, stop_rx) = watch::channel(false);
    Ok((Some(handle), Some((stop_tx, notifier, rx, stop_rx))))
}
