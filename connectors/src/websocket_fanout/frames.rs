//! The JSON frames the hub sends (`message`, `subscribed`, `unsubscribed`,
//! `pong`, `error`), encoded once per publication as WebSocket text frames
//! ([`WsFrame`]) and shared by every subscriber's queue.

use bytes::Bytes;

/// A WebSocket frame exactly as it goes on the wire. Server frames are not
/// masked (RFC 6455 §5.1), so one encoding serves every subscriber: a
/// publication to 1,000 connections is encoded once and its bytes are
/// shared by reference count until the last socket has written them.
#[derive(Clone, Debug)]
pub(crate) struct WsFrame(Bytes);

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

impl WsFrame {
    /// One unfragmented text frame carrying `payload`.
    pub(crate) fn text(payload: &str) -> WsFrame {
        WsFrame::encode(OP_TEXT, payload.as_bytes(), &[])
    }

    /// A ping with an empty payload.
    pub(crate) fn ping() -> WsFrame {
        WsFrame::encode(OP_PING, &[], &[])
    }

    /// A close frame with `code` and `reason` (at most 123 bytes, so the
    /// control frame's payload stays within 125: longer reasons are cut at
    /// a character boundary).
    pub(crate) fn close(code: u16, reason: &str) -> WsFrame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        WsFrame::encode(OP_CLOSE, &code.to_be_bytes(), &reason.as_bytes()[..end])
    }

    fn encode(opcode: u8, head: &[u8], tail: &[u8]) -> WsFrame {
        let len = head.len() + tail.len();
        let mut out = Vec::with_capacity(len + 10);
        out.push(FIN | opcode);
        if len < 126 {
            out.push(len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            out.push(126);
            out.extend_from_slice(&short.to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(head);
        out.extend_from_slice(tail);
        WsFrame(Bytes::from(out))
    }

    /// Bytes on the wire, header included: what a connection's queue bound counts.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn wire(&self) -> &Bytes {
        &self.0
    }

    /// The text a text frame carries (tests).
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &str {
        let b = &self.0;
        let at = match b[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&b[at..]).expect("text frames carry UTF-8")
    }
}

/// What a `subscribe` with `since` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// No `since`: a plain subscription.
    NotAsked,
    /// Every publication after `since` was replayed.
    Recovered,
    /// The history no longer reaches back (or the epoch changed): reload.
    NotRecovered,
}

pub(crate) fn message_frame(channel: &str, offset: u64, body: &str) -> WsFrame {
    WsFrame::text(&format!(
        r#"{{"op":"message","channel":{},"offset":{offset},"data":{body}}}"#,
        json_str(channel)
    ))
}

/// `{"op":"subscribed","channel":…,"offset":N,"epoch":"…"}`, plus
/// `"recovered":bool` when the subscribe carried `since`.
pub(crate) fn subscribed_frame(
    channel: &str,
    offset: u64,
    epoch: &str,
    recovery: Recovery,
) -> WsFrame {
    let recovered = match recovery {
        Recovery::NotAsked => "",
        Recovery::Recovered => r#","recovered":true"#,
        Recovery::NotRecovered => r#","recovered":false"#,
    };
    WsFrame::text(&format!(
        r#"{{"op":"subscribed","channel":{},"offset":{offset},"epoch":{}{recovered}}}"#,
        json_str(channel),
        json_str(epoch)
    ))
}

pub(crate) fn op_frame(op: &str, channel: &str) -> WsFrame {
    WsFrame::text(&format!(
        r#"{{"op":"{op}","channel":{}}}"#,
        json_str(channel)
    ))
}

pub(crate) fn error_frame(code: &str, message: &str, channel: Option<&str>) -> WsFrame {
    let mut v = serde_json::json!({"op": "error", "code": code, "message": message});
    if let Some(ch) = channel {
        v["channel"] = ch.into();
    }
    WsFrame::text(&v.to_string())
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::WsFrame;

    /// The header tungstenite (the reference) would write, by length class.
    #[test]
    fn text_frames_use_the_shortest_length_encoding() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let body = "x".repeat(len);
            let f = WsFrame::text(&body);
            assert_eq!(f.len(), len + header, "payload of {len} bytes");
            assert_eq!(f.wire()[0], 0x81, "FIN + text");
            assert_eq!(f.payload(), body);
        }
    }

    #[test]
    fn a_close_frame_carries_the_code_and_at_most_125_payload_bytes() {
        let f = WsFrame::close(4008, "slow");
        assert_eq!(
            &f.wire()[..],
            &[0x88, 6, 0x0f, 0xa8, b's', b'l', b'o', b'w']
        );
        let long = WsFrame::close(1000, &"é".repeat(100));
        assert!(
            long.wire()[1] <= 125,
            "control frames carry at most 125 bytes"
        );
        assert_eq!(&WsFrame::ping().wire()[..], &[0x89, 0]);
    }
}
