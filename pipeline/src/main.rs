//! The `inkstream` binary: parses arguments and calls into the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use inkstream::config::Config;
use std::path::PathBuf;

// glibc malloc dominated the ingest and replay profiles (many small,
// short-lived allocations across threads); mimalloc handles that pattern well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
enum SchemasCommand {
    /// Every event type, its category and whether the pipeline derives it.
    List,
    /// One type's Avro schema (its payload record) and an example event.
    Show {
        /// The type, e.g. `writing.keystroke`; `envelope` for the published envelope.
        event_type: String,
    },
    /// docs/EVENTS.md, generated from the schemas.
    Docs,
}

/// A timely cluster of several processes (config `dataflow.hosts`,
/// `dataflow.process_index`): start the same command once per host.
#[derive(clap::Args)]
struct ClusterArgs {
    /// host:port of every process of the cluster, in process order, comma separated.
    #[arg(long, env = "INKSTREAM_HOSTS", value_delimiter = ',')]
    hosts: Vec<String>,
    /// This process's index in `--hosts`.
    #[arg(long, env = "INKSTREAM_PROCESS_INDEX")]
    process_index: Option<usize>,
}

impl ClusterArgs {
    fn overrides(&self, out: &mut Vec<String>) {
        if !self.hosts.is_empty() {
            let list: Vec<String> = self.hosts.iter().map(|h| toml_string(h)).collect();
            out.push(format!("dataflow.hosts=[{}]", list.join(",")));
        }
        if let Some(i) = self.process_index {
            out.push(format!("dataflow.process_index={i}"));
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the local server's /healthz answers 200 (container healthchecks).
    Healthcheck {
        /// The server's port (config `server.port`, default 8080).
        #[arg(long, env = "PORT")]
        port: Option<u16>,
    },
    /// Run ingest, the log, the dataflow and the WebSocket fanout.
    Serve {
        /// HTTP port (config `server.port`, default 8080).
        #[arg(long, env = "PORT")]
        port: Option<u16>,
        /// Redis URL for the durable log; without it the log is embedded.
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// Kafka-compatible brokers (host:port,…).
        #[arg(long, env = "KAFKA_BROKERS")]
        kafka_brokers: Option<String>,
        /// Dataflow worker threads.
        #[arg(long)]
        workers: Option<usize>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// HS256 secret of user JWTs (config `auth.jwt_secret`).
        #[arg(long, env = "INKSTREAM_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// express-session cookie secret (config `auth.session_secret`).
        #[arg(long, env = "INKSTREAM_SESSION_SECRET", hide_env_values = true)]
        session_secret: Option<String>,
    },
    /// Run the dataflow over an NDJSON event file, writing derived streams to DIR.
    Replay {
        /// The events, one JSON object per line.
        file: PathBuf,
        /// Output directory: one `<type>.ndjson` per derived event type.
        #[arg(long)]
        out: PathBuf,
        /// Dataflow worker threads.
        #[arg(long)]
        workers: Option<usize>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Checkpoint into DIR (config `checkpoint.dir`), and resume from its
        /// latest complete checkpoint if a previous run was killed.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
    },
    /// Print the event contract.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Generate ingest load against a running `inkstream serve` (benchmarks).
    Load {
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
        /// Bearer token or API key.
        #[arg(long, env = "INKSTREAM_LOAD_TOKEN")]
        token: Option<String>,
    },
    /// Write a realistic, deterministic NDJSON event file.
    Generate {
        /// Number of events.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Number of users.
        #[arg(long, default_value_t = 1_000)]
        users: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Largest arrival-order disorder, in ms.
        #[arg(long, default_value_t = 1_500)]
        disorder_ms: i64,
        /// Output file (`-` for stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Flags become overrides of their config keys; `--set` comes last and wins.
    let mut overrides = Vec::new();
    match &cli.command {
        Command::Serve {
            port,
            redis_url,
            kafka_brokers,
            workers,
            cluster,
            jwt_secret,
            session_secret,
        } => {
            cluster.overrides(&mut overrides);
            for (key, value) in [
                ("auth.jwt_secret", jwt_secret),
                ("auth.session_secret", session_secret),
            ] {
                if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                    overrides.push(format!("{key}={}", toml_string(v)));
                }
            }
            if let Some(p) = port {
                overrides.push(format!("server.port={p}"));
            }
            if let Some(u) = redis_url.as_deref().filter(|u| !u.is_empty()) {
                overrides.push(format!("redis.url={}", toml_string(u)));
            }
            if let Some(b) = kafka_brokers.as_deref().filter(|b| !b.is_empty()) {
                overrides.push(format!("kafka.brokers={}", toml_string(b)));
            }
            if let Some(w) = workers {
                overrides.push(format!("dataflow.workers={w}"));
            }
        }
        Command::Replay {
            workers,
            cluster,
            checkpoint_dir,
            ..
        } => {
            cluster.overrides(&mut overrides);
            if let Some(d) = checkpoint_dir {
                overrides.push(format!(
                    "checkpoint.dir={}",
                    toml_string(&d.to_string_lossy())
                ));
            }
            if let Some(w) = workers {
                overrides.push(format!("dataflow.workers={w}"));
            }
        }
        Command::Healthcheck { port } => {
            if let Some(p) = port {
                overrides.push(format!("server.port={p}"));
            }
        }
        Command::Generate { .. } | Command::Schemas { .. } | Command::Load { .. } => {}
    }
    overrides.extend(cli.set.iter().cloned());
    let config = Config::load(cli.config.as_deref(), &overrides)?;

    match cli.command {
        Command::Healthcheck { .. } => {
            let timeout = std::time::Duration::from_secs(3);
            inkstream::commands::healthcheck::check(config.server.port, timeout)?;
        }
        Command::Serve { .. } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(inkstream::commands::serve::run(config, shutdown_signal(), |_| {}))?;
        }
        Command::Replay { file, out, .. } => {
            let report = inkstream::commands::replay::run(&file, &out, &config)?;
            println!(
                "replayed {} events ({:.1} MB) in {:.3} s: {:.0} events/s; {} invalid, {} late, {} duplicates",
                report.events,
                report.bytes as f64 / 1e6,
                report.elapsed.as_secs_f64(),
                report.events_per_second(),
                report.invalid,
                report.late,
                report.duplicates
            );
            let [p50, p99, max] = report.epoch_delay;
            println!(
                "  epoch delay p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; peak RSS {:.1} MB",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
                report.peak_rss_bytes as f64 / 1e6
            );
            for (ty, n) in &report.derived {
                println!("  {ty}: {n}");
            }
        }
        Command::Schemas { command } => schemas_command(command)?,
        Command::Load {
            addr,
            mode,
            events,
            batch,
            connections,
            users,
            token,
            rate,
            seconds,
        } => {
            if mode == "fanout" || mode == "e2e" {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?;
                let r = runtime
                    .block_on(async {
                        if mode == "fanout" {
                            inkstream::commands::fanout_load::fanout(
                                &addr,
                                token.as_deref(),
                                connections,
                                events,
                            )
                            .await
                        } else {
                            inkstream::commands::fanout_load::end_to_end(
                                &addr,
                                token.as_deref(),
                                users,
                                rate,
                                seconds,
                            )
                            .await
                        }
                    })
                    .map_err(|e| anyhow::anyhow!(e))?;
                println!(
                    "{mode}: {} messages over {} connections in {:.2} s: {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
                    r.delivered,
                    r.connections,
                    r.elapsed.as_secs_f64(),
                    r.per_second(),
                    r.percentile_ms(0.5),
                    r.percentile_ms(0.99),
                    r.percentile_ms(1.0),
                    r.latencies_us.len()
                );
                return Ok(());
            }
            let mode = match mode.as_str() {
                "batch" => inkstream::commands::load::Mode::Batch,
                "single" => inkstream::commands::load::Mode::Single,
                "ws" => inkstream::commands::load::Mode::Ws,
                other => {
                    anyhow::bail!("--mode {other:?}: expected batch, single, ws, fanout or e2e")
                }
            };
            let config = inkstream::commands::load::LoadConfig {
                addr,
                mode,
                events,
                batch,
                connections,
                users,
                token,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let r = runtime
                .block_on(inkstream::commands::load::run(&config))
                .map_err(|e| anyhow::anyhow!(e))?;
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
        }
        Command::Generate {
            events,
            users,
            seed,
            disorder_ms,
            out,
        } => {
            let config = inkstream::commands::generate::GenerateConfig {
                events,
                users,
                seed,
                disorder_ms,
                ..Default::default()
            };
            if out.as_os_str() == "-" {
                let stdout = std::io::stdout();
                let mut w = std::io::BufWriter::new(stdout.lock());
                inkstream::commands::generate::generate(&config, &mut w)?;
            } else {
                let f = std::fs::File::create(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                inkstream::commands::generate::generate(&config, &mut w)?;
            }
        }
    }
    Ok(())
}

fn schemas_command(command: SchemasCommand) -> anyhow::Result<()> {
    use schemas::{EventType, payload};
    match command {
        SchemasCommand::List => {
            for t in EventType::all() {
                println!(
                    "{:<36} {:<14} {}",
                    t.name,
                    t.category.as_str(),
                    if t.derived { "derived" } else { "" }
                );
            }
        }
        SchemasCommand::Show { event_type } => {
            if event_type == "envelope" {
                println!("{}", schemas::confluent::published_schema());
                println!("schema id: {}", schemas::confluent::schema_id());
                return Ok(());
            }
            let t = EventType::lookup(&event_type).map_err(|e| anyhow::anyhow!("{e}"))?;
            let file = payload::AVRO_PAYLOAD_SOURCES
                .iter()
                .zip(payload::TYPES)
                .find(|(_, ty)| **ty == t.name)
                .map(|((_, text), _)| *text)
                .context("no schema file for the type")?;
            println!("{}", file.trim_end());
            if let Some((_, _, maximal)) = payload::examples()
                .into_iter()
                .find(|(ty, _, _)| *ty == t.name)
            {
                println!(
                    "\nexample data:\n{}",
                    serde_json::to_string_pretty(&maximal)?
                );
            }
        }
        SchemasCommand::Docs => print!("{}", schemas::docs::events_markdown()),
    }
    Ok(())
}

/// A TOML string literal.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
