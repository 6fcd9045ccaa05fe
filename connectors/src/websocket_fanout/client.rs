//! One client connection's outbound side: the queue the hub fills
//! ([`ClientQueue`], bounded in bytes by the hub) and what goes through it
//! ([`Outbound`]).

use super::routing::WsPath;
use axum::extract::ws::Utf8Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

pub(crate) enum Outbound {
    Frame(Utf8Bytes),
    Close(u16, &'static str),
    /// Send what is waiting in the connection's coalesced slots.
    Coalesced,
}

/// The sending half of one connection's queue.
#[derive(Clone)]
pub(crate) struct ClientQueue {
    pub(crate) tx: mpsc::UnboundedSender<Outbound>,
    /// Bytes queued and not yet written to the socket: the real bound.
    pub(crate) queued: Arc<AtomicUsize>,
    /// Set once the connection is being closed as slow; nothing more is queued.
    pub(crate) closing: Arc<AtomicBool>,
    pub(crate) path: WsPath,
    /// Presence only: when the queue is full, the latest frame per channel
    /// waits here (replacing older ones) instead of the client being
    /// disconnected: a collaborator wants where the others are now, not
    /// every step in between. Bounded by the connection's subscriptions.
    pub(crate) coalesced: Arc<Mutex<Vec<(String, Utf8Bytes)>>>,
}
