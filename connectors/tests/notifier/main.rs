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
        user_id: (!recipient.contains(':')).then(|| recipient.into()),
        project_id: None,
        document_id: None,
        data: Payload::AnalyticsAlertTriggered(Box::new(AlertTriggered {
            rule: "test_rule".into(),
            priority,
            recipient_id: recipient.into(),
            dedup_key: dedup.into(),
            title: title.into(),
            body: format!("body of {title}"),
            source_event_id: format!("src-{id}"),
        })),
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
    let (mut n, rx) = Notifier::start(config, store, None, metrics.clone(), clock.clone())
        .await
        .expect("start the notifier");
    // What `run` does first: what an earlier notifier on this store saved.
    n.resume().await.expect("load the notifier's state");
    // Driven step by step; the queue is not used.
    std::mem::forget(rx);
    (n, metrics)
}

/// A notifier at noon UTC on `store`, sending ada's HIGH alerts in-app.
async fn in_app_at_noon(store: Store) -> (Notifier<ManualClock>, NotifierMetrics, ManualClock) {
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (n, metrics) = start(base_config(), store, &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::InApp];
    n.handle().set_prefs("ada", p).await.unwrap();
    (n, metrics, clock)
}

/// How many in-app notifications ada has.
async fn inbox(n: &Notifier<ManualClock>) -> usize {
    n.handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap()
        .1
}

fn count(m: &NotifierMetrics, priority: &str, channel: &str, outcome: &str) -> u64 {
    m.total
        .with_label_values(&[priority, channel, outcome])
        .get()
}

fn redis_store(prefix: &str) -> Store {
    Store::redis(&inkstream_tests::redis_url(), prefix, &Default::default()).expect("redis store")
}

mod endpoints;
mod flow;
mod outages;
mod scenarios;
mod tls;
