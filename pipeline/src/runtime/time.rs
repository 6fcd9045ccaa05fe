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

    /// Whether `ts` is in `epoch` (`epoch_of(ts) == epoch`), by comparison
    /// instead of a division.
    pub fn in_epoch(&self, ts: i64, epoch: u64) -> bool {
        (ts.max(0) as u64).wrapping_sub(epoch) < self.epoch_ms.max(1)
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
///
/// Epochs are kept in ascending order in a deque: input arrives nearly in
/// event-time order, so a run of records lands in the last epoch or after
/// it (else a binary search finds its place), and the frontier takes epochs from the
/// front. An epoch's vector, once its items were taken in, comes back
/// through [`EpochBuffer::recycle`] and holds a later epoch: an epoch holds
/// a few dozen records, and a map node plus a growing vector for each was
/// a good part of the per-record cost.
pub struct EpochBuffer<T = Record> {
    pending: std::collections::VecDeque<(u64, Vec<T>)>,
    len: usize,
    spare: Vec<Vec<T>>,
}

impl<T> Default for EpochBuffer<T> {
    fn default() -> Self {
        EpochBuffer {
            pending: Default::default(),
            len: 0,
            spare: Vec::new(),
        }
    }
}

/// Emptied vectors kept for reuse, at most.
const SPARE_VECS: usize = 64;

impl<T: Timed> EpochBuffer<T> {
    /// Parks `data` (drained) by event-time epoch.
    pub fn push(&mut self, time: &EventTime, data: &mut Vec<T>) {
        self.len += data.len();
        // One search per run of records of one epoch (most of a container),
        // not per record.
        let mut rest = data.drain(..).peekable();
        while let Some(r) = rest.next() {
            let epoch = time.epoch_of(r.ts());
            let at = self.slot(epoch);
            let parked = &mut self.pending[at].1;
            parked.push(r);
            while let Some(r) = rest.next_if(|r| time.in_epoch(r.ts(), epoch)) {
                parked.push(r);
            }
        }
    }

    /// The index of `epoch`'s entry, made if it has none.
    fn slot(&mut self, epoch: u64) -> usize {
        let n = self.pending.len();
        // Most often the last epoch, or one after it.
        let at = match self.pending.back() {
            Some(&(last, _)) if last < epoch => n,
            Some(&(last, _)) if last == epoch => return n - 1,
            None => n,
            Some(_) => self.pending.partition_point(|(e, _)| *e < epoch),
        };
        if self.pending.get(at).is_some_and(|(e, _)| *e == epoch) {
            return at;
        }
        let items = self.spare.pop().unwrap_or_default();
        self.pending.insert(at, (epoch, items));
        at
    }

    /// The oldest epoch the frontier has passed (`frontier` = `None`: input
    /// ended, every epoch is final), with its items in arrival order (sort
    /// them as the operator's determinism requires). Hand the vector back
    /// through [`EpochBuffer::recycle`] once its items are taken in.
    pub fn pop_ready(&mut self, frontier: Option<u64>) -> Option<(u64, Vec<T>)> {
        let &(t, _) = self.pending.front()?;
        if frontier.is_some_and(|f| t >= f) {
            return None;
        }
        let (t, items) = self.pending.pop_front()?;
        self.len -= items.len();
        Some((t, items))
    }

    /// Takes back an epoch's vector from [`EpochBuffer::pop_ready`] (its
    /// items are dropped) to hold a later epoch.
    pub fn recycle(&mut self, mut items: Vec<T>) {
        if self.spare.len() < SPARE_VECS {
            items.clear();
            self.spare.push(items);
        }
    }

    /// Everything parked (for a checkpoint).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.pending.iter().flat_map(|(_, items)| items)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct At(i64, usize);

    impl Timed for At {
        fn ts(&self) -> i64 {
            self.0
        }
    }

    /// Whatever the order of arrival (runs in order, events behind and far
    /// ahead, negative times), epochs come out ascending, each with its
    /// items in arrival order, exactly as a map of epochs would hand them
    /// out; and recycled vectors hold later epochs without leaking items.
    #[test]
    fn epochs_come_out_in_order_with_their_items_in_arrival_order() {
        let time = EventTime {
            epoch_ms: 100,
            flush_at_end: true,
        };
        let mut buffer = EpochBuffer::default();
        let mut reference: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut out: Vec<(u64, Vec<usize>)> = Vec::new();
        // A deterministic walk: mostly forward, sometimes back or far ahead.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut ts: i64 = -250;
        let mut n = 0;
        for round in 0..400 {
            let mut batch = Vec::new();
            for _ in 0..(x % 7) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = match x % 10 {
                    0 => ts - (x % 1_000) as i64,
                    1 => ts + 5_000 + (x % 3_000) as i64,
                    _ => {
                        ts += (x % 60) as i64;
                        ts
                    }
                };
                reference.entry(time.epoch_of(t)).or_default().push(n);
                batch.push(At(t, n));
                n += 1;
            }
            buffer.push(&time, &mut batch);
            assert!(batch.is_empty());
            if round % 5 == 4 {
                let frontier = time.epoch_of(ts - 300);
                while let Some((t, items)) = buffer.pop_ready(Some(frontier)) {
                    assert!(t < frontier);
                    out.push((t, items.iter().map(|a| a.1).collect()));
                    buffer.recycle(items);
                }
            }
        }
        while let Some((t, items)) = buffer.pop_ready(None) {
            out.push((t, items.iter().map(|a| a.1).collect()));
            buffer.recycle(items);
        }
        assert!(buffer.is_empty());
        assert_eq!(buffer.iter().count(), 0);
        // Epochs popped early may come back later (an item behind the last
        // frontier); merged per epoch, in pop order, they are the map's.
        let mut merged: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (t, items) in out {
            merged.entry(t).or_default().extend(items);
        }
        assert_eq!(merged, reference);
    }
}
