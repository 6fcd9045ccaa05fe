//! What the log stores and hands out: where an entry lives ([`EntryRef`]),
//! the outcome of an append ([`Appended`]), an entry read back ([`LogEntry`]),
//! and the name of a category's stream ([`stream_name`]). Shared by both
//! backends, the queries and the readers.

use schemas::{Category, Classify, Event, Fault};
use std::sync::Arc;

/// Where one entry lives: its stream and its id (`<ms>-<seq>`, as Redis writes them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryRef {
    pub stream: Arc<str>,
    pub id: String,
}

/// The outcome of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Where the event is stored. For a duplicate the embedded log names the
    /// first copy; Redis does not record it (the id is empty).
    pub entry: EntryRef,
    /// The same id from the same app was already stored within the dedup
    /// window; nothing new was written.
    pub duplicate: bool,
}

/// One entry read from the log. An entry that does not decode is still
/// returned (as `Err` with the reason) so that it can be dead-lettered and
/// acknowledged instead of blocking its stream forever.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub entry: EntryRef,
    pub event: Result<Event, Undecodable>,
}

/// Why a stored entry is not an event (missing field, bad Avro). Kept as data
/// with its entry, so the reader dead-letters and acknowledges it; serialises
/// as the bare reason string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{0}")]
#[serde(transparent)]
pub struct Undecodable(pub String);

impl Classify for Undecodable {
    /// Whoever wrote the entry wrote something that is not an event: reading
    /// it again will not help.
    fn fault(&self) -> Fault {
        Fault::Caller
    }
}

/// The stream name of a category's shard under `prefix`
/// (`inkstream:events:writing:3`).
pub fn stream_name(prefix: &str, category: Category, shard: u32) -> String {
    format!("{prefix}:events:{}:{shard}", category.as_str())
}
