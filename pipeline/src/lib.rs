//! inkstream's dataflow and the assembly of the `inkstream` binary.
//!
//! - [`operators`]: the computations, one file (or folder) per operator: its
//!   config, a pure core, its timely wrapper and its tests.
//! - [`runtime`]: what operators run in — the keyed operator runtime, event
//!   time and epochs, checkpoints, operator stats, the config's durations.
//! - [`dataflow`]: wires the operators; the input driver (event time,
//!   watermark, late events) and the sink trait.
//! - [`bridge`]: the only module touching both tokio and timely.
//! - [`file_sink`]: derived events as NDJSON files (replay's output, `derived.dir`).
//! - [`config`]: the TOML file, flags, env vars and `--set` overrides.
//! - [`commands`]: the subcommands (`serve`, `replay`, `generate`, `load`,
//!   `healthcheck`, `schemas`), one file or folder each.

pub mod bridge;
pub mod commands;
pub mod config;
pub mod dataflow;
mod file_journal;
pub mod file_sink;
pub mod operators;
pub mod runtime;
