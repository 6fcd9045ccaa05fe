//! Notifications through the real `inkstream serve`: a `system.error` POSTed
//! over HTTP becomes a CRITICAL alert (built-in rule) to `role:admin`, which
//! the notifier resolves from `notifications.admins` and delivers in-app
//! (stored in Redis, listed by the endpoint) and by email to a real SMTP
//! server (aiosmtpd).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::SinkExt;
use inkstream_tests::{Server, free_port, next_json, now_ms, redis_url, unique};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Smtpd {
    child: Child,
    dir: PathBuf,
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn smtpd(port: u16) -> Smtpd {
    let python = std::env::var("INKSTREAM_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("INKSTREAM_TEST_PYTHON is not set: run the suite with tests/run.sh (it installs aiosmtpd)");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/smtp_sink.py");
    let dir = std::env::temp_dir().join(unique("smtp-serve"));
    let child = Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start aiosmtpd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtpd { child, dir }
}

/// A socket on /ws/notifications subscribed to `user:{user}`.
async fn in_app_feed(server: &Server, user: &str) -> inkstream_tests::Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/ws/notifications"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"op": "subscribe", "channel": format!("user:{user}")}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["op"], "subscribed");
    ws
}

#[tokio::test]
async fn system_error_posted_to_serve_reaches_the_admin_in_app_and_by_smtp() {
    let smtp_port = free_port();
    let smtp = smtpd(smtp_port);
    let prefix = unique("notify-serve");
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[redis]
prefix = "{prefix}"
[notifications]
admins = ["ada"]
[notifications.defaults]
timezone = "UTC"
quiet_hours = {{ start = "00:00", end = "00:00" }}
email = "ada@example.com"
[notifications.smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "inkstream <noreply@example.com>"
"#
        ),
    )
    .unwrap();
    let url = redis_url();
    let server = Server::start(&["--config", config.to_str().unwrap(), "--redis-url", &url]).await;
    // The in-app delivery is pushed on /ws/notifications, channel user:ada.
    let mut ws = in_app_feed(&server, "ada").await;
    let http = reqwest::Client::new();
    let r = http
        .post(server.url("/v1/events"))
        .json(&json!({"id": unique("err"), "type": "system.error", "ts": now_ms(),
                      "data": {"service": "billing", "message": "db down", "severity": "critical", "code": "E42"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let v: Value = http
            .get(server.url("/api/realtime/notifications?user_id=ada"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["total"] == 1 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["notifications"][0]["title"], "Error in billing");
    assert_eq!(list["notifications"][0]["priority"], "CRITICAL");
    assert_eq!(list["notifications"][0]["rule"], "system_error");
    let pushed = loop {
        let m = next_json(&mut ws).await;
        if m["op"] == "message" {
            break m;
        }
    };
    assert_eq!(pushed["data"]["type"], "system.notification", "{pushed}");
    assert_eq!(pushed["data"]["data"]["recipient_id"], "ada", "{pushed}");
    assert_eq!(
        pushed["data"]["data"]["title"], "Error in billing",
        "{pushed}"
    );

    let eml = smtp.dir.join("1.eml");
    while !eml.exists() {
        assert!(Instant::now() < deadline, "no mail reached the SMTP server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = std::fs::read_to_string(&eml).unwrap();
    assert!(raw.contains("Subject: Error in billing"), "{raw}");
    assert!(raw.contains("To: ada@example.com"), "{raw}");

    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"inkstream_notifications_total{channel="email",outcome="delivered",priority="critical"} 1"#),
        "{metrics}"
    );
    let _ = std::fs::remove_file(&config);
}

/// An @mention is a MEDIUM alert; its in-app delivery is not batched (the
/// batching window is for email, SMS and webhooks): the mentioned user's
/// socket gets the notification frame within a second of the comment.
#[tokio::test]
async fn mention_in_a_comment_reaches_the_in_app_feed_within_a_second() {
    let config = std::env::temp_dir().join(format!("{}.toml", unique("mention")));
    // No quiet hours: the test must not depend on the hour it runs at.
    std::fs::write(
        &config,
        "[notifications.defaults]\ntimezone = \"UTC\"\nquiet_hours = { start = \"00:00\", end = \"00:00\" }\n",
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]).await;
    let mut ws = in_app_feed(&server, "grace").await;

    let sent = Instant::now();
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(
            &json!({"type": "collaboration.comment_added", "ts": now_ms(),
                      "user_id": "ada", "project_id": "p1", "document_id": "d1",
                      "data": {"comment_id": "c1", "paragraph": 3, "mentions": ["grace"]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let pushed = tokio::time::timeout_at((sent + Duration::from_secs(1)).into(), async {
        loop {
            let m = next_json(&mut ws).await;
            if m["op"] == "message" {
                break m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no in-app frame for grace within 1 s of the comment"));
    assert_eq!(pushed["data"]["type"], "system.notification", "{pushed}");
    assert_eq!(pushed["data"]["data"]["recipient_id"], "grace", "{pushed}");
    assert_eq!(pushed["data"]["data"]["priority"], "MEDIUM", "{pushed}");
    assert_eq!(
        pushed["data"]["data"]["title"], "ada mentioned you",
        "{pushed}"
    );
    let _ = std::fs::remove_file(&config);
}
