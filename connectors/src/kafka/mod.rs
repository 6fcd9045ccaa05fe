//! The Kafka-compatible side: topic administration and an idempotent producer.
//!
//! - [`mirror`]: the log → `inkstream.events.<category>` mirror; [`lag`]:
//!   its lag, published for operators.
//! - [`source`]: the event topics as the dataflow's input.
//! - [`derived`]: derived events out to `inkstream.derived.<type>`.
//! - [`fatal`]: a client's fatal error, which stops the instance.
//! - [`durability`]: what the event topics promise about an acknowledged
//!   record (replicas, `min.insync.replicas`).
//! - [`registry`]: registering the schemas in an external Schema Registry.
//! - [`security`]: [`Brokers`], the one place every client's settings
//!   (bootstrap list, TLS, SASL) are made, and the startup access check.

pub mod derived;
pub mod durability;
pub mod fatal;
pub mod lag;
pub mod mirror;
pub mod registry;
mod rounds;
pub mod security;
pub mod source;

pub use fatal::{FatalError, FatalSignal};
pub use security::Brokers;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use std::time::Duration;

/// Why a Kafka operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka client error: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic} failed: {code}")]
    CreateTopic { topic: String, code: String },
    #[error(
        "creating topic {topic} failed: {code} (kafka.replication_factor = {replication_factor}; \
         -1 takes the broker's default.replication.factor, which must not exceed the brokers)"
    )]
    ReplicationFactor {
        topic: String,
        code: String,
        replication_factor: i32,
    },
    #[error("the Kafka client gave no consumer group metadata for group {0}")]
    NoGroupMetadata(String),
    #[error("a blocking Kafka call did not finish: {0}")]
    Blocking(String),
    #[error("describing the topics' configuration failed: {0}")]
    Describe(String),
}

impl schemas::Classify for KafkaError {
    /// The brokers failed or refused; whether a retry helps depends on why,
    /// which rdkafka has already retried internally where it could.
    fn fault(&self) -> schemas::Fault {
        match self {
            KafkaError::ReplicationFactor { .. } => schemas::Fault::Config,
            _ => schemas::Fault::External,
        }
    }
}

/// Calls a transactional step (`send_offsets_to_transaction`,
/// `commit_transaction`) again while librdkafka says it may be retried and
/// the transaction need not be aborted, for up to `patience`. A commit that
/// times out goes on in the background (librdkafka's `rd_kafka_commit_transaction`:
/// call it again to resume and await it); aborting instead fails
/// (`__CONFLICT`), a new producer's `init_transactions` then lets the commit
/// complete, and producing the round again wrote it twice — read_committed
/// readers saw duplicates after a transaction coordinator stalled for longer
/// than the call's timeout (a failover during a rolling restart). Past
/// `patience` the broker has aborted the transaction itself (its timeout),
/// and the error is returned.
pub(crate) fn settle_transactional<T>(
    step: &'static str,
    patience: Duration,
    mut call: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> rdkafka::error::KafkaResult<T> {
    let began = std::time::Instant::now();
    loop {
        match call() {
            Err(rdkafka::error::KafkaError::Transaction(e))
                if e.is_retriable()
                    && !e.txn_requires_abort()
                    && !e.is_fatal()
                    && began.elapsed() < patience =>
            {
                tracing::warn!(error = %e, step, "a transactional step did not finish; calling it again");
            }
            other => return other,
        }
    }
}

/// The topic carrying events of a category.
pub fn events_topic(category: schemas::Category) -> String {
    format!("inkstream.events.{}", category.as_str())
}

/// The base client configuration for `brokers` ([`Brokers::client_config`];
/// a bare `host:port` list is plaintext).
pub fn client_config(brokers: impl Into<Brokers>) -> ClientConfig {
    brokers.into().client_config()
}

/// The headers every inkstream record carries: `event_type`, `event_id`,
/// `schema_id` (so consumers can route and deduplicate without decoding).
pub fn record_headers(
    event_type: &str,
    event_id: &str,
    schema_id: &str,
) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, OwnedHeaders};
    OwnedHeaders::new()
        .insert(Header {
            key: "event_type",
            value: Some(event_type),
        })
        .insert(Header {
            key: "event_id",
            value: Some(event_id),
        })
        .insert(Header {
            key: "schema_id",
            value: Some(schema_id),
        })
}

/// The header naming the caller namespace an event was ingested under
/// (event topics only): with `event_id` the event's identity (see
/// `event_log::dataflow_id`).
pub const NAMESPACE_HEADER: &str = "namespace";

/// The value of header `key` of `message`, when it is UTF-8.
pub fn header_str<'m, M: rdkafka::Message>(message: &'m M, key: &str) -> Option<&'m str> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// The topic carrying derived events of a type (`inkstream.derived.analytics.metric_updated`).
pub fn derived_topic(event_type: &str) -> String {
    format!("inkstream.derived.{event_type}")
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn idempotent_producer(brokers: impl Into<Brokers>) -> Result<FutureProducer, KafkaError> {
    Ok(client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// How inkstream creates the topics it needs when they are missing
/// (`kafka.partitions`, `kafka.replication_factor`). Topics that exist are
/// left as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewTopics {
    /// Partitions of each topic (default 8).
    pub partitions: i32,
    /// Copies of each partition; -1 (the default) takes the broker's
    /// `default.replication.factor` (KIP-464), as Kafka Streams does since
    /// 3.0: a cluster of three brokers replicates inkstream's topics as it
    /// does every other topic, and a single broker takes 1.
    pub replication_factor: i32,
}

impl Default for NewTopics {
    fn default() -> Self {
        NewTopics {
            partitions: 8,
            replication_factor: BROKER_DEFAULT_REPLICATION,
        }
    }
}

/// `kafka.replication_factor = -1`: the broker's `default.replication.factor`.
pub const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// Creates the topics that do not exist yet, as `new` says.
pub async fn ensure_topics(
    brokers: impl Into<Brokers>,
    topics: &[String],
    new: NewTopics,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let specs: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                new.partitions,
                TopicReplication::Fixed(new.replication_factor),
            )
        })
        .collect();
    // A broker that does not answer fails the call within 10 s (the
    // request timeout's default is 60 s), and the caller retries.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&specs, &opts).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, RDKafkaErrorCode::InvalidReplicationFactor)) => {
                return Err(KafkaError::ReplicationFactor {
                    topic,
                    code: RDKafkaErrorCode::InvalidReplicationFactor.to_string(),
                    replication_factor: new.replication_factor,
                });
            }
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    code: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// [`ensure_topics`] until the broker has them: 200 ms doubling to 5 s
/// between tries, each failure handed to `failed` with the wait before the
/// next. False when `shutdown` (if any) asked to stop first.
pub async fn ensure_topics_until_made(
    brokers: &Brokers,
    topics: &[String],
    new: NewTopics,
    failed: impl Fn(&KafkaError, Duration),
    mut shutdown: Option<&mut tokio::sync::watch::Receiver<bool>>,
) -> bool {
    let mut retry_in = Duration::from_millis(200);
    loop {
        match ensure_topics(brokers, topics, new).await {
            Ok(()) => return true,
            Err(e) => failed(&e, retry_in),
        }
        match shutdown.as_deref_mut() {
            Some(s) => {
                if sleep_or_stop(s, retry_in.as_millis() as u64).await {
                    return false;
                }
            }
            None => tokio::time::sleep(retry_in).await,
        }
        retry_in = (retry_in * 2).min(Duration::from_secs(5));
    }
}

/// Sleeps `ms`, or returns true at once when shutdown was requested.
async fn sleep_or_stop(shutdown: &mut tokio::sync::watch::Receiver<bool>, ms: u64) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
