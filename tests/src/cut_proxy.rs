//! A loopback TCP proxy that loses one reply: the fault of a Redis read
//! that was served (its entries delivered to the consumer, pending) while
//! the client never got the answer (a timeout, a dropped connection).
//!
//! Bytes pass both ways unchanged until [`CutProxy::arm`] is given a marker;
//! then the first chunk from the server that contains it is dropped, and
//! that connection is closed on both sides. [`CutProxy::arm_request`] does
//! the same to a request (a command that never arrives: an XACK lost).
//! [`CutProxy::arm_hold`] holds a request instead, closing the client's
//! side only, and [`CutProxy::release`] delivers it later on its own
//! connection (a command that arrives after the client gave up on it and
//! retried). Later connections (the client reconnecting) pass unchanged
//! again.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Cut at the next reply holding it.
    reply: Option<Vec<u8>>,
    /// Cut at the next request holding it (the command never arrives).
    request: Option<Vec<u8>>,
    /// Hold the next request holding it (it arrives at `release`).
    hold: Option<Vec<u8>>,
    /// The held request and its connection to the server.
    held: Option<(tokio::net::tcp::OwnedWriteHalf, Vec<u8>)>,
    /// Connections of released requests, kept open.
    released: Vec<tokio::net::tcp::OwnedWriteHalf>,
    cuts: usize,
}

#[derive(Clone, Copy)]
enum Way {
    Request,
    Reply,
}

pub struct CutProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port, forwarding to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = upstream.to_owned();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, shared.clone()));
            }
        });
        CutProxy { port, state, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next server reply holding `marker` is lost with its connection.
    pub fn arm(&self, marker: &str) {
        lock(&self.state).reply = Some(marker.as_bytes().to_vec());
    }

    /// The next client request holding `marker` is lost with its
    /// connection (it never reaches the server).
    pub fn arm_request(&self, marker: &str) {
        lock(&self.state).request = Some(marker.as_bytes().to_vec());
    }

    /// The next client request holding `marker` is held: the client's
    /// side of its connection closes (the client sees it fail), the
    /// server's stays open and gets nothing until [`CutProxy::release`].
    pub fn arm_hold(&self, marker: &str) {
        lock(&self.state).hold = Some(marker.as_bytes().to_vec());
    }

    /// Whether a request is held.
    pub fn holds(&self) -> bool {
        lock(&self.state).held.is_some()
    }

    /// Delivers the held request on its connection, followed by a Redis
    /// `SET <done_key> 1`, and returns once `done_key` exists at
    /// `redis_url` (Redis runs a connection's commands in order, so the held
    /// request has run by then; 10 s at most).
    pub async fn release(&self, done_key: &str, redis_url: &str) {
        let (mut tx, mut bytes) = lock(&self.state).held.take().expect("a held request");
        bytes.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{done_key}\r\n$1\r\n1\r\n",
                done_key.len()
            )
            .as_bytes(),
        );
        tx.write_all(&bytes)
            .await
            .expect("deliver the held request");
        lock(&self.state).released.push(tx);
        let mut conn = redis::Client::open(redis_url)
            .expect("a redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !redis::cmd("EXISTS")
            .arg(done_key)
            .query_async::<bool>(&mut conn)
            .await
            .expect("EXISTS")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "Redis did not run the released request within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Connections cut so far (held ones included).
    pub fn cuts(&self) -> usize {
        lock(&self.state).cuts
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

async fn pipe(client: TcpStream, server: TcpStream, state: Arc<Mutex<State>>) {
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    // When either way ends (a cut, or a side closing), both halves of both
    // sockets are dropped: the connection closes each way.
    tokio::select! {
        held = forward(client_rx, server_tx, state.clone(), Way::Request) => {
            // A held request keeps its server side open until released.
            if let Some(held) = held {
                lock(&state).held = Some(held);
            }
        }
        _ = forward(server_rx, client_tx, state.clone(), Way::Reply) => {}
    }
}

/// Forwards until the connection ends or is cut; returns a held request
/// with the way to its destination.
async fn forward(
    mut rx: tokio::net::tcp::OwnedReadHalf,
    mut tx: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    way: Way,
) -> Option<(tokio::net::tcp::OwnedWriteHalf, Vec<u8>)> {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk: a marker split across two reads is
    // still seen (the message is then cut in its middle, lost all the same).
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let (cut, hold) = {
            let mut s = lock(&state);
            let seen = tail.len();
            let mut hit = |armed: &mut Option<Vec<u8>>| {
                let hit = armed.as_ref().is_some_and(|m| {
                    tail.truncate(seen);
                    tail.extend_from_slice(&buf[..n]);
                    tail.windows(m.len()).any(|w| w == m.as_slice())
                });
                if hit {
                    *armed = None;
                }
                hit
            };
            let (cut, hold) = match way {
                Way::Request => (hit(&mut s.request), hit(&mut s.hold)),
                Way::Reply => (hit(&mut s.reply), false),
            };
            if cut || hold {
                s.cuts += 1;
            }
            let keep = tail.len().saturating_sub(64);
            tail.drain(..keep);
            (cut, hold)
        };
        if hold {
            return Some((tx, buf[..n].to_vec()));
        }
        if cut || tx.write_all(&buf[..n]).await.is_err() {
            return None;
        }
    }
}
