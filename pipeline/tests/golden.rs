//! Golden scenarios: `tests/fixtures/<scenario>/input.ndjson` replayed through
//! the whole dataflow must produce exactly `tests/fixtures/<scenario>/expected/`
//! (one NDJSON file per derived type, lines sorted), with one and with two
//! workers. The expected files were reviewed by hand when blessed; after an
//! intended change, regenerate them with
//! `INKSTREAM_BLESS=1 cargo test -p inkstream --test golden` and review the diff.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Every output file of a replay, with its lines sorted (the order of lines
/// across keys depends on scheduling; the set does not).
fn outputs(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue; // not an output (the journal of a checkpointed run)
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(name, lines.join("\n") + "\n");
    }
    files
}

fn replay(input: &Path, out: &Path, workers: &str) {
    let _ = std::fs::remove_dir_all(out);
    let output = Command::new(env!("CARGO_BIN_EXE_inkstream"))
        .arg("replay")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(["--workers", workers])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn check(scenario: &str) {
    let dir = fixtures().join(scenario);
    let expected_dir = dir.join("expected");
    let scratch = std::env::temp_dir().join(format!(
        "inkstream-golden-{scenario}-{}",
        std::process::id()
    ));
    for workers in ["1", "2"] {
        let out = scratch.join(workers);
        replay(&dir.join("input.ndjson"), &out, workers);
        let got = outputs(&out);
        if std::env::var_os("INKSTREAM_BLESS").is_some() && workers == "1" {
            let _ = std::fs::remove_dir_all(&expected_dir);
            std::fs::create_dir_all(&expected_dir).unwrap();
            for (name, text) in &got {
                std::fs::write(expected_dir.join(name), text).unwrap();
            }
        }
        let expected = outputs(&expected_dir);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{scenario} with {workers} worker(s): output files"
        );
        for (name, text) in &expected {
            assert!(
                got[name] == *text,
                "{scenario} with {workers} worker(s): {name} differs from the golden file\n--- expected\n{text}\n--- got\n{}",
                got[name]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn golden_writer_flow_pause_break() {
    check("writer_flow_pause_break");
}

#[test]
fn golden_coediting_conflicts() {
    check("coediting_conflicts");
}

#[test]
fn golden_alerts() {
    check("alerts");
}

#[test]
fn golden_messy_stream() {
    check("messy_stream");
}
