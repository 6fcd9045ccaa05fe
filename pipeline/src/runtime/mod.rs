//! The operator runtime: what every stateful operator runs in, apart from
//! the computations themselves ([`crate::operators`]).
//!
//! - [`keyed`]: exchange by key, arrival- or event-time-order processing,
//!   capabilities for outputs fired by time, checkpoint barriers.
//! - [`checkpoint`]: consistent snapshots of every operator's state with the
//!   input position they belong to.
//! - [`operator_stats`]: state size and input frontier per operator instance,
//!   for the metrics.

pub mod checkpoint;
pub mod keyed;
pub mod operator_stats;
