//! The OpenAPI document as a contract: schemathesis (PyPI, pinned in
//! `tests/run.sh`) runs every check it has (`--checks all`: server errors,
//! status codes, content types, response schemas, schema-valid requests
//! accepted, schema-violating requests rejected, missing headers, auth
//! enforced, …) against a live `inkstream serve` with credentials, from
//! `/openapi.json`, and must find nothing.
//!
//! Deterministic (`--generation-deterministic`: the same cases every run)
//! and bounded (`--max-examples`). Configuration and the NDJSON serializer
//! live in `tests/schemathesis/`.
//!
//! The server runs with `ingest.check_skew = false`: with the default
//! check, `ts` must lie in a window that moves with the server clock, which
//! a document can state (it does, at the time it is served) but a generator
//! cannot hold to at the boundaries (a case at the lower bound is valid when
//! generated and too old a moment later). The window itself is tested in
//! `tests/tests/ingest.rs` and `schemas`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, now_ms, python, unique};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Instant;

const KEY: &str = "k-schemathesis-admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_the_openapi_contract() {
    let cfg = std::env::temp_dir().join(unique("schemathesis.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[auth]\njwt_secret = \"schemathesis-secret\"\n[[auth.api_keys]]\nname = \"ops\"\n\
             sha256 = \"{}\"\nscopes = [\"admin\", \"read\", \"ingest\"]\n",
            connectors::auth::hash_api_key(KEY)
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "ingest.check_skew=false",
    ])
    .await;

    // A real cursor for the range reads (an opaque token only the server issues).
    let http = reqwest::Client::new();
    let events: Vec<Value> = (0..2)
        .map(|i| json!({"type": "system.error", "ts": now_ms(), "data": {"service": "st", "message": format!("m{i}")}}))
        .collect();
    let r = http
        .post(server.url("/v1/events"))
        .bearer_auth(KEY)
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let page: Value = http
        .get(server.url("/api/realtime/events/system?limit=1"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next_cursor")
        .to_owned();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis");
    let bin = std::path::Path::new(&python()).with_file_name("schemathesis");
    let started = Instant::now();
    let url = server.url("/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .current_dir(&dir)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("INKSTREAM_ST_CURSOR", cursor)
            .env("PYTHONPATH", &dir)
            .arg("--config-file")
            .arg(dir.join("schemathesis.toml"))
            .args(["run", &url, "--checks", "all"])
            .args(["-H", &format!("Authorization: Bearer {KEY}")])
            .args(["--generation-deterministic", "--max-examples", "20"])
            .args(["--workers", "1", "--no-color"])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    println!(
        "schemathesis: exit {:?} in {:.0} s",
        out.status.code(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found failures (exit {:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    let summary = stdout
        .lines()
        .find(|l| l.contains("generated"))
        .unwrap_or("");
    assert!(
        !summary.contains("found"),
        "schemathesis reported failures: {summary}"
    );
    let _ = std::fs::remove_file(cfg);
}
