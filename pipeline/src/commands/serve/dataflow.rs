//! The dataflow of a `serve` process: what it takes to start it (the
//! bridge's workers, one log or Kafka reader per input, the notifier's task
//! beside it) and the handles that the drain stops in order.

use super::error::ServeError;
use super::outputs::{DerivedOutputs, NotifierRun, NotifierTask};
use crate::bridge::{Bridge, BridgeEnds};
use crate::config::Config;
use crate::runtime::checkpoint::{CheckpointStoreKind, Checkpoints};
use connectors::checkpoint_store::RedisCheckpointStore;
use connectors::event_log::reader::{self as source, SourceConfig};
use connectors::kafka::source::KafkaSourceConfig;
use connectors::lease::Fence;
use connectors::{EventLog, Metrics};
use std::sync::Arc;
use tokio::sync::watch;

/// Everything needed to start the dataflow, now or once the lease is held.
pub(super) struct DataflowStart {
    config: Config,
    log: EventLog,
    metrics: Metrics,
    /// Tells the readers to stop reading (the drain's first step).
    stop_rx: watch::Receiver<bool>,
    notifier_run: Option<NotifierRun>,
    sink: Arc<DerivedOutputs>,
    /// Inputs of the dataflow: one per worker with Kafka, else one.
    readers: usize,
}

impl DataflowStart {
    /// Takes the sink and the notifier's task: the dataflow owns them, so
    /// they end when it does.
    pub fn prepare(
        config: &Config,
        log: &EventLog,
        metrics: &Metrics,
        (sink, notifier_run): (Arc<DerivedOutputs>, Option<NotifierRun>),
        stop_rx: &watch::Receiver<bool>,
    ) -> Result<DataflowStart, ServeError> {
        // The dataflow reads the event topics when Kafka is configured (each
        // record is then in Redis, mirrored, and in Kafka) — one consumer per
        // worker, sharing the partitions — and the log otherwise (one reader, so
        // every key's events reach one worker in log order).
        let readers = if config.kafka.brokers.is_some() {
            config.dataflow.workers
        } else {
            1
        };
        Ok(DataflowStart {
            config: config.clone(),
            log: log.clone(),
            metrics: metrics.clone(),
            stop_rx: stop_rx.clone(),
            notifier_run,
            sink,
            readers,
        })
    }

    /// Starts the notifier's task, the workers and the readers, restoring
    /// the latest complete checkpoint (opened now, not at process start: a
    /// standby that just took the lease resumes from what the last holder
    /// completed). `fence` guards the checkpoint writes (`None`: no lease).
    /// May block (Redis, and a cluster waits for its peers).
    pub fn start(self, fence: Option<Fence>) -> Result<RunningDataflow, ServeError> {
        let DataflowStart {
            config,
            log,
            metrics,
            stop_rx,
            notifier_run,
            sink,
            readers,
        } = self;
        // The notifier's and the view store's writes are guarded by the
        // same fence, set before anything is derived.
        let notifier_fence = fence.clone();
        sink.fenced(fence.clone());
        let checkpoints = open_checkpoints(&config, fence)?.map(Arc::new);
        if let Some(b) = checkpoints.as_ref().and_then(|c| c.restored()) {
            tracing::info!(barrier = b, "dataflow state restored from checkpoint");
        }
        let notifier = notifier_run.map(|(stop_tx, notifier, rx, stop_rx)| {
            (
                stop_tx,
                tokio::spawn(notifier.fenced(notifier_fence).run(rx, stop_rx)),
            )
        });
        let kafka = config.kafka.cluster().map_err(ServeError::Auth)?;
        let (bridge, ends) = Bridge::start(&config, sink, metrics.clone(), readers, checkpoints)
            .map_err(ServeError::Workers)?;
        let sources = ends
            .into_iter()
            .enumerate()
            .map(
                |(
                    reader,
                    BridgeEnds {
                        entries,
                        processed,
                        caught_up,
                    },
                )| match &kafka {
                    Some(brokers) => tokio::spawn(connectors::kafka::source::run(
                        KafkaSourceConfig {
                            brokers: brokers.clone(),
                            group: config.kafka.dataflow_group.clone(),
                            batch: config.dataflow.read_batch,
                            new_topics: config.kafka.new_topics(),
                            instance: format!(
                                "{}-p{}-r{reader}",
                                config.kafka.dataflow_group, config.dataflow.process_index
                            ),
                        },
                        entries,
                        processed,
                        stop_rx.clone(),
                        metrics.clone(),
                        caught_up,
                    )),
                    None => tokio::spawn(source::run(
                        log.clone(),
                        SourceConfig {
                            group: config.dataflow.group.clone(),
                            consumer: config.dataflow.consumer_name(),
                            batch: config.dataflow.read_batch,
                            claim_idle_after: config.redis.claim_idle_after,
                        },
                        entries,
                        processed,
                        stop_rx.clone(),
                        metrics.clone(),
                        caught_up,
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
}

/// The checkpoints `checkpoint` configures (see `CheckpointConfig::store`).
fn open_checkpoints(
    config: &Config,
    fence: Option<Fence>,
) -> Result<Option<Checkpoints>, ServeError> {
    let epoch_ms = config.dataflow.epoch.as_millis().max(1) as u64;
    let layout = config.dataflow.layout();
    match (
        config.checkpoint.resolved(config.redis.url.is_some()),
        &config.redis.url,
    ) {
        (Some(CheckpointStoreKind::Redis), Some(url)) => {
            if config.checkpoint.dir.is_some() && config.checkpoint.store.is_none() {
                tracing::info!(
                    "checkpoints kept in Redis (shared by the group's instances), not in \
                     checkpoint.dir; set checkpoint.store = \"dir\" to keep them on this disk"
                );
            }
            let client = connectors::tls::redis_client(url, &config.redis.tls)
                .map_err(ServeError::RedisTls)?;
            let store = RedisCheckpointStore::new(
                client,
                &config.redis.prefix,
                &config.dataflow.group,
                fence,
            )
            .with_replicas(config.redis.replica_acks());
            Checkpoints::open_redis(
                store,
                &config.checkpoint,
                epoch_ms,
                layout,
                config.dataflow.process_index,
            )
            .map(Some)
            .map_err(ServeError::Checkpoint)
        }
        _ => {
            Checkpoints::open(&config.checkpoint, epoch_ms, layout).map_err(ServeError::Checkpoint)
        }
    }
}

/// The dataflow of this process, once started.
pub(super) struct RunningDataflow {
    pub bridge: Bridge,
    /// The readers: each ends after the stop signal, dropping its input of
    /// the dataflow (which then drains).
    pub sources: Vec<tokio::task::JoinHandle<()>>,
    pub notifier: Option<NotifierTask>,
}
