//! The JSON frames the hub sends (`message`, `subscribed`, `unsubscribed`,
//! `pong`, `error`), built as strings once per publication and shared.

use axum::extract::ws::Utf8Bytes;

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

pub(crate) fn message_frame(channel: &str, offset: u64, body: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
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
) -> Utf8Bytes {
    let recovered = match recovery {
        Recovery::NotAsked => "",
        Recovery::Recovered => r#","recovered":true"#,
        Recovery::NotRecovered => r#","recovered":false"#,
    };
    Utf8Bytes::from(format!(
        r#"{{"op":"subscribed","channel":{},"offset":{offset},"epoch":{}{recovered}}}"#,
        json_str(channel),
        json_str(epoch)
    ))
}

pub(crate) fn op_frame(op: &str, channel: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        r#"{{"op":"{op}","channel":{}}}"#,
        json_str(channel)
    ))
}

pub(crate) fn error_frame(code: &str, message: &str, channel: Option<&str>) -> Utf8Bytes {
    let mut v = serde_json::json!({"op": "error", "code": code, "message": message});
    if let Some(ch) = channel {
        v["channel"] = ch.into();
    }
    Utf8Bytes::from(v.to_string())
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
