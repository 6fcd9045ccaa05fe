//! Settings of the view store ([`ViewStoreConfig`]).

use std::time::Duration;

/// Settings of the view store.
#[derive(Debug, Clone)]
pub struct ViewStoreConfig {
    /// Redis (`redis://…`); in-process when `None`.
    pub redis_url: Option<String>,
    /// Key prefix (as the log's): keys are `<prefix>:view:…`.
    pub prefix: String,
    /// How long an ended session and a resolved conflict stay queryable, in
    /// event time (default 1 h).
    pub ended_retention: Duration,
    /// How long per-day writing totals are kept (default 35 days).
    pub writing_retention: Duration,
    /// TTL of live Redis keys, refreshed on every write (default 24 h): a
    /// document nobody touches for a day disappears.
    pub ttl: Duration,
    /// Batches the queue holds before dropping (default 1024).
    pub queue_batches: usize,
    /// Most keys per view (sessions, presence documents, conflict
    /// documents, team pairs, writing projects, live WPM users), in memory
    /// and in Redis (default 500 000); past it new keys are not added and
    /// `inkstream_limit_hits_total{limit="view_keys"}` counts each.
    pub max_keys: usize,
    /// `redis.tls` (used with `rediss://`).
    pub redis_tls: crate::tls::TlsFiles,
}

impl Default for ViewStoreConfig {
    fn default() -> Self {
        ViewStoreConfig {
            redis_url: None,
            prefix: "inkstream".into(),
            ended_retention: Duration::from_secs(3600),
            writing_retention: Duration::from_secs(35 * 86_400),
            ttl: Duration::from_secs(86_400),
            queue_batches: 1024,
            max_keys: 500_000,
            redis_tls: Default::default(),
        }
    }
}
