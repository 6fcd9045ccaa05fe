//! The Avro decoders (the hand-written reader of the log and the Kafka
//! mirror, and apache-avro's of schema resolution) and the Confluent framing
//! of the event topics.

use crate::json_event::envelopes;
use crate::mutate::{self, INTERESTING_LONGS, write_varint};
use crate::{cases, checks, run};
use schemas::{AvroSchemas, binary, confluent};
use std::sync::Arc;

/// Tokens an Avro fuzzer inserts: overlong and maximal varints, a union
/// branch out of range, invalid UTF-8.
const DICT: &[&[u8]] = &[
    b"\x00",
    b"\x01",
    b"\x02",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00",
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\x00\x00\x00\x00\x00\x00\xf8\x7f",
    b"\x00\x00\x00\x00\x00\x00\xf0\x7f",
];

fn valid_events() -> Vec<(String, schemas::Event)> {
    envelopes()
        .into_iter()
        .map(|(name, v)| {
            let bytes = serde_json::to_vec(&v).unwrap();
            let event = schemas::decode_event(&bytes, &schemas::Limits::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.trim_end_matches(".json").to_owned(), event)
        })
        .collect()
}

/// The committed Avro seeds: every example event's datum, plus edges.
pub fn avro_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = valid_events()
        .into_iter()
        .map(|(name, e)| (format!("{name}.avro"), binary::encode(&e).unwrap()))
        .collect();
    let mut huge_len = Vec::new();
    write_varint(&mut huge_len, 1 << 62);
    huge_len.extend_from_slice(b"abc");
    out.push(("edge-length-2pow62.avro".into(), huge_len));
    let mut negative = Vec::new();
    write_varint(&mut negative, -5);
    out.push(("edge-negative-length.avro".into(), negative));
    out.push((
        "edge-overlong-varint.avro".into(),
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01".to_vec(),
    ));
    out
}

/// The committed Confluent seeds: every example event framed, plus edges.
pub fn confluent_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = valid_events()
        .into_iter()
        .map(|(name, e)| (format!("{name}.bin"), confluent::encode(&e).unwrap()))
        .collect();
    out.push(("edge-empty.bin".into(), Vec::new()));
    out.push(("edge-magic-only.bin".into(), vec![0]));
    out.push(("edge-wrong-magic.bin".into(), vec![1, 0, 0, 0, 1, 2]));
    out.push((
        "edge-unknown-schema.bin".into(),
        confluent::frame(confluent::schema_id() ^ 1, b"\x02a"),
    ));
    out
}

fn inputs(corpus: &str) -> Arc<Vec<Vec<u8>>> {
    Arc::new(crate::corpus(corpus).into_iter().map(|(_, b)| b).collect())
}

#[test]
fn avro_binary_decoder_survives_hostile_datums() {
    run(
        "avro_binary",
        "avro",
        cases(4_000),
        <[u8]>::to_vec,
        mutate::mutated(inputs("avro"), DICT, 5),
        |b: &Vec<u8>| checks::avro_binary(b),
    );
}

#[test]
fn apache_avro_decoder_survives_hostile_datums_and_agrees() {
    run(
        "avro_generic",
        "avro",
        cases(1_500),
        <[u8]>::to_vec,
        mutate::mutated(inputs("avro"), DICT, 5),
        |b: &Vec<u8>| checks::avro_generic(b),
    );
}

#[test]
fn confluent_framing_survives_hostile_records() {
    run(
        "confluent",
        "confluent",
        cases(2_500),
        <[u8]>::to_vec,
        mutate::mutated(inputs("confluent"), DICT, 5),
        |b: &Vec<u8>| checks::confluent(b),
    );
}

/// A length prefix of 2^62 (or any long a hostile writer picks) must be an
/// error, never an allocation of that size: every varint of every valid
/// datum is replaced in turn by each interesting long, and both decoders
/// (and the Confluent framing) must answer. An allocation from the prefix
/// would abort the test process ("memory allocation of … bytes failed").
#[test]
fn avro_length_prefixes_never_allocate_from_the_prefix() {
    let schemas = AvroSchemas::shared().unwrap();
    let mut decoded = 0usize;
    for (name, event) in valid_events() {
        let datum = binary::encode(&event).unwrap();
        for at in 0..datum.len() {
            for &v in INTERESTING_LONGS
                .iter()
                .filter(|v| v.unsigned_abs() >= 1 << 31)
            {
                let mut bytes = datum.clone();
                let end = bytes[at..]
                    .iter()
                    .position(|b| b & 0x80 == 0)
                    .map_or(bytes.len(), |p| at + p + 1);
                let mut enc = Vec::new();
                write_varint(&mut enc, v);
                bytes.splice(at..end, enc);
                checks::avro_binary(&bytes);
                checks::avro_generic(&bytes);
                checks::confluent(&confluent::frame(confluent::schema_id(), &bytes));
                decoded += 1;
            }
        }
        // The first field is the id's length: 2^62 there is the plain case.
        let mut bytes = Vec::new();
        write_varint(&mut bytes, 1 << 62);
        bytes.extend_from_slice(&datum[1..]);
        let e = binary::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{name}: {e}");
        assert!(schemas.decode(&bytes).is_err(), "{name}");
    }
    assert!(decoded > 1_000, "only {decoded} datums tried");
}

#[test]
fn avro_seeds_are_valid() {
    let schemas = AvroSchemas::shared().unwrap();
    let avro = crate::corpus("avro");
    let framed = crate::corpus("confluent");
    for (name, _) in valid_events() {
        for (corpus, ext, files) in [("avro", "avro", &avro), ("confluent", "bin", &framed)] {
            let file = format!("{name}.{ext}");
            let (_, bytes) = files.iter().find(|(n, _)| *n == file).unwrap_or_else(|| {
                panic!(
                    "tests/fuzz/corpus/{corpus}/{file} is missing: regenerate the seeds \
                         with INKSTREAM_FUZZ_WRITE_CORPUS=1 cargo test -p inkstream-tests \
                         --test fuzz seeds"
                )
            });
            if corpus == "avro" {
                binary::decode(bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
                schemas
                    .decode(bytes)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
            } else {
                confluent::decode(bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
        }
    }
}
