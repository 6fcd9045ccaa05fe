//! The config loader (`inkstream::config::Config::load`: the TOML file, then
//! `--set` overrides, then validation) on hostile files and overrides: it
//! returns a config or a `ConfigError` naming what is wrong, never panics;
//! and what `serve` derives from a loaded config right after loading it
//! does not panic either.

use crate::mutate::{self, Edit, hostile_string, hostile_value, json_edit};
use crate::{Input, cases, run};
use pipeline::config::{Config, ConfigError};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

const DICT: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b".",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"\n",
    b"#",
    b"{",
    b"}",
    b",",
    b"inf",
    b"nan",
    b"-0",
    b"0x7fffffffffffffff",
    b"1979-05-27T07:32:00Z",
    b"18446744073709551615",
    b"\"18446744073709551615d\"",
    b"\\u0000",
    b"\xff",
];

/// A config file and `--set` overrides.
#[derive(Debug, Clone)]
struct Case {
    text: Vec<u8>,
    overrides: Vec<String>,
}

impl Input for Case {
    /// The file, with each override on a leading `#! --set "<JSON string>"`
    /// comment line (the corpus format).
    fn to_file(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for o in &self.overrides {
            out.extend(format!("#! --set {}\n", Value::from(o.as_str())).into_bytes());
        }
        out.extend(&self.text);
        out
    }
}

fn parse(bytes: &[u8]) -> Case {
    let overrides = String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.strip_prefix("#! --set "))
        .map(|o| serde_json::from_str::<String>(o).expect("#! --set \"<JSON string>\""))
        .collect();
    Case {
        text: bytes.to_vec(),
        overrides,
    }
}

/// Duration strings, the type most config values have: valid ones, every
/// unit, overflowing counts, and many terms.
fn duration() -> impl Strategy<Value = String> {
    let unit = proptest::sample::select(&["ms", "s", "m", "min", "h", "d", "", "us", "S"][..]);
    let term = (
        prop_oneof![3 => 0u64..100_000, 1 => any::<u64>(), 1 => Just(u64::MAX)],
        unit,
    )
        .prop_map(|(n, u)| format!("{n}{u}"));
    prop_oneof![
        8 => proptest::collection::vec(term.clone(), 1..4).prop_map(|t| t.concat()),
        1 => (term, 900usize..1_200).prop_map(|(t, n)| t.repeat(n)),
    ]
}

/// A TOML value replacing or added to the file (JSON values converted:
/// TOML has no null).
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => hostile_value(),
        3 => duration().prop_map(Value::String),
    ]
}

fn config_edit(keys: &'static [&'static str]) -> impl Strategy<Value = Edit> {
    let key = prop_oneof![3 => proptest::sample::select(keys).prop_map(str::to_owned), 1 => hostile_string()];
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::Remove),
        5 => (any::<Index>(), value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        2 => (any::<Index>(), key, value()).prop_map(|(i, k, v)| Edit::Add(i, k, v)),
        1 => json_edit(keys),
    ]
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => {
            a.retain(|v| !v.is_null());
            a.iter_mut().for_each(strip_nulls);
        }
        _ => {}
    }
}

/// The committed valid files as JSON documents, and every key they use.
fn documents() -> (Vec<Value>, Vec<String>, &'static [&'static str]) {
    let mut docs = Vec::new();
    let mut dotted = Vec::new();
    let mut keys: Vec<&'static str> = Vec::new();
    fn walk(v: &Value, at: &str, dotted: &mut Vec<String>, keys: &mut Vec<&'static str>) {
        if let Value::Object(m) = v {
            for (k, child) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if !keys.contains(&k.as_str()) {
                    keys.push(Box::leak(k.clone().into_boxed_str()));
                }
                if !child.is_object() && !dotted.contains(&path) {
                    dotted.push(path.clone());
                }
                walk(child, &path, dotted, keys);
            }
        }
    }
    for (name, bytes) in crate::corpus("config") {
        if !name.starts_with("valid-") {
            continue;
        }
        let table: toml::Table = String::from_utf8(bytes).unwrap().parse().unwrap();
        let doc = serde_json::to_value(&table).unwrap();
        walk(&doc, "", &mut dotted, &mut keys);
        docs.push(doc);
    }
    (docs, dotted, Box::leak(keys.into_boxed_slice()))
}

fn cases_strategy() -> impl Strategy<Value = Case> {
    let (docs, dotted, keys) = documents();
    let docs = Arc::new(docs);
    let structured = (
        any::<Index>(),
        proptest::collection::vec(config_edit(keys), 1..5),
        proptest::collection::vec(
            (any::<Index>(), any::<Index>()).prop_map(|(i, t)| mutate::Bytes::Token(i, t)),
            0..2,
        ),
    )
        .prop_map(move |(doc, edits, tokens)| {
            let mut v: Value = doc.get(&docs).clone();
            mutate::edit(&mut v, &edits);
            strip_nulls(&mut v);
            // A document TOML cannot hold (a top-level non-table) is written
            // as an empty file: the loader reads TOML text, never JSON.
            let mut text = toml::to_string(&v).unwrap_or_default().into_bytes();
            mutate::apply(&mut text, &tokens, DICT, &[]);
            text
        });
    let files: Arc<Vec<Vec<u8>>> = Arc::new(
        crate::corpus("config")
            .into_iter()
            .map(|(_, b)| b)
            .collect(),
    );
    let text = prop_oneof![
        3 => structured,
        2 => mutate::mutated(files, DICT, 6),
    ];
    let dotted = Arc::new(dotted);
    let assignment = (any::<Index>(), value(), any::<bool>()).prop_map(move |(k, v, raw)| {
        let value = match (&v, raw) {
            (Value::String(s), true) => s.clone(),
            _ => toml::Value::try_from(&v)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| v.to_string()),
        };
        format!("{}={value}", k.get(&dotted))
    });
    let overrides =
        proptest::collection::vec(prop_oneof![4 => assignment, 1 => hostile_string()], 0..3);
    (text, overrides).prop_map(|(text, overrides)| Case { text, overrides })
}

fn check(file: &PathBuf, case: &Case) {
    std::fs::write(file, &case.text).unwrap();
    match Config::load(Some(file), &case.overrides) {
        Ok(config) => {
            // What `serve` computes from the config before anything else.
            let _ = config.dataflow.timely_config();
            let _ = config.dataflow.consumer_name();
            let _ = config.dataflow.layout();
            let _ = config.fanout.to_hub_config();
            let _ = config.ingest.to_ingest_config();
            if let Err(e) = config.auth.to_auth_config(&config.ingest) {
                assert!(e.to_string().trim().len() >= 8, "unspecific: {e:?}");
            }
        }
        Err(e) => {
            let specific = |m: &str| assert!(m.trim().len() >= 4, "unspecific: {e:?}");
            match &e {
                ConfigError::Read { .. } => assert!(
                    std::str::from_utf8(&case.text).is_err(),
                    "a readable file was not read: {e}"
                ),
                ConfigError::Parse { message, .. } => specific(message),
                ConfigError::BadOverride(o) => assert!(
                    case.overrides.contains(o),
                    "BadOverride names {o:?}, not one of the overrides"
                ),
                ConfigError::Invalid { message, .. } => specific(message),
            }
            assert!(e.to_string().len() >= 16, "unspecific: {e:?}");
        }
    }
}

#[test]
fn config_loader_survives_hostile_files_and_overrides() {
    let file =
        std::env::temp_dir().join(format!("inkstream-fuzz-config-{}.toml", std::process::id()));
    run(
        "config",
        "config",
        cases(1_000),
        parse,
        cases_strategy(),
        |c: &Case| check(&file, c),
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn config_seeds_load() {
    let file = std::env::temp_dir().join(format!(
        "inkstream-fuzz-config-seeds-{}.toml",
        std::process::id()
    ));
    for (name, bytes) in crate::corpus("config") {
        if name.starts_with("valid-") {
            std::fs::write(&file, &bytes).unwrap();
            Config::load(Some(&file), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let _ = std::fs::remove_file(&file);
}
