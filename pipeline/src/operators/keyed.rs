//! The runtime every stateful operator runs in: exchange by key, arrival-order
//! or event-time-order processing, capability management for outputs fired
//! by the passing of time, and checkpoint barriers (see [`crate::checkpoint`]).
//!
//! An operator supplies a [`Core`]: a pure, serializable state machine
//! (`observe`, `advance_to`, `flush`). This file is the only place that
//! knows how a core meets timely, so every operator gets the same
//! guarantees:
//! - records reach `observe` in per-key arrival order ([`Order::Arrival`],
//!   live operators) or, once the watermark has passed their epoch, in
//!   (event time, arrival) order ([`Order::EventTime`], deterministic
//!   whatever the disorder within the bound);
//! - `advance_to(w)` is called with a watermark `w` (no record with `ts < w`
//!   will be observed any more) each time it moves;
//! - every output is stamped at its own event-time epoch, never earlier than
//!   the input that caused it ([`give_at_own_epochs`]);
//! - at each checkpoint barrier the core and its parked records are saved,
//!   and restored at start.

use crate::checkpoint::Checkpoints;
use crate::operators::{EpochBuffer, EventTime, Timed, give_at_own_epochs, give_stamped};
use schemas::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Filter;

/// In which order a core observes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// As they arrive (per key: log order). Live outputs, low latency.
    Arrival,
    /// Once the watermark has passed their epoch, sorted by
    /// [`Core::sort_epoch`]. Deterministic whatever the arrival order.
    EventTime,
}

/// A stateful operator's pure logic.
pub trait Core: Serialize + DeserializeOwned + 'static {
    /// What the operator reads and exchanges: usually [`crate::operators::Record`].
    type Item: Timed + Clone + Serialize + DeserializeOwned + Send + 'static;
    /// Names the operator in timely, logs and checkpoint files.
    const NAME: &'static str;
    const ORDER: Order;
    /// Whether the operator reads `item` at all (filtered before the exchange).
    fn wants(item: &Self::Item) -> bool;
    /// The key items are exchanged by: all items of one key meet on one worker.
    fn key(item: &Self::Item) -> u64;
    /// Takes one item; pushes what it derives.
    fn observe(&mut self, item: &Self::Item, out: &mut Vec<Event>);
    /// No item with `ts < watermark` will be observed any more: fire what
    /// the passing of time decides (output `ts` = the moment it happened).
    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>);
    /// End of input with `flush_at_end` (replay): close everything open.
    fn flush(&mut self, out: &mut Vec<Event>);
    /// Keys or entries held (memory is bounded by active keys).
    fn state_size(&self) -> usize;
    /// The order of one epoch's items ([`Order::EventTime`]): must not depend
    /// on arrival across workers (records: `(ts, seq)`).
    fn sort_epoch(items: &mut [Self::Item]);
}

/// Where an operator instance runs.
#[derive(Clone)]
pub struct Ctx {
    pub time: EventTime,
    /// Global index of this worker (names its checkpoint parts).
    pub worker: usize,
    pub checkpoints: Option<Arc<Checkpoints>>,
}

#[derive(Serialize)]
struct SnapshotRef<'a, C, T> {
    core: &'a C,
    pending: Vec<&'a T>,
}

#[derive(serde::Deserialize)]
#[serde(bound = "C: DeserializeOwned, T: DeserializeOwned")]
struct Snapshot<C, T> {
    core: C,
    pending: Vec<T>,
}

/// Runs `core` over a stream of its items: `records.keyed(core, &ctx)`.
pub trait Keyed<'scope, T> {
    fn keyed<C: Core<Item = T>>(self, core: C, ctx: &Ctx) -> Stream<'scope, u64, Vec<Event>>;
}

impl<'scope, T> Keyed<'scope, T> for Stream<'scope, u64, Vec<T>>
where
    T: Timed + Clone + Serialize + DeserializeOwned + Send + 'static,
{
    fn keyed<C: Core<Item = T>>(self, core: C, ctx: &Ctx) -> Stream<'scope, u64, Vec<Event>> {
        let ctx = ctx.clone();
        let time = ctx.time;
        let part = format!("{}-w{}", C::NAME, ctx.worker);
        self.filter(|r| C::wants(r)).unary_frontier(
            Exchange::new(|r: &T| C::key(r)),
            C::NAME,
            move |initial, _info| {
                let ckpt = ctx.checkpoints.clone();
                if let Some(c) = ckpt.as_ref() {
                    c.expect(&part);
                }
                let mut core = core;
                let mut pending = EpochBuffer::default();
                if let Some(c) = ckpt.as_ref() {
                    match c.load::<Snapshot<C, T>>(&part) {
                        Ok(Some(s)) => {
                            core = s.core;
                            pending.push(&time, &mut s.pending.clone());
                            tracing::info!(operator = C::NAME, state = core.state_size(), "state restored");
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::error!(%error, operator = C::NAME, "checkpoint unreadable; starting empty")
                        }
                    }
                }
                let mut next_barrier = ckpt
                    .as_ref()
                    .map(|c| c.next_barrier(c.restored().unwrap_or(0)));
                // Containers stamped at or after the next barrier wait for it.
                let mut held: Vec<(Capability<u64>, Vec<T>)> = Vec::new();
                let mut cap: Option<Capability<u64>> = Some(initial);
                let mut out = Vec::new();
                let mut scratch = Vec::new();
                move |(input, frontier), output| {
                    input.for_each(|c, data| {
                        let Some(c) = c.retain_least(0) else {
                            return;
                        };
                        if next_barrier.is_some_and(|b| *c.time() >= b) {
                            held.push((c, std::mem::take(data)));
                            return;
                        }
                        match C::ORDER {
                            Order::Arrival => {
                                for r in data.iter() {
                                    core.observe(r, &mut out);
                                }
                                // From the held capability (never later than the
                                // container's stamp): a deadline an event fires
                                // late keeps its own epoch.
                                give_stamped(output, cap.as_ref().unwrap_or(&c), *c.time(), &time, &mut out);
                            }
                            Order::EventTime => pending.push(&time, data),
                        }
                    });
                    let f = frontier.frontier().first().copied();
                    loop {
                        // The barrier the frontier reached, if any: the latest
                        // at or before it, when it jumped over several.
                        let barrier = match (f, next_barrier, ckpt.as_ref()) {
                            (Some(f), Some(b), Some(c)) if f >= b => Some(c.barrier_at_or_before(f)),
                            _ => None,
                        };
                        let target = barrier.or(f);
                        if let Some(b) = barrier {
                            // What was held for an earlier barrier than `b` is
                            // before the cut: take it in first.
                            scratch.append(&mut held);
                            for (c, mut data) in scratch.drain(..) {
                                if *c.time() >= b {
                                    held.push((c, data));
                                    continue;
                                }
                                match C::ORDER {
                                    Order::Arrival => {
                                        for r in data.iter() {
                                            core.observe(r, &mut out);
                                        }
                                        // From the held capability (never later than the
                                // container's stamp): a deadline an event fires
                                // late keeps its own epoch.
                                give_stamped(output, cap.as_ref().unwrap_or(&c), *c.time(), &time, &mut out);
                                    }
                                    Order::EventTime => pending.push(&time, &mut data),
                                }
                            }
                        }
                        let Some(floor) = cap.as_ref() else {
                            break;
                        };
                        // Work due before `target`, in event-time order.
                        while let Some((t, mut records)) = pending.pop_ready(target) {
                            C::sort_epoch(&mut records);
                            for r in &records {
                                core.observe(r, &mut out);
                            }
                            let w = (t + time.epoch_ms) as i64;
                            if target.is_none_or(|target| w <= target as i64) {
                                core.advance_to(w, &mut out);
                            }
                            give_at_own_epochs(output, floor, &time, &mut out);
                        }
                        let Some(target) = target else {
                            // Input ended.
                            if time.flush_at_end {
                                core.flush(&mut out);
                            }
                            if let Some(c) = cap.take() {
                                // From the held capability (never later than the
                                // container's stamp): a deadline an event fires
                                // late keeps its own epoch.
                                give_stamped(output, cap.as_ref().unwrap_or(&c), *c.time(), &time, &mut out);
                            }
                            out.clear();
                            break;
                        };
                        core.advance_to(target as i64, &mut out);
                        if let Some(c) = cap.as_mut() {
                            give_at_own_epochs(output, c, &time, &mut out);
                            if *c.time() < target {
                                c.downgrade(&target);
                            }
                        }
                        let Some(b) = barrier else {
                            break;
                        };
                        // Every record stamped before `b` has been observed or
                        // parked, nothing stamped later: the cut.
                        if let Some(c) = ckpt.as_ref() {
                            let snapshot = SnapshotRef {
                                core: &core,
                                pending: pending.iter().collect(),
                            };
                            c.save(b, &part, &snapshot);
                            next_barrier = Some(c.next_barrier(b));
                        }
                        // Release what waited for this barrier (in arrival order).
                        scratch.append(&mut held);
                        for (c, mut data) in scratch.drain(..) {
                            if next_barrier.is_some_and(|nb| *c.time() >= nb) {
                                held.push((c, data));
                                continue;
                            }
                            match C::ORDER {
                                Order::Arrival => {
                                    for r in data.iter() {
                                        core.observe(r, &mut out);
                                    }
                                    // From the held capability (never later than the
                                // container's stamp): a deadline an event fires
                                // late keeps its own epoch.
                                give_stamped(output, cap.as_ref().unwrap_or(&c), *c.time(), &time, &mut out);
                                }
                                Order::EventTime => pending.push(&time, &mut data),
                            }
                        }
                    }
                }
            },
        )
    }
}
