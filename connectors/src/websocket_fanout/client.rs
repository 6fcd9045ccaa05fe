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

/// Most frames, and bytes, written with one flush (one `write` when the
/// socket takes them): enough to turn a burst into a few large writes,
/// small enough that a connection yields to the others between batches.
const BATCH_FRAMES: usize = 256;
const BATCH_BYTES: usize = 64 * 1024;

/// What [`write_batch`] did.
pub(crate) struct Written {
    /// Frame bytes handed to the socket.
    pub(crate) bytes: usize,
    /// The socket failed: the connection is over.
    pub(crate) failed: bool,
    /// The first item taken from the queue that is not a frame (handled by
    /// the caller, after the frames before it were written).
    pub(crate) next: Option<Outbound>,
}

/// Writes `first` and the frames queued behind it (up to a batch) with one
/// flush instead of one per frame, and without a task wake-up per frame:
/// a broadcast to many channels, or a burst on one, leaves several frames
/// in a connection's queue by the time its task runs. The frames' bytes
/// leave `queued` once the flush returned (as they did one by one before),
/// so the connection's byte bound still counts what is not written yet.
pub(crate) async fn write_batch<S>(
    sink: &mut S,
    rx: &mut mpsc::UnboundedReceiver<Outbound>,
    first: Utf8Bytes,
    queued: &AtomicUsize,
) -> Written
where
    S: futures_util::Sink<axum::extract::ws::Message> + Unpin,
{
    use axum::extract::ws::Message;
    use futures_util::SinkExt;
    use std::sync::atomic::Ordering;
    let mut written = Written {
        bytes: 0,
        failed: false,
        next: None,
    };
    let mut frame = Some(first);
    let mut frames = 0;
    while let Some(f) = frame.take() {
        let len = f.len();
        written.bytes += len;
        if sink.feed(Message::Text(f)).await.is_err() {
            queued.fetch_sub(written.bytes, Ordering::Relaxed);
            written.failed = true;
            return written;
        }
        frames += 1;
        if frames >= BATCH_FRAMES || written.bytes >= BATCH_BYTES {
            break;
        }
        match rx.try_recv() {
            Ok(Outbound::Frame(f)) => frame = Some(f),
            Ok(other) => written.next = Some(other),
            Err(_) => {}
        }
    }
    written.failed = sink.flush().await.is_err();
    queued.fetch_sub(written.bytes, Ordering::Relaxed);
    written
}
