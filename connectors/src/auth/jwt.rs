//! User JSON Web Tokens, verified by the `jsonwebtoken` crate: HS256 with
//! `auth.jwt_secret`, RS256/ES256 with a key of `auth.jwks_url` ([`super::jwks`]).
//!
//! What is checked, in order: the header's `alg` is one this server accepts
//! *for the key it came with* (an HS256 token is only ever checked against
//! the shared secret, never against a published public key, and `none` is
//! never accepted); the signature; `exp` (required); `nbf` when present;
//! `aud` and `iss` when `auth.jwt_audience` / `auth.jwt_issuer` are set
//! (then the token must carry them). Every refusal has its own
//! [`AuthError`] and code.

use super::error::AuthError;
use super::principal::{Role, User};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::time::Duration;

/// What a token's claims must say besides its signature and `exp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtRules {
    /// Accepted `aud` values (the token's must include one); empty: `aud`
    /// is not checked (`auth.jwt_audience`).
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty: not checked (`auth.jwt_issuer`).
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (`auth.jwt_leeway`, default 0).
    pub leeway: Duration,
}

impl JwtRules {
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if self.audience.is_empty() {
            // jsonwebtoken refuses a token carrying `aud` when no audience
            // is configured; unconfigured means "not checked".
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        if !self.issuer.is_empty() {
            v.set_issuer(&self.issuer);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

#[cfg(test)]
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn role_of(v: Option<&serde_json::Value>) -> Role {
    match v.and_then(|v| v.as_str()) {
        Some("admin") => Role::Admin,
        Some("analyst") => Role::Analyst,
        _ => Role::Member,
    }
}

pub(crate) fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The header fields that choose the key, read before anything is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peek {
    /// `alg` as written (`none`, `HS256`, …).
    pub alg: String,
    pub kid: Option<String>,
}

/// Reads `alg` and `kid` from the token's header. Done by hand rather than
/// with `jsonwebtoken::decode_header`, which cannot name an algorithm it
/// does not know (`none`): the caller gets `token_algorithm_refused`
/// instead of a JSON error.
pub(crate) fn peek(token: &str) -> Result<Peek, AuthError> {
    let invalid = |m: &str| AuthError::Invalid(m.to_owned());
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("a JWT has three parts"));
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("malformed JWT header"))?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(|| invalid("the JWT header has no alg"))?;
    Ok(Peek {
        alg: alg.to_owned(),
        kid: header
            .get("kid")
            .and_then(|k| k.as_str())
            .map(str::to_owned),
    })
}

/// Verifies `token` (whose header said `alg`) with `key` and returns its user.
pub(crate) fn verify(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    rules: &JwtRules,
) -> Result<User, AuthError> {
    let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &rules.validation(alg))
        .map_err(|e| refusal(e.into_kind()))?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(|e| e.as_i64())
        .ok_or_else(|| AuthError::Invalid("the token's exp is not a number".into()))?;
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::Invalid("the token has no sub claim".into()))?;
    Ok(User {
        id: sub.to_owned(),
        role: role_of(claims.get("role")),
        projects: strings(claims.get("projects")),
        documents: strings(claims.get("documents")),
        expires_at: Some(exp),
    })
}

/// The caller-facing reason for a `jsonwebtoken` refusal.
fn refusal(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => {
            AuthError::WrongAudience("the token's aud is not one this server accepts".into())
        }
        ErrorKind::InvalidIssuer => {
            AuthError::WrongIssuer("the token's iss is not one this server accepts".into())
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
            AuthError::WrongAudience("the token has no aud claim (auth.jwt_audience is set)".into())
        }
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
            AuthError::WrongIssuer("the token has no iss claim (auth.jwt_issuer is set)".into())
        }
        ErrorKind::MissingRequiredClaim(c) => {
            AuthError::Invalid(format!("the token has no {c} claim"))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Invalid(format!("the token's {c} claim is malformed"))
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            AuthError::AlgorithmRefused("the token's alg does not match its key".into())
        }
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
        _ => AuthError::Invalid("malformed JWT".into()),
    }
}

/// Signs `claims` as an HS256 JWT (tests and tools).
pub fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
    // Invariant: HS256 signs with a key of any length and the claims are
    // already JSON, so encoding cannot fail; an empty token never verifies.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &[u8]) -> DecodingKey {
        DecodingKey::from_secret(secret)
    }

    #[test]
    fn alg_none_and_malformed_headers_are_named() {
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"u1","exp":9999999999}"#)
        );
        assert_eq!(peek(&none).unwrap().alg, "none");
        assert!(matches!(peek("a.b"), Err(AuthError::Invalid(_))));
        assert!(matches!(peek("!!.b.c"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn nbf_aud_and_iss_are_checked_when_set() {
        let now = now_secs();
        let rules = JwtRules {
            audience: vec!["inkstream".into()],
            issuer: vec!["https://idp.example".into()],
            leeway: Duration::ZERO,
        };
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub":"u1","exp": now + 60});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            sign(&c, b"s")
        };
        let ok = claims(serde_json::json!({"aud":"inkstream","iss":"https://idp.example"}));
        assert!(verify(&ok, Algorithm::HS256, &hs(b"s"), &rules).is_ok());
        let check = |t: &str| verify(t, Algorithm::HS256, &hs(b"s"), &rules).unwrap_err();
        assert_eq!(
            check(&claims(
                serde_json::json!({"aud":"other","iss":"https://idp.example"})
            ))
            .code(),
            "token_wrong_audience"
        );
        assert_eq!(
            check(&claims(serde_json::json!({"iss":"https://idp.example"}))).code(),
            "token_wrong_audience"
        );
        assert_eq!(
            check(&claims(
                serde_json::json!({"aud":"inkstream","iss":"https://evil.example"})
            ))
            .code(),
            "token_wrong_issuer"
        );
        assert_eq!(
            check(&claims(serde_json::json!({"aud":["x","inkstream"]}))).code(),
            "token_wrong_issuer"
        );
        assert_eq!(
            check(&claims(serde_json::json!({
                "aud":"inkstream","iss":"https://idp.example","nbf": now + 120
            })))
            .code(),
            "token_not_yet_valid"
        );
        // Without rules, aud and iss are not looked at.
        let loose = JwtRules::default();
        assert!(verify(&ok, Algorithm::HS256, &hs(b"s"), &loose).is_ok());
        // Leeway lets a token a little past its exp through.
        let late = sign(&serde_json::json!({"sub":"u1","exp": now - 5}), b"s");
        assert_eq!(
            verify(&late, Algorithm::HS256, &hs(b"s"), &loose).unwrap_err(),
            AuthError::Expired
        );
        let lenient = JwtRules {
            leeway: Duration::from_secs(30),
            ..JwtRules::default()
        };
        assert!(verify(&late, Algorithm::HS256, &hs(b"s"), &lenient).is_ok());
    }
}
