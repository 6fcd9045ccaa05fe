//! What every handler reaches through axum's `State`: [`AppState`] (the log,
//! the fanout hub, the views, the notifier, metrics, auth) and the ingest
//! settings ([`IngestConfig`]).

use crate::auth::{Authenticator, Rate, RateLimiter};
use crate::event_log::EventLog;
use crate::metrics::Metrics;
use crate::notifier::NotifierHandle;
use crate::view_store::ViewStore;
use crate::websocket_fanout::Hub;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the ingest API.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest accepted request body or WS frame, in bytes (default 8 MiB).
    pub max_body_bytes: usize,
    /// Most events in one request or frame (default 10,000).
    pub max_batch_events: usize,
    /// Per-event decode limits; `now_ms` is filled per request when
    /// `check_skew` is on.
    pub limits: schemas::Limits,
    /// Whether `ts` must lie within the skew window of the server clock.
    pub check_skew: bool,
    /// How long an append may take before the request answers 503.
    pub append_timeout: Duration,
    /// Rate of an end user (JWT or session), in events.
    pub user_rate: Rate,
    /// Rate of an app whose key sets none, in events.
    pub app_rate: Rate,
    /// Rate of each anonymous peer address (auth off), in events.
    pub anonymous_rate: Rate,
    /// How long a handler may take before the request answers 503
    /// `request_timed_out` (default 30 s; WebSocket upgrades answer at once).
    pub request_timeout: Duration,
    /// Origins (`scheme://host[:port]`) whose pages may open WebSockets with
    /// the session cookie, besides the server's own (default none).
    pub allowed_origins: Vec<String>,
    /// With auth off, whether requests addressed to any `Host` are served
    /// (`auth.allow_anonymous`, default false). When false, an anonymous
    /// caller's `Host` must be a loopback name or address (`localhost`,
    /// `*.localhost`, `127.0.0.0/8`, `[::1]`): a web page that rebinds its
    /// own domain name to 127.0.0.1 (DNS rebinding) sends its own name.
    pub anonymous_any_host: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 8 << 20,
            max_batch_events: 10_000,
            limits: schemas::Limits::default(),
            check_skew: true,
            append_timeout: Duration::from_secs(5),
            user_rate: Rate {
                per_second: 200.0,
                burst: 1_000.0,
            },
            app_rate: Rate {
                per_second: 50_000.0,
                burst: 100_000.0,
            },
            anonymous_rate: Rate {
                per_second: 200.0,
                burst: 1_000.0,
            },
            request_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            anonymous_any_host: false,
        }
    }
}

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub log: EventLog,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub config: Arc<IngestConfig>,
    pub auth: Authenticator,
    pub limiter: Arc<RateLimiter>,
    /// The materialised views the query endpoints read.
    pub views: ViewStore,
    /// The notifier's queue and store, when `[notifications]` is enabled;
    /// without it the notification routes answer 503 `notifications_disabled`.
    pub notifier: Option<NotifierHandle>,
}
