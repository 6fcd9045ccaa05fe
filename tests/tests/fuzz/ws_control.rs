//! WebSocket control frames (`subscribe`, `unsubscribe`, `ping`) against the
//! real `inkstream serve`: a member's connection on each fanout path gets
//! hostile frames, and every text frame must be answered by exactly one
//! well-formed frame (`pong`, `subscribed`, `unsubscribed` or a typed
//! `error` with a specific message), binary frames by none, and the
//! connection must stay up (or close with a named code and a reason).

use crate::mutate::{self, hostile_string, hostile_value};
use crate::{Input, cases, run};
use futures_util::{SinkExt, StreamExt};
use inkstream_tests::{Server, Ws, now_ms};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "fuzz-ws-secret";

const PATHS: [&str; 4] = [
    "/ws/analytics",
    "/ws/collaboration",
    "/ws/presence",
    "/ws/notifications",
];

/// One client frame.
#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// The frames of one case, sent back to back.
#[derive(Debug, Clone)]
struct Frames(Vec<Frame>);

impl Input for Frames {
    /// A JSON array: a text frame as a string, a binary frame as
    /// `{"binary": [bytes]}` (the corpus format).
    fn to_file(&self) -> Vec<u8> {
        let items: Vec<Value> = self
            .0
            .iter()
            .map(|f| match f {
                Frame::Text(t) => json!(t),
                Frame::Binary(b) => json!({ "binary": b }),
            })
            .collect();
        serde_json::to_vec_pretty(&items).unwrap()
    }
}

fn parse(bytes: &[u8]) -> Frames {
    let items: Vec<Value> =
        serde_json::from_slice(bytes).expect("a ws_control corpus file is a JSON array");
    Frames(
        items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Frame::Text(s),
                other => Frame::Binary(
                    serde_json::from_value(other["binary"].clone()).expect("{\"binary\": [bytes]}"),
                ),
            })
            .collect(),
    )
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = |frames: &[Value]| {
        Frames(frames.iter().map(|v| Frame::Text(v.to_string())).collect()).to_file()
    };
    vec![
        (
            "valid-subscribe-own-channels.json".into(),
            f(&[
                json!({"op":"subscribe","channel":"user:u1"}),
                json!({"op":"subscribe","channel":"project:p1"}),
                json!({"op":"subscribe","channel":"document:d1","since":0,"epoch":"e"}),
                json!({"op":"ping"}),
                json!({"op":"unsubscribe","channel":"project:p1"}),
            ]),
        ),
        (
            "edge-forbidden-and-malformed.json".into(),
            f(&[
                json!({"op":"subscribe","channel":"user:u2"}),
                json!({"op":"subscribe","channel":"category:writing"}),
                json!({"op":"subscribe"}),
                json!({"op":"subscribe","channel":"nope"}),
                json!({"op":"subscribe","channel":42}),
                json!({"op":"subscribe","channel":"document:d1","since":-1}),
                json!({"op":"teleport"}),
                json!({"channel":"user:u1"}),
                json!([]),
                json!("ping"),
            ]),
        ),
        (
            "edge-not-json.json".into(),
            serde_json::to_vec(
                &json!(["", "{", "{\"op\":", "\u{0}", "null", {"binary": [0, 159, 146, 150]}]),
            )
            .unwrap(),
        ),
    ]
}

fn channel() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => proptest::sample::select(&[
            "user:u1", "user:u2", "project:p1", "project:p2", "document:d1",
            "document:d2", "category:writing", "category:", "user:", "u1", "",
        ][..]).prop_map(|s| json!(s)),
        2 => (proptest::sample::select(&["user:", "project:", "document:", "category:"][..]), hostile_string())
            .prop_map(|(k, id)| json!(format!("{k}{id}"))),
        1 => hostile_value(),
    ]
}

/// A control frame: known or hostile `op`, channel, `since`, `epoch`, and
/// an extra field now and then.
fn control() -> impl Strategy<Value = Frame> {
    let op = prop_oneof![
        6 => proptest::sample::select(&["subscribe", "unsubscribe", "ping"][..]).prop_map(|s| json!(s)),
        1 => proptest::sample::select(&["Subscribe", "", "pong", "message", "subscribed"][..]).prop_map(|s| json!(s)),
        1 => hostile_value(),
    ];
    let since = prop_oneof![
        3 => Just(None),
        2 => any::<u64>().prop_map(|n| Some(json!(n))),
        1 => hostile_value().prop_map(Some),
    ];
    let epoch = prop_oneof![
        3 => Just(None),
        1 => hostile_value().prop_map(Some),
    ];
    let extra = prop_oneof![
        4 => Just(None),
        1 => (hostile_string(), hostile_value()).prop_map(Some),
    ];
    (
        proptest::option::weighted(0.95, op),
        proptest::option::weighted(0.9, channel()),
        since,
        epoch,
        extra,
    )
        .prop_map(|(op, channel, since, epoch, extra)| {
            let mut m = Map::new();
            for (k, v) in [
                ("op", op),
                ("channel", channel),
                ("since", since),
                ("epoch", epoch),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Frame::Text(Value::Object(m).to_string())
        })
}

fn frames(corpus: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Frames> {
    let texts: Arc<Vec<Vec<u8>>> = Arc::new(
        corpus
            .iter()
            .flat_map(|file| parse(file).0)
            .filter_map(|f| match f {
                Frame::Text(t) => Some(t.into_bytes()),
                Frame::Binary(_) => None,
            })
            .collect(),
    );
    let frame = prop_oneof![
        6 => control(),
        3 => mutate::mutated(texts, crate::json_event::DICT, 4)
            .prop_map(|b| Frame::Text(String::from_utf8_lossy(&b).into_owned())),
        1 => proptest::collection::vec(any::<u8>(), 0..32).prop_map(Frame::Binary),
    ];
    proptest::collection::vec(frame, 1..6).prop_map(Frames)
}

fn token() -> String {
    connectors::auth::sign_jwt(
        &json!({"sub": "u1", "role": "member", "projects": ["p1"], "documents": ["d1"],
                "exp": now_ms() / 1000 + 3600}),
        SECRET.as_bytes(),
    )
}

/// A live connection and what it has been through.
struct Client {
    server: Server,
    ws: Option<Ws>,
    connects: usize,
    closes: Vec<(u16, String)>,
    frames: u64,
    /// Every frame sent on the current connection: on a failure it is
    /// written out, a sequence that reproduces it on a fresh connection.
    log: Vec<Frame>,
}

impl Client {
    async fn connect(&mut self) {
        let path = PATHS[self.connects % PATHS.len()];
        self.connects += 1;
        let url = self.server.ws_url(&format!("{path}?token={}", token()));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {path}: {e}"));
        self.ws = Some(ws);
        self.log.clear();
    }

    /// The next reply; `None` after a close frame (recorded). A connection
    /// that ends without a close frame (a panicked task) is an error.
    async fn reply(&mut self) -> Result<Option<Value>, String> {
        let ws = self.ws.as_mut().expect("connected");
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Err(_) => return Err("no reply within 10 s".into()),
                Ok(None) => {
                    return Err("the server ended the connection without a close frame".into());
                }
                Ok(Some(Err(e))) => return Err(format!("the connection failed: {e}")),
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t)
                        .map(Some)
                        .map_err(|e| format!("a reply that is not JSON ({e}): {t:?}"));
                }
                Message::Close(Some(c)) => {
                    let code = u16::from(c.code);
                    // The named codes of websocket_fanout/close.rs.
                    if !((4000..5000).contains(&code) || [1001, 1002, 1009].contains(&code))
                        || c.reason.is_empty()
                    {
                        return Err(format!("closed with code {code}, reason {:?}", c.reason));
                    }
                    self.closes.push((code, c.reason.to_string()));
                    self.ws = None;
                    return Ok(None);
                }
                Message::Close(None) => return Err("closed without a code".into()),
                _ => {}
            }
        }
    }

    async fn try_case(&mut self, frames: &Frames) -> Result<(), String> {
        let ws = self.ws.as_mut().expect("connected");
        let mut expected = 0;
        for f in &frames.0 {
            let msg = match f {
                Frame::Text(t) => {
                    expected += 1;
                    Message::text(t.clone())
                }
                Frame::Binary(b) => Message::binary(b.clone()),
            };
            self.log.push(f.clone());
            self.frames += 1;
            if let Err(e) = ws.send(msg).await {
                return self.closed_by_server(&e).await;
            }
        }
        // A ping of our own ends the case: its pong must be the reply after
        // exactly `expected` others (nothing lost, nothing extra).
        let ping = r#"{"op":"ping"}"#;
        self.log.push(Frame::Text(ping.into()));
        if let Err(e) = ws.send(Message::text(ping)).await {
            return self.closed_by_server(&e).await;
        }
        for i in 0..=expected {
            let Some(reply) = self.reply().await? else {
                return Ok(());
            };
            check_reply(&reply)?;
            if i == expected && reply != json!({"op": "pong"}) {
                return Err(format!(
                    "{expected} text frames were not answered by exactly {expected} replies: {reply}"
                ));
            }
        }
        Ok(())
    }

    /// A send failed: fine only if the server closed the connection with a
    /// named code first (its close frame is still to be read).
    async fn closed_by_server(
        &mut self,
        send_error: &tokio_tungstenite::tungstenite::Error,
    ) -> Result<(), String> {
        loop {
            match self.reply().await {
                Ok(Some(reply)) => check_reply(&reply)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("send failed ({send_error}), then: {e}")),
            }
        }
    }

    async fn case(&mut self, frames: &Frames) {
        if self.ws.is_none() || self.log.len() > 400 {
            self.connect().await;
        }
        if let Err(why) = self.try_case(frames).await {
            self.ws = None;
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/fuzz-failures/ws_control");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("connection-log.json");
            std::fs::write(&file, Frames(std::mem::take(&mut self.log)).to_file()).unwrap();
            panic!("{why} (every frame of that connection: {})", file.display());
        }
    }
}

fn check_reply(reply: &Value) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what}: {reply}"));
    match reply["op"].as_str() {
        Some("pong") => Ok(()),
        Some("subscribed") => {
            if reply["channel"].is_string()
                && reply["offset"].is_u64()
                && reply["epoch"].is_string()
            {
                Ok(())
            } else {
                fail("a subscribed reply without channel, offset and epoch")
            }
        }
        Some("unsubscribed") if reply["channel"].is_string() => Ok(()),
        Some("error") => {
            let code = reply["code"].as_str().unwrap_or_default();
            if code.is_empty()
                || !code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return fail("an error without a snake_case code");
            }
            if reply["message"].as_str().unwrap_or_default().trim().len() < 8 {
                return fail("an unspecific error");
            }
            Ok(())
        }
        _ => fail("an unexpected reply"),
    }
}

#[test]
fn websocket_control_frames_survive_hostile_clients() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(Server::start(&[
        "--set",
        &format!("auth.jwt_secret=\"{SECRET}\""),
        // The frames are the subject here, not the flood limit (its own
        // tests are in fanout_auth.rs): lift it.
        "--set",
        "fanout.control_rate_per_sec=1e9",
        "--set",
        "fanout.control_burst=1e9",
    ]));
    let client = RefCell::new(Client {
        server,
        ws: None,
        connects: 0,
        closes: Vec::new(),
        frames: 0,
        log: Vec::new(),
    });
    let corpus = Arc::new(
        crate::corpus("ws_control")
            .into_iter()
            .map(|(_, b)| b)
            .collect::<Vec<_>>(),
    );
    run(
        "ws_control",
        "ws_control",
        cases(600),
        parse,
        frames(corpus),
        |f: &Frames| rt.block_on(client.borrow_mut().case(f)),
    );
    let mut c = client.into_inner();
    assert!(
        c.server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let health = rt
        .block_on(reqwest::get(c.server.url("/healthz")))
        .unwrap()
        .status();
    assert!(
        health.is_success(),
        "/healthz answers {health} after the frames"
    );
    let mut closes = std::collections::BTreeMap::<u16, usize>::new();
    for (code, _) in &c.closes {
        *closes.entry(*code).or_default() += 1;
    }
    eprintln!(
        "fuzz ws_control: {} frames over {} connections, closes by code {closes:?}",
        c.frames, c.connects
    );
    c.ws = None;
}
