//! Why an event was rejected: [`DecodeError`], shared by the JSON codec and
//! payload validation, with the field (a JSON path relative to the event) and
//! what was expected and found.

use crate::fault::{Classify, Fault};
use serde_json::Value;

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct DecodeError {
    /// Stable machine-readable code (`missing_field`, `invalid_field`, …).
    pub code: &'static str,
    /// JSON path of the offending field, relative to the event (`data.words`).
    pub field: Option<String>,
    /// What was expected and what was found.
    pub message: String,
}

impl DecodeError {
    pub(crate) fn new(code: &'static str, field: Option<&str>, message: impl Into<String>) -> Self {
        DecodeError {
            code,
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(field: &str, expected: &str, got: &Value) -> Self {
        DecodeError::new(
            "invalid_field",
            Some(field),
            format!("expected {expected}, got {}", describe(got)),
        )
    }

    pub(crate) fn missing(field: &str, expected: &str) -> Self {
        DecodeError::new(
            "missing_field",
            Some(field),
            format!("required field is missing (expected {expected})"),
        )
    }

    fn render(&self) -> String {
        match &self.field {
            Some(f) => format!("{f}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// A short rendering of a JSON value for error messages (never the whole payload).
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() <= 40 => format!("{s:?}"),
        Value::String(s) => format!("a string of {} bytes", s.len()),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

/// A rejected event is always the sender's to fix; sending it again unchanged
/// fails again.
impl Classify for DecodeError {
    fn fault(&self) -> Fault {
        Fault::Caller
    }
}
