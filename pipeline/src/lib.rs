//! inkstream's dataflow and the assembly of the `inkstream` binary.
//!
//! - [`operators`]: one file per computation; a pure core plus its timely wrapper.
//! - [`dataflow`]: wires the operators; event time, watermark and late events.
//! - [`bridge`]: the only module touching both tokio and timely.
//! - [`source`]: reads the log for the dataflow and acknowledges processed entries.
//! - [`serve`], [`replay`], [`generate`], [`load`]: the subcommands.
//! - [`config`]: the TOML file, flags, env vars and `--set` overrides.

pub mod bridge;
pub mod commands;
pub mod config;
pub mod dataflow;
pub mod file_sink;
pub mod operators;
pub mod runtime;
pub mod source;
