//! JSON Schemas (draft 2020-12, as OpenAPI 3.1 uses them) generated from the
//! Avro schemas, so that the HTTP API's document states exactly what the JSON
//! decoder ([`crate::json`]) accepts: one schema per payload type, and the
//! envelope variant of each type with the envelope fields its category
//! requires.
//!
//! What the decoder enforces beyond the Avro types is stated here too:
//! counting fields are non-negative ([`crate::validate`]), integers fit their
//! Avro width, `[start, end]` pairs have two non-negative items (given in
//! either order, they are stored as `[min, max]`), currencies are three
//! capital letters, ids are 1–[`Limits::max_id_bytes`] characters.
//! A test below checks every field against the decoder.

use crate::avro::AvroSchemas;
use crate::event::EventType;
use crate::json::Limits;
use apache_avro::Schema;
use serde_json::{Map, Value, json};

/// The component name of a type's payload schema (`Data.writing.keystroke`).
pub fn data_component(type_name: &str) -> String {
    format!("Data.{type_name}")
}

/// The component name of a type's envelope schema (`Event.writing.keystroke`).
pub fn event_component(type_name: &str) -> String {
    format!("Event.{type_name}")
}

/// The schema of an id (`id`, `user_id`, `project_id`, `document_id`);
/// `null` is the same as leaving an optional one out.
pub fn id_schema(limits: &Limits, description: &str) -> Value {
    json!({
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": limits.max_id_bytes,
        "description": description,
    })
}

/// Integer bounds of an Avro `int` / `long` field (`non_negative`: a count).
fn integer(min: i64, max: i64, non_negative: bool) -> Value {
    json!({"type": "integer", "minimum": if non_negative { 0 } else { min }, "maximum": max})
}

/// Whether `field` is a `[start, end]` pair.
fn pair(field: &str) -> bool {
    matches!(field, "selection" | "viewport")
}

/// The JSON Schema of an Avro schema, as the JSON decoder reads it.
fn of(schemas: &AvroSchemas, schema: &Schema, field: &str) -> Value {
    let counts = crate::validate::non_negative(field);
    match schema {
        Schema::Null => json!({"type": "null"}),
        Schema::Boolean => json!({"type": "boolean"}),
        Schema::Int => integer(i32::MIN.into(), i32::MAX.into(), counts),
        Schema::Long | Schema::TimestampMillis => integer(i64::MIN, i64::MAX, counts),
        Schema::Float | Schema::Double => json!({"type": "number"}),
        Schema::String if field == "currency" => json!({
            "type": "string", "minLength": 3, "maxLength": 3, "pattern": "^[A-Z]{3}$",
            "description": "ISO 4217 code"
        }),
        Schema::String => json!({"type": "string"}),
        Schema::Enum(e) => json!({"type": "string", "enum": e.symbols}),
        Schema::Array(_) if pair(field) => json!({
            "type": "array",
            "items": integer(0, i64::MAX, true),
            "minItems": 2,
            "maxItems": 2,
            "description": "[start, end]; given end first, it is stored as [end, start]"
        }),
        Schema::Array(a) => json!({"type": "array", "items": of(schemas, &a.items, "")}),
        Schema::Record(r) => record(schemas, r),
        Schema::Ref { name } => match schemas.named(name) {
            Some(s) => of(schemas, s, field),
            None => json!({}),
        },
        Schema::Union(u) => {
            let variants: Vec<Value> = u.variants().iter().map(|v| of(schemas, v, field)).collect();
            json!({ "anyOf": variants })
        }
        _ => json!({}),
    }
}

/// Whether an Avro schema admits `null`.
fn nullable(schema: &Schema) -> bool {
    match schema {
        Schema::Null => true,
        Schema::Union(u) => u.variants().iter().any(|v| matches!(v, Schema::Null)),
        _ => false,
    }
}

fn record(schemas: &AvroSchemas, r: &apache_avro::schema::RecordSchema) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in &r.fields {
        let mut s = of(schemas, &f.schema, &f.name);
        if let (Some(doc), Value::Object(m)) = (&f.doc, &mut s) {
            m.entry("description").or_insert_with(|| doc.clone().into());
        }
        if let (Some(default), Value::Object(m)) = (&f.default, &mut s) {
            m.insert("default".into(), default.clone());
        }
        // Serde takes a missing `Option` as `None`, and a missing field
        // with an Avro default as that default.
        if f.default.is_none() && !nullable(&f.schema) {
            required.push(Value::from(f.name.clone()));
        }
        properties.insert(f.name.clone(), s);
    }
    let mut out = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        out["required"] = required.into();
    }
    if let Some(doc) = &r.doc {
        out["description"] = doc.clone().into();
    }
    out
}

/// The payload schema of `type_name` (`None` for an unknown type).
pub fn data_schema(type_name: &str) -> Option<Value> {
    let schemas = AvroSchemas::shared().ok()?;
    Some(of(schemas, schemas.payload_schema(type_name)?, ""))
}

/// Whether the payload of `type_name` has a required field (then `data`
/// must be present; otherwise it may be omitted or `null`, read as `{}`).
pub fn data_required(type_name: &str) -> bool {
    data_schema(type_name).is_some_and(|s| s.get("required").is_some())
}

/// The envelope of one event type: `type` is the constant name, `ts` the
/// shared `ts_ref` schema, the category's required ids required, `data` the
/// type's payload (a `$ref` to [`data_component`] under `refs`).
pub fn event_schema(t: EventType, limits: &Limits, ts_ref: &str, refs: &str) -> Value {
    let data_ref = json!({"$ref": format!("{refs}{}", data_component(t.name))});
    let data = if data_required(t.name) {
        data_ref
    } else {
        json!({"anyOf": [data_ref, {"type": "null"}]})
    };
    let mut required = vec![json!("type"), json!("ts")];
    required.extend(t.category.required_fields().iter().map(|f| json!(f)));
    let mut ids = Map::new();
    for (name, description) in [
        ("id", "Idempotency key; a UUIDv7 is generated when absent"),
        (
            "user_id",
            "The acting user (an end user's own when left out)",
        ),
        ("project_id", "The project"),
        ("document_id", "The document"),
    ] {
        let mut s = id_schema(limits, description);
        if t.category.required_fields().contains(&name) {
            s["type"] = "string".into();
        }
        ids.insert(name.into(), s);
    }
    if data_required(t.name) {
        required.push(json!("data"));
    }
    json!({
        "type": "object",
        "description": format!(
            "A `{}` event{}.", t.name,
            if t.derived { " (derived: the pipeline emits it; a client may send it, see docs/EVENTS.md)" } else { "" }
        ),
        "properties": {
            "id": ids["id"],
            "type": {"type": "string", "const": t.name},
            "ts": {"$ref": ts_ref},
            "user_id": ids["user_id"],
            "project_id": ids["project_id"],
            "document_id": ids["document_id"],
            "data": data,
        },
        "required": required,
        "additionalProperties": false,
    })
}

/// Every component: `Data.<type>` and `Event.<type>` for each known type,
/// in catalogue order.
pub fn components(limits: &Limits, ts_ref: &str, refs: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for t in EventType::all() {
        if let Some(d) = data_schema(t.name) {
            out.push((data_component(t.name), d));
            out.push((
                event_component(t.name),
                event_schema(t, limits, ts_ref, refs),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::decode_value;

    fn decodes(ty: &str, data: Value) -> bool {
        let event = json!({"type": ty, "ts": 1, "user_id": "u1", "project_id": "p1",
                           "document_id": "d1", "data": data});
        decode_value(event, &Limits::default()).is_ok()
    }

    /// Every field's requiredness and nullability, as the schema states it,
    /// is what the decoder does.
    #[test]
    fn the_generated_schemas_agree_with_the_decoder_field_by_field() {
        for (ty, minimal, maximal) in crate::examples() {
            let schema = data_schema(ty).unwrap();
            assert!(decodes(ty, minimal.clone()), "{ty} minimal");
            assert!(decodes(ty, maximal.clone()), "{ty} maximal");
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (name, prop) in schema["properties"].as_object().unwrap() {
                let mut without = maximal.clone();
                without.as_object_mut().unwrap().remove(name);
                assert_eq!(
                    decodes(ty, without),
                    !required.contains(&name.as_str()),
                    "{ty}.{name}: required per the schema = {}",
                    required.contains(&name.as_str())
                );
                let mut null = maximal.clone();
                null[name] = Value::Null;
                let says_null = prop["anyOf"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|s| s["type"] == "null"));
                assert_eq!(decodes(ty, null), says_null, "{ty}.{name} null");
                if prop["minimum"] == 0 {
                    let mut neg = maximal.clone();
                    neg[name] = json!(-1);
                    assert!(!decodes(ty, neg), "{ty}.{name} negative");
                }
            }
            let mut extra = maximal.clone();
            extra["not_a_field"] = json!(1);
            assert!(!decodes(ty, extra), "{ty}: unknown fields are refused");
            assert_eq!(
                data_required(ty),
                !decodes(ty, json!(null)),
                "{ty} data null"
            );
        }
    }

    #[test]
    fn pairs_in_either_order_are_accepted_and_stored_in_order() {
        let event = json!({"id": "e1", "type": "collaboration.cursor_moved", "ts": 1, "user_id": "u1",
                           "document_id": "d1", "data": {"paragraph": 1, "offset": 2, "selection": [9, 3]}});
        let e = decode_value(event.clone(), &Limits::default()).unwrap();
        assert_eq!(
            serde_json::to_value(&e.data).unwrap()["selection"],
            json!([3, 9])
        );
        let fast =
            crate::json::decode_event(event.to_string().as_bytes(), &Limits::default()).unwrap();
        assert_eq!(fast, e);
    }
}
