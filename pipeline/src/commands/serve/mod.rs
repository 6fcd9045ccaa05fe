//! `inkstream serve`: ingest, log, dataflow and fanout in one process.
//!
//! With no Redis URL and no Kafka brokers everything runs in-process (the
//! embedded log is not durable, and says so at startup).
//!
//! Shutdown (SIGINT/SIGTERM): stop accepting connections and let in-flight
//! requests finish; close WebSocket clients with 1001; stop reading the log;
//! drain the dataflow (every derived event of what was read is emitted); and
//! acknowledge what it processed. Nothing acknowledged to a client is lost:
//! it is in the log, and unprocessed entries stay pending for the next start.
//! [`run`] reads in that order, top to bottom.
//!
//! - [`error`]: why it stops.
//! - [`outputs`]: the log, the fanout hub and every output of derived events.
//! - [`dataflow`]: starting the dataflow and its readers.
//! - [`lease`]: whether this instance runs the dataflow (the lease).
//! - [`ingest`]: authentication, mirror, trimming and the HTTP server.

mod dataflow;
mod error;
mod ingest;
mod lease;
mod outputs;

pub use error::ServeError;
pub use outputs::open_log;

use super::{ClusterArgs, toml_string};
use crate::config::Config;
use dataflow::{DataflowStart, RunningDataflow};
use ingest::Ingest;
use lease::DataflowControl;
use outputs::Outputs;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

// The flags of `inkstream serve`; each overrides its config key.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// HTTP port (config `server.port`, default 8080).
    #[arg(long, env = "PORT")]
    port: Option<u16>,
    /// Address to bind (config `server.bind`, default 127.0.0.1; any other
    /// address needs a credential or `auth.allow_anonymous = true`).
    #[arg(long, env = "INKSTREAM_BIND")]
    bind: Option<String>,
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
    /// The identity provider's JWKS for RS256/ES256 user tokens (config
    /// `auth.jwks_url`).
    #[arg(long, env = "INKSTREAM_JWKS_URL")]
    jwks_url: Option<String>,
    /// express-session cookie secret (config `auth.session_secret`).
    #[arg(long, env = "INKSTREAM_SESSION_SECRET", hide_env_values = true)]
    session_secret: Option<String>,
    /// SASL password for Kafka (config `kafka.sasl_password`).
    #[arg(long, env = "INKSTREAM_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    kafka_sasl_password: Option<String>,
    /// An external Schema Registry (Confluent API) to register the topics'
    /// schemas in (config `kafka.schema_registry_url`).
    #[arg(long, env = "INKSTREAM_SCHEMA_REGISTRY_URL")]
    schema_registry_url: Option<String>,
    /// Basic-auth password of the registry (config `kafka.schema_registry_password`).
    #[arg(
        long,
        env = "INKSTREAM_SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    schema_registry_password: Option<String>,
}

impl ServeArgs {
    /// The flags as `--set` overrides of their config keys (empty values
    /// from the environment are no values).
    pub fn overrides(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.cluster.overrides(&mut out);
        for (key, value) in [
            ("auth.jwt_secret", &self.jwt_secret),
            ("auth.session_secret", &self.session_secret),
            ("auth.jwks_url", &self.jwks_url),
            ("kafka.sasl_password", &self.kafka_sasl_password),
            ("kafka.schema_registry_url", &self.schema_registry_url),
            (
                "kafka.schema_registry_password",
                &self.schema_registry_password,
            ),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                out.push(format!("{key}={}", toml_string(v)));
            }
        }
        if let Some(p) = self.port {
            out.push(format!("server.port={p}"));
        }
        if let Some(b) = self.bind.as_deref().filter(|b| !b.is_empty()) {
            out.push(format!("server.bind={}", toml_string(b)));
        }
        if let Some(u) = self.redis_url.as_deref().filter(|u| !u.is_empty()) {
            out.push(format!("redis.url={}", toml_string(u)));
        }
        if let Some(b) = self.kafka_brokers.as_deref().filter(|b| !b.is_empty()) {
            out.push(format!("kafka.brokers={}", toml_string(b)));
        }
        if let Some(w) = self.workers {
            out.push(format!("dataflow.workers={w}"));
        }
        out
    }
}

/// `inkstream serve`: [`run`] on a multi-threaded runtime until SIGINT or SIGTERM.
pub fn main(config: Config) -> Result<(), ServeError> {
    let runtime = super::async_runtime()?;
    let result = runtime.block_on(run(config, shutdown_signal(), |_| {}));
    // `run` has drained; what is left is a task stuck in a client library's
    // blocking call on a service that is gone. It must not hold the exit.
    runtime.shutdown_timeout(LEFTOVER_TASKS_TIMEOUT);
    result
}

/// How long the exit waits for tasks still running after the drain.
const LEFTOVER_TASKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
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

/// Runs until `shutdown` resolves, then shuts down cleanly. Calls `on_bound`
/// with the bound address once the listener is up (port 0 picks a free port).
///
/// Startup: the outputs first (the dataflow writes to them), then the
/// dataflow (now, later under the lease, or never), then ingest; HTTP opens
/// last. Shutdown is [`drain`], after HTTP has closed.
pub async fn run(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    ingest::check_anonymous(&config)?;
    let metrics = connectors::Metrics::standalone();
    outputs::check_kafka(&config, &metrics).await?;
    config.kafka.schema_ids = outputs::register_schemas(&config).await?;
    let log = open_log(&config, &metrics).await?;
    let outputs = Outputs::open(&config, &metrics).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let start = DataflowStart::prepare(&config, &log, &metrics, outputs.for_dataflow, &stop_rx)?;
    let dataflow = lease::launch(&config, start, &metrics, &stop_rx, &stop_tx)?;
    // The console's throughput and lag chart; ends at the stop signal.
    connectors::websocket_fanout::pipeline_stats::spawn(&outputs.hub, &metrics, stop_rx.clone());
    let ingest = Ingest::start(
        &config,
        log,
        &outputs.hub,
        outputs.views,
        &metrics,
        &stop_rx,
    )?;
    let listener = ingest::bind(&config, on_bound).await?;
    let result = ingest::serve_until_stopped(
        &config,
        listener,
        ingest.state,
        outputs.notifier,
        &metrics,
        shutdown,
        dataflow.fatal_rx.clone(),
    )
    .await;
    // HTTP is down: nothing new can be acknowledged.
    let fatal_rx = dataflow.fatal_rx.clone();
    drain(
        &stop_tx,
        dataflow,
        ingest.mirror,
        outputs.derived,
        config.server.shutdown_grace,
    )
    .await;
    if let Some(reason) = fatal_rx.borrow().clone() {
        return Err(ServeError::Stopped(reason));
    }
    if let Some(error) = config.kafka.fatal.reported() {
        return Err(ServeError::KafkaFatal(error));
    }
    tracing::info!("stopped");
    result
}

/// Stops what runs, in the order that loses nothing:
/// 1. stop reading the log (readers, mirror and lease task see the signal);
/// 2. the readers end, dropping the dataflow's input: the dataflow drains;
/// 3. the mirror stops;
/// 4. the dataflow's workers finish, and what it derived is delivered;
/// 5. the notifier routes what the dataflow derived last;
/// 6. drained and acknowledged: the lease is released for a standby.
///
/// Each wait is bounded by `grace`.
async fn drain(
    stop_tx: &watch::Sender<bool>,
    dataflow: DataflowControl,
    mirror: Option<tokio::task::JoinHandle<()>>,
    derived: Option<Arc<connectors::kafka::derived::DerivedProducer>>,
    grace: Duration,
) {
    let _ = stop_tx.send(true);
    // A derived producer waiting for room (broker down) stops waiting: what
    // follows the last checkpoint is derived again by whoever resumes.
    if let Some(p) = &derived {
        p.stop_waiting();
    }
    // The lease task ends at the stop signal; after it, what runs is final.
    let (running, lease, keep_until_drained) = dataflow.settle().await;
    let (bridge, sources, notifier_task) = match running {
        Some(RunningDataflow {
            bridge,
            sources,
            notifier,
        }) => (Some(bridge), sources, notifier),
        None => (None, Vec::new(), None),
    };
    if tokio::time::timeout(grace, futures_util::future::join_all(sources))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "dataflow drain exceeded the grace period"
        );
    }
    if let Some(m) = mirror
        && tokio::time::timeout(grace, m).await.is_err()
    {
        tracing::warn!("the mirror did not stop within the grace period");
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(bridge) = bridge {
            bridge.join();
        }
        // The dataflow has drained: deliver what it derived before exiting.
        if let Some(p) = derived {
            p.flush(grace);
        }
    })
    .await;
    // After the drain: what the dataflow derived last is routed too.
    if let Some((stop, task)) = notifier_task {
        let _ = stop.send(true);
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("the notifier did not stop within the grace period");
        }
    }
    if let Some(lease) = lease {
        lease.release().await;
    }
    drop(keep_until_drained);
}
