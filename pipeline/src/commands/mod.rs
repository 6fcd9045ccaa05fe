//! The subcommands of the `inkstream` binary, one file (or folder) each:
//! its flags (a `clap::Args` struct whose flags become config overrides),
//! and its entry point. `main.rs` parses the arguments and calls one entry
//! point per subcommand.
//!
//! - [`serve`]: ingest, log, dataflow and fanout in one process.
//! - [`demo`]: `serve` plus a simulator posting live traffic.
//! - [`replay`]: the dataflow over an NDJSON file.
//! - [`generate`]: a realistic, deterministic NDJSON event file.
//! - [`load`]: load generators for benchmarks.
//! - [`healthcheck`]: the container healthcheck.
//! - [`schemas`]: prints the event contract.

pub mod demo;
pub mod generate;
pub mod healthcheck;
pub mod load;
pub mod replay;
pub mod schemas;
pub mod serve;

/// A timely cluster of several processes (config `dataflow.hosts`,
/// `dataflow.process_index`): start the same command once per host.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// host:port of every process of the cluster, in process order, comma separated.
    #[arg(long, env = "INKSTREAM_HOSTS", value_delimiter = ',')]
    hosts: Vec<String>,
    /// This process's index in `--hosts`.
    #[arg(long, env = "INKSTREAM_PROCESS_INDEX")]
    process_index: Option<usize>,
}

impl ClusterArgs {
    /// The flags as `--set` overrides of their config keys.
    pub fn overrides(&self, out: &mut Vec<String>) {
        if !self.hosts.is_empty() {
            let list: Vec<String> = self.hosts.iter().map(|h| toml_string(h)).collect();
            out.push(format!("dataflow.hosts=[{}]", list.join(",")));
        }
        if let Some(i) = self.process_index {
            out.push(format!("dataflow.process_index={i}"));
        }
    }
}

/// A TOML string literal (the value of an override).
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The async runtime could not start (threads or the I/O driver).
#[derive(Debug, thiserror::Error)]
#[error("starting the async runtime")]
pub struct RuntimeError(#[source] std::io::Error);

impl ::schemas::Classify for RuntimeError {
    fn fault(&self) -> ::schemas::Fault {
        ::schemas::Fault::External
    }
}

/// A multi-threaded tokio runtime, for the subcommands that run async code.
pub fn async_runtime() -> Result<tokio::runtime::Runtime, RuntimeError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RuntimeError)
}
