//! Producing one page of the mirror: each entry's record (or its dead
//! letter, after `max_attempts` permanent failures) in log order, its
//! delivery report counted in the page's [`Page`].
//!
//! An event read from Redis is forwarded as stored: its record's value is
//! the Confluent frame around the bytes the log holds (the same Avro
//! binary of the envelope), and only the envelope's head is read for the
//! topic, key, headers and timestamp; the payload is neither decoded nor
//! encoded again. The log holds only what inkstream's append wrote after
//! validating it; a payload that still does not decode is the reader's
//! undecodable record (the dataflow dead-letters it). An event of the
//! embedded log is encoded.

use super::reports::{MirrorProducer, Page};
use crate::event_log::{EntryRef, ForwardEntry, Undecodable};
use crate::kafka::events_topic;
use crate::metrics::Metrics;
use rdkafka::producer::BaseRecord;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the mirror sends what it cannot produce (see the mirror's module doc).
pub const DEAD_LETTER_TOPIC: &str = "inkstream.mirror.dead_letter";

/// A delivery failure that the same record will meet again on every try.
pub(super) fn permanent(e: &rdkafka::error::KafkaError) -> bool {
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

/// One record's failed delivery.
pub(super) struct Failure {
    pub(super) entry: EntryRef,
    /// The event's place in its packed entry (0 for an entry of one event).
    pub(super) index: u32,
    pub(super) error: String,
    pub(super) permanent: bool,
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

/// The dead letter of a poison entry: its key (the event id) and value.
fn dead_letter(entry: &ForwardEntry, error: &str, attempts: u32) -> (String, String) {
    let event = entry.caller_event().ok();
    let event = event.as_deref();
    let id = event.map(|e| e.id.to_string()).unwrap_or_default();
    let value = serde_json::json!({
        "stream": &*entry.entry().stream,
        "entry_id": &*entry.entry().id,
        "event_id": id,
        "type": event.map(|e| e.event_type()),
        "namespace": entry.namespace(),
        "error": error,
        "attempts": attempts,
        "bytes": event.and_then(|e| schemas::confluent::encode(e).ok()).map(|v| v.len()),
    })
    .to_string();
    (id, value)
}

/// Where a category's records go: its topic, the id of its value schema
/// (and as the `schema_id` header's text) and the topic's partitions.
struct Route {
    topic: String,
    schema_id: u32,
    schema_id_text: String,
    partitions: i32,
}

/// The records of one page handed to the producer, whose reports are
/// awaited in flight: by the record's place in the page, the entry, the
/// event's place in it, and whether the record is the event's dead letter.
pub(super) struct Deliveries {
    pub(super) page: Arc<Page>,
    pub(super) records: Vec<(EntryRef, u32, bool)>,
    /// The event time of the page's oldest event.
    pub(super) oldest: Option<i64>,
}

/// What [`produce`] needs besides the producer and the page.
pub(super) struct Context<'a> {
    pub(super) schema_ids: &'a crate::kafka::registry::SchemaIds,
    pub(super) partitions: &'a HashMap<String, i32>,
    pub(super) default_partitions: i32,
    pub(super) attempts: &'a HashMap<String, (u32, String)>,
    pub(super) max_attempts: u32,
    pub(super) delivery_timeout: Duration,
    pub(super) metrics: &'a Metrics,
}

/// Produces a page (in order). Returns the records handed to the producer
/// (their reports counted in the page), the records to acknowledge without a
/// record on Kafka (undecodable, unencodable) and those the producer
/// refused. A record that failed permanently `max_attempts` times is
/// produced as its dead letter (only that event of a packed entry).
pub(super) async fn produce(
    producer: &MirrorProducer,
    entries: &[ForwardEntry],
    cx: &Context<'_>,
) -> (Deliveries, Vec<(EntryRef, u32)>, Vec<Failure>) {
    use rdkafka::producer::Producer;
    let reports = producer.context();
    let page = reports.open();
    let mut records = Vec::with_capacity(entries.len());
    // Per category, made at its first event of the page.
    let mut routes: [Option<Route>; schemas::Category::ALL.len()] = std::array::from_fn(|_| None);
    // The record's value, copied by librdkafka at each send.
    let mut value = Vec::with_capacity(256);
    // An embedded-log event's encoding, reused likewise.
    let mut encoded = Vec::with_capacity(256);
    let mut delivered = Vec::new();
    let mut failures = Vec::new();
    let mut oldest: Option<i64> = None;
    for entry in entries {
        let index = entry.index();
        // Failed permanently before: dead-lettered after its last attempt.
        let suspect = if cx.attempts.is_empty() {
            None
        } else {
            cx.attempts.get(&attempt_key(entry.entry(), index))
        };
        if let Some((n, error)) = suspect
            && *n >= cx.max_attempts
        {
            let (id, value) = dead_letter(entry, error, *n);
            let opaque = page.expect(records.len() as u32);
            let record = BaseRecord::with_opaque_to(DEAD_LETTER_TOPIC, opaque)
                .key(&id)
                .payload(&value);
            match producer.send(record) {
                Ok(()) => records.push((entry.entry().clone(), index, true)),
                Err((e, _)) => {
                    page.refused();
                    failures.push(Failure {
                        entry: entry.entry().clone(),
                        index,
                        error: format!("dead-lettering: {e}"),
                        permanent: false,
                    });
                }
            }
            continue;
        }
        // The event's Avro binary: as Redis stores it, or encoded (the
        // embedded log's event, with the id its caller gave it: the log
        // stores the dataflow's form). The record's topic, key, headers and
        // time are read from its head.
        // On failure: the error stage it counts as, and why.
        let bytes = match entry {
            ForwardEntry::Stored(stored) => stored.bytes().map_err(|r| ("undecodable", r.clone())),
            ForwardEntry::Decoded(e) => match e.caller_event() {
                Ok(event) => {
                    encoded.clear();
                    schemas::binary::encode_into(&event, &mut encoded)
                        .map(|()| encoded.as_slice())
                        .map_err(|e| ("encode", Undecodable(format!("event does not encode: {e}"))))
                }
                Err(reason) => Err(("undecodable", reason.clone())),
            },
        };
        let head = bytes.and_then(|bytes| {
            schemas::binary::decode_head(bytes)
                .map(|head| (bytes, head))
                .map_err(|e| {
                    (
                        "undecodable",
                        Undecodable(format!("entry does not decode: {e}")),
                    )
                })
        });
        let (bytes, head) = match head {
            Ok(read) => read,
            Err((stage, reason)) => {
                // Cannot be represented in Avro: counted, logged, acknowledged.
                cx.metrics.mirror_errors.with_label_values(&[stage]).inc();
                tracing::error!(entry = %entry.entry().id, %reason, "mirror: skipping an entry Kafka cannot carry");
                delivered.push((entry.entry().clone(), index));
                continue;
            }
        };
        let category = head.category();
        oldest = Some(oldest.map_or(head.ts, |o| o.min(head.ts)));
        let route = routes[category as usize].get_or_insert_with(|| {
            let topic = events_topic(category);
            let schema_id = cx.schema_ids.for_topic(&topic);
            // A topic the broker did not list (yet) has the partitions this
            // mirror creates topics with; if that is wrong the produce fails
            // and the counts are fetched again.
            let partitions = cx
                .partitions
                .get(&topic)
                .copied()
                .unwrap_or(cx.default_partitions);
            Route {
                schema_id_text: schema_id.to_string(),
                topic,
                schema_id,
                partitions,
            }
        });
        schemas::confluent::frame_into(route.schema_id, bytes, &mut value);
        let mut headers =
            crate::kafka::record_headers(head.event_type, head.id, &route.schema_id_text);
        if let Some(ns) = entry.namespace() {
            headers = headers.insert(rdkafka::message::Header {
                key: crate::kafka::NAMESPACE_HEADER,
                value: Some(ns),
            });
        }
        let opaque = page.expect(records.len() as u32);
        let mut record = BaseRecord::with_opaque_to(&route.topic, opaque).key(head.partition_key());
        // Never librdkafka's own partitioner: one key must always map to
        // one partition.
        record = record.partition(partition_for(head.partition_key(), route.partitions));
        let mut record = record.payload(&value).headers(headers).timestamp(head.ts);
        // A record that failed permanently before may only have shared a
        // produce request with a poison record (the broker refuses a
        // partition's whole batch, e.g. one over the topic's
        // `max.message.bytes`): produced alone this time, it is delivered
        // if it is fine, and only the poison one counts another attempt.
        let isolate = suspect.is_some();
        if isolate {
            flush(producer, cx.delivery_timeout.min(ISOLATION_FLUSH));
        }
        // The local queue is full while earlier pages are delivered: wait
        // for room (bounded by the delivery timeout) rather than fail.
        let mut full_since: Option<Instant> = None;
        loop {
            match producer.send(record) {
                Ok(()) => {
                    records.push((entry.entry().clone(), index, false));
                    if isolate {
                        flush(producer, cx.delivery_timeout.min(ISOLATION_FLUSH));
                    }
                    break;
                }
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        && full_since.get_or_insert_with(Instant::now).elapsed()
                            < cx.delivery_timeout =>
                {
                    // Counted in wall time: a 1 ms sleep takes longer on a
                    // busy machine, so counting sleeps overstated the bound.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    page.refused();
                    failures.push(Failure {
                        entry: entry.entry().clone(),
                        index,
                        error: e.to_string(),
                        permanent: permanent(&e),
                    });
                    break;
                }
            }
        }
    }
    reports.seal(&page);
    let deliveries = Deliveries {
        page,
        records,
        oldest,
    };
    (deliveries, delivered, failures)
}

/// The longest wait around one suspect record: a slow broker cannot hold
/// the mirror for a delivery timeout per suspect (a record still in flight
/// after it is then merely not alone).
const ISOLATION_FLUSH: Duration = Duration::from_secs(2);

/// Waits until every record handed to `producer` was sent and answered
/// (on the failure path only: it blocks the thread, so a multi-threaded
/// runtime is told first).
fn flush(producer: &MirrorProducer, timeout: Duration) {
    use rdkafka::producer::Producer;
    let wait = || {
        if let Err(e) = producer.flush(timeout) {
            tracing::warn!(error = %e, "mirror: flushing around a suspect record");
        }
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// `stream/id`, and `#index` for a later event of a packed entry: a
/// record's key in the poison-attempt table.
pub(super) fn attempt_key(e: &EntryRef, index: u32) -> String {
    if index == 0 {
        format!("{}/{}", e.stream, e.id)
    } else {
        format!("{}/{}#{index}", e.stream, e.id)
    }
}
