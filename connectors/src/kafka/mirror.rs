//! The mirror: Redis Streams (or the embedded log) → Kafka topics.
//!
//! A consumer group on the log (`mirror`) reads entries and produces each
//! event to `inkstream.events.<category>`, keyed by its partition key, value
//! in the Confluent wire format, headers `event_type`, `event_id`,
//! `schema_id`, record timestamp = event time. A log entry is acknowledged
//! (XACK) only after Kafka's delivery report for it: at-least-once. After a
//! crash, or when a delivery fails (broker down), the unacknowledged entries
//! are produced again — consumers deduplicate by `event_id`. The producer is
//! idempotent, so its own retries never duplicate.
//!
//! **Pipelined.** New entries are read a page at a time; a page is produced
//! and the wait for its delivery reports goes in flight while the next page
//! is read and produced (up to `in_flight` pages). Pages are settled in the
//! order they were produced — acknowledged with one XACK per stream as their
//! reports complete — so acknowledgements follow the log's order per stream.
//! A full page means a backlog: it goes to a producer tuned for throughput
//! ([`ProducerTuning::BULK`]); otherwise to one tuned for latency
//! ([`ProducerTuning::LIVE`]). The mirror switches producers only with
//! nothing in flight, so no record overtakes an earlier one of its
//! partition. Pending and claimed entries are read from the start of the
//! consumer's list, so those pages are settled before the next read.
//!
//! Broker outage: ingest keeps appending to Redis; the mirror backs off
//! (capped exponential), re-creates missing topics (an in-memory broker comes
//! back empty), re-reads its pending entries and catches up.
//!
//! **Several instances.** On a shared Redis log one instance at a time
//! mirrors: `serve` runs this loop only while it holds the lease
//! `<prefix>:lease:mirror` (two mirrors reading one stream would produce its
//! pages side by side, and a partition would no longer hold a key's events
//! in log order). Each instance has its own consumer name in the one group
//! (`mirror-<host>:<port>`: stable at a place, so a restart re-reads its own
//! pending entries). Every `claim_idle_after` the mirror also claims
//! (XAUTOCLAIM) entries pending with *any* consumer for that long — the
//! in-flight pages of a holder that died — and produces them. So no entry
//! waits for its dead reader's restart, and trimming (which waits for the
//! group) is never blocked by a dead consumer for longer than that. A claim
//! may re-produce an entry the dead holder had delivered but not
//! acknowledged: a duplicate with the same `event_id`, as after any crash.
//!
//! **Poison records.** A record that fails with a permanent error (larger
//! than the topic's `max.message.bytes`, invalid) `max_attempts` times is
//! produced instead to `inkstream.mirror.dead_letter` (JSON: stream, entry id,
//! event id and type, error, size; keyed by event id), counted in
//! `inkstream_mirror_dead_lettered_total`, and acknowledged, so the mirror
//! moves on instead of re-reading it forever. Transient errors (broker down,
//! timeouts) never dead-letter: those entries wait in the log.

use super::{ensure_topics, events_topic};
use crate::event_log::{EntryRef, EventLog, LogEntry};
use crate::metrics::Metrics;
use futures_util::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a producer batches records. The mirror keeps two producers: one tuned
/// for latency, used while it keeps up with live traffic, and one tuned for
/// throughput, used while it drains a backlog (a read returned a full page).
/// It switches only with nothing in flight, so records of one partition
/// never overtake each other across the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerTuning {
    /// librdkafka `linger.ms`: how long a partition's batch waits to fill.
    pub linger: Duration,
    /// librdkafka `batch.size`: the largest request batch in bytes.
    pub batch_bytes: usize,
}

impl ProducerTuning {
    /// Live traffic: send at once (`linger.ms` 1, batches up to 1 MB).
    pub const LIVE: ProducerTuning = ProducerTuning {
        linger: Duration::from_millis(1),
        batch_bytes: 1_000_000,
    };
    /// A backlog: wait 20 ms to fill batches of up to 4 MB.
    pub const BULK: ProducerTuning = ProducerTuning {
        linger: Duration::from_millis(20),
        batch_bytes: 4_000_000,
    };
}

/// The mirror's producer: idempotent (`acks=all`; retries never duplicate or
/// reorder within a partition) with `tuning`, and a local queue large
/// enough for every page in flight.
pub fn producer(
    brokers: impl Into<super::Brokers>,
    tuning: ProducerTuning,
) -> Result<FutureProducer, super::KafkaError> {
    Ok(super::client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", tuning.linger.as_millis().to_string())
        .set("batch.size", tuning.batch_bytes.to_string())
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Settings of the mirror.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub brokers: super::Brokers,
    /// Consumer group on the log (default `mirror`).
    pub group: String,
    /// Consumer name, stable across restarts (default `mirror-0`).
    pub consumer: String,
    /// Partitions of topics it creates (default 8).
    pub partitions: i32,
    /// Entries read per page (per stream with Redis; default 2,000).
    pub batch: usize,
    /// Pages produced whose delivery reports are still awaited (default 4):
    /// the next page is read and produced while earlier ones are delivered.
    /// 1 means read → produce → wait → acknowledge, serially.
    pub in_flight: usize,
    /// The producer while the mirror keeps up (latency).
    pub live: ProducerTuning,
    /// The producer while it drains a backlog (throughput).
    pub bulk: ProducerTuning,
    /// Entries pending with any consumer this long are claimed (default 30 s).
    pub claim_idle_after: Duration,
    /// Failures with a permanent error before a record is dead-lettered
    /// (default 5).
    pub max_attempts: u32,
    /// Take over at start (default false): before reading new entries,
    /// claim every entry pending with another consumer however briefly —
    /// set by the holder of the mirror lease, whose predecessor has stopped.
    /// Its pages then reach their partitions before anything newer (claimed
    /// `claim_idle_after` later, they would land behind newer entries).
    pub claim_at_start: bool,
}

impl MirrorConfig {
    pub fn new(brokers: impl Into<super::Brokers>) -> MirrorConfig {
        MirrorConfig {
            brokers: brokers.into(),
            group: "mirror".into(),
            consumer: "mirror-0".into(),
            partitions: 8,
            batch: 2_000,
            in_flight: 4,
            live: ProducerTuning::LIVE,
            bulk: ProducerTuning::BULK,
            claim_idle_after: Duration::from_secs(30),
            max_attempts: 5,
            claim_at_start: false,
        }
    }
}

/// Where the mirror sends what it cannot produce (see the module doc).
pub const DEAD_LETTER_TOPIC: &str = "inkstream.mirror.dead_letter";

fn topics() -> Vec<String> {
    schemas::Category::ALL
        .iter()
        .map(|c| events_topic(*c))
        .chain([DEAD_LETTER_TOPIC.to_owned()])
        .collect()
}

/// A delivery failure that the same record will meet again on every try.
fn permanent(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::BadMessage
        )
    )
}

/// One entry's failed delivery.
struct Failure {
    entry: EntryRef,
    error: String,
    permanent: bool,
}

/// A page whose delivery reports have all arrived.
struct Settled {
    entries: Vec<LogEntry>,
    delivered: Vec<EntryRef>,
    failures: Vec<Failure>,
}

/// Which producer a page goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Bulk,
}

/// The mirror's state between rounds.
struct Mirror {
    log: EventLog,
    config: MirrorConfig,
    metrics: Metrics,
    schema_ids: super::registry::SchemaIds,
    live: FutureProducer,
    bulk: FutureProducer,
    mode: Mode,
    /// Pages produced, oldest first; settled and acknowledged in this order.
    in_flight: VecDeque<JoinHandle<Settled>>,
    /// Permanent failures per entry (`stream/id`), for poison records.
    attempts: HashMap<String, u32>,
    /// Partitions per event topic, as the broker last said.
    partitions: HashMap<String, i32>,
}

/// The partition of a record with partition key `key` in a topic of
/// `count` partitions: the hash that picks the event's Redis shard
/// (`stable_hash(key) % shards`). With as many partitions as shards (8 and 8
/// by default), or a multiple, each partition takes one shard's entries in
/// the shard's order, so event time is as ordered in a partition as in the
/// log: a partition holding several shards would interleave their pages
/// (pages of a backlog span minutes of event time), and a reader's
/// per-partition watermark would make the later page's events late.
pub fn partition_for(key: &str, count: i32) -> i32 {
    (schemas::stable_hash(key) % count.max(1) as u64) as i32
}

/// Partitions per event topic, from the broker's metadata (blocking).
fn partition_counts(producer: &FutureProducer) -> Result<HashMap<String, i32>, super::KafkaError> {
    use rdkafka::producer::Producer;
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let wanted = topics();
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| wanted.iter().any(|w| w == t.name()) && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// Runs the mirror until `shutdown` flips.
pub async fn run(
    log: EventLog,
    config: MirrorConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    /// `inkstream_mirror_active` is 1 while this runs, however it ends.
    struct Active(prometheus::IntGauge);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.set(0);
        }
    }
    metrics.mirror_active.set(1);
    let _active = Active(metrics.mirror_active.clone());
    let mut backoff_ms = 100u64;
    let mut need_topics = true;
    let mut reread_pending = true;
    let (live, bulk) = loop {
        match producer(&config.brokers, config.live)
            .and_then(|l| Ok((l, producer(&config.brokers, config.bulk)?)))
        {
            Ok(p) => break p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the Kafka producer; retrying");
                if sleep_or_stop(&mut shutdown, backoff_ms).await {
                    return;
                }
            }
        }
    };
    let mut m = Mirror {
        log,
        schema_ids: config.brokers.schema_ids.clone(),
        config,
        metrics,
        live,
        bulk,
        mode: Mode::Live,
        in_flight: VecDeque::new(),
        attempts: HashMap::new(),
        partitions: HashMap::new(),
    };
    let config = m.config.clone();
    let mut last_claim = tokio::time::Instant::now();
    let mut takeover = config.claim_at_start;
    let mut failed: Option<String> = None;
    while !*shutdown.borrow() {
        if let Some(error) = failed.take() {
            // Settle what is still in flight first: its delivered entries
            // are acknowledged, its failures re-read with the rest.
            m.drain().await;
            m.metrics
                .mirror_errors
                .with_label_values(&["produce"])
                .inc();
            tracing::warn!(%error, retry_in_ms = backoff_ms, "mirror: delivery failed; will re-read pending entries");
            // Topics may have vanished (an in-memory broker restarted).
            need_topics = true;
            reread_pending = true;
            if sleep_or_stop(&mut shutdown, backoff_ms).await {
                return;
            }
            backoff_ms = (backoff_ms * 2).min(5_000);
            continue;
        }
        if need_topics {
            let counts = match ensure_topics(&config.brokers, &topics(), config.partitions).await {
                Ok(()) => {
                    let producer = m.live.clone();
                    tokio::task::spawn_blocking(move || partition_counts(&producer))
                        .await
                        .unwrap_or_else(|e| Err(super::KafkaError::Blocking(e.to_string())))
                }
                Err(e) => Err(e),
            };
            match counts {
                Ok(counts) => {
                    m.partitions = counts;
                    need_topics = false;
                }
                Err(e) => {
                    m.metrics.mirror_errors.with_label_values(&["topics"]).inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff_ms, "creating topics failed");
                    if sleep_or_stop(&mut shutdown, backoff_ms).await {
                        return;
                    }
                    backoff_ms = (backoff_ms * 2).min(5_000);
                    continue;
                }
            }
        }
        let claim_due = takeover || last_claim.elapsed() >= config.claim_idle_after;
        // Pending and claimed entries are read from the start of the
        // consumer's list: the previous page must be settled before the next
        // read, or it would be read again. New entries pipeline.
        if (reread_pending || claim_due) && !m.in_flight.is_empty() {
            failed = m.drain().await;
            continue;
        }
        if m.in_flight.len() >= config.in_flight.max(1) {
            failed = m.settle(1).await;
            continue;
        }
        let read = if reread_pending {
            let r = async {
                m.log.ensure_group(&config.group).await?;
                m.log
                    .read_pending(&config.group, &config.consumer, config.batch)
                    .await
            }
            .await;
            if matches!(&r, Ok(v) if v.is_empty()) {
                reread_pending = false;
            }
            r
        } else if claim_due {
            // Entries a dead consumer read and never acknowledged.
            let r = m
                .log
                .claim_idle(
                    &config.group,
                    &config.consumer,
                    if takeover {
                        Duration::ZERO
                    } else {
                        config.claim_idle_after
                    },
                    config.batch,
                )
                .await;
            if matches!(&r, Ok(v) if v.len() < config.batch) {
                last_claim = tokio::time::Instant::now();
                takeover = false;
            }
            if let Ok(v) = &r
                && !v.is_empty()
            {
                tracing::info!(
                    entries = v.len(),
                    "mirror: claimed entries a stopped consumer left pending"
                );
            }
            r
        } else {
            // With pages in flight, do not wait for new entries: settle the
            // oldest page instead when there are none.
            let block = if m.in_flight.is_empty() {
                Duration::from_millis(250)
            } else {
                Duration::ZERO
            };
            m.log
                .read_new(&config.group, &config.consumer, config.batch, block)
                .await
        };
        let entries = match read {
            Ok(e) => e,
            Err(e) => {
                m.metrics.mirror_errors.with_label_values(&["log"]).inc();
                tracing::warn!(error = %e, "mirror: reading the log failed");
                failed = m.drain().await;
                if sleep_or_stop(&mut shutdown, backoff_ms).await {
                    return;
                }
                backoff_ms = (backoff_ms * 2).min(5_000);
                continue;
            }
        };
        if entries.is_empty() {
            if !m.in_flight.is_empty() {
                failed = m.settle(1).await;
            }
            continue;
        }
        let mode = if entries.len() >= config.batch {
            Mode::Bulk
        } else {
            Mode::Live
        };
        if mode != m.mode {
            // Nothing of the other producer in flight: no overtaking.
            failed = m.drain().await;
            m.mode = mode;
        }
        m.send(entries).await;
        // Acknowledge pages whose reports have all arrived, without waiting.
        let ready = m.in_flight.iter().take_while(|h| h.is_finished()).count();
        if ready > 0 && failed.is_none() {
            failed = m.settle(ready).await;
        }
        if failed.is_none() {
            backoff_ms = 100;
        }
    }
    // A graceful stop: acknowledge what was delivered.
    m.drain().await;
}

impl Mirror {
    /// Settles every page in flight.
    async fn drain(&mut self) -> Option<String> {
        let n = self.in_flight.len();
        self.settle(n).await
    }

    /// Waits for the oldest `n` pages' delivery reports, dead-letters poison
    /// records, and acknowledges the delivered entries in one call (pages
    /// in order, so per stream in order). Returns the first transient
    /// failure.
    async fn settle(&mut self, n: usize) -> Option<String> {
        let mut delivered = Vec::new();
        let mut failed = None;
        for _ in 0..n.min(self.in_flight.len()) {
            let Some(handle) = self.in_flight.pop_front() else {
                break;
            };
            let page = match handle.await {
                Ok(p) => p,
                Err(e) => {
                    // The entries stay pending: they are read again.
                    failed.get_or_insert(format!("a delivery task failed: {e}"));
                    continue;
                }
            };
            if let Some(e) = self.page_outcome(page, &mut delivered).await {
                failed.get_or_insert(e);
            }
        }
        if !delivered.is_empty() {
            if let Err(e) = self.log.ack(&self.config.group, &delivered).await {
                // Unacknowledged: they will be produced again (at-least-once).
                self.metrics.mirror_errors.with_label_values(&["ack"]).inc();
                tracing::warn!(error = %e, "mirror: acknowledging in the log failed");
            }
            self.metrics.mirror_events.inc_by(delivered.len() as u64);
        }
        failed
    }

    /// Adds a settled page's delivered (and dead-lettered) entries to
    /// `delivered`; returns a failure that was not dead-lettered.
    async fn page_outcome(
        &mut self,
        page: Settled,
        delivered: &mut Vec<EntryRef>,
    ) -> Option<String> {
        if !self.attempts.is_empty() {
            for e in &page.delivered {
                self.attempts.remove(&format!("{}/{}", e.stream, e.id));
            }
        }
        delivered.extend(page.delivered);
        let mut failed = None;
        for f in page.failures {
            let key = format!("{}/{}", f.entry.stream, f.entry.id);
            let n = self.attempts.entry(key.clone()).or_default();
            if f.permanent {
                *n += 1;
            }
            if f.permanent && *n >= self.config.max_attempts {
                let n = *n;
                let entry = page.entries.iter().find(|e| e.entry == f.entry);
                if dead_letter(&self.live, entry, &f, n).await {
                    self.metrics.mirror_dead_lettered.inc();
                    self.attempts.remove(&key);
                    delivered.push(f.entry);
                    continue;
                }
            }
            failed.get_or_insert(f.error);
        }
        failed
    }

    /// Produces a page with the current mode's producer and puts the wait
    /// for its delivery reports in flight.
    async fn send(&mut self, entries: Vec<LogEntry>) {
        let producer = match self.mode {
            Mode::Live => &self.live,
            Mode::Bulk => &self.bulk,
        };
        let (deliveries, delivered, failures) = produce(
            producer,
            &entries,
            &self.schema_ids,
            &self.partitions,
            self.config.partitions,
            &self.metrics,
        )
        .await;
        self.in_flight.push_back(tokio::spawn(async move {
            let (refs, futures): (Vec<_>, Vec<_>) = deliveries.into_iter().unzip();
            let mut page = Settled {
                entries,
                delivered,
                failures,
            };
            for (entry, result) in refs.into_iter().zip(join_all(futures).await) {
                match result {
                    Ok(Ok(_)) => page.delivered.push(entry),
                    Ok(Err((e, _))) => page.failures.push(Failure {
                        entry,
                        error: e.to_string(),
                        permanent: permanent(&e),
                    }),
                    Err(_) => page.failures.push(Failure {
                        entry,
                        error: "delivery report dropped".to_owned(),
                        permanent: false,
                    }),
                }
            }
            page
        }));
    }
}

/// Produces a dead-letter record for a poison entry; true once delivered.
async fn dead_letter(
    producer: &FutureProducer,
    entry: Option<&LogEntry>,
    f: &Failure,
    attempts: u32,
) -> bool {
    let event = entry.and_then(|e| e.event.as_ref().ok());
    let id = event.map(|e| e.id.clone()).unwrap_or_default();
    let value = serde_json::json!({
        "stream": &*f.entry.stream,
        "entry_id": &*f.entry.id,
        "event_id": id,
        "type": event.map(|e| e.event_type()),
        "namespace": entry.and_then(|e| e.namespace.as_deref()),
        "error": f.error,
        "attempts": attempts,
        "bytes": event.and_then(|e| schemas::confluent::encode(e).ok()).map(|v| v.len()),
    })
    .to_string();
    let record = FutureRecord::to(DEAD_LETTER_TOPIC).key(&id).payload(&value);
    match producer.send(record, Duration::from_secs(10)).await {
        Ok(_) => {
            tracing::error!(entry = %f.entry.id, event_id = %id, error = %f.error, attempts,
                "mirror: poison record dead-lettered to {DEAD_LETTER_TOPIC}");
            true
        }
        Err((e, _)) => {
            tracing::warn!(error = %e, "mirror: dead-lettering a poison record failed");
            false
        }
    }
}

/// The delivery reports of one page, awaited in flight.
type Deliveries = Vec<(EntryRef, rdkafka::producer::DeliveryFuture)>;

/// Produces a page (in order). Returns the records handed to the producer
/// with their delivery futures, the entries to acknowledge without a record
/// (undecodable, unencodable) and those the producer refused.
async fn produce(
    producer: &FutureProducer,
    entries: &[LogEntry],
    schema_ids: &super::registry::SchemaIds,
    partitions: &HashMap<String, i32>,
    default_partitions: i32,
    metrics: &Metrics,
) -> (Deliveries, Vec<EntryRef>, Vec<Failure>) {
    let mut deliveries = Vec::with_capacity(entries.len());
    let mut delivered = Vec::new();
    let mut failures = Vec::new();
    for entry in entries {
        let event = match &entry.event {
            Ok(e) => e,
            Err(reason) => {
                // Cannot be represented in Avro: counted, logged, acknowledged.
                metrics
                    .mirror_errors
                    .with_label_values(&["undecodable"])
                    .inc();
                tracing::error!(entry = %entry.entry.id, %reason, "mirror: skipping an undecodable entry");
                delivered.push(entry.entry.clone());
                continue;
            }
        };
        let topic = events_topic(event.category());
        let schema_id = schema_ids.for_topic(&topic);
        let value = match schemas::confluent::encode_with(schema_id, event) {
            Ok(v) => v,
            Err(e) => {
                metrics.mirror_errors.with_label_values(&["encode"]).inc();
                tracing::error!(id = %event.id, error = %e, "mirror: cannot encode an event");
                delivered.push(entry.entry.clone());
                continue;
            }
        };
        let mut headers = super::event_headers(event, &schema_id.to_string());
        if let Some(ns) = entry.namespace.as_deref() {
            headers = headers.insert(rdkafka::message::Header {
                key: super::NAMESPACE_HEADER,
                value: Some(ns),
            });
        }
        let mut record = FutureRecord::to(&topic).key(event.partition_key());
        // Never librdkafka's own partitioner: one key must always map to
        // one partition. A topic the broker did not list (yet) has the
        // partitions this mirror creates topics with; if that is wrong the
        // produce fails and the counts are fetched again.
        let count = partitions
            .get(&topic)
            .copied()
            .unwrap_or(default_partitions);
        record = record.partition(partition_for(event.partition_key(), count));
        let mut record = record.payload(&value).headers(headers).timestamp(event.ts);
        // The local queue is full while earlier pages are delivered: wait
        // for room (bounded by the delivery timeout) rather than fail.
        let mut full_since: Option<Instant> = None;
        loop {
            match producer.send_result(record) {
                Ok(future) => {
                    deliveries.push((entry.entry.clone(), future));
                    break;
                }
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        && full_since.get_or_insert_with(Instant::now).elapsed()
                            < Duration::from_secs(30) =>
                {
                    // Counted in wall time: a 1 ms sleep takes longer on a
                    // busy machine, so counting sleeps overstated the bound.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    failures.push(Failure {
                        entry: entry.entry.clone(),
                        error: e.to_string(),
                        permanent: permanent(&e),
                    });
                    break;
                }
            }
        }
    }
    (deliveries, delivered, failures)
}

/// Sleeps `ms`, or returns true at once when shutdown was requested.
async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, ms: u64) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Publishes the mirror group's lag (entries not yet in Kafka and the age of
/// the oldest) every `every`, until `shutdown` flips.
pub async fn report_lag(
    log: EventLog,
    group: String,
    metrics: Metrics,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match log.group_lag(&group).await {
            Ok((entries, oldest_ms)) => {
                metrics.mirror_lag_events.set(entries as i64);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let age = oldest_ms.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
                metrics.mirror_lag_seconds.set(age);
            }
            Err(e) => tracing::debug!(error = %e, "mirror lag unavailable"),
        }
        if sleep_or_stop(&mut shutdown, every.as_millis() as u64).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partition_for;

    /// A partition takes the entries of one Redis shard only (the shard is
    /// `stable_hash(key) % shards`), so it keeps the shard's order: with as
    /// many partitions as shards, or a multiple.
    #[test]
    fn each_partition_takes_one_shard() {
        let shards = 8u64;
        for partitions in [8, 16, 24] {
            let mut shard_of = std::collections::HashMap::new();
            for i in 0..5_000 {
                let key = format!("u{i:05}");
                let shard = schemas::stable_hash(&key) % shards;
                let p = partition_for(&key, partitions);
                assert!((0..partitions).contains(&p));
                let first = *shard_of.entry(p).or_insert(shard);
                assert_eq!(
                    first, shard,
                    "partition {p} of {partitions} takes two shards"
                );
            }
            assert_eq!(shard_of.len(), partitions as usize, "every partition used");
        }
    }
}
