//! Per-operator figures for the metrics: state size and input frontier of
//! every keyed operator instance, published by the bridge as
//! `inkstream_dataflow_state_keys{operator}` and
//! `inkstream_dataflow_watermark_lag_seconds{operator}`.
//!
//! Each operator instance owns one [`Slot`] and stores into it (two relaxed
//! atomic stores per activation); the bridge sums and reads them a few times
//! a second. The slots of one dataflow live in one [`OperatorStats`], created
//! by [`crate::bridge::Bridge`] and handed to each operator instance in its
//! [`crate::runtime::OperatorCtx`]. Dataflows built without it (tests,
//! replay) have no slots and cost nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One operator instance's figures.
#[derive(Debug)]
pub struct Slot {
    operator: &'static str,
    /// Keys or entries the core holds ([`crate::runtime::keyed::Core::state_size`]).
    state: AtomicUsize,
    /// The operator's input frontier (an epoch: ms since the Unix epoch,
    /// floored to `dataflow.epoch`); `u64::MAX` once its input has ended.
    frontier: AtomicU64,
}

impl Slot {
    /// Records the instance's figures after an activation.
    pub fn set(&self, state: usize, frontier: Option<u64>) {
        self.state.store(state, Ordering::Relaxed);
        self.frontier
            .store(frontier.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// The slots of one dataflow (all workers of a process).
#[derive(Debug, Default, Clone)]
pub struct OperatorStats {
    slots: Arc<Mutex<Vec<Arc<Slot>>>>,
}

/// Per operator name: total state across instances, and the least input
/// frontier (`None` when no instance has one).
pub type Summary = Vec<(&'static str, usize, Option<u64>)>;

impl OperatorStats {
    /// A new slot for an instance of `operator`.
    pub fn slot(&self, operator: &'static str) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            operator,
            state: AtomicUsize::new(0),
            frontier: AtomicU64::new(0),
        });
        if let Ok(mut slots) = self.slots.lock() {
            slots.push(slot.clone());
        }
        slot
    }

    /// Sums state and takes the least frontier per operator name.
    pub fn summary(&self) -> Summary {
        let mut out: Summary = Vec::new();
        let Ok(slots) = self.slots.lock() else {
            return out;
        };
        for s in slots.iter() {
            let state = s.state.load(Ordering::Relaxed);
            let f = s.frontier.load(Ordering::Relaxed);
            let f = (f != u64::MAX).then_some(f);
            match out.iter_mut().find(|(n, _, _)| *n == s.operator) {
                Some((_, total, least)) => {
                    *total += state;
                    *least = match (*least, f) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                None => out.push((s.operator, state, f)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_sums_state_and_takes_the_least_frontier_per_operator() {
        let stats = OperatorStats::default();
        let (a, b, c) = (
            stats.slot("Sessions"),
            stats.slot("Sessions"),
            stats.slot("LiveWpm"),
        );
        a.set(3, Some(2000));
        b.set(4, Some(1000));
        c.set(1, None);
        let mut s = stats.summary();
        s.sort();
        assert_eq!(s, vec![("LiveWpm", 1, None), ("Sessions", 7, Some(1000))]);
    }
}
