//! HS256 JSON Web Tokens: verification (and signing, for tests and tools).
//! Only HS256 is accepted; `exp` is required.

use super::crypto::{constant_time_eq, hmac_sha256};
use super::error::AuthError;
use super::principal::{Role, User};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

/// Verifies `token` and returns its user.
pub(crate) fn verify(token: &str, secret: &[u8]) -> Result<User, AuthError> {
    let invalid = |m: &str| AuthError::Invalid(m.to_owned());
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("a JWT has three parts"));
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("malformed JWT header"))?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(invalid("only HS256 tokens are accepted"));
    }
    let expected = hmac_sha256(secret, format!("{h}.{p}").as_bytes());
    let given = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| invalid("malformed JWT signature"))?;
    if !constant_time_eq(&expected, &given) {
        return Err(invalid("bad JWT signature"));
    }
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("malformed JWT claims"))?;
    let exp = claims
        .get("exp")
        .and_then(|e| e.as_i64())
        .ok_or_else(|| invalid("the token has no exp claim"))?;
    if exp <= now_secs() {
        return Err(AuthError::Expired);
    }
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("the token has no sub claim"))?;
    Ok(User {
        id: sub.to_owned(),
        role: role_of(claims.get("role")),
        projects: strings(claims.get("projects")),
        documents: strings(claims.get("documents")),
        expires_at: Some(exp),
    })
}

/// Signs `claims` as an HS256 JWT.
pub fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, format!("{h}.{p}").as_bytes()));
    format!("{h}.{p}.{sig}")
}
