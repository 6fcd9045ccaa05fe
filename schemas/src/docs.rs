//! Human documentation generated from the schemas, so it cannot drift:
//! `inkstream schemas docs` writes `docs/EVENTS.md`, and a test fails when the
//! committed file differs from what the schemas say.

use crate::avro::AvroSchemas;
use crate::event::{Category, EventType};
use crate::examples::examples;
use apache_avro::Schema;
use std::fmt::Write;

fn type_text(schemas: &AvroSchemas, s: &Schema) -> String {
    match s {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::String => "string".into(),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::Array(a) => format!("array<{}>", type_text(schemas, &a.items)),
        Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| type_text(schemas, v))
            .collect::<Vec<_>>()
            .join(" \\| "),
        Schema::Enum(e) => format!("enum {} ({})", e.name.name(), e.symbols.join(", ")),
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Ref { name } => match schemas.named(name) {
            Some(s) => type_text(schemas, s),
            None => name.to_string(),
        },
        other => format!("{other:?}"),
    }
}

fn partition_key(c: Category) -> &'static str {
    match c {
        Category::Writing => "`user_id`",
        Category::Collaboration => "`document_id`",
        Category::Publishing | Category::Analytics | Category::Automation => "`project_id`",
        Category::System => "the type",
    }
}

/// `docs/EVENTS.md`.
pub fn events_markdown() -> String {
    let mut out = String::new();
    let schemas = match AvroSchemas::shared() {
        Ok(s) => s,
        Err(e) => return format!("schemas failed to load: {e}\n"),
    };
    let examples = examples();
    let _ = writeln!(
        out,
        "# Events\n\n\
         Generated from `schemas/avro/` by `inkstream schemas docs > docs/EVENTS.md`; \
         a test fails when this file and the schemas disagree. Do not edit by hand.\n\n\
         Every event travels in the envelope `inkstream.Event`: `id` (≤ 128 bytes; \
         a UUIDv7 is generated when absent; the idempotency key), `type`, `ts` \
         (event time, integer ms since the Unix epoch, or an RFC 3339 string on input), \
         `user_id`, `project_id`, `document_id` (required by category, below) and \
         `data`, the type's payload. Optional payload fields may be omitted or null; \
         fields with a default take it when omitted.\n\n\
         **Derived** types are emitted by the pipeline. A client may still send one: \
         it is validated, stored and mirrored like any event and reaches consumers of \
         the log and topics, but the operators never take it as input (they compute \
         their own), so it cannot fake a session, a conflict or an alert.\n"
    );
    for category in Category::ALL {
        let _ = writeln!(
            out,
            "## {category}\n\nRequired envelope fields: {}. Partition key: {}.\n",
            match category.required_fields() {
                [] => "none".to_owned(),
                f => f
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            partition_key(category)
        );
        for t in EventType::all().filter(|t| t.category == category) {
            let Some(Schema::Record(record)) = schemas.payload_schema(t.name) else {
                continue;
            };
            let _ = writeln!(
                out,
                "### `{}`{}\n\nAvro record `{}`. {}\n",
                t.name,
                if t.derived { " (derived)" } else { "" },
                record.name.fullname(None),
                record.doc.as_deref().unwrap_or("")
            );
            let _ = writeln!(
                out,
                "| field | type | required | meaning |\n|---|---|---|---|"
            );
            for f in &record.fields {
                let required = match &f.default {
                    None => "yes".to_owned(),
                    Some(serde_json::Value::Null) => "no".to_owned(),
                    Some(d) => format!("no (default `{d}`)"),
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    f.name,
                    type_text(schemas, &f.schema),
                    required,
                    f.doc
                        .as_deref()
                        .unwrap_or("")
                        .replace('|', "\\|")
                        .replace('\n', " ")
                );
            }
            if let Some((_, _, maximal)) = examples.iter().find(|(ty, _, _)| *ty == t.name) {
                let mut env = serde_json::json!({
                    "id": "e-01J9Z3",
                    "type": t.name,
                    "ts": 1_767_603_600_123i64,
                });
                for f in category.required_fields() {
                    env[*f] = serde_json::json!(match *f {
                        "user_id" => "u00042",
                        "project_id" => "p00007",
                        _ => "d00007-1",
                    });
                }
                env["data"] = maximal.clone();
                let _ = writeln!(out, "\n```json\n{env}\n```\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_events_md_is_generated_from_the_schemas() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/EVENTS.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::events_markdown(),
            "docs/EVENTS.md is stale: run `cargo run -p inkstream -- schemas docs > docs/EVENTS.md`"
        );
    }
}
