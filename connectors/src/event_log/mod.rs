//! The log: where an event must be before ingest acknowledges it.
//!
//! [`EventLog`] is an enum over the two backends, not a trait object: there are
//! exactly two, and the enum keeps call sites static and boring.
//!
//! - [`EmbeddedLog`]: in-process, zero setup, **not durable** (it dies with the
//!   process). Same semantics as Redis Streams: one stream per category,
//!   consumer groups, pending entries redelivered until acknowledged.
//! - [`RedisLog`](redis::RedisLog): Redis Streams, the durable log.
//!
//! The entry types and stream naming live in `entry.rs`, [`LogError`] in
//! `error.rs`, so that the backends and [`query`] import them from there and
//! not from this file (which imports the backends). [`reader`] is the
//! dataflow's source over the log.

mod embedded;
mod entry;
mod error;
pub mod query;
pub mod reader;
pub mod redis;

pub use embedded::{DEFAULT_MAX_ENTRIES as DEFAULT_EMBEDDED_MAX_ENTRIES, EmbeddedLog};
pub use entry::{
    ANONYMOUS, Appended, EntryRef, ForwardEntry, IdForm, LogEntry, PACK_EVENTS, Part, StoredEvent,
    Undecodable, dataflow_id, stream_name,
};
pub use error::LogError;

use self::redis::RedisLog;
use schemas::{Category, Event};
use std::sync::Arc;
use std::time::Duration;

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

    /// Appends `events` for `app` (in order, one round trip for the batch)
    /// and returns where each is stored. Returns only once every event is in
    /// the log. An id `app` already stored within the dedup window is not
    /// stored again (`duplicate: true`). The embedded log refuses an append
    /// that does not fit its bound whole ([`LogError::Full`]).
    pub async fn append(&self, app: &str, events: &[Event]) -> Result<Vec<Appended>, LogError> {
        match self {
            EventLog::Embedded(log) => log.append(app, events),
            EventLog::Redis(log) => log.append(app, events).await,
        }
    }

    /// [`append`](Self::append) of events the caller no longer needs: the
    /// embedded log keeps them as they are instead of copying them.
    pub async fn append_owned(
        &self,
        app: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Appended>, LogError> {
        match self {
            EventLog::Embedded(log) => log.append_owned(app, events),
            EventLog::Redis(log) => log.append(app, &events).await,
        }
    }

    /// How many entries a read asks for (per stream) to take about
    /// `events` events at a time. An embedded entry is one event; a Redis
    /// entry holds up to [`PACK_EVENTS`] (see [`entry::packed_entries_for`]).
    pub fn entries_for(&self, events: usize) -> usize {
        match self {
            EventLog::Embedded(_) => events.max(1),
            EventLog::Redis(_) => entry::packed_entries_for(events),
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

    /// Claims entries pending with any consumer of `group` for at least
    /// `min_idle` (its consumer died) for `consumer`.
    pub async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.claim_idle(group, consumer, min_idle, count)),
            EventLog::Redis(log) => log.claim_idle(group, consumer, min_idle, count).await,
        }
    }

    /// [`EventLog::read_new`] for a forwarding reader (the Kafka mirror):
    /// Redis's events as stored, the embedded log's decoded.
    pub async fn read_new_forward(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<ForwardEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => {
                Ok(decoded(log.read_new(group, consumer, count, block).await))
            }
            EventLog::Redis(log) => log.read_new_as(group, consumer, count, block).await,
        }
    }

    /// [`EventLog::read_pending`] for a forwarding reader.
    pub async fn read_pending_forward(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<ForwardEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(decoded(log.read_pending(group, consumer, count))),
            EventLog::Redis(log) => {
                log.read_pending_after_as(group, consumer, count, &Default::default())
                    .await
            }
        }
    }

    /// [`EventLog::claim_idle`] for a forwarding reader.
    pub async fn claim_idle_forward(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<ForwardEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => {
                Ok(decoded(log.claim_idle(group, consumer, min_idle, count)))
            }
            EventLog::Redis(log) => log.claim_idle_as(group, consumer, min_idle, count).await,
        }
    }

    /// How far `group` is behind: entries not yet acknowledged (undelivered
    /// plus pending), and the append time (ms) of the oldest of them.
    pub async fn group_lag(&self, group: &str) -> Result<(u64, Option<u64>), LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.group_lag(group)),
            EventLog::Redis(log) => log.group_lag(group).await,
        }
    }

    /// One page of `consumer`'s pending entries, per stream after the id in
    /// `after` — for resuming a large backlog without reading it at once.
    pub async fn read_pending_after(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        after: &std::collections::HashMap<Arc<str>, String>,
    ) -> Result<Vec<LogEntry>, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.read_pending_after(group, consumer, count, after)),
            EventLog::Redis(log) => log.read_pending_after(group, consumer, count, after).await,
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

    /// Removes entries every group in `groups` has acknowledged and that are
    /// older than `keep_after_ms` (ms since the epoch); returns how many. The
    /// embedded log trims on acknowledgement already.
    pub async fn trim(&self, groups: &[String], keep_after_ms: u64) -> Result<u64, LogError> {
        match self {
            EventLog::Embedded(_) => Ok(0),
            EventLog::Redis(log) => log.trim(groups, keep_after_ms).await,
        }
    }

    /// What Redis promises about acknowledged events (`None`: the embedded
    /// log, which promises nothing beyond the process).
    pub async fn persistence(&self) -> Result<Option<redis::persistence::Persistence>, LogError> {
        match self {
            EventLog::Embedded(_) => Ok(None),
            EventLog::Redis(log) => log.persistence().await.map(Some),
        }
    }

    /// One page of `q.category`'s entries, oldest first, merged over its
    /// shards (see [`query`]).
    pub async fn range(&self, q: &query::RangeQuery) -> Result<query::RangePage, LogError> {
        let (entries, next) = match self {
            // One stream, read with limit + 1: fewer means it is exhausted.
            EventLog::Embedded(log) => query::merge(q, log.range_shards(q), true),
            EventLog::Redis(log) => log.range_page(q).await?,
        };
        Ok(query::RangePage { entries, next })
    }

    /// Streams per category (a cursor is one position per shard).
    pub fn shard_count(&self) -> usize {
        match self {
            EventLog::Embedded(_) => 1,
            EventLog::Redis(log) => log.shard_count(),
        }
    }

    /// Length, groups, consumers, pending, lag, first/last ids of
    /// `category`'s streams, per shard and totalled.
    pub async fn info(&self, category: Category) -> Result<query::CategoryInfo, LogError> {
        match self {
            EventLog::Embedded(log) => Ok(log.info(category)),
            EventLog::Redis(log) => log.info(category).await,
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

fn decoded(entries: Vec<LogEntry>) -> Vec<ForwardEntry> {
    entries.into_iter().map(ForwardEntry::Decoded).collect()
}
