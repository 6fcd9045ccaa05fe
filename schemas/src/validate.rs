//! Payload validation with errors a developer can act on.
//!
//! The typed structs (deserialized with `serde_path_to_error`) decide what is
//! well-formed; the Avro schema of the type says, in the message, what was
//! expected; and a few rules the types cannot express (counts are
//! non-negative, `[start, end]` pairs are ordered, currencies are ISO 4217
//! codes) are checked here.

use crate::avro::AvroSchemas;
use crate::decode_error::{DecodeError, describe};
use crate::event::EventType;
use crate::payload::Payload;
use apache_avro::Schema;
use serde_json::Value;

/// Fields that count something, by name, across every payload: never negative.
pub(crate) fn non_negative(field: &str) -> bool {
    matches!(
        field,
        "keystrokes"
            | "words"
            | "chars"
            | "deleted_chars"
            | "paragraph"
            | "offset"
            | "inserted"
            | "deleted"
            | "bytes"
            | "events"
            | "total_units"
            | "suppressed_similar"
            | "rating"
    ) || field.ends_with("_ms")
}

/// Decodes and validates the `data` of an event of type `known`.
pub fn payload(known: EventType, data: &Value) -> Result<Payload, DecodeError> {
    if let Value::Object(fields) = data {
        for (name, value) in fields {
            if non_negative(name) && value.as_i64().is_some_and(|n| n < 0) {
                return Err(invalid(
                    &format!("data.{name}"),
                    "non-negative integer",
                    value,
                ));
            }
        }
    }
    let payload = match Payload::from_json_value_tracked(known.name, data) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(explain(known.name, data, &e)),
        None => {
            return Err(DecodeError::new(
                "unknown_type",
                Some("type"),
                format!("no payload schema for {:?}", known.name),
            ));
        }
    };
    let mut payload = payload;
    order_pairs(&mut payload);
    check_rules(&payload)?;
    Ok(payload)
}

/// `[start, end]` pairs given end first (a backward selection) are stored
/// as `[min, max]`.
pub(crate) fn order_pairs(payload: &mut Payload) {
    let order = |v: &mut Option<Vec<i64>>| {
        if let Some(v) = v
            && v.len() == 2
            && v[0] > v[1]
        {
            v.swap(0, 1);
        }
    };
    match payload {
        Payload::CollaborationCursorMoved(c) => {
            order(&mut c.selection);
            order(&mut c.viewport);
        }
        Payload::CollaborationPresenceUpdated(p) => {
            order(&mut p.selection);
            order(&mut p.viewport);
        }
        _ => {}
    }
}

fn invalid(field: &str, expected: &str, got: &Value) -> DecodeError {
    DecodeError::new(
        "invalid_field",
        Some(field),
        format!("expected {expected}, got {}", describe(got)),
    )
}

/// Turns a serde error at a path into the contract's error.
fn explain(
    type_name: &str,
    data: &Value,
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> DecodeError {
    let message = e.inner().to_string();
    let path = e.path().to_string();
    let schema = AvroSchemas::shared().ok();
    let expected_of = |field: &str| {
        schema
            .and_then(|s| expected_for_field(s, type_name, field))
            .unwrap_or_else(|| "a valid value".into())
    };
    if let Some(field) = between(&message, "missing field `", "`") {
        return DecodeError::new(
            "missing_field",
            Some(&format!("data.{field}")),
            format!(
                "required field is missing (expected {})",
                expected_of(field)
            ),
        );
    }
    if let Some(field) = between(&message, "unknown field `", "`") {
        let known = schema
            .and_then(|s| s.payload_schema(type_name))
            .map(|r| match r {
                Schema::Record(r) => r
                    .fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            })
            .unwrap_or_default();
        return DecodeError::new(
            "unknown_field",
            Some(&format!("data.{field}")),
            format!("not a field of {type_name} (its fields: {known})"),
        );
    }
    // A wrong type or value at `path` (`words`, `selection[1]`, `mode`).
    let top = path.split(['.', '[']).next().unwrap_or("");
    let got = lookup(data, &path).unwrap_or(&Value::Null);
    let expected = if path.contains('[') {
        element_expectation(schema, type_name, top)
    } else {
        expected_of(top)
    };
    DecodeError::new(
        "invalid_field",
        Some(&format!("data.{path}")),
        format!("expected {expected}, got {}", describe(got)),
    )
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// The JSON value at a serde_path_to_error path (`a.b[2]`).
fn lookup<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = data;
    for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for idx in indexes.split('[').filter(|s| !s.is_empty()) {
            cur = cur.get(idx.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

fn field_schema<'a>(schemas: &'a AvroSchemas, type_name: &str, field: &str) -> Option<&'a Schema> {
    match schemas.payload_schema(type_name)? {
        Schema::Record(r) => r.fields.iter().find(|f| f.name == field).map(|f| &f.schema),
        _ => None,
    }
}

fn expected_for_field(schemas: &AvroSchemas, type_name: &str, field: &str) -> Option<String> {
    let schema = field_schema(schemas, type_name, field)?;
    Some(expectation(schemas, schema, non_negative(field)))
}

fn element_expectation(schemas: Option<&AvroSchemas>, type_name: &str, field: &str) -> String {
    let item = schemas.and_then(|s| {
        let mut schema = field_schema(s, type_name, field)?;
        if let Schema::Union(u) = schema {
            schema = u.variants().iter().find(|v| !matches!(v, Schema::Null))?;
        }
        match schema {
            Schema::Array(a) => Some(expectation(s, &a.items, pair_field(field))),
            _ => None,
        }
    });
    item.unwrap_or_else(|| "a valid value".into())
}

fn pair_field(field: &str) -> bool {
    matches!(field, "selection" | "viewport")
}

/// A human description of what a schema accepts.
fn expectation(schemas: &AvroSchemas, schema: &Schema, non_negative: bool) -> String {
    match schema {
        Schema::Int | Schema::Long if non_negative => "non-negative integer".into(),
        Schema::Int | Schema::Long => "integer".into(),
        Schema::TimestampMillis => "integer milliseconds since the Unix epoch".into(),
        Schema::Float | Schema::Double => "number".into(),
        Schema::String => "string".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Null => "null".into(),
        Schema::Enum(e) => format!(
            "one of {}",
            e.symbols
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Schema::Array(a) => format!("array of {}", expectation(schemas, &a.items, non_negative)),
        Schema::Record(_) => "object".into(),
        Schema::Ref { name } => schemas
            .named(name)
            .map(|s| expectation(schemas, s, non_negative))
            .unwrap_or_else(|| name.to_string()),
        Schema::Union(u) => {
            let parts: Vec<String> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .map(|v| expectation(schemas, v, non_negative))
                .collect();
            let nullable = u.variants().iter().any(|v| matches!(v, Schema::Null));
            format!(
                "{}{}",
                parts.join(" or "),
                if nullable { " or null" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// Rules the types cannot express.
fn check_rules(payload: &Payload) -> Result<(), DecodeError> {
    let pair = |field: &str, v: &Option<Vec<i64>>| -> Result<(), DecodeError> {
        if let Some(v) = v
            && (v.len() != 2 || v[0] < 0 || v[1] < v[0])
        {
            return Err(DecodeError::new(
                "invalid_field",
                Some(&format!("data.{field}")),
                format!(
                    "expected [start, end] of two non-negative integers, got {}",
                    serde_json::to_string(v).unwrap_or_default()
                ),
            ));
        }
        Ok(())
    };
    match payload {
        Payload::CollaborationCursorMoved(c) => {
            pair("selection", &c.selection)?;
            pair("viewport", &c.viewport)?;
        }
        Payload::CollaborationPresenceUpdated(p) => {
            pair("selection", &p.selection)?;
            pair("viewport", &p.viewport)?;
        }
        Payload::PublishingSalesUpdated(s)
            if !(s.currency.len() == 3 && s.currency.bytes().all(|b| b.is_ascii_uppercase())) =>
        {
            return Err(DecodeError::new(
                "invalid_field",
                Some("data.currency"),
                format!(
                    "expected an ISO 4217 code such as \"EUR\", got {:?}",
                    s.currency
                ),
            ));
        }
        Payload::AnalyticsMetricUpdated(m) if !m.value.is_finite() => {
            return Err(DecodeError::new(
                "invalid_field",
                Some("data.value"),
                "expected a finite number",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Whether a decoded payload satisfies every rule the types cannot express
/// (the fast path's check; the slow path reports which rule failed).
pub(crate) fn passes_rules(payload: &Payload) -> bool {
    use serde::Serialize;
    let mut probe = NegativeProbe { found: false };
    // Serializing into the probe cannot fail for plain payload structs.
    let _ = payload.serialize(&mut probe);
    !probe.found && check_rules(payload).is_ok()
}

/// Walks a payload's top-level fields and notes a negative value in a field
/// that counts something.
struct NegativeProbe {
    found: bool,
}

/// Reads an integer out of a field value (through an `Option`).
struct IntProbe;

#[derive(Debug)]
struct ProbeError;

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an integer")
    }
}

impl std::error::Error for ProbeError {}

impl serde::ser::Error for ProbeError {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        ProbeError
    }
}

macro_rules! not_an_int {
    ($($name:ident($($arg:ty),*)),*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<Option<i64>, ProbeError> { Ok(None) })*
    };
}

impl serde::Serializer for IntProbe {
    type Ok = Option<i64>;
    type Error = ProbeError;
    type SerializeSeq = serde::ser::Impossible<Option<i64>, ProbeError>;
    type SerializeTuple = serde::ser::Impossible<Option<i64>, ProbeError>;
    type SerializeTupleStruct = serde::ser::Impossible<Option<i64>, ProbeError>;
    type SerializeTupleVariant = serde::ser::Impossible<Option<i64>, ProbeError>;
    type SerializeMap = serde::ser::Impossible<Option<i64>, ProbeError>;
    type SerializeStruct = serde::ser::Impossible<Option<i64>, ProbeError>;
    type SerializeStructVariant = serde::ser::Impossible<Option<i64>, ProbeError>;
    fn serialize_i64(self, v: i64) -> Result<Option<i64>, ProbeError> {
        Ok(Some(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Option<i64>, ProbeError> {
        Ok(Some(v.into()))
    }
    fn serialize_some<T: ?Sized + serde::Serialize>(
        self,
        v: &T,
    ) -> Result<Option<i64>, ProbeError> {
        v.serialize(self)
    }
    not_an_int!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str)
    );
    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Option<i64>, ProbeError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Option<i64>, ProbeError> {
        Ok(None)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ProbeError> {
        Err(ProbeError)
    }
}

impl serde::ser::SerializeStruct for &mut NegativeProbe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: ?Sized + serde::Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ProbeError> {
        if non_negative(key)
            && value
                .serialize(IntProbe)
                .ok()
                .flatten()
                .is_some_and(|v| v < 0)
        {
            self.found = true;
        }
        Ok(())
    }
    fn end(self) -> Result<(), ProbeError> {
        Ok(())
    }
}

impl serde::Serializer for &mut NegativeProbe {
    type Ok = ();
    type Error = ProbeError;
    type SerializeSeq = serde::ser::Impossible<(), ProbeError>;
    type SerializeTuple = serde::ser::Impossible<(), ProbeError>;
    type SerializeTupleStruct = serde::ser::Impossible<(), ProbeError>;
    type SerializeTupleVariant = serde::ser::Impossible<(), ProbeError>;
    type SerializeMap = serde::ser::Impossible<(), ProbeError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = serde::ser::Impossible<(), ProbeError>;
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, ProbeError> {
        Ok(self)
    }
    fn serialize_bool(self, _: bool) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_i8(self, _: i8) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_i16(self, _: i16) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_i32(self, _: i32) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_i64(self, _: i64) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_u8(self, _: u8) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_u16(self, _: u16) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_u32(self, _: u32) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_u64(self, _: u64) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_f32(self, _: f32) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_f64(self, _: f64) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_char(self, _: char) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_str(self, _: &str) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_none(self) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_some<T: ?Sized + serde::Serialize>(self, _: &T) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_unit(self) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), ProbeError> {
        Err(ProbeError)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ProbeError> {
        Err(ProbeError)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ProbeError> {
        Err(ProbeError)
    }
}
