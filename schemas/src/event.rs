//! The event envelope and the catalogue of event types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One event, as it travels through the log, the dataflow and the sinks.
///
/// Derived events (the pipeline's outputs) use the same envelope so that a
/// consumer reads every stream the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Client-chosen idempotency key (≤ 128 bytes), or a generated UUIDv7.
    /// Derived events carry a deterministic id (a hash of what produced them).
    pub id: String,
    /// `category.name`, e.g. `writing.keystroke`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Event time: milliseconds since the Unix epoch.
    pub ts: i64,
    /// The acting user; required for writing and collaboration events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Required for collaboration, publishing, analytics and automation events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Required for collaboration events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
    /// The type's payload (always a JSON object).
    pub data: serde_json::Value,
}

impl Event {
    /// The category half of the type (`writing` for `writing.keystroke`).
    pub fn category(&self) -> Category {
        // Invariant: only validated events are constructed by the codecs, and
        // validation rejects unknown categories; derived events use known types.
        Category::of_type(&self.event_type).unwrap_or(Category::System)
    }

    /// The key that decides ordering and partitioning (DESIGN.md):
    /// writing → user, collaboration → document, publishing/analytics/automation
    /// → project, system → type.
    pub fn partition_key(&self) -> &str {
        let key = match self.category() {
            Category::Writing => self.user_id.as_deref(),
            Category::Collaboration => self.document_id.as_deref(),
            Category::Publishing | Category::Analytics | Category::Automation => {
                self.project_id.as_deref()
            }
            Category::System => None,
        };
        key.unwrap_or(&self.event_type)
    }

    /// A non-negative integer field of `data`, if present and of that type.
    pub fn data_u64(&self, field: &str) -> Option<u64> {
        self.data.get(field).and_then(serde_json::Value::as_u64)
    }

    /// A string field of `data`, if present and of that type.
    pub fn data_str(&self, field: &str) -> Option<&str> {
        self.data.get(field).and_then(serde_json::Value::as_str)
    }
}

/// The six event categories of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Writing,
    Collaboration,
    Publishing,
    Analytics,
    Automation,
    System,
}

impl Category {
    /// Every category, in a stable order (used for stream and topic names).
    pub const ALL: [Category; 6] = [
        Category::Writing,
        Category::Collaboration,
        Category::Publishing,
        Category::Analytics,
        Category::Automation,
        Category::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Writing => "writing",
            Category::Collaboration => "collaboration",
            Category::Publishing => "publishing",
            Category::Analytics => "analytics",
            Category::Automation => "automation",
            Category::System => "system",
        }
    }

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The category of a `category.name` type string.
    pub fn of_type(event_type: &str) -> Option<Category> {
        event_type
            .split_once('.')
            .and_then(|(c, _)| Category::parse(c))
    }

    /// Which optional envelope fields events of this category must carry.
    pub fn required_fields(self) -> &'static [&'static str] {
        match self {
            Category::Writing => &["user_id"],
            Category::Collaboration => &["user_id", "document_id"],
            Category::Publishing | Category::Analytics | Category::Automation => &["project_id"],
            Category::System => &[],
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A known event type from the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    pub name: &'static str,
    pub category: Category,
    /// Emitted by the pipeline; clients may still send it (see docs/EVENTS.md).
    pub derived: bool,
}

/// Every type of the original specification, plus the pipeline's own outputs.
/// (`name`, `derived`)
const CATALOGUE: &[(&str, bool)] = &[
    ("writing.keystroke", false),
    ("writing.word_added", false),
    ("writing.paragraph_completed", false),
    ("writing.session_started", false),
    ("writing.session_ended", false),
    ("writing.session_paused", false),
    ("writing.session_resumed", false),
    ("writing.flow_state_entered", true),
    ("writing.flow_state_exited", true),
    ("writing.session_state_changed", true),
    ("collaboration.user_joined", false),
    ("collaboration.user_left", false),
    ("collaboration.cursor_moved", false),
    ("collaboration.edit_applied", false),
    ("collaboration.comment_added", false),
    ("collaboration.comment_resolved", false),
    ("collaboration.conflict_detected", true),
    ("collaboration.conflict_resolved", true),
    ("collaboration.presence_updated", false),
    ("publishing.status_changed", false),
    ("publishing.upload_started", false),
    ("publishing.upload_completed", false),
    ("publishing.upload_failed", false),
    ("publishing.review_completed", false),
    ("publishing.book_published", false),
    ("publishing.sales_updated", false),
    ("analytics.metric_updated", true),
    ("analytics.threshold_crossed", true),
    ("analytics.anomaly_detected", true),
    ("automation.workflow_started", false),
    ("automation.action_executed", false),
    ("automation.workflow_completed", false),
    ("automation.workflow_failed", false),
    ("system.error", false),
    ("system.dead_letter", true),
];

impl EventType {
    /// Looks up a type by its `category.name`.
    pub fn lookup(name: &str) -> Result<EventType, UnknownType> {
        match CATALOGUE.iter().find(|(n, _)| *n == name) {
            Some(&(name, derived)) => Ok(EventType {
                name,
                // Invariant: every catalogue name starts with a known category.
                category: Category::of_type(name).unwrap_or(Category::System),
                derived,
            }),
            None => Err(UnknownType {
                given: name.to_owned(),
                closest: closest_types(name),
            }),
        }
    }

    /// Every known type.
    pub fn all() -> impl Iterator<Item = EventType> {
        CATALOGUE
            .iter()
            .filter_map(|(n, _)| EventType::lookup(n).ok())
    }
}

/// A type name that is not in the catalogue, with the nearest known names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownType {
    pub given: String,
    pub closest: Vec<&'static str>,
}

impl fmt::Display for UnknownType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown event type {:?}", self.given)?;
        if !self.closest.is_empty() {
            write!(f, "; did you mean {}?", self.closest.join(", "))?;
        }
        Ok(())
    }
}

/// The (at most three) catalogue names closest to `name` by edit distance.
fn closest_types(name: &str) -> Vec<&'static str> {
    let mut scored: Vec<(usize, &'static str)> = CATALOGUE
        .iter()
        .map(|(n, _)| (edit_distance(name, n), *n))
        .collect();
    scored.sort();
    let best = scored.first().map(|(d, _)| *d).unwrap_or(0);
    scored
        .into_iter()
        .filter(|(d, _)| *d <= best + 2 && *d <= name.len().max(4))
        .take(3)
        .map(|(_, n)| n)
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_follow_the_contract() {
        let mut e = Event {
            id: "e1".into(),
            event_type: "writing.keystroke".into(),
            ts: 0,
            user_id: Some("u1".into()),
            project_id: Some("p1".into()),
            document_id: Some("d1".into()),
            data: serde_json::json!({}),
        };
        assert_eq!(e.partition_key(), "u1");
        e.event_type = "collaboration.cursor_moved".into();
        assert_eq!(e.partition_key(), "d1");
        e.event_type = "publishing.book_published".into();
        assert_eq!(e.partition_key(), "p1");
        e.event_type = "system.error".into();
        assert_eq!(e.partition_key(), "system.error");
    }

    #[test]
    fn unknown_type_suggests_the_closest_known_types() {
        let err = EventType::lookup("writing.keystrok").unwrap_err();
        assert_eq!(err.closest.first(), Some(&"writing.keystroke"));
        assert!(err.to_string().contains("did you mean writing.keystroke"));
    }

    #[test]
    fn catalogue_covers_every_category() {
        for c in Category::ALL {
            assert!(EventType::all().any(|t| t.category == c), "{c}");
        }
        assert_eq!(EventType::all().count(), CATALOGUE.len());
    }
}
