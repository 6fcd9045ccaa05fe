//! Who may subscribe to which channel ([`may_subscribe`]); the view and
//! event-query endpoints apply the same rule.

use crate::auth::{Principal, Role};

/// Channel authorization: a user's own `user:` channel; `project:` and
/// `document:` for members (token claims) and admins; `category:` for admins
/// and analysts. Apps (API keys) are services and may subscribe to any
/// channel; with auth off everyone may.
pub fn may_subscribe(principal: &Principal, channel: &str) -> bool {
    let Principal::User(user) = principal else {
        return true;
    };
    let admin = user.role == Role::Admin;
    match channel.split_once(':') {
        Some(("user", id)) => id == user.id,
        Some(("project", id)) => admin || user.projects.iter().any(|p| p == id),
        Some(("document", id)) => admin || user.documents.iter().any(|d| d == id),
        Some(("category", _)) => matches!(user.role, Role::Admin | Role::Analyst),
        _ => false,
    }
}
