//! Settings of the fanout hub ([`HubConfig`]).

use std::time::Duration;

/// Settings of the fanout hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most bytes queued for one connection before it is disconnected as slow.
    pub max_queue_bytes: usize,
    /// Most channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Publications kept per channel for recovery (0: no history).
    pub history_size: usize,
    /// Age after which a kept publication is dropped.
    pub history_max_age: Duration,
    /// Most channels keeping history; the least recently published loses its
    /// history first (0: no history).
    pub history_max_channels: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_queue_bytes: 1 << 20,
            max_subscriptions: 256,
            history_size: 100,
            history_max_age: Duration::from_secs(300),
            history_max_channels: 10_000,
        }
    }
}

impl HubConfig {
    pub(crate) fn history_on(&self) -> bool {
        self.history_size > 0 && self.history_max_channels > 0
    }
}
