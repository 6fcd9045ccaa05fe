//! A listener that holds at most N connections open at once: past the limit
//! it stops accepting (the kernel backlog absorbs the wait) instead of
//! accepting without bound; counted in a metric. Every connection is closed
//! once no byte has moved either way for the idle timeout, so idle sockets
//! cannot hold the permits (upgraded WebSockets included: the hub pings its
//! clients more often than that). And a write the peer takes no byte of for
//! the idle timeout (a client that stopped reading: its receive window and
//! our send buffer are full) fails with `TimedOut`, so the task awaiting it
//! ends, whatever else that task was meant to watch, and the connection's
//! slot is released.

use axum::serve::Listener;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener with a connection limit (and TCP_NODELAY on every socket).
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    /// Counts accepts that had to wait for a free slot.
    waited: prometheus::IntCounter,
    /// No byte either way for this long closes the connection.
    idle: Duration,
}

impl LimitedListener {
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        idle: Duration,
        waited: prometheus::IntCounter,
    ) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            waited,
            idle: idle.max(Duration::from_millis(10)),
        }
    }
}

/// A connection holding its slot until dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    /// When a byte last moved either way.
    last: Instant,
    /// Fires at `last + idle` or later; re-armed lazily when it fires early
    /// (cheaper than resetting the timer on every read).
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Armed only while a write (or flush) waits for room in the send
    /// buffer: fires `idle` after it began waiting with no byte taken.
    /// `None` otherwise, so writes the socket takes at once cost nothing.
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A write timed out: the connection is dead to writes from then on
    /// (a close frame queued behind the stuck bytes would wait again).
    write_timed_out: bool,
}

fn write_timeout_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "peer took no byte for server.idle_timeout",
    )
}

impl LimitedStream {
    /// Whether the connection has been idle for `idle`; re-arms the timer
    /// (registering `cx`) otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.idle;
            if Instant::now() >= due {
                return true;
            }
            self.deadline.as_mut().reset(due.into());
        }
    }

    /// What a write, flush or shutdown of the inner stream returned, with
    /// the stall bound applied: a `Pending` arms the write timer (when not
    /// armed yet) and becomes a `TimedOut` error once it fires; anything
    /// `Ready` disarms it. `moved` says whether a ready result took bytes.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
        moved: impl FnOnce(&T) -> bool,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                if let Ok(v) = &r
                    && moved(v)
                {
                    self.last = Instant::now();
                }
                // Dropping the timer takes it out of the wheel: no stale
                // wake-up later.
                self.write_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = self.idle;
                let deadline = self
                    .write_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if deadline.as_mut().poll(cx).is_ready() {
                    self.write_deadline = None;
                    self.write_timed_out = true;
                    tracing::debug!(
                        "write stalled for server.idle_timeout: closing the connection"
                    );
                    return Poll::Ready(Err(write_timeout_error()));
                }
                Poll::Pending
            }
        }
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.waited.inc();
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small frames (WS messages, 202s) must not wait for
                    // Nagle's algorithm and the peer's delayed ACK (40 ms).
                    let _ = stream.set_nodelay(true);
                    let now = Instant::now();
                    return (
                        LimitedStream {
                            stream,
                            _permit: permit,
                            idle: self.idle,
                            last: now,
                            deadline: Box::pin(tokio::time::sleep_until((now + self.idle).into())),
                            write_deadline: None,
                            write_timed_out: false,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle for server.idle_timeout",
            ))),
            other => other,
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.write_timed_out {
            return Poll::Ready(Err(write_timeout_error()));
        }
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bound_write(cx, r, |n| *n > 0)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.write_timed_out {
            return Poll::Ready(Err(write_timeout_error()));
        }
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.bound_write(cx, r, |()| false)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.bound_write(cx, r, |()| false)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.write_timed_out {
            return Poll::Ready(Err(write_timeout_error()));
        }
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.bound_write(cx, r, |n| *n > 0)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The peer of a connection accepted by [`LimitedListener`], for
/// `into_make_service_with_connect_info::<PeerAddr>()` (the router reads it
/// to key anonymous callers' rate limits).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection accepted by a [`LimitedListener`] with `idle`, and its
    /// client (`recv_buffer`: the client's receive buffer, if set).
    async fn pair(idle: Duration, recv_buffer: Option<u32>) -> (LimitedStream, TcpStream) {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let waited = prometheus::IntCounter::new("waited", "waited").unwrap();
        let mut listener = LimitedListener::new(inner, 4, idle, waited);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let (client, (server, _)) = tokio::join!(socket.connect(addr), listener.accept());
        (server, client.unwrap())
    }

    #[tokio::test]
    async fn a_write_the_peer_takes_nothing_of_fails_after_the_idle_timeout() {
        let (mut server, _client) = pair(Duration::from_millis(300), Some(4096)).await;
        let chunk = vec![0u8; 1 << 20];
        let err = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(e) = server.write_all(&chunk).await {
                    break e;
                }
            }
        })
        .await
        .expect("a write to a client that reads nothing still pending after 30 s");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        // Dead to writes from then on, at once.
        let again = server.write(b"x").await.unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::TimedOut);
        assert!(server.flush().await.is_err());
    }

    #[tokio::test]
    async fn a_write_that_keeps_progressing_is_not_cut_however_long_it_takes() {
        // 16 MB to a client reading at most 64 KB per 10 ms: more than the
        // 2 s idle timeout in all, with the send buffer full most of it.
        let idle = Duration::from_secs(2);
        let (mut server, mut client) = pair(idle, Some(64 * 1024)).await;
        let total = 16 << 20;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < total {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed after {got} bytes");
                got += n;
            }
            got
        });
        let started = Instant::now();
        server.write_all(&vec![7u8; total]).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), total);
        assert!(
            started.elapsed() > idle,
            "the write never outlasted the idle timeout: the test shows nothing"
        );
    }
}
