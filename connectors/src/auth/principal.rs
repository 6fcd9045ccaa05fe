//! Who is calling ([`Principal`]): nobody (auth off), an app with an API key,
//! or an end user with a role and memberships.

use super::rate::Rate;
use schemas::Category;
use std::sync::Arc;

/// An API key as configured: only its SHA-256 is stored.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Name of the app (metrics, logs, and the dedup namespace of its ids).
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Categories the app may ingest; `None` = all.
    pub categories: Option<Vec<Category>>,
    /// Events per second the app may ingest; `None` = the default app rate.
    pub rate: Option<Rate>,
}

/// A role carried by user tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Analyst,
    Member,
}

/// An authenticated end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub role: Role,
    /// Projects the user is a member of (claims).
    pub projects: Vec<String>,
    /// Documents the user is a member of (claims).
    pub documents: Vec<String>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth is off.
    Anonymous,
    /// An app with an API key.
    App(Arc<ApiKey>),
    /// An end user.
    User(User),
}

impl Principal {
    /// The namespace its idempotency keys live in.
    pub fn dedup_namespace(&self) -> String {
        match self {
            Principal::Anonymous => crate::event_log::ANONYMOUS.into(),
            Principal::App(k) => format!("app:{}", k.name),
            Principal::User(u) => format!("user:{}", u.id),
        }
    }

    /// The key its rate is accounted under.
    pub fn rate_key(&self) -> Option<String> {
        match self {
            Principal::Anonymous => None,
            _ => Some(self.dedup_namespace()),
        }
    }
}
