//! User tokens signed by an identity provider: the real binary fetches the
//! provider's JWKS from a tiny HTTP server in this test process, accepts
//! valid RS256 and ES256 tokens, and refuses every forgery with a 401 and a
//! code of its own. Keys: a fixed RSA test key (tests/fixtures/jwt/) and EC
//! P-256 keys made per run with rcgen.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, now_ms, unique};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "inkstream";
/// What a 503 `jwks_unavailable` says, whatever the cause.
const JWKS_UNAVAILABLE: &str = "the token keys (JWKS) could not be fetched; try again";

fn rsa_pem() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/jwt/rsa-test-key.pem"
    ))
    .unwrap()
}

/// A signing key with the JWK the provider publishes for it.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    fn rsa(kid: &str) -> SigningKey {
        SigningKey::new(
            Algorithm::RS256,
            kid,
            EncodingKey::from_rsa_pem(&rsa_pem()).unwrap(),
        )
    }

    /// A fresh P-256 key (rcgen's default algorithm).
    fn ec(kid: &str) -> SigningKey {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        SigningKey::new(
            Algorithm::ES256,
            kid,
            EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
    }

    fn new(alg: Algorithm, kid: &str, key: EncodingKey) -> SigningKey {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        SigningKey {
            alg,
            kid: kid.into(),
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_ms() / 1000 + 600, "aud": AUDIENCE, "iss": ISSUER})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

/// A JWKS endpoint: serves whatever `keys` holds, counting requests; over
/// https when given a TLS server configuration.
struct Provider {
    port: u16,
    keys: Arc<Mutex<Vec<Jwk>>>,
    hits: Arc<AtomicUsize>,
    https: bool,
}

/// Answers one request on `sock` with the key set.
async fn answer<S>(mut sock: S, keys: Arc<Mutex<Vec<Jwk>>>, hits: Arc<AtomicUsize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // One request per connection: read to the blank line.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::to_string(&JwkSet {
        keys: keys.lock().unwrap().clone(),
    })
    .unwrap();
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

impl Provider {
    async fn start(keys: Vec<Jwk>) -> Provider {
        Provider::start_with(keys, None).await
    }

    async fn start_with(keys: Vec<Jwk>, tls: Option<Arc<rustls::ServerConfig>>) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        let https = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (k, h, acceptor) = (k.clone(), h.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        // A client that refuses the certificate ends here.
                        Some(a) => {
                            if let Ok(tls) = a.accept(sock).await {
                                answer(tls, k, h).await;
                            }
                        }
                        None => answer(sock, k, h).await,
                    }
                });
            }
        });
        Provider {
            port,
            keys,
            hits,
            https,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }
}

/// Waits (up to 10 s) until the server's log satisfies `ok`: `Err` with the
/// log when it never does.
async fn logged_when(log: &Mutex<String>, ok: impl Fn(&str) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = log.lock().unwrap().clone();
        if ok(&logged) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(logged);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event(user: &str) -> Value {
    json!({"id": unique("jwt"), "type":"writing.keystroke","ts": now_ms(),"user_id": user,
           "data":{"keystrokes":5,"words":1,"chars":5}})
}

/// POST /v1/events as `token`: the status and the error code, if any.
async fn ingest(server: &Server, token: &str, user: &str) -> (u16, Option<String>) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .bearer_auth(token)
        .json(&event(user))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

async fn serve(provider: &Provider, extra: &[&str]) -> Server {
    let url = format!("auth.jwks_url={}", provider.url());
    let aud = format!("auth.jwt_audience=[\"{AUDIENCE}\"]");
    let iss = format!("auth.jwt_issuer=[\"{ISSUER}\"]");
    let mut args = vec!["--set", &url, "--set", &aud, "--set", &iss];
    args.extend_from_slice(extra);
    Server::start(&args).await
}

#[tokio::test]
async fn provider_tokens_are_accepted_and_every_forgery_gets_its_own_code() {
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::ec("ec-1");
    let provider = Provider::start(vec![rsa.jwk.clone(), ec.jwk.clone()]).await;
    // Refetches at most once an hour: unknown kids must not reach the provider.
    let server = serve(&provider, &["--set", "auth.jwks_min_refresh_interval=1h"]).await;

    assert_eq!(
        ingest(&server, &rsa.sign(&claims("u1")), "u1").await,
        (202, None)
    );
    assert_eq!(
        ingest(&server, &ec.sign(&claims("u2")), "u2").await,
        (202, None)
    );

    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = now_ms() / 1000;
    let refused: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg":"none","typ":"JWT"})),
                b64(&claims("u1"))
            ),
            "token_algorithm_refused",
        ),
        (
            // The classic confusion: HS256 keyed with the published RSA key.
            "HS256 signed with the RSA public key as the secret",
            {
                let public_pem = public_rsa_pem();
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some("rsa-1".into());
                jsonwebtoken::encode(
                    &h,
                    &claims("u1"),
                    &EncodingKey::from_secret(public_pem.as_bytes()),
                )
                .unwrap()
            },
            "token_algorithm_refused",
        ),
        (
            "a P-256 key that is not the provider's, under its kid",
            SigningKey::ec("other").sign_as("ec-1", &claims("u1")),
            "token_bad_signature",
        ),
        (
            "an RS256 token under the EC key's kid",
            rsa.sign_as("ec-1", &claims("u1")),
            "token_unknown_key",
        ),
        (
            "unknown kid",
            rsa.sign_as("rsa-9", &claims("u1")),
            "token_unknown_key",
        ),
        (
            "expired",
            rsa.sign(&with(claims("u1"), "exp", json!(now - 10))),
            "token_expired",
        ),
        (
            "not yet valid",
            rsa.sign(&with(claims("u1"), "nbf", json!(now + 300))),
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            rsa.sign(&with(claims("u1"), "aud", json!("someone-else"))),
            "token_wrong_audience",
        ),
        (
            "no audience",
            {
                let mut c = claims("u1");
                c.as_object_mut().unwrap().remove("aud");
                rsa.sign(&c)
            },
            "token_wrong_audience",
        ),
        (
            "wrong issuer",
            rsa.sign(&with(claims("u1"), "iss", json!("https://evil.test"))),
            "token_wrong_issuer",
        ),
    ];
    for (what, token, code) in &refused {
        assert_eq!(
            ingest(&server, token, "u1").await,
            (401, Some((*code).to_owned())),
            "{what}"
        );
    }

    // A flood of made-up kids is answered from the cache.
    let before = provider.hits.load(Ordering::SeqCst);
    for i in 0..50 {
        let (status, code) = ingest(
            &server,
            &rsa.sign_as(&format!("ghost-{i}"), &claims("u1")),
            "u1",
        )
        .await;
        assert_eq!((status, code.as_deref()), (401, Some("token_unknown_key")));
    }
    assert_eq!(
        provider.hits.load(Ordering::SeqCst),
        before,
        "unknown kids made the server refetch the JWKS within auth.jwks_min_refresh_interval"
    );
    assert_eq!(provider.hits.load(Ordering::SeqCst), 1, "one fetch in all");

    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("inkstream_auth_failures_total{code=\"token_unknown_key\"} 52"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("auth_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The PEM of the fixture's public half, as an attacker would download it.
fn public_rsa_pem() -> String {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/jwt/rsa-test-key.pem"
        ))
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        // Without openssl: the JWK's modulus stands in for the public key.
        _ => serde_json::to_string(&SigningKey::rsa("x").jwk).unwrap(),
    }
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_on_its_first_unknown_kid_and_hs256_still_works() {
    let old = SigningKey::ec("2024");
    let provider = Provider::start(vec![old.jwk.clone()]).await;
    let server = serve(
        &provider,
        &[
            "--set",
            "auth.jwks_min_refresh_interval=200ms",
            "--set",
            "auth.jwt_secret=\"hs-secret\"",
        ],
    )
    .await;
    assert_eq!(
        ingest(&server, &old.sign(&claims("u1")), "u1").await,
        (202, None)
    );

    // The provider rotates: the new key appears in its JWKS.
    let new = SigningKey::ec("2025");
    provider.keys.lock().unwrap().push(new.jwk.clone());
    let token = new.sign(&claims("u1"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ingest(&server, &token, "u1").await {
            (202, _) => break,
            (401, Some(code)) if code == "token_unknown_key" => {}
            other => panic!("unexpected answer to the rotated key's token: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the server never refetched the JWKS for the rotated key's kid"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // HS256 with the shared secret works beside the JWKS, with the same
    // aud/iss rules; the RSA-public-key confusion fails on the signature.
    let hs = connectors::auth::sign_jwt(&claims("u3"), b"hs-secret");
    assert_eq!(ingest(&server, &hs, "u3").await, (202, None));
    let confused = connectors::auth::sign_jwt(&claims("u3"), public_rsa_pem().as_bytes());
    assert_eq!(
        ingest(&server, &confused, "u3").await,
        (401, Some("token_bad_signature".into()))
    );
    let no_aud = connectors::auth::sign_jwt(
        &json!({"sub":"u3","exp": now_ms() / 1000 + 60, "iss": ISSUER}),
        b"hs-secret",
    );
    assert_eq!(
        ingest(&server, &no_aud, "u3").await,
        (401, Some("token_wrong_audience".into()))
    );
}

#[tokio::test]
async fn an_https_provider_is_trusted_through_auth_jwks_tls_ca_file() {
    let pki = inkstream_tests::tls::TestPki::new("jwks-tls");
    let key = SigningKey::ec("tls-1");
    let provider = Provider::start_with(vec![key.jwk.clone()], Some(pki.server_config())).await;
    assert!(provider.url().starts_with("https://"));
    let ca = format!(
        "auth.jwks_tls.ca_file={:?}",
        pki.ca_file.display().to_string()
    );
    let server = serve(&provider, &["--set", &ca]).await;
    assert_eq!(
        ingest(&server, &key.sign(&claims("u1")), "u1").await,
        (202, None),
        "a token signed by a key fetched over https with the configured CA"
    );
    assert_eq!(provider.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_https_provider_with_an_untrusted_certificate_is_refused_with_a_clear_error() {
    // The provider's certificate is signed by a CA the server was not told
    // about (and that no system root knows).
    let pki = inkstream_tests::tls::TestPki::new("jwks-untrusted");
    let key = SigningKey::ec("tls-2");
    let provider = Provider::start_with(vec![key.jwk.clone()], Some(pki.server_config())).await;
    let url = format!("auth.jwks_url={}", provider.url());
    let aud = format!("auth.jwt_audience=[\"{AUDIENCE}\"]");
    let iss = format!("auth.jwt_issuer=[\"{ISSUER}\"]");
    let (server, log) = Server::start_logged(&["--set", &url, "--set", &aud, "--set", &iss]).await;
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .bearer_auth(key.sign(&claims("u1")))
        .json(&event("u1"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "jwks_unavailable", "{body}");
    assert_eq!(status, 503, "{body}");
    // The caller learns what is unavailable; the cause is in the log only.
    assert_eq!(body["error"]["message"], JWKS_UNAVAILABLE, "{body}");
    let logged = logged_when(&log, |l| {
        l.contains("fetching the JWKS failed") && l.to_lowercase().contains("certificate")
    })
    .await;
    assert!(logged.is_ok(), "the log names the cause: {logged:?}");
    assert_eq!(
        provider.hits.load(Ordering::SeqCst),
        0,
        "no request reached the provider over an untrusted connection"
    );
}

/// A key set that cannot be fetched is a 503 whose message names what is
/// unavailable and nothing else: not the JWKS URL, not the connection error
/// (until 2026-12-07 both went to any unauthenticated caller; they are
/// logged). The token needs no valid signature to get there.
#[tokio::test]
async fn an_unreachable_jwks_answers_503_without_its_url_or_error() {
    let port = inkstream_tests::free_port(); // nothing listens there
    let url = format!("auth.jwks_url=http://127.0.0.1:{port}/.well-known/jwks.json");
    let aud = format!("auth.jwt_audience=[\"{AUDIENCE}\"]");
    let iss = format!("auth.jwt_issuer=[\"{ISSUER}\"]");
    let (server, log) = Server::start_logged(&["--set", &url, "--set", &aud, "--set", &iss]).await;
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "k"})),
        b64(claims("u1")),
        b64(json!("not a signature"))
    );
    let r = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .bearer_auth(&token)
        .json(&event("u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "jwks_unavailable", "{body}");
    assert_eq!(body["error"]["message"], JWKS_UNAVAILABLE, "{body}");
    assert!(
        !text.contains(&port.to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );
    let logged = logged_when(&log, |l| {
        l.contains("fetching the JWKS failed") && l.contains(&port.to_string())
    })
    .await;
    assert!(logged.is_ok(), "the cause is logged: {logged:?}");
}

/// Waits until the server's log holds `line`.
async fn logged(log: &Mutex<String>, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.lock().unwrap().contains(line) {
        assert!(
            Instant::now() < deadline,
            "the server did not log {line:?} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A signing secret shorter than 32 bytes is warned about at startup (an
/// HMAC key that short can be guessed offline from any token it signed),
/// by its setting and length, never its value; a long one is not.
#[tokio::test]
async fn a_short_signing_secret_is_warned_about_without_its_value() {
    let (_short, log) = Server::start_logged(&["--set", "auth.jwt_secret=\"s3cr3t-x\""]).await;
    logged(&log, "listening").await;
    let text = log.lock().unwrap().clone();
    let warning = text
        .lines()
        .find(|l| l.contains("shorter than 32 bytes"))
        .unwrap_or_else(|| panic!("no warning about the 8-byte secret:\n{text}"));
    assert!(warning.contains("auth.jwt_secret"), "{warning}");
    assert!(!text.contains("s3cr3t-x"), "the secret was logged:\n{text}");

    let long = "x".repeat(32);
    let (_long, log) =
        Server::start_logged(&["--set", &format!("auth.jwt_secret=\"{long}\"")]).await;
    logged(&log, "listening").await;
    let text = log.lock().unwrap().clone();
    assert!(
        !text.contains("shorter than 32 bytes"),
        "a 32-byte secret was warned about:\n{text}"
    );
}
