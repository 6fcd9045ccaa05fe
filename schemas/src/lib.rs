//! The inkstream event contract.
//!
//! - [`event`]: the envelope every event travels in ([`Event`]), its categories and
//!   partition keys, and the catalogue of known event types.
//! - [`json`]: the JSON wire codec — single events, arrays and NDJSON — with
//!   validation errors that name the offending field and what was expected.
//! - [`payload`]: the typed payload of every event type, mirroring the Avro
//!   schemas in `schemas/avro/` (the source of truth).
//! - [`avro`]: the Avro encoding of the envelope ([`AvroSchemas`]).
//! - [`container`]: Avro object container files of events (`replay --format avro`).
//! - [`examples`]: a minimal and a maximal example payload per type.
//!
//! - [`fault`]: whose fault an error is and whether a retry helps ([`Classify`]),
//!   implemented by every library error of the workspace.
//!
//! This crate is pure (no async, no I/O) so that every other crate can depend on it.

pub mod avro;
pub mod binary;
pub mod confluent;
pub mod container;
mod decode_error;
pub mod docs;
pub mod event;
pub mod examples;
pub mod fault;
mod hash;
pub mod json;
pub mod json_schema;
pub mod payload;
mod text;
mod validate;

#[cfg(test)]
mod random_tests;

pub use avro::AvroSchemas;
pub use event::{Category, Event, EventType, UnknownType};
pub use examples::examples;
pub use fault::{Classify, Fault};
pub use hash::stable_hash;
pub use json::{DecodeError, Limits, count_events, decode_batch, decode_event, decode_value};
pub use payload::Payload;
pub use text::Text;
