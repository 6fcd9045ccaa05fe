//! The `inkstream` binary: parses arguments and calls into the library, one
//! call per subcommand ([`inkstream::commands`]).

use clap::{Parser, Subcommand};
use inkstream::commands::demo::DemoArgs;
use inkstream::commands::generate::GenerateArgs;
use inkstream::commands::healthcheck::HealthcheckArgs;
use inkstream::commands::load::LoadArgs;
use inkstream::commands::replay::ReplayArgs;
use inkstream::commands::schemas::SchemasCommand;
use inkstream::commands::serve::ServeArgs;
use inkstream::commands::{demo, generate, healthcheck, load, replay, schemas, serve};
use inkstream::config::Config;
use std::path::PathBuf;

// glibc malloc dominated the ingest and replay profiles (many small,
// short-lived allocations across threads); mimalloc handles that pattern well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process (what Redis asks of its
/// hosts, for the same reason). mimalloc asks the kernel for them
/// (`MADV_HUGEPAGE`); the first touch of each 2 MB page then zeroes it, and
/// may compact memory, on the thread that touched it. When 10,000 writers
/// never seen before arrive at once, their new state grows the heap by many
/// such pages on the dataflow's thread: measured ingest → WPM frame p99 of
/// 49–211 ms in the first second on the embedded log, 7–8 ms without
/// (docs/BENCHMARKS.md "Ratios").
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot disable transparent huge pages");
    }
}

#[derive(Parser)]
#[command(
    name = "inkstream",
    version,
    about = "Real-time event stream processing for writing and collaboration"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "INKSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// Override any config key: `--set sessions.gap=5m` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the local server's /healthz answers 200 (container healthchecks).
    Healthcheck(HealthcheckArgs),
    /// Run ingest, the log, the dataflow and the WebSocket fanout.
    Serve(ServeArgs),
    /// `serve` plus a simulator posting live traffic: the console at work.
    Demo(DemoArgs),
    /// Run the dataflow over an NDJSON event file, writing derived streams to DIR.
    Replay(ReplayArgs),
    /// Print the event contract.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Generate ingest load against a running `inkstream serve` (benchmarks).
    Load(LoadArgs),
    /// Write a realistic, deterministic NDJSON event file.
    Generate(GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    // Flags become overrides of their config keys; `--set` comes last and wins.
    let mut overrides = match &cli.command {
        Command::Serve(args) => args.overrides(),
        Command::Demo(args) => args.overrides(),
        Command::Replay(args) => args.overrides(),
        Command::Healthcheck(args) => args.overrides(),
        Command::Generate(_) | Command::Schemas { .. } | Command::Load(_) => Vec::new(),
    };
    overrides.extend(cli.set.iter().cloned());
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    match cli.command {
        Command::Healthcheck(_) => healthcheck::main(&config)?,
        Command::Serve(_) => serve::main(config)?,
        Command::Demo(args) => demo::main(&args, config)?,
        Command::Replay(args) => replay::main(&args, &config)?,
        Command::Schemas { command } => schemas::run(command)?,
        Command::Load(args) => load::main(args)?,
        Command::Generate(args) => generate::main(&args)?,
    }
    Ok(())
}
