//! Which derived event goes to which WebSocket path and channel.
//!
//! | event                                   | path                | channels                      |
//! |-----------------------------------------|---------------------|-------------------------------|
//! | `analytics.*`, `writing.*` (derived)    | `/ws/analytics`     | `user:{u}`, `project:{p}`     |
//! | `collaboration.conflict_*`              | `/ws/collaboration` | `document:{d}`, `project:{p}` |
//! | `collaboration.presence_updated`        | `/ws/presence`      | `document:{d}`, `project:{p}` |
//! | `system.notification`                   | `/ws/notifications` | `user:{recipient}` only       |
//! | every other derived event               | `/ws/analytics`     | `category:{category}`         |
//!
//! A notification goes to its recipient's `user:` channel and nowhere else:
//! that channel is the user's own even for admins and analysts
//! ([`super::may_subscribe`]), so the `category:system` channel they may
//! read must not carry it (with its history) either.

use schemas::Event;
use std::fmt;

/// The four fanout paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsPath {
    Collaboration,
    Analytics,
    Notifications,
    Presence,
}

impl WsPath {
    pub const ALL: [WsPath; 4] = [
        WsPath::Collaboration,
        WsPath::Analytics,
        WsPath::Notifications,
        WsPath::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WsPath::Collaboration => "/ws/collaboration",
            WsPath::Analytics => "/ws/analytics",
            WsPath::Notifications => "/ws/notifications",
            WsPath::Presence => "/ws/presence",
        }
    }
}

impl fmt::Display for WsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `channel` is a well-formed channel name (`kind:id`, id non-empty,
/// at most 200 bytes).
pub fn valid_channel(channel: &str) -> bool {
    match channel.split_once(':') {
        Some((kind, id)) => {
            matches!(kind, "user" | "project" | "document" | "category")
                && !id.is_empty()
                && channel.len() <= 200
        }
        None => false,
    }
}

/// Every (path, channel) the event is published to.
pub fn routes(event: &Event) -> Vec<(WsPath, String)> {
    let mut out = Vec::with_capacity(3);
    let ty = event.event_type();
    let user = event.user_id.as_deref();
    let project = event.project_id.as_deref();
    let document = event.document_id.as_deref();
    let mut push = |path: WsPath, kind: &str, id: Option<&str>| {
        if let Some(id) = id {
            out.push((path, format!("{kind}:{id}")));
        }
    };
    if ty.starts_with("collaboration.conflict_") {
        push(WsPath::Collaboration, "document", document);
        push(WsPath::Collaboration, "project", project);
    } else if ty == "collaboration.presence_updated" {
        push(WsPath::Presence, "document", document);
        push(WsPath::Presence, "project", project);
    } else if ty == "system.notification" {
        push(WsPath::Notifications, "user", user);
        return out;
    } else {
        push(WsPath::Analytics, "user", user);
        push(WsPath::Analytics, "project", project);
    }
    if let Some((category, _)) = ty.split_once('.') {
        push(WsPath::Analytics, "category", Some(category));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_wpm_goes_to_analytics_user_and_project_channels() {
        let e = Event {
            id: "d".into(),
            ts: 0,
            user_id: Some("u1".into()),
            project_id: Some("p1".into()),
            document_id: None,
            data: schemas::Payload::example("analytics.metric_updated").unwrap(),
        };
        assert_eq!(
            routes(&e),
            vec![
                (WsPath::Analytics, "user:u1".to_owned()),
                (WsPath::Analytics, "project:p1".to_owned()),
                (WsPath::Analytics, "category:analytics".to_owned()),
            ]
        );
    }

    #[test]
    fn a_notification_goes_to_its_recipient_only_not_to_category_system() {
        let e = Event {
            id: "n-1".into(),
            ts: 0,
            user_id: Some("u1".into()),
            project_id: None,
            document_id: None,
            data: schemas::Payload::example("system.notification").unwrap(),
        };
        assert_eq!(
            routes(&e),
            vec![(WsPath::Notifications, "user:u1".to_owned())],
            "a user's notification must not reach category:system (admins, analysts, apps)"
        );
    }

    #[test]
    fn channel_names_are_checked() {
        assert!(valid_channel("user:u1"));
        assert!(valid_channel("category:writing"));
        assert!(!valid_channel("user:"));
        assert!(!valid_channel("room:1"));
        assert!(!valid_channel("user"));
    }
}
