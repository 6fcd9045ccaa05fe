//! Derived events out to `inkstream.derived.<type>` topics: keyed by
//! partition key, Confluent-framed Avro, headers like the event topics. The
//! derived ids are deterministic, so a replay after a restart is
//! deduplicated downstream by `event_id`.
//!
//! A threaded producer (its own polling thread) keeps the dataflow's worker
//! threads free of async: `send` only enqueues; a full queue blocks the
//! caller briefly (backpressure) rather than dropping.

use super::{client_config, derived_topic};
use crate::metrics::Metrics;
use rdkafka::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use schemas::Event;
use std::time::Duration;

/// Counts delivery reports.
pub struct Deliveries {
    metrics: Metrics,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self
                .metrics
                .derived_produced
                .with_label_values(&["delivered"])
                .inc(),
            Err((e, _)) => {
                self.metrics
                    .derived_produced
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(error = %e, "a derived event was not delivered");
            }
        }
    }
}

/// Produces derived events.
pub struct DerivedProducer {
    producer: ThreadedProducer<Deliveries>,
    schema_id: String,
    metrics: Metrics,
}

impl DerivedProducer {
    pub fn new(brokers: &str, metrics: Metrics) -> Result<DerivedProducer, super::KafkaError> {
        let producer = client_config(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create_with_context(Deliveries {
                metrics: metrics.clone(),
            })?;
        Ok(DerivedProducer {
            producer,
            schema_id: schemas::confluent::schema_id().to_string(),
            metrics,
        })
    }

    /// Waits until every enqueued event is delivered (or `timeout`); call at
    /// shutdown, after the dataflow drained.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "derived events still undelivered at shutdown");
        }
    }

    /// Enqueues one derived event.
    pub fn send(&self, event: &Event) {
        let Ok(value) = schemas::confluent::encode(event) else {
            tracing::error!(id = %event.id, "cannot encode a derived event");
            return;
        };
        let topic = derived_topic(event.event_type());
        let key = event.partition_key().to_owned();
        for _ in 0..1000 {
            let headers = super::event_headers(event, self.schema_id.as_str());
            let record = BaseRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(headers)
                .timestamp(event.ts);
            match self.producer.send(record) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => std::thread::sleep(Duration::from_millis(5)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "cannot enqueue a derived event");
                    return;
                }
            }
        }
        // A broker down for long: the dataflow must not stall (WebSocket
        // fanout depends on it); the event is re-derived by a replay.
        self.metrics
            .derived_produced
            .with_label_values(&["dropped"])
            .inc();
        tracing::warn!(id = %event.id, "the producer queue stayed full for 5 s; derived event dropped");
    }
}
