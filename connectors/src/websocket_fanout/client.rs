//! One client connection's outbound side: the queue the hub fills
//! ([`ClientQueue`], bounded in bytes by the hub) and what goes through it
//! ([`Outbound`]).

use super::frames::WsFrame;
use super::routing::WsPath;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};

pub(crate) enum Outbound {
    Frame(WsFrame),
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
    /// Signalled when `closing` is set: the connection's task may be inside
    /// a write the client does not read, and releases the queue and the
    /// subscriptions at once instead of after it.
    pub(crate) slow: Arc<Notify>,
    pub(crate) path: WsPath,
    /// Presence only: when the queue is full, the latest frame per channel
    /// waits here (replacing older ones) instead of the client being
    /// disconnected: a collaborator wants where the others are now, not
    /// every step in between. Bounded by the connection's subscriptions.
    pub(crate) coalesced: Arc<Mutex<Vec<(String, WsFrame)>>>,
}

/// Most frames, and bytes, written with one vectored write (one syscall
/// when the socket takes them): enough to turn a burst into a few large
/// writes, small enough that a connection yields to the others between
/// batches.
const BATCH_FRAMES: usize = 512;
const BATCH_BYTES: usize = 128 * 1024;

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

/// Takes `first` and the frames queued behind it (up to a batch) into
/// `batch`, to be written with one vectored write instead of one per frame,
/// and without a task wake-up per frame: a broadcast to many channels, or a
/// burst on one, leaves several frames in a connection's queue by the time
/// its task runs. The frames' bytes leave `queued` only once the write
/// returned ([`written`]), so the connection's byte bound still counts what
/// is not written yet.
pub(crate) fn take_batch(
    rx: &mut mpsc::UnboundedReceiver<Outbound>,
    first: WsFrame,
    batch: &mut Vec<WsFrame>,
) -> Written {
    let mut written = Written {
        bytes: first.len(),
        failed: false,
        next: None,
    };
    batch.clear();
    batch.push(first);
    while batch.len() < BATCH_FRAMES && written.bytes < BATCH_BYTES {
        match rx.try_recv() {
            Ok(Outbound::Frame(f)) => {
                written.bytes += f.len();
                batch.push(f);
            }
            Ok(other) => {
                written.next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    written
}

/// After the write of a [`take_batch`] batch: the bytes go with the
/// references (a publication's buffer is freed once the last subscriber's
/// batch is written) and leave `queued`.
pub(crate) fn written(written: &Written, queued: &AtomicUsize, batch: &mut Vec<WsFrame>) {
    batch.clear();
    queued.fetch_sub(written.bytes, std::sync::atomic::Ordering::Relaxed);
}
