//! Field paths, conditions, recipients and templates: the small expression
//! language of config rules (its syntax is in the module map of [`super`]).

use schemas::Event;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::OnceCell;

/// A field path, recipient or template of a config rule that does not parse;
/// the caller adds the key's path ([`crate::operators::OperatorConfigError`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum SyntaxError {
    #[error(
        "expected a field path such as `user_id`, `data.service` or `data.mentions[*]`, got {0:?}"
    )]
    FieldPath(String),
    #[error("expected a field path or an address such as `role:admin`, got {0:?}")]
    Recipient(String),
    #[error("unclosed `{{` in template {0:?}")]
    Unclosed(String),
    #[error("unmatched `}}` in template {0:?}")]
    Unmatched(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Root {
    Id,
    Type,
    Ts,
    UserId,
    ProjectId,
    DocumentId,
    Data,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
    All,
}

/// A parsed field path (see the module doc).
#[derive(Debug, Clone)]
pub(super) struct FieldPath {
    pub(super) root: Root,
    pub(super) steps: Vec<Step>,
}

impl FieldPath {
    pub(super) fn parse(text: &str) -> Result<FieldPath, SyntaxError> {
        let err = || SyntaxError::FieldPath(text.to_owned());
        let head_len = text.find(['.', '[']).unwrap_or(text.len());
        let root = match &text[..head_len] {
            "id" => Root::Id,
            "type" => Root::Type,
            "ts" => Root::Ts,
            "user_id" => Root::UserId,
            "project_id" => Root::ProjectId,
            "document_id" => Root::DocumentId,
            "data" => Root::Data,
            _ => return Err(err()),
        };
        let mut rest = &text[head_len..];
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let n = r.find(['.', '[']).unwrap_or(r.len());
                let name = &r[..n];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err());
                }
                steps.push(Step::Key(name.to_owned()));
                rest = &r[n..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let close = r.find(']').ok_or_else(err)?;
                let inside = &r[..close];
                steps.push(if inside == "*" {
                    Step::All
                } else {
                    Step::Index(inside.parse().map_err(|_| err())?)
                });
                rest = &r[close + 1..];
            } else {
                return Err(err());
            }
        }
        if root != Root::Data && !steps.is_empty() {
            return Err(err());
        }
        Ok(FieldPath { root, steps })
    }

    pub(super) fn fans_out(&self) -> bool {
        self.steps.contains(&Step::All)
    }

    /// The values at this path (several with `[*]`, none when missing).
    pub(super) fn eval<'a>(&self, v: &'a View<'a>) -> Vec<Cow<'a, Value>> {
        let owned = |s: &Option<schemas::Text>| {
            s.as_ref().map(|s| Cow::Owned(Value::String(s.to_string())))
        };
        let e = v.event;
        let one = match self.root {
            Root::Id => Some(Cow::Owned(Value::String(e.id.to_string()))),
            Root::Type => Some(Cow::Owned(Value::String(e.event_type().to_owned()))),
            Root::Ts => Some(Cow::Owned(Value::from(e.ts))),
            Root::UserId => owned(&e.user_id),
            Root::ProjectId => owned(&e.project_id),
            Root::DocumentId => owned(&e.document_id),
            Root::Data => {
                let mut cur: Vec<&'a Value> = vec![v.data()];
                for step in &self.steps {
                    let mut next = Vec::with_capacity(cur.len());
                    for c in cur {
                        match step {
                            Step::Key(k) => next.extend(c.get(k.as_str())),
                            Step::Index(i) => next.extend(c.get(*i)),
                            Step::All => {
                                if let Value::Array(a) = c {
                                    next.extend(a.iter());
                                }
                            }
                        }
                    }
                    cur = next;
                }
                return cur
                    .into_iter()
                    .filter(|v| !v.is_null())
                    .map(Cow::Borrowed)
                    .collect();
            }
        };
        one.into_iter().collect()
    }
}

/// An event with its `data` as JSON, built on first use only.
pub(super) struct View<'a> {
    pub(super) event: &'a Event,
    pub(super) data: OnceCell<Value>,
}

impl<'a> View<'a> {
    pub(super) fn new(event: &'a Event) -> View<'a> {
        View {
            event,
            data: OnceCell::new(),
        }
    }

    pub(super) fn data(&self) -> &Value {
        self.data.get_or_init(|| self.event.data.to_json_value())
    }
}

/// A value as text (keys, recipients, templates); `None` for objects/arrays.
pub(super) fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
}

#[derive(Debug, Clone)]
pub(super) struct Condition {
    pub(super) field: FieldPath,
    pub(super) op: Op,
    pub(super) value: Value,
}

pub(super) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

impl Condition {
    pub(super) fn holds(&self, v: &View<'_>) -> bool {
        self.field.eval(v).iter().any(|x| self.test(x))
    }

    pub(super) fn test(&self, x: &Value) -> bool {
        let order = || match (x, &self.value) {
            (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
            (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
            _ => None,
        };
        use std::cmp::Ordering::*;
        match self.op {
            Op::Eq => json_eq(x, &self.value),
            Op::Ne => !json_eq(x, &self.value),
            Op::Gt => order() == Some(Greater),
            Op::Gte => matches!(order(), Some(Greater | Equal)),
            Op::Lt => order() == Some(Less),
            Op::Lte => matches!(order(), Some(Less | Equal)),
            Op::Contains => match (x, &self.value) {
                (Value::String(s), Value::String(t)) => s.contains(t.as_str()),
                (Value::Array(a), t) => a.iter().any(|e| json_eq(e, t)),
                _ => false,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Recipient {
    Path(FieldPath),
    Literal(String),
}

impl Recipient {
    pub(super) fn parse(text: &str) -> Result<Recipient, SyntaxError> {
        match text.split_once(':') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(Recipient::Literal(text.into())),
            Some(_) => Err(SyntaxError::Recipient(text.to_owned())),
            None => FieldPath::parse(text).map(Recipient::Path),
        }
    }

    pub(super) fn resolve(&self, v: &View<'_>) -> Vec<String> {
        match self {
            Recipient::Literal(s) => vec![s.clone()],
            Recipient::Path(p) => {
                let mut out: Vec<String> = p.eval(v).iter().filter_map(|x| as_text(x)).collect();
                // The same user twice in a list gets one alert; keep first-seen order.
                let mut seen = std::collections::HashSet::new();
                out.retain(|r| !r.is_empty() && seen.insert(r.clone()));
                out
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(super) enum Piece {
    Text(String),
    Field(FieldPath),
}

/// `"… {path} …"`: values at the path joined by `, `; missing → empty.
#[derive(Debug, Clone)]
pub(super) struct Template(pub(super) Vec<Piece>);

impl Template {
    pub(super) fn parse(text: &str) -> Result<Template, SyntaxError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| SyntaxError::Unclosed(text.to_owned()))?;
            pieces.push(Piece::Field(FieldPath::parse(&after[..close])?));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(SyntaxError::Unmatched(text.to_owned()));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    pub(super) fn render(&self, v: &View<'_>) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Field(f) => {
                    let parts: Vec<String> = f
                        .eval(v)
                        .iter()
                        .map(|x| as_text(x).unwrap_or_else(|| x.to_string()))
                        .collect();
                    s.push_str(&parts.join(", "));
                }
            }
        }
        s
    }
}
