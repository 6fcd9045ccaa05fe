//! Checkpoints written before a change restore after it.
//!
//! `tests/fixtures/checkpoint_restore/checkpoint/` was written by the
//! `inkstream` binary of commit e217fd2 (before the pipeline layout change of
//! issue 14): `generate --events 20000 --users 8`, then `replay --workers 2
//! --set checkpoint.interval=1m --checkpoint-dir …`, killed with SIGKILL after
//! its first complete checkpoint (at line 4096). `input.ndjson` is that file
//! with the 4096 lines the checkpoint covers blanked (a resumed replay skips
//! them unread) followed by the next 150 lines; `expected/` is what that
//! same old binary wrote resuming from the checkpoint over this input
//! (lines sorted). The binary of today must restore every operator's state
//! from those parts and write exactly the same.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/checkpoint_restore")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every line of every file of `dir` as `file: line`, sorted (the order of
/// lines across keys depends on scheduling; the set does not).
fn all_lines(dir: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        // Not an output: the journal of a checkpointed run.
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .flat_map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            text.lines()
                .map(|line| format!("{name}: {line}"))
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort_unstable();
    lines
}

#[test]
fn a_checkpoint_written_by_the_previous_layout_restores_with_the_same_outputs() {
    let scratch =
        std::env::temp_dir().join(format!("inkstream-ckpt-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // A resumed replay clears its checkpoints when it ends: work on a copy.
    let checkpoints = scratch.join("checkpoint");
    copy_dir(&fixture().join("checkpoint"), &checkpoints);
    let out = scratch.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_inkstream"))
        .arg("replay")
        .arg(fixture().join("input.ndjson"))
        .arg("--out")
        .arg(&out)
        .arg("--checkpoint-dir")
        .arg(&checkpoints)
        .args(["--workers", "2", "--set", "checkpoint.interval=1m"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming from checkpoint at line 4096"),
        "{stderr}"
    );
    // Every operator instance (6 operators × 2 workers) restored its part.
    assert_eq!(stderr.matches("state restored").count(), 12, "{stderr}");
    assert_eq!(
        all_lines(&out),
        all_lines(&fixture().join("expected")),
        "the outputs differ from what the previous layout wrote"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The same checkpoint (2 workers; its older marker holds only the process
/// count, so the worker count is read off its parts) replayed with 1 or 3
/// workers: refused with both counts, nothing written, the checkpoint kept.
#[test]
fn a_checkpoint_replayed_with_another_worker_count_is_refused_naming_both() {
    let scratch =
        std::env::temp_dir().join(format!("inkstream-ckpt-rescale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let checkpoints = scratch.join("checkpoint");
    copy_dir(&fixture().join("checkpoint"), &checkpoints);
    for workers in ["1", "3"] {
        let out = scratch.join(format!("out-{workers}"));
        let output = Command::new(env!("CARGO_BIN_EXE_inkstream"))
            .arg("replay")
            .arg(fixture().join("input.ndjson"))
            .arg("--out")
            .arg(&out)
            .arg("--checkpoint-dir")
            .arg(&checkpoints)
            .args(["--workers", workers, "--set", "checkpoint.interval=1m"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{workers} workers: {stderr}");
        assert!(
            stderr.contains("was taken with 2 worker(s) (1 process(es) × 2 worker(s))")
                && stderr.contains(&format!(
                    "this run has {workers} worker(s) (1 process(es) × {workers} worker(s))"
                )),
            "{workers} workers: the error does not name both counts:\n{stderr}"
        );
        let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
        assert_eq!(
            files(&checkpoints.join("ckpt-00000001767603300000")),
            files(&fixture().join("checkpoint/ckpt-00000001767603300000")),
            "the checkpoint is left alone"
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
