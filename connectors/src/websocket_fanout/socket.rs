//! One subscriber's WebSocket, each direction served by what it costs.
//!
//! - **Reading**: tungstenite parses and checks what the client sends
//!   (masking, the size limit, UTF-8, control frames, the close handshake):
//!   few frames, all small.
//! - **Writing**: the hub's frames are encoded once per publication
//!   ([`WsFrame`]: server frames are unmasked, so every subscriber gets the
//!   same bytes) and go to the socket with vectored writes, a whole batch
//!   per syscall, without passing through tungstenite, which would copy and
//!   frame each one again for every subscriber.
//!
//! What tungstenite writes by itself (the pong to a client's ping, the
//! reply to a client's close) is captured instead of written and leaves by
//! the same path, before the next batch. So its frames and the hub's never
//! interleave inside a frame, whatever the socket accepts per write.

use super::frames::WsFrame;
use futures_util::{SinkExt, StreamExt};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};

/// Most buffers handed to one `writev` (Linux's `IOV_MAX` is 1,024).
const MAX_IOV: usize = 512;

/// The connection as tungstenite sees it: reads come from the socket,
/// writes are kept in `captured` until [`Socket::write`] sends them.
struct Duplex<S> {
    io: S,
    captured: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Duplex<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: Unpin> AsyncWrite for Duplex<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Bounded: tungstenite keeps at most one pong and one close reply
        // pending, and `Socket` sends what is captured after every read.
        self.captured.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An upgraded subscriber connection.
pub(crate) struct Socket<S> {
    ws: WebSocketStream<Duplex<S>>,
    /// Our Close went out: nothing may follow it (RFC 6455 §5.5.1), not
    /// even tungstenite's reply to the client's answering Close.
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Wraps a connection whose HTTP upgrade has been answered.
    pub(crate) async fn new(io: S, config: WebSocketConfig) -> Socket<S> {
        let duplex = Duplex {
            io,
            captured: Vec::new(),
        };
        Socket {
            ws: WebSocketStream::from_raw_socket(duplex, Role::Server, Some(config)).await,
            closed: false,
        }
    }

    /// The client's next message (pings and pongs included), or `None`
    /// once the connection is closed.
    pub(crate) async fn next(&mut self) -> Option<Result<Message, Error>> {
        let message = self.ws.next().await;
        if matches!(message, Some(Ok(Message::Ping(_)))) {
            // tungstenite queues the pong and writes it at its next write
            // or read; this makes it now (into `captured`), so it leaves
            // with the next write instead of waiting for the client's next
            // frame.
            let _ = self.ws.flush().await;
        }
        message
    }

    /// Whether tungstenite has written something that is not sent yet.
    pub(crate) fn has_captured(&self) -> bool {
        !self.ws.get_ref().captured.is_empty()
    }

    /// Writes what tungstenite captured, then `frames`, whole, with as few
    /// syscalls as the socket allows.
    pub(crate) async fn write(&mut self, frames: &[WsFrame]) -> std::io::Result<()> {
        let duplex = self.ws.get_mut();
        let captured = std::mem::take(&mut duplex.captured);
        if self.closed {
            return Ok(());
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() + 1);
        if !captured.is_empty() {
            parts.push(&captured);
        }
        parts.extend(frames.iter().map(|f| &f.wire()[..]));
        write_all_vectored(&mut duplex.io, &parts).await?;
        duplex.io.flush().await
    }

    /// Sends a Close frame; nothing is written after it.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) -> std::io::Result<()> {
        let sent = self.write(&[WsFrame::close(code, reason)]).await;
        self.closed = true;
        sent
    }

    /// Sends what is captured (the reply to the client's Close, unless we
    /// closed first), then closes the sending side.
    pub(crate) async fn shutdown(&mut self) {
        if self.write(&[]).await.is_ok() {
            let _ = self.ws.get_mut().io.shutdown().await;
        }
    }
}

/// Writes every byte of `parts`, in order, `MAX_IOV` buffers per call.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    // The first unwritten part and how much of it is already written.
    let (mut at, mut done) = (0, 0);
    while at < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[at][done..])
            .chain(parts[at + 1..].iter().copied())
            .filter(|p| !p.is_empty())
            .take(MAX_IOV)
            .map(IoSlice::new)
            .collect();
        if slices.is_empty() {
            return Ok(());
        }
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while at < parts.len() {
            let left = parts[at].len() - done;
            if n < left {
                done += n;
                break;
            }
            n -= left;
            at += 1;
            done = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `per_call` bytes per call (a slow
    /// client's socket) and keeps what it took.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.per_call);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut room = self.per_call;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.out.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_buffer_and_keep_the_order() {
        let parts: Vec<Vec<u8>> = (0..2_000u32)
            .map(|i| format!("<{i}>").repeat((i % 7) as usize))
            .map(String::into_bytes)
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let expected: Vec<u8> = parts.concat();
        for per_call in [1, 3, 64, 1_000, usize::MAX] {
            let mut w = Trickle {
                out: Vec::new(),
                per_call,
            };
            write_all_vectored(&mut w, &refs).await.unwrap();
            assert_eq!(w.out, expected, "{per_call} bytes per call");
        }
    }
}
