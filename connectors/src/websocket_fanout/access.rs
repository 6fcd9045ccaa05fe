//! Who may subscribe to which channel ([`may_subscribe`]); the view and
//! event-query endpoints apply the same rule.

use crate::auth::{Principal, Role};

/// Channel authorization: a user's own `user:` channel; `project:` and
/// `document:` for members (token claims), admins and analysts; `category:` for admins
/// and analysts. Apps (API keys) may subscribe to any channel with the
/// `read` (or `admin`) scope and to none without; with auth off everyone may.
pub fn may_subscribe(principal: &Principal, channel: &str) -> bool {
    let user = match principal {
        Principal::Anonymous => return true,
        Principal::App(_) => return principal.reads_everything(),
        Principal::User(user) => user,
    };
    // Admins and analysts read every project and document, but a `user:`
    // channel (notifications) stays its user's own.
    let all = principal.reads_everything();
    match channel.split_once(':') {
        Some(("user", id)) => id == user.id,
        Some(("project", id)) => all || user.projects.iter().any(|p| p == id),
        Some(("document", id)) => all || user.documents.iter().any(|d| d == id),
        Some(("category", _)) => matches!(user.role, Role::Admin | Role::Analyst),
        _ => false,
    }
}
