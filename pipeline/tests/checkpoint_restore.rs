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

use std::collections::BTreeMap;
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

/// Every file of `dir`, its lines sorted.
fn sorted_files(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(name, lines.join("\n") + "\n");
    }
    files
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
    let expected = sorted_files(&fixture().join("expected"));
    let got = sorted_files(&out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, text) in &expected {
        assert!(
            got[name] == *text,
            "{name} differs from what the previous layout wrote\n--- expected\n{text}\n--- got\n{}",
            got[name]
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
