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
        .flat_map(|entry| {
            let path = entry.unwrap().path();
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
