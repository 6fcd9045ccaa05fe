//! The fanout hub ([`Hub`]): publications in, per-channel numbering and
//! history (or the broker's), and every connection's byte-bounded queue;
//! serving one upgraded WebSocket connection. See the module map in
//! `websocket_fanout/mod.rs` for the contract.

use super::access::may_subscribe;
use super::broker::redis::{Broker, BrokerError, PublishError, RedisBrokerConfig};
use super::broker::{Command, LocalHub, Priority, RemoteJoin};
use super::channel::{Channel, ChannelKey, Table};
use super::client::{ClientQueue, Outbound, take_batch, written};
use super::close::{CLOSE_GOING_AWAY, CLOSE_SLOW};
use super::config::HubConfig;
use super::frames::{Recovery, WsFrame, error_frame, message_frame, op_frame, subscribed_frame};
use super::guard::{self, ConnGuard};
use super::history::History;
use super::routing::{WsPath, routes, valid_channel};
use super::socket::Socket;
use crate::auth::Principal;
use crate::metrics::Metrics;
use schemas::Event;
use serde::Deserialize;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a closing connection waits for the client's Close reply.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// The same for a client closed as slow (4008): before it reaches the close
/// frame it reads everything the kernel buffered for it (megabytes: the
/// socket's send buffer autotunes up to `net.ipv4.tcp_wmem`), which takes a
/// loaded machine more than [`CLOSE_LINGER`]; the connection's queue and
/// subscriptions are released before this wait.
const SLOW_CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

/// The hub; share it behind an `Arc`.
pub struct Hub {
    table: Mutex<Table>,
    /// Set when publications go through Redis (`fanout.broker = redis`):
    /// numbering and history are then Redis's, shared by every gateway.
    broker: OnceLock<Broker>,
    gauges: HubGauges,
    connections: Mutex<HashMap<u64, ClientQueue>>,
    next_conn: AtomicU64,
    /// Random per hub: epochs of a restarted server never match old ones.
    incarnation: String,
    config: HubConfig,
    metrics: Metrics,
}

impl Hub {
    pub fn new(config: HubConfig, metrics: Metrics) -> Hub {
        // std's RandomState is seeded randomly per process; the clock makes
        // two hubs of one process differ too. No dependency needed for that.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let incarnation = std::hash::RandomState::new().hash_one((nanos, std::process::id()));
        let gauges = HubGauges::new(&metrics);
        Hub {
            table: Mutex::new(Table::default()),
            broker: OnceLock::new(),
            gauges,
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            incarnation: format!("{incarnation:016x}"),
            config,
            metrics,
        }
    }

    /// Routes publications and subscriptions through Redis from now on, so
    /// that several gateways share numbering, history and every publication.
    pub async fn attach_redis(
        self: &Arc<Self>,
        config: &RedisBrokerConfig,
    ) -> Result<(), BrokerError> {
        let b = Broker::start(self, &self.config, &self.metrics, config).await?;
        let _ = self.broker.set(b);
        Ok(())
    }

    /// Through Redis, the dataflow's and the notifier's publications are
    /// published from now on only while `fence` is the dataflow lease's
    /// (`None`: no lease); admin broadcasts are not fenced. In process
    /// there is nobody else to publish: nothing changes.
    pub fn fenced(&self, fence: Option<crate::lease::Fence>) {
        if let Some(b) = self.broker.get() {
            b.fenced(fence);
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, ClientQueue>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a derived event to every channel it routes to, as a live
    /// update ([`Priority::Live`]).
    pub fn publish(&self, event: &Event) {
        self.publish_at(event, Priority::Live, Instant::now());
    }

    /// [`Hub::publish`] with a priority: through a shared broker (Redis)
    /// [`Priority::Background`] publications yield to live ones. In process
    /// both are the same.
    pub fn publish_with(&self, event: &Event, priority: Priority) {
        self.publish_at(event, priority, Instant::now());
    }

    fn publish_at(&self, event: &Event, priority: Priority, now: Instant) {
        let routes = routes(event);
        if routes.is_empty() {
            return;
        }
        // Serialized before taking the lock: with history every publication
        // is kept, subscribed or not, so it is always needed.
        let body = match serde_json::to_string(event) {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(error = %error, "serializing a derived event for the fanout failed");
                return;
            }
        };
        if let Some(b) = self.broker.get() {
            for key in routes {
                b.publish(key, body.clone(), priority);
            }
            return;
        }
        // One body for every route and its histories.
        let body: Arc<str> = Arc::from(body);
        let mut t = self.table();
        t.expire(now, self.config.history_max_age);
        for key in routes {
            self.publish_locked(&mut t, key, &body, now);
        }
        self.metrics
            .ws_history_channels
            .set(t.by_publish.len() as i64);
    }

    /// Numbers, keeps and queues one publication on one channel; returns its
    /// subscriber count.
    fn publish_locked(
        &self,
        t: &mut Table,
        key: ChannelKey,
        body: &Arc<str>,
        now: Instant,
    ) -> usize {
        let history_on = self.config.history_on();
        let needs_room = t
            .channels
            .get(&key)
            .is_none_or(|ch| ch.publish_seq.is_none());
        if needs_room && history_on {
            while t.by_publish.len() >= self.config.history_max_channels {
                let Some((_, evicted)) = t.by_publish.pop_first() else {
                    break;
                };
                // Already out of by_publish; drop_history clears the rest.
                if let Some(ch) = t.channels.get_mut(&evicted) {
                    ch.publish_seq = None;
                }
                t.drop_history(&evicted);
            }
        }
        if !history_on && !t.channels.contains_key(&key) {
            // Without history a channel lives only while it has subscribers.
            return 0;
        }
        if !t.channels.contains_key(&key) {
            let ch = t.new_channel(&self.incarnation);
            t.channels.insert(key.clone(), ch);
        }
        let seq = t.next_seq;
        let Some(ch) = t.channels.get_mut(&key) else {
            return 0;
        };
        ch.offset += 1;
        let offset = ch.offset;
        if history_on {
            ch.history.push(
                offset,
                now,
                Arc::clone(body),
                self.config.history_size,
                self.config.history_max_age,
            );
            if let Some(old) = ch.publish_seq.replace(seq) {
                t.by_publish.remove(&old);
            }
            t.next_seq += 1;
            t.by_publish.insert(seq, key.clone());
        }
        let Some(ch) = t.channels.get(&key) else {
            return 0;
        };
        if ch.subscribers.is_empty() {
            // Kept for recovery only: the frame is built if it is replayed.
            return 0;
        }
        let frame = message_frame(&key.1, offset, body);
        for q in ch.subscribers.values() {
            self.enqueue_on(q, Some(&key.1), frame.clone());
        }
        ch.subscribers.len()
    }

    fn enqueue(&self, q: &ClientQueue, frame: WsFrame) {
        self.enqueue_on(q, None, frame);
    }

    /// Queues a publication of `channel`. On `/ws/presence` a full queue
    /// coalesces to the latest frame per channel; elsewhere it closes the
    /// connection with 4008. Once a channel has a coalesced frame waiting,
    /// its later frames replace it too, so the client never receives an
    /// older position after a newer one.
    fn enqueue_on(&self, q: &ClientQueue, channel: Option<&str>, frame: WsFrame) {
        if q.closing.load(Ordering::Relaxed) {
            return;
        }
        let len = frame.len();
        if q.path == WsPath::Presence
            && let Some(channel) = channel
        {
            let mut slots = q.coalesced.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = slots.iter_mut().find(|(c, _)| c == channel) {
                slot.1 = frame;
                self.metrics
                    .ws_coalesced
                    .with_label_values(&[q.path.as_str()])
                    .inc();
                return;
            }
            if q.queued.load(Ordering::Relaxed) + len > self.config.max_queue_bytes {
                let wake = slots.is_empty();
                slots.push((channel.to_owned(), frame));
                self.metrics
                    .ws_coalesced
                    .with_label_values(&[q.path.as_str()])
                    .inc();
                if wake {
                    let _ = q.tx.send(Outbound::Coalesced);
                }
                return;
            }
        }
        let before = q.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.config.max_queue_bytes {
            q.queued.fetch_sub(len, Ordering::Relaxed);
            if !q.closing.swap(true, Ordering::Relaxed) {
                self.metrics
                    .ws_slow_disconnects
                    .with_label_values(&[q.path.as_str()])
                    .inc();
                let _ = q.tx.send(Outbound::Close(CLOSE_SLOW, "slow"));
                // Stored when the task is not waiting: its next write sees it.
                q.slow.notify_one();
            }
            return;
        }
        self.metrics
            .ws_messages_out
            .with_label_values(&[q.path.as_str()])
            .inc();
        if q.tx.send(Outbound::Frame(frame)).is_err() {
            q.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Subscribes `conn` to `channel` and queues, in this order, the missed
    /// publications (when `since` is given and recoverable) and the
    /// `subscribed` reply. Everything happens under the table lock, so no live
    /// publication can slip between the replay and the reply or be lost: the
    /// reply's `offset` is the last one before the live stream continues.
    fn subscribe(
        &self,
        conn: u64,
        q: &ClientQueue,
        channel: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        now: Instant,
    ) -> Recovery {
        let mut t = self.table();
        t.expire(now, self.config.history_max_age);
        let key = (q.path, channel.to_owned());
        if !t.channels.contains_key(&key) {
            let ch = t.new_channel(&self.incarnation);
            t.channels.insert(key.clone(), ch);
        }
        let Some(ch) = t.channels.get_mut(&key) else {
            return Recovery::NotAsked;
        };
        // expire() only drops whole histories; the older entries of a
        // still-active channel go here.
        ch.history.prune(now, self.config.history_max_age);
        let mut recovery = Recovery::NotAsked;
        if let Some(since) = since {
            let missed = ch
                .history
                .missed_since(since, ch.offset)
                .filter(|_| epoch.is_none_or(|e| e == ch.epoch));
            recovery = match missed {
                Some(missed) => {
                    for (offset, body) in missed {
                        self.enqueue(q, message_frame(channel, offset, body));
                    }
                    Recovery::Recovered
                }
                None => Recovery::NotRecovered,
            };
            self.count_recovery(recovery);
        }
        let added = ch.subscribers.insert(conn, q.clone()).is_none();
        let first = added && ch.subscribers.len() == 1;
        self.enqueue(q, subscribed_frame(channel, ch.offset, &ch.epoch, recovery));
        self.count_subscriber(&mut t, added, first);
        // prune() never empties a history here: expire() above already
        // dropped every history whose newest entry is too old.
        self.metrics
            .ws_history_channels
            .set(t.by_publish.len() as i64);
        recovery
    }

    async fn unsubscribe(
        &self,
        conn: u64,
        path: WsPath,
        channel: &str,
        budget: &Arc<tokio::sync::Semaphore>,
    ) {
        let key = (path, channel.to_owned());
        match self.broker.get() {
            // In order with the join: a subscribe the broker is still
            // working on is undone after it, never before.
            Some(b) => b.command(Command::Unsubscribe { conn, key }, budget).await,
            None => {
                self.remove_subscriber(conn, &key);
            }
        }
    }

    /// Unsubscribes without a broker (the in-process hub's tests).
    #[cfg(test)]
    fn unsubscribe_here(&self, conn: u64, path: WsPath, channel: &str) {
        self.remove_subscriber(conn, &(path, channel.to_owned()));
    }

    /// The bodies a channel of `/ws/analytics`'s history keeps, oldest first
    /// (tests of what reached the hub, and in which order).
    #[cfg(test)]
    pub(crate) fn history_bodies(&self, channel: &str) -> Vec<String> {
        let t = self.table();
        let Some(ch) = t.channels.get(&(WsPath::Analytics, channel.to_owned())) else {
            return Vec::new();
        };
        ch.history.bodies().map(|b| b.to_string()).collect()
    }

    /// Counts a subscribe that asked for recovery, by outcome.
    fn count_recovery(&self, recovery: Recovery) {
        let outcome = match recovery {
            Recovery::NotAsked => return,
            Recovery::Recovered => "recovered",
            Recovery::NotRecovered => "not_recovered",
        };
        self.metrics
            .ws_recoveries
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts a subscriber added to a channel (`first`: the channel had none).
    fn count_subscriber(&self, t: &mut Table, added: bool, first: bool) {
        if added {
            t.subscriptions += 1;
            if first {
                t.subscribed_channels += 1;
            }
            self.gauges.set(t);
        }
    }

    /// Asks every connection to close (server shutdown).
    pub fn close_all(&self) {
        for q in self.conns().values() {
            let _ = q.tx.send(Outbound::Close(CLOSE_GOING_AWAY, "shutdown"));
        }
    }

    /// This hub's random id (new at every start): names the gateway in
    /// what it publishes by itself (`pipeline_stats`), never its address.
    pub fn instance(&self) -> &str {
        &self.incarnation
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns().len()
    }

    /// Publishes an arbitrary JSON payload (admin broadcast) to one channel
    /// of one path. Returns the subscribers it was queued for on this
    /// gateway, or, through Redis, the gateways that received it.
    pub async fn publish_raw(
        &self,
        path: WsPath,
        channel: &str,
        data: &serde_json::Value,
    ) -> Result<usize, PublishError> {
        match self.broker.get() {
            Some(b) => b
                .publish_and_wait((path, channel.to_owned()), data.to_string())
                .await
                .map(|(_, gateways)| gateways as usize),
            None => Ok(self.publish_raw_at(path, channel, data, Instant::now())),
        }
    }

    fn publish_raw_at(
        &self,
        path: WsPath,
        channel: &str,
        data: &serde_json::Value,
        now: Instant,
    ) -> usize {
        let mut t = self.table();
        t.expire(now, self.config.history_max_age);
        // Kept in the history like any publication: offsets stay contiguous.
        let body = Arc::from(data.to_string());
        let n = self.publish_locked(&mut t, (path, channel.to_owned()), &body, now);
        self.metrics
            .ws_history_channels
            .set(t.by_publish.len() as i64);
        n
    }

    /// Connections per path, channels, and the busiest channels.
    pub fn stats(&self) -> serde_json::Value {
        let mut per_path: HashMap<&'static str, usize> = HashMap::new();
        for q in self.conns().values() {
            *per_path.entry(q.path.as_str()).or_default() += 1;
        }
        let t = self.table();
        // `channels` counts subscribed channels, as before history existed;
        // history-only channels are `history_channels`.
        let mut busiest: Vec<(usize, String, &'static str)> = t
            .channels
            .iter()
            .filter(|(_, ch)| !ch.subscribers.is_empty())
            .map(|((path, name), ch)| (ch.subscribers.len(), name.clone(), path.as_str()))
            .collect();
        let subscribed = busiest.len();
        busiest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        busiest.truncate(100);
        let sum = |v: &prometheus::IntCounterVec| -> u64 {
            WsPath::ALL
                .iter()
                .map(|p| v.with_label_values(&[p.as_str()]).get())
                .sum()
        };
        serde_json::json!({
            "connections": per_path.values().sum::<usize>(),
            "connections_by_path": per_path,
            "channels": subscribed,
            "history_channels": t.by_publish.len(),
            "top_channels": busiest
                .into_iter()
                .map(|(n, name, path)| serde_json::json!({"path": path, "channel": name, "subscribers": n}))
                .collect::<Vec<_>>(),
            "subscriptions": t.subscriptions,
            "messages_out": sum(&self.metrics.ws_messages_out),
            "bytes_out": sum(&self.gauges.bytes_out),
            "broker": if self.broker.get().is_some() { "redis" } else { "memory" },
            "slow_disconnects": sum(&self.metrics.ws_slow_disconnects),
        })
    }

    /// Serves one upgraded WebSocket connection on `path` until it closes.
    /// `io` is the connection after the HTTP upgrade was answered.
    /// `session_end` resolves once the session cookie the connection was
    /// opened with no longer holds ([`crate::auth::Authenticator::session_end`]).
    pub async fn serve<S>(
        self: Arc<Self>,
        io: S,
        path: WsPath,
        principal: Principal,
        session_end: Option<crate::auth::SessionEnd>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        // Small read buffers: tens of thousands of subscribers, each sending
        // only small control frames (tungstenite's 128 KiB default would be
        // ~2.5 GB at 20 K). Its write buffer holds only pongs and close
        // replies; the hub's frames are written raw (`socket.rs`), and the
        // hub's own byte-bounded queue is the outbound buffer.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(64 * 1024));
        let mut socket = Socket::new(io, config).await;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = ClientQueue {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            closing: Arc::new(AtomicBool::new(false)),
            slow: Arc::new(tokio::sync::Notify::new()),
            path,
            coalesced: Arc::new(Mutex::new(Vec::new())),
        };
        self.conns().insert(conn, q.clone());
        let gauge = self
            .metrics
            .ws_connections
            .with_label_values(&[path.as_str()]);
        gauge.inc();
        let bytes_out = self.gauges.bytes_out.with_label_values(&[path.as_str()]);
        let mut subscriptions: Vec<String> = Vec::new();
        // This connection's commands waiting for the Redis broker (see
        // `Broker::command`).
        let budget = Arc::new(tokio::sync::Semaphore::new(
            self.config.max_pending_commands.max(1),
        ));
        let mut guard = ConnGuard::new(&self.config, &principal, tokio::time::Instant::now());
        let mut pings = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.ping_interval,
            self.config.ping_interval,
        );
        let expiry = guard::expiry(guard.expires);
        tokio::pin!(expiry);
        let session_end = async move {
            match session_end {
                Some(end) => end.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(session_end);
        let mut closing = None;
        let mut batch = Vec::new();
        // When this connection last began writing frames (with a write delay).
        let mut last_write: Option<tokio::time::Instant> = None;
        // A write failed (the client took nothing for `server.idle_timeout`,
        // or the connection broke): no close handshake to wait for.
        let mut write_failed = false;
        loop {
            tokio::select! {
                incoming = socket.next() => match incoming {
                    Some(Ok(msg)) if !matches!(msg, Message::Close(_)) => {
                        guard.heard(tokio::time::Instant::now());
                        if let Message::Text(text) = msg {
                            if let Err(c) = guard.control(tokio::time::Instant::now()) {
                                closing = Some(c);
                                break;
                            }
                            // A subscribe queues its own reply (after any replay).
                            let reply = self
                                .control(conn, &q, &principal, &mut subscriptions, &budget, text.as_str())
                                .await;
                            if let Some(reply) = reply {
                                self.enqueue(&q, reply);
                            }
                        }
                        // A pong tungstenite wrote for the client's ping.
                        if socket.has_captured() && socket.write(&[]).await.is_err() {
                            write_failed = true;
                            break;
                        }
                    }
                    // A frame over the size limit or not WebSocket at all:
                    // a named close, not a reset (found by tests/tests/fuzz).
                    Some(Err(e)) => {
                        closing = guard::read_error(&e);
                        break;
                    }
                    _ => break,
                },
                _ = pings.tick() => {
                    if let Err(c) = guard.tick(tokio::time::Instant::now()) {
                        closing = Some(c);
                        break;
                    }
                    if socket.write(&[WsFrame::ping()]).await.is_err() {
                        write_failed = true;
                        break;
                    }
                }
                () = &mut expiry => {
                    closing = Some(guard::EXPIRED);
                    break;
                }
                () = &mut session_end => {
                    closing = Some(guard::SESSION_ENDED);
                    break;
                }
                outgoing = rx.recv() => match outgoing {
                    Some(Outbound::Frame(frame)) => {
                        // At most one write per `write_delay`: a connection
                        // that wrote less than that ago waits out the rest,
                        // so what is published meanwhile leaves in the same
                        // write; a quiet one writes at once.
                        if let Some(at) = last_write {
                            tokio::time::sleep_until(at + self.config.write_delay).await;
                        }
                        if !self.config.write_delay.is_zero() {
                            last_write = Some(tokio::time::Instant::now());
                        } else {
                            // Without a delay: let the tasks already
                            // runnable (the publisher, other connections)
                            // go first, once. What they publish meanwhile
                            // leaves in this write. It costs a connection
                            // one turn of the scheduler, not a timer: at
                            // 1,000 subscribers × 5,000 broadcasts, 2.4
                            // frames per write instead of 1.8 and 13 % less
                            // server CPU per delivery (docs/BENCHMARKS.md
                            // "The fanout at its defaults").
                            tokio::task::yield_now().await;
                        }
                        // This frame and those queued behind it, one write.
                        let mut w = take_batch(&mut rx, frame, &mut batch);
                        let mut released = false;
                        {
                            let write = socket.write(&batch);
                            tokio::pin!(write);
                            w.failed = loop {
                                tokio::select! {
                                    r = &mut write => break r.is_err(),
                                    // Closed as slow while the client takes
                                    // nothing of this write: its queue and
                                    // subscriptions go now; the write goes on
                                    // (the client may still catch up and read
                                    // the close frame), bounded by
                                    // `server.idle_timeout` like any write.
                                    () = q.slow.notified(), if !released => {
                                        released = true;
                                        for ch in subscriptions.drain(..) {
                                            self.unsubscribe(conn, path, &ch, &budget).await;
                                        }
                                        self.conns().remove(&conn);
                                        while let Ok(o) = rx.try_recv() {
                                            if let Outbound::Frame(f) = o {
                                                q.queued.fetch_sub(f.len(), Ordering::Relaxed);
                                            }
                                        }
                                    }
                                }
                            };
                        }
                        written(&w, &q.queued, &mut batch);
                        bytes_out.inc_by(w.bytes as u64);
                        if w.failed {
                            write_failed = true;
                            break;
                        }
                        if released {
                            let _ = socket.close(CLOSE_SLOW, "slow").await;
                            break;
                        }
                        match w.next {
                            None | Some(Outbound::Frame(_)) => {}
                            Some(Outbound::Close(code, reason)) => {
                                let _ = socket.close(code, reason).await;
                                break;
                            }
                            Some(Outbound::Coalesced) => {
                                if self.send_coalesced(&q, &mut socket, &bytes_out).await.is_err() {
                                    write_failed = true;
                                    break;
                                }
                            }
                        }
                    }
                    Some(Outbound::Close(code, reason)) => {
                        let _ = socket.close(code, reason).await;
                        break;
                    }
                    Some(Outbound::Coalesced) => {
                        if self.send_coalesced(&q, &mut socket, &bytes_out).await.is_err() {
                            write_failed = true;
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        if let Some(c) = closing {
            self.metrics.ws_closes.with_label_values(&[c.label]).inc();
            let _ = socket.close(c.code, c.reason).await;
        }
        // Nothing more is queued for this connection: its subscriptions and
        // queue go now, whatever the handshake below takes.
        for ch in &subscriptions {
            self.unsubscribe(conn, path, ch, &budget).await;
        }
        self.conns().remove(&conn);
        drop(rx);
        // The closing handshake: read (and drop) what the client still sends
        // until its own Close or the end, for at most `CLOSE_LINGER`
        // (`SLOW_CLOSE_LINGER` after a slow close). Tearing the socket down
        // with the client's replies unread (the pongs it writes while
        // catching up on buffered frames, its Close) makes the kernel answer
        // with a reset, which destroys what the client has not read yet —
        // the close frame with its code included.
        let linger = if write_failed {
            std::time::Duration::ZERO
        } else if q.closing.load(Ordering::Relaxed) {
            SLOW_CLOSE_LINGER
        } else {
            CLOSE_LINGER
        };
        let _ = tokio::time::timeout(linger, async {
            while let Some(Ok(m)) = socket.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        socket.shutdown().await;
        gauge.dec();
    }

    /// Writes what waits in the connection's coalesced slots (one write).
    async fn send_coalesced<S>(
        &self,
        q: &ClientQueue,
        socket: &mut Socket<S>,
        bytes_out: &prometheus::IntCounter,
    ) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let frames: Vec<WsFrame> =
            std::mem::take(&mut *q.coalesced.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .map(|(_, f)| f)
                .collect();
        bytes_out.inc_by(frames.iter().map(|f| f.len() as u64).sum());
        socket.write(&frames).await
    }

    /// Handles one control frame; returns the reply frame, or `None` when
    /// it was already queued (a successful subscribe).
    async fn control(
        &self,
        conn: u64,
        q: &ClientQueue,
        principal: &Principal,
        subscriptions: &mut Vec<String>,
        budget: &Arc<tokio::sync::Semaphore>,
        text: &str,
    ) -> Option<WsFrame> {
        #[derive(Deserialize)]
        struct Control {
            op: String,
            #[serde(default)]
            channel: Option<String>,
            /// The last offset the client saw: recover what came after.
            #[serde(default)]
            since: Option<u64>,
            /// The epoch that offset belongs to (from `subscribed`).
            #[serde(default)]
            epoch: Option<String>,
        }
        let ctl: Control = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                return Some(error_frame(
                    "bad_request",
                    &format!("malformed frame: {e}"),
                    None,
                ));
            }
        };
        Some(match (ctl.op.as_str(), ctl.channel) {
            ("ping", _) => WsFrame::text(r#"{"op":"pong"}"#),
            ("subscribe" | "unsubscribe", None) => {
                error_frame("bad_request", "channel: required", None)
            }
            ("subscribe" | "unsubscribe", Some(ch)) if !valid_channel(&ch) => error_frame(
                "bad_channel",
                "expected user:{id}, project:{id}, document:{id} or category:{name}",
                Some(&ch),
            ),
            ("subscribe", Some(ch)) if !may_subscribe(principal, &ch) => error_frame(
                "forbidden",
                "not allowed on this channel: user:{id} is the user's own, project:/document: need \
                 membership, category: needs the admin or analyst role",
                Some(&ch),
            ),
            ("subscribe", Some(ch)) => {
                if !subscriptions.contains(&ch) {
                    if subscriptions.len() >= self.config.max_subscriptions {
                        self.metrics
                            .limit_hits
                            .with_label_values(&["ws_channels_per_connection"])
                            .inc();
                        return Some(error_frame(
                            "too_many_subscriptions",
                            &format!(
                                "at most {} channels per connection",
                                self.config.max_subscriptions
                            ),
                            Some(&ch),
                        ));
                    }
                    subscriptions.push(ch.clone());
                }
                if let Some(b) = self.broker.get() {
                    // The broker's task replays, answers and adds the client
                    // in order with the live publications.
                    let join = Command::Join {
                        conn,
                        q: q.clone(),
                        channel: ch,
                        since: ctl.since,
                        epoch: ctl.epoch,
                    };
                    b.command(join, budget).await;
                    return None;
                }
                // Again on an existing subscription: replays what was asked
                // for and answers with the current offset.
                self.subscribe(
                    conn,
                    q,
                    &ch,
                    ctl.since,
                    ctl.epoch.as_deref(),
                    Instant::now(),
                );
                return None;
            }
            ("unsubscribe", Some(ch)) => {
                subscriptions.retain(|c| *c != ch);
                self.unsubscribe(conn, q.path, &ch, budget).await;
                op_frame("unsubscribed", &ch)
            }
            (other, _) => error_frame(
                "bad_request",
                &format!("unknown op {other:?}; expected subscribe, unsubscribe or ping"),
                None,
            ),
        })
    }
}

impl LocalHub for Hub {
    /// Removes a subscriber; true when the channel has none left here.
    fn remove_subscriber(&self, conn: u64, key: &ChannelKey) -> bool {
        let mut t = self.table();
        let Some(ch) = t.channels.get_mut(key) else {
            return true;
        };
        let removed = ch.subscribers.remove(&conn).is_some();
        let now_empty = ch.subscribers.is_empty();
        if now_empty && ch.publish_seq.is_none() {
            // Nothing to recover from and nobody listening: the channel
            // (its offsets and epoch) is forgotten.
            t.channels.remove(key);
        }
        if removed {
            t.subscriptions -= 1;
            if now_empty {
                t.subscribed_channels -= 1;
            }
            self.gauges.set(&t);
        }
        now_empty
    }

    /// Through Redis: the broker could not subscribe; the client is told.
    fn fail_join(&self, q: &ClientQueue, channel: &str) {
        self.enqueue(
            q,
            error_frame(
                "unavailable",
                "the fanout cannot subscribe right now; subscribe again",
                Some(channel),
            ),
        );
    }

    /// Through Redis: the channel was forgotten and numbers anew from 1
    /// under `epoch`; its subscribers get a `subscribed` frame saying so
    /// (`recovered: false`: reload).
    fn reset_remote(&self, key: &ChannelKey, epoch: &str) {
        let mut t = self.table();
        let Some(ch) = t.channels.get_mut(key) else {
            return;
        };
        ch.epoch = epoch.to_owned();
        ch.offset = 0;
        let frame = subscribed_frame(&key.1, 0, epoch, Recovery::NotRecovered);
        for q in ch.subscribers.values() {
            self.enqueue(q, frame.clone());
        }
    }

    /// Whether a client of this gateway is subscribed to `key`.
    fn has_local_subscribers(&self, key: &ChannelKey) -> bool {
        self.table()
            .channels
            .get(key)
            .is_some_and(|ch| !ch.subscribers.is_empty())
    }

    /// Through Redis: adds a client to a channel after its replay, with the
    /// channel's numbering as the broker knows it. Called by the broker's
    /// one task, in order with the live publications.
    fn join_remote(&self, join: RemoteJoin<'_>) -> bool {
        let RemoteJoin {
            conn,
            q,
            key,
            epoch,
            offset,
            replay,
            recovery,
        } = join;
        self.count_recovery(recovery);
        if q.closing.load(Ordering::Relaxed) || q.tx.is_closed() {
            // Gone while the broker worked: nothing to add.
            return false;
        }
        let mut t = self.table();
        let ch = t.channels.entry(key.clone()).or_insert_with(|| Channel {
            offset,
            epoch: epoch.to_owned(),
            subscribers: HashMap::new(),
            history: History::default(),
            publish_seq: None,
        });
        ch.offset = offset;
        ch.epoch = epoch.to_owned();
        for f in replay {
            self.enqueue(q, f);
        }
        let added = ch.subscribers.insert(conn, q.clone()).is_none();
        let first = added && ch.subscribers.len() == 1;
        self.enqueue(q, subscribed_frame(&key.1, offset, epoch, recovery));
        self.count_subscriber(&mut t, added, first);
        true
    }

    /// Through Redis: a publication numbered by the broker, to this
    /// gateway's subscribers of the channel.
    fn deliver_remote(&self, key: &ChannelKey, epoch: &str, offset: u64, body: &str) {
        let mut t = self.table();
        let Some(ch) = t.channels.get_mut(key) else {
            return;
        };
        ch.offset = offset;
        if ch.epoch != epoch {
            ch.epoch = epoch.to_owned();
        }
        let frame = message_frame(&key.1, offset, body);
        for q in ch.subscribers.values() {
            self.enqueue_on(q, Some(&key.1), frame.clone());
        }
    }
}

/// The hub's own gauges and byte counter, registered next to the others.
struct HubGauges {
    /// `inkstream_ws_channels`: channels with a subscriber on this gateway.
    channels: prometheus::IntGauge,
    /// `inkstream_ws_subscribers`: subscriptions on this gateway.
    subscribers: prometheus::IntGauge,
    /// `inkstream_ws_bytes_out_total{path}`: frame bytes written to sockets.
    bytes_out: prometheus::IntCounterVec,
}

impl HubGauges {
    fn new(metrics: &Metrics) -> HubGauges {
        let g = HubGauges {
            channels: prometheus::IntGauge::new(
                "inkstream_ws_channels",
                "Channels with at least one subscriber on this gateway.",
            )
            .expect("constant metric options are valid"),
            subscribers: prometheus::IntGauge::new(
                "inkstream_ws_subscribers",
                "Channel subscriptions on this gateway.",
            )
            .expect("constant metric options are valid"),
            bytes_out: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "inkstream_ws_bytes_out_total",
                    "Bytes of frames written to WebSocket clients, by path.",
                ),
                &["path"],
            )
            .expect("constant metric options are valid"),
        };
        // Every path's series exist from the start, at 0 (the hub owns the
        // path labels; the metrics module knows no component).
        for p in WsPath::ALL {
            let path = [p.as_str()];
            g.bytes_out.with_label_values(&path);
            metrics.ws_connections.with_label_values(&path);
            metrics.ws_messages_out.with_label_values(&path);
            metrics.ws_slow_disconnects.with_label_values(&path);
            metrics.ws_coalesced.with_label_values(&path);
        }
        // One hub per registry in a process; a second one (tests) keeps its
        // own unregistered series rather than failing.
        let r = metrics.registry();
        for m in [
            Box::new(g.channels.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(g.subscribers.clone()),
            Box::new(g.bytes_out.clone()),
        ] {
            if let Err(error) = r.register(m) {
                tracing::debug!(%error, "fanout gauges already registered");
            }
        }
        g
    }

    fn set(&self, t: &Table) {
        self.channels.set(t.subscribed_channels as i64);
        self.subscribers.set(t.subscriptions as i64);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::auth::{Role, User};
    use std::time::Duration;

    fn user(role: Role) -> Principal {
        Principal::User(User {
            id: "u1".into(),
            role,
            projects: vec!["p1".into()],
            documents: vec!["d1".into()],
            expires_at: None,
        })
    }

    const A: WsPath = WsPath::Analytics;

    fn hub(size: usize, max_age_s: u64, max_channels: usize) -> Hub {
        Hub::new(
            HubConfig {
                history_size: size,
                history_max_age: Duration::from_secs(max_age_s),
                history_max_channels: max_channels,
                ..HubConfig::default()
            },
            Metrics::standalone(),
        )
    }

    fn client() -> (ClientQueue, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = ClientQueue {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            closing: Arc::new(AtomicBool::new(false)),
            slow: Arc::new(tokio::sync::Notify::new()),
            path: A,
            coalesced: Arc::new(Mutex::new(Vec::new())),
        };
        (q, rx)
    }

    /// Everything queued so far; a close becomes `{"close": code}`.
    fn drain(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            out.push(match o {
                Outbound::Frame(f) => serde_json::from_str(f.payload()).unwrap(),
                Outbound::Close(code, _) => serde_json::json!({"close": code}),
                Outbound::Coalesced => serde_json::json!({"coalesced": true}),
            });
        }
        out
    }

    #[test]
    fn a_full_presence_queue_keeps_the_latest_frame_per_channel_instead_of_closing() {
        let hub = Hub::new(
            HubConfig {
                max_queue_bytes: 300,
                ..HubConfig::default()
            },
            Metrics::standalone(),
        );
        let (mut q, mut rx) = client();
        q.path = WsPath::Presence;
        let t0 = Instant::now();
        hub.subscribe(1, &q, "document:d1", None, None, t0);
        hub.subscribe(1, &q, "document:d2", None, None, t0);
        for n in 0..50 {
            let ch = if n % 2 == 0 {
                "document:d1"
            } else {
                "document:d2"
            };
            hub.publish_raw_at(WsPath::Presence, ch, &serde_json::json!({ "n": n }), t0);
        }
        let out = drain(&mut rx);
        assert!(
            out.iter().all(|f| f.get("close").is_none()),
            "a presence client is never closed as slow: {out:?}"
        );
        assert_eq!(
            out.iter().filter(|f| f.get("coalesced").is_some()).count(),
            1,
            "one wake-up for the writer"
        );
        // The writer then sends the latest frame of each channel, once.
        let slots = q.coalesced.lock().unwrap();
        let mut latest: Vec<(String, i64)> = slots
            .iter()
            .map(|(c, f)| {
                let v: serde_json::Value = serde_json::from_str(f.payload()).unwrap();
                (c.clone(), v["data"]["n"].as_i64().unwrap())
            })
            .collect();
        // Slots are in the order the channels overflowed, which depends on
        // the frames' sizes.
        latest.sort();
        assert_eq!(
            latest,
            [
                ("document:d1".to_owned(), 48),
                ("document:d2".to_owned(), 49)
            ]
        );
        assert!(
            hub.metrics
                .ws_coalesced
                .with_label_values(&["/ws/presence"])
                .get()
                > 40
        );
    }

    fn publish(hub: &Hub, channel: &str, n: u64, at: Instant) {
        hub.publish_raw_at(A, channel, &serde_json::json!({"n": n}), at);
    }

    /// The `data.n` of replayed messages, and the `subscribed` reply.
    fn resubscribe(
        hub: &Hub,
        channel: &str,
        since: u64,
        epoch: Option<&str>,
        now: Instant,
    ) -> (Vec<u64>, serde_json::Value) {
        let (q, mut rx) = client();
        hub.subscribe(99, &q, channel, Some(since), epoch, now);
        let mut frames = drain(&mut rx);
        let reply = frames.pop().unwrap();
        assert_eq!(reply["op"], "subscribed");
        let replayed = frames
            .iter()
            .map(|m| {
                assert_eq!(m["op"], "message");
                assert_eq!(m["data"]["n"], m["offset"], "original offsets");
                m["offset"].as_u64().unwrap()
            })
            .collect();
        hub.unsubscribe_here(99, A, channel);
        (replayed, reply)
    }

    fn history_channels(hub: &Hub) -> i64 {
        hub.metrics.ws_history_channels.get()
    }

    #[test]
    fn history_keeps_the_last_size_publications_of_an_unsubscribed_channel() {
        let (hub, t0) = (hub(3, 300, 10), Instant::now());
        for n in 1..=5 {
            publish(&hub, "user:u1", n, t0);
        }
        assert_eq!(history_channels(&hub), 1);
        let (replayed, reply) = resubscribe(&hub, "user:u1", 2, None, t0);
        assert_eq!(replayed, vec![3, 4, 5]);
        assert_eq!(
            (reply["offset"].as_u64(), reply["recovered"].as_bool()),
            (Some(5), Some(true))
        );
        let (replayed, reply) = resubscribe(&hub, "user:u1", 1, None, t0);
        assert_eq!(replayed, Vec::<u64>::new(), "2 is gone: nothing replayed");
        assert_eq!(reply["recovered"], false);
        assert_eq!(reply["offset"], 5);
    }

    #[test]
    fn history_older_than_the_max_age_is_dropped() {
        let (hub, t0) = (hub(100, 60, 10), Instant::now());
        publish(&hub, "user:u1", 1, t0);
        publish(&hub, "user:u1", 2, t0 + Duration::from_secs(50));
        let (replayed, reply) = resubscribe(&hub, "user:u1", 0, None, t0 + Duration::from_secs(70));
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![], Some(false))
        );
        let (replayed, reply) = resubscribe(&hub, "user:u1", 1, None, t0 + Duration::from_secs(70));
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![2], Some(true))
        );
        // Once everything expired with nobody subscribed, the channel is
        // forgotten: a new epoch, offsets from 1 again.
        let epoch = reply["epoch"].as_str().unwrap().to_owned();
        publish(&hub, "user:u2", 1, t0 + Duration::from_secs(200));
        assert_eq!(history_channels(&hub), 1, "only user:u2 is left");
        let (_, reply) = resubscribe(&hub, "user:u1", 0, None, t0 + Duration::from_secs(200));
        assert_eq!(reply["offset"], 0);
        assert_ne!(reply["epoch"], epoch.as_str());
    }

    #[test]
    fn the_least_recently_published_channel_loses_its_history_first() {
        let (hub, t0) = (hub(100, 300, 2), Instant::now());
        publish(&hub, "user:a", 1, t0);
        publish(&hub, "user:b", 1, t0);
        publish(&hub, "user:a", 2, t0);
        publish(&hub, "user:c", 1, t0);
        assert_eq!(history_channels(&hub), 2);
        let (replayed, reply) = resubscribe(&hub, "user:a", 0, None, t0);
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![1, 2], Some(true))
        );
        let (_, reply) = resubscribe(&hub, "user:b", 0, None, t0);
        assert_eq!(reply["recovered"], true, "a fresh channel: nothing missed");
        assert_eq!(reply["offset"], 0, "user:b was evicted and forgotten");
        let (replayed, _) = resubscribe(&hub, "user:c", 0, None, t0);
        assert_eq!(replayed, vec![1]);
    }

    #[test]
    fn an_evicted_channel_with_subscribers_keeps_its_offsets_but_not_its_history() {
        let (hub, t0) = (hub(100, 300, 1), Instant::now());
        let (q, mut rx) = client();
        hub.subscribe(1, &q, "user:a", None, None, t0);
        publish(&hub, "user:a", 1, t0);
        publish(&hub, "user:b", 1, t0);
        publish(&hub, "user:a", 2, t0);
        let offsets: Vec<_> = drain(&mut rx).iter().map(|m| m["offset"].clone()).collect();
        assert_eq!(offsets, vec![0, 1, 2], "subscribed at 0, then 1 and 2");
        let (replayed, reply) = resubscribe(&hub, "user:a", 0, None, t0);
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![], Some(false))
        );
    }

    #[test]
    fn offsets_continue_across_unsubscribe_and_resubscribe() {
        let (hub, t0) = (hub(100, 300, 10), Instant::now());
        let (q, mut rx) = client();
        hub.subscribe(1, &q, "user:u1", None, None, t0);
        publish(&hub, "user:u1", 1, t0);
        publish(&hub, "user:u1", 2, t0);
        let first = drain(&mut rx);
        assert_eq!(first[0]["op"], "subscribed");
        assert!(first[0].get("recovered").is_none(), "no since, no flag");
        let epoch = first[0]["epoch"].clone();
        hub.unsubscribe_here(1, A, "user:u1");
        publish(&hub, "user:u1", 3, t0);
        hub.subscribe(1, &q, "user:u1", None, None, t0);
        publish(&hub, "user:u1", 4, t0);
        let again = drain(&mut rx);
        assert_eq!(
            (&again[0]["op"], &again[0]["offset"], &again[0]["epoch"]),
            (&"subscribed".into(), &3.into(), &epoch)
        );
        assert_eq!(again[1]["offset"], 4);
    }

    #[test]
    fn recovery_without_a_gap_replays_before_subscribed_then_goes_live() {
        let (hub, t0) = (hub(100, 300, 10), Instant::now());
        for n in 1..=3 {
            publish(&hub, "user:u1", n, t0);
        }
        let (q, mut rx) = client();
        let (_, epoch) = resubscribe(&hub, "user:u1", 3, None, t0);
        let epoch = epoch["epoch"].as_str().unwrap().to_owned();
        assert_eq!(
            hub.subscribe(1, &q, "user:u1", Some(1), Some(&epoch), t0),
            Recovery::Recovered
        );
        publish(&hub, "user:u1", 4, t0);
        let frames = drain(&mut rx);
        let ops: Vec<_> = frames
            .iter()
            .map(|m| format!("{}{}", m["op"].as_str().unwrap(), m["offset"]))
            .collect();
        assert_eq!(ops, vec!["message2", "message3", "subscribed3", "message4"]);
        assert_eq!(frames[2]["recovered"], true);
        // Caught up exactly: nothing to replay, still recovered.
        let (replayed, reply) = resubscribe(&hub, "user:u1", 4, Some(&epoch), t0);
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![], Some(true))
        );
        let m = hub
            .metrics
            .ws_recoveries
            .with_label_values(&["recovered"])
            .get();
        assert_eq!(m, 3);
    }

    #[test]
    fn another_epoch_or_a_since_ahead_is_not_recovered() {
        let (hub, t0) = (hub(100, 300, 10), Instant::now());
        publish(&hub, "user:u1", 1, t0);
        publish(&hub, "user:u1", 2, t0);
        let (replayed, reply) = resubscribe(&hub, "user:u1", 1, Some("other-1"), t0);
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![], Some(false))
        );
        let (replayed, reply) = resubscribe(&hub, "user:u1", 7, None, t0);
        assert_eq!(
            (replayed, reply["recovered"].as_bool()),
            (vec![], Some(false))
        );
        let m = hub
            .metrics
            .ws_recoveries
            .with_label_values(&["not_recovered"])
            .get();
        assert_eq!(m, 2);
    }

    #[test]
    fn epochs_differ_between_hubs() {
        let t0 = Instant::now();
        let (a, b) = (hub(100, 300, 10), hub(100, 300, 10));
        publish(&a, "user:u1", 1, t0);
        publish(&b, "user:u1", 1, t0);
        let (_, ra) = resubscribe(&a, "user:u1", 0, None, t0);
        let (_, rb) = resubscribe(&b, "user:u1", 0, None, t0);
        assert_ne!(ra["epoch"], rb["epoch"]);
    }

    #[test]
    fn replayed_frames_count_against_the_queue_bound() {
        let hub = Hub::new(
            HubConfig {
                max_queue_bytes: 300,
                ..HubConfig::default()
            },
            Metrics::standalone(),
        );
        let t0 = Instant::now();
        for n in 1..=10 {
            publish(&hub, "user:u1", n, t0);
        }
        let (q, mut rx) = client();
        hub.subscribe(1, &q, "user:u1", Some(0), None, t0);
        let frames = drain(&mut rx);
        assert_eq!(
            frames.last().unwrap(),
            &serde_json::json!({"close": CLOSE_SLOW})
        );
        assert!(frames.len() < 10);
    }

    #[test]
    fn without_history_a_channel_lives_only_while_subscribed() {
        let (hub, t0) = (hub(0, 300, 10), Instant::now());
        publish(&hub, "user:u1", 1, t0);
        let (q, mut rx) = client();
        hub.subscribe(1, &q, "user:u1", None, None, t0);
        publish(&hub, "user:u1", 1, t0);
        let frames = drain(&mut rx);
        assert_eq!(
            (&frames[0]["offset"], &frames[1]["offset"]),
            (&0.into(), &1.into())
        );
        hub.unsubscribe_here(1, A, "user:u1");
        assert_eq!(history_channels(&hub), 0);
        let (_, reply) = resubscribe(&hub, "user:u1", 1, None, t0);
        assert_eq!(
            (reply["offset"].as_u64(), reply["recovered"].as_bool()),
            (Some(0), Some(false))
        );
    }

    #[test]
    fn every_cross_user_access_is_refused() {
        let member = user(Role::Member);
        assert!(may_subscribe(&member, "user:u1"));
        assert!(!may_subscribe(&member, "user:u2"));
        assert!(may_subscribe(&member, "project:p1"));
        assert!(!may_subscribe(&member, "project:p2"));
        assert!(may_subscribe(&member, "document:d1"));
        assert!(!may_subscribe(&member, "document:d2"));
        assert!(!may_subscribe(&member, "category:writing"));
        assert!(may_subscribe(&user(Role::Analyst), "category:writing"));
        assert!(
            !may_subscribe(&user(Role::Analyst), "user:u2"),
            "analysts do not read other users"
        );
        assert!(may_subscribe(&user(Role::Admin), "project:p9"));
        assert!(
            !may_subscribe(&user(Role::Admin), "user:u2"),
            "a user channel is the user's own"
        );
        assert!(may_subscribe(&Principal::Anonymous, "user:u2"), "auth off");
    }
}
