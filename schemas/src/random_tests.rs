//! Property tests on generated random instances of every event type: the
//! JSON decoder's fast and slow paths agree, and JSON → model → Avro binary →
//! model → JSON is the identity, byte-for-byte the same Avro as apache-avro.

use crate::avro::AvroSchemas;
use crate::json::{Limits, decode_event, decode_value};
use crate::payload::TYPES;
use crate::validate::non_negative;
use apache_avro::Schema;
use serde_json::{Map, Value, json};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn random_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &["a", "Z", "7", " ", "é", "✍", "\"", "\\", "\n", "ß", "草"];
    (0..rng.below(12))
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

fn random_value(schemas: &AvroSchemas, schema: &Schema, field: &str, rng: &mut Rng) -> Value {
    match schema {
        Schema::Int | Schema::Long | Schema::TimestampMillis => {
            if non_negative(field) || matches!(schema, Schema::TimestampMillis) {
                json!(rng.below(5_000_000))
            } else {
                json!(rng.below(2_000_000) as i64 - 1_000_000)
            }
        }
        Schema::Double | Schema::Float => json!((rng.below(2_000_000) as f64 - 1e6) / 1024.0),
        Schema::Boolean => json!(rng.coin()),
        Schema::String if field == "currency" => {
            json!(["EUR", "USD", "GBP", "JPY"][rng.below(4) as usize])
        }
        Schema::String => json!(random_string(rng)),
        Schema::Enum(e) => json!(e.symbols[rng.below(e.symbols.len() as u64) as usize]),
        Schema::Array(_) if field == "selection" || field == "viewport" => {
            let a = rng.below(1000);
            json!([a, a + rng.below(100)])
        }
        Schema::Array(a) => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(schemas, &a.items, field, rng))
                .collect(),
        ),
        Schema::Union(u) => {
            let variants: Vec<&Schema> = u.variants().iter().collect();
            let pick = variants[rng.below(variants.len() as u64) as usize];
            random_value(schemas, pick, field, rng)
        }
        Schema::Null => Value::Null,
        Schema::Record(r) => {
            let mut m = Map::new();
            for f in &r.fields {
                let v = random_value(schemas, &f.schema, &f.name, rng);
                // Leave out optional nulls half the time: absent and null mean the same.
                if v.is_null() && rng.coin() {
                    continue;
                }
                m.insert(f.name.clone(), v);
            }
            Value::Object(m)
        }
        Schema::Ref { name } => {
            let named = schemas.named(name).expect("named type exists");
            random_value(schemas, named, field, rng)
        }
        other => panic!("no generator for {other:?}"),
    }
}

fn random_event(schemas: &AvroSchemas, ty: &str, i: usize, rng: &mut Rng) -> Value {
    let data = random_value(
        schemas,
        schemas.payload_schema(ty).expect("schema"),
        "",
        rng,
    );
    let mut e = json!({
        "id": format!("r-{i}-{}", random_string(rng)).replace(['"', '\\', '\n'], "x"),
        "type": ty,
        "ts": 1_767_603_600_000i64 + rng.below(1_000_000) as i64,
        "user_id": "u1", "project_id": "p1", "document_id": "d1",
        "data": data,
    });
    if rng.coin() {
        e.as_object_mut().expect("object").remove("document_id");
        if !ty.starts_with("collaboration.") {
            return e;
        }
        e["document_id"] = json!("d2");
    }
    e
}

#[test]
fn random_instances_round_trip_through_json_and_avro_for_every_type() {
    let schemas = AvroSchemas::shared().expect("schemas");
    let limits = Limits::default();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut checked = 0;
    let mut read_plain = 0;
    for ty in TYPES {
        for i in 0..150 {
            let json_event = random_event(schemas, ty, i, &mut rng);
            let text = json_event.to_string();
            // The payload's plain reader, where it reads the payload at all,
            // reads what serde_json reads.
            let data = json_event["data"].to_string();
            if let Some(plain) = crate::Payload::from_flat(ty, &data).expect("a known type") {
                let serde = crate::Payload::from_json_serde(ty, &data).expect("a known type");
                assert_eq!(Some(plain), serde.ok(), "{ty}: {data}");
                read_plain += 1;
            }
            let fast = decode_event(text.as_bytes(), &limits);
            let slow = decode_value(json_event.clone(), &limits);
            let event = match (fast, slow) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "fast and slow paths disagree on {text}");
                    a
                }
                (a, b) => panic!("{ty}: fast {a:?} / slow {b:?} for {text}"),
            };
            // model → JSON → model
            let again: crate::Event =
                serde_json::from_value(serde_json::to_value(&event).expect("to json"))
                    .expect("from json");
            assert_eq!(again, event);
            // model → Avro → model, and the same bytes as apache-avro
            let bytes = crate::binary::encode(&event).expect("encode");
            assert_eq!(
                bytes,
                schemas.encode(&event).expect("apache encode"),
                "{ty}"
            );
            assert_eq!(crate::binary::decode(&bytes).expect("decode"), event);
            assert_eq!(schemas.decode(&bytes).expect("apache decode"), event);
            checked += 1;
        }
    }
    assert_eq!(checked, TYPES.len() * 150);
    // Random strings hold escapes and numbers are often negative or
    // fractional, so many payloads go to serde_json; the rest are read plainly.
    assert!(
        read_plain > TYPES.len() * 20 && read_plain < checked,
        "{read_plain} of {checked} read plainly"
    );
}

#[test]
fn fast_and_slow_paths_reject_the_same_invalid_events() {
    let limits = Limits::default();
    let cases = [
        r#"{"type":"writing.keystroke","ts":1,"user_id":"u","data":{"keystrokes":-1,"words":1,"chars":1}}"#,
        r#"{"type":"writing.keystroke","ts":1,"user_id":"u","data":{"keystrokes":1,"words":1}}"#,
        r#"{"type":"writing.keystroke","ts":1,"user_id":"u","data":{"keystrokes":1,"words":1,"chars":1,"x":1}}"#,
        r#"{"type":"collaboration.cursor_moved","ts":1,"user_id":"u","document_id":"d","data":{"paragraph":1,"offset":1,"selection":[-1,2]}}"#,
        r#"{"type":"publishing.sales_updated","ts":1,"project_id":"p","data":{"book_id":"b","units":1,"revenue_cents":1,"currency":"eur","total_units":1}}"#,
        r#"{"type":"writing.keystroke","ts":-5,"user_id":"u","data":{"keystrokes":1,"words":1,"chars":1}}"#,
        r#"{"type":"writing.keystroke","ts":1,"user_id":"","data":{"keystrokes":1,"words":1,"chars":1}}"#,
        r#"{"type":"writing.keystroke","ts":1,"data":{"keystrokes":1,"words":1,"chars":1}}"#,
        r#"{"type":"writing.keystroke","ts":1,"user_id":"u","data":[]}"#,
    ];
    for case in cases {
        let err = decode_event(case.as_bytes(), &limits).expect_err(case);
        assert!(err.field.is_some(), "{case}: {err:?}");
    }
    let negative = decode_event(cases[0].as_bytes(), &limits).unwrap_err();
    assert_eq!(
        negative.to_string(),
        "data.keystrokes: expected non-negative integer, got -1"
    );
    let missing = decode_event(cases[1].as_bytes(), &limits).unwrap_err();
    assert_eq!(missing.code, "missing_field");
    assert_eq!(missing.field.as_deref(), Some("data.chars"));
    let unknown = decode_event(cases[2].as_bytes(), &limits).unwrap_err();
    assert_eq!(unknown.code, "unknown_field");
    let selection = decode_event(cases[3].as_bytes(), &limits).unwrap_err();
    assert_eq!(selection.field.as_deref(), Some("data.selection"));
    let currency = decode_event(cases[4].as_bytes(), &limits).unwrap_err();
    assert_eq!(currency.field.as_deref(), Some("data.currency"));
}

#[test]
fn enum_and_nested_errors_say_what_was_expected() {
    let limits = Limits::default();
    let err = decode_event(
        br#"{"type":"writing.keystroke","ts":1,"user_id":"u","data":{"keystrokes":1,"words":1,"chars":1,"source":"dictation"}}"#,
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"data.source: expected one of "typed", "paste", "import", "ai", got "dictation""#
    );
    let err = decode_event(
        br#"{"type":"collaboration.cursor_moved","ts":1,"user_id":"u","document_id":"d","data":{"paragraph":"3","offset":1}}"#,
        &limits,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"data.paragraph: expected non-negative integer, got "3""#
    );
    let err = decode_event(
        br#"{"type":"collaboration.comment_added","ts":1,"user_id":"u","document_id":"d","data":{"comment_id":"c","paragraph":1,"mentions":["u2",7]}}"#,
        &limits,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "data.mentions[1]: expected string, got 7");
}
