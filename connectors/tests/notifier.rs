//! The notifier against real servers on loopback: aiosmtpd (a real SMTP
//! server, from the venv `tests/run.sh` builds), an axum server in this
//! process standing in for the email/SMS provider and the webhook receiver
//! (failing on demand), and the real redis-server of the harness. Time is a
//! [`ManualClock`]; the notifier is driven step by step (`on_event`, `tick`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use inkstream_connectors::notifier::metrics::NotifierMetrics;
use inkstream_connectors::notifier::policy::{Channel, Preferences};
use inkstream_connectors::notifier::{
    HttpApiConfig, ManualClock, Notifier, NotifierConfig, SmtpConfig, SmtpTls, Store, WebhookConfig,
};
use inkstream_tests::tls::TestPki;
use schemas::payload::AlertTriggered;
use schemas::payload::Priority;
use schemas::{Event, Payload};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NY: &str = "America/New_York";

fn local(tz: &str, h: i8, mi: i8) -> i64 {
    jiff::civil::date(2026, 11, 30)
        .at(h, mi, 0, 0)
        .in_tz(tz)
        .unwrap()
        .timestamp()
        .as_millisecond()
}

// --- the fake provider ---------------------------------------------------------

#[derive(Debug, Clone)]
struct Received {
    path: String,
    idempotency_key: String,
    signature: Option<String>,
    body: Bytes,
    status: u16,
}

#[derive(Default)]
struct ProviderState {
    /// Statuses to answer next, per path; 200 when empty.
    plan: HashMap<String, VecDeque<u16>>,
    /// A status answered forever, per path (after the plan).
    always: HashMap<String, u16>,
    /// Delays of the next answers, per path (a provider too slow to answer).
    delays: HashMap<String, VecDeque<u64>>,
    received: Vec<Received>,
}

/// An HTTP server in this process: the Brevo-style email and SMS API and a
/// webhook receiver, answering what the test planned.
#[derive(Clone)]
struct Provider {
    state: Arc<Mutex<ProviderState>>,
    base: String,
}

const EMAIL: &str = "/v3/smtp/email";
const SMS: &str = "/v3/transactionalSMS/sms";
const HOOK: &str = "/hook";

impl Provider {
    async fn start() -> Provider {
        Provider::serve(None).await
    }

    /// The same provider behind https, with `pki`'s server certificate.
    async fn start_https(pki: &TestPki) -> Provider {
        Provider::serve(Some(pki.server_config())).await
    }

    async fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Provider {
        let state = Arc::new(Mutex::new(ProviderState::default()));
        async fn handle(
            State(s): State<Arc<Mutex<ProviderState>>>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> (StatusCode, [(axum::http::HeaderName, &'static str); 1]) {
            let path = uri.path().to_owned();
            let path_for_redirect = HOOK;
            let (status, delay) = {
                let mut g = s.lock().unwrap();
                let delay = g.delays.get_mut(&path).and_then(VecDeque::pop_front);
                let status = match g.plan.get_mut(&path).and_then(VecDeque::pop_front) {
                    Some(s) => s,
                    None => g.always.get(&path).copied().unwrap_or(200),
                };
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                g.received.push(Received {
                    path,
                    idempotency_key: h("idempotency-key").unwrap_or_default(),
                    signature: h("x-inkstream-signature"),
                    body,
                    status,
                });
                (status, delay)
            };
            // Recorded on arrival: a request the client gave up on was still received.
            if let Some(ms) = delay {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            // Every answer names a place to go: a client that followed
            // redirects would come back (never followed: one request per try).
            (
                StatusCode::from_u16(status).unwrap(),
                [(axum::http::header::LOCATION, path_for_redirect)],
            )
        }
        let app = Router::new()
            .route(EMAIL, axum::routing::post(handle))
            .route(SMS, axum::routing::post(handle))
            .route(HOOK, axum::routing::post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
                format!("http://{addr}")
            }
            Some(config) => {
                let tls = TlsListener {
                    tcp: listener,
                    acceptor: tokio_rustls::TlsAcceptor::from(config),
                };
                tokio::spawn(async move { axum::serve(tls, app).await.unwrap() });
                format!("https://{addr}")
            }
        };
        Provider { state, base }
    }

    fn plan(&self, path: &str, statuses: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .plan
            .insert(path.into(), statuses.iter().copied().collect());
    }

    fn delay(&self, path: &str, delays_ms: &[u64]) {
        self.state
            .lock()
            .unwrap()
            .delays
            .insert(path.into(), delays_ms.iter().copied().collect());
    }

    fn always(&self, path: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .always
            .insert(path.into(), status);
    }

    fn received(&self, path: &str) -> Vec<Received> {
        let g = self.state.lock().unwrap();
        g.received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn api(&self) -> HttpApiConfig {
        HttpApiConfig {
            base_url: self.base.clone(),
            api_key: "test-key".into(),
            sender: "inkstream@example.com".into(),
        }
    }
}

/// TLS in front of a TCP listener, for `axum::serve` (a failed handshake
/// is dropped; the next connection is accepted).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

// --- the real SMTP server ------------------------------------------------------

/// aiosmtpd on a free port, writing each message to a directory.
struct Smtpd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Smtpd {
    fn start() -> Smtpd {
        Smtpd::start_with(&[])
    }

    /// aiosmtpd with `mode` (`starttls`: STARTTLS required before MAIL;
    /// `implicit`: TLS from the first byte) and `pki`'s server certificate.
    fn start_tls(mode: &str, pki: &TestPki) -> Smtpd {
        Smtpd::start_with(&[
            mode.to_owned(),
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
        ])
    }

    fn start_with(tls_args: &[String]) -> Smtpd {
        let python = std::env::var("INKSTREAM_TEST_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| {
            panic!(
                "INKSTREAM_TEST_PYTHON is not set: this test needs a real SMTP server (aiosmtpd). \
                 Run the suite with `tests/run.sh`, which installs it into its venv."
            )
        });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python/smtp_sink.py");
        let dir = std::env::temp_dir().join(inkstream_tests::unique("smtp"));
        let port = inkstream_tests::free_port();
        let child = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(&dir)
            .args(tls_args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not open port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtpd { child, port, dir }
    }

    fn config(&self) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            from: "inkstream <noreply@example.com>".into(),
            username: None,
            password: None,
            tls: None,
        }
    }

    /// The messages received so far: (envelope recipients, raw message).
    fn messages(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.dir.join(format!("{n}.eml"));
            let Ok(raw) = std::fs::read_to_string(&eml) else {
                break;
            };
            // Undo quoted-printable soft line breaks so the checks read plainly.
            let raw = raw.replace("=\r\n", "").replace("=\n", "");
            let rcpt =
                std::fs::read_to_string(self.dir.join(format!("{n}.rcpt"))).unwrap_or_default();
            out.push((rcpt, raw));
        }
        out
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// --- helpers ---------------------------------------------------------------------

fn alert_event(id: &str, priority: Priority, recipient: &str, dedup: &str, title: &str) -> Event {
    Event {
        id: id.into(),
        ts: 0,
        user_id: (!recipient.contains(':')).then(|| recipient.to_owned()),
        project_id: None,
        document_id: None,
        data: Payload::AnalyticsAlertTriggered(AlertTriggered {
            rule: "test_rule".into(),
            priority,
            recipient_id: recipient.into(),
            dedup_key: dedup.into(),
            title: title.into(),
            body: format!("body of {title}"),
            source_event_id: format!("src-{id}"),
        }),
    }
}

fn ada(tz: &str) -> Preferences {
    Preferences {
        timezone: tz.into(),
        email: Some("ada@example.com".into()),
        phone: Some("+15550100".into()),
        ..Preferences::default()
    }
}

fn base_config() -> NotifierConfig {
    let mut c = NotifierConfig {
        // The provider, the webhook receiver and aiosmtpd run on loopback,
        // which deliveries refuse by default.
        allow_private_destinations: true,
        ..Default::default()
    };
    c.retry.base_ms = 1000;
    c.retry.jitter = 0.2;
    c
}

/// Enough to pass any backoff of attempt `n` (base · 2^(n-1) · 1.2).
fn after_backoff(attempt: u32) -> i64 {
    (1000.0 * 2f64.powi(attempt as i32 - 1) * 1.25) as i64
}

async fn start(
    config: NotifierConfig,
    store: Store,
    clock: &ManualClock,
) -> (Notifier<ManualClock>, NotifierMetrics) {
    let metrics = NotifierMetrics::standalone();
    let (n, rx) = Notifier::start(config, store, None, metrics.clone(), clock.clone())
        .await
        .expect("start the notifier");
    // Driven step by step; the queue is not used.
    std::mem::forget(rx);
    (n, metrics)
}

fn count(m: &NotifierMetrics, priority: &str, channel: &str, outcome: &str) -> u64 {
    m.total
        .with_label_values(&[priority, channel, outcome])
        .get()
}

fn redis_store(prefix: &str) -> Store {
    Store::redis(&inkstream_tests::redis_url(), prefix, &Default::default()).expect("redis store")
}

// --- the issue's "done when" scenarios ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_error_at_3am_user_time_reaches_the_admin_by_in_app_email_and_sms() {
    let smtpd = Smtpd::start();
    let provider = Provider::start().await;
    let mut config = base_config();
    config.admins = vec!["ada".into()];
    config.smtp = Some(smtpd.config());
    config.sms = Some(provider.api());
    let clock = ManualClock::new(local(NY, 3, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    n.handle().set_prefs("ada", ada(NY)).await.unwrap();

    // The built-in rule's shape: CRITICAL to `role:admin`.
    let e = alert_event(
        "d-err-1",
        Priority::Critical,
        "role:admin",
        "system_error:api:E1",
        "Error in api",
    );
    n.on_event(&e).await.unwrap();

    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", true, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1, "in-app notification stored");
    assert_eq!(inbox[0].title, "Error in api");
    let mails = smtpd.messages();
    assert_eq!(mails.len(), 1, "one mail received by the SMTP server");
    let (rcpt, raw) = &mails[0];
    assert_eq!(rcpt, "ada@example.com");
    assert!(raw.contains("To: ada@example.com"), "{raw}");
    assert!(raw.contains("Subject: Error in api"), "{raw}");
    assert!(raw.contains("multipart/alternative"), "{raw}");
    assert!(raw.contains("Content-Type: text/plain"), "{raw}");
    assert!(raw.contains("Content-Type: text/html"), "{raw}");
    assert!(raw.contains("<h1>Error in api</h1>"), "{raw}");
    let sms = provider.received(SMS);
    assert_eq!(sms.len(), 1, "one SMS");
    let body: serde_json::Value = serde_json::from_slice(&sms[0].body).unwrap();
    assert_eq!(body["recipient"], "+15550100");
    assert!(body["content"].as_str().unwrap().contains("Error in api"));
    for ch in ["in_app", "email", "sms"] {
        assert_eq!(count(&metrics, "critical", ch, "delivered"), 1, "{ch}");
    }
    // Re-emitted after a restore (same id): nothing is sent again.
    n.on_event(&e).await.unwrap();
    assert_eq!(smtpd.messages().len(), 1);
    assert_eq!(provider.received(SMS).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_state_badge_at_3am_arrives_in_the_8am_local_digest() {
    let smtpd = Smtpd::start();
    let mut config = base_config();
    config.smtp = Some(smtpd.config());
    let clock = ManualClock::new(local(NY, 3, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    n.handle().set_prefs("ada", ada(NY)).await.unwrap();

    let badge = alert_event(
        "d-flow-1",
        Priority::Low,
        "ada",
        "flow_state_entered:ada",
        "You're in flow",
    );
    n.on_event(&badge).await.unwrap();
    n.tick().await.unwrap();
    assert_eq!(count(&metrics, "low", "digest", "digested"), 1);
    clock.set(local(NY, 7, 59));
    n.tick().await.unwrap();
    assert!(smtpd.messages().is_empty(), "nothing before 08:00 local");
    assert_eq!(
        n.handle()
            .store
            .in_app_list("ada", false, 0, 10)
            .await
            .unwrap()
            .1,
        0
    );
    assert_eq!(
        metrics.pending.get(),
        1,
        "the digest queue counts as pending"
    );

    clock.set(local(NY, 8, 0));
    n.tick().await.unwrap();
    let mails = smtpd.messages();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].1.contains("Subject: Your digest: 1 notifications"),
        "{}",
        mails[0].1
    );
    assert!(mails[0].1.contains("in flow"), "{}", mails[0].1);
    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].body.contains("You're in flow"));
    assert_eq!(metrics.pending.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_alert_within_the_hour_is_suppressed_and_reported_in_the_next_delivery() {
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(base_config(), Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::InApp];
    n.handle().set_prefs("ada", p).await.unwrap();

    for i in 0..3 {
        clock.set(local("UTC", 12, i * 10));
        let e = alert_event(
            &format!("d-pub-{i}"),
            Priority::High,
            "ada",
            "book_published:b1",
            "Published",
        );
        n.on_event(&e).await.unwrap();
    }
    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1, "the repeats were suppressed");
    assert_eq!(count(&metrics, "high", "in_app", "suppressed_muted"), 2);

    clock.set(local("UTC", 13, 5));
    let e = alert_event(
        "d-pub-9",
        Priority::High,
        "ada",
        "book_published:b1",
        "Published",
    );
    n.on_event(&e).await.unwrap();
    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(
        inbox[0].suppressed_similar, 2,
        "newest first, reports the suppressed"
    );
    assert!(
        inbox[0]
            .body
            .contains("2 similar notifications were suppressed")
    );
}

// --- provider outages: retried delivery or dead letter, never a duplicate --------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_api_5xx_then_ok_is_delivered_on_the_retry_with_the_same_idempotency_key() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.email_api = Some(provider.api());
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Email];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.plan(EMAIL, &[503]);

    n.on_event(&alert_event("d-h1", Priority::High, "ada", "k", "Hello"))
        .await
        .unwrap();
    assert_eq!(provider.received(EMAIL).len(), 1);
    assert_eq!(n.pending(), 1, "waiting for its retry");
    n.tick().await.unwrap();
    assert_eq!(provider.received(EMAIL).len(), 1, "not before the backoff");
    clock.advance(after_backoff(1));
    n.tick().await.unwrap();
    let got = provider.received(EMAIL);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].status, 200);
    assert_eq!(got[0].idempotency_key, got[1].idempotency_key);
    assert!(!got[0].idempotency_key.is_empty());
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["to"][0]["email"], "ada@example.com");
    assert!(
        body["htmlContent"]
            .as_str()
            .unwrap()
            .contains("<h1>Hello</h1>")
    );
    assert!(
        body["textContent"]
            .as_str()
            .unwrap()
            .contains("body of Hello")
    );
    clock.advance(3_600_000);
    n.tick().await.unwrap();
    assert_eq!(
        provider.received(EMAIL).len(),
        2,
        "delivered once, never again"
    );
    assert_eq!(count(&metrics, "high", "email", "retried"), 1);
    assert_eq!(count(&metrics, "high", "email", "delivered"), 1);
    assert_eq!(n.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_4xx_is_not_retried_and_goes_to_the_dead_letters() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.sms = Some(provider.api());
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = Store::memory();
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Sms];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.always(SMS, 400);

    n.on_event(&alert_event("d-s1", Priority::High, "ada", "k", "Hi"))
        .await
        .unwrap();
    for _ in 0..5 {
        clock.advance(600_000);
        n.tick().await.unwrap();
    }
    assert_eq!(provider.received(SMS).len(), 1, "a 4xx is not retried");
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["channel"], "sms");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("400"),
        "{dead:?}"
    );
    assert_eq!(count(&metrics, "high", "sms", "dead_lettered"), 1);
    assert_eq!(count(&metrics, "high", "sms", "retried"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_always_5xx_is_dead_lettered_in_redis_after_the_last_try() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.retry.max_attempts = 3;
    config.email_api = Some(provider.api());
    let prefix = inkstream_tests::unique("notify-dead");
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = redis_store(&prefix);
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Email];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.always(EMAIL, 502);

    n.on_event(&alert_event("d-x1", Priority::High, "ada", "k", "Down"))
        .await
        .unwrap();
    for attempt in 1..=4 {
        clock.advance(after_backoff(attempt));
        n.tick().await.unwrap();
    }
    let got = provider.received(EMAIL);
    assert_eq!(got.len(), 3, "max_attempts tries, then stop");
    assert!(
        got.iter()
            .all(|r| r.idempotency_key == got[0].idempotency_key)
    );
    // The dead-letter stream in Redis, read directly.
    let client = redis::Client::open(inkstream_tests::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:notifications:dead"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(reply.ids.len(), 1);
    let reason: String = reply.ids[0].get("reason").unwrap();
    assert!(reason.contains("502"), "{reason}");
    let id: String = reply.ids[0].get("id").unwrap();
    assert_eq!(id, got[0].idempotency_key);
    assert_eq!(count(&metrics, "high", "email", "retried"), 2);
    assert_eq!(count(&metrics, "high", "email", "dead_lettered"), 1);
    assert_eq!(n.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_email_rejected_falls_back_to_sms() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.email_api = Some(provider.api());
    config.sms = Some(provider.api());
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.critical = vec![Channel::InApp, Channel::Email];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.always(EMAIL, 400);

    n.on_event(&alert_event("d-c1", Priority::Critical, "ada", "k", "Boom"))
        .await
        .unwrap();
    assert_eq!(provider.received(EMAIL).len(), 1);
    let sms = provider.received(SMS);
    assert_eq!(sms.len(), 1, "the fallback SMS");
    assert!(String::from_utf8_lossy(&sms[0].body).contains("Boom"));
    assert_eq!(count(&metrics, "critical", "sms", "delivered"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_signed_and_the_signature_verifies() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.webhook = WebhookConfig {
        urls: vec![format!("{}{HOOK}", provider.base)],
        secret: Some("s3cret".into()),
        allow_user_urls: false,
    };
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, _) = start(config, Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Webhook];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.plan(HOOK, &[500]);

    n.on_event(&alert_event("d-w1", Priority::High, "ada", "k", "Hook"))
        .await
        .unwrap();
    clock.advance(after_backoff(1));
    n.tick().await.unwrap();
    let got = provider.received(HOOK);
    assert_eq!(got.len(), 2, "5xx then OK");
    use inkstream_connectors::notifier::webhook::verify;
    for r in &got {
        let sig = r.signature.as_deref().expect("signed");
        assert!(verify(b"s3cret", &r.body, sig), "signature verifies");
        assert!(!verify(b"wrong", &r.body, sig));
    }
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["recipient_id"], "ada");
    assert_eq!(body["title"], "Hook");
    assert_eq!(body["id"], got[1].idempotency_key);
}

// --- restart ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_and_digest_queue_survive_a_restart_and_nothing_is_sent_twice() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.email_api = Some(provider.api());
    config.sms = Some(provider.api());
    let prefix = inkstream_tests::unique("notify-restart");
    let clock = ManualClock::new(local(NY, 3, 0));
    let critical = alert_event("d-r-crit", Priority::Critical, "ada", "sys", "Outage");
    let badge = alert_event("d-r-low", Priority::Low, "ada", "flow", "Flow badge");
    provider.plan(SMS, &[503]);
    {
        let (mut a, _) = start(config.clone(), redis_store(&prefix), &clock).await;
        a.handle().set_prefs("ada", ada(NY)).await.unwrap();
        a.on_event(&critical).await.unwrap();
        a.on_event(&badge).await.unwrap();
        assert_eq!(a.pending(), 1, "the SMS waits for its retry");
        // Dropped without any shutdown: a crash.
    }
    assert_eq!(provider.received(EMAIL).len(), 1);
    assert_eq!(provider.received(SMS).len(), 1);

    let (mut b, metrics) = start(config.clone(), redis_store(&prefix), &clock).await;
    assert_eq!(b.pending(), 1, "the pending retry was restored");
    assert_eq!(b.handle().prefs("ada").timezone, NY, "preferences restored");
    assert_eq!(metrics.pending.get(), 2, "one retry + one digest item");
    // The dataflow re-emits both alerts after its checkpoint restore.
    b.on_event(&critical).await.unwrap();
    b.on_event(&badge).await.unwrap();
    clock.advance(after_backoff(1));
    b.tick().await.unwrap();
    assert_eq!(provider.received(SMS).len(), 2, "the retry, once");
    assert_eq!(
        provider.received(EMAIL).len(),
        1,
        "no second email for the alert"
    );

    clock.set(local(NY, 8, 0));
    b.tick().await.unwrap();
    drop(b);
    let (mut c, _) = start(config, redis_store(&prefix), &clock).await;
    c.on_event(&critical).await.unwrap();
    c.on_event(&badge).await.unwrap();
    clock.advance(3_600_000);
    c.tick().await.unwrap();

    let emails = provider.received(EMAIL);
    assert_eq!(emails.len(), 2, "the critical email and the 08:00 digest");
    assert!(String::from_utf8_lossy(&emails[1].body).contains("Flow badge"));
    assert_ne!(emails[0].idempotency_key, emails[1].idempotency_key);
    let sms = provider.received(SMS);
    assert_eq!(sms.len(), 2);
    assert_eq!(sms[0].idempotency_key, sms[1].idempotency_key);
    let (inbox, total) = c
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(total, 2, "critical + digest in-app, each once: {inbox:?}");
    assert_eq!(c.pending(), 0);
}

// --- the HTTP endpoints --------------------------------------------------------

/// The real router (auth on: a JWT secret and one app key) with the
/// notifier task running, served on a loopback port.
async fn serve_api(
    config: NotifierConfig,
) -> (
    String,
    inkstream_connectors::notifier::NotifierHandle,
    tokio::sync::watch::Sender<bool>,
) {
    use inkstream_connectors::auth::{ApiKey, AuthConfig, Authenticator, RateLimiter};
    use inkstream_connectors::event_log::EmbeddedLog;
    use inkstream_connectors::http_api::{AppState, IngestConfig, router};
    use inkstream_connectors::websocket_fanout::{Hub, HubConfig};
    use inkstream_connectors::{EventLog, Metrics};
    let metrics = Metrics::standalone();
    let hub = Arc::new(Hub::new(HubConfig::default(), metrics.clone()));
    let auth = Authenticator::new(
        AuthConfig {
            jwt_secret: Some("jwt-secret".into()),
            session_secret: None,
            api_keys: vec![ApiKey {
                name: "ops".into(),
                sha256: inkstream_connectors::auth::hash_api_key("svc-key"),
                scopes: vec![inkstream_connectors::auth::Scope::Admin],
                categories: None,
                projects: None,
                rate: None,
            }],
            ..AuthConfig::default()
        },
        None,
        metrics.auth_jwks_fetches.clone(),
    )
    .unwrap();
    let (views, _feed) = inkstream_connectors::view_store::ViewStore::start(
        inkstream_connectors::view_store::ViewStoreConfig::default(),
        &metrics,
    )
    .await
    .unwrap();
    let mut state = AppState {
        views,
        log: EventLog::Embedded(EmbeddedLog::new("t", Duration::from_secs(60), 1000)),
        hub: hub.clone(),
        metrics: metrics.clone(),
        config: Arc::new(IngestConfig::default()),
        auth,
        limiter: Arc::new(RateLimiter::new(1000)),
        notifier: None,
    };
    let nm = NotifierMetrics::register(metrics.registry()).unwrap();
    let (n, rx) = Notifier::start(
        config,
        Store::memory(),
        Some(hub),
        nm,
        inkstream_connectors::notifier::SystemClock,
    )
    .await
    .unwrap();
    let handle = n.handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(n.run(rx, stop_rx));
    state.notifier = Some(handle.clone());
    let app = router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // Metrics are exposed, every label combination at 0 from the start.
    let text = metrics.render();
    assert!(text.contains(r#"inkstream_notifications_total{channel="sms",outcome="dead_lettered",priority="critical"} 0"#), "{text}");
    assert!(text.contains("inkstream_notification_pending 0"));
    assert!(text.contains(r#"inkstream_notification_delivery_seconds_count{channel="webhook"} 0"#));
    (base, handle, stop_tx)
}

fn token(user: &str, role: &str) -> String {
    let exp = inkstream_tests::now_ms() / 1000 + 3600;
    inkstream_connectors::auth::sign_jwt(
        &serde_json::json!({"sub": user, "role": role, "exp": exp}),
        b"jwt-secret",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_send_list_page_mark_read_and_preferences() {
    let mut config = base_config();
    config.defaults.quiet_hours = None;
    config.admins = vec!["root".into()];
    let (base, _handle, _stop) = serve_api(config).await;
    let http = reqwest::Client::new();
    let ada = format!("Bearer {}", token("ada", "member"));
    let admin = format!("Bearer {}", token("root", "admin"));

    // A member may not send; an app key and an admin may.
    let r = http
        .post(format!("{base}/api/realtime/notifications/send"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"recipient": "ada", "priority": "HIGH", "title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for i in 0..3 {
        let r = http
            .post(format!("{base}/api/realtime/notifications/send"))
            .header("authorization", "Bearer svc-key")
            .json(&serde_json::json!({"recipient": "ada", "priority": "HIGH", "title": format!("n{i}"), "body": "hi", "id": format!("send-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Delivered by the running task.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let v: serde_json::Value = http
            .get(format!("{base}/api/realtime/notifications?limit=2"))
            .header("authorization", &ada)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["total"] == 3 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list["total"], 3, "{list}");
    assert_eq!(list["notifications"].as_array().unwrap().len(), 2, "paged");
    let id = list["notifications"][0]["id"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{base}/api/realtime/notifications/{id}/read"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let unread: serde_json::Value = http
        .get(format!("{base}/api/realtime/notifications?unread=true"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unread["total"], 2);
    let r = http
        .post(format!("{base}/api/realtime/notifications/nope/read"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Another user's list: admins only.
    let r = http
        .get(format!("{base}/api/realtime/notifications?user_id=root"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{base}/api/realtime/notifications?user_id=ada"))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/realtime/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Preferences: defaults, then a partial PUT, validated.
    let v: serde_json::Value = http
        .get(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["preferences"]["timezone"], "UTC");
    assert_eq!(v["preferences"]["digest"], "daily");
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"timezone": "Mars/Olympus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["field"], "timezone");
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"timezone": "Europe/Paris", "quiet_hours": {"start": "23:00", "end": "07:30"}, "digest": "weekly", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = http
        .get(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["preferences"]["timezone"], "Europe/Paris");
    assert_eq!(v["preferences"]["quiet_hours"]["end"], "07:30");
    assert_eq!(v["preferences"]["digest"], "weekly");
    assert_eq!(
        v["preferences"]["digest_hour"], 8,
        "unset fields keep the defaults"
    );
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "unknown fields are refused");
    // A member may not point the server at a URL of their choice; an admin may.
    let hook = serde_json::json!({"webhook_url": "http://169.254.169.254/"});
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .put(format!(
            "{base}/api/realtime/notifications/preferences?user_id=ada"
        ))
        .header("authorization", &admin)
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// --- flow state from the derived session events -----------------------------------

fn writing(id: &str, data: Payload) -> Event {
    Event {
        id: id.into(),
        ts: 0,
        user_id: Some("ada".into()),
        project_id: None,
        document_id: None,
        data,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_app_waits_while_the_writer_is_in_flow_and_arrives_when_they_pause() {
    use schemas::payload::{
        FlowStateEntered, FlowStateExited, SessionPaused, SessionState, SessionStateChanged,
    };
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(base_config(), Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::InApp];
    n.handle().set_prefs("ada", p).await.unwrap();
    let inbox = |n: &Notifier<ManualClock>| {
        let store = n.handle().store;
        async move { store.in_app_list("ada", false, 0, 10).await.unwrap().1 }
    };

    n.on_event(&writing(
        "f1",
        Payload::WritingFlowStateEntered(FlowStateEntered {
            session_id: None,
            wpm: 210.0,
            sustained_ms: 120_000,
        }),
    ))
    .await
    .unwrap();
    n.on_event(&alert_event(
        "d-f-1",
        Priority::High,
        "ada",
        "k",
        "Review ready",
    ))
    .await
    .unwrap();
    assert_eq!(inbox(&n).await, 0, "held while in flow");
    assert_eq!(count(&metrics, "high", "in_app", "held_flow"), 1);
    // Flow ends but the writer keeps writing: still held.
    clock.advance(60_000);
    n.on_event(&writing(
        "f2",
        Payload::WritingFlowStateExited(FlowStateExited {
            session_id: None,
            wpm: 150.0,
            duration_ms: 60_000,
        }),
    ))
    .await
    .unwrap();
    n.on_event(&writing(
        "f3",
        Payload::WritingSessionStateChanged(SessionStateChanged {
            session_id: None,
            from: SessionState::FlowState,
            to: SessionState::ActiveWriting,
            reason: "wpm_below_threshold".into(),
            wpm: 150.0,
        }),
    ))
    .await
    .unwrap();
    n.tick().await.unwrap();
    assert_eq!(inbox(&n).await, 0, "not paused yet");
    // The pause releases it.
    clock.advance(60_000);
    n.on_event(&writing(
        "f4",
        Payload::WritingSessionPaused(SessionPaused {
            session_id: None,
            reason: None,
        }),
    ))
    .await
    .unwrap();
    assert_eq!(inbox(&n).await, 1);
    assert_eq!(count(&metrics, "high", "in_app", "delivered"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried_and_a_refused_connection_ends_in_a_dead_letter() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.retry.timeout_ms = 300;
    config.retry.max_attempts = 2;
    config.email_api = Some(provider.api());
    // Nothing listens there.
    config.sms = Some(HttpApiConfig {
        base_url: format!("http://127.0.0.1:{}", inkstream_tests::free_port()),
        ..provider.api()
    });
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = Store::memory();
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Email, Channel::Sms];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.delay(EMAIL, &[2_000]);

    n.on_event(&alert_event("d-t1", Priority::High, "ada", "k", "Slow"))
        .await
        .unwrap();
    assert_eq!(n.pending(), 2, "both wait for a retry");
    clock.advance(after_backoff(1));
    n.tick().await.unwrap();
    assert_eq!(count(&metrics, "high", "email", "retried"), 1);
    assert_eq!(count(&metrics, "high", "email", "delivered"), 1);
    assert_eq!(count(&metrics, "high", "sms", "retried"), 1);
    assert_eq!(count(&metrics, "high", "sms", "dead_lettered"), 1);
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["channel"], "sms");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("request failed"),
        "{dead:?}"
    );
    // The timed-out request reached the provider once, the retry once more
    // (same key): a provider deduplicating by key sends one email.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let got = provider.received(EMAIL);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].idempotency_key, got[1].idempotency_key);
    assert_eq!(n.pending(), 0);
}

// --- TLS and outbound safety -------------------------------------------------------

/// One HIGH alert to `ada` on `channel`, delivered (or not) on the spot.
async fn deliver_once(config: NotifierConfig, channel: Channel) -> (Store, NotifierMetrics) {
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = Store::memory();
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![channel];
    n.handle().set_prefs("ada", p).await.unwrap();
    n.on_event(&alert_event(
        "d-tls",
        Priority::High,
        "ada",
        "k",
        "Over TLS",
    ))
    .await
    .unwrap();
    (store, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_api_sms_and_webhook_are_delivered_over_https_trusting_the_configured_ca() {
    let pki = TestPki::new("notifier-https");
    let provider = Provider::start_https(&pki).await;
    assert!(provider.base.starts_with("https://"));
    for channel in [Channel::Email, Channel::Sms, Channel::Webhook] {
        let mut config = base_config();
        config.tls.ca_file = Some(pki.ca_file.clone());
        config.email_api = Some(provider.api());
        config.sms = Some(provider.api());
        config.webhook.urls = vec![format!("{}{HOOK}", provider.base)];
        let (_, metrics) = deliver_once(config, channel).await;
        assert_eq!(
            count(&metrics, "high", channel.as_str(), "delivered"),
            1,
            "{channel:?} over https"
        );
    }
    assert_eq!(provider.received(EMAIL).len(), 1);
    assert_eq!(provider.received(SMS).len(), 1);
    assert_eq!(provider.received(HOOK).len(), 1);

    // Without the CA the provider's certificate is not trusted: nothing
    // reaches it, and the failure is a retryable connection error.
    let mut config = base_config();
    config.webhook.urls = vec![format!("{}{HOOK}", provider.base)];
    let (_, metrics) = deliver_once(config, Channel::Webhook).await;
    assert_eq!(count(&metrics, "high", "webhook", "delivered"), 0);
    assert_eq!(count(&metrics, "high", "webhook", "retried"), 1);
    assert_eq!(
        provider.received(HOOK).len(),
        1,
        "an untrusted server got nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_loopback_private_and_metadata_addresses_are_refused_unless_allowed() {
    let provider = Provider::start().await;
    let port = provider.base.rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://127.0.0.1:{port}{HOOK}"),
        format!("http://localhost:{port}{HOOK}"),
        format!("http://[::ffff:127.0.0.1]:{port}{HOOK}"),
        "http://10.1.2.3/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let mut config = base_config();
        config.allow_private_destinations = false;
        config.webhook.urls = vec![url.clone()];
        let (store, metrics) = deliver_once(config, Channel::Webhook).await;
        assert_eq!(
            metrics.refused.with_label_values(&["webhook"]).get(),
            1,
            "{url} was not refused"
        );
        // Refused for good: not retried, in the dead letters with the reason.
        assert_eq!(
            count(&metrics, "high", "webhook", "dead_lettered"),
            1,
            "{url}"
        );
        let dead = store.dead_letters().await.unwrap();
        let reason = dead[0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("destination refused")
                && reason.contains("notifications.allow_private_destinations"),
            "{url}: {reason}"
        );
    }
    assert!(
        provider.received(HOOK).is_empty(),
        "a refused webhook reached the receiver"
    );

    // The setting allows them.
    let mut config = base_config();
    config.webhook.urls = vec![format!("http://127.0.0.1:{port}{HOOK}")];
    let (_, metrics) = deliver_once(config, Channel::Webhook).await;
    assert_eq!(count(&metrics, "high", "webhook", "delivered"), 1);
    assert_eq!(metrics.refused.with_label_values(&["webhook"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_the_answer_and_is_never_followed() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.webhook.urls = vec![format!("{}{HOOK}", provider.base)];
    provider.always(HOOK, 307);
    let (store, metrics) = deliver_once(config, Channel::Webhook).await;
    assert_eq!(
        provider.received(HOOK).len(),
        1,
        "the redirect was followed"
    );
    assert_eq!(count(&metrics, "high", "webhook", "dead_lettered"), 1);
    let dead = store.dead_letters().await.unwrap();
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("307"),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivers_with_starttls_and_with_implicit_tls_to_a_real_server() {
    let pki = TestPki::new("smtp-tls");
    for mode in ["starttls", "implicit"] {
        let smtpd = Smtpd::start_tls(mode, &pki);
        let mut config = base_config();
        config.tls.ca_file = Some(pki.ca_file.clone());
        config.smtp = Some(SmtpConfig {
            host: "localhost".into(),
            tls: Some(if mode == "starttls" {
                SmtpTls::Starttls
            } else {
                SmtpTls::Implicit
            }),
            ..smtpd.config()
        });
        let (_, metrics) = deliver_once(config, Channel::Email).await;
        assert_eq!(count(&metrics, "high", "email", "delivered"), 1, "{mode}");
        let msgs = smtpd.messages();
        assert_eq!(msgs.len(), 1, "{mode}: one message received");
        assert!(msgs[0].1.contains("Over TLS"), "{mode}: {}", msgs[0].1);
    }
    // A server that requires STARTTLS refuses a plain client's mail: the
    // requirement is real, so the success above went through TLS.
    let smtpd = Smtpd::start_tls("starttls", &pki);
    let mut config = base_config();
    config.smtp = Some(SmtpConfig {
        tls: Some(SmtpTls::None),
        ..smtpd.config()
    });
    let (_, metrics) = deliver_once(config, Channel::Email).await;
    assert_eq!(count(&metrics, "high", "email", "delivered"), 0);
    assert!(smtpd.messages().is_empty());
}
