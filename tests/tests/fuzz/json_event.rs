//! The JSON event decoder: `decode_event` (one event, as `POST /v1/events`
//! and the WebSocket ingest decode each event) and `decode_batch` (a body:
//! object, array or NDJSON).

use crate::mutate::{self, Edit, json_edit};
use crate::{Input, cases, checks, run};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use std::sync::Arc;

/// Tokens a JSON fuzzer inserts.
pub const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\udfff\\ud800",
    b"null",
    b"true",
    b"-",
    b"-0",
    b"1e309",
    b"-1e309",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"0.0000001",
    b"\"type\":",
    b"\"ts\":",
    b"\"id\":",
    b"\"data\":",
    b"\"user_id\":",
    b"\"writing.keystroke\"",
    b"\"2026-01-01T00:00:00Z\"",
    b"\n",
    b"\r\n",
    b"\xff",
    b"\xc3",
    b"\xe2\x9c",
];

/// The fixed event time of the seeds (the decoder checks no skew without a clock).
const TS: i64 = 1_767_600_000_000;

/// A valid envelope per example payload: `(file name, envelope)`.
pub fn envelopes() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (ty, min, max) in schemas::examples() {
        for (kind, data) in [("min", min), ("max", max)] {
            out.push((
                format!("valid-{ty}-{kind}.json"),
                json!({
                    "id": format!("e-{ty}-{kind}"),
                    "type": ty,
                    "ts": TS,
                    "user_id": "u1",
                    "project_id": "p1",
                    "document_id": "d1",
                    "data": data,
                }),
            ));
        }
    }
    out
}

/// The committed seeds: every example envelope, plus hand-written edges.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = envelopes()
        .into_iter()
        .map(|(name, v)| (name, serde_json::to_vec_pretty(&v).unwrap()))
        .collect();
    let edges: &[(&str, &str)] = &[
        (
            "edge-rfc3339-ts.json",
            r#"{"type":"writing.word_added","ts":"2026-01-05T08:00:00.123+01:00","user_id":"u1","data":{}}"#,
        ),
        (
            "edge-escaped-id.json",
            r#"{"id":"e\u0031\n","type":"writing.word_added","ts":1767600000000,"user_id":"u\u00e9","data":{"words":1}}"#,
        ),
        (
            "edge-no-id-no-data.json",
            r#"{"type":"writing.session_started","ts":0,"user_id":"u1"}"#,
        ),
        (
            "edge-unknown-type.json",
            r#"{"type":"writing.teleported","ts":1,"user_id":"u1","data":{}}"#,
        ),
        (
            "edge-duplicate-keys.json",
            r#"{"type":"writing.word_added","type":"system.error","ts":1,"ts":2,"user_id":"u1","data":{}}"#,
        ),
        ("edge-deep-nesting.json", &"[".repeat(300)),
        (
            "edge-huge-numbers.json",
            r#"{"type":"writing.keystroke","ts":9223372036854775808,"user_id":"u1","data":{"keystrokes":1e400,"words":-0,"chars":18446744073709551616}}"#,
        ),
        (
            "edge-batch-array.json",
            r#"[{"type":"writing.word_added","ts":1,"user_id":"u1","data":{}},{"type":"nope","ts":1},3,null]"#,
        ),
        (
            "edge-batch-ndjson.json",
            "{\"type\":\"writing.word_added\",\"ts\":1,\"user_id\":\"u1\",\"data\":{}}\r\n\n  \n{\"type\":\"writing.word_added\",\"ts\":2,\"user_id\":\"u1\"}\n{",
        ),
    ];
    out.extend(
        edges
            .iter()
            .map(|(n, t)| ((*n).to_owned(), t.as_bytes().to_vec())),
    );
    out
}

/// Field names the structure-aware edits add: the envelope's and every
/// example payload's.
fn keys() -> &'static [&'static str] {
    let mut keys: Vec<&'static str> = vec![
        "id",
        "type",
        "ts",
        "user_id",
        "project_id",
        "document_id",
        "data",
    ];
    for (_, _, max) in schemas::examples() {
        if let Value::Object(m) = max {
            for k in m.keys() {
                if !keys.contains(&k.as_str()) {
                    keys.push(Box::leak(k.clone().into_boxed_str()));
                }
            }
        }
    }
    Box::leak(keys.into_boxed_slice())
}

/// One event's bytes: a valid envelope with structure-aware edits (and a
/// byte edit now and then), or a byte-mutated corpus input.
pub fn event_bytes(corpus: Arc<Vec<Vec<u8>>>) -> BoxedStrategy<Vec<u8>> {
    let docs: Arc<Vec<Value>> = Arc::new(envelopes().into_iter().map(|(_, v)| v).collect());
    let keys = keys();
    let structured = (
        any::<Index>(),
        proptest::collection::vec(json_edit(keys), 1..4),
        proptest::collection::vec(
            (any::<Index>(), any::<Index>()).prop_map(|(i, t)| mutate::Bytes::Token(i, t)),
            0..2,
        ),
    )
        .prop_map(move |(doc, edits, tokens): (Index, Vec<Edit>, _)| {
            let mut v = doc.get(&docs).clone();
            mutate::edit(&mut v, &edits);
            let mut bytes = serde_json::to_vec(&v).unwrap();
            mutate::apply(&mut bytes, &tokens, DICT, &[]);
            bytes
        });
    prop_oneof![
        3 => structured,
        2 => mutate::mutated(corpus, DICT, 6),
    ]
    .boxed()
}

fn corpus_inputs() -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        crate::corpus("json_event")
            .into_iter()
            .map(|(_, b)| b)
            .collect(),
    )
}

#[test]
fn json_event_decoder_survives_hostile_events() {
    run(
        "json_event",
        "json_event",
        cases(2_000),
        <[u8]>::to_vec,
        event_bytes(corpus_inputs()),
        |b: &Vec<u8>| checks::json_event(b),
    );
}

/// A body of several events, as an array or NDJSON.
#[derive(Debug, Clone)]
struct Body(Vec<u8>);

impl Input for Body {
    fn to_file(&self) -> Vec<u8> {
        self.0.clone()
    }
}

#[test]
fn json_batch_decoder_survives_hostile_bodies() {
    let events = proptest::collection::vec(event_bytes(corpus_inputs()), 0..5);
    let bodies = (events, 0u8..3).prop_map(|(events, form)| {
        Body(match form {
            0 => {
                let mut b = b"[".to_vec();
                b.extend(events.join(&b","[..]));
                b.push(b']');
                b
            }
            1 => events.join(&b"\n"[..]),
            _ => events.into_iter().next().unwrap_or_default(),
        })
    });
    run(
        "json_batch",
        "json_event",
        cases(1_000),
        |b| Body(b.to_vec()),
        bodies,
        |b: &Body| checks::json_batch(&b.0),
    );
}

#[test]
fn json_event_seeds_are_valid_and_cover_every_type() {
    let committed = crate::corpus("json_event");
    for (name, _) in envelopes() {
        assert!(
            committed.iter().any(|(n, _)| *n == name),
            "tests/fuzz/corpus/json_event/{name} is missing: regenerate the seeds with \
             INKSTREAM_FUZZ_WRITE_CORPUS=1 cargo test -p inkstream-tests --test fuzz seeds"
        );
    }
    for (name, bytes) in committed.iter().filter(|(n, _)| n.starts_with("valid-")) {
        schemas::decode_event(bytes, &schemas::Limits::default())
            .unwrap_or_else(|e| panic!("seed {name} is not a valid event: {e}"));
    }
}
