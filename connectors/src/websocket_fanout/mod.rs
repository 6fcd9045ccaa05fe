//! The fanout hub: derived events out to WebSocket subscribers.
//!
//! - A publication is serialized once per channel and shared (as reference-
//!   counted bytes) by every subscriber of that channel.
//! - Every channel numbers its publications (`offset`, from 1).
//! - Every connection's outbound queue is bounded in **bytes**; a client whose
//!   queue would overflow is disconnected with close code 4008 (`slow`) and
//!   counted, so one slow reader never becomes unbounded memory.

mod routing;

pub use routing::{WsPath, routes, valid_channel};

use crate::auth::{Principal, Role};
use crate::metrics::Metrics;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use schemas::Event;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Close code sent to a client whose queue overflowed.
pub const CLOSE_SLOW: u16 = 4008;
/// Close code sent to every client when the server shuts down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Settings of the fanout hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most bytes queued for one connection before it is disconnected as slow.
    pub max_queue_bytes: usize,
    /// Most channels one connection may subscribe to.
    pub max_subscriptions: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_queue_bytes: 1 << 20,
            max_subscriptions: 256,
        }
    }
}

enum Outbound {
    Frame(Utf8Bytes),
    Close(u16, &'static str),
}

/// The sending half of one connection's queue.
#[derive(Clone)]
struct ClientQueue {
    tx: mpsc::UnboundedSender<Outbound>,
    /// Bytes queued and not yet written to the socket: the real bound.
    queued: Arc<AtomicUsize>,
    /// Set once the connection is being closed as slow; nothing more is queued.
    closing: Arc<AtomicBool>,
    path: WsPath,
}

struct Channel {
    offset: u64,
    subscribers: HashMap<u64, ClientQueue>,
}

/// The hub; share it behind an `Arc`.
pub struct Hub {
    channels: Mutex<HashMap<(WsPath, String), Channel>>,
    connections: Mutex<HashMap<u64, ClientQueue>>,
    next_conn: AtomicU64,
    config: HubConfig,
    metrics: Metrics,
}

impl Hub {
    pub fn new(config: HubConfig, metrics: Metrics) -> Hub {
        Hub {
            channels: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            config,
            metrics,
        }
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<(WsPath, String), Channel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, ClientQueue>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a derived event to every channel it routes to.
    pub fn publish(&self, event: &Event) {
        let routes = routes(event);
        if routes.is_empty() {
            return;
        }
        let mut channels = self.channels();
        // Serialize the event lazily: most events have no subscriber.
        let mut body: Option<String> = None;
        for key in routes {
            let Some(ch) = channels.get_mut(&key) else {
                continue;
            };
            ch.offset += 1;
            if ch.subscribers.is_empty() {
                continue;
            }
            let body = body.get_or_insert_with(|| serde_json::to_string(event).unwrap_or_default());
            let frame = message_frame(&key.1, ch.offset, body);
            for q in ch.subscribers.values() {
                self.enqueue(q, frame.clone());
            }
        }
    }

    fn enqueue(&self, q: &ClientQueue, frame: Utf8Bytes) {
        if q.closing.load(Ordering::Relaxed) {
            return;
        }
        let len = frame.len();
        let before = q.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.config.max_queue_bytes {
            q.queued.fetch_sub(len, Ordering::Relaxed);
            if !q.closing.swap(true, Ordering::Relaxed) {
                self.metrics
                    .ws_slow_disconnects
                    .with_label_values(&[q.path.as_str()])
                    .inc();
                let _ = q.tx.send(Outbound::Close(CLOSE_SLOW, "slow"));
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

    fn subscribe(&self, conn: u64, q: &ClientQueue, channel: &str) {
        self.channels()
            .entry((q.path, channel.to_owned()))
            .or_insert_with(|| Channel {
                offset: 0,
                subscribers: HashMap::new(),
            })
            .subscribers
            .insert(conn, q.clone());
    }

    fn unsubscribe(&self, conn: u64, path: WsPath, channel: &str) {
        let mut channels = self.channels();
        let key = (path, channel.to_owned());
        if let Some(ch) = channels.get_mut(&key) {
            ch.subscribers.remove(&conn);
            if ch.subscribers.is_empty() {
                // The channel's state goes with its last subscriber.
                channels.remove(&key);
            }
        }
    }

    /// Asks every connection to close (server shutdown).
    pub fn close_all(&self) {
        for q in self.conns().values() {
            let _ = q.tx.send(Outbound::Close(CLOSE_GOING_AWAY, "shutdown"));
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns().len()
    }

    /// Publishes an arbitrary JSON payload (admin broadcast) to one channel
    /// of one path; returns the subscribers it was queued for.
    pub fn publish_raw(&self, path: WsPath, channel: &str, data: &serde_json::Value) -> usize {
        let mut channels = self.channels();
        let Some(ch) = channels.get_mut(&(path, channel.to_owned())) else {
            return 0;
        };
        ch.offset += 1;
        let frame = message_frame(channel, ch.offset, &data.to_string());
        for q in ch.subscribers.values() {
            self.enqueue(q, frame.clone());
        }
        ch.subscribers.len()
    }

    /// Connections per path, channels, and the busiest channels.
    pub fn stats(&self) -> serde_json::Value {
        let mut per_path: HashMap<&'static str, usize> = HashMap::new();
        for q in self.conns().values() {
            *per_path.entry(q.path.as_str()).or_default() += 1;
        }
        let channels = self.channels();
        let mut busiest: Vec<(usize, String, &'static str)> = channels
            .iter()
            .map(|((path, name), ch)| (ch.subscribers.len(), name.clone(), path.as_str()))
            .collect();
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
            "channels": channels.len(),
            "top_channels": busiest
                .into_iter()
                .map(|(n, name, path)| serde_json::json!({"path": path, "channel": name, "subscribers": n}))
                .collect::<Vec<_>>(),
            "messages_out": sum(&self.metrics.ws_messages_out),
            "slow_disconnects": sum(&self.metrics.ws_slow_disconnects),
        })
    }

    /// Serves one upgraded WebSocket connection on `path` until it closes.
    pub async fn serve(self: Arc<Self>, socket: WebSocket, path: WsPath, principal: Principal) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = ClientQueue {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            closing: Arc::new(AtomicBool::new(false)),
            path,
        };
        self.conns().insert(conn, q.clone());
        let gauge = self
            .metrics
            .ws_connections
            .with_label_values(&[path.as_str()]);
        gauge.inc();
        let mut subscriptions: Vec<String> = Vec::new();
        let (mut sink, mut stream) = socket.split();
        loop {
            tokio::select! {
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let reply =
                            self.control(conn, &q, &principal, &mut subscriptions, text.as_str());
                        self.enqueue(&q, reply);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                outgoing = rx.recv() => match outgoing {
                    Some(Outbound::Frame(frame)) => {
                        let len = frame.len();
                        let sent = sink.send(Message::Text(frame)).await;
                        q.queued.fetch_sub(len, Ordering::Relaxed);
                        if sent.is_err() {
                            break;
                        }
                    }
                    Some(Outbound::Close(code, reason)) => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
                            .await;
                        break;
                    }
                    None => break,
                },
            }
        }
        for ch in &subscriptions {
            self.unsubscribe(conn, path, ch);
        }
        self.conns().remove(&conn);
        gauge.dec();
    }

    /// Handles one control frame; returns the reply frame.
    fn control(
        &self,
        conn: u64,
        q: &ClientQueue,
        principal: &Principal,
        subscriptions: &mut Vec<String>,
        text: &str,
    ) -> Utf8Bytes {
        #[derive(Deserialize)]
        struct Control {
            op: String,
            #[serde(default)]
            channel: Option<String>,
        }
        let ctl: Control = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => return error_frame("bad_request", &format!("malformed frame: {e}"), None),
        };
        match (ctl.op.as_str(), ctl.channel) {
            ("ping", _) => Utf8Bytes::from(r#"{"op":"pong"}"#),
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
                        return error_frame(
                            "too_many_subscriptions",
                            &format!(
                                "at most {} channels per connection",
                                self.config.max_subscriptions
                            ),
                            Some(&ch),
                        );
                    }
                    self.subscribe(conn, q, &ch);
                    subscriptions.push(ch.clone());
                }
                op_frame("subscribed", &ch)
            }
            ("unsubscribe", Some(ch)) => {
                subscriptions.retain(|c| *c != ch);
                self.unsubscribe(conn, q.path, &ch);
                op_frame("unsubscribed", &ch)
            }
            (other, _) => error_frame(
                "bad_request",
                &format!("unknown op {other:?}; expected subscribe, unsubscribe or ping"),
                None,
            ),
        }
    }
}

/// Channel authorization: a user's own `user:` channel; `project:` and
/// `document:` for members (token claims) and admins; `category:` for admins
/// and analysts. Apps (API keys) are services and may subscribe to any
/// channel; with auth off everyone may.
pub fn may_subscribe(principal: &Principal, channel: &str) -> bool {
    let Principal::User(user) = principal else {
        return true;
    };
    let admin = user.role == Role::Admin;
    match channel.split_once(':') {
        Some(("user", id)) => id == user.id,
        Some(("project", id)) => admin || user.projects.iter().any(|p| p == id),
        Some(("document", id)) => admin || user.documents.iter().any(|d| d == id),
        Some(("category", _)) => matches!(user.role, Role::Admin | Role::Analyst),
        _ => false,
    }
}

fn message_frame(channel: &str, offset: u64, body: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        r#"{{"op":"message","channel":{},"offset":{offset},"data":{body}}}"#,
        json_str(channel)
    ))
}

fn op_frame(op: &str, channel: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        r#"{{"op":"{op}","channel":{}}}"#,
        json_str(channel)
    ))
}

fn error_frame(code: &str, message: &str, channel: Option<&str>) -> Utf8Bytes {
    let mut v = serde_json::json!({"op": "error", "code": code, "message": message});
    if let Some(ch) = channel {
        v["channel"] = ch.into();
    }
    Utf8Bytes::from(v.to_string())
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    fn user(role: Role) -> Principal {
        Principal::User(User {
            id: "u1".into(),
            role,
            projects: vec!["p1".into()],
            documents: vec!["d1".into()],
        })
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
