//! Derived events out to `inkstream.derived.<type>` topics: keyed by
//! partition key, Confluent-framed Avro, headers like the event topics.
//!
//! The topics are part of the dataflow's checkpoint: at least once,
//! [`DerivedProducer::sync`] is called before a checkpoint completes (an
//! error fails it, nothing is acknowledged, and the next checkpoint tries
//! again); exactly once, the checkpoint holds what is not committed yet.
//! Two delivery modes:
//!
//! - **At least once** (default): events are produced as they are derived
//!   (idempotent producer). A checkpoint completes only once the producer
//!   has flushed and no delivery failed since start. A replay re-produces
//!   what followed the last checkpoint: duplicates, with identical
//!   (deterministic) ids.
//!
//!   **With checkpoints** ([`Backpressure::Wait`]) nothing is given up
//!   while the broker is away: librdkafka retries a delivery for as long as
//!   it takes (`message.timeout.ms` = 0) and a full queue makes the dataflow
//!   wait for room, as Flink's backpressure does, so memory stays bounded
//!   by the queue. Checkpoints wait for the broker (each attempt fails with
//!   [`DeliveryError::Pending`]) and complete once it is back. Before, a
//!   queue full for 5 s dropped the event, and no checkpoint could complete
//!   again until a restart (the 1 M chaos run: 3 events dropped in a 23 s
//!   outage). Once the instance stops ([`DerivedProducer::stop_waiting`])
//!   a full queue drops again: what follows the last checkpoint is derived
//!   again by whoever resumes. A delivery can still fail for good (a
//!   record the broker refuses): then no checkpoint completes until a
//!   restart replays it, and the error says so.
//!
//!   **Without checkpoints** ([`Backpressure::Drop`]) a queue full for 5 s
//!   drops the event (counted) and a delivery fails after librdkafka's
//!   default 5 min, so that the dataflow and the WebSocket fanout never
//!   stall on the broker; nothing replays what is lost.
//! - **Exactly once**: a transactional producer and a two-phase commit, as
//!   Flink's `KafkaSink` does. Events are buffered by dataflow time. At
//!   checkpoint `b`, those stamped before `b` and not yet committed
//!   ([`DerivedProducer::pending`]) are saved with the checkpoint; once the
//!   checkpoint is complete, they are produced in one transaction that also
//!   records `b` (a transactional offset commit of the marker group), and
//!   committed ([`DerivedProducer::commit`]). A restore from checkpoint `b`
//!   whose transaction the marker does not show committed (the process died
//!   between the two phases) commits what the checkpoint saved
//!   ([`DerivedProducer::restore`]); librdkafka cannot resume a transaction
//!   across processes, so the checkpoint keeps the events themselves, not a
//!   transaction handle. The marker is thus never ahead of the restored
//!   checkpoint, and what the restored dataflow derives again (stamped at or
//!   after `b`) was never committed. A `read_committed` consumer sees each
//!   event once. The costs: outputs become visible per checkpoint, and each
//!   checkpoint holds the outputs of its interval until they are committed.
//!
//! A fatal error of the producer (a fence: another process with the same
//! transactional id; an idempotent producer's broken sequence) stops the
//! instance ([`super::fatal`]): no new producer takes over, so a zombie
//! never fences the process that replaced it, and the restart resumes from
//! the last checkpoint.
//!
//! A threaded producer (its own polling thread) keeps the dataflow's worker
//! threads free of async: `send` only enqueues; a full queue blocks the
//! caller briefly (backpressure).

use super::{client_config, derived_topic};
use crate::metrics::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use schemas::Event;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a checkpoint waits for the derived topics.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// librdkafka's default `transaction.timeout.ms` (the derived producer
/// keeps it): after it the broker aborts an open transaction, so a commit
/// that did not finish is called again for at most this long.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the derived topics did not take what was derived.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(
        "derived events not all delivered within {0:?} (broker unreachable?); the checkpoint is retried"
    )]
    Pending(Duration),
    #[error(
        "{0} derived events failed delivery or were dropped; no checkpoint completes until a \
         restart replays them from the last one"
    )]
    Lost(u64),
    #[error("the derived-topics transaction failed ({0}); the checkpoint is retried")]
    Transaction(rdkafka::error::KafkaError),
    #[error("derived events cannot be encoded or decoded: {0}")]
    Encode(String),
    #[error("{0}; no checkpoint completes in this instance")]
    Fatal(std::sync::Arc<super::FatalError>),
}

impl schemas::Classify for DeliveryError {
    fn fault(&self) -> schemas::Fault {
        match self {
            DeliveryError::Encode(_) => schemas::Fault::Internal,
            _ => schemas::Fault::External,
        }
    }
}

/// Exactly-once derived events a checkpoint holds until their transaction
/// commits: each with its dataflow time, the Avro binary of the envelope
/// (`schemas::binary`).
pub type Pending = Vec<(u64, Vec<u8>)>;

/// The delivery guarantee of the derived topics (`kafka.derived_delivery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    AtLeastOnce,
    /// Transactional, with this `transactional.id` (also the marker group's
    /// id); one per process of the dataflow.
    ExactlyOnce {
        transactional_id: String,
    },
}

/// What a full producer queue does to the dataflow (at least once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Deliver for as long as it takes and wait for room in the queue:
    /// with checkpoints (giving an event up would keep every later
    /// checkpoint from completing).
    Wait,
    /// After 5 s of a full queue, drop the event (counted): without
    /// checkpoints.
    Drop,
}

/// Counts delivery reports.
pub struct Deliveries {
    metrics: Metrics,
    fatal: super::FatalSignal,
    /// Deliveries that failed (or events dropped) since start.
    lost: AtomicU64,
}

impl ClientContext for Deliveries {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::security::Observed {
            metrics: self.metrics.clone(),
            client: "derived",
            fatal: self.fatal.clone(),
        }
        .observe(&error, reason);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self
                .metrics
                .derived_produced
                .with_label_values(&["delivered"])
                .inc(),
            Err((e, m)) => {
                use rdkafka::Message;
                let topic = m.topic();
                self.lost.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .derived_produced
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(error = %e, %topic, "a derived event was not delivered");
            }
        }
    }
}

/// The transactional state (exactly-once mode).
struct Transactions {
    /// The producer; `None` after a failure it may not recover from (an
    /// abort that timed out, a broker restarted mid-transaction): the next
    /// checkpoint builds a new one, whose `init_transactions` aborts
    /// whatever the old one left open. Not after a fatal error (a fence):
    /// see `fatal`.
    producer: Option<ThreadedProducer<Deliveries>>,
    /// The producer's fatal error, reported to the instance: no new
    /// producer is made (after a fence it would fence the newer holder of
    /// the id back, [`super::fatal`]), and every commit fails with it.
    fatal: Option<std::sync::Arc<super::FatalError>>,
    config: ClientConfig,
    /// Events not yet committed, by dataflow time, each as the Avro binary
    /// of the envelope (encoded once: saved with a checkpoint as they are,
    /// produced from them).
    buffer: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Events stamped before this barrier are in a committed transaction.
    committed: u64,
    /// The marker partition whose committed offset records `committed`.
    marker: (String, i32),
    group: ConsumerGroupMetadata,
}

enum Mode {
    AtLeastOnce(ThreadedProducer<Deliveries>),
    ExactlyOnce(Mutex<Transactions>),
}

/// Produces derived events.
pub struct DerivedProducer {
    mode: Mode,
    fatal: super::FatalSignal,
    schema_ids: super::registry::SchemaIds,
    metrics: Metrics,
    backpressure: Backpressure,
    /// Set by [`DerivedProducer::stop_waiting`]: the instance is stopping.
    stopping: std::sync::atomic::AtomicBool,
}

/// How long a derived event waits for others to share its produce request
/// (`linger.ms`): Kafka Streams' default. Derived topics are read by
/// analytics, not by the live path (the WebSocket fanout is fed by the
/// dataflow directly). At 5 ms the producer sent a request per partition
/// every few ms, ~500 a second at 10 K events/s: on two cores the
/// broker's request handling competed with the mirror the live path waits
/// for (docs/BENCHMARKS.md "Derived topics linger as Kafka Streams'").
const LINGER_MS: &str = "100";

impl DerivedProducer {
    /// Connects; in exactly-once mode, also fences an older producer with
    /// the same id (aborting its open transaction) and reads the barrier the
    /// last committed transaction recorded.
    pub fn new(
        brokers: &super::Brokers,
        metrics: Metrics,
        delivery: &Delivery,
        backpressure: Backpressure,
    ) -> Result<DerivedProducer, super::KafkaError> {
        let mut config = client_config(brokers);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", LINGER_MS)
            .set("client.id", "inkstream-derived");
        // Exactly once already loses nothing (a failed transaction is
        // aborted and its events committed by the next checkpoint), and a
        // transactional producer's deliveries must time out within its
        // transaction: waiting is for at least once.
        let backpressure = match delivery {
            Delivery::AtLeastOnce => backpressure,
            Delivery::ExactlyOnce { .. } => Backpressure::Drop,
        };
        if backpressure == Backpressure::Wait {
            // No delivery times out: the queue holds what the broker has
            // not taken, and a full queue holds the dataflow back.
            config.set("message.timeout.ms", "0");
        }
        let fatal = &brokers.fatal;
        let mode = match delivery {
            Delivery::AtLeastOnce => Mode::AtLeastOnce(producer(&config, &metrics, fatal)?),
            Delivery::ExactlyOnce { transactional_id } => {
                config.set("transactional.id", transactional_id);
                let producer = producer(&config, &metrics, fatal)?;
                producer.init_transactions(Duration::from_secs(30))?;
                let consumer: BaseConsumer = client_config(brokers)
                    .set("group.id", transactional_id)
                    .set("enable.auto.commit", "false")
                    .create()?;
                let marker = (derived_topic("system.dead_letter"), 0);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&marker.0, marker.1);
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(30))?
                    .elements()
                    .first()
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) if o > 0 => Some(o as u64),
                        _ => None,
                    })
                    .unwrap_or(0);
                let group = consumer
                    .group_metadata()
                    .ok_or_else(|| super::KafkaError::NoGroupMetadata(transactional_id.clone()))?;
                tracing::info!(
                    committed_barrier = committed,
                    "derived topics: exactly once (transactional, committed per checkpoint)"
                );
                Mode::ExactlyOnce(Mutex::new(Transactions {
                    producer: Some(producer),
                    fatal: None,
                    config,
                    buffer: BTreeMap::new(),
                    committed,
                    marker,
                    group,
                }))
            }
        };
        Ok(DerivedProducer {
            mode,
            fatal: fatal.clone(),
            schema_ids: brokers.schema_ids.clone(),
            metrics,
            backpressure,
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The instance is stopping: a full queue no longer waits (see the
    /// module doc). Call before the dataflow drains.
    pub fn stop_waiting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// At shutdown, after the dataflow drained: at least once, waits until
    /// every enqueued event is delivered (or `timeout`). Exactly once, what
    /// no checkpoint committed is left to the replay after the restart.
    pub fn flush(&self, timeout: Duration) {
        if let Mode::AtLeastOnce(producer) = &self.mode
            && let Err(e) = producer.flush(timeout)
        {
            tracing::warn!(error = %e, "derived events still undelivered at shutdown");
        }
    }

    /// Takes derived events stamped with dataflow time `time`: produced now
    /// (at least once) or buffered until the checkpoint after `time` (no
    /// time: the next checkpoint).
    pub fn send(&self, time: Option<u64>, events: &[Event]) {
        match &self.mode {
            Mode::ExactlyOnce(txn) => {
                let mut t = txn.lock().unwrap_or_else(|p| p.into_inner());
                // Before the committed barrier: a replay of what a committed
                // transaction already holds.
                let time = time.unwrap_or(t.committed);
                if time >= t.committed {
                    let slot = t.buffer.entry(time).or_default();
                    for e in events {
                        match schemas::binary::encode(e) {
                            Ok(bytes) => slot.push(bytes),
                            Err(error) => self.unencodable(e, error),
                        }
                    }
                }
            }
            Mode::AtLeastOnce(producer) => {
                for e in events {
                    if self.produce(producer, e).is_err() {
                        producer.context().lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// At least once: makes the derived topics hold every event sent so far
    /// (the checkpoint at `barrier` completes only if this succeeds).
    /// Exactly once there is nothing to do before the checkpoint completes:
    /// see [`DerivedProducer::pending`] and [`DerivedProducer::commit`].
    pub fn sync(&self, barrier: u64) -> Result<(), DeliveryError> {
        let _ = barrier;
        match &self.mode {
            Mode::AtLeastOnce(producer) => self.counted(flush_all(producer)),
            Mode::ExactlyOnce(_) => Ok(()),
        }
    }

    /// Exactly once, the first phase: the events stamped before `barrier`
    /// that no transaction has committed, encoded, for the checkpoint at
    /// `barrier` to hold. `None` at least once, or when a transaction
    /// already committed `barrier` (nothing to hold).
    pub fn pending(&self, barrier: u64) -> Result<Option<Pending>, DeliveryError> {
        let Mode::ExactlyOnce(txn) = &self.mode else {
            return Ok(None);
        };
        let t = txn.lock().unwrap_or_else(|p| p.into_inner());
        if barrier <= t.committed {
            // Another worker of this process completed and committed it.
            return Ok(None);
        }
        let held = t.buffer.range(..barrier);
        Ok(Some(
            held.flat_map(|(time, events)| events.iter().map(|e| (*time, e.clone())))
                .collect(),
        ))
    }

    /// Exactly once, the second phase, once the checkpoint at `barrier` is
    /// complete: one transaction with every buffered event stamped before
    /// it and the marker `barrier`. On failure the events stay buffered: the
    /// next checkpoint commits them, and a restore from this one does.
    pub fn commit(&self, barrier: u64) -> Result<(), DeliveryError> {
        let Mode::ExactlyOnce(txn) = &self.mode else {
            return Ok(());
        };
        let mut t = txn.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.transact(&mut t, barrier);
        self.counted(result)
    }

    /// Exactly once, at the start of a dataflow with checkpoints: `barrier`
    /// is the restored checkpoint (`None`: none), `pending` what
    /// [`DerivedProducer::pending`] gave for it. Those events are committed
    /// now, unless the marker shows their transaction committed (the process
    /// died after the checkpoint completed and before it committed). A
    /// failed commit leaves them buffered for the next checkpoint. A marker
    /// ahead of the restored checkpoint is reported: what is derived again
    /// before it is dropped as committed, which holds only if the
    /// transactions after the checkpoint hold it.
    pub fn restore(
        &self,
        barrier: Option<u64>,
        pending: Option<Pending>,
    ) -> Result<(), DeliveryError> {
        let Mode::ExactlyOnce(txn) = &self.mode else {
            return Ok(());
        };
        let mut t = txn.lock().unwrap_or_else(|p| p.into_inner());
        if t.committed > barrier.unwrap_or(0) {
            tracing::warn!(
                restored_barrier = barrier.unwrap_or(0),
                committed_barrier = t.committed,
                "derived topics: the last committed transaction is ahead of the restored checkpoint \
                 (checkpoints deleted, or written by a build before 2026-12-06 that committed \
                 before completing); events derived again before it are dropped as committed, and \
                 some may be missing"
            );
        }
        let (Some(barrier), Some(pending)) = (barrier, pending) else {
            return Ok(());
        };
        if barrier <= t.committed {
            tracing::info!(
                barrier,
                committed_barrier = t.committed,
                "derived topics: the restored checkpoint's transaction was committed"
            );
            return Ok(());
        }
        let events = pending.len();
        for (time, bytes) in pending {
            t.buffer.entry(time).or_default().push(bytes);
        }
        tracing::info!(
            barrier,
            committed_barrier = t.committed,
            events,
            "derived topics: committing the restored checkpoint's transaction (the process \
             stopped between its checkpoint and its commit)"
        );
        let result = self.transact(&mut t, barrier);
        self.counted(result)
    }

    fn counted(&self, result: Result<(), DeliveryError>) -> Result<(), DeliveryError> {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .derived_syncs
            .with_label_values(&[outcome])
            .inc();
        result
    }

    /// One transaction: the buffered events before `barrier` and the marker.
    fn transact(&self, t: &mut Transactions, barrier: u64) -> Result<(), DeliveryError> {
        if barrier <= t.committed {
            return Ok(());
        }
        if let Some(fatal) = &t.fatal {
            return Err(DeliveryError::Fatal(fatal.clone()));
        }
        let producer = match t.producer.take() {
            Some(p) => p,
            None => {
                let p = producer(&t.config, &self.metrics, &self.fatal)
                    .map_err(DeliveryError::Transaction)?;
                p.init_transactions(SYNC_TIMEOUT)
                    .map_err(DeliveryError::Transaction)?;
                p
            }
        };
        let later = t.buffer.split_off(&barrier);
        let batch = std::mem::replace(&mut t.buffer, later);
        tracing::debug!(
            barrier,
            events = batch.values().map(Vec::len).sum::<usize>(),
            "committing the derived-topics transaction"
        );
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&t.marker.0, t.marker.1, Offset::Offset(barrier as i64))
            .map_err(DeliveryError::Transaction)?;
        let attempt = (|| {
            producer.begin_transaction()?;
            for bytes in batch.values().flatten() {
                self.produce_encoded(&producer, bytes)?;
            }
            super::settle_transactional(
                "send_offsets_to_transaction",
                TRANSACTION_TIMEOUT,
                || producer.send_offsets_to_transaction(&marker, &t.group, SYNC_TIMEOUT),
            )?;
            super::settle_transactional("commit_transaction", TRANSACTION_TIMEOUT, || {
                producer.commit_transaction(SYNC_TIMEOUT)
            })
        })();
        match attempt {
            Ok(()) => {
                t.committed = barrier;
                t.producer = Some(producer);
                Ok(())
            }
            Err(e) => {
                // A fatal error (a fence) leaves nothing to abort, and no
                // new producer may take over; the abort may be what finds it.
                let mut fatal = producer.client().fatal_error();
                if fatal.is_none() {
                    match producer.abort_transaction(SYNC_TIMEOUT) {
                        Ok(()) => t.producer = Some(producer),
                        Err(abort) => {
                            fatal = producer.client().fatal_error();
                            if fatal.is_none() {
                                tracing::warn!(
                                    error = %abort,
                                    "aborting the derived-topics transaction failed; a new producer takes over at the next checkpoint"
                                );
                            }
                        }
                    }
                }
                if let Some((code, reason)) = fatal {
                    let error = super::FatalError {
                        client: "derived",
                        code: Some(code),
                        reason,
                    };
                    self.fatal.raise(&self.metrics, error.clone());
                    t.fatal = Some(std::sync::Arc::new(error));
                }
                // Back into the buffer: the next checkpoint commits them.
                for (time, mut events) in batch {
                    let slot = t.buffer.entry(time).or_default();
                    events.append(slot);
                    *slot = events;
                }
                Err(DeliveryError::Transaction(e))
            }
        }
    }

    /// Enqueues one derived event; an error if it could not be (the queue
    /// stayed full for 5 s, or the producer refused it).
    fn produce(
        &self,
        producer: &ThreadedProducer<Deliveries>,
        event: &Event,
    ) -> Result<(), rdkafka::error::KafkaError> {
        match schemas::binary::encode(event) {
            Ok(bytes) => self.produce_encoded(producer, &bytes),
            Err(error) => {
                self.unencodable(event, error);
                Err(rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::InvalidMessage,
                ))
            }
        }
    }

    /// A derived event that cannot be encoded (a defect): logged, dropped.
    fn unencodable(&self, event: &Event, error: schemas::binary::BinaryError) {
        let error = DeliveryError::Encode(error.to_string());
        tracing::error!(id = %event.id, %error, "derived event dropped");
    }

    /// [`DerivedProducer::produce`] of an event's Avro binary: its topic,
    /// key, headers and time read from the envelope's head, the value
    /// framed around the bytes.
    fn produce_encoded(
        &self,
        producer: &ThreadedProducer<Deliveries>,
        datum: &[u8],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let head = match schemas::binary::decode_head(datum) {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(error = %DeliveryError::Encode(e.to_string()), "derived event dropped");
                return Err(rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::InvalidMessage,
                ));
            }
        };
        let topic = derived_topic(head.event_type);
        let schema_id = self.schema_ids.for_topic(&topic);
        let value = schemas::confluent::frame(schema_id, datum);
        let schema_id = schema_id.to_string();
        let key = head.partition_key();
        let started = std::time::Instant::now();
        let mut warned = started;
        loop {
            let headers = super::record_headers(head.event_type, head.id, schema_id.as_str());
            let record = BaseRecord::to(&topic)
                .key(key)
                .payload(&value)
                .headers(headers)
                .timestamp(head.ts);
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {}
                Err((e, _)) => {
                    tracing::warn!(error = %e, %topic, "cannot enqueue a derived event");
                    return Err(e);
                }
            }
            let waited = started.elapsed();
            let wait =
                self.backpressure == Backpressure::Wait && !self.stopping.load(Ordering::Relaxed);
            if !wait && waited >= Duration::from_secs(5) {
                break;
            }
            if wait && warned.elapsed() >= Duration::from_secs(5) {
                warned = std::time::Instant::now();
                tracing::warn!(
                    waited_s = waited.as_secs(),
                    "the derived producer's queue is full (broker unreachable?); the dataflow waits for room"
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Without checkpoints the dataflow must not stall on the broker
        // (WebSocket fanout depends on it); at a stop, what followed the
        // last checkpoint is derived again by whoever resumes.
        self.metrics
            .derived_produced
            .with_label_values(&["dropped"])
            .inc();
        tracing::warn!(id = %head.id, "the producer queue stayed full for 5 s; derived event dropped");
        Err(rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::QueueFull,
        ))
    }
}

fn producer(
    config: &ClientConfig,
    metrics: &Metrics,
    fatal: &super::FatalSignal,
) -> Result<ThreadedProducer<Deliveries>, rdkafka::error::KafkaError> {
    config.create_with_context(Deliveries {
        metrics: metrics.clone(),
        fatal: fatal.clone(),
        lost: AtomicU64::new(0),
    })
}

/// At least once: everything enqueued delivered, and nothing ever lost.
fn flush_all(producer: &ThreadedProducer<Deliveries>) -> Result<(), DeliveryError> {
    producer
        .flush(SYNC_TIMEOUT)
        .map_err(|_| DeliveryError::Pending(SYNC_TIMEOUT))?;
    match producer.context().lost.load(Ordering::Relaxed) {
        0 => Ok(()),
        n => Err(DeliveryError::Lost(n)),
    }
}
