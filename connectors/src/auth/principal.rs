//! Who is calling ([`Principal`]): nobody (auth off, loopback only), an app
//! with an API key and its scopes, or an end user with a role and
//! memberships. The capability questions every handler asks
//! ([`Principal::is_admin`], [`Principal::reads_everything`],
//! [`Principal::may_ingest`]) are answered here and nowhere else, so the
//! authorization table in docs/API.md has one implementation.

use super::rate::Rate;
use schemas::Category;
use std::sync::Arc;

/// What an API key may do. `admin` implies `read` and `ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Append events (the default of a key); narrowed by `categories` and `projects`.
    Ingest,
    /// Event queries, views and WebSocket subscriptions on any channel.
    Read,
    /// Broadcast, send-to-user, stats, notifications/send, other users'
    /// preferences and contact data, `webhook_url`.
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "ingest" => Some(Scope::Ingest),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// An API key as configured: only its SHA-256 is stored.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Name of the app (metrics, logs, and the dedup namespace of its ids).
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// What the key may do (default `[ingest]`).
    pub scopes: Vec<Scope>,
    /// Categories the app may ingest; `None` = all.
    pub categories: Option<Vec<Category>>,
    /// Projects the app may ingest into; `None` = all. When set, an event
    /// without `project_id` is refused too.
    pub projects: Option<Vec<String>>,
    /// Events per second the app may ingest; `None` = the default app rate.
    pub rate: Option<Rate>,
}

impl ApiKey {
    /// Whether the key carries `scope` (`admin` carries every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
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
    /// When the credential stops being valid (JWT `exp`, seconds since the
    /// epoch); `None` for sessions (their lifetime is the store's).
    pub expires_at: Option<i64>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth is off: no credential is configured and the server listens on
    /// loopback (or `auth.allow_anonymous = true`). Full access: the
    /// local-development mode.
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

    /// The key its rate is accounted under; anonymous callers are keyed by
    /// their peer address (`peer`), so one client cannot starve the others.
    pub fn rate_key(&self, peer: Option<std::net::IpAddr>) -> String {
        match (self, peer) {
            (Principal::Anonymous, Some(ip)) => format!("peer:{ip}"),
            _ => self.dedup_namespace(),
        }
    }

    /// Admin routes: an admin user, a key with the `admin` scope, or anyone
    /// when auth is off.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::App(k) => k.has(Scope::Admin),
            Principal::User(u) => u.role == Role::Admin,
        }
    }

    /// Reads any channel, view and event query: admins, analysts and keys
    /// with the `read` scope.
    pub fn reads_everything(&self) -> bool {
        match self {
            Principal::Anonymous => true,
            Principal::App(k) => k.has(Scope::Read),
            Principal::User(u) => matches!(u.role, Role::Admin | Role::Analyst),
        }
    }
}
