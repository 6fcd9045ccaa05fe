//! The seam between the hub and a broker that numbers and keeps
//! publications outside this process (today Redis: [`redis`]).
//!
//! The hub talks to the broker through [`Command`]s and the broker's
//! publish calls; the broker calls back into the hub only through
//! [`LocalHub`], so the broker does not depend on the hub's type. Without a
//! broker the hub numbers and keeps history itself (`channel.rs`).

pub mod redis;

use super::channel::ChannelKey;
use super::client::ClientQueue;
use super::frames::{Recovery, WsFrame};

/// How a publication queues for a broker that is shared (one Redis): a
/// live figure must not wait behind a burst of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Live updates (WPM, presence, conflicts, alerts, admin broadcasts):
    /// written to the broker first.
    Live,
    /// Results of event-time operators (session and flow transitions,
    /// window figures): minutes of event time old by nature, and they come in
    /// bursts (ten thousand writers starting at once). Written a few at a
    /// time beside the live ones, so a burst delays a live update by at
    /// most one small batch per lane. Within a channel a live publication
    /// may thus take an earlier offset than a background one emitted
    /// before it.
    Background,
}

/// What a broker asks of the hub: this gateway's local subscribers, kept in
/// step with the broker's numbering. Called by the broker's one task, in
/// order with the live publications.
pub(crate) trait LocalHub: Send + Sync + 'static {
    /// Removes a client from a channel; whether the channel has no local
    /// subscriber left.
    fn remove_subscriber(&self, conn: u64, key: &ChannelKey) -> bool;
    /// The broker could not subscribe; the client is told.
    fn fail_join(&self, q: &ClientQueue, channel: &str);
    /// The channel numbers anew from 1 under `epoch`.
    fn reset_remote(&self, key: &ChannelKey, epoch: &str);
    /// Whether a client of this gateway is subscribed to `key`.
    fn has_local_subscribers(&self, key: &ChannelKey) -> bool;
    /// Adds a client to a channel after its replay; false when the client
    /// went away meanwhile.
    fn join_remote(&self, join: RemoteJoin<'_>) -> bool;
    /// A publication numbered by the broker, to this gateway's subscribers.
    fn deliver_remote(&self, key: &ChannelKey, epoch: &str, offset: u64, body: &str);
}

/// A client joining a channel whose numbering the broker keeps.
pub(crate) struct RemoteJoin<'a> {
    pub(crate) conn: u64,
    pub(crate) q: &'a ClientQueue,
    pub(crate) key: ChannelKey,
    /// The channel's numbering as the broker knows it.
    pub(crate) epoch: &'a str,
    pub(crate) offset: u64,
    /// `message` frames of the history the client asked for, oldest first.
    pub(crate) replay: Vec<WsFrame>,
    pub(crate) recovery: Recovery,
}

/// What the hub asks of the broker's subscriber task, in order.
pub(crate) enum Command {
    Join {
        conn: u64,
        q: ClientQueue,
        channel: String,
        since: Option<u64>,
        epoch: Option<String>,
    },
    /// A client leaves a channel (unsubscribe or disconnect), in order with
    /// its join: a subscribe still being joined is undone after it.
    Unsubscribe { conn: u64, key: ChannelKey },
}

/// A command with its connection's share of the broker's queue: the permit
/// goes back to the connection once the broker's task has handled the
/// command, so one connection never has more than
/// `fanout.max_pending_commands` waiting, and a flood only holds up the
/// flooding connection's own reading.
pub(crate) struct Queued {
    pub(crate) cmd: Command,
    pub(crate) permit: tokio::sync::OwnedSemaphorePermit,
}
