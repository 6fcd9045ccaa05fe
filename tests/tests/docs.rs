//! Docs that run: every fenced shell block of `README.md` and `docs/API.md`
//! is executed by bash against a live `inkstream serve`, and every response
//! it shows is checked.
//!
//! The convention (also in docs/API.md, "Examples"):
//! - ```` ```sh ```` (or `bash`, `shell`) blocks run, in document order, one
//!   bash process per block (`set -euo pipefail`), in a scratch directory,
//!   with `localhost:8080` pointing at the test's server.
//! - ```` ```sh no-run ```` marks a block that is not meant to run here (it
//!   starts the server itself, builds in release mode, runs the test suite,
//!   needs Docker or an interactive WebSocket client). Any other shell block
//!   that fails makes the test fail.
//! - Each `curl` is wrapped: its status and body are recorded. A comment
//!   `# → STATUS JSON` (continued on `#` lines) after a `curl` is what that
//!   call must answer: the status exactly, and every field shown in the JSON
//!   (fields not shown are not checked). `…` matches anything: a bare `…`
//!   any value (`[…]` any array, a trailing `, …` in an array any further
//!   elements), `…` inside a string any text (`"…"` any value). A `curl` without a shown response must answer 2xx.
//! - A `GET` answering another status than shown (not 2xx when none is
//!   shown) is retried for up to 10 s: the views are filled by the dataflow,
//!   a moment after the events that make them (until then a member's query
//!   is 403, an admin's 404). Other methods are never retried.
//! - Timestamps are computed by the blocks themselves (`$(date +%s%3N)`),
//!   never hard-coded: a fixed time falls out of the 24 h window ingest
//!   accepts.
//! - README blocks run against a server with no credentials (the quick
//!   start, embedded log); API.md blocks against one with auth on and the
//!   Redis log (three writing events ingested first, so that the event-query
//!   example has pages), where `$TOKEN` is a member's JWT (`sub` u1, project
//!   p1, document d1), `$ADMIN` an admin's, `$APP_KEY` an app key with the
//!   admin scope. `inkstream` on the `PATH` is the binary under test.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, inkstream_bin, now_ms, unique};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One fenced shell block.
#[derive(Debug)]
struct Block {
    file: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    run: bool,
    code: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shell_blocks(file: &'static str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut out = Vec::new();
    let mut open: Option<(usize, String, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((i + 1, info.trim().to_owned(), Vec::new())),
            (Some((start, info, body)), Some(_)) => {
                let mut words = info.split_whitespace();
                if matches!(words.next(), Some("sh" | "bash" | "shell")) {
                    let flags: Vec<&str> = words.collect();
                    assert!(
                        flags.iter().all(|f| *f == "no-run"),
                        "{file}:{start}: unknown marker in ```{info} (only `no-run` is known)"
                    );
                    out.push(Block {
                        file,
                        line: *start,
                        run: flags.is_empty(),
                        code: body.join("\n"),
                    });
                }
                open = None;
            }
            (Some((_, _, body)), None) => body.push(line),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{file}: a code fence is not closed");
    out
}

/// What one `# →` comment says a call answers.
#[derive(Debug)]
struct Shown {
    /// Which `curl` of the block (0-based).
    call: usize,
    status: u16,
    body: Option<Value>,
    text: String,
}

/// The `# → …` comments of a block, each tied to the `curl` before it.
fn shown_responses(b: &Block) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut calls = 0usize;
    let lines: Vec<&str> = b.code.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if let Some(rest) = line.strip_prefix("# →") {
            let mut text = rest.trim().to_owned();
            // Continuation: indented comment lines that are not a new arrow.
            while i + 1 < lines.len() {
                let next = lines[i + 1].trim_start();
                match next.strip_prefix('#') {
                    Some(c) if !c.trim_start().starts_with('→') && c.starts_with("  ") => {
                        text.push(' ');
                        text.push_str(c.trim());
                        i += 1;
                    }
                    _ => break,
                }
            }
            assert!(
                calls > 0,
                "{}:{}: a shown response before any curl",
                b.file,
                b.line
            );
            let (status, json) = text.split_once(' ').unwrap_or((&text, ""));
            let status: u16 = status.parse().unwrap_or_else(|_| {
                panic!(
                    "{}:{}: `# → {text}` must start with a status",
                    b.file, b.line
                )
            });
            let body = (!json.trim().is_empty()).then(|| {
                let pattern = pattern_json(json);
                serde_json::from_str(&pattern).unwrap_or_else(|e| {
                    panic!(
                        "{}:{}: the shown response is not JSON with … ({e}): {pattern}",
                        b.file, b.line
                    )
                })
            });
            out.push(Shown {
                call: calls - 1,
                status,
                body,
                text: text.clone(),
            });
        } else if !line.starts_with('#') {
            calls += line.matches("curl ").count();
        }
        i += 1;
    }
    out
}

/// The shown JSON with its `…` made JSON: a bare `…` (a value, or a
/// trailing member/element) becomes the string `"…"`; a trailing `, …` in an
/// object is dropped (fields not shown are not checked anyway).
fn pattern_json(shown: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in shown.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '…' => {
                out.push('"');
                out.push_str(BARE);
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    // `, …}`: an object member without a key; drop it.
    let mut s = out;
    for gap in [format!(", \"{BARE}\"}}"), format!(",\"{BARE}\"}}")] {
        s = s.replace(&gap, "}");
    }
    s
}

/// What a bare `…` (outside quotes) becomes: any value, and as the last
/// element of an array, any further elements.
const BARE: &str = "…(any)";

/// Whether `actual` has everything `shown` shows.
fn matches(shown: &Value, actual: &Value) -> bool {
    match (shown, actual) {
        (Value::String(p), _) if p == "…" || p == BARE => true,
        (Value::String(p), Value::String(a)) if p.contains('…') => glob(p, a),
        (Value::String(p), a) if p.contains('…') => glob(p, &a.to_string()),
        (Value::Object(p), Value::Object(a)) => p
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av))),
        (Value::Array(p), Value::Array(a)) => {
            let open = p.last().is_some_and(|l| l == BARE);
            let fixed = if open { &p[..p.len() - 1] } else { &p[..] };
            (if open {
                a.len() >= fixed.len()
            } else {
                a.len() == fixed.len()
            }) && fixed.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        (Value::Number(p), Value::Number(a)) => p.as_f64() == a.as_f64(),
        _ => shown == actual,
    }
}

/// `…` in `pattern` matches any text.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(at) => rest = &rest[at + mid.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Bash run before every block: `curl` records each call's status and body
/// in `$DOCS_RESPONSES` (one JSON line per call), and retries a GET for up to
/// 10 s while it answers another status than the doc shows (`$DOCS_EXPECT`:
/// `call:status` pairs; 2xx when none is shown).
const PRELUDE: &str = r#"set -euo pipefail
curl() {
  local body status tries=0 method=GET call want
  body=$(mktemp)
  # This call's index: the calls recorded so far (also from subshells).
  call=$(( $(wc -l < "$DOCS_RESPONSES") ))
  want=$(printf '%s\n' $DOCS_EXPECT | sed -n "s/^$call://p")
  for a in "$@"; do case "$a" in -d|--data|--data-binary|--json) method=POST;; esac; done
  for a in "$@"; do case "$a" in -X*) method=other;; esac; done
  while :; do
    status=$(command curl -sS -o "$body" -w '%{http_code}' "$@")
    if [ "$method" = GET ] && [ $tries -lt 100 ] \
      && { if [ -n "$want" ]; then [ "$status" != "$want" ]; else [ "${status#2}" = "$status" ]; fi; }; then
      tries=$((tries + 1)); sleep 0.1; continue
    fi
    break
  done
  jq -cn --arg s "$status" --rawfile b "$body" '{status: ($s | tonumber), body: $b}' >> "$DOCS_RESPONSES"
  cat "$body"
  rm -f "$body"
}
"#;

struct Run {
    responses: Vec<(u16, String)>,
    output: String,
}

fn run_block(b: &Block, shown: &[Shown], port: u16, env: &[(&str, String)], dir: &Path) -> Run {
    let code = b
        .code
        .replace("localhost:8080", &format!("127.0.0.1:{port}"));
    let responses = dir.join(unique("responses"));
    std::fs::write(&responses, "").unwrap();
    let bin_dir = inkstream_bin().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{code}\n"))
        .current_dir(dir)
        .env("DOCS_RESPONSES", &responses)
        .env(
            "DOCS_EXPECT",
            shown
                .iter()
                .map(|s| format!("{}:{}", s.call, s.status))
                .collect::<Vec<_>>()
                .join(" "),
        )
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run bash");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}:{}: the block failed ({}):\n{}\n--- output ---\n{output}",
        b.file,
        b.line,
        out.status,
        b.code
    );
    let responses = std::fs::read_to_string(&responses)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["status"].as_u64().unwrap() as u16,
                v["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    Run { responses, output }
}

/// Runs every block of `file` and checks what each shows; returns how many ran.
fn check_file(file: &'static str, port: u16, env: &[(&str, String)]) -> usize {
    let dir = std::env::temp_dir().join(unique("docs-run"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ran = 0;
    for b in shell_blocks(file).iter().filter(|b| b.run) {
        let shown = shown_responses(b);
        let run = run_block(b, &shown, port, env, &dir);
        let here = || {
            format!(
                "{}:{}:\n{}\n--- output ---\n{}",
                b.file, b.line, b.code, run.output
            )
        };
        for (i, (status, body)) in run.responses.iter().enumerate() {
            let expect: Vec<&Shown> = shown.iter().filter(|s| s.call == i).collect();
            if expect.is_empty() {
                assert!(
                    (200..300).contains(status),
                    "call {i} answered {status} {body} but the doc shows no response for it: {}",
                    here()
                );
            }
            for s in expect {
                assert_eq!(
                    *status,
                    s.status,
                    "call {i}: status (shown: `# → {}`; got {body}): {}",
                    s.text,
                    here()
                );
                if let Some(p) = &s.body {
                    let actual: Value = serde_json::from_str(body).unwrap_or_else(|e| {
                        panic!("call {i}: the answer is not JSON ({e}): {body}: {}", here())
                    });
                    assert!(
                        matches(p, &actual),
                        "call {i}: the answer does not have what the doc shows\nshown:  {}\nactual: {actual}\n{}",
                        s.text,
                        here()
                    );
                }
            }
        }
        let max_call = shown.iter().map(|s| s.call + 1).max().unwrap_or(0);
        assert!(
            run.responses.len() >= max_call,
            "the doc shows a response to call {max_call} but only {} ran: {}",
            run.responses.len(),
            here()
        );
        println!(
            "{}:{}: {} calls, {} shown responses checked",
            b.file,
            b.line,
            run.responses.len(),
            shown.len()
        );
        ran += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    ran
}

#[tokio::test]
async fn every_readme_shell_example_runs_against_a_live_server_and_answers_what_it_shows() {
    let server = Server::start(&[]).await;
    let ran = check_file("README.md", server.port, &[]);
    assert!(ran >= 2, "only {ran} README blocks ran");
}

#[tokio::test]
async fn every_api_shell_example_runs_against_a_live_server_with_auth_and_answers_what_it_shows() {
    let secret = "docs-secret";
    let key = "docs-app-key";
    let cfg = std::env::temp_dir().join(unique("docs-auth.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[auth]\njwt_secret = \"{secret}\"\n\
             [[auth.api_keys]]\nname = \"docs\"\nsha256 = \"{}\"\nscopes = [\"ingest\", \"read\", \"admin\"]\n",
            connectors::auth::hash_api_key(key)
        ),
    )
    .unwrap();
    // On Redis, so that the event-query example has pages to turn (the
    // embedded log keeps only what the dataflow has not yet acknowledged).
    let prefix = unique("docs");
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--redis-url",
        &inkstream_tests::redis_url(),
        "--set",
        &format!("redis.prefix=\"{prefix}\""),
    ])
    .await;
    // Something to page through before the first block runs.
    let now = now_ms();
    let resp = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .bearer_auth(key)
        .json(
            &(0..3)
                .map(|i| {
                    json!({"type": "writing.keystroke", "ts": now - 1000 + i, "user_id": "u1",
                            "data": {"keystrokes": 5, "words": 1, "chars": 5}})
                })
                .collect::<Vec<_>>(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    let jwt = |sub: &str, role: &str| {
        connectors::auth::sign_jwt(
            &json!({"sub": sub, "role": role, "projects": ["p1"], "documents": ["d1"],
                    "exp": now_ms() / 1000 + 600}),
            secret.as_bytes(),
        )
    };
    let env = [
        ("TOKEN", jwt("u1", "member")),
        ("ADMIN", jwt("admin1", "admin")),
        ("APP_KEY", key.to_owned()),
    ];
    let ran = check_file("docs/API.md", server.port, &env);
    assert!(ran >= 10, "only {ran} API.md blocks ran");
    let _ = std::fs::remove_file(cfg);
}

/// The matcher itself: what `…` means.
#[test]
fn shown_responses_match_loosely_where_they_say_so() {
    let p: Value = serde_json::from_str(&pattern_json(
        r#"{"accepted":2,"ids":["…","…"],"error":{"message":"1 of … (event 0: …)", …}}"#,
    ))
    .unwrap();
    let ok = json!({"accepted": 2, "duplicates": 0, "ids": ["a", "b"],
                    "error": {"message": "1 of 1 events (event 0: x)", "code": "c"}});
    assert!(matches(&p, &ok));
    let mut wrong = ok.clone();
    wrong["accepted"] = json!(3);
    assert!(!matches(&p, &wrong));
    let mut short = ok.clone();
    short["ids"] = json!(["a"]);
    assert!(!matches(&p, &short));
    let mut other = ok;
    other["error"]["message"] = json!("2 of 2 events");
    assert!(!matches(&p, &other));
    assert!(glob("a…c…e", "abcde") && !glob("a…c", "ab"));
    let any: Value = serde_json::from_str(&pattern_json(r#"{"xs":[…],"ys":[1, …]}"#)).unwrap();
    assert!(matches(&any, &json!({"xs": [], "ys": [1, 2, 3]})));
    assert!(!matches(&any, &json!({"xs": [1], "ys": [2]})));
}
