//! The event envelope and the catalogue of event types.

use crate::payload::Payload;
use crate::text::Text;
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One event, as it travels through the log, the dataflow and the sinks.
///
/// Derived events (the pipeline's outputs) use the same envelope so that a
/// consumer reads every stream the same way. The type is not stored apart
/// from the payload: it is `data`'s variant ([`Event::event_type`]).
///
/// JSON form (the wire contract): `{"id","type","ts","user_id"?,
/// "project_id"?,"document_id"?,"data":{…}}`. Deserializing this form is for
/// trusted input (the log, files written by inkstream); untrusted input goes
/// through [`crate::json`], whose errors name the field.
///
/// Laid out as declared (`repr(C)`), the fields each stage reads first
/// together at the front: the input reads `ts` and `id` of every event
/// (32 bytes, adjacent, so mostly one cache line), an operator `ts`,
/// `user_id` and the payload's variant. Arranged by the compiler, `ts`
/// came last, 96 bytes after `id`: a second cache miss per event on the
/// worker that had not decoded it.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct Event {
    /// Event time: milliseconds since the Unix epoch.
    pub ts: i64,
    /// Client-chosen idempotency key (≤ 128 bytes), or a generated UUIDv7.
    /// Derived events carry a deterministic id (a hash of what produced them).
    pub id: Text,
    /// The acting user; required for writing and collaboration events.
    pub user_id: Option<Text>,
    /// The typed payload; its variant is the event type.
    pub data: Payload,
    /// Required for publishing, analytics and automation events.
    pub project_id: Option<Text>,
    /// Required for collaboration events.
    pub document_id: Option<Text>,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = 4
            + usize::from(self.user_id.is_some())
            + usize::from(self.project_id.is_some())
            + usize::from(self.document_id.is_some());
        let mut m = serializer.serialize_struct("Event", n)?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("type", self.event_type())?;
        m.serialize_field("ts", &self.ts)?;
        if let Some(u) = &self.user_id {
            m.serialize_field("user_id", u)?;
        }
        if let Some(p) = &self.project_id {
            m.serialize_field("project_id", p)?;
        }
        if let Some(d) = &self.document_id {
            m.serialize_field("document_id", d)?;
        }
        m.serialize_field("data", &self.data)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            id: Text,
            #[serde(rename = "type")]
            event_type: String,
            ts: i64,
            #[serde(default)]
            user_id: Option<Text>,
            #[serde(default)]
            project_id: Option<Text>,
            #[serde(default)]
            document_id: Option<Text>,
            data: Box<serde_json::value::RawValue>,
        }
        let w = Wire::deserialize(deserializer)?;
        let data = Payload::from_json(&w.event_type, w.data.get())
            .ok_or_else(|| D::Error::custom(format!("unknown event type {:?}", w.event_type)))?
            .map_err(|e| D::Error::custom(format!("data: {e}")))?;
        Ok(Event {
            id: w.id,
            ts: w.ts,
            user_id: w.user_id,
            project_id: w.project_id,
            document_id: w.document_id,
            data,
        })
    }
}

impl Event {
    /// `category.name`, e.g. `writing.keystroke`.
    pub fn event_type(&self) -> &'static str {
        self.data.type_name()
    }

    /// The category half of the type (`writing` for `writing.keystroke`).
    pub fn category(&self) -> Category {
        self.data.category()
    }

    /// The key that decides ordering and partitioning (DESIGN.md):
    /// writing → user, collaboration → document, publishing/analytics/automation
    /// → project, system → type.
    pub fn partition_key(&self) -> &str {
        partition_key(
            self.event_type(),
            self.category(),
            self.user_id.as_deref(),
            self.project_id.as_deref(),
            self.document_id.as_deref(),
        )
    }
}

/// [`Event::partition_key`] from the envelope's fields (also read without
/// the payload: [`crate::binary::Head`]).
pub(crate) fn partition_key<'a>(
    event_type: &'a str,
    category: Category,
    user_id: Option<&'a str>,
    project_id: Option<&'a str>,
    document_id: Option<&'a str>,
) -> &'a str {
    let key = match category {
        Category::Writing => user_id,
        Category::Collaboration => document_id,
        Category::Publishing | Category::Analytics | Category::Automation => project_id,
        Category::System => None,
    };
    key.unwrap_or(event_type)
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

/// Types the pipeline emits (clients may still send them; see docs/EVENTS.md).
const DERIVED: &[&str] = &[
    "writing.flow_state_entered",
    "writing.flow_state_exited",
    "writing.session_state_changed",
    "collaboration.conflict_detected",
    "collaboration.conflict_resolved",
    "analytics.metric_updated",
    "analytics.threshold_crossed",
    "analytics.anomaly_detected",
    "analytics.alert_triggered",
    "system.dead_letter",
    "system.notification",
];

impl EventType {
    /// Looks up a type by its `category.name`.
    pub fn lookup(name: &str) -> Result<EventType, UnknownType> {
        match crate::payload::TYPES.iter().find(|n| **n == name) {
            Some(&name) => Ok(EventType {
                name,
                // Invariant: every catalogue name starts with a known category.
                category: Category::of_type(name).unwrap_or(Category::System),
                derived: DERIVED.contains(&name),
            }),
            None => Err(UnknownType {
                given: name.to_owned(),
                closest: closest_types(name),
            }),
        }
    }

    /// Every known type.
    pub fn all() -> impl Iterator<Item = EventType> {
        crate::payload::TYPES
            .iter()
            .filter_map(|n| EventType::lookup(n).ok())
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
    let mut scored: Vec<(usize, &'static str)> = crate::payload::TYPES
        .iter()
        .map(|n| (edit_distance(name, n), *n))
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

    /// The category each payload variant names is its type's first half.
    #[test]
    fn every_payload_knows_its_types_category() {
        for ty in crate::payload::TYPES {
            let payload = Payload::example(ty).unwrap();
            assert_eq!(Some(payload.category()), Category::of_type(ty), "{ty}");
            assert_eq!(crate::payload::TYPES[payload.type_index()], *ty);
        }
    }

    #[test]
    fn partition_keys_follow_the_contract() {
        let event = |ty: &str| {
            let (_, minimal, _) = crate::payload::examples()
                .into_iter()
                .find(|(t, _, _)| *t == ty)
                .unwrap();
            Event {
                id: "e1".into(),
                ts: 0,
                user_id: Some("u1".into()),
                project_id: Some("p1".into()),
                document_id: Some("d1".into()),
                data: Payload::from_json_value(ty, minimal).unwrap().unwrap(),
            }
        };
        assert_eq!(event("writing.keystroke").partition_key(), "u1");
        assert_eq!(event("collaboration.cursor_moved").partition_key(), "d1");
        assert_eq!(event("publishing.book_published").partition_key(), "p1");
        assert_eq!(event("system.error").partition_key(), "system.error");
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
        assert_eq!(EventType::all().count(), crate::payload::TYPES.len());
        for d in DERIVED {
            assert!(EventType::lookup(d).unwrap().derived, "{d}");
        }
    }
}
