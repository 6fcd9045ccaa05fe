//! Who is calling: apps with API keys, end users with a signed JWT (HS256
//! with a shared secret, RS256/ES256 with an identity provider's JWKS) or
//! the express-session cookie (`connect.sid`, session looked up in Redis as
//! connect-redis stores it).
//!
//! With no API key and no secret configured, authentication is off and every
//! caller is [`Principal::Anonymous`] (the zero-setup default, which `serve`
//! allows only on a loopback bind unless `auth.allow_anonymous = true`, and
//! says so loudly at startup). Configuring either turns it on for every
//! caller. What each principal may do: [`Principal`] and docs/API.md.

mod crypto;
mod error;
mod jwks;
mod jwt;
mod principal;
mod rate;

pub use crypto::{hash_api_key, hex};
pub use error::AuthError;
pub use jwks::{Jwks, JwksConfig, JwksError};
pub use jwt::JwtRules;
pub use principal::{ApiKey, Principal, Role, Scope, User};
pub use rate::{Rate, RateLimiter};

use crypto::{constant_time_eq, hmac_sha256};

use crate::redis_conn::PrimaryConnection as ConnectionManager;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Resolves once the session cookie a long-lived connection was opened
/// with no longer holds (see [`Authenticator::session_end`]).
pub type SessionEnd = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// `auth.session_recheck` when unset.
pub const DEFAULT_SESSION_RECHECK: Duration = Duration::from_secs(30);

/// The authentication settings.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256 secret of user tokens.
    pub jwt_secret: Option<String>,
    /// The identity provider's key set (RS256/ES256 user tokens).
    pub jwks: Option<JwksConfig>,
    /// `aud`, `iss` and leeway, for every user token.
    pub jwt: JwtRules,
    pub session_secret: Option<String>,
    pub api_keys: Vec<ApiKey>,
    /// How often a WebSocket opened with a session cookie checks that its
    /// session still holds the same user (`auth.session_recheck`; zero:
    /// [`DEFAULT_SESSION_RECHECK`]).
    pub session_recheck: Duration,
}

impl AuthConfig {
    /// Whether any credential is configured (auth is on).
    pub fn enabled(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwks.is_some()
            || self.session_secret.is_some()
            || !self.api_keys.is_empty()
    }
}

/// Authenticates requests and WebSocket upgrades.
#[derive(Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
    keys: Arc<Vec<Arc<ApiKey>>>,
    /// The HS256 key of `jwt_secret`.
    secret: Option<Arc<jsonwebtoken::DecodingKey>>,
    /// The key set of `auth.jwks_url`.
    jwks: Option<Arc<Jwks>>,
    /// Redis holding `sess:<sid>` (connect-redis); `None` without Redis.
    sessions: Option<ConnectionManager>,
}

impl Authenticator {
    /// `jwks_fetches` counts the key set's fetches by outcome. Fails only
    /// on a JWKS setting that cannot work (URL, CA file).
    pub fn new(
        config: AuthConfig,
        sessions: Option<ConnectionManager>,
        jwks_fetches: prometheus::IntCounterVec,
    ) -> Result<Authenticator, JwksError> {
        let keys = config.api_keys.iter().cloned().map(Arc::new).collect();
        let jwks = match &config.jwks {
            Some(c) => Some(Arc::new(Jwks::new(c, jwks_fetches)?)),
            None => None,
        };
        let secret = config
            .jwt_secret
            .as_deref()
            .map(|s| Arc::new(jsonwebtoken::DecodingKey::from_secret(s.as_bytes())));
        Ok(Authenticator {
            config: Arc::new(config),
            keys: Arc::new(keys),
            secret,
            jwks,
            sessions,
        })
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled()
    }

    /// Authenticates from headers (Authorization, Cookie) and an optional
    /// `?token=` query parameter.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal::Anonymous);
        }
        if let Some(token) = bearer(headers).or(query_token) {
            return self.token(token).await;
        }
        if let Some(sid) = session_cookie(headers) {
            return self.session(&sid).await;
        }
        Err(AuthError::Missing)
    }

    /// Whether [`Authenticator::authenticate`] takes this request's
    /// credential from a token (`Authorization: Bearer`, `?token=`), the
    /// ones a web page cannot make a browser send on its own. False when
    /// auth is off (a token is then ignored: every caller is anonymous) and
    /// when the credential would be the session cookie, including next to
    /// an `Authorization` header of another scheme (`Basic`, which a
    /// browser does send by itself once the user logged in to a proxy).
    pub fn by_token(&self, headers: &HeaderMap, query_token: Option<&str>) -> bool {
        self.enabled() && (query_token.is_some() || bearer(headers).is_some())
    }

    /// For a connection that [`Authenticator::authenticate`] let in by its
    /// session cookie (no bearer or query token, which win): resolves once
    /// that session is gone (logged out, expired) or holds another user,
    /// role or memberships than `principal`, checked every
    /// `auth.session_recheck`. While the store cannot answer, the
    /// connection stays (it could not reconnect either). `None` for every
    /// other credential: a JWT ends at its `exp`, an API key never.
    pub fn session_end(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        principal: &Principal,
    ) -> Option<SessionEnd> {
        let Principal::User(user) = principal else {
            return None;
        };
        if !self.enabled() || query_token.is_some() || bearer(headers).is_some() {
            return None;
        }
        let signed = session_cookie(headers)?;
        let (auth, user) = (self.clone(), user.clone());
        let every = match self.config.session_recheck {
            d if d.is_zero() => DEFAULT_SESSION_RECHECK,
            d => d,
        };
        Some(Box::pin(async move {
            let mut unreachable = false;
            loop {
                tokio::time::sleep(every).await;
                match auth.session(&signed).await {
                    Ok(Principal::User(now)) if now == user => unreachable = false,
                    Err(AuthError::SessionStore(error)) => {
                        if !unreachable {
                            tracing::warn!(%error, "the session store does not answer: connections opened with a session stay until it does");
                            unreachable = true;
                        }
                    }
                    Ok(_) | Err(_) => return,
                }
            }
        }))
    }

    async fn token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.matches('.').count() == 2 {
            return self.jwt(token).await.map(Principal::User);
        }
        let digest = hex(&Sha256::digest(token.as_bytes()));
        self.keys
            .iter()
            .find(|k| constant_time_eq(k.sha256.as_bytes(), digest.as_bytes()))
            .map(|k| Principal::App(k.clone()))
            .ok_or_else(|| AuthError::Invalid("unknown API key".into()))
    }

    /// A user token: the key is chosen by the header's `alg` — HS256 only
    /// with the shared secret, RS256/ES256 only with a key of the JWKS —
    /// so a token can never make us use a public key as an HMAC secret.
    async fn jwt(&self, token: &str) -> Result<User, AuthError> {
        use jsonwebtoken::Algorithm;
        let header = jwt::peek(token)?;
        let accepted = || {
            let mut a = Vec::new();
            if self.secret.is_some() {
                a.push("HS256 (auth.jwt_secret)");
            }
            if self.jwks.is_some() {
                a.push("RS256 or ES256 (auth.jwks_url)");
            }
            if a.is_empty() {
                "none: no auth.jwt_secret or auth.jwks_url is set".to_owned()
            } else {
                a.join(", ")
            }
        };
        let refused = || {
            AuthError::AlgorithmRefused(format!(
                "alg {:?} is not accepted; accepted: {}",
                header.alg,
                accepted()
            ))
        };
        match (header.alg.as_str(), &self.secret, &self.jwks) {
            ("HS256", Some(secret), _) => {
                jwt::verify(token, Algorithm::HS256, secret, &self.config.jwt)
            }
            (alg @ ("RS256" | "ES256"), _, Some(jwks)) => {
                let alg = if alg == "RS256" {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                let key = jwks.key(header.kid.as_deref(), alg).await?;
                jwt::verify(token, alg, &key, &self.config.jwt)
            }
            _ => Err(refused()),
        }
    }

    async fn session(&self, signed: &str) -> Result<Principal, AuthError> {
        let secret = self.config.session_secret.as_deref().ok_or_else(|| {
            AuthError::Invalid("session cookies are not accepted (no auth.session_secret)".into())
        })?;
        let sid = verify_cookie(signed, secret.as_bytes())?;
        let mut conn = self
            .sessions
            .clone()
            .ok_or_else(|| AuthError::SessionStore("no Redis configured".into()))?;
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("sess:{sid}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading a session from the session store failed");
                AuthError::SessionStore(e.to_string())
            })?;
        let raw = raw.ok_or_else(|| AuthError::Invalid("no such session".into()))?;
        let session: serde_json::Value = serde_json::from_str(&raw)
            .map_err(|_| AuthError::Invalid("the session is not JSON".into()))?;
        user_from_session(&session)
            .map(Principal::User)
            .ok_or_else(|| AuthError::Invalid("the session holds no user".into()))
    }
}

/// The user of a connect-redis session: `userId`, `user_id`, `user.id` or
/// `passport.user` (string or `{id}`), with optional `role`, `projects`,
/// `documents` next to it.
fn user_from_session(s: &serde_json::Value) -> Option<User> {
    let str_of = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let id = s
        .get("userId")
        .and_then(str_of)
        .or_else(|| s.get("user_id").and_then(str_of))
        .or_else(|| s.get("user").and_then(|u| u.get("id")).and_then(str_of))
        .or_else(|| {
            let p = s.get("passport")?.get("user")?;
            str_of(p).or_else(|| p.get("id").and_then(str_of))
        })?;
    let holder = s.get("user").filter(|u| u.is_object()).unwrap_or(s);
    Some(User {
        id,
        role: jwt::role_of(holder.get("role")),
        projects: jwt::strings(holder.get("projects")),
        documents: jwt::strings(holder.get("documents")),
        expires_at: None,
    })
}

/// The `Authorization: Bearer` token, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The raw `connect.sid` cookie value (URL-decoded), if present.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some(v) = pair.trim().strip_prefix("connect.sid=") {
                return Some(percent_decode(v));
            }
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s:<sid>.<base64 HMAC-SHA256(sid), no padding>`, as express-session signs it.
fn verify_cookie(value: &str, secret: &[u8]) -> Result<String, AuthError> {
    let signed = value
        .strip_prefix("s:")
        .ok_or_else(|| AuthError::Invalid("the session cookie is not signed".into()))?;
    let (sid, sig) = signed
        .rsplit_once('.')
        .ok_or_else(|| AuthError::Invalid("malformed session cookie".into()))?;
    let expected = STANDARD_NO_PAD.encode(hmac_sha256(secret, sid.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        return Err(AuthError::Invalid("bad session cookie signature".into()));
    }
    Ok(sid.to_owned())
}

/// Signs a session id as express-session does (for tests and tools).
pub fn sign_cookie(sid: &str, secret: &[u8]) -> String {
    format!(
        "s:{sid}.{}",
        STANDARD_NO_PAD.encode(hmac_sha256(secret, sid.as_bytes()))
    )
}

pub use jwt::sign as sign_jwt;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use schemas::Category;

    fn auth() -> Authenticator {
        Authenticator::new(
            AuthConfig {
                jwt_secret: Some("jwt-secret".into()),
                jwks: None,
                jwt: JwtRules::default(),
                session_secret: Some("sess-secret".into()),
                session_recheck: DEFAULT_SESSION_RECHECK,
                api_keys: vec![ApiKey {
                    name: "mobile".into(),
                    sha256: hash_api_key("k-123"),
                    scopes: vec![Scope::Ingest],
                    categories: Some(vec![Category::Writing]),
                    projects: None,
                    rate: None,
                }],
            },
            None,
            crate::Metrics::standalone().auth_jwks_fetches,
        )
        .unwrap()
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {v}")).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn api_keys_are_matched_by_hash() {
        let p = auth().authenticate(&bearer("k-123"), None).await.unwrap();
        assert!(matches!(p, Principal::App(k) if k.name == "mobile"));
        assert_eq!(
            auth()
                .authenticate(&bearer("k-999"), None)
                .await
                .unwrap_err()
                .code(),
            "invalid_credentials"
        );
    }

    #[tokio::test]
    async fn jwts_are_verified_and_expiry_enforced() {
        let now = jwt::now_secs();
        let good = sign_jwt(
            &serde_json::json!({"sub":"u1","role":"member","projects":["p1"],"exp": now + 60}),
            b"jwt-secret",
        );
        let p = auth().authenticate(&bearer(&good), None).await.unwrap();
        let Principal::User(u) = p else { panic!() };
        assert_eq!(
            (u.id.as_str(), u.role, u.projects),
            ("u1", Role::Member, vec!["p1".to_owned()])
        );
        let expired = sign_jwt(
            &serde_json::json!({"sub":"u1","exp": now - 1}),
            b"jwt-secret",
        );
        assert_eq!(
            auth()
                .authenticate(&bearer(&expired), None)
                .await
                .unwrap_err(),
            AuthError::Expired
        );
        let forged = sign_jwt(&serde_json::json!({"sub":"u1","exp": now + 60}), b"other");
        assert_eq!(
            auth()
                .authenticate(&bearer(&forged), None)
                .await
                .unwrap_err(),
            AuthError::BadSignature
        );
        // ?token= works like the header.
        assert!(
            auth()
                .authenticate(&HeaderMap::new(), Some(&good))
                .await
                .is_ok()
        );
        assert_eq!(
            auth()
                .authenticate(&HeaderMap::new(), None)
                .await
                .unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn cookies_are_signed_as_express_session_does() {
        // express-session / cookie-signature: "s:" + sid + "." + base64(hmac) without padding.
        let signed = sign_cookie("abc", b"keyboard cat");
        assert!(signed.starts_with("s:abc."));
        assert!(!signed.ends_with('='));
        assert_eq!(verify_cookie(&signed, b"keyboard cat").unwrap(), "abc");
        assert!(verify_cookie(&signed, b"other").is_err());
        assert!(verify_cookie("abc.sig", b"keyboard cat").is_err());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str("a=1; connect.sid=s%3Aabc.xyz").unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("s:abc.xyz"));
    }

    #[test]
    fn session_users_are_found_where_apps_put_them() {
        for s in [
            serde_json::json!({"userId":"u1"}),
            serde_json::json!({"passport":{"user":"u1"}}),
            serde_json::json!({"user":{"id":"u1","role":"admin"}}),
        ] {
            assert_eq!(user_from_session(&s).unwrap().id, "u1");
        }
        assert!(user_from_session(&serde_json::json!({"cookie":{}})).is_none());
    }

    #[tokio::test]
    async fn auth_off_makes_everyone_anonymous() {
        let a = Authenticator::new(
            AuthConfig::default(),
            None,
            crate::Metrics::standalone().auth_jwks_fetches,
        )
        .unwrap();
        assert!(matches!(
            a.authenticate(&HeaderMap::new(), None).await.unwrap(),
            Principal::Anonymous
        ));
    }
}
