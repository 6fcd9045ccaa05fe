//! A loopback TCP proxy that loses one reply: the fault of a Redis read
//! that was served (its entries delivered to the consumer, pending) while
//! the client never got the answer (a timeout, a dropped connection).
//!
//! Bytes pass both ways unchanged until [`CutProxy::arm`] is given a marker;
//! then the first chunk from the server that contains it is dropped, and
//! that connection is closed on both sides. [`CutProxy::arm_request`] does
//! the same to a request (a command that never arrives: an XACK lost).
//! Later connections (the client reconnecting) pass unchanged again.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Cut at the next reply holding it.
    reply: Option<Vec<u8>>,
    /// Cut at the next request holding it (the command never arrives).
    request: Option<Vec<u8>>,
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

    /// Connections cut so far.
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
        _ = forward(client_rx, server_tx, state.clone(), Way::Request) => {}
        _ = forward(server_rx, client_tx, state, Way::Reply) => {}
    }
}

async fn forward(
    mut rx: tokio::net::tcp::OwnedReadHalf,
    mut tx: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    way: Way,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk: a marker split across two reads is
    // still seen (the message is then cut in its middle, lost all the same).
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let cut = {
            let mut s = lock(&state);
            let armed = match way {
                Way::Request => &mut s.request,
                Way::Reply => &mut s.reply,
            };
            let hit = armed.as_ref().is_some_and(|m| {
                tail.extend_from_slice(&buf[..n]);
                let hit = tail.windows(m.len()).any(|w| w == m.as_slice());
                let keep = tail.len().saturating_sub(m.len());
                tail.drain(..keep);
                hit
            });
            if hit {
                *armed = None;
                s.cuts += 1;
            }
            hit
        };
        if cut || tx.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
