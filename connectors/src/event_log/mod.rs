//! The log: where an event must be before ingest acknowledges it.
//!
//! [`EventLog`] is an enum over the two backends, not a trait object: there are
//! exactly two, and the enum keeps call sites static and boring.
//!
//! - [`EmbeddedLog`]: in-process, zero setup, **not durable** (it dies with the
//!   process). Same semantics as Redis Streams: one stream per category,
//!   consumer groups, pending entries redelivered until acknowledged.
//! - [`RedisLog`](crate::redis_stream::RedisLog): Redis Streams, the durable log.

mod embedded;

pub use embedded::EmbeddedLog;

use crate::redis_stream::RedisLog;
use schemas::{Category, Event};
use std::sync::Arc;
use std::time::Duration;

/// Where one entry lives: its stream and its id (`<ms>-<seq>`, as Redis writes them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryRef {
    pub stream: Arc<str>,
    pub id: String,
}

/// One entry read from the log. An entry that does not decode is still
/// returned (as `Err` with the reason) so that it can be dead-lettered and
/// acknowledged instead of blocking its stream forever.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub entry: EntryRef,
    pub event: Result<Event, String>,
}

/// Why a log operation failed. Every variant is the log's fault, not the
/// caller's; retrying later may help for `Unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    #[error("the log answered unexpectedly: {0}")]
    Protocol(String),
}

/// The event log, embedded or Redis.
#[derive(Clone)]
pub enum EventLog {
    Embedded(EmbeddedLog),
    Redis(RedisLog),
}

impl EventLog {
    /// A short name for metrics and logs.
    pub fn backend(&self) -> &'static str {
        match self {
            EventLog::Embedded(_) => "embedded",
            EventLog::Redis(_) => "redis",
        }
    }

    /// Appends `events` (in order, one round trip for the batch) and returns
    /// where each was stored. Returns only once every event is in the log.
    pub async fn append(&self, events: &[Event]) -> Result<Vec<EntryRef>, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.append(events)),
            EventLog::Redis(log) => log.append(events).await,
        }
    }

    /// Creates consumer group `group` on every stream (from the beginning of
    /// each stream) if it does not exist yet.
    pub async fn ensure_group(&self, group: &str) -> Result<(), LogError> {
        match self {
            EventLog::Embedded(log) => {
                log.ensure_group(group);
                Ok(())
            }
            EventLog::Redis(log) => log.ensure_group(group).await,
        }
    }

    /// Reads up to `count` entries never delivered to `group`, waiting up to
    /// `block` for some to arrive. Entries become pending for `consumer`
    /// until acknowledged.
    pub async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<LogEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.read_new(group, consumer, count, block).await),
            EventLog::Redis(log) => log.read_new(group, consumer, count, block).await,
        }
    }

    /// Reads entries delivered to `consumer` earlier and not yet acknowledged
    /// (after a restart, this is where processing resumes).
    pub async fn read_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.read_pending(group, consumer, count)),
            EventLog::Redis(log) => log.read_pending(group, consumer, count).await,
        }
    }

    /// Acknowledges processed entries for `group`.
    pub async fn ack(&self, group: &str, entries: &[EntryRef]) -> Result<(), LogError> {
        match self {
            EventLog::Embedded(log) => {
                log.ack(group, entries);
                Ok(())
            }
            EventLog::Redis(log) => log.ack(group, entries).await,
        }
    }

    /// Whether the log answers at all (readiness).
    pub async fn ping(&self) -> Result<(), LogError> {
        match self {
            EventLog::Embedded(_) => Ok(()),
            EventLog::Redis(log) => log.ping().await,
        }
    }
}

/// The stream name of a category under `prefix` (`inkstream:events:writing`).
pub fn stream_name(prefix: &str, category: Category) -> String {
    format!("{prefix}:events:{}", category.as_str())
}
