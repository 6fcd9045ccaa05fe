//! Why a caller could not be authenticated ([`AuthError`], HTTP 401).

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
    #[error("the session store is unavailable: {0}")]
    SessionStore(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthenticated",
            AuthError::Invalid(_) => "invalid_credentials",
            AuthError::Expired => "token_expired",
            AuthError::SessionStore(_) => "session_store_unavailable",
        }
    }
}

impl Classify for AuthError {
    fn fault(&self) -> Fault {
        match self {
            AuthError::SessionStore(_) => Fault::External,
            _ => Fault::Caller,
        }
    }
}
