//! `inkstream load`: load generators for benchmarks, against a running
//! `inkstream serve`.
//!
//! - [`ingest`]: `--mode batch|single|ws`, on the ingest API.
//! - [`fanout`]: `--mode fanout|e2e`, on the WebSocket fanout.

mod error;
pub mod fanout;
pub mod ingest;
mod raw_ws;

pub use error::LoadError;
pub use ingest::{LoadConfig, LoadReport, Mode, run};

// The flags of `inkstream load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// host:port of the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// batch (NDJSON bodies), single (one event per request), ws (/ws/ingest
    /// frames); fanout (`--connections` subscribers, `--events` broadcasts:
    /// deliveries/s and latency); e2e (ingest at `--rate` for `--seconds`:
    /// ingest → live WPM message latency).
    #[arg(long, default_value = "batch")]
    mode: String,
    /// e2e: events per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// e2e: how long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per request or frame.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// fanout: connections broadcasting at once, each with one broadcast
    /// in flight (the dataflow publishes without waiting for a reply).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Bearer token or API key.
    #[arg(long, env = "INKSTREAM_LOAD_TOKEN")]
    token: Option<String>,
}

/// `inkstream load`: runs the `--mode` asked for and prints what it measured.
pub fn main(args: LoadArgs) -> Result<(), LoadError> {
    if args.mode == "fanout" || args.mode == "e2e" {
        let runtime = crate::commands::async_runtime()?;
        let r = runtime.block_on(async {
            if args.mode == "fanout" {
                fanout::fanout(
                    &args.addr,
                    args.token.as_deref(),
                    args.connections,
                    args.events,
                    args.publishers,
                )
                .await
            } else {
                fanout::end_to_end(
                    &args.addr,
                    args.token.as_deref(),
                    args.users,
                    args.rate,
                    args.seconds,
                )
                .await
            }
        })?;
        r.print(&args.mode);
        return Ok(());
    }
    let mode = match args.mode.as_str() {
        "batch" => Mode::Batch,
        "single" => Mode::Single,
        "ws" => Mode::Ws,
        other => return Err(LoadError::Mode(other.to_owned())),
    };
    let config = LoadConfig {
        addr: args.addr,
        mode,
        events: args.events,
        batch: args.batch,
        connections: args.connections,
        users: args.users,
        token: args.token,
    };
    let runtime = crate::commands::async_runtime()?;
    let r = runtime.block_on(run(&config))?;
    println!(
        "{:?}: {} events in {} requests over {} connections in {:.2} s: {:.0} events/s; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        config.mode,
        r.events,
        r.requests,
        config.connections,
        r.elapsed.as_secs_f64(),
        r.events_per_second(),
        r.percentile_ms(0.5),
        r.percentile_ms(0.99),
        r.percentile_ms(1.0)
    );
    Ok(())
}
