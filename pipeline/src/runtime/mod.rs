//! The operator runtime: what every stateful operator runs in, apart from
//! the computations themselves ([`crate::operators`]). Operators use only
//! the small interface re-exported here.
//!
//! - [`keyed`]: exchange by key, arrival- or event-time-order processing,
//!   capabilities for outputs fired by time, checkpoint barriers.
//! - [`time`]: epochs, the buffer that parks records by epoch, and how
//!   outputs are stamped.
//! - [`record`]: an input event as it travels between operators and workers.
//! - [`checkpoint`]: consistent snapshots of every operator's state with the
//!   input position they belong to.
//! - [`duration`]: how every duration in the configuration is read.
//! - [`operator_stats`]: state size and input frontier per operator instance,
//!   for the metrics.

pub mod checkpoint;
pub mod duration;
pub mod keyed;
pub mod operator_stats;
pub mod record;
pub mod time;

pub use keyed::{Core, Keyed, OperatorCtx, Order};
pub use record::Record;
pub use time::{EpochBuffer, EventTime, Timed};
