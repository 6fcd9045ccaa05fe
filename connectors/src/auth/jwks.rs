//! The public keys of an identity provider (`auth.jwks_url`), fetched,
//! cached and refreshed: RS256 (`kty: RSA`) and ES256 (`kty: EC`, P-256)
//! signing keys; others (encryption keys, unknown types) are skipped.
//!
//! A token naming a `kid` the cache does not hold triggers a refetch (keys
//! rotate), and so does a cache older than `max_age`; but fetches are at
//! least `min_refresh_interval` apart, one at a time, so a caller sending
//! tokens with made-up `kid`s cannot make us hammer the provider: it gets
//! `token_unknown_key` from the cache. A failed refetch keeps the old keys.
//!
//! Transport: https, verified against the system roots plus
//! `auth.jwks_tls.ca_file`; plain http only to a loopback address (a provider
//! on the same machine, and the tests). No redirects, a timeout, at most
//! [`MAX_BODY`] bytes and [`MAX_KEYS`] keys.

use super::error::AuthError;
use crate::tls::{TlsError, TlsFiles};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::IntCounterVec;
use schemas::{Classify, Fault};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Largest key set accepted, in bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Most keys kept from one key set.
pub const MAX_KEYS: usize = 64;

/// Where the keys are and how often they may be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// `auth.jwks_url`: https (http only to loopback).
    pub url: String,
    /// `auth.jwks_tls`: a CA to trust besides the system roots (private
    /// providers), optionally a client certificate.
    pub tls: TlsFiles,
    /// Least time between two fetches (`auth.jwks_min_refresh_interval`,
    /// default 30 s): the bound on what unknown `kid`s can make us do.
    pub min_refresh_interval: Duration,
    /// Keys older than this are refetched on the next token
    /// (`auth.jwks_max_age`, default 15 min).
    pub max_age: Duration,
    /// Connect and response timeout of a fetch (default 5 s).
    pub timeout: Duration,
}

impl JwksConfig {
    pub fn new(url: impl Into<String>) -> JwksConfig {
        JwksConfig {
            url: url.into(),
            tls: TlsFiles::default(),
            min_refresh_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(15 * 60),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the key set cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("auth.jwks_url: {0}")]
    BadUrl(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("auth.jwks_tls: {0}")]
    Client(reqwest::Error),
}

impl Classify for JwksError {
    fn fault(&self) -> Fault {
        Fault::Config
    }
}

/// Why a fetch of the key set did not happen or failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("the last fetch was less than auth.jwks_min_refresh_interval ({0:?}) ago")]
    RateLimited(Duration),
    #[error("{0}")]
    Failed(String),
}

impl Classify for FetchError {
    fn fault(&self) -> Fault {
        Fault::External
    }
}

/// One usable key.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    keys: Vec<Key>,
    fetched_at: Instant,
}

/// The cached key set of `auth.jwks_url`.
pub struct Jwks {
    url: reqwest::Url,
    http: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    /// The last key set fetched; `None` until a fetch succeeds.
    current: RwLock<Option<Arc<KeySet>>>,
    /// When the last fetch started: fetches are serialized on this lock and
    /// spaced by `min_refresh`.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// Fetches by outcome (`ok`, `failed`, `rate_limited`).
    fetches: IntCounterVec,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// Whether `url` may be fetched: https, or http to a loopback address.
fn check_url(url: &str) -> Result<reqwest::Url, JwksError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| JwksError::BadUrl(format!("{url:?}: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" => {
            let host = parsed
                .host_str()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(parsed)
            } else {
                Err(JwksError::BadUrl(
                    "must be https (plain http is accepted only to a loopback address): \
                     the keys decide who is authenticated"
                        .into(),
                ))
            }
        }
        other => Err(JwksError::BadUrl(format!(
            "scheme `{other}` (expected https)"
        ))),
    }
}

impl Jwks {
    /// Checks the URL and builds the client; fetches nothing yet.
    pub fn new(config: &JwksConfig, fetches: IntCounterVec) -> Result<Jwks, JwksError> {
        let url = check_url(&config.url)?;
        crate::tls::install_provider();
        let loaded = config.tls.load("auth.jwks_tls")?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout);
        b = loaded.apply(b).map_err(JwksError::Client)?;
        Ok(Jwks {
            url,
            http: b.build().map_err(JwksError::Client)?,
            min_refresh: config.min_refresh_interval,
            max_age: config.max_age,
            current: RwLock::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
            fetches,
        })
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The key for a token whose header said `alg` and `kid`.
    pub(crate) async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, AuthError> {
        let snapshot = self.snapshot();
        let fresh = snapshot
            .as_ref()
            .is_some_and(|s| s.fetched_at.elapsed() < self.max_age);
        if fresh && let Some(found) = snapshot.as_deref().and_then(|s| find(s, kid, alg)) {
            return found;
        }
        // Unknown kid, stale or no keys: refetch if allowed, then look again.
        let fetch_error = self.refresh().await.err().map(|e| e.to_string());
        match self.snapshot() {
            Some(s) => find(&s, kid, alg).unwrap_or_else(|| {
                Err(AuthError::UnknownKey(match kid {
                    Some(kid) => format!("no {alg:?} key with kid {kid:?} in auth.jwks_url"),
                    None => format!("no {alg:?} key in auth.jwks_url"),
                }))
            }),
            None => {
                // A failed fetch was logged by `refresh`, with the URL.
                let cause = fetch_error.unwrap_or_else(|| "not fetched yet".into());
                tracing::debug!(cause = %cause, "no JWKS to verify a token with");
                Err(AuthError::KeysUnavailable(cause))
            }
        }
    }

    /// Fetches the key set unless the last fetch started less than
    /// `min_refresh` ago. Errors say why the keys could not be had.
    async fn refresh(&self) -> Result<(), FetchError> {
        let mut last = self.last_attempt.lock().await;
        if let Some(at) = *last
            && at.elapsed() < self.min_refresh
        {
            self.fetches.with_label_values(&["rate_limited"]).inc();
            return Err(FetchError::RateLimited(self.min_refresh));
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                self.fetches.with_label_values(&["ok"]).inc();
                tracing::info!(keys = keys.len(), url = %self.url, "fetched the JWKS");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                }));
                Ok(())
            }
            Err(e) => {
                self.fetches.with_label_values(&["failed"]).inc();
                tracing::warn!(error = %e, url = %self.url, "fetching the JWKS failed");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, FetchError> {
        let mut resp = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Failed(format!("GET failed: {}", with_causes(&e))))?;
        if !resp.status().is_success() {
            return Err(FetchError::Failed(format!(
                "GET answered {}",
                resp.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Failed(format!("reading the body failed: {e}")))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(FetchError::Failed(format!(
                    "the key set is larger than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// `e` and its causes: reqwest's own text ("error sending request") does
/// not say why, its sources do (e.g. "invalid peer certificate:
/// UnknownIssuer" for a provider whose CA is not trusted).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// The usable signing keys of a JWKS document. Keys are parsed one by one
/// so that one the library does not know does not hide the others.
fn parse(body: &[u8]) -> Result<Vec<Key>, FetchError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body)
        .map_err(|e| FetchError::Failed(format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for raw in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if let Some(key) = usable(&jwk) {
            keys.push(key);
        }
        if keys.len() == MAX_KEYS {
            break;
        }
    }
    Ok(keys)
}

/// A signing key we accept: RSA for RS256 or EC P-256 for ES256, whose
/// `alg` and `use`, when stated, agree.
fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    let stated = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(_) => return None,
    };
    if stated.is_some_and(|s| s != alg) {
        return None;
    }
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// The key for `kid`/`alg`, `None` when the set has none. Without a `kid`
/// the set must hold exactly one key of that algorithm.
fn find(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<Result<DecodingKey, AuthError>> {
    let mut candidates = set.keys.iter().filter(|k| k.alg == alg);
    match kid {
        Some(kid) => candidates
            .find(|k| k.kid.as_deref() == Some(kid))
            .map(|k| Ok(k.key.clone())),
        None => {
            let all: Vec<&Key> = candidates.collect();
            match all.as_slice() {
                [] => None,
                [only] => Some(Ok(only.key.clone())),
                many => Some(Err(AuthError::UnknownKey(format!(
                    "the token names no kid and auth.jwks_url holds {} {alg:?} keys",
                    many.len()
                )))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(check_url("https://idp.example/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        let e = check_url("http://idp.example/jwks").unwrap_err();
        assert!(e.to_string().contains("auth.jwks_url"), "{e}");
        assert!(check_url("ftp://idp.example/jwks").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn encryption_keys_unknown_types_and_mismatched_algs_are_skipped() {
        let body = serde_json::json!({"keys": [
            {"kty":"RSA","use":"enc","alg":"RSA-OAEP","kid":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","crv":"X25519","kid":"x","x":"AQAB"},
            {"kty":"oct","kid":"sym","k":"c2VjcmV0"},
            {"kty":"RSA","alg":"ES256","kid":"liar","n":"AQAB","e":"AQAB"},
            {"kty":"weird"},
            {"kty":"RSA","use":"sig","alg":"RS256","kid":"good","n":"AQAB","e":"AQAB"},
        ]});
        let keys = parse(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("good")]);
        assert!(parse(b"[]").is_err());
    }
}
