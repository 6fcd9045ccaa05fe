//! The dataflow operators, one per file. Each holds its config, a pure core
//! (no timely, no tokio: plain `observe`/`advance_to`), the timely wrapper as an
//! extension trait on `Stream`, and its tests.

pub mod alerts;
pub mod conflicts;
pub mod flow;
pub mod presence;
pub mod sessions;
pub mod team;
pub mod wpm;

use schemas::Event;
use serde::{Deserialize, Serialize};

/// An input event as the dataflow carries it: with its arrival sequence
/// number, assigned by the input in the order events arrived. Operators that
/// emit live figures use it to answer "as of this event's arrival" no matter
/// in which order a batch is processed, so results never depend on batching.
///
/// The event is shared (`Arc`): several operators read the input stream, and
/// timely hands each extra reader a clone of every container — a refcount
/// bump, not a copy of every string.
///
/// Between processes of a cluster, timely serializes records with bincode,
/// which cannot carry `Event`'s JSON-shaped serde (optional fields are left
/// out, `data` is raw JSON); so a record travels as its arrival number and
/// the event's Avro binary encoding (the log's own format, ~50 ns).
/// Streams that cross workers carry `Record`s, never bare `Event`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub event: std::sync::Arc<Event>,
}

impl Record {
    /// A derived event on its way to another operator: it has no arrival
    /// number (`seq` = `u64::MAX` marks it).
    pub fn derived(event: Event) -> Record {
        Record {
            seq: u64::MAX,
            event: std::sync::Arc::new(event),
        }
    }

    /// Made by an operator, not read from the input.
    pub fn is_derived(&self) -> bool {
        self.seq == u64::MAX
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = schemas::binary::encode(&self.event).map_err(serde::ser::Error::custom)?;
        (self.seq, serde_bytes_compat::Bytes(&bytes)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Record, D::Error> {
        let (seq, bytes): (u64, serde_bytes_compat::ByteBuf) =
            Deserialize::deserialize(deserializer)?;
        let event = schemas::binary::decode(&bytes.0).map_err(serde::de::Error::custom)?;
        Ok(Record {
            seq,
            event: std::sync::Arc::new(event),
        })
    }
}

/// Byte strings as one `bytes` value (bincode: length + raw bytes), not a
/// sequence of u8 values.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub struct Bytes<'a>(pub &'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            deserializer.deserialize_byte_buf(V)
        }
    }
}

pub use schemas::stable_hash;

/// Words an event adds to a user's writing, if it is writing at all: typed
/// keystroke words and `word_added`; pasted, imported and AI text counts 0.
pub fn written_words(e: &Event) -> Option<u64> {
    use schemas::payload::{Payload, TextSource};
    match &e.data {
        Payload::WritingKeystroke(k) if k.source == TextSource::Typed => {
            Some(k.words.max(0) as u64)
        }
        Payload::WritingKeystroke(_) => Some(0),
        Payload::WritingWordAdded(w) => Some(w.words.max(0) as u64),
        _ => None,
    }
}

/// A deterministic id for a derived event: a hash of what produced it, so
/// that replays and restarts produce the same id and sinks can deduplicate.
pub fn derived_id(operator: &str, parts: &[&str]) -> String {
    format!("d-{:016x}", stable_hash(&(operator, parts)))
}

/// How operators see time. Input containers are stamped with the watermark
/// at arrival (never later than the record's own event-time epoch), so every
/// channel carries records in arrival order and the frontier *is* the
/// watermark: once it passes `epoch_of(ts)`, no record at or before `ts`
/// can still come. Live operators process containers as they arrive;
/// frontier-driven operators park records in an [`EpochBuffer`] keyed by
/// their own event-time epoch.
#[derive(Debug, Clone, Copy)]
pub struct EventTime {
    /// Epoch length in ms (`dataflow.epoch`).
    pub epoch_ms: u64,
    /// At end of input, end every open session/window (replay) instead of
    /// leaving them open (serve, where input never really ends).
    pub flush_at_end: bool,
}

impl EventTime {
    /// The epoch (dataflow timestamp) of an event time.
    pub fn epoch_of(&self, ts: i64) -> u64 {
        let ts = ts.max(0) as u64;
        ts - ts % self.epoch_ms.max(1)
    }
}

/// Something with an event time (what an [`EpochBuffer`] parks).
pub trait Timed {
    fn ts(&self) -> i64;
}

impl Timed for Record {
    fn ts(&self) -> i64 {
        self.event.ts
    }
}

/// Items waiting for the frontier to pass their event-time epoch: the
/// building block of every frontier-driven (deterministic) operator.
pub struct EpochBuffer<T = Record> {
    pending: std::collections::BTreeMap<u64, Vec<T>>,
    len: usize,
}

impl<T> Default for EpochBuffer<T> {
    fn default() -> Self {
        EpochBuffer {
            pending: Default::default(),
            len: 0,
        }
    }
}

impl<T: Timed> EpochBuffer<T> {
    /// Parks `data` (drained) by event-time epoch.
    pub fn push(&mut self, time: &EventTime, data: &mut Vec<T>) {
        self.len += data.len();
        for r in data.drain(..) {
            self.pending
                .entry(time.epoch_of(r.ts()))
                .or_default()
                .push(r);
        }
    }

    /// The oldest epoch the frontier has passed (`frontier` = `None`: input
    /// ended, every epoch is final), with its items in arrival order (sort
    /// them as the operator's determinism requires).
    pub fn pop_ready(&mut self, frontier: Option<u64>) -> Option<(u64, Vec<T>)> {
        let entry = self.pending.first_entry()?;
        if frontier.is_some_and(|f| *entry.key() >= f) {
            return None;
        }
        let (t, items) = entry.remove_entry();
        self.len -= items.len();
        Some((t, items))
    }

    /// Everything parked (for a checkpoint).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.pending.values().flatten()
    }

    /// Items parked.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An operator's output of derived events.
pub type EventOutput<'a> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    u64,
    timely::container::CapacityContainerBuilder<Vec<Event>>,
>;

/// Emits `events` (drained), each stamped with its own event-time epoch,
/// never earlier than `cap`.
///
/// **The invariant every operator keeps:** a derived event is stamped at or
/// before the epoch of its own `ts` (live outputs: the input container's
/// stamp; outputs fired by the passing of time: `ts` = the moment of the
/// transition, emitted from a capability held no later than it). Downstream
/// operators can then park derived events by `ts` in an [`EpochBuffer`]
/// exactly like input records, and stay deterministic.
pub fn give_at_own_epochs(
    output: &mut EventOutput<'_>,
    cap: &timely::dataflow::operators::Capability<u64>,
    time: &EventTime,
    events: &mut Vec<Event>,
) {
    give_stamped(output, cap, u64::MAX, time, events);
}

/// [`give_at_own_epochs`], but never later than `ceiling`: outputs of a live
/// operator are stamped no later than the input container that caused them
/// (whose stamp is at or before its records' epochs). A checkpoint cut
/// between stamps then never separates an output from its cause: what an
/// operator derived from input before a barrier reaches the next operator
/// before that barrier too, so it is in that operator's snapshot.
pub fn give_stamped(
    output: &mut EventOutput<'_>,
    cap: &timely::dataflow::operators::Capability<u64>,
    ceiling: u64,
    time: &EventTime,
    events: &mut Vec<Event>,
) {
    if events.is_empty() {
        return;
    }
    let floor = *cap.time();
    let ceiling = ceiling.max(floor);
    let stamp = |e: &Event| time.epoch_of(e.ts).clamp(floor, ceiling);
    events.sort_by_key(stamp); // stable: each epoch keeps the operator's order
    let mut rest = events.drain(..).peekable();
    while let Some(first) = rest.next() {
        let t = stamp(&first);
        let at = cap.delayed(&t);
        let mut session = output.session(&at);
        session.give(first);
        while let Some(e) = rest.next_if(|e| stamp(e) == t) {
            session.give(e);
        }
    }
}
