//! The fanout hub: derived events out to WebSocket subscribers.
//!
//! - A derived event is serialized once and its JSON shared by every
//!   channel's history; its frame is built once per channel that has
//!   subscribers here and shared (as reference-counted bytes) by all of
//!   them. A channel's history builds frames only when it replays them.
//! - Every channel numbers its publications (`offset`, from 1) and keeps the
//!   last ones (`history_size`, `history_max_age`) whether or not anyone is
//!   subscribed, so a client that reconnects with `since` recovers what it
//!   missed. Offsets keep counting while the channel has history or
//!   subscribers; when both are gone the channel is forgotten and comes back
//!   with a new `epoch`, which is how clients tell a reset from a gap.
//! - At most `history_max_channels` channels keep history; the least recently
//!   published one loses it first, so memory stays bounded.
//! - Every connection's outbound queue is bounded in **bytes**; a client whose
//!   queue would overflow is disconnected with close code 4008 (`slow`) and
//!   counted, so one slow reader never becomes unbounded memory. On
//!   `/ws/presence` a full queue coalesces instead: the latest frame per
//!   channel waits (older ones are dropped, counted in
//!   `inkstream_ws_coalesced_total`; the client sees a jump in the channel's
//!   offsets) and goes out as soon as the socket drains.
//!
//! - A publication's frame is encoded once, WebSocket header included, and
//!   written to each subscriber's socket as is, many frames per vectored
//!   write (`socket.rs`); `fanout.write_delay` lets a connection wait for
//!   more before writing.
//!
//! Files: `hub.rs` (the hub and a connection's serve loop), `client.rs` (a
//! connection's queue and its batched writes), `socket.rs` (the upgraded
//! connection: tungstenite reads, frames written raw), `channel.rs` (the table of channels: numbering,
//! subscribers, history), `history.rs` (one channel's history), `frames.rs`
//! (the JSON frames), `access.rs` (who may subscribe), `guard.rs` (a
//! connection's control-frame rate, pings, idle timeout and token expiry), `close.rs` (close
//! codes), `routing.rs` (which event goes to which path and channel),
//! `config.rs`, `pacer.rs` (window results published at a steady rate, not in one burst), `pipeline_stats.rs` (the server's throughput and watermark
//! lag, published once a second on `category:stats` for the console), and `broker/` (the seam to a broker outside the process;
//! `broker/redis.rs`, fanout through Redis). The admin endpoints and the
//! subscribe upgrade live in `http_api/fanout.rs`.

mod access;
mod broker;
mod channel;
mod client;
mod close;
mod config;
mod frames;
mod guard;
mod history;
mod hub;
mod pacer;
pub mod pipeline_stats;
mod routing;
mod socket;

pub use access::may_subscribe;
pub use broker::Priority;
pub use broker::redis::{BrokerError, PublishError, RedisBrokerConfig};
pub use close::{
    CLOSE_CONTROL_FLOOD, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_SLOW, CLOSE_TOKEN_EXPIRED,
};
pub use config::HubConfig;
pub use hub::Hub;
pub use pacer::Pacer;
pub use routing::{WsPath, routes, valid_channel};
