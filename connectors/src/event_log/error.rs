//! Why a log operation failed ([`LogError`]), for both backends.

use schemas::{Classify, Fault};

/// Why a log operation failed. Every variant is the log's fault, not the
/// caller's; retrying later may help for `Unavailable` and `Full`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    #[error("the log answered unexpectedly: {0}")]
    Protocol(String),
    /// The Redis reached cannot hold the log (e.g. a Redis Cluster): the
    /// operator must point `redis.url` elsewhere.
    #[error("the log cannot run on this Redis: {0}")]
    Unsupported(String),
    /// The embedded log holds as many entries as it may: its readers (the
    /// dataflow, the Kafka mirror) are behind or stopped. Nothing of the
    /// refused append was stored; retrying once they catch up helps.
    #[error(
        "the embedded log is full: it holds {held} entries not yet acknowledged by every \
         reader (at most {max}, ingest.embedded_max_events); its readers are behind"
    )]
    Full { held: usize, max: usize },
}

impl Classify for LogError {
    fn fault(&self) -> Fault {
        match self {
            LogError::Unsupported(_) => Fault::Config,
            _ => Fault::External,
        }
    }
    /// A log that does not answer may answer later; one that answers
    /// nonsense will answer the same nonsense.
    fn retryable(&self) -> bool {
        matches!(self, LogError::Unavailable(_) | LogError::Full { .. })
    }
}
