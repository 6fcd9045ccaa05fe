//! The walking skeleton end to end: the real `inkstream serve` binary, events
//! POSTed over HTTP, the live WPM message received on `/ws/analytics`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::StreamExt;
use inkstream_tests::{Server, next_json, now_ms, redis_url, subscribe, unique};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// POSTs keystrokes for `user` and returns the WPM messages and the latency
/// from the POST to the first message.
async fn wpm_round_trip(server: &Server, user: &str) -> Duration {
    let mut ws = subscribe(server, &format!("user:{user}")).await;
    let ts = now_ms();
    let body = format!(
        "{}\n{}\n",
        json!({"id": unique("k1"), "type":"writing.keystroke","ts":ts - 1000,"user_id":user,"project_id":"p1",
               "data":{"keystrokes":10,"words":2,"chars":11}}),
        json!({"id": unique("k2"), "type":"writing.keystroke","ts":ts,"user_id":user,"project_id":"p1",
               "data":{"keystrokes":20,"words":4,"chars":22}}),
    );
    let client = reqwest::Client::new();
    let sent = Instant::now();
    let resp = client
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ack: Value = resp.json().await.unwrap();
    assert_eq!(ack["accepted"], 2);

    let first = next_json(&mut ws).await;
    let latency = sent.elapsed();
    let second = next_json(&mut ws).await;
    for (m, offset, wpm) in [(&first, 1, 2.0), (&second, 2, 6.0)] {
        assert_eq!(m["op"], "message");
        assert_eq!(m["channel"], format!("user:{user}"));
        assert_eq!(m["offset"], offset);
        assert_eq!(m["data"]["type"], "analytics.metric_updated");
        assert_eq!(m["data"]["user_id"], user);
        assert_eq!(m["data"]["data"]["metric"], "wpm");
        assert_eq!(m["data"]["data"]["window_ms"], 60000);
        assert_eq!(m["data"]["data"]["value"], wpm);
    }
    latency
}

#[tokio::test]
async fn posted_keystrokes_reach_the_analytics_socket_as_live_wpm_embedded() {
    let server = Server::start(&[]).await;
    let latency = wpm_round_trip(&server, "u-embedded").await;
    println!("embedded: POST → WS WPM message in {latency:?}");
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
}

#[tokio::test]
async fn posted_keystrokes_reach_the_analytics_socket_as_live_wpm_through_redis() {
    let prefix = unique("e2e");
    let url = redis_url();
    let server = Server::start(&[
        "--redis-url",
        &url,
        "--set",
        &format!("redis.prefix={prefix}"),
    ])
    .await;
    let latency = wpm_round_trip(&server, "u-redis").await;
    println!("redis: POST → WS WPM message in {latency:?}");
    assert!(latency < Duration::from_secs(2), "took {latency:?}");
}

#[tokio::test]
async fn invalid_events_are_rejected_with_the_field_named_and_nothing_stored() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    let body = json!([
        {"type":"writing.keystroke","ts":now_ms(),"user_id":"u1","data":{"keystrokes":1,"words":1,"chars":1}},
        {"type":"writing.keystroke","ts":now_ms(),"user_id":"u1","data":{"keystrokes":1,"words":"3","chars":1}},
    ]);
    let resp = client
        .post(server.url("/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_events");
    assert_eq!(err["error"]["field"], "data.words");
    assert_eq!(err["error"]["rejected"][0]["index"], 1);
    assert_eq!(
        err["error"]["rejected"][0]["message"],
        "expected non-negative integer, got \"3\""
    );

    // ?partial=true stores the valid one and reports the other.
    let resp = client
        .post(server.url("/v1/events?partial=true"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let ok: Value = resp.json().await.unwrap();
    assert_eq!(ok["accepted"], 1);
    assert_eq!(ok["rejected"][0]["index"], 1);

    let resp = client
        .post(server.url("/v1/events"))
        .header("content-type", "application/json")
        .body("{\"type\":")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_json");

    let resp = client
        .post(server.url("/v1/events"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
}

#[tokio::test]
async fn metrics_and_health_answer() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    let health: Value = client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "inkstream_dataflow_watermark_seconds",
        "inkstream_dataflow_events_in_total",
        "inkstream_http_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut server = Server::start(&[]).await;
    let mut ws = subscribe(&server, "user:u-stop").await;
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate(Duration::from_secs(15));
        (s, server)
    })
    .await
    .unwrap();
    let (status, _server) = status;
    let status = status.expect("exited within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // The socket was closed with 1001 (going away), not dropped.
    let close = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn sigterm_after_ingest_leaves_every_acknowledged_event_in_redis_and_processed() {
    let prefix = unique("drain");
    let url = redis_url();
    let mut server = Server::start(&[
        "--redis-url",
        &url,
        "--set",
        &format!("redis.prefix={prefix}"),
    ])
    .await;
    let client = reqwest::Client::new();
    let ts = now_ms();
    let mut accepted = 0;
    for batch in 0..10 {
        let body: String = (0..50)
            .map(|i| {
                json!({"id": format!("{prefix}-{batch}-{i}"), "type":"writing.keystroke","ts": ts + i,
                       "user_id": format!("u{}", i % 7), "data":{"keystrokes":5,"words":1,"chars":5}})
                .to_string()
                    + "\n"
            })
            .collect();
        let resp = client
            .post(server.url("/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        accepted += resp.json::<Value>().await.unwrap()["accepted"]
            .as_u64()
            .unwrap();
    }
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("exited within 15 s");
    assert!(status.success());

    let redis = redis::Client::open(url).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let mut len = 0u64;
    let mut count = 0i64;
    for shard in 0..8 {
        let stream = format!("{prefix}:events:writing:{shard}");
        // Events, not entries: an entry holds up to 16.
        let entries: Vec<(String, std::collections::HashMap<String, redis::Value>)> =
            redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
        len += entries
            .iter()
            .map(|(_, fields)| connectors::event_log::redis::events_of_fields(fields).len() as u64)
            .sum::<u64>();
        // XPENDING summary: [count, first, last, consumers]
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("dataflow")
            .query_async(&mut conn)
            .await
            .unwrap();
        count += match summary {
            redis::Value::Array(items) => match &items[0] {
                redis::Value::Int(n) => *n,
                other => panic!("unexpected XPENDING count {other:?}"),
            },
            other => panic!("unexpected XPENDING reply {other:?}"),
        };
    }
    assert_eq!(len, accepted, "every acknowledged event is in the log");
    assert_eq!(
        count, 0,
        "the dataflow drained and acknowledged everything it read"
    );
}

/// Ingest, the dataflow and the fanout over `rediss://`: a real
/// redis-server serving only TLS with a certificate from a CA made here,
/// requiring a client certificate (`redis.tls.cert_file`/`key_file`).
#[tokio::test]
async fn posted_keystrokes_reach_the_analytics_socket_through_redis_over_tls() {
    use inkstream_tests::tls::{TestPki, TlsRedis};
    let pki = TestPki::new("redis-tls");
    let redis = TlsRedis::start(&pki);
    let prefix = unique("e2e-tls");
    let set = |k: &str, p: &std::path::Path| format!("redis.tls.{k}={:?}", p.display().to_string());
    let tls_args = [
        set("ca_file", &pki.ca_file),
        set("cert_file", &pki.client_cert),
        set("key_file", &pki.client_key),
    ];
    let prefix_arg = format!("redis.prefix={prefix}");
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str(), "--set", &prefix_arg];
    for a in &tls_args {
        args.extend(["--set", a.as_str()]);
    }
    let server = Server::start(&args).await;
    let latency = wpm_round_trip(&server, "u-rediss").await;
    println!("rediss: POST → WS WPM message in {latency:?}");

    // The events, the fanout's history and the lease are in the TLS Redis.
    let files = connectors::tls::TlsFiles {
        ca_file: Some(pki.ca_file.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
    };
    let client = connectors::tls::redis_client(&redis.url(), &files).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for part in [":events:", ":ws:", ":lease:"] {
        assert!(
            keys.iter().any(|k| k.contains(part)),
            "no `{part}` key under {prefix} in the TLS redis: {keys:?}"
        );
    }
}

/// Without the CA, the server's certificate is not trusted: `serve` exits
/// non-zero saying so, instead of talking to an unverified Redis.
#[tokio::test]
async fn serve_refuses_a_redis_whose_certificate_it_cannot_verify() {
    use inkstream_tests::tls::{TestPki, TlsRedis};
    let pki = TestPki::new("redis-tls-untrusted");
    let redis = TlsRedis::start(&pki);
    let mut child = std::process::Command::new(inkstream_tests::inkstream_bin())
        .args(["serve", "--port", &inkstream_tests::free_port().to_string()])
        .args(["--redis-url", &redis.url()])
        .env_remove("REDIS_URL")
        .env_remove("KAFKA_BROKERS")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stderr) = inkstream_tests::exit_within(&mut child, Duration::from_secs(60))
        .await
        .expect("serve did not exit within 60 s against a Redis whose certificate is untrusted");
    assert!(
        !status.success(),
        "serve started against an untrusted Redis"
    );
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the error does not say the certificate is the problem: {stderr}"
    );
}

/// `serve` runs without transparent huge pages (docs/BENCHMARKS.md
/// "Ratios": a burst of new writers otherwise zeroes 2 MB pages on the
/// dataflow's thread): the kernel reports THP off for the process.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn serve_runs_without_transparent_huge_pages() {
    let server = Server::start(&[]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("the kernel reports THP_enabled in /proc/<pid>/status (Linux 5.0+)");
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("0"),
        "transparent huge pages are on for serve: {line}"
    );
}
