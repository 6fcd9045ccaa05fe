//! Hostile-input suite: property-based fuzzing (proptest) of every decoder a
//! stranger's bytes reach — the JSON event decoder (single events and
//! batches), the Avro binary decoders (hand-written and apache-avro's), the
//! Confluent framing, the WebSocket control frames (against the real binary),
//! the config loader and the express-session cookie parser.
//!
//! Each target first replays its committed corpus (`tests/fuzz/corpus/<target>/`)
//! and every kept crash (`tests/fuzz/regressions/<target>/`), then runs a fixed
//! number of generated cases from a fixed seed: structure-aware mutations of
//! the corpus (fields removed or replaced in valid envelopes, varints replaced
//! in valid Avro datums, keys and values replaced in valid TOML) plus
//! byte-level mutations. Deterministic: the same cases every run.
//!
//! - `INKSTREAM_FUZZ_CASES=N`: N generated cases per target (a longer
//!   campaign; the default keeps the whole suite well under a minute);
//! - `INKSTREAM_FUZZ_SEED=S`: another seed (a different campaign).
//!
//! A failing case is shrunk by proptest and written to
//! `target/fuzz-failures/<target>/`; keep it as a regression by moving it to
//! `tests/fuzz/regressions/<target>/` once the root cause is fixed.
//!
//! The byte-level properties live in `tests/fuzz/checks.rs`, shared with the
//! cargo-fuzz targets (`tests/fuzz/fuzz_targets/`) that run coverage-guided
//! campaigns on nightly (docs/OPERATIONS.md, "Hostile-input suites").

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../../fuzz/checks.rs"]
mod checks;

mod avro;
mod config;
mod cookie;
mod json_event;
mod mutate;
mod ws_control;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `tests/fuzz/` in the source tree.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Generated cases for a target: its default, or `INKSTREAM_FUZZ_CASES`.
fn cases(default: u32) -> u32 {
    match std::env::var("INKSTREAM_FUZZ_CASES") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("INKSTREAM_FUZZ_CASES={v:?} is not a number")),
        _ => default,
    }
}

/// The committed inputs of a target: its corpus, then its kept crashes,
/// sorted by file name, as `(file name, bytes)`.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read(&f).unwrap()));
        }
    }
    out
}

/// A runner with a fixed seed per target (and `INKSTREAM_FUZZ_SEED`), no
/// failure persistence (the suite must not write into the source tree) and
/// a bounded shrink.
fn runner(target: &str, cases: u32) -> TestRunner {
    let extra: u64 = std::env::var("INKSTREAM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut seed = [0u8; 32];
    let h = schemas::stable_hash(target) ^ extra;
    seed[..8].copy_from_slice(&h.to_le_bytes());
    seed[8..16].copy_from_slice(&extra.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        max_shrink_time: 60_000,
        // The generators filter nothing; a reject would be a harness bug.
        max_global_rejects: 0,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed))
}

/// What a fuzz input is written as when it fails (the format the target's
/// corpus files use, so it can be kept as a regression as it is).
trait Input: Debug + Clone {
    fn to_file(&self) -> Vec<u8>;
}

impl Input for Vec<u8> {
    fn to_file(&self) -> Vec<u8> {
        self.clone()
    }
}

/// Runs `check` on every committed input of `corpus_of` (parsed by `parse`), then on `n`
/// generated cases; panics with the shrunk failing case written to
/// `target/fuzz-failures/<target>/`. Prints the figures.
fn run<S>(
    target: &str,
    corpus_of: &str,
    n: u32,
    parse: impl Fn(&[u8]) -> S::Value,
    strategy: S,
    check: impl Fn(&S::Value),
) where
    S: Strategy,
    S::Value: Input,
{
    let started = Instant::now();
    let committed = corpus(corpus_of);
    for (name, bytes) in &committed {
        let input = parse(bytes);
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input))) {
            panic!(
                "fuzz {target}: committed input {name} fails: {}",
                panic_message(&*p)
            );
        }
    }
    let mut runner = runner(target, n);
    let result = runner.run(&strategy, |input| {
        check(&input);
        Ok(())
    });
    match result {
        Ok(()) => eprintln!(
            "fuzz {target}: {} committed inputs + {n} generated cases in {:.1} s, 0 crashes",
            committed.len(),
            started.elapsed().as_secs_f64()
        ),
        Err(TestError::Fail(why, input)) => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/fuzz-failures")
                .join(target);
            std::fs::create_dir_all(&dir).unwrap();
            let bytes = input.to_file();
            let file = dir.join(format!("crash-{:016x}", schemas::stable_hash(&bytes)));
            std::fs::write(&file, &bytes).unwrap();
            panic!(
                "fuzz {target}: {why}\nshrunk input written to {} (keep it in \
                 tests/fuzz/regressions/{target}/ once fixed): {input:?}",
                file.display()
            );
        }
        Err(TestError::Abort(why)) => panic!("fuzz {target}: aborted: {why}"),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Writes the generated seeds into `tests/fuzz/corpus/` when
/// `INKSTREAM_FUZZ_WRITE_CORPUS=1` (after a change of the examples or the
/// schemas); the config seeds are written by hand.
#[test]
fn seeds_written_when_asked() {
    if std::env::var("INKSTREAM_FUZZ_WRITE_CORPUS").as_deref() != Ok("1") {
        return;
    }
    for (target, files) in [
        ("json_event", json_event::seeds()),
        ("avro", avro::avro_seeds()),
        ("confluent", avro::confluent_seeds()),
        ("cookie", cookie::seeds()),
        ("ws_control", ws_control::seeds()),
    ] {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
