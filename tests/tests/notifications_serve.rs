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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// A webhook receiver: answers 503 (try again) until [`Hook::up`], then
/// 200, and keeps the bodies it answered 200 to. When [`Hook::stall`]ed,
/// it answers nothing until then (the connection stays open).
struct Hook {
    port: u16,
    up: Arc<AtomicBool>,
    stall: Arc<AtomicBool>,
    tries: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    async fn start() -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = Hook {
            port: listener.local_addr().unwrap().port(),
            up: Arc::default(),
            stall: Arc::default(),
            tries: Arc::default(),
            delivered: Arc::default(),
        };
        let (up, stall, tries, delivered) = (
            hook.up.clone(),
            hook.stall.clone(),
            hook.tries.clone(),
            hook.delivered.clone(),
        );
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                if stall.load(Ordering::SeqCst) && !up.load(Ordering::SeqCst) {
                    tries.fetch_add(1, Ordering::SeqCst);
                    parked.push(socket);
                    continue;
                }
                let (up, tries, delivered) = (up.clone(), tries.clone(), delivered.clone());
                tokio::spawn(read_request(socket, move |body| {
                    tries.fetch_add(1, Ordering::SeqCst);
                    if up.load(Ordering::SeqCst) {
                        delivered.lock().unwrap().push(body);
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    }
                }));
            }
        });
        hook
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn stall(&self) {
        self.stall.store(true, Ordering::SeqCst);
    }
}

/// Reads one HTTP/1.1 request, answers with `status(body)` and closes.
async fn read_request(
    mut socket: tokio::net::TcpStream,
    status: impl FnOnce(String) -> &'static str,
) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, length) = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    let answer = format!(
        "HTTP/1.1 {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status(body)
    );
    socket.write_all(answer.as_bytes()).await.ok()?;
    Some(())
}

/// A proxy from the environment must not carry a webhook past the
/// private-destination check: through `HTTP_PROXY` the check would see only
/// the proxy's address, and the proxy would resolve and call the webhook's
/// host (here `localhost`) itself. The delivery must be refused, and the
/// "proxy" (a listener that answers 200) must receive nothing.
#[tokio::test]
async fn an_environment_proxy_does_not_carry_a_webhook_to_a_private_host() {
    let proxy = Hook::start().await;
    proxy.up();
    let prefix = unique("proxy-ssrf");
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(
        &config,
        r#"
[notifications]
admins = ["ada"]
[notifications.retry]
max_attempts = 1
[notifications.defaults]
timezone = "UTC"
quiet_hours = { start = "00:00", end = "00:00" }
channels = { critical = ["webhook"] }
[notifications.webhook]
urls = ["http://localhost:9/internal-admin"]
"#,
    )
    .unwrap();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ];
    let server =
        Server::start_with_env(free_port(), &env, &["--config", config.to_str().unwrap()]).await;
    post_error(&server, "billing").await;
    let refused = "inkstream_notification_destinations_refused_total";
    let deadline = Instant::now() + Duration::from_secs(30);
    while inkstream_tests::metric(&server, refused).await < 1.0 {
        assert!(
            proxy.delivered.lock().unwrap().is_empty(),
            "the webhook to localhost went out through the proxy: {:?}",
            proxy.delivered.lock().unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "the webhook to localhost was never refused ({} requests reached the proxy)",
            proxy.tries.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy.tries.load(Ordering::SeqCst),
        0,
        "a request reached the proxy"
    );
    let _ = std::fs::remove_file(&config);
}

/// Two instances on one Redis, notifications on: `system.error` alerts go
/// to admin ada by webhook only (no quiet hours, retries after ~0.5 s). The
/// first holds the dataflow lease (and runs the notifier's task); the
/// second stands by, a gateway.
struct Pair {
    holder: Server,
    other: Server,
    config: PathBuf,
}

/// The configuration of [`Pair`] (and of a single such instance) in a
/// file of its own under `prefix`.
fn webhook_config(prefix: &str, hook: &Hook) -> PathBuf {
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[redis]
prefix = "{prefix}"
[dataflow]
lease_ttl = "3s"
[notifications]
admins = ["ada"]
allow_private_destinations = true
[notifications.retry]
max_attempts = 1000
base_ms = 500
max_ms = 1000
timeout_ms = 120000
[notifications.defaults]
timezone = "UTC"
quiet_hours = {{ start = "00:00", end = "00:00" }}
channels = {{ critical = ["webhook"] }}
[notifications.webhook]
urls = ["{}"]
"#,
            hook.url()
        ),
    )
    .unwrap();
    config
}

impl Pair {
    async fn start(name: &str, hook: &Hook) -> Pair {
        let prefix = unique(name);
        let config = webhook_config(&prefix, hook);
        let url = redis_url();
        let args = ["--config", config.to_str().unwrap(), "--redis-url", &url];
        let holder = Server::start(&args).await;
        wait_active(&holder, "the first instance never took the lease").await;
        let other = Server::start(&args).await;
        assert!(
            !dataflow_active(&other).await,
            "the second instance runs no dataflow"
        );
        Pair {
            holder,
            other,
            config,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Waits (30 s at most) for the hook's first delivery; returns its body.
async fn first_delivery(hook: &Hook, never: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(body) = hook.delivered.lock().unwrap().first() {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{never} ({} tries in all)",
            hook.tries.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (30 s at most) until `server` runs the dataflow.
async fn wait_active(server: &Server, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dataflow_active(server).await {
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dataflow_active(server: &Server) -> bool {
    inkstream_tests::metric(server, "inkstream_dataflow_active").await == 1.0
}

/// A `system.error` of `service`: a CRITICAL alert "Error in <service>"
/// to the admins.
async fn post_error(server: &Server, service: &str) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .json(&json!({"id": unique("err"), "type": "system.error", "ts": now_ms(),
                      "data": {"service": service, "message": "down", "severity": "critical", "code": "E42"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// The holder routes an alert whose webhook delivery fails (503) and is
/// killed (SIGKILL) while it waits for its retry. The standby, started
/// before the alert, takes the lease over and delivers it: its notifier
/// loads the pending deliveries when it starts running, not when its
/// process did (until 2026-12-07 it had loaded them at process start and
/// never saw this one; the alert's `seen` mark kept it from being routed
/// again, so it was lost).
#[tokio::test]
async fn a_standby_that_takes_over_delivers_what_the_holder_left_pending() {
    let hook = Hook::start().await;
    let mut pair = Pair::start("notify-failover", &hook).await;

    post_error(&pair.holder, "billing").await;
    // The delivery is saved as pending before its first try.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.tries.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the holder never tried the webhook"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pair.holder.child.kill().unwrap(); // SIGKILL: the lease is not released
    pair.holder.child.wait().unwrap();
    hook.up();
    wait_active(&pair.other, "the standby never took the lease over").await;
    let body = first_delivery(
        &hook,
        "the standby never delivered the pending webhook the holder left",
    )
    .await;
    assert!(body.contains("Error in billing"), "{body}");
    let delivered = hook.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "delivered once: {delivered:?}");
}

/// A user sets preferences through one gateway; the instance running the
/// notifier routes with them (until 2026-12-07 each instance knew only the
/// preferences set through it and those stored when it started).
#[tokio::test]
async fn preferences_set_through_another_instance_are_the_ones_alerts_are_routed_with() {
    let hook = Hook::start().await;
    hook.up();
    let pair = Pair::start("notify-prefs", &hook).await;
    let (holder, gateway) = (&pair.holder, &pair.other);
    let http = reqwest::Client::new();
    let prefs = "/api/realtime/notifications/preferences?user_id=ada";
    let r = http
        .put(gateway.url(prefs))
        .json(&json!({"channels": {"critical": ["in_app"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = http
            .get(holder.url(prefs))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["preferences"]["channels"]["critical"] == json!(["in_app"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the preferences set through the gateway never reached the holder: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    post_error(gateway, "billing").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = http
            .get(holder.url("/api/realtime/notifications?user_id=ada"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["total"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alert never reached ada in-app, the channel she chose: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        hook.delivered.lock().unwrap().is_empty(),
        "the default channel (webhook) was used"
    );
}

/// A custom notification accepted by a gateway (an instance without the
/// notifier's task) is delivered by the instance that runs it: accepted
/// means queued in Redis (until 2026-12-07 it waited in the gateway's
/// memory for a task that never ran there, and was lost when the gateway
/// stopped).
#[tokio::test]
async fn a_notification_sent_through_a_gateway_is_delivered_by_the_holder() {
    let hook = Hook::start().await;
    hook.up();
    let pair = Pair::start("notify-send", &hook).await;
    let gateway = &pair.other;
    let r = reqwest::Client::new()
        .post(gateway.url("/api/realtime/notifications/send"))
        .json(
            &json!({"recipient": "ada", "priority": "CRITICAL", "title": "Press deadline moved",
                      "body": "to Friday", "id": "deadline-1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let body = first_delivery(
        &hook,
        "the notification the gateway accepted was never delivered",
    )
    .await;
    assert!(body.contains("Press deadline moved"), "{body}");
}

/// An alert waits in the notifier's queue (the task is busy with a
/// webhook that does not answer) while a checkpoint covering it completes;
/// the instance is killed (SIGKILL) and restarted. The alert is delivered:
/// the checkpoint queued it in Redis first (until 2026-12-07 it was lost:
/// the restart does not derive what a checkpoint covers, and the alert had
/// never been saved).
#[tokio::test]
async fn an_alert_a_checkpoint_covered_before_it_was_routed_survives_a_crash() {
    let hook = Hook::start().await;
    hook.stall();
    let prefix = unique("notify-ckpt");
    let config = webhook_config(&prefix, &hook);
    let url = redis_url();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--redis-url",
        &url,
        "--set",
        "checkpoint.store=redis",
        "--set",
        "checkpoint.interval=1s",
    ];
    let port = inkstream_tests::free_port();
    let mut first = Server::start_on(port, &args).await;
    post_error(&first, "billing").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.tries.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first alert's webhook was never tried"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The task waits for that answer; the second alert waits behind it.
    let ts = now_ms();
    post_error(&first, "search").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while inkstream_tests::checkpoint_barrier(&prefix).await <= ts + 1_000 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint past the second alert completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    hook.up();

    let _again = Server::start_on(port, &args).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = hook.delivered.lock().unwrap().clone();
        if delivered.iter().any(|b| b.contains("Error in search")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second alert was never delivered; delivered: {delivered:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&config);
}
