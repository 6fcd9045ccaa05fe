//! Whether this process runs the dataflow: not at all (`dataflow.enabled =
//! false`: a gateway), at once, or — when several instances share Redis —
//! only while it holds the dataflow lease, stopping when it loses it.

use super::dataflow::{DataflowStart, RunningDataflow};
use super::error::ServeError;
use crate::config::Config;
use connectors::Metrics;
use connectors::lease::Lease;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why this instance must stop although nobody asked it to.
pub(super) type Fatal = Option<Arc<ServeError>>;

/// The dataflow as the lease decides it, for the drain.
pub(super) struct DataflowControl {
    /// The running dataflow, once started (final after the lease task ends).
    pub running: Arc<Mutex<Option<RunningDataflow>>>,
    /// Holds the lease until the stop signal; returns it for release.
    pub lease_task: Option<JoinHandle<Option<Lease>>>,
    /// Set when the dataflow failed to start or the lease was lost.
    pub fatal_rx: watch::Receiver<Fatal>,
    /// Without a lease task nothing can set `fatal_rx`; its sender is kept
    /// here so that it stays open (a closed channel would read as a stop).
    fatal_tx: Option<watch::Sender<Fatal>>,
    /// A dataflow this process does not run (a gateway): its outputs stay
    /// open until the drain ends, as in a process that runs it.
    unstarted: Option<DataflowStart>,
}

impl DataflowControl {
    /// Waits for the lease task (it ends at the stop signal) and takes what
    /// runs: the dataflow, if any, and the lease to release.
    /// Also returns what must stay alive until the drain ends.
    pub async fn settle(self) -> (Option<RunningDataflow>, Option<Lease>, impl Sized) {
        let lease = match self.lease_task {
            Some(t) => t.await.ok().flatten(),
            None => None,
        };
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        (running, lease, (self.fatal_tx, self.unstarted))
    }
}

/// Starts the dataflow as the config says (see the module doc).
pub(super) fn launch(
    config: &Config,
    start: DataflowStart,
    metrics: &Metrics,
    stop_rx: &watch::Receiver<bool>,
    stop_tx: &Arc<watch::Sender<bool>>,
) -> Result<DataflowControl, ServeError> {
    let running: Arc<Mutex<Option<RunningDataflow>>> = Arc::default();
    // 1 while this process runs the dataflow (holds the lease): which
    // instance is the active one, for operators and tests.
    let active = prometheus::IntGauge::new(
        "inkstream_dataflow_active",
        "1 while this process runs the dataflow (holds the dataflow lease), else 0.",
    )
    .map_err(ServeError::Metrics)?;
    metrics
        .registry()
        .register(Box::new(active.clone()))
        .map_err(ServeError::Metrics)?;
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let mut lease_task = None;
    let mut kept_fatal_tx = None;
    let mut unstarted = None;
    match (&config.redis.url, config.dataflow.enabled) {
        (_, false) => {
            tracing::info!(
                "dataflow: off in this process (dataflow.enabled = false): gateway only"
            );
            kept_fatal_tx = Some(fatal_tx);
            unstarted = Some(start);
        }
        (Some(url), true) if config.dataflow.lease => {
            let conn = redis_connection(url, &config.redis.tls)?;
            let held = HeldLease {
                conn,
                prefix: config.redis.prefix.clone(),
                name: lease_name(config),
                holder: connectors::lease::holder_at(place(config.server.port).as_deref()),
                ttl: config.dataflow.lease_ttl,
                replicas: config.redis.replica_acks(),
            };
            lease_task = Some(tokio::spawn(held.run(
                start,
                running.clone(),
                active,
                fatal_tx,
                stop_rx.clone(),
                stop_tx.clone(),
            )));
        }
        (_, true) => {
            *running.lock().unwrap_or_else(|p| p.into_inner()) = Some(start.start(None)?);
            active.set(1);
            kept_fatal_tx = Some(fatal_tx);
        }
    }
    Ok(DataflowControl {
        running,
        lease_task,
        fatal_rx,
        fatal_tx: kept_fatal_tx,
        unstarted,
    })
}

/// A lazy connection to `redis.url` (TLS as `redis.tls` says).
pub(super) fn redis_connection(
    url: &str,
    tls: &connectors::tls::TlsFiles,
) -> Result<connectors::redis_conn::PrimaryConnection, ServeError> {
    let client = connectors::tls::redis_client(url, tls).map_err(ServeError::RedisTls)?;
    connectors::redis_conn::PrimaryConnection::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .map_err(ServeError::RedisUrl)
}

/// One lease per process of a timely cluster: its processes run together,
/// each standing in for one index.
fn lease_name(config: &Config) -> String {
    if config.dataflow.processes() > 1 {
        format!(
            "dataflow:{}:p{}",
            config.dataflow.group, config.dataflow.process_index
        )
    } else {
        format!("dataflow:{}", config.dataflow.group)
    }
}

/// Where this instance runs, `<host>:<port>` (two instances on one host need
/// two ports): restarted there, it takes its own lease back at once. `None`
/// with a port chosen at bind (no stable place).
pub(super) fn place(port: u16) -> Option<String> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    (port != 0).then(|| format!("{host}:{port}"))
}

/// The lease this instance runs the dataflow under.
struct HeldLease {
    conn: connectors::redis_conn::PrimaryConnection,
    prefix: String,
    name: String,
    /// This process start's holder name and its place (see
    /// [`connectors::lease::holder_at`]).
    holder: (String, String),
    ttl: std::time::Duration,
    /// `redis.min_replica_acks`: replicas that must hold a take.
    replicas: connectors::redis_conn::ReplicaAcks,
}

impl HeldLease {
    /// Waits for the lease, starts the dataflow, and holds the lease until
    /// the stop signal — or, when it is lost, stops this instance.
    async fn run(
        self,
        start: DataflowStart,
        running: Arc<Mutex<Option<RunningDataflow>>>,
        active: prometheus::IntGauge,
        fatal_tx: watch::Sender<Fatal>,
        mut stop: watch::Receiver<bool>,
        stop_now: Arc<watch::Sender<bool>>,
    ) -> Option<Lease> {
        let lease = Lease::acquire(
            self.conn,
            &self.prefix,
            &self.name,
            (&self.holder.0, &self.holder.1),
            (self.ttl, self.replicas),
            stop.clone(),
        )
        .await?;
        // Starting may block (a cluster waits for its peers).
        let fence = lease.fence();
        let started = tokio::task::spawn_blocking(move || start.start(Some(fence)))
            .await
            .unwrap_or_else(|e| Err(ServeError::StartPanicked(e)));
        match started {
            Ok(d) => {
                *running.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
                active.set(1);
            }
            Err(e) => {
                let _ = fatal_tx.send(Some(Arc::new(e)));
                return Some(lease);
            }
        }
        let mut lost = lease.lost();
        tokio::select! {
            _ = lost.wait_for(|l| *l) => {
                // Stop reading at once (another instance may hold the
                // lease soon); the rest shuts down as usual.
                let _ = stop_now.send(true);
                active.set(0);
                let _ = fatal_tx.send(Some(Arc::new(ServeError::LeaseLost)));
            }
            _ = stop.wait_for(|s| *s) => {}
        }
        Some(lease)
    }
}

/// Where the mirror's lease lives and who asks for it.
pub(super) struct MirrorLease {
    pub prefix: String,
    /// This process start's holder name and its place.
    pub holder: (String, String),
    pub ttl: std::time::Duration,
    /// `redis.min_replica_acks`: replicas that must hold a take.
    pub replicas: connectors::redis_conn::ReplicaAcks,
}

/// Runs the Kafka mirror only while holding the lease
/// `<redis.prefix>:lease:mirror` (the dataflow's TTL), so that one instance
/// at a time mirrors a shared log: each stream's pages are then produced in
/// log order, and each partition (one Redis shard's entries) keeps it. The
/// other instances stand by; one takes over within the TTL of the holder's
/// end and claims the entries it left pending (`redis.claim_idle_after`).
/// A holder that loses the lease stops mirroring and asks for it again.
pub(super) async fn mirror_under_lease(
    conn: connectors::redis_conn::PrimaryConnection,
    lease: MirrorLease,
    log: connectors::event_log::EventLog,
    config: connectors::kafka::mirror::MirrorConfig,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some(held) = Lease::acquire(
            conn.clone(),
            &lease.prefix,
            "mirror",
            (&lease.holder.0, &lease.holder.1),
            (lease.ttl, lease.replicas),
            stop.clone(),
        )
        .await
        else {
            return; // stopped while standing by
        };
        let (mirror_stop, mirror_stop_rx) = watch::channel(false);
        let mut taking_over = config.clone();
        taking_over.claim_at_start = true;
        let mut mirror = tokio::spawn(connectors::kafka::mirror::run(
            log.clone(),
            taking_over,
            metrics.clone(),
            mirror_stop_rx,
        ));
        let mut lost = held.lost();
        let (stopping, ended) = tokio::select! {
            _ = stop.wait_for(|s| *s) => (true, false),
            _ = lost.wait_for(|l| *l) => {
                tracing::warn!("mirror lease lost: mirroring stops here; asking for the lease again");
                (false, false)
            }
            _ = &mut mirror => {
                tracing::error!("the mirror ended on its own; asking for the lease again");
                (false, true)
            }
        };
        let _ = mirror_stop.send(true);
        if !ended {
            let _ = mirror.await;
        }
        held.release().await;
        // A fenced mirror reported a fatal error and the instance stops: a
        // new mirror here would fence the one that took over back.
        if stopping || *stop.borrow() || config.brokers.fatal.reported().is_some() {
            return;
        }
    }
}
