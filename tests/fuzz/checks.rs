//! What every byte-level fuzz target checks on one input, shared by the
//! suite's deterministic harness (`tests/tests/fuzz/`, stable, `cargo test`)
//! and the coverage-guided cargo-fuzz targets (`tests/fuzz/fuzz_targets/`,
//! nightly, for longer campaigns). Only `schemas` and `serde_json`: the
//! cargo-fuzz build stays small.
//!
//! Each check panics (a crash, for both harnesses) when a property fails:
//! - the decoder returns, it never panics (and never allocates from a length
//!   prefix: a length larger than the input is an error, not an allocation);
//! - a rejection is a typed error with a specific message;
//! - what is accepted round-trips: decode(encode(x)) == x;
//! - two decoders of the same bytes agree (the JSON fast and slow paths; the
//!   hand-written Avro reader and apache-avro's).

use schemas::binary::BinaryError;
use schemas::confluent::FrameError;
use schemas::{AvroSchemas, DecodeError, Event, Limits, binary, confluent, decode_batch};

/// A rejection's message is "specific" when it says something: at least a
/// few words' worth of text, not a bare code or an empty string.
fn specific(what: &str, message: &str) {
    assert!(
        message.trim().len() >= 8,
        "{what}: rejection with an unspecific message {message:?}"
    );
}

fn decode_error(e: &DecodeError) {
    assert!(!e.code.is_empty(), "DecodeError without a code: {e:?}");
    assert!(
        e.code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "DecodeError code is not snake_case: {e:?}"
    );
    // A field may be named "" only when that is the offending key itself
    // (`{"": 1}` is an unknown envelope field).
    if let Some(field) = &e.field {
        assert!(
            !field.is_empty() || e.code == "unknown_field",
            "DecodeError names an empty field: {e:?}"
        );
    }
    specific("json", &e.message);
    specific("json", &e.to_string());
}

/// Limits without a clock (so the check does not depend on the time of day)
/// and large enough that a re-encoded event is never refused for its size.
fn roomy() -> Limits {
    Limits {
        max_event_bytes: 1 << 24,
        max_id_bytes: 1 << 20,
        ..Limits::default()
    }
}

/// One JSON event through `decode_event`, as the ingest route does, with the
/// default limits and with a default `user_id` (an authenticated user).
pub fn json_event(bytes: &[u8]) {
    let plain = Limits::default();
    let user = Limits {
        default_user_id: Some("u-fuzz".into()),
        ..Limits::default()
    };
    for limits in [&plain, &user] {
        match schemas::decode_event(bytes, limits) {
            Ok(event) => json_accepted(bytes, &event, limits),
            Err(e) => decode_error(&e),
        }
    }
}

fn json_accepted(bytes: &[u8], event: &Event, limits: &Limits) {
    // The slow path (a generic JSON value) accepts the same event. An event
    // without `id` gets a fresh UUIDv7 on each path: compare without it.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).expect("decode_event accepted bytes that are not JSON");
    let had_id = value.get("id").is_some();
    let slow = schemas::decode_value(value, limits)
        .unwrap_or_else(|e| panic!("the fast path accepted what the slow path refuses: {e}"));
    let mut fast = event.clone();
    if !had_id {
        fast.id.clone_from(&slow.id);
    }
    assert_eq!(fast, slow, "the fast and slow JSON paths disagree");
    // Round trip: the JSON the server writes decodes to the same event.
    let text = serde_json::to_vec(event).expect("an accepted event serializes");
    let back = schemas::decode_event(&text, &roomy())
        .unwrap_or_else(|e| panic!("an accepted event does not decode after encoding: {e}"));
    assert_eq!(&back, event, "JSON decode(encode(x)) != x");
}

/// A request body through `decode_batch` (object, array or NDJSON).
pub fn json_batch(bytes: &[u8]) {
    array_as_serde_reads_it(bytes);
    for ndjson in [false, true] {
        match decode_batch(bytes, ndjson, &Limits::default()) {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(event) => {
                            let text = serde_json::to_vec(&event).expect("serializes");
                            let back = schemas::decode_event(&text, &roomy())
                                .expect("a batch's event decodes after encoding");
                            assert_eq!(back, event, "batch event: decode(encode(x)) != x");
                        }
                        Err(e) => decode_error(&e),
                    }
                }
            }
            Err(e) => decode_error(&e),
        }
    }
}

/// An array body decodes as serde_json's parse of the whole array would
/// have it (the decoder splits arrays itself): the same events and per-item
/// errors, or a request-level error exactly when the body is not JSON.
fn array_as_serde_reads_it(bytes: &[u8]) {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return;
    }
    let limits = Limits::default();
    // Events without an id get a generated one: compare without ids.
    let blank = |v: Vec<Result<schemas::Event, schemas::DecodeError>>| {
        v.into_iter()
            .map(|r| {
                r.map(|mut e| {
                    e.id.clear();
                    e
                })
            })
            .collect::<Vec<_>>()
    };
    let reference =
        serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(bytes).map(|items| {
            items
                .iter()
                .map(|raw| schemas::decode_event(raw.get().as_bytes(), &limits))
                .collect::<Vec<_>>()
        });
    match (decode_batch(bytes, false, &limits), reference) {
        (Ok(fast), Ok(reference)) => assert_eq!(
            blank(fast),
            blank(reference),
            "an array body decoded otherwise than serde_json's whole-array parse"
        ),
        (Err(_), Err(_)) => {}
        (fast, reference) => panic!(
            "an array body: decode_batch gave {fast:?}, serde_json's whole-array parse {:?}",
            reference.map(|_| "events").map_err(|e| e.to_string())
        ),
    }
}

fn binary_error(e: &BinaryError) {
    specific("avro binary", &e.to_string());
    assert_ne!(
        e.to_string().trim(),
        "avro binary:",
        "avro binary: an error without a message"
    );
}

/// The Avro binary encoding of `event` re-encoded after a decode is the same
/// bytes (compared as bytes, so a NaN `double` is not a false alarm).
fn binary_round_trip(event: &Event) -> Vec<u8> {
    let enc = binary::encode(event).expect("a decoded event encodes");
    let back =
        binary::decode(&enc).unwrap_or_else(|e| panic!("an encoded event does not decode: {e}"));
    assert_eq!(
        binary::encode(&back).expect("encodes"),
        enc,
        "Avro decode(encode(x)) != x"
    );
    enc
}

/// Raw Avro datums (the log's and the Kafka mirror's encoding) through the
/// hand-written reader.
pub fn avro_binary(bytes: &[u8]) {
    match binary::decode(bytes) {
        Ok(event) => {
            binary_round_trip(&event);
        }
        Err(e) => binary_error(&e),
    }
}

/// The same bytes through apache-avro's reader (`AvroSchemas::decode`, the
/// path of schema resolution), which must agree with the hand-written one on
/// every datum both accept.
pub fn avro_generic(bytes: &[u8]) {
    let schemas = AvroSchemas::shared().expect("the embedded schemas parse");
    match schemas.decode(bytes) {
        Ok(event) => {
            let enc = binary_round_trip(&event);
            let again = schemas
                .decode(&enc)
                .unwrap_or_else(|e| panic!("apache-avro refuses the hand-written encoding: {e}"));
            assert_eq!(
                binary::encode(&again).expect("encodes"),
                enc,
                "apache-avro decode(encode(x)) != x"
            );
            if let Ok(hand) = binary::decode(bytes) {
                assert_eq!(
                    binary::encode(&hand).expect("encodes"),
                    enc,
                    "apache-avro and the hand-written reader decode the same bytes differently"
                );
            }
        }
        Err(e) => specific("apache-avro", &e.to_string()),
    }
}

/// Confluent-framed records (magic, schema id, datum), as a consumer of the
/// event topics reads them.
pub fn confluent(bytes: &[u8]) {
    match confluent::decode(bytes) {
        Ok(event) => {
            let enc = confluent::encode(&event).expect("a decoded event frames");
            let back = confluent::decode(&enc)
                .unwrap_or_else(|e| panic!("a framed event does not decode: {e}"));
            assert_eq!(
                confluent::encode(&back).expect("frames"),
                enc,
                "Confluent decode(encode(x)) != x"
            );
        }
        Err(FrameError::Avro(e)) => binary_error(&e),
        Err(e @ (FrameError::NotFramed(_) | FrameError::UnknownSchema { .. })) => {
            specific("confluent", &e.to_string())
        }
    }
    // Framing alone: unframe(frame(id, datum)) == (id, datum).
    if let Ok((id, datum)) = confluent::unframe(bytes) {
        assert_eq!(confluent::frame(id, datum), bytes, "frame(unframe(x)) != x");
    }
}
