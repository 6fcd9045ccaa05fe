//! A long-running Kafka client's fatal error, reported to the instance.
//!
//! librdkafka calls an error fatal when its client can no longer go on:
//! an idempotent producer whose sequence broke, a transactional producer
//! fenced by a newer one with the same `transactional.id`, a static group
//! member fenced by a newer one with the same `group.instance.id`. Every
//! later call of that client fails.
//!
//! Making a new client is wrong for a fence: its `init_transactions` (or
//! its join) would fence the newer holder back, and the two would take
//! turns, each committing what the other commits as well (duplicates for
//! `read_committed` readers), for as long as the older one runs. A zombie
//! that lost its lease while it was paused is exactly that older one.
//! Retrying for ever is wrong too: the derived producer would leave every
//! checkpoint failing and the source would read nothing, while the
//! instance looked healthy.
//!
//! So the instance stops with the error, as Kafka Streams' default
//! uncaught-exception response (`SHUTDOWN_CLIENT`) and a failing Flink task
//! do: its supervisor restarts it, and it resumes from its last checkpoint
//! (or stands by, if another instance holds the lease now). The clients
//! report here ([`FatalSignal::report`]); `serve` watches the signal
//! ([`FatalSignal::subscribe`]). The mirror, which keeps nothing a new
//! producer could lose, replaces its producers after other fatal errors and
//! reports only a fence.

use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use tokio::sync::watch;

/// Which client, and what librdkafka said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the Kafka {client} hit a fatal error and cannot go on: {reason}{}", if self.fenced() {
    " (another instance with the same id took over: this one stops instead of fencing it back)"
} else {
    " (a restart resumes from the last checkpoint)"
})]
pub struct FatalError {
    /// `source`, `derived` or `mirror`.
    pub client: &'static str,
    /// librdkafka's underlying error, when it gave one.
    pub code: Option<RDKafkaErrorCode>,
    /// librdkafka's words.
    pub reason: String,
}

impl FatalError {
    /// Whether a newer client with the same transactional id or static
    /// member id fenced this one.
    pub fn fenced(&self) -> bool {
        is_fence(self.code) || self.reason.to_ascii_lowercase().contains("fenced")
    }
}

impl schemas::Classify for FatalError {
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::External
    }
}

/// Whether `code` says a newer client with the same id took over.
pub fn is_fence(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::FencedInstanceId
        )
    )
}

/// Where the Kafka clients of one instance report a fatal error (the first
/// one is kept). Clones share it; [`super::Brokers`] carries it to every
/// client made from them. Equal to every other signal: it is not a setting.
#[derive(Clone)]
pub struct FatalSignal(Arc<watch::Sender<Option<Arc<FatalError>>>>);

impl Default for FatalSignal {
    fn default() -> Self {
        FatalSignal(Arc::new(watch::Sender::new(None)))
    }
}

impl std::fmt::Debug for FatalSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FatalSignal")
            .field(&*self.0.borrow())
            .finish()
    }
}

impl PartialEq for FatalSignal {
    fn eq(&self, _: &FatalSignal) -> bool {
        true
    }
}

impl Eq for FatalSignal {}

impl FatalSignal {
    /// Logs `error`, counts it (`inkstream_kafka_fatal_errors_total`) and
    /// reports it.
    pub fn raise(&self, metrics: &crate::Metrics, error: FatalError) {
        metrics
            .kafka_fatal_errors
            .with_label_values(&[error.client])
            .inc();
        tracing::error!(client = error.client, %error, "this instance stops");
        self.report(error);
    }

    /// Reports `error`, unless one was reported before.
    pub fn report(&self, error: FatalError) {
        self.0.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(Arc::new(error));
            true
        });
    }

    /// The first fatal error reported, if any.
    pub fn reported(&self) -> Option<Arc<FatalError>> {
        self.0.borrow().clone()
    }

    /// Sees the first report.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<FatalError>>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(client: &'static str, code: Option<RDKafkaErrorCode>, reason: &str) -> FatalError {
        FatalError {
            client,
            code,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn the_first_report_is_kept_and_seen_by_a_subscriber() {
        let signal = FatalSignal::default();
        let mut seen = signal.subscribe();
        assert!(!seen.has_changed().unwrap());
        signal.clone().report(fatal("derived", None, "first"));
        signal.report(fatal("source", None, "second"));
        assert!(seen.has_changed().unwrap());
        let first = seen.borrow_and_update().clone().unwrap();
        assert_eq!((first.client, first.reason.as_str()), ("derived", "first"));
        assert_eq!(signal.reported().unwrap().reason, "first");
    }

    #[test]
    fn a_fence_is_named_by_its_code_or_librdkafkas_words() {
        let by_code = fatal(
            "derived",
            Some(RDKafkaErrorCode::ProducerFenced),
            "Fatal error",
        );
        assert!(by_code.fenced());
        assert!(
            by_code
                .to_string()
                .contains("stops instead of fencing it back")
        );
        let by_words = fatal(
            "source",
            None,
            "Fatal consumer error: Broker: Static consumer fenced by other consumer with same group.instance.id",
        );
        assert!(by_words.fenced());
        let other = fatal(
            "derived",
            Some(RDKafkaErrorCode::OutOfOrderSequenceNumber),
            "sequence",
        );
        assert!(!other.fenced());
        assert!(
            other
                .to_string()
                .contains("resumes from the last checkpoint")
        );
    }
}
