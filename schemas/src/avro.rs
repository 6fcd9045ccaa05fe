//! The Avro encoding of the event envelope.
//!
//! - [`AvroSchemas`]: the `.avsc` files of `schemas/avro/` (embedded at build time), parsed;
//!   [`AvroSchemas::encode`] and [`AvroSchemas::decode`] turn an [`AvroEnvelope`] into raw
//!   Avro binary and back. The envelope's `data` is a union of every payload record in
//!   [`TYPES`] order.
//!
//! The tests here also hold the payload structs of [`crate::payload`] to the schema files.

use crate::event::Event;
use crate::payload::{AVRO_NAMES, AVRO_PAYLOAD_SOURCES, Payload, TYPES};
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use std::collections::HashMap;

/// The shared Avro types, as (path relative to `schemas/avro/`, text), in parse order.
pub const AVRO_COMMON_SOURCES: &[(&str, &str)] = &[
    (
        "common/text_source.avsc",
        include_str!("../avro/common/text_source.avsc"),
    ),
    (
        "common/session_state.avsc",
        include_str!("../avro/common/session_state.avsc"),
    ),
    (
        "common/edit_mode.avsc",
        include_str!("../avro/common/edit_mode.avsc"),
    ),
    (
        "common/conflict_severity.avsc",
        include_str!("../avro/common/conflict_severity.avsc"),
    ),
    (
        "common/conflict_kind.avsc",
        include_str!("../avro/common/conflict_kind.avsc"),
    ),
    (
        "common/presence_status.avsc",
        include_str!("../avro/common/presence_status.avsc"),
    ),
    (
        "common/direction.avsc",
        include_str!("../avro/common/direction.avsc"),
    ),
    (
        "common/priority.avsc",
        include_str!("../avro/common/priority.avsc"),
    ),
    (
        "common/severity.avsc",
        include_str!("../avro/common/severity.avsc"),
    ),
    (
        "common/dimension.avsc",
        include_str!("../avro/common/dimension.avsc"),
    ),
];

/// The envelope schema `inkstream.Event`, as (path relative to `schemas/avro/`, text).
pub const AVRO_ENVELOPE_SOURCE: (&str, &str) =
    ("envelope.avsc", include_str!("../avro/envelope.avsc"));

/// Every embedded schema, as (path relative to `schemas/avro/`, text), in the order they must
/// be parsed: shared types, payloads ([`TYPES`] order), envelope last.
pub fn avro_sources() -> impl Iterator<Item = (&'static str, &'static str)> {
    AVRO_COMMON_SOURCES
        .iter()
        .chain(AVRO_PAYLOAD_SOURCES)
        .copied()
        .chain(std::iter::once(AVRO_ENVELOPE_SOURCE))
}

/// Why an event could not be encoded to or decoded from Avro.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    /// The Avro library rejected a schema, a value or the bytes.
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    /// The event type is not a branch of the envelope's `data` union.
    #[error("event type {0:?} is not in the Avro envelope's data union")]
    UnknownType(String),
    /// The schemas or the value do not have the shape of the envelope.
    #[error("not an inkstream Avro event: {0}")]
    Malformed(String),
}

/// The Rust side of the Avro record `inkstream.Event` is [`Event`] itself. The
/// record's `type` field is not stored apart: it is always `data.type_name()`
/// (decoding checks that the two agree).
pub type AvroEnvelope = Event;

/// Bytes that do not decode came from whoever wrote them (the log, a topic);
/// encoding cannot fail for a valid [`Event`] with the embedded schemas.
impl crate::fault::Classify for AvroError {
    fn fault(&self) -> crate::fault::Fault {
        crate::fault::Fault::Caller
    }
}

/// A parsed set of Avro schemas: shared types, payload records and the envelope.
///
/// Parse once ([`AvroSchemas::embedded`]) and reuse: parsing resolves every named type.
#[derive(Debug, Clone)]
pub struct AvroSchemas {
    /// The parsed schemas, in parse order; the envelope is last.
    schemata: Vec<Schema>,
    /// The envelope record, `inkstream.Event` (a copy of the last schema).
    envelope: Schema,
    /// Every named type by full name (for resolving references).
    names: HashMap<Name, Schema>,
    /// For each entry of [`TYPES`]: its branch in the envelope's `data` union and its record
    /// schema, when the envelope has that type.
    payloads: Vec<Option<(u32, Schema)>>,
    /// For each branch of the `data` union: the index in [`TYPES`] of its type, when known.
    branch_types: Vec<Option<usize>>,
}

impl AvroSchemas {
    /// The schemas embedded in this crate (the `.avsc` files of `schemas/avro/`).
    pub fn embedded() -> Result<AvroSchemas, AvroError> {
        AvroSchemas::parse(avro_sources().map(|(_, text)| text))
    }

    /// Parses schema texts: named types before the schemas that use them, and the envelope
    /// record `inkstream.Event` last (see [`avro_sources`]).
    pub fn parse<I, S>(sources: I) -> Result<AvroSchemas, AvroError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let schemata = Schema::parse_list(sources)?;
        let names: HashMap<Name, Schema> =
            ResolvedSchema::new_with_schemata(schemata.iter().collect())?
                .get_names()
                .iter()
                .map(|(name, schema)| (name.clone(), (*schema).clone()))
                .collect();

        let (envelope, record) = match schemata.last() {
            Some(schema @ Schema::Record(record))
                if record.name.fullname(None) == "inkstream.Event" =>
            {
                (schema.clone(), record)
            }
            _ => {
                return Err(AvroError::Malformed(
                    "the last schema must be the envelope record inkstream.Event".into(),
                ));
            }
        };
        let union = match record.fields.iter().find(|f| f.name == "data") {
            Some(field) => match &field.schema {
                Schema::Union(union) => union,
                _ => {
                    return Err(AvroError::Malformed(
                        "the envelope's data field must be a union of records".into(),
                    ));
                }
            },
            None => {
                return Err(AvroError::Malformed(
                    "the envelope has no data field".into(),
                ));
            }
        };
        let branch_names: Vec<Option<String>> = union
            .variants()
            .iter()
            .map(|s| s.name().map(|n| n.fullname(None)))
            .collect();
        let branch_types = branch_names
            .iter()
            .map(|name| {
                name.as_deref()
                    .and_then(|name| AVRO_NAMES.iter().position(|n| *n == name))
            })
            .collect();
        let mut payloads = Vec::with_capacity(TYPES.len());
        for avro_name in AVRO_NAMES {
            let branch = branch_names
                .iter()
                .position(|name| name.as_deref() == Some(avro_name));
            let entry = match branch {
                None => None,
                Some(branch) => {
                    let schema = names.get(&Name::new(*avro_name)?).cloned().ok_or_else(|| {
                        AvroError::Malformed(format!("no schema for the record {avro_name}"))
                    })?;
                    let branch = u32::try_from(branch)
                        .map_err(|_| AvroError::Malformed("the data union is too large".into()))?;
                    Some((branch, schema))
                }
            };
            payloads.push(entry);
        }
        Ok(AvroSchemas {
            envelope,
            schemata,
            names,
            payloads,
            branch_types,
        })
    }

    /// The envelope schema, `inkstream.Event`.
    pub fn envelope(&self) -> &Schema {
        &self.envelope
    }

    /// Every parsed schema, in parse order (the envelope last): what an Avro library needs to
    /// resolve the envelope's references.
    pub fn schemata(&self) -> &[Schema] {
        &self.schemata
    }

    /// The payload record schema of an event type, if the envelope has that type.
    pub fn payload_schema(&self, type_name: &str) -> Option<&Schema> {
        let index = TYPES.iter().position(|t| *t == type_name)?;
        self.payloads.get(index)?.as_ref().map(|(_, schema)| schema)
    }

    /// A named type (shared enum or record) by its full name.
    pub fn named(&self, name: &Name) -> Option<&Schema> {
        self.names.get(name)
    }

    /// The schemas embedded in this build, parsed once per process.
    pub fn shared() -> Result<&'static AvroSchemas, AvroError> {
        static SHARED: std::sync::OnceLock<Result<AvroSchemas, AvroError>> =
            std::sync::OnceLock::new();
        SHARED
            .get_or_init(AvroSchemas::embedded)
            .as_ref()
            .map_err(|e| AvroError::Malformed(format!("embedded schemas: {e}")))
    }

    /// Encodes an event as a raw Avro datum of the envelope schema (no container header, no
    /// schema fingerprint: the reader must know the schema).
    pub fn encode(&self, event: &AvroEnvelope) -> Result<Vec<u8>, AvroError> {
        let value = to_avro_value(self, event)?;
        let writer = GenericDatumWriter::builder(self.envelope())
            .schemata(self.schemata.iter().collect())?
            .build()?;
        Ok(writer.write_value_to_vec(value)?)
    }

    /// Decodes a raw Avro datum written with this envelope schema. Trailing bytes are an error.
    pub fn decode(&self, bytes: &[u8]) -> Result<AvroEnvelope, AvroError> {
        decode_envelope(self, None, &self.read_value(bytes)?)
    }

    /// Decodes a raw Avro datum written with another version of the schemas (`writer`, e.g. the
    /// last release), resolving its payload to these schemas (Avro schema resolution: fields
    /// the writer did not have take their default, fields it had that are gone are dropped).
    ///
    /// Use this rather than an apache-avro reader schema: apache-avro resolves the `data`
    /// union by shape, and several payload records have the same shape.
    pub fn decode_written_with(
        &self,
        writer: &AvroSchemas,
        bytes: &[u8],
    ) -> Result<AvroEnvelope, AvroError> {
        decode_envelope(writer, Some(self), &writer.read_value(bytes)?)
    }

    /// Reads one raw datum of this envelope schema; trailing bytes are an error.
    fn read_value(&self, bytes: &[u8]) -> Result<AvroValue, AvroError> {
        let reader = GenericDatumReader::builder(self.envelope())
            .writer_schemata(self.schemata.iter().collect())?
            .build()?;
        let mut rest = bytes;
        let value = reader.read_value(&mut rest)?;
        if !rest.is_empty() {
            return Err(AvroError::Malformed(format!(
                "{} trailing bytes after the event",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// The Avro value of an event, resolved against `schemas`' envelope and ready to write (e.g.
/// with `apache_avro::writer::datum::GenericDatumWriter` or an Avro container `Writer`).
///
/// Optional payload fields that are `None` take their schema default; the `data` union
/// branch is chosen by type name (never by shape: several payloads have the same fields).
pub fn to_avro_value(schemas: &AvroSchemas, event: &AvroEnvelope) -> Result<AvroValue, AvroError> {
    let type_name = event.data.type_name();
    let (branch, record) = TYPES
        .iter()
        .position(|t| *t == type_name)
        .and_then(|index| schemas.payloads.get(index))
        .and_then(Option::as_ref)
        .ok_or_else(|| AvroError::UnknownType(type_name.to_owned()))?;
    let data = apache_avro::to_value(&event.data)?.resolve_with_names(record, &schemas.names)?;
    let optional = |value: &Option<crate::Text>| match value {
        Some(s) => AvroValue::Union(1, Box::new(AvroValue::String(s.to_string()))),
        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
    };
    Ok(AvroValue::Record(vec![
        ("id".into(), AvroValue::String(event.id.to_string())),
        ("type".into(), AvroValue::String(type_name.to_owned())),
        ("ts".into(), AvroValue::TimestampMillis(event.ts)),
        ("user_id".into(), optional(&event.user_id)),
        ("project_id".into(), optional(&event.project_id)),
        ("document_id".into(), optional(&event.document_id)),
        ("data".into(), AvroValue::Union(*branch, Box::new(data))),
    ]))
}

/// The event held by an Avro value decoded with `schemas`' envelope (the inverse of
/// [`to_avro_value`]). Fields unknown to this version of the envelope are ignored.
pub fn from_avro_value(
    schemas: &AvroSchemas,
    value: &AvroValue,
) -> Result<AvroEnvelope, AvroError> {
    decode_envelope(schemas, None, value)
}

/// [`from_avro_value`] for a value read with the `writer` schemas, its payload resolved to the
/// `reader` schemas when given.
fn decode_envelope(
    writer: &AvroSchemas,
    reader: Option<&AvroSchemas>,
    value: &AvroValue,
) -> Result<AvroEnvelope, AvroError> {
    let AvroValue::Record(fields) = value else {
        return Err(AvroError::Malformed("expected a record".into()));
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| unwrap_union(v))
            .ok_or_else(|| AvroError::Malformed(format!("missing field {name}")))
    };
    let string = |name: &str| match field(name)? {
        AvroValue::String(s) => Ok(s.clone()),
        other => Err(AvroError::Malformed(format!(
            "field {name}: expected a string, got {other:?}"
        ))),
    };
    let optional = |name: &str| match field(name)? {
        AvroValue::Null => Ok(None),
        AvroValue::String(s) => Ok(Some(s.clone())),
        other => Err(AvroError::Malformed(format!(
            "field {name}: expected null or a string, got {other:?}"
        ))),
    };
    let ts = match field("ts")? {
        AvroValue::TimestampMillis(ms) | AvroValue::Long(ms) => *ms,
        other => {
            return Err(AvroError::Malformed(format!(
                "field ts: expected timestamp-millis, got {other:?}"
            )));
        }
    };
    let type_field = string("type")?;
    let data = fields
        .iter()
        .find(|(n, _)| n == "data")
        .map(|(_, v)| v)
        .ok_or_else(|| AvroError::Malformed("missing field data".into()))?;
    let AvroValue::Union(branch, record) = data else {
        return Err(AvroError::Malformed("field data: expected a union".into()));
    };
    let type_name = usize::try_from(*branch)
        .ok()
        .and_then(|b| writer.branch_types.get(b).copied().flatten())
        .and_then(|index| TYPES.get(index).copied())
        .ok_or_else(|| AvroError::UnknownType(type_field.clone()))?;
    if type_field != type_name {
        return Err(AvroError::Malformed(format!(
            "type is {type_field:?} but data holds a {type_name} payload"
        )));
    }
    let unknown = || AvroError::UnknownType(type_name.to_owned());
    let data = match reader {
        None => Payload::from_avro_record(type_name, record).ok_or_else(unknown)??,
        Some(reader) => {
            let schema = reader.payload_schema(type_name).ok_or_else(unknown)?;
            let record = (**record)
                .clone()
                .resolve_with_names(schema, &reader.names)?;
            Payload::from_avro_record(type_name, &record).ok_or_else(unknown)??
        }
    };
    Ok(AvroEnvelope {
        id: string("id")?.into(),
        ts,
        user_id: optional("user_id")?.map(Into::into),
        project_id: optional("project_id")?.map(Into::into),
        document_id: optional("document_id")?.map(Into::into),
        data,
    })
}

fn unwrap_union(value: &AvroValue) -> &AvroValue {
    match value {
        AvroValue::Union(_, inner) => inner,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples::examples;
    use serde_json::Value as Json;
    use serde_json::json;
    use std::path::{Path, PathBuf};

    const CATEGORIES: [&str; 6] = [
        "writing",
        "collaboration",
        "publishing",
        "analytics",
        "automation",
        "system",
    ];

    fn avro_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("avro")
    }

    fn avsc_files_in(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
            .collect();
        files.sort();
        files
    }

    /// Every `.avsc` under `schemas/avro/` except `previous/`, as (relative path, text), in
    /// parse order: common first, then the category directories, the envelope last.
    fn disk_sources() -> Vec<(String, String)> {
        let root = avro_dir();
        let mut dirs: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_type().unwrap().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "previous")
            .collect();
        dirs.sort_by_key(|d| (d != "common", d.clone()));
        let mut files: Vec<PathBuf> = dirs
            .iter()
            .flat_map(|d| avsc_files_in(&root.join(d)))
            .collect();
        let top = avsc_files_in(&root);
        assert_eq!(
            top,
            vec![root.join("envelope.avsc")],
            "the only top-level schema is the envelope"
        );
        files.extend(top);
        files
            .into_iter()
            .map(|path| {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (rel, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    }

    fn schema_json(type_name: &str) -> Json {
        let index = TYPES.iter().position(|t| *t == type_name).unwrap();
        serde_json::from_str(AVRO_PAYLOAD_SOURCES[index].1).unwrap()
    }

    fn fields(schema: &Json) -> &Vec<Json> {
        schema["fields"].as_array().unwrap()
    }

    fn envelope(data: Payload, full: bool) -> AvroEnvelope {
        AvroEnvelope {
            id: format!("e-{}", data.type_name()).into(),
            ts: 1_767_603_600_123,
            user_id: full.then(|| "u1".to_owned()).map(Into::into),
            project_id: full.then(|| "p1".to_owned()).map(Into::into),
            document_id: full.then(|| "d1".to_owned()).map(Into::into),
            data,
        }
    }

    #[test]
    fn every_avsc_parses_together() {
        let sources = disk_sources();
        assert!(sources[0].0.starts_with("common/"));
        assert_eq!(sources.last().unwrap().0, "envelope.avsc");
        let parsed = Schema::parse_list(sources.iter().map(|(_, text)| text)).unwrap();
        assert_eq!(parsed.len(), sources.len());
        AvroSchemas::parse(sources.iter().map(|(_, text)| text)).unwrap();
    }

    #[test]
    fn the_embedded_schemas_are_the_files_on_disk() {
        let mut disk = disk_sources();
        let mut embedded: Vec<(String, String)> = avro_sources()
            .map(|(path, text)| (path.to_owned(), text.to_owned()))
            .collect();
        disk.sort();
        embedded.sort();
        let names = |v: &[(String, String)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&embedded), names(&disk));
        assert_eq!(embedded, disk);
        AvroSchemas::embedded().unwrap();
    }

    #[test]
    fn every_type_has_a_file_a_variant_and_a_union_branch() {
        let examples = examples();
        assert_eq!(
            examples.iter().map(|(t, _, _)| *t).collect::<Vec<_>>(),
            TYPES,
            "one example per type, in TYPES order"
        );
        for (type_name, _, maximal) in &examples {
            let (category, name) = type_name.split_once('.').unwrap();
            assert!(CATEGORIES.contains(&category), "{type_name}");
            let path = avro_dir().join(category).join(format!("{name}.avsc"));
            let schema: Json =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let full_name = format!(
                "{}.{}",
                schema["namespace"].as_str().unwrap(),
                schema["name"].as_str().unwrap()
            );
            assert_eq!(schema["namespace"], format!("inkstream.{category}"));
            assert_eq!(
                Payload::avro_record_name(type_name),
                Some(full_name.as_str())
            );
            let payload = Payload::from_json(type_name, &maximal.to_string())
                .unwrap()
                .unwrap();
            assert_eq!(payload.type_name(), *type_name);
        }
        // No payload file without a type.
        let payload_files = CATEGORIES
            .iter()
            .map(|c| avsc_files_in(&avro_dir().join(c)).len())
            .sum::<usize>();
        assert_eq!(payload_files, TYPES.len());

        // The envelope's data union is exactly the payload records, in TYPES order.
        let envelope: Json = serde_json::from_str(AVRO_ENVELOPE_SOURCE.1).unwrap();
        let data = fields(&envelope)
            .iter()
            .find(|f| f["name"] == "data")
            .unwrap();
        let union: Vec<&str> = data["type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let expected: Vec<&str> = TYPES
            .iter()
            .map(|t| Payload::avro_record_name(t).unwrap())
            .collect();
        assert_eq!(union, expected);
        let schemas = AvroSchemas::embedded().unwrap();
        for t in TYPES {
            assert!(schemas.payload_schema(t).is_some(), "{t}");
        }
    }

    #[test]
    fn types_follow_the_catalogue_order() {
        // Every catalogue type has a payload, and in the same relative order.
        let mut rest = TYPES.iter();
        for t in crate::event::EventType::all() {
            assert!(
                rest.any(|p| *p == t.name),
                "{} is missing from TYPES or out of catalogue order",
                t.name
            );
        }
    }

    #[test]
    fn schemas_follow_the_conventions() {
        let snake = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        for (path, text) in avro_sources() {
            let schema: Json = serde_json::from_str(text).unwrap();
            let doc = schema["doc"].as_str().unwrap_or_default();
            assert!(!doc.is_empty(), "{path}: missing doc");
            let Some(fields) = schema["fields"].as_array() else {
                continue;
            };
            for field in fields {
                let name = field["name"].as_str().unwrap();
                assert!(snake(name), "{path}: field {name} is not snake_case");
                let doc = field["doc"].as_str().unwrap_or_default();
                assert!(!doc.is_empty(), "{path}: field {name} has no doc");
                if let Some(union) = field["type"].as_array()
                    && union[0] == "null"
                {
                    assert_eq!(union.len(), 2, "{path}: {name}");
                    assert_eq!(field.get("default"), Some(&Json::Null), "{path}: {name}");
                }
                if name.ends_with("_ms") {
                    let t = &field["type"];
                    assert!(
                        *t == "long" || *t == json!(["null", "long"]),
                        "{path}: {name} is a duration and must be a long"
                    );
                }
            }
        }
    }

    /// `minimal` with every field that has a non-null Avro default set to that default.
    fn with_defaults(type_name: &str, minimal: &Json) -> Json {
        let mut out = minimal.as_object().unwrap().clone();
        for field in fields(&schema_json(type_name)) {
            let name = field["name"].as_str().unwrap();
            match field.get("default") {
                Some(Json::Null) | None => {}
                Some(default) => {
                    out.entry(name).or_insert_with(|| default.clone());
                }
            }
        }
        Json::Object(out)
    }

    #[test]
    fn examples_cover_the_required_and_all_fields() {
        for (type_name, minimal, maximal) in examples() {
            let schema = schema_json(type_name);
            let all: Vec<&str> = fields(&schema)
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            let required: Vec<&str> = fields(&schema)
                .iter()
                .filter(|f| f.get("default").is_none())
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            let keys = |v: &Json| {
                let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
                k.sort();
                k
            };
            let sorted = |v: &[&str]| {
                let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
                v.sort();
                v
            };
            assert_eq!(keys(&minimal), sorted(&required), "{type_name}: minimal");
            assert_eq!(keys(&maximal), sorted(&all), "{type_name}: maximal");
        }
    }

    #[test]
    fn examples_round_trip_through_json() {
        for (type_name, minimal, maximal) in examples() {
            let min = Payload::from_json(type_name, &minimal.to_string())
                .unwrap()
                .unwrap();
            // Defaults are written out, and they are the Avro defaults.
            assert_eq!(
                min.to_json_value(),
                with_defaults(type_name, &minimal),
                "{type_name}"
            );
            let max = Payload::from_json_value(type_name, maximal.clone())
                .unwrap()
                .unwrap();
            assert_eq!(max.to_json_value(), maximal, "{type_name}");
            assert_eq!(serde_json::to_value(&max).unwrap(), maximal, "{type_name}");
        }
    }

    #[test]
    fn examples_round_trip_through_avro() {
        let schemas = AvroSchemas::embedded().unwrap();
        for (type_name, minimal, maximal) in examples() {
            for (example, full) in [(minimal, false), (maximal, true)] {
                let payload = Payload::from_json_value(type_name, example)
                    .unwrap()
                    .unwrap();
                let event = envelope(payload, full);
                let bytes = schemas.encode(&event).unwrap();
                assert_eq!(schemas.decode(&bytes).unwrap(), event, "{type_name}");
                // The value-level helpers agree with the byte-level ones.
                let value = to_avro_value(&schemas, &event).unwrap();
                assert_eq!(from_avro_value(&schemas, &value).unwrap(), event);
            }
        }
    }

    #[test]
    fn the_union_branch_is_chosen_by_type_not_by_shape() {
        // session_started, session_paused and session_resumed have the same fields.
        let schemas = AvroSchemas::embedded().unwrap();
        for t in [
            "writing.session_started",
            "writing.session_paused",
            "writing.session_resumed",
        ] {
            let payload = Payload::from_json(t, "{}").unwrap().unwrap();
            let event = envelope(payload, true);
            let decoded = schemas.decode(&schemas.encode(&event).unwrap()).unwrap();
            assert_eq!(decoded.event_type(), t);
        }
    }

    #[test]
    fn unknown_types_fields_and_symbols_are_rejected() {
        assert!(Payload::from_json("writing.keystrok", "{}").is_none());
        assert!(Payload::avro_record_name("writing.keystrok").is_none());
        let extra = r#"{"keystrokes":1,"words":1,"chars":1,"wordz":1}"#;
        assert!(
            Payload::from_json("writing.keystroke", extra)
                .unwrap()
                .is_err()
        );
        let bad_symbol = r#"{"keystrokes":1,"words":1,"chars":1,"source":"PASTE"}"#;
        assert!(
            Payload::from_json("writing.keystroke", bad_symbol)
                .unwrap()
                .is_err()
        );
        let missing = r#"{"keystrokes":1,"words":1}"#;
        assert!(
            Payload::from_json("writing.keystroke", missing)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn avro_decoding_checks_the_type_and_the_length() {
        let schemas = AvroSchemas::embedded().unwrap();
        let payload = Payload::from_json("writing.word_added", "{}")
            .unwrap()
            .unwrap();
        let event = envelope(payload, false);

        let mut value = to_avro_value(&schemas, &event).unwrap();
        if let AvroValue::Record(fields) = &mut value {
            fields[1].1 = AvroValue::String("writing.keystroke".into());
        }
        let err = from_avro_value(&schemas, &value).unwrap_err();
        assert!(err.to_string().contains("writing.word_added"), "{err}");

        let mut bytes = schemas.encode(&event).unwrap();
        bytes.push(0);
        assert!(matches!(
            schemas.decode(&bytes),
            Err(AvroError::Malformed(_))
        ));
        bytes.truncate(bytes.len() - 3);
        assert!(schemas.decode(&bytes).is_err());
    }

    #[test]
    fn data_written_with_an_older_schema_version_is_resolved_by_type() {
        // An "older release": keystroke without deleted_chars and source but with a field
        // since removed, and no alert_triggered/notification types (so later branches of the
        // data union have other indexes).
        let dropped = ["analytics.alert_triggered", "system.notification"];
        let mut sources: Vec<String> = Vec::new();
        for (path, text) in avro_sources() {
            let mut schema: Json = serde_json::from_str(text).unwrap();
            if path == "writing/keystroke.avsc" {
                let fields = schema["fields"].as_array_mut().unwrap();
                fields.retain(|f| f["name"] != "deleted_chars" && f["name"] != "source");
                fields.push(json!({"name": "legacy", "type": "long", "default": 0, "doc": "x"}));
            }
            if path == AVRO_ENVELOPE_SOURCE.0 {
                let data = schema["fields"].as_array_mut().unwrap().last_mut().unwrap();
                let union = data["type"].as_array_mut().unwrap();
                union.retain(|b| {
                    !dropped
                        .iter()
                        .any(|t| b.as_str() == Payload::avro_record_name(t))
                });
            }
            let dropped_file = dropped
                .iter()
                .any(|t| path == format!("{}.avsc", t.replace('.', "/")));
            if !dropped_file {
                sources.push(schema.to_string());
            }
        }
        let old = AvroSchemas::parse(&sources).unwrap();
        let new = AvroSchemas::embedded().unwrap();

        let payload = |t: &str, json: Json| Payload::from_json_value(t, json).unwrap().unwrap();
        let keystroke =
            json!({"keystrokes": 3, "words": 1, "chars": 4, "deleted_chars": 2, "source": "ai"});
        let cases = [
            (
                payload("writing.keystroke", keystroke),
                payload(
                    "writing.keystroke",
                    json!({"keystrokes": 3, "words": 1, "chars": 4}),
                ),
            ),
            (
                payload("writing.session_paused", json!({"reason": "manual"})),
                payload("writing.session_paused", json!({"reason": "manual"})),
            ),
            (
                payload(
                    "system.dead_letter",
                    json!({"reason": "late", "detail": "{}"}),
                ),
                payload(
                    "system.dead_letter",
                    json!({"reason": "late", "detail": "{}"}),
                ),
            ),
        ];
        for (written, read) in cases {
            let bytes = old.encode(&envelope(written, true)).unwrap();
            let decoded = new.decode_written_with(&old, &bytes).unwrap();
            assert_eq!(decoded, envelope(read, true));
        }
        let alert = examples()
            .into_iter()
            .find(|(t, _, _)| *t == dropped[0])
            .unwrap();
        let alert = envelope(payload(alert.0, alert.1), true);
        assert!(matches!(old.encode(&alert), Err(AvroError::UnknownType(_))));
    }

    /// The decoded form of an event as fastavro returns it: every field present (`null` for
    /// absent optional fields), `ts` in ms.
    fn expected_decoded(event: &AvroEnvelope) -> Json {
        let mut data = event.data.to_json_value().as_object().unwrap().clone();
        for field in fields(&schema_json(event.event_type())) {
            data.entry(field["name"].as_str().unwrap())
                .or_insert(Json::Null);
        }
        json!({
            "id": event.id,
            "type": event.event_type(),
            "ts": event.ts,
            "user_id": event.user_id,
            "project_id": event.project_id,
            "document_id": event.document_id,
            "data": data,
        })
    }

    /// Writes every example as `<type>.avro.bin` (maximal) and `<type>.minimal.avro.bin`, each
    /// with its expected decoded JSON (`.json`), for `schemas/tests/check_schemas.py`.
    #[test]
    fn fastavro_an_independent_implementation_reads_our_schemas_and_bytes() {
        // Needs Python with fastavro (tests/run.sh provides it); fails, never
        // skips, without it.
        let python = std::env::var("INKSTREAM_TEST_PYTHON").unwrap_or_else(|_| {
            panic!(
                "INKSTREAM_TEST_PYTHON is not set: this test needs Python with fastavro. \
                 Run the suite with tests/run.sh (or export it yourself)."
            )
        });
        let dir = std::env::var_os("INKSTREAM_AVRO_EXAMPLES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("inkstream-avro-{}", std::process::id()))
            });
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let schemas = AvroSchemas::embedded().unwrap();
        for (type_name, minimal, maximal) in examples() {
            for (stem, example, full) in [
                (format!("{type_name}.minimal"), minimal, false),
                (type_name.to_owned(), maximal, true),
            ] {
                let payload = Payload::from_json_value(type_name, example)
                    .unwrap()
                    .unwrap();
                let event = envelope(payload, full);
                let bytes = schemas.encode(&event).unwrap();
                std::fs::write(dir.join(format!("{stem}.avro.bin")), bytes).unwrap();
                let framed = crate::confluent::encode(&event).unwrap();
                std::fs::write(dir.join(format!("{stem}.framed.bin")), framed).unwrap();
                let json = serde_json::to_string_pretty(&expected_decoded(&event)).unwrap();
                std::fs::write(dir.join(format!("{stem}.json")), json + "\n").unwrap();
            }
        }
        std::fs::write(
            dir.join("published.avsc"),
            crate::confluent::published_schema(),
        )
        .unwrap();
        std::fs::write(
            dir.join("published.id"),
            crate::confluent::schema_id().to_string(),
        )
        .unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_schemas.py");
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fastavro check failed:\n{report}");
        assert!(
            report.contains("Confluent-framed records decode"),
            "{report}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
