//! Event time in the dataflow: epochs (dataflow timestamps), the buffer that
//! parks records until the frontier passes their epoch, and how operators
//! stamp what they emit (the invariant every operator keeps).

use crate::runtime::record::Record;
use schemas::Event;

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
        // One map lookup per run of records of one epoch (most of a
        // container), not per record.
        let mut rest = data.drain(..).peekable();
        while let Some(r) = rest.next() {
            let epoch = time.epoch_of(r.ts());
            let parked = self.pending.entry(epoch).or_default();
            parked.push(r);
            while let Some(r) = rest.next_if(|r| time.epoch_of(r.ts()) == epoch) {
                parked.push(r);
            }
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
    // Stable: each epoch keeps the operator's order. Outputs mostly come in
    // epoch order already; a check is cheaper than moving every event.
    if !events.is_sorted_by_key(stamp) {
        events.sort_by_key(stamp);
    }
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
