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
    /// Control frames (subscribe, unsubscribe, ping) per second per
    /// connection; past the burst the connection is closed with 4029.
    pub control_rate_per_sec: f64,
    /// Control frames a connection may send at once (default 300: more than
    /// `max_subscriptions` subscribes in a row).
    pub control_burst: f64,
    /// How often the server pings each connection.
    pub ping_interval: Duration,
    /// Nothing heard from a client (pongs included) for this long closes it with 4009.
    pub idle_timeout: Duration,
    /// Subscribes/unsubscribes of one connection waiting for the Redis
    /// broker's task at once; past it that connection's reading waits (its
    /// own backpressure), so a flood from one client cannot fill the queue
    /// every other client's subscribes wait in.
    pub max_pending_commands: usize,
    /// Subscribes/unsubscribes of all connections waiting for the Redis
    /// broker's task; a sender finding it full waits.
    pub command_queue: usize,
    /// Least time between two writes of frames to one connection: frames
    /// published meanwhile wait and leave in the same write (one syscall,
    /// one read for the client). A connection that has not written for that
    /// long writes at once. 0 (default): every frame at once.
    pub write_delay: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_queue_bytes: 1 << 20,
            max_subscriptions: 256,
            history_size: 100,
            history_max_age: Duration::from_secs(300),
            history_max_channels: 10_000,
            control_rate_per_sec: 20.0,
            control_burst: 300.0,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_pending_commands: 8,
            command_queue: 4096,
            write_delay: Duration::ZERO,
        }
    }
}

impl HubConfig {
    pub(crate) fn history_on(&self) -> bool {
        self.history_size > 0 && self.history_max_channels > 0
    }
}
