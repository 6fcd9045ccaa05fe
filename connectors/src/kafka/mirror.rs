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
//! Broker outage: ingest keeps appending to Redis; the mirror backs off
//! (capped exponential), re-creates missing topics (an in-memory broker comes
//! back empty), re-reads its pending entries and catches up.
//!
//! **Several instances.** Every instance runs a mirror, each with its own
//! consumer name in the one group (`mirror-<host>:<port>`: stable at a place,
//! so a restart re-reads its own pending entries): Redis hands each new
//! entry to one of them. Every `claim_idle_after` each mirror also claims
//! (XAUTOCLAIM) entries pending with *any* consumer for that long — the
//! in-flight batch of an instance that died — and produces them. So no entry
//! waits for its dead reader's restart, and trimming (which waits for the
//! group) is never blocked by a dead consumer for longer than that. A claim
//! may re-produce an entry a slow but live mirror is still delivering: a
//! duplicate with the same `event_id`, as after any crash.
//!
//! **Poison records.** A record that fails with a permanent error (larger
//! than the topic's `max.message.bytes`, invalid) `max_attempts` times is
//! produced instead to `inkstream.mirror.dead_letter` (JSON: stream, entry id,
//! event id and type, error, size; keyed by event id), counted in
//! `inkstream_mirror_dead_lettered_total`, and acknowledged, so the mirror
//! moves on instead of re-reading it forever. Transient errors (broker down,
//! timeouts) never dead-letter: those entries wait in the log.

use super::{ensure_topics, events_topic, idempotent_producer};
use crate::event_log::{EntryRef, EventLog, LogEntry};
use crate::metrics::Metrics;
use futures_util::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use tokio::sync::watch;

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
    /// Entries read and produced per round (default 2,000): the bound on
    /// records in flight.
    pub batch: usize,
    /// Entries pending with any consumer this long are claimed (default 30 s).
    pub claim_idle_after: Duration,
    /// Failures with a permanent error before a record is dead-lettered
    /// (default 5).
    pub max_attempts: u32,
}

impl MirrorConfig {
    pub fn new(brokers: impl Into<super::Brokers>) -> MirrorConfig {
        MirrorConfig {
            brokers: brokers.into(),
            group: "mirror".into(),
            consumer: "mirror-0".into(),
            partitions: 8,
            batch: 2_000,
            claim_idle_after: Duration::from_secs(30),
            max_attempts: 5,
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

/// Runs the mirror until `shutdown` flips.
pub async fn run(
    log: EventLog,
    config: MirrorConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff_ms = 100u64;
    let mut need_topics = true;
    let mut reread_pending = true;
    let producer = loop {
        match idempotent_producer(&config.brokers) {
            Ok(p) => break p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the Kafka producer; retrying");
                if sleep_or_stop(&mut shutdown, backoff_ms).await {
                    return;
                }
            }
        }
    };
    let schema_ids = config.brokers.schema_ids.clone();
    // Permanent failures per entry (`stream/id`), for poison records.
    let mut attempts: std::collections::HashMap<String, u32> = Default::default();
    let mut last_claim = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        if need_topics {
            match ensure_topics(&config.brokers, &topics(), config.partitions).await {
                Ok(()) => need_topics = false,
                Err(e) => {
                    metrics.mirror_errors.with_label_values(&["topics"]).inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff_ms, "creating topics failed");
                    if sleep_or_stop(&mut shutdown, backoff_ms).await {
                        return;
                    }
                    backoff_ms = (backoff_ms * 2).min(5_000);
                    continue;
                }
            }
        }
        let read = if reread_pending {
            let r = async {
                log.ensure_group(&config.group).await?;
                log.read_pending(&config.group, &config.consumer, config.batch)
                    .await
            }
            .await;
            if matches!(&r, Ok(v) if v.is_empty()) {
                reread_pending = false;
            }
            r
        } else if last_claim.elapsed() >= config.claim_idle_after {
            // Entries a dead consumer read and never acknowledged.
            let r = log
                .claim_idle(
                    &config.group,
                    &config.consumer,
                    config.claim_idle_after,
                    config.batch,
                )
                .await;
            if matches!(&r, Ok(v) if v.len() < config.batch) {
                last_claim = tokio::time::Instant::now();
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
            log.read_new(
                &config.group,
                &config.consumer,
                config.batch,
                Duration::from_millis(250),
            )
            .await
        };
        let entries = match read {
            Ok(e) => e,
            Err(e) => {
                metrics.mirror_errors.with_label_values(&["log"]).inc();
                tracing::warn!(error = %e, "mirror: reading the log failed");
                if sleep_or_stop(&mut shutdown, backoff_ms).await {
                    return;
                }
                backoff_ms = (backoff_ms * 2).min(5_000);
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        let (mut delivered, failures) = produce(&producer, &entries, &schema_ids, &metrics).await;
        for e in &delivered {
            attempts.remove(&format!("{}/{}", e.stream, e.id));
        }
        let mut failed = None;
        for f in failures {
            let key = format!("{}/{}", f.entry.stream, f.entry.id);
            let n = attempts.entry(key.clone()).or_default();
            if f.permanent {
                *n += 1;
            }
            if f.permanent && *n >= config.max_attempts {
                let n = *n;
                let entry = entries.iter().find(|e| e.entry == f.entry);
                if dead_letter(&producer, entry, &f, n).await {
                    metrics.mirror_dead_lettered.inc();
                    attempts.remove(&key);
                    delivered.push(f.entry);
                    continue;
                }
            }
            failed.get_or_insert(f.error);
        }
        if !delivered.is_empty() {
            if let Err(e) = log.ack(&config.group, &delivered).await {
                // Unacknowledged: they will be produced again (at-least-once).
                metrics.mirror_errors.with_label_values(&["ack"]).inc();
                tracing::warn!(error = %e, "mirror: acknowledging in the log failed");
            }
            metrics.mirror_events.inc_by(delivered.len() as u64);
        }
        if let Some(error) = failed {
            metrics.mirror_errors.with_label_values(&["produce"]).inc();
            tracing::warn!(%error, retry_in_ms = backoff_ms, "mirror: delivery failed; will re-read pending entries");
            // Topics may have vanished (an in-memory broker restarted).
            need_topics = true;
            reread_pending = true;
            if sleep_or_stop(&mut shutdown, backoff_ms).await {
                return;
            }
            backoff_ms = (backoff_ms * 2).min(5_000);
        } else {
            backoff_ms = 100;
        }
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

/// Produces a batch and waits for every delivery report. Returns the
/// entries to acknowledge and the failed ones.
async fn produce(
    producer: &FutureProducer,
    entries: &[LogEntry],
    schema_ids: &super::registry::SchemaIds,
    metrics: &Metrics,
) -> (Vec<EntryRef>, Vec<Failure>) {
    let mut deliveries = Vec::with_capacity(entries.len());
    let mut delivered = Vec::with_capacity(entries.len());
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
        let record = FutureRecord::to(&topic)
            .key(event.partition_key())
            .payload(&value)
            .headers(headers)
            .timestamp(event.ts);
        match producer.send_result(record) {
            Ok(future) => deliveries.push((entry.entry.clone(), future)),
            Err((e, _)) => failures.push(Failure {
                entry: entry.entry.clone(),
                error: e.to_string(),
                permanent: permanent(&e),
            }),
        }
    }
    let (refs, futures): (Vec<_>, Vec<_>) = deliveries.into_iter().unzip();
    for (entry, result) in refs.into_iter().zip(join_all(futures).await) {
        match result {
            Ok(Ok(_)) => delivered.push(entry),
            Ok(Err((e, _))) => failures.push(Failure {
                entry,
                error: e.to_string(),
                permanent: permanent(&e),
            }),
            Err(_) => failures.push(Failure {
                entry,
                error: "delivery report dropped".to_owned(),
                permanent: false,
            }),
        }
    }
    (delivered, failures)
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
