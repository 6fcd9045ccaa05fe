//! Why a caller could not be authenticated ([`AuthError`], HTTP 401; 503
//! when a store or key set we depend on cannot be reached).

use schemas::{Classify, Fault};

/// Why a caller could not be authenticated (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: send `Authorization: Bearer <api key or token>`, `?token=`, or the session cookie"
    )]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The header's `alg` is not accepted (`none`, HS256 without a secret,
    /// RS256/ES256 without a key set, anything else), or does not fit the key.
    #[error("token algorithm refused: {0}")]
    AlgorithmRefused(String),
    /// The signature does not verify with the key the token names.
    #[error("bad token signature")]
    BadSignature,
    /// No key of the key set matches the token's `kid` and `alg`.
    #[error("unknown signing key: {0}")]
    UnknownKey(String),
    #[error("wrong audience: {0}")]
    WrongAudience(String),
    #[error("wrong issuer: {0}")]
    WrongIssuer(String),
    /// The session store (Redis) failed. The `String` is the cause, for
    /// the log only: the message callers get names what is unavailable,
    /// never the store's address or its error.
    #[error("the session store is unavailable; try again")]
    SessionStore(String),
    /// `auth.jwks_url` could not be fetched and no keys are cached. The
    /// `String` is the cause, for the log only (it may name the URL and the
    /// connection error; unauthenticated callers get neither).
    #[error("the token keys (JWKS) could not be fetched; try again")]
    KeysUnavailable(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Invalid(_) => "invalid_credentials",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::AlgorithmRefused(_) => "token_algorithm_refused",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::UnknownKey(_) => "token_unknown_key",
            AuthError::WrongAudience(_) => "token_wrong_audience",
            AuthError::WrongIssuer(_) => "token_wrong_issuer",
            AuthError::SessionStore(_) => "session_store_unavailable",
            AuthError::KeysUnavailable(_) => "jwks_unavailable",
        }
    }

    /// Every code, for pre-registering the failure counter's labels.
    pub const CODES: [&'static str; 11] = [
        "unauthenticated",
        "invalid_credentials",
        "token_expired",
        "token_not_yet_valid",
        "token_algorithm_refused",
        "token_bad_signature",
        "token_unknown_key",
        "token_wrong_audience",
        "token_wrong_issuer",
        "session_store_unavailable",
        "jwks_unavailable",
    ];
}

impl Classify for AuthError {
    fn fault(&self) -> Fault {
        match self {
            AuthError::SessionStore(_) | AuthError::KeysUnavailable(_) => Fault::External,
            _ => Fault::Caller,
        }
    }
}
