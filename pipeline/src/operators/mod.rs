//! The dataflow operators, one per file. Each holds its config, a pure core
//! (no timely, no tokio: plain `observe`/`advance_to`), the timely wrapper as an
//! extension trait on `Stream`, and its tests.

pub mod wpm;

use schemas::Event;
use serde::{Deserialize, Serialize};

/// An input event as the dataflow carries it: with its arrival sequence
/// number, assigned by the input in the order events arrived. Operators that
/// emit live figures use it to answer "as of this event's arrival" no matter
/// in which order a batch is processed, so results never depend on batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub event: Event,
}

use std::hash::{Hash, Hasher};

/// A stable 64-bit FNV-1a hash: the same in every process and every run, so
/// that exchange routing and derived ids agree across workers, processes and
/// restarts.
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    value.hash(&mut h);
    h.finish()
}

/// A deterministic id for a derived event: a hash of what produced it, so
/// that replays and restarts produce the same id and sinks can deduplicate.
pub fn derived_id(operator: &str, parts: &[&str]) -> String {
    format!("d-{:016x}", stable_hash(&(operator, parts)))
}
