//! Schema evolution: every current schema reads data written with the
//! previous release kept in `schemas/avro/previous/` (BACKWARD compatibility,
//! the Confluent default), and the check itself catches a breaking change.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use inkstream_schemas::confluent::standalone;
use std::fs;
use std::path::{Path, PathBuf};

fn avsc_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().unwrap() != "previous" {
                out.extend(avsc_files(&path));
            }
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn load(dir: &Path) -> Vec<(PathBuf, String)> {
    avsc_files(dir)
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_owned(), text)
        })
        .collect()
}

fn standalone_schema(root: &str, all: &[(PathBuf, String)]) -> Schema {
    let named: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).collect();
    Schema::parse_str(&standalone(root, &named)).unwrap()
}

fn avro_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("avro")
}

#[test]
fn every_schema_reads_data_written_with_its_previous_version() {
    let current = load(&avro_dir());
    let previous = load(&avro_dir().join("previous"));
    assert!(
        !previous.is_empty(),
        "schemas/avro/previous/ holds the last release"
    );
    let mut checked = 0;
    for (path, text) in &current {
        let Some((_, old)) = previous.iter().find(|(p, _)| p == path) else {
            // A new schema has no previous version: nothing to be compatible with.
            continue;
        };
        let reader = standalone_schema(text, &current);
        let writer = standalone_schema(old, &previous);
        if let Err(e) = SchemaCompatibility::can_read(&writer, &reader) {
            panic!(
                "{} cannot read data written with its previous version: {e}",
                path.display()
            );
        }
        checked += 1;
    }
    // Every previous schema still exists: removing a type breaks its readers.
    for (path, _) in &previous {
        assert!(
            current.iter().any(|(p, _)| p == path),
            "{} was removed",
            path.display()
        );
    }
    assert!(checked >= 40, "checked {checked} schemas");
}

#[test]
fn the_check_catches_a_field_added_without_a_default_and_a_changed_type() {
    let current = load(&avro_dir());
    let (_, keystroke) = current
        .iter()
        .find(|(p, _)| p.ends_with("writing/keystroke.avsc"))
        .unwrap();
    let writer = standalone_schema(keystroke, &current);

    let mut v: serde_json::Value = serde_json::from_str(keystroke).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "mood", "type": "string", "doc": "added without a default"}
    ));
    let added = standalone_schema(&v.to_string(), &current);
    assert!(SchemaCompatibility::can_read(&writer, &added).is_err());

    let mut v: serde_json::Value = serde_json::from_str(keystroke).unwrap();
    v["fields"][0]["type"] = serde_json::json!("string");
    let changed = standalone_schema(&v.to_string(), &current);
    assert!(SchemaCompatibility::can_read(&writer, &changed).is_err());

    let mut v: serde_json::Value = serde_json::from_str(keystroke).unwrap();
    v["fields"].as_array_mut().unwrap().push(serde_json::json!(
        {"name": "mood", "type": ["null", "string"], "default": null, "doc": "with a default"}
    ));
    let compatible = standalone_schema(&v.to_string(), &current);
    assert!(SchemaCompatibility::can_read(&writer, &compatible).is_ok());
}
