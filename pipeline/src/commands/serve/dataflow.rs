//! The dataflow of a `serve` process: what it takes to start it (the
//! bridge's workers, one log or Kafka reader per input, the notifier's task
//! beside it) and the handles that the drain stops in order.

use super::error::ServeError;
use super::outputs::{DerivedOutputs, NotifierRun, NotifierTask};
use crate::bridge::{Bridge, BridgeEnds};
use crate::config::Config;
use crate::runtime::checkpoint::Checkpoints;
use connectors::event_log::reader::{self as source, SourceConfig};
use connectors::kafka::source::KafkaSourceConfig;
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
    checkpoints: Option<Arc<Checkpoints>>,
}

impl DataflowStart {
    /// Opens the checkpoints (restoring happens when the workers start).
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
        let epoch_ms = config.dataflow.epoch.as_millis().max(1) as u64;
        let checkpoints = Checkpoints::open(&config.checkpoint, epoch_ms, config.dataflow.layout())
            .map_err(ServeError::Checkpoint)?
            .map(Arc::new);
        if let Some(b) = checkpoints.as_ref().and_then(|c| c.restored()) {
            tracing::info!(barrier = b, "dataflow state restored from checkpoint");
        }
        Ok(DataflowStart {
            config: config.clone(),
            log: log.clone(),
            metrics: metrics.clone(),
            stop_rx: stop_rx.clone(),
            notifier_run,
            sink,
            readers,
            checkpoints,
        })
    }

    /// Starts the notifier's task, the workers and the readers. May block
    /// (a cluster waits for its peers).
    pub fn start(self) -> Result<RunningDataflow, ServeError> {
        let DataflowStart {
            config,
            log,
            metrics,
            stop_rx,
            notifier_run,
            sink,
            readers,
            checkpoints,
        } = self;
        let notifier = notifier_run.map(|(stop_tx, notifier, rx, stop_rx)| {
            (stop_tx, tokio::spawn(notifier.run(rx, stop_rx)))
        });
        let kafka = config.kafka.cluster().map_err(ServeError::Auth)?;
        let (bridge, ends) = Bridge::start(&config, sink, metrics.clone(), readers, checkpoints)
            .map_err(ServeError::Workers)?;
        let sources = ends
            .into_iter()
            .map(
                |BridgeEnds {
                     entries,
                     processed,
                     caught_up,
                 }| match &kafka {
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

/// The dataflow of this process, once started.
pub(super) struct RunningDataflow {
    pub bridge: Bridge,
    /// The readers: each ends after the stop signal, dropping its input of
    /// the dataflow (which then drains).
    pub sources: Vec<tokio::task::JoinHandle<()>>,
    pub notifier: Option<NotifierTask>,
}
