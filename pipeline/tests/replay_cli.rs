//! `inkstream generate` and `inkstream replay` as a user runs them, checked
//! against a straightforward reference implementation of live WPM.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_inkstream")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inkstream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Live WPM as specified: for each writing event, in arrival order, the typed
/// words of that user's events that arrived so far with time in (ts − 60 s,
/// ts] — emitted only when at least 1 s of event time has passed since the
/// user's last emitted update.
fn reference_wpm(events: &[serde_json::Value]) -> HashMap<String, f64> {
    let mut seen: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    let mut last_emitted: HashMap<String, i64> = HashMap::new();
    let mut out = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for e in events {
        // A retried event (same id) counts once: its first arrival.
        if !ids.insert(e["id"].as_str().unwrap()) {
            continue;
        }
        let ty = e["type"].as_str().unwrap();
        let words = match ty {
            "writing.keystroke" if e["data"]["source"].as_str().unwrap_or("typed") == "typed" => {
                e["data"]["words"].as_u64().unwrap()
            }
            "writing.keystroke" => 0,
            "writing.word_added" => e["data"]["words"].as_u64().unwrap_or(1),
            _ => continue,
        };
        let user = e["user_id"].as_str().unwrap().to_owned();
        let ts = e["ts"].as_i64().unwrap();
        let mine = seen.entry(user.clone()).or_default();
        mine.push((ts, words));
        if last_emitted.get(&user).is_some_and(|l| ts < l + 1_000) {
            continue;
        }
        last_emitted.insert(user, ts);
        let sum: u64 = mine
            .iter()
            .filter(|(t, _)| *t > ts - 60_000 && *t <= ts)
            .map(|(_, w)| *w)
            .sum();
        out.insert(e["id"].as_str().unwrap().to_owned(), sum as f64);
    }
    out
}

/// The live WPM updates among the metrics a replay wrote.
fn wpm_updates(out: &Path) -> Vec<serde_json::Value> {
    read_ndjson(&out.join("analytics.metric_updated.ndjson"))
        .into_iter()
        .filter(|m| m["data"]["metric"] == "wpm")
        .collect()
}

fn replay(input: &Path, out: &Path, extra: &[&str]) -> String {
    let output = Command::new(bin())
        .arg("replay")
        .arg(input)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn replay_of_a_generated_file_matches_the_reference_wpm_with_one_and_two_workers() {
    let dir = scratch("replay");
    let input = dir.join("events.ndjson");
    let status = Command::new(bin())
        .args(["generate", "--events", "20000", "--users", "50", "--out"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    let events = read_ndjson(&input);
    assert_eq!(events.len(), 20_000);
    let expected = reference_wpm(&events);

    let mut runs = Vec::new();
    for workers in ["1", "2"] {
        let out = dir.join(format!("out-{workers}"));
        let summary = replay(&input, &out, &["--workers", workers]);
        assert!(summary.contains("replayed 20000 events"), "{summary}");
        assert!(summary.contains("0 invalid, 0 late"), "{summary}");
        assert!(!out.join("system.dead_letter.ndjson").exists());
        let derived = wpm_updates(&out);
        assert_eq!(derived.len(), expected.len());
        let mut by_id: Vec<(String, f64)> = derived
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    d["data"]["value"].as_f64().unwrap(),
                )
            })
            .collect();
        by_id.sort_by(|a, b| a.0.cmp(&b.0));
        runs.push(by_id);
    }
    assert_eq!(
        runs[0], runs[1],
        "one and two workers produce the same outputs"
    );

    // Every derived value equals the reference for its triggering event.
    let out = dir.join("out-1");
    let derived = wpm_updates(&out);
    let triggering: HashMap<(String, i64), Vec<f64>> = {
        let mut m: HashMap<(String, i64), Vec<f64>> = HashMap::new();
        for e in &events {
            if let Some(v) = expected.get(e["id"].as_str().unwrap()) {
                m.entry((
                    e["user_id"].as_str().unwrap().to_owned(),
                    e["ts"].as_i64().unwrap(),
                ))
                .or_default()
                .push(*v);
            }
        }
        m
    };
    for d in &derived {
        let key = (
            d["user_id"].as_str().unwrap().to_owned(),
            d["ts"].as_i64().unwrap(),
        );
        let value = d["data"]["value"].as_f64().unwrap();
        assert!(
            triggering[&key].contains(&value),
            "wpm {value} for {key:?} not in reference {:?}",
            triggering[&key]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn invalid_lines_and_late_events_go_to_the_dead_letter_file() {
    let dir = scratch("deadletter");
    let input = dir.join("events.ndjson");
    let lines = [
        r#"{"id":"a","type":"writing.keystroke","ts":100000,"user_id":"u1","data":{"keystrokes":1,"words":1,"chars":1}}"#,
        r#"{"id":"b","type":"writing.keystroke","ts":"oops","user_id":"u1","data":{"keystrokes":1,"words":1,"chars":1}}"#,
        r#"not json at all"#,
        // 5 s behind the newest event: beyond the default 2 s disorder.
        r#"{"id":"c","type":"writing.keystroke","ts":95000,"user_id":"u1","data":{"keystrokes":1,"words":1,"chars":1}}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let summary = replay(&input, &out, &[]);
    assert!(summary.contains("replayed 2 events"), "{summary}");
    assert!(summary.contains("2 invalid, 1 late"), "{summary}");
    let dead = read_ndjson(&out.join("system.dead_letter.ndjson"));
    assert_eq!(dead.len(), 3);
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d["data"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.iter().filter(|r| **r == "invalid").count(), 2);
    assert_eq!(reasons.iter().filter(|r| **r == "late").count(), 1);
    // `detail` is JSON text (the dead-letter schema keeps it opaque).
    let details: Vec<serde_json::Value> = dead
        .iter()
        .map(|d| serde_json::from_str(d["data"]["detail"].as_str().unwrap()).unwrap())
        .collect();
    let invalid_ts = details.iter().find(|d| d["line"] == 2).unwrap();
    assert_eq!(invalid_ts["field"], "ts");
    let late = details
        .iter()
        .find(|d| d.get("watermark").is_some())
        .unwrap();
    assert_eq!(late["event"]["id"], "c");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sessions as specified, computed the obvious way: per user, writing events
/// sorted by event time, split where the gap exceeds `gap_ms`.
fn reference_sessions(
    events: &[serde_json::Value],
    gap_ms: i64,
) -> Vec<(String, i64, i64, i64, i64)> {
    let mut by_user: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    let mut ids = std::collections::HashSet::new();
    for e in events {
        if !ids.insert(e["id"].as_str().unwrap()) {
            continue;
        }
        let ty = e["type"].as_str().unwrap();
        if !ty.starts_with("writing.") {
            continue;
        }
        let words = match ty {
            "writing.keystroke" if e["data"]["source"].as_str().unwrap_or("typed") == "typed" => {
                e["data"]["words"].as_i64().unwrap()
            }
            "writing.word_added" => e["data"]["words"].as_i64().unwrap_or(1),
            _ => 0,
        };
        by_user
            .entry(e["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((e["ts"].as_i64().unwrap(), words));
    }
    let mut out = Vec::new();
    for (user, mut evs) in by_user {
        evs.sort_by_key(|(ts, _)| *ts); // stable: arrival order within a timestamp
        let mut cur: Option<(i64, i64, i64, i64)> = None; // start, last, events, words
        for (ts, w) in evs {
            cur = match cur {
                Some((s, last, n, words)) if ts - last <= gap_ms => Some((s, ts, n + 1, words + w)),
                Some((s, last, n, words)) => {
                    out.push((user.clone(), s, last, n, words));
                    Some((ts, ts, 1, w))
                }
                None => Some((ts, ts, 1, w)),
            };
        }
        if let Some((s, last, n, words)) = cur {
            out.push((user.clone(), s, last, n, words));
        }
    }
    out.sort();
    out
}

#[test]
fn sessions_match_the_reference_with_gap_overridden_and_any_worker_count() {
    let dir = scratch("sessions");
    let input = dir.join("events.ndjson");
    let status = Command::new(bin())
        .args(["generate", "--events", "30000", "--users", "40", "--out"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    let events = read_ndjson(&input);
    let expected = reference_sessions(&events, 5 * 60 * 1000);
    assert!(
        expected.len() > 40,
        "the generator makes several sessions per user"
    );
    for workers in ["1", "2"] {
        let out = dir.join(format!("out-{workers}"));
        replay(
            &input,
            &out,
            &["--set", "sessions.gap=5m", "--workers", workers],
        );
        let mut got: Vec<(String, i64, i64, i64, i64)> =
            read_ndjson(&out.join("writing.session_ended.ndjson"))
                .iter()
                .map(|s| {
                    let d = &s["data"];
                    (
                        s["user_id"].as_str().unwrap().to_owned(),
                        d["start_ts"].as_i64().unwrap(),
                        d["end_ts"].as_i64().unwrap(),
                        d["events"].as_i64().unwrap(),
                        d["words"].as_i64().unwrap(),
                    )
                })
                .collect();
        got.sort();
        assert_eq!(got.len(), expected.len(), "{workers} worker(s)");
        assert_eq!(got, expected, "{workers} worker(s)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every derived event of a run, as JSON text keyed by id: files of one
/// process (`<type>.ndjson`) or of every process of a cluster
/// (`<type>.p<i>.ndjson`), or Avro containers (`<type>.avro`, read as the
/// same JSON).
fn all_derived(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in outputs_in(dir) {
        let events = match path.extension().and_then(|e| e.to_str()) {
            Some("avro") => read_avro(&path),
            _ => read_ndjson(&path),
        };
        for v in events {
            out.push((v["id"].as_str().unwrap().to_owned(), v.to_string()));
        }
    }
    out.sort();
    out
}

/// How many derived events a killed run wrote: its files' whole lines and
/// whole Avro blocks. A kill can cut a file's last line (or block) in the
/// middle of its write; the resumed run cuts it off.
fn killed_derived(dir: &Path) -> usize {
    let mut n = 0;
    for path in outputs_in(dir) {
        n += match path.extension().and_then(|e| e.to_str()) {
            Some("avro") => read_avro(&path).len(),
            _ => {
                let bytes = std::fs::read(&path).unwrap();
                let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let text = std::str::from_utf8(&bytes[..whole]).unwrap();
                for line in text.lines() {
                    let _: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                        panic!("{}: a whole line is not JSON: {e}", path.display())
                    });
                }
                text.lines().count()
            }
        };
    }
    n
}

/// The events of an Avro container file `<type>.avro`, as JSON: those of
/// its whole blocks (a kill may have cut the last one; [`whole_avro`]
/// checks a finished run's files).
fn read_avro(path: &Path) -> Vec<serde_json::Value> {
    let name = path.file_name().unwrap().to_str().unwrap();
    let container = schemas::container::Container::new(name.strip_suffix(".avro").unwrap());
    let bytes = std::fs::read(path).unwrap();
    let whole = container
        .complete_prefix(&bytes)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    if whole == 0 {
        return Vec::new(); // not even the header was written
    }
    container
        .read(&bytes[..whole])
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        // Through the text, as an NDJSON line is read (serde_json's float
        // parsing is not exact: the same text must give the same value).
        .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
        .collect()
}

/// Every Avro container in `dir` is whole: header, blocks, nothing after.
fn whole_avro(dir: &Path) {
    let mut seen = 0;
    for path in outputs_in(dir) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(ty) = name.strip_suffix(".avro") else {
            panic!("{name}: not an Avro container in an Avro run's outputs");
        };
        let bytes = std::fs::read(&path).unwrap();
        let c = schemas::container::Container::new(ty);
        assert_eq!(c.complete_prefix(&bytes), Ok(bytes.len()), "{name}");
        seen += 1;
    }
    assert!(seen > 0, "no Avro container in {}", dir.display());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn one_worker_two_workers_and_a_two_process_cluster_derive_the_same_events() {
    let dir = scratch("cluster");
    let input = dir.join("events.ndjson");
    let status = Command::new(bin())
        .args(["generate", "--events", "20000", "--users", "24", "--out"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());

    let one = dir.join("one");
    replay(&input, &one, &["--workers", "1"]);
    let expected = all_derived(&one);
    assert!(expected.len() > 1000, "{} derived events", expected.len());
    let types: std::collections::BTreeSet<String> = outputs_in(&one)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();

    let two = dir.join("two");
    replay(&input, &two, &["--workers", "2"]);
    assert_eq!(all_derived(&two), expected, "two worker threads");

    // Two processes of two workers each: a timely cluster over TCP.
    let cluster = dir.join("cluster");
    let hosts = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(bin())
                .arg("replay")
                .arg(&input)
                .arg("--out")
                .arg(&cluster)
                .args(["--workers", "2", "--hosts", &hosts])
                .args(["--process-index", &i.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = all_derived(&cluster);
    assert_eq!(got.len(), expected.len(), "types: {types:?}");
    assert_eq!(got, expected, "two processes");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The counts line of a replay's report ("N events (… MB) in … s: … events/s;
/// I invalid, L late, D duplicates"), without the timing.
fn counts(summary: &str) -> (String, String) {
    let first = summary.lines().next().unwrap();
    let events = first.split(" in ").next().unwrap().to_owned();
    let rest = first.rsplit("events/s; ").next().unwrap().to_owned();
    (events, rest)
}

/// Every worker of the reading process decodes blocks of the file; blocks
/// are split at line boundaries, so a block edge in the middle of a line (or
/// a block smaller than a line) changes nothing: the same derived events,
/// dead letters (with their line numbers), late events and duplicates as one
/// worker reading the file whole.
#[test]
fn blocks_split_mid_line_derive_the_same_events_as_one_worker() {
    let dir = scratch("blocks");
    let generated = dir.join("generated.ndjson");
    let status = Command::new(bin())
        .args(["generate", "--events", "20000", "--users", "24", "--out"])
        .arg(&generated)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&generated).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Blank and invalid lines, a duplicate (the same line twice in a row)
    // and a late event (an early line again, with a new id, much later).
    let mut edited: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        edited.push((*line).to_owned());
        match i {
            4999 => edited.push((*line).to_owned()),
            5000 => edited.extend(["".to_owned(), "not json".to_owned()]),
            15000 => edited.push(lines[100].replacen("\"id\":\"", "\"id\":\"late-", 1)),
            _ => {}
        }
    }
    let input = dir.join("events.ndjson");
    // No final newline: the last line ends at the end of the file.
    std::fs::write(&input, edited.join("\n")).unwrap();

    let one = dir.join("one");
    let summary = replay(&input, &one, &["--workers", "1"]);
    let expected = without_late_watermark(all_derived(&one));
    let expected_counts = counts(&summary);
    // The scenario is exercised: the invalid line, and at least the late
    // and duplicated lines added (the generated file may have its own).
    assert!(summary.contains(" 1 invalid, "), "{summary}");
    assert!(!summary.contains(" 0 late"), "{summary}");
    assert!(!summary.contains(" 0 duplicates"), "{summary}");
    assert!(expected.len() > 1000, "{} derived events", expected.len());
    for (i, flags) in [
        ["--block-bytes", "997", "--decoders", "2"],
        ["--block-bytes", "64", "--decoders", "2"],
        // Worker 0 decoding alone, as before parallel input.
        ["--block-bytes", "997", "--decoders", "1"],
    ]
    .iter()
    .enumerate()
    {
        let out = dir.join(format!("two-{i}"));
        let mut args = vec!["--workers", "2"];
        args.extend(flags);
        let summary = replay(&input, &out, &args);
        assert_eq!(counts(&summary), expected_counts, "{flags:?}");
        assert_eq!(
            without_late_watermark(all_derived(&out)),
            expected,
            "{flags:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The derived events with the `watermark` taken out of late dead letters'
/// detail: it records how far the input's watermark had moved when the late
/// event arrived, which depends on how the input is fed to the workers (it
/// differs between 1 and 2 workers with or without parallel decoding); which
/// events are late, and everything else, does not.
fn without_late_watermark(derived: Vec<(String, String)>) -> Vec<(String, String)> {
    derived
        .into_iter()
        .map(|(id, text)| {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "system.dead_letter" && v["data"]["reason"] == "late" {
                let mut detail: serde_json::Value =
                    serde_json::from_str(v["data"]["detail"].as_str().unwrap()).unwrap();
                detail.as_object_mut().unwrap().remove("watermark");
                v["data"]["detail"] = serde_json::Value::String(detail.to_string());
            }
            (id, v.to_string())
        })
        .collect()
}

/// Every derived event, deduplicated by id (as a sink would): a second copy
/// of an id must be the same event.
fn deduplicated(dir: &Path) -> Vec<(String, String)> {
    let mut by_id: std::collections::BTreeMap<String, String> = Default::default();
    for (id, json) in all_derived(dir) {
        if let Some(first) = by_id.get(&id) {
            assert_eq!(first, &json, "two different events with id {id}");
        }
        by_id.insert(id, json);
    }
    by_id.into_iter().collect()
}

#[test]
fn a_replay_killed_mid_way_resumes_from_its_checkpoint_with_the_same_outputs() {
    killed_and_resumed("ndjson");
}

/// The same with Avro container outputs (a block a kill cut in half is cut
/// off on resume), compared with the uninterrupted run's NDJSON: both
/// formats hold the same events.
#[test]
fn a_replay_killed_mid_way_resumes_its_avro_outputs_with_the_events_of_the_ndjson_run() {
    killed_and_resumed("avro");
}

fn killed_and_resumed(format: &str) {
    let dir = scratch(&format!("crash-{format}"));
    let input = dir.join("events.ndjson");
    let status = Command::new(bin())
        .args(["generate", "--events", "400000", "--users", "120", "--out"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    let uninterrupted = dir.join("uninterrupted");
    replay(
        &input,
        &uninterrupted,
        &["--set", "checkpoint.interval=2m", "--workers", "2"],
    );
    let expected = deduplicated(&uninterrupted);
    let settings = [
        "--set",
        "checkpoint.interval=2m",
        "--workers",
        "2",
        "--format",
        format,
    ];

    // Kill -9 once at least one checkpoint is complete, well before the end.
    let out = dir.join("crashed");
    let checkpoints = dir.join("checkpoints");
    let mut child = Command::new(bin())
        .arg("replay")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--checkpoint-dir")
        .arg(&checkpoints)
        .args(settings)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let complete = || {
        std::fs::read_dir(&checkpoints)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("COMPLETE.p0").exists())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !complete() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint in 120 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay finished before a checkpoint completed: make the input longer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the replay finished before the kill: make the input longer"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = killed_derived(&out);
    assert!(partial < expected.len(), "killed before the end");

    // Restart: it resumes from the checkpoint, not from the start.
    let output = Command::new(bin())
        .arg("replay")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--checkpoint-dir")
        .arg(&checkpoints)
        .args(settings)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let resumed_at: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming from checkpoint at line "))
        .unwrap_or_else(|| panic!("did not resume: {stderr}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        resumed_at > 0 && resumed_at < 400_000,
        "resumed at line {resumed_at}"
    );

    if format == "avro" {
        whole_avro(&out);
    }
    let got = deduplicated(&out);
    assert_eq!(
        got.len(),
        expected.len(),
        "derived events after the crash and resume"
    );
    // Exactly once: the resume cut what it derived again (until 2026-12-07
    // those events were there twice).
    let (all, uninterrupted_all) = (all_derived(&out), all_derived(&uninterrupted));
    assert_eq!(
        all.len(),
        uninterrupted_all.len(),
        "events written twice after the crash and resume"
    );
    assert!(
        all == uninterrupted_all,
        "copies differ from an uninterrupted run"
    );
    assert!(
        got == expected,
        "the outputs differ from an uninterrupted run"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The derived events of one type file, sorted (`[]` when not written).
fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn files(dir: &Path) -> std::collections::BTreeSet<String> {
    outputs_in(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The output files in `dir`: not the hidden ones (the journal that makes
/// them exactly once with checkpoints).
fn outputs_in(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

#[test]
fn chosen_operators_derive_what_they_derive_in_the_full_run_and_nothing_else() {
    let dir = scratch("operators");
    let input = dir.join("events.ndjson");
    let status = Command::new(bin())
        .args(["generate", "--events", "20000", "--users", "24", "--out"])
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success());
    let full = dir.join("full");
    replay(&input, &full, &["--workers", "2"]);

    // What each selection writes, and nothing else: every file identical
    // to the full run's file of that type.
    let sessions = [
        "writing.flow_state_entered.ndjson",
        "writing.flow_state_exited.ndjson",
        "writing.session_ended.ndjson",
        "writing.session_paused.ndjson",
        "writing.session_resumed.ndjson",
        "writing.session_started.ndjson",
        "writing.session_state_changed.ndjson",
    ];
    let alerts = [
        "analytics.alert_triggered.ndjson",
        "analytics.threshold_crossed.ndjson",
    ];
    let cases: [(&str, Vec<&str>); 3] = [
        ("sessions", sessions.to_vec()),
        // alerts read the flow state: sessions run too.
        ("alerts", [&sessions[..], &alerts[..]].concat()),
        (
            "conflicts",
            vec![
                "collaboration.conflict_detected.ndjson",
                "collaboration.conflict_resolved.ndjson",
            ],
        ),
    ];
    for (ops, expected) in cases {
        let out = dir.join(ops);
        replay(&input, &out, &["--workers", "2", "--operators", ops]);
        let written: Vec<String> = files(&out).into_iter().collect();
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(written, expected, "--operators {ops}");
        for f in &written {
            let got = sorted_lines(&out.join(f));
            assert!(!got.is_empty(), "--operators {ops}: {f} is empty");
            assert_eq!(got, sorted_lines(&full.join(f)), "--operators {ops}: {f}");
        }
    }

    // --outputs: nothing but the one type asked for, the same lines.
    let only = dir.join("only");
    let report = replay(
        &input,
        &only,
        &[
            "--operators",
            "sessions",
            "--outputs",
            "writing.session_ended",
        ],
    );
    assert!(report.contains("writing.session_ended"), "{report}");
    assert_eq!(
        files(&only).into_iter().collect::<Vec<_>>(),
        ["writing.session_ended.ndjson"]
    );
    let f = "writing.session_ended.ndjson";
    assert_eq!(sorted_lines(&only.join(f)), sorted_lines(&full.join(f)));

    // Unknown names fail before anything runs, saying what is accepted.
    for (flag, value, says) in [
        ("--operators", "sessions,wmp", "unknown variant `wmp`"),
        ("--outputs", "writing.session_over", "writing.session_over"),
    ] {
        let out = Command::new(bin())
            .arg("replay")
            .arg(&input)
            .arg("--out")
            .arg(dir.join("bad"))
            .args([flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
