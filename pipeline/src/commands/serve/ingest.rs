//! The ingest side of `serve`: authentication, the log's background tasks
//! (the Kafka mirror, trimming) and the HTTP/WebSocket server, which stops
//! accepting at the stop signal and lets in-flight requests finish.

use super::error::ServeError;
use super::lease::{Fatal, redis_connection};
use crate::config::Config;
use connectors::auth::{Authenticator, RateLimiter};
use connectors::http_api::{self, AppState, LimitedListener};
use connectors::kafka::mirror::MirrorConfig;
use connectors::notifier::NotifierHandle;
use connectors::view_store::ViewStore;
use connectors::websocket_fanout::Hub;
use connectors::{EventLog, Metrics};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The ingest routes' state, and the mirror's task (stopped by the drain).
pub(super) struct Ingest {
    pub state: AppState,
    pub mirror: Option<tokio::task::JoinHandle<()>>,
}

impl Ingest {
    /// Authentication, then the Kafka mirror and log trimming.
    pub fn start(
        config: &Config,
        log: EventLog,
        hub: &Arc<Hub>,
        views: ViewStore,
        metrics: &Metrics,
        stop_rx: &watch::Receiver<bool>,
    ) -> Result<Ingest, ServeError> {
        let auth = authenticator(config, metrics)?;
        // Trimming waits for the consumers that read the log: the dataflow (when
        // it reads Redis) and the mirror (when Kafka is configured).
        let mut required_groups = Vec::new();
        if config.kafka.brokers.is_none() {
            required_groups.push(config.dataflow.group.clone());
        }
        let mut mirror = None;
        if let Some(brokers) = config.kafka.cluster().map_err(ServeError::Auth)? {
            tracing::info!(%brokers, "mirroring the log to Kafka");
            tokio::spawn(watch_kafka_durability(brokers.clone(), metrics.clone()));
            let mut mc = MirrorConfig::new(brokers);
            mc.new_topics = config.kafka.new_topics();
            mc.batch = config.kafka.mirror_batch;
            mc.in_flight = config.kafka.mirror_in_flight;
            mc.round_pages = config.kafka.mirror_round_pages;
            mc.live = connectors::kafka::mirror::ProducerTuning {
                linger: config.kafka.mirror_live_linger,
                batch_bytes: config.kafka.mirror_live_batch_bytes,
            };
            mc.bulk = connectors::kafka::mirror::ProducerTuning {
                linger: config.kafka.mirror_bulk_linger,
                batch_bytes: config.kafka.mirror_bulk_batch_bytes,
            };
            mc.max_attempts = config.kafka.mirror_max_attempts;
            mc.delivery_timeout = config.kafka.mirror_delivery_timeout;
            mc.claim_idle_after = config.redis.claim_idle_after;
            // One consumer per instance, stable at its place (see the mirror).
            mc.consumer = match super::lease::place(config.server.port) {
                Some(place) => format!("mirror-{place}"),
                None => connectors::lease::holder_at(None)
                    .0
                    .replace("-#", "mirror-"),
            };
            let under_lease = config.redis.url.is_some() && config.dataflow.lease;
            if config.kafka.mirror_transactional {
                // Under the lease one id for the group: the next holder's
                // init_transactions aborts a dead holder's open transaction
                // at once (and fences one that lost the lease). Otherwise
                // one per instance: mirrors running side by side must not
                // fence each other.
                mc.record_rounds = under_lease;
                mc.transactional_id = Some(if under_lease {
                    format!("{}.{}", config.redis.prefix, mc.group)
                } else {
                    format!("{}.{}", config.redis.prefix, mc.consumer)
                });
            }
            required_groups.push(mc.group.clone());
            tokio::spawn(connectors::kafka::lag::report_lag(
                log.clone(),
                mc.group.clone(),
                metrics.clone(),
                std::time::Duration::from_secs(5),
                stop_rx.clone(),
            ));
            mirror = Some(match (&config.redis.url, config.dataflow.lease) {
                // One mirror at a time on a shared log: two mirrors reading
                // one stream would produce its pages side by side, so a
                // partition would no longer hold a key's events in log order.
                (Some(url), true) => tokio::spawn(super::lease::mirror_under_lease(
                    super::lease::redis_connection(url, &config.redis.tls)?,
                    super::lease::MirrorLease {
                        prefix: config.redis.prefix.clone(),
                        holder: connectors::lease::holder_at(
                            super::lease::place(config.server.port).as_deref(),
                        ),
                        ttl: config.dataflow.lease_ttl,
                        replicas: config.redis.replica_acks(),
                    },
                    log.clone(),
                    mc,
                    metrics.clone(),
                    stop_rx.clone(),
                )),
                _ => tokio::spawn(connectors::kafka::mirror::run(
                    log.clone(),
                    mc,
                    metrics.clone(),
                    stop_rx.clone(),
                )),
            });
        }
        if matches!(log, EventLog::Redis(_)) {
            tokio::spawn(watch_persistence(log.clone(), metrics.clone()));
            tokio::spawn(trim_periodically(
                log.clone(),
                required_groups,
                config.redis.retention,
                config.redis.trim_interval,
                metrics.clone(),
            ));
        }
        let state = AppState {
            log,
            hub: hub.clone(),
            metrics: metrics.clone(),
            config: Arc::new(connectors::http_api::IngestConfig {
                request_timeout: config.server.request_timeout,
                allowed_origins: config.server.allowed_origins.clone(),
                anonymous_any_host: config.auth.allow_anonymous,
                ..config.ingest.to_ingest_config()
            }),
            auth,
            limiter: Arc::new(RateLimiter::new(100_000)),
            views,
            // Set when the server starts: the notifier belongs to the outputs.
            notifier: None,
        };
        Ok(Ingest { state, mirror })
    }
}

/// API keys, JWTs and sessions as `[auth]` says; off (and loudly so) without them.
fn authenticator(config: &Config, metrics: &Metrics) -> Result<Authenticator, ServeError> {
    let auth_config = config
        .auth
        .to_auth_config(&config.ingest)
        .map_err(ServeError::Auth)?;
    for (setting, secret) in [
        ("auth.jwt_secret", &auth_config.jwt_secret),
        ("auth.session_secret", &auth_config.session_secret),
    ] {
        // An HMAC key shorter than its hash (SHA-256: 32 bytes) can be
        // guessed offline from any token or cookie it signed (RFC 7518
        // §3.2 asks for at least that much). Warned, not refused, so that
        // existing deployments still start; the length only, never the key.
        if let Some(len) = secret.as_ref().map(String::len).filter(|len| *len < 32) {
            tracing::warn!(
                setting,
                bytes = len,
                "a signing secret shorter than 32 bytes can be guessed offline from any \
                 credential it signed; use 32 random bytes or more"
            );
        }
    }
    let sessions = match &config.redis.url {
        Some(url) if auth_config.session_secret.is_some() => {
            Some(redis_connection(url, &config.redis.tls)?)
        }
        _ => None,
    };
    let auth = Authenticator::new(auth_config, sessions, metrics.auth_jwks_fetches.clone())
        .map_err(ServeError::Jwks)?;
    if !auth.enabled() {
        tracing::warn!(
            "AUTHENTICATION IS OFF: anyone who can reach this port may ingest and subscribe. \
             Configure auth.api_keys, auth.jwt_secret, auth.jwks_url or auth.session_secret \
             to turn it on."
        );
    }
    Ok(auth)
}

/// Refuses to serve anonymously beyond this machine: with no credential
/// configured, `server.bind` must be loopback unless `auth.allow_anonymous`.
/// Checked before anything starts.
pub(super) fn check_anonymous(config: &Config) -> Result<(), ServeError> {
    let auth = config
        .auth
        .to_auth_config(&config.ingest)
        .map_err(ServeError::Auth)?;
    if !auth.enabled() && !is_loopback(&config.server.bind) && !config.auth.allow_anonymous {
        return Err(ServeError::AnonymousOnNetwork {
            bind: config.server.bind.clone(),
        });
    }
    Ok(())
}

/// Whether `bind` only accepts connections from this machine: a loopback
/// IP (`127.0.0.0/8`, `::1`) or `localhost`.
fn is_loopback(bind: &str) -> bool {
    let host = bind.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How often Redis's persistence is read again (a failover may land on a
/// server configured otherwise, and `CONFIG SET` changes it at run time).
const PERSISTENCE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads what Redis promises about acknowledged events at startup and every
/// [`PERSISTENCE_EVERY`]: says it in the log (a warning when a crash of
/// Redis or of its host, or a full Redis, would lose acknowledged events or
/// their dedup ids; again whenever it changes) and in
/// `inkstream_redis_persistence_info`.
async fn watch_persistence(log: EventLog, metrics: Metrics) {
    let mut tick = tokio::time::interval(PERSISTENCE_EVERY);
    let mut last: Option<connectors::event_log::redis::persistence::Persistence> = None;
    loop {
        tick.tick().await;
        let now = match log.persistence().await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "reading Redis's persistence failed");
                continue;
            }
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        metrics.redis_persistence.reset();
        metrics
            .redis_persistence
            .with_label_values(&[
                now.appendonly_label(),
                now.appendfsync_label(),
                now.eviction_label(),
            ])
            .set(1);
        if let Some(eviction) = now.evicts().describe() {
            tracing::warn!(maxmemory_policy = now.eviction_label(), "{eviction}");
        }
        let durability = now.durability();
        if durability.weak() {
            tracing::warn!(
                appendonly = now.appendonly_label(),
                appendfsync = now.appendfsync_label(),
                "{}",
                durability.describe()
            );
        } else {
            tracing::info!(
                appendonly = now.appendonly_label(),
                appendfsync = now.appendfsync_label(),
                "{}",
                durability.describe()
            );
        }
        last = Some(now);
    }
}

/// Reads the event topics' durability once they exist (every second
/// until then), then every [`PERSISTENCE_EVERY`]: the metric, and a
/// warning while it is weak (docs/OPERATIONS.md "Kafka durability").
async fn watch_kafka_durability(brokers: connectors::kafka::Brokers, metrics: Metrics) {
    use connectors::kafka::durability;
    let topics: Vec<String> = schemas::Category::ALL
        .iter()
        .map(|c| connectors::kafka::events_topic(*c))
        .collect();
    let mut last = None;
    loop {
        let wait = match durability::read(&brokers, &topics).await {
            Ok(now) => {
                if last != Some(now) {
                    metrics.kafka_durability.reset();
                    metrics
                        .kafka_durability
                        .with_label_values(&[
                            now.replicas.to_string().as_str(),
                            now.min_insync.to_string().as_str(),
                            if now.unclean_leader_election {
                                "true"
                            } else {
                                "false"
                            },
                        ])
                        .set(1);
                    match now.weakness() {
                        Some(weak) => tracing::warn!(
                            replicas = now.replicas,
                            min_insync_replicas = now.min_insync,
                            "{weak}"
                        ),
                        None => tracing::info!(
                            replicas = now.replicas,
                            min_insync_replicas = now.min_insync,
                            "the event topics keep each acknowledged record on at least two copies"
                        ),
                    }
                    last = Some(now);
                }
                PERSISTENCE_EVERY
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the event topics' durability failed");
                if last.is_none() {
                    std::time::Duration::from_secs(1)
                } else {
                    PERSISTENCE_EVERY
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Trims acknowledged entries older than the retention, forever.
async fn trim_periodically(
    log: EventLog,
    groups: Vec<String>,
    retention: std::time::Duration,
    every: std::time::Duration,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let keep_after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(retention.as_millis() as u64);
        match log.trim(&groups, keep_after).await {
            Ok(n) if n > 0 => tracing::debug!(entries = n, "trimmed the log"),
            Ok(_) => {}
            Err(e) => {
                metrics
                    .log_errors
                    .with_label_values(&[log.backend(), "trim"])
                    .inc();
                tracing::warn!(error = %e, "trimming the log failed");
            }
        }
    }
}

/// Binds `server.bind:server.port` and tells `on_bound` the address.
pub(super) async fn bind(
    config: &Config,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<TcpListener, ServeError> {
    let addr = format!("{}:{}", config.server.bind, config.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Server)?;
    tracing::info!(addr = %local, "listening");
    on_bound(local);
    Ok(listener)
}

/// Serves HTTP and WebSockets until `shutdown` resolves, the dataflow
/// stops this instance (`fatal`) or a Kafka client hits a fatal error
/// (`config.kafka.fatal`); then stops accepting, closes WebSocket clients
/// and lets in-flight requests finish.
pub(super) async fn serve_until_stopped(
    config: &Config,
    listener: TcpListener,
    mut ingest: AppState,
    notifier: Option<NotifierHandle>,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut fatal: watch::Receiver<Fatal>,
) -> Result<(), ServeError> {
    let (signal_tx, signal_rx) = watch::channel(false);
    let mut kafka_fatal = config.kafka.fatal.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fatal.wait_for(|f| f.is_some()) => {}
            _ = kafka_fatal.wait_for(|f| f.is_some()) => {}
        }
        let _ = signal_tx.send(true);
    });
    let mut graceful = signal_rx.clone();
    let hub_for_close = ingest.hub.clone();
    let listener = LimitedListener::new(
        listener,
        config.server.max_connections,
        config.server.idle_timeout,
        metrics.http_connection_limit_waits.clone(),
    );
    ingest.notifier = notifier;
    let app = http_api::router(ingest);
    http_api::serve(
        listener,
        app,
        config.server.header_read_timeout,
        async move {
            let _ = graceful.wait_for(|s| *s).await;
            tracing::info!("shutting down: finishing in-flight requests");
            // Upgraded WebSocket connections are not tracked by the HTTP
            // server's graceful shutdown: close them explicitly.
            hub_for_close.close_all();
        },
    )
    .await;
    Ok(())
}
