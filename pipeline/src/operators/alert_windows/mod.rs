//! Alert rules: the built-in rules and the rules of the `[alerts]` config,
//! over every event of the dataflow (input events and derived ones).
//!
//! # What fires
//! Built-in rules (`alerts.defaults = true`, the default):
//! - `system.error` with severity ≥ `system_error_min_severity` (default
//!   `error`) → `CRITICAL` to `role:admin` (rule `system_error`, dedup
//!   `system_error:<service>:<code or ->`).
//! - `publishing.book_published` → `HIGH` to the event's `user_id`, else
//!   `project:<project_id>`, else `role:admin` (rule `book_published`,
//!   dedup `book_published:<book_id>`).
//! - `writing.flow_state_entered` → `LOW` to the writer (`user_id`; none
//!   without one) (rule `flow_state_entered`, dedup `flow_state_entered:<user>`).
//! - `collaboration.comment_added` → `MEDIUM` to each distinct mentioned
//!   user, except the author mentioning themselves (rule `mention`, dedup
//!   `mention:<document_id>:<thread_id or comment_id>`).
//! - Sales milestones: per book, the total units sold crossing a milestone
//!   of `sales_milestones` (default 100, 1 000, 10 000): a milestone `m`
//!   fires when the previous total `< m <=` the new `total_units` (a jump
//!   over several fires each, once). The previous total is the highest
//!   total seen for the book, or `total_units - units` for a book not (or
//!   no longer) in state. Emits `analytics.threshold_crossed` (rule
//!   `sales_milestone`, metric `total_units`, key = book id, threshold = the
//!   milestone, `above`, no window) and a `HIGH` alert to the user, else
//!   `project:<id>`, else `role:admin` (dedup `sales_milestone:<book>:<m>`).
//!
//! Config rules (`[[alerts.rules]]`, tagged by `kind`), each on one event
//! `type`, optionally filtered by `where` conditions:
//! - `match`: an alert per matching event and recipient, with `{path}`
//!   templates for title and body.
//! - `threshold`: per key (a field path; one global series without it),
//!   `count`, `sum` or `avg` of the events of the last `window`: the window
//!   at time `t` holds the events with `t - window < ts <= t` (start
//!   exclusive, as WPM). `above` fires when the aggregate goes from
//!   `< threshold` to `>= threshold` (exactly at the threshold is above),
//!   `below` when it goes back under — including when the window slides
//!   past events: that transition has `ts` = the moment an event leaves
//!   (`its ts + window`) and fires once the frontier reaches it. Never
//!   repeated while the state holds. A new key starts below; a window that
//!   empties ends its series: `below` (value 0) fires if it was above and
//!   the key's state is dropped. Emits `analytics.threshold_crossed`, and an
//!   alert for the crossings named by `notify` (default `above`) when the
//!   rule has a `recipient`.
//! - `anomaly`: per key, the last `window` values (samples) of a numeric
//!   field; with at least `min_samples` of them, a value with
//!   `|value - mean| > k * stddev` (population standard deviation of the
//!   previous values; strictly greater) emits `analytics.anomaly_detected`
//!   and, with a `recipient`, an alert. The value then joins the history.
//!
//! # Field paths, conditions, recipients, templates
//! A field path is an envelope field (`id`, `type`, `ts`, `user_id`,
//! `project_id`, `document_id`) or `data` followed by `.name`, `[N]` or
//! `[*]` steps (`data.mentions[*]` yields every element). Events are
//! serialized to JSON only when a config rule on their type reads a
//! `data` path, once per event; the built-in rules use the typed payloads.
//! A condition `{field, op, value}` (ops `eq ne gt gte lt lte contains`)
//! holds when any value at the path satisfies it; a missing field satisfies
//! none (not even `ne`). Numbers compare as numbers, strings
//! lexicographically; `contains` is a substring test on strings and an
//! element test on arrays. A recipient is a field path whose values are
//! user ids, or a literal address `prefix:value` (`role:admin`,
//! `project:p1`); a path yielding nothing sends no alert.
//!
//! # Outputs
//! - `analytics.alert_triggered`: `user_id` = the recipient when it is a
//!   user id (so the fanout routes it to that user only; none for `role:` /
//!   `project:` addresses), `project_id`/`document_id` of the source event
//!   (a `project:` recipient sets `project_id`). `source_event_id` is the
//!   input event for match and built-in rules, the `threshold_crossed` /
//!   `anomaly_detected` event for windowed and anomaly rules.
//! - `analytics.threshold_crossed` / `analytics.anomaly_detected`: the
//!   envelope (user, project, document) of the event that caused them (for
//!   a window sliding, of the key's latest event).
//! - Ids: `derived_id("alerts", …)` of the rule, the source event id, the
//!   key, the recipient and the dedup key (or direction and time), so replays
//!   reproduce them.
//!
//! # Time and determinism
//! Stateless rules (match rules and the built-in rules but sales) are
//! **live**: emitted as each container is processed, at its stamp, with
//! `ts` = the source event's time. Stateful rules (sales milestones,
//! thresholds, anomalies) are **frontier-driven**: the live stage extracts a
//! small [`Observation`] per (rule, key) that the event feeds; an
//! [`AlertState`] in the operator runtime ([`crate::runtime::keyed`],
//! [`Order::EventTime`]) exchanges them by (rule, key), parks them by
//! event-time epoch and, once the frontier passes an epoch, processes its
//! observations in (ts, event id) order; the runtime also checkpoints the
//! state and the parked observations (see [`AlertState`] for how the rules
//! come back after a restore). Arrival
//! order was not an option: this operator reads input events *and* derived
//! events of other operators, and a rule's key is not the log's partition
//! key, so no arrival order per key is reproducible across workers and
//! batchings; event time and the (unique) id are. The price is a delay of
//! about the disorder bound for these alerts. Duplicated observations (same
//! event id) count once.
//!
//! State: threshold keys live while their window holds events; anomaly
//! series and per-book sales totals idle for more than `state_ttl` of event
//! time are forgotten (an observation more than `state_ttl` after its key's
//! last one starts afresh: a book falls back to `total_units - units`),
//! whatever the batching; a periodic sweep frees their memory.

use crate::runtime::{Core, Keyed, OperatorCtx, Order};
use crate::operators::{derived_id, stable_hash};
use crate::runtime::{Record, Timed};
use schemas::payload::{
    AlertTriggered, AnomalyDetected, Direction, Payload, Priority, Severity, ThresholdCrossed,
};
use schemas::{Event, EventType};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

// ---- config ---------------------------------------------------------------------------------

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// The built-in rules (system error, book published, flow state, sales
    /// milestones, mentions) are on (default true).
    pub defaults: bool,
    /// Total units sold per book whose crossing alerts (units; default
    /// `[100, 1000, 10000]`; each must be positive).
    pub sales_milestones: Vec<i64>,
    /// Lowest `system.error` severity that alerts (default `error`:
    /// `error` and `critical` alert, `debug`/`info`/`warning` do not).
    pub system_error_min_severity: Severity,
    /// Event time after which an idle anomaly series or book total is
    /// forgotten (default 24 h).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub state_ttl: Duration,
    /// `[[alerts.rules]]` (default none).
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            defaults: true,
            sales_milestones: vec![100, 1_000, 10_000],
            system_error_min_severity: Severity::Error,
            state_ttl: Duration::from_secs(24 * 3600),
            rules: Vec::new(),
        }
    }
}

/// One `[[alerts.rules]]` entry, tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RuleConfig {
    Match(MatchRuleConfig),
    Threshold(ThresholdRuleConfig),
    Anomaly(AnomalyRuleConfig),
}

/// `kind = "match"`: an alert for every matching event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchRuleConfig {
    /// Rule name, unique (default `match_<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Event type, `category.name`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Conditions, all of which must hold (default none).
    #[serde(default, rename = "where")]
    pub conditions: Vec<ConditionConfig>,
    /// `LOW`, `MEDIUM` (default), `HIGH` or `CRITICAL`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Field path of the recipient user id(s), or a literal `prefix:value`.
    pub recipient: String,
    /// Field path of the dedup key's key part (default: the partition key).
    #[serde(default)]
    pub key: Option<String>,
    /// Title template, `{path}` substituted (default: the rule name).
    #[serde(default)]
    pub title: Option<String>,
    /// Body template, `{path}` substituted (default `{type} {id}`).
    #[serde(default)]
    pub body: Option<String>,
}

/// `kind = "threshold"`: an aggregate over a sliding event-time window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRuleConfig {
    /// Rule name, unique (default `threshold_<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Event type, `category.name`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Conditions, all of which must hold (default none).
    #[serde(default, rename = "where")]
    pub conditions: Vec<ConditionConfig>,
    /// Field path of the series key (default: one global series, key `*`).
    #[serde(default)]
    pub key: Option<String>,
    /// `count`, `sum` or `avg`.
    pub aggregate: String,
    /// Field path of the numeric value (`sum`/`avg` only; `[*]` not allowed).
    #[serde(default)]
    pub value: Option<String>,
    /// Window length (e.g. "5m"; positive).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub window: Duration,
    /// The threshold, in the aggregate's unit.
    pub threshold: f64,
    /// Metric name in outputs (default `count` or `sum(<value>)`/`avg(<value>)`).
    #[serde(default)]
    pub metric: Option<String>,
    /// `LOW`, `MEDIUM` (default), `HIGH` or `CRITICAL`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Recipient (as for match rules); none: `threshold_crossed` only.
    #[serde(default)]
    pub recipient: Option<String>,
    /// Which crossings alert: `above` (default), `below` or `both`.
    #[serde(default)]
    pub notify: Option<String>,
}

/// `kind = "anomaly"`: a value far from its series' rolling mean.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRuleConfig {
    /// Rule name, unique (default `anomaly_<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Event type, `category.name`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Conditions, all of which must hold (default none).
    #[serde(default, rename = "where")]
    pub conditions: Vec<ConditionConfig>,
    /// Field path of the series key (default: one global series, key `*`).
    #[serde(default)]
    pub key: Option<String>,
    /// Field path of the numeric value (`[*]` not allowed).
    pub value: String,
    /// Values kept per key (samples; default 30, 2..=10 000).
    #[serde(default = "default_anomaly_window")]
    pub window: usize,
    /// Standard deviations from the mean that count as an anomaly (default 3; positive).
    #[serde(default = "default_k")]
    pub k: f64,
    /// Fewer previous values never fire (samples; default 10, 2..=window).
    #[serde(default = "default_min_samples")]
    pub min_samples: usize,
    /// Metric name in outputs (default: the value path).
    #[serde(default)]
    pub metric: Option<String>,
    /// `LOW`, `MEDIUM` (default), `HIGH` or `CRITICAL`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Recipient (as for match rules); none: `anomaly_detected` only.
    #[serde(default)]
    pub recipient: Option<String>,
}

fn default_anomaly_window() -> usize {
    30
}
fn default_k() -> f64 {
    3.0
}
fn default_min_samples() -> usize {
    10
}

/// `{field, op, value}` in a rule's `where`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// Field path.
    pub field: String,
    /// `eq`, `ne`, `gt`, `gte`, `lt`, `lte` or `contains`.
    pub op: String,
    /// Value compared with (string, number or boolean).
    pub value: Value,
}

/// An invalid `[alerts]` section, with the path of the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct AlertsConfigError {
    /// e.g. `alerts.rules[2].aggregate`.
    pub path: String,
    pub message: String,
}

fn invalid<T>(path: String, message: impl Into<String>) -> Result<T, AlertsConfigError> {
    Err(AlertsConfigError {
        path,
        message: message.into(),
    })
}

// ---- compiled rules -------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Root {
    Id,
    Type,
    Ts,
    UserId,
    ProjectId,
    DocumentId,
    Data,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    All,
}

/// A parsed field path (see the module doc).
#[derive(Debug, Clone)]
struct FieldPath {
    root: Root,
    steps: Vec<Step>,
}

impl FieldPath {
    fn parse(text: &str) -> Result<FieldPath, String> {
        let err = || {
            format!(
                "expected a field path such as `user_id`, `data.service` or `data.mentions[*]`, got {text:?}"
            )
        };
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

    fn fans_out(&self) -> bool {
        self.steps.contains(&Step::All)
    }

    /// The values at this path (several with `[*]`, none when missing).
    fn eval<'a>(&self, v: &'a View<'a>) -> Vec<Cow<'a, Value>> {
        let owned = |s: &Option<String>| s.as_ref().map(|s| Cow::Owned(Value::String(s.clone())));
        let e = v.event;
        let one = match self.root {
            Root::Id => Some(Cow::Owned(Value::String(e.id.clone()))),
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
struct View<'a> {
    event: &'a Event,
    data: OnceCell<Value>,
}

impl<'a> View<'a> {
    fn new(event: &'a Event) -> View<'a> {
        View {
            event,
            data: OnceCell::new(),
        }
    }

    fn data(&self) -> &Value {
        self.data.get_or_init(|| self.event.data.to_json_value())
    }
}

/// A value as text (keys, recipients, templates); `None` for objects/arrays.
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Contains,
}

#[derive(Debug, Clone)]
struct Condition {
    field: FieldPath,
    op: Op,
    value: Value,
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

impl Condition {
    fn holds(&self, v: &View<'_>) -> bool {
        self.field.eval(v).iter().any(|x| self.test(x))
    }

    fn test(&self, x: &Value) -> bool {
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
enum Recipient {
    Path(FieldPath),
    Literal(String),
}

impl Recipient {
    fn parse(text: &str) -> Result<Recipient, String> {
        match text.split_once(':') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(Recipient::Literal(text.into())),
            Some(_) => Err(format!(
                "expected a field path or an address such as `role:admin`, got {text:?}"
            )),
            None => FieldPath::parse(text).map(Recipient::Path),
        }
    }

    fn resolve(&self, v: &View<'_>) -> Vec<String> {
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
enum Piece {
    Text(String),
    Field(FieldPath),
}

/// `"… {path} …"`: values at the path joined by `, `; missing → empty.
#[derive(Debug, Clone)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in template {text:?}"))?;
            pieces.push(Piece::Field(FieldPath::parse(&after[..close])?));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched `}}` in template {text:?}"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    fn render(&self, v: &View<'_>) -> String {
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

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Aggregate {
    Count,
    Sum,
    Avg,
}

/// What a threshold rule's windows need (the field paths stay with the live
/// stage): plain data, saved with the windows at each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ThresholdRule {
    aggregate: Aggregate,
    window_ms: i64,
    threshold: f64,
    metric: String,
    notify_above: bool,
    notify_below: bool,
}

/// What an anomaly rule's series need (plain data, as [`ThresholdRule`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AnomalyRule {
    window: usize,
    k: f64,
    min_samples: usize,
    metric: String,
}

#[derive(Debug, Clone)]
enum RuleKind {
    Match {
        key: Option<FieldPath>,
        title: Template,
        body: Template,
    },
    Threshold {
        key: Option<FieldPath>,
        /// `None`: count (every event weighs 1).
        value: Option<FieldPath>,
        params: ThresholdRule,
    },
    Anomaly {
        key: Option<FieldPath>,
        value: FieldPath,
        params: AnomalyRule,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    conditions: Vec<Condition>,
    priority: Priority,
    recipient: Option<Recipient>,
    kind: RuleKind,
}

/// The rules, validated and compiled: construct once, share (`Arc`).
#[derive(Debug, Clone)]
pub struct AlertRules {
    defaults: bool,
    /// Sorted, distinct, positive.
    milestones: Vec<i64>,
    min_severity: u8,
    state_ttl_ms: i64,
    rules: Vec<Rule>,
    /// Config rule indices by event type, in config order.
    by_type: HashMap<&'static str, Vec<u32>>,
}

fn severity_rank(s: Severity) -> u8 {
    match s {
        Severity::Debug => 0,
        Severity::Info => 1,
        Severity::Warning => 2,
        Severity::Error => 3,
        Severity::Critical => 4,
    }
}

/// Names of the built-in rules (reserved).
const BUILTIN_NAMES: &[&str] = &[
    "system_error",
    "book_published",
    "flow_state_entered",
    "mention",
    "sales_milestone",
];

/// The rule index of sales milestones in [`Observation::rule`].
const SALES: u32 = u32::MAX;

impl AlertRules {
    /// Validates and compiles `[alerts]`; errors name the key path
    /// (`alerts.rules[2].aggregate: expected one of count, sum, avg`).
    pub fn new(config: &AlertsConfig) -> Result<AlertRules, AlertsConfigError> {
        let mut milestones = Vec::with_capacity(config.sales_milestones.len());
        for (i, m) in config.sales_milestones.iter().enumerate() {
            if *m <= 0 {
                return invalid(format!("alerts.sales_milestones[{i}]"), "must be positive");
            }
            milestones.push(*m);
        }
        milestones.sort_unstable();
        milestones.dedup();
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut by_type: HashMap<&'static str, Vec<u32>> = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, rc) in config.rules.iter().enumerate() {
            let at = |field: &str| format!("alerts.rules[{i}].{field}");
            let (kind_name, name, event_type, conditions, priority, recipient) = match rc {
                RuleConfig::Match(m) => (
                    "match",
                    &m.name,
                    &m.event_type,
                    &m.conditions,
                    &m.priority,
                    Some(&m.recipient),
                ),
                RuleConfig::Threshold(t) => (
                    "threshold",
                    &t.name,
                    &t.event_type,
                    &t.conditions,
                    &t.priority,
                    t.recipient.as_ref(),
                ),
                RuleConfig::Anomaly(a) => (
                    "anomaly",
                    &a.name,
                    &a.event_type,
                    &a.conditions,
                    &a.priority,
                    a.recipient.as_ref(),
                ),
            };
            let name = name.clone().unwrap_or_else(|| format!("{kind_name}_{i}"));
            if name.is_empty() {
                return invalid(at("name"), "must not be empty");
            }
            if BUILTIN_NAMES.contains(&name.as_str()) {
                return invalid(
                    at("name"),
                    format!("{name:?} is the name of a built-in rule"),
                );
            }
            if !names.insert(name.clone()) {
                return invalid(at("name"), format!("{name:?} is used by another rule"));
            }
            let ty = EventType::lookup(event_type)
                .map_err(|e| AlertsConfigError {
                    path: at("type"),
                    message: e.to_string(),
                })?
                .name;
            let path = |field: &str, text: &str| {
                FieldPath::parse(text).map_err(|message| AlertsConfigError {
                    path: at(field),
                    message,
                })
            };
            let mut conds = Vec::with_capacity(conditions.len());
            for (j, c) in conditions.iter().enumerate() {
                let field = path(&format!("where[{j}].field"), &c.field)?;
                let op = match c.op.as_str() {
                    "eq" => Op::Eq,
                    "ne" => Op::Ne,
                    "gt" => Op::Gt,
                    "gte" => Op::Gte,
                    "lt" => Op::Lt,
                    "lte" => Op::Lte,
                    "contains" => Op::Contains,
                    _ => {
                        return invalid(
                            at(&format!("where[{j}].op")),
                            "expected one of eq, ne, gt, gte, lt, lte, contains",
                        );
                    }
                };
                let ordered = matches!(op, Op::Gt | Op::Gte | Op::Lt | Op::Lte);
                if ordered && !(c.value.is_number() || c.value.is_string()) {
                    return invalid(
                        at(&format!("where[{j}].value")),
                        "gt, gte, lt and lte compare with a number or a string",
                    );
                }
                if !(c.value.is_number() || c.value.is_string() || c.value.is_boolean()) {
                    return invalid(
                        at(&format!("where[{j}].value")),
                        "expected a string, a number or a boolean",
                    );
                }
                conds.push(Condition {
                    field,
                    op,
                    value: c.value.clone(),
                });
            }
            let priority = match priority.as_deref().map(str::to_ascii_uppercase).as_deref() {
                None | Some("MEDIUM") => Priority::Medium,
                Some("LOW") => Priority::Low,
                Some("HIGH") => Priority::High,
                Some("CRITICAL") => Priority::Critical,
                Some(_) => {
                    return invalid(
                        at("priority"),
                        "expected one of LOW, MEDIUM, HIGH, CRITICAL",
                    );
                }
            };
            let recipient = match recipient {
                Some(r) => Some(Recipient::parse(r).map_err(|message| AlertsConfigError {
                    path: at("recipient"),
                    message,
                })?),
                None => None,
            };
            let key = |k: &Option<String>| k.as_deref().map(|k| path("key", k)).transpose();
            let kind = match rc {
                RuleConfig::Match(m) => {
                    let template = |field: &str, text: &str| {
                        Template::parse(text).map_err(|message| AlertsConfigError {
                            path: at(field),
                            message,
                        })
                    };
                    RuleKind::Match {
                        key: key(&m.key)?,
                        title: match &m.title {
                            Some(t) => template("title", t)?,
                            None => Template(vec![Piece::Text(name.clone())]),
                        },
                        body: template("body", m.body.as_deref().unwrap_or("{type} {id}"))?,
                    }
                }
                RuleConfig::Threshold(t) => {
                    let aggregate = match t.aggregate.as_str() {
                        "count" => Aggregate::Count,
                        "sum" => Aggregate::Sum,
                        "avg" => Aggregate::Avg,
                        _ => return invalid(at("aggregate"), "expected one of count, sum, avg"),
                    };
                    let value = match (&t.value, aggregate) {
                        (None, Aggregate::Count) => None,
                        (Some(_), Aggregate::Count) => {
                            return invalid(at("value"), "count takes no value");
                        }
                        (None, _) => {
                            return invalid(at("value"), "sum and avg need a value field path");
                        }
                        (Some(v), _) => {
                            let p = path("value", v)?;
                            if p.fans_out() {
                                return invalid(at("value"), "a value path cannot use [*]");
                            }
                            Some(p)
                        }
                    };
                    if t.window.is_zero() {
                        return invalid(at("window"), "must be positive");
                    }
                    if !t.threshold.is_finite() {
                        return invalid(at("threshold"), "must be a finite number");
                    }
                    let (notify_above, notify_below) = match t.notify.as_deref() {
                        None | Some("above") => (true, false),
                        Some("below") => (false, true),
                        Some("both") => (true, true),
                        Some(_) => {
                            return invalid(at("notify"), "expected one of above, below, both");
                        }
                    };
                    let metric = t
                        .metric
                        .clone()
                        .unwrap_or_else(|| match (&t.value, aggregate) {
                            (Some(v), Aggregate::Sum) => format!("sum({v})"),
                            (Some(v), Aggregate::Avg) => format!("avg({v})"),
                            _ => "count".to_owned(),
                        });
                    RuleKind::Threshold {
                        key: key(&t.key)?,
                        value,
                        params: ThresholdRule {
                            aggregate,
                            window_ms: t.window.as_millis().min(i64::MAX as u128 / 4) as i64,
                            threshold: t.threshold,
                            metric,
                            notify_above,
                            notify_below,
                        },
                    }
                }
                RuleConfig::Anomaly(a) => {
                    let value = path("value", &a.value)?;
                    if value.fans_out() {
                        return invalid(at("value"), "a value path cannot use [*]");
                    }
                    if !(2..=10_000).contains(&a.window) {
                        return invalid(at("window"), "expected 2 to 10000 samples");
                    }
                    if a.min_samples < 2 || a.min_samples > a.window {
                        return invalid(
                            at("min_samples"),
                            format!("expected 2 to window ({}) samples", a.window),
                        );
                    }
                    if !(a.k.is_finite() && a.k > 0.0) {
                        return invalid(at("k"), "must be a positive number");
                    }
                    RuleKind::Anomaly {
                        key: key(&a.key)?,
                        value,
                        params: AnomalyRule {
                            window: a.window,
                            k: a.k,
                            min_samples: a.min_samples,
                            metric: a.metric.clone().unwrap_or_else(|| a.value.clone()),
                        },
                    }
                }
            };
            by_type.entry(ty).or_default().push(i as u32);
            rules.push(Rule {
                name,
                conditions: conds,
                priority,
                recipient,
                kind,
            });
        }
        Ok(AlertRules {
            defaults: config.defaults,
            milestones,
            min_severity: severity_rank(config.system_error_min_severity),
            state_ttl_ms: config.state_ttl.as_millis().min(i64::MAX as u128 / 4) as i64,
            rules,
            by_type,
        })
    }

    /// The built-in rules only, with their default settings (`defaults` on
    /// or off): what runs when a config that failed validation reaches the
    /// wrapper anyway.
    pub fn builtin(defaults: bool) -> AlertRules {
        let d = AlertsConfig::default();
        AlertRules {
            defaults,
            milestones: d.sales_milestones,
            min_severity: severity_rank(d.system_error_min_severity),
            state_ttl_ms: d.state_ttl.as_millis() as i64,
            rules: Vec::new(),
            by_type: HashMap::new(),
        }
    }

    /// The live stage: pushes the alerts of stateless rules to `alerts`
    /// (at once, `ts` = the event's) and the inputs of stateful rules to
    /// `obs`, for [`AlertState::observe`] in event-time order.
    pub fn stage(&self, e: &Event, alerts: &mut Vec<Event>, obs: &mut Vec<Observation>) {
        if self.defaults {
            self.builtin_rules(e, alerts, obs);
        }
        if self.by_type.is_empty() {
            return;
        }
        let Some(indices) = self.by_type.get(e.event_type()) else {
            return;
        };
        let view = View::new(e);
        for &ri in indices {
            let rule = &self.rules[ri as usize];
            if !rule.conditions.iter().all(|c| c.holds(&view)) {
                continue;
            }
            let recipients = || {
                rule.recipient
                    .as_ref()
                    .map(|r| r.resolve(&view))
                    .unwrap_or_default()
            };
            match &rule.kind {
                RuleKind::Match { key, title, body } => {
                    let key = match key {
                        Some(k) => k.eval(&view).first().and_then(|v| as_text(v)),
                        None => Some(e.partition_key().to_owned()),
                    }
                    .unwrap_or_default();
                    let recipients = recipients();
                    if recipients.is_empty() {
                        continue;
                    }
                    let (title, body) = (title.render(&view), body.render(&view));
                    let dedup = format!("{}:{key}", rule.name);
                    for r in &recipients {
                        alerts.push(alert_event(
                            &rule.name,
                            rule.priority,
                            r,
                            dedup.clone(),
                            title.clone(),
                            body.clone(),
                            &e.id,
                            e.ts,
                            e.project_id.as_ref(),
                            e.document_id.as_ref(),
                        ));
                    }
                }
                RuleKind::Threshold { key, value, .. } => {
                    let value = match value {
                        None => 1.0,
                        Some(p) => match p.eval(&view).first().and_then(|v| v.as_f64()) {
                            Some(v) => v,
                            None => continue, // no numeric value: not part of the series
                        },
                    };
                    push_observations(ri, key.as_ref(), &view, value, recipients(), obs);
                }
                RuleKind::Anomaly { key, value, .. } => {
                    let Some(value) = value.eval(&view).first().and_then(|v| v.as_f64()) else {
                        continue;
                    };
                    push_observations(ri, key.as_ref(), &view, value, recipients(), obs);
                }
            }
        }
    }

    fn builtin_rules(&self, e: &Event, alerts: &mut Vec<Event>, obs: &mut Vec<Observation>) {
        let owner = || match (&e.user_id, &e.project_id) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => format!("project:{p}"),
            (None, None) => "role:admin".to_owned(),
        };
        let alert = |rule, priority, recipient: &str, dedup, title, body| {
            alert_event(
                rule,
                priority,
                recipient,
                dedup,
                title,
                body,
                &e.id,
                e.ts,
                e.project_id.as_ref(),
                e.document_id.as_ref(),
            )
        };
        match &e.data {
            Payload::SystemError(err) if severity_rank(err.severity) >= self.min_severity => {
                alerts.push(alert(
                    "system_error",
                    Priority::Critical,
                    "role:admin",
                    format!(
                        "system_error:{}:{}",
                        err.service,
                        err.code.as_deref().unwrap_or("-")
                    ),
                    format!("Error in {}", err.service),
                    err.message.clone(),
                ));
            }
            Payload::PublishingBookPublished(b) => {
                alerts.push(alert(
                    "book_published",
                    Priority::High,
                    &owner(),
                    format!("book_published:{}", b.book_id),
                    format!("Published: {}", b.title),
                    match b.channels.is_empty() {
                        true => format!("{} is now published.", b.title),
                        false => {
                            format!("{} is now published on {}.", b.title, b.channels.join(", "))
                        }
                    },
                ));
            }
            Payload::WritingFlowStateEntered(f) => {
                if let Some(user) = &e.user_id {
                    alerts.push(alert(
                        "flow_state_entered",
                        Priority::Low,
                        user,
                        format!("flow_state_entered:{user}"),
                        "You're in flow".to_owned(),
                        format!(
                            "{} words per minute for {} s.",
                            fmt_num(f.wpm.round()),
                            f.sustained_ms / 1000
                        ),
                    ));
                }
            }
            Payload::CollaborationCommentAdded(c) => {
                let dedup = format!(
                    "mention:{}:{}",
                    e.document_id.as_deref().unwrap_or("-"),
                    c.thread_id.as_deref().unwrap_or(&c.comment_id)
                );
                let author = e.user_id.as_deref().unwrap_or("someone");
                for (i, m) in c.mentions.iter().enumerate() {
                    // Self-mentions and repeats in the list notify nobody new.
                    if m.is_empty() || Some(m) == e.user_id.as_ref() || c.mentions[..i].contains(m)
                    {
                        continue;
                    }
                    alerts.push(alert(
                        "mention",
                        Priority::Medium,
                        m,
                        dedup.clone(),
                        format!("{author} mentioned you"),
                        format!(
                            "{author} mentioned you in a comment on document {}.",
                            e.document_id.as_deref().unwrap_or("-")
                        ),
                    ));
                }
            }
            Payload::PublishingSalesUpdated(s) if !self.milestones.is_empty() => {
                obs.push(Observation {
                    rule: SALES,
                    key: s.book_id.clone(),
                    ts: e.ts,
                    source_id: e.id.clone(),
                    value: s.total_units as f64,
                    aux: s.units as f64,
                    user_id: e.user_id.clone(),
                    project_id: e.project_id.clone(),
                    document_id: e.document_id.clone(),
                    recipients: vec![owner()],
                });
            }
            _ => {}
        }
    }
}

fn push_observations(
    ri: u32,
    key: Option<&FieldPath>,
    view: &View<'_>,
    value: f64,
    recipients: Vec<String>,
    obs: &mut Vec<Observation>,
) {
    let keys: Vec<String> = match key {
        None => vec!["*".to_owned()],
        Some(k) => {
            let mut keys: Vec<String> = k.eval(view).iter().filter_map(|v| as_text(v)).collect();
            keys.sort();
            keys.dedup();
            keys
        }
    };
    let e = view.event;
    for key in keys {
        obs.push(Observation {
            rule: ri,
            key,
            ts: e.ts,
            source_id: e.id.clone(),
            value,
            aux: 0.0,
            user_id: e.user_id.clone(),
            project_id: e.project_id.clone(),
            document_id: e.document_id.clone(),
            recipients: recipients.clone(),
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn alert_event(
    rule: &str,
    priority: Priority,
    recipient: &str,
    dedup_key: String,
    title: String,
    body: String,
    source_id: &str,
    ts: i64,
    project_id: Option<&String>,
    document_id: Option<&String>,
) -> Event {
    let (user_id, project_id) = match recipient.split_once(':') {
        None => (Some(recipient.to_owned()), project_id.cloned()),
        Some(("project", p)) => (None, Some(p.to_owned())),
        Some(_) => (None, project_id.cloned()),
    };
    Event {
        id: derived_id(
            "alerts",
            &["alert_triggered", rule, source_id, recipient, &dedup_key],
        ),
        ts,
        user_id,
        project_id,
        document_id: document_id.cloned(),
        data: Payload::AnalyticsAlertTriggered(AlertTriggered {
            rule: rule.to_owned(),
            priority,
            recipient_id: recipient.to_owned(),
            dedup_key,
            title,
            body,
            source_event_id: source_id.to_owned(),
        }),
    }
}

/// `3` for whole numbers, `2.50` otherwise.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ms(ms: i64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{} h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{} min", m / 60_000),
        m if m % 1000 == 0 => format!("{} s", m / 1000),
        m => format!("{m} ms"),
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Above => "above",
        Direction::Below => "below",
    }
}

// ---- the frontier-driven core ---------------------------------------------------------------

/// What one event contributes to one stateful rule's series: produced by the
/// live stage, exchanged by (rule, key), processed in event-time order.
///
/// Plain strings and numbers, so bincode carries it between processes and
/// into checkpoints (the parked observations are part of a snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Index of the config rule, or `u32::MAX` for sales milestones.
    pub rule: u32,
    /// The series key (a book id for sales).
    pub key: String,
    /// Event time of the source event (ms).
    pub ts: i64,
    /// Id of the source event.
    pub source_id: String,
    /// The value (1 for counts; `total_units` for sales).
    pub value: f64,
    /// Sales: `units` of the update; else 0.
    pub aux: f64,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    pub document_id: Option<String>,
    /// Recipients of the rule's alerts, resolved on the source event.
    pub recipients: Vec<String>,
}

impl Timed for Observation {
    fn ts(&self) -> i64 {
        self.ts
    }
}

impl Observation {
    /// What makes two observations the same one (an at-least-once copy of
    /// the source event): the rest follows from the source event.
    fn identity(&self) -> (i64, &str, u32, &str) {
        (self.ts, &self.source_id, self.rule, &self.key)
    }
}

/// The order in which a key's observations must be processed: event time,
/// then the event id (unique), so it is the same on every run. Copies of one
/// observation end up next to each other ([`AlertState::observe`] skips them).
pub fn sort_observations(obs: &mut [Observation]) {
    obs.sort_by(|a, b| a.identity().cmp(&b.identity()));
}

/// The latest envelope and recipients of a series, for transitions that
/// no event carries (a window sliding).
#[derive(Default, Serialize, Deserialize)]
struct AlertSubject {
    user_id: Option<String>,
    project_id: Option<String>,
    document_id: Option<String>,
    recipients: Vec<String>,
}

impl AlertSubject {
    fn of(o: &Observation) -> AlertSubject {
        AlertSubject {
            user_id: o.user_id.clone(),
            project_id: o.project_id.clone(),
            document_id: o.document_id.clone(),
            recipients: o.recipients.clone(),
        }
    }
}

/// One key of a threshold rule: its window's events (ts, value) in time order.
#[derive(Default, Serialize, Deserialize)]
struct Window {
    entries: VecDeque<(i64, f64)>,
    sum: f64,
    /// Events removed since `sum` was last recomputed from `entries`.
    evicted: usize,
    above: bool,
    /// The deadline registered for this key (lazy deletion of older ones).
    deadline: Option<i64>,
    ctx: AlertSubject,
}

#[derive(Serialize, Deserialize)]
struct Series {
    values: VecDeque<f64>,
    last_ts: i64,
}

#[derive(Serialize, Deserialize)]
struct Book {
    max_total: i64,
    last_ts: i64,
}

/// A config rule as the stateful stage sees it: the outputs' name and
/// priority, and the parameters of its series. Its field paths, conditions
/// and recipients were applied by the live stage ([`AlertRules::stage`]),
/// whose results the observations carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesRule {
    name: String,
    priority: Priority,
    kind: SeriesKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum SeriesKind {
    /// A match rule: never observed here.
    Stateless,
    Threshold(ThresholdRule),
    Anomaly(AnomalyRule),
}

/// The stateful rules' state. Feed each (rule, key)'s observations in
/// [`sort_observations`] order; call [`AlertState::advance_to`] with the
/// watermark (no observation before it will come).
///
/// **Checkpoints.** The operator runtime saves the whole core with bincode
/// and restores it by deserializing, with no hook to hand it anything
/// afterwards. So the core holds its rules as plain data (names, priorities,
/// windows, thresholds, milestones: `SeriesRule`), copied out of the
/// compiled [`AlertRules`] at construction, not the `Arc<AlertRules>`
/// itself: that holds field paths, conditions with `serde_json::Value`s
/// (whose `Deserialize` needs `deserialize_any`, which bincode lacks) and
/// templates, none of which this stage uses. Re-attaching a skipped
/// `Arc<AlertRules>` would have needed state outside the core (a
/// process-wide `OnceLock`): one rule set per process, wrong for tests that
/// run several dataflows at once, and invisible in the snapshot. A restored
/// core therefore runs with the rules it was saved with; restoring with a
/// changed `[alerts]` section is not supported (as with a changed worker
/// count): the live stage's rule indices would name other rules.
#[derive(Serialize, Deserialize)]
pub struct AlertState {
    /// Per config rule index.
    rules: Vec<SeriesRule>,
    /// Sorted, distinct, positive.
    milestones: Vec<i64>,
    state_ttl_ms: i64,
    /// Per rule index (empty maps for other kinds).
    windows: Vec<HashMap<String, Window>>,
    /// (moment an event leaves a window, rule, key); entries whose key has
    /// since registered another deadline are skipped when they come up.
    deadlines: BTreeSet<(i64, u32, String)>,
    series: Vec<HashMap<String, Series>>,
    books: HashMap<String, Book>,
    swept_at: i64,
    /// Identity of the last observation processed: a copy sorts right after
    /// it (see [`sort_observations`]) and is skipped.
    last: Option<(i64, String, u32, String)>,
}

impl AlertState {
    pub fn new(rules: &AlertRules) -> AlertState {
        let n = rules.rules.len();
        AlertState {
            rules: rules
                .rules
                .iter()
                .map(|r| SeriesRule {
                    name: r.name.clone(),
                    priority: r.priority,
                    kind: match &r.kind {
                        RuleKind::Match { .. } => SeriesKind::Stateless,
                        RuleKind::Threshold { params, .. } => SeriesKind::Threshold(params.clone()),
                        RuleKind::Anomaly { params, .. } => SeriesKind::Anomaly(params.clone()),
                    },
                })
                .collect(),
            milestones: rules.milestones.clone(),
            state_ttl_ms: rules.state_ttl_ms,
            windows: (0..n).map(|_| HashMap::new()).collect(),
            deadlines: BTreeSet::new(),
            series: (0..n).map(|_| HashMap::new()).collect(),
            books: HashMap::new(),
            swept_at: i64::MIN,
            last: None,
        }
    }

    /// Keys held: threshold windows, anomaly series and book totals.
    pub fn state_size(&self) -> usize {
        self.windows.iter().map(HashMap::len).sum::<usize>()
            + self.series.iter().map(HashMap::len).sum::<usize>()
            + self.books.len()
    }

    pub fn observe(&mut self, o: &Observation, out: &mut Vec<Event>) {
        // The same event twice (an at-least-once copy of a derived event) counts once.
        if let Some((ts, source, rule, key)) = &self.last
            && (*ts, source.as_str(), *rule, key.as_str()) == o.identity()
        {
            return;
        }
        match &mut self.last {
            Some(last) => {
                last.0 = o.ts;
                last.1.clone_from(&o.source_id);
                last.2 = o.rule;
                last.3.clone_from(&o.key);
            }
            None => self.last = Some((o.ts, o.source_id.clone(), o.rule, o.key.clone())),
        }
        if o.rule == SALES {
            self.observe_sales(o, out);
            return;
        }
        let ri = o.rule as usize;
        let Some(rule) = self.rules.get(ri) else {
            return;
        };
        match &rule.kind {
            SeriesKind::Threshold(t) => {
                let map = &mut self.windows[ri];
                observe_threshold(map, &mut self.deadlines, ri as u32, rule, t, o, out)
            }
            SeriesKind::Anomaly(a) => {
                let map = &mut self.series[ri];
                forget_if_idle(map, &o.key, |s| s.last_ts, o.ts, self.state_ttl_ms);
                observe_anomaly(map, rule, a, o, out)
            }
            SeriesKind::Stateless => {}
        }
    }

    fn observe_sales(&mut self, o: &Observation, out: &mut Vec<Event>) {
        forget_if_idle(
            &mut self.books,
            &o.key,
            |b| b.last_ts,
            o.ts,
            self.state_ttl_ms,
        );
        let total = o.value as i64;
        let prev = match self.books.get(o.key.as_str()) {
            Some(b) => b.max_total,
            None => total - o.aux as i64,
        };
        for &m in &self.milestones {
            if !(prev < m && m <= total) {
                continue;
            }
            let m_text = m.to_string();
            let dedup = format!("sales_milestone:{}:{m}", o.key);
            for r in &o.recipients {
                out.push(alert_event(
                    "sales_milestone",
                    Priority::High,
                    r,
                    dedup.clone(),
                    format!("{m} copies sold"),
                    format!("Book {} has sold {total} copies.", o.key),
                    &o.source_id,
                    o.ts,
                    o.project_id.as_ref(),
                    o.document_id.as_ref(),
                ));
            }
            out.push(Event {
                id: derived_id(
                    "alerts",
                    &[
                        "threshold_crossed",
                        "sales_milestone",
                        &o.key,
                        &m_text,
                        &o.source_id,
                    ],
                ),
                ts: o.ts,
                user_id: o.user_id.clone(),
                project_id: o.project_id.clone(),
                document_id: o.document_id.clone(),
                data: Payload::AnalyticsThresholdCrossed(ThresholdCrossed {
                    rule: "sales_milestone".to_owned(),
                    metric: "total_units".to_owned(),
                    key: o.key.clone(),
                    value: total as f64,
                    threshold: m as f64,
                    direction: Direction::Above,
                    window_ms: None,
                }),
            });
        }
        let book = self.books.entry(o.key.clone()).or_insert(Book {
            max_total: prev,
            last_ts: o.ts,
        });
        book.max_total = book.max_total.max(prev).max(total);
        book.last_ts = book.last_ts.max(o.ts);
    }

    /// No observation before `watermark` (ms) will come: fires the window
    /// slides due at or before it (an event at exactly the deadline would
    /// come after the slide anyway) and forgets idle series.
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        while let Some((d, _, _)) = self.deadlines.first() {
            if *d > watermark {
                break;
            }
            let Some((d, ri, key)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(rule) = self.rules.get(ri as usize) else {
                continue;
            };
            let SeriesKind::Threshold(t) = &rule.kind else {
                continue;
            };
            let map = &mut self.windows[ri as usize];
            let Some(w) = map.get_mut(key.as_str()) else {
                continue;
            };
            if w.deadline != Some(d) {
                continue; // superseded by a later registration
            }
            slide(rule, t, &key, w, watermark, out);
            if w.entries.is_empty() {
                map.remove(key.as_str());
            } else {
                register(&mut self.deadlines, ri, &key, t, w);
            }
        }
        let ttl = self.state_ttl_ms;
        if watermark >= self.swept_at.saturating_add((ttl / 4).max(1)) {
            self.swept_at = watermark;
            let horizon = watermark.saturating_sub(ttl);
            for m in &mut self.series {
                m.retain(|_, s| s.last_ts >= horizon);
            }
            self.books.retain(|_, b| b.last_ts >= horizon);
        }
    }

    /// End of input (replay): time runs on with no more events, so every
    /// window slides empty (its `below` at its real moment); series end.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.advance_to(i64::MAX, out);
        for m in &mut self.series {
            m.clear();
        }
        self.books.clear();
    }
}

/// Frontier-driven, keyed by (rule, key), in the operator runtime.
impl Core for AlertState {
    type Item = Observation;
    const NAME: &'static str = "AlertWindows";
    const ORDER: Order = Order::EventTime;

    fn wants(_o: &Observation) -> bool {
        true // the live stage only makes observations of stateful rules
    }

    fn key(o: &Observation) -> u64 {
        stable_hash(&(o.rule, o.key.as_str()))
    }

    fn observe(&mut self, o: &Observation, out: &mut Vec<Event>) {
        AlertState::observe(self, o, out);
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        AlertState::advance_to(self, watermark, out);
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        AlertState::flush(self, out);
    }

    fn state_size(&self) -> usize {
        AlertState::state_size(self)
    }

    fn sort_epoch(items: &mut [Observation]) {
        sort_observations(items);
    }
}

/// Drops `key`'s entry if idle for more than `ttl_ms` before `ts`. The sweep
/// in [`AlertState::advance_to`] runs when the frontier happens to pass, so
/// it only bounds memory: this check makes "forgotten" depend on event time
/// alone, never on batching or on when the last sweep ran.
fn forget_if_idle<V>(
    map: &mut HashMap<String, V>,
    key: &str,
    last_ts: impl Fn(&V) -> i64,
    ts: i64,
    ttl_ms: i64,
) {
    if map
        .get(key)
        .is_some_and(|v| last_ts(v) < ts.saturating_sub(ttl_ms))
    {
        map.remove(key);
    }
}

fn observe_threshold(
    map: &mut HashMap<String, Window>,
    deadlines: &mut BTreeSet<(i64, u32, String)>,
    ri: u32,
    rule: &SeriesRule,
    t: &ThresholdRule,
    o: &Observation,
    out: &mut Vec<Event>,
) {
    if !map.contains_key(o.key.as_str()) {
        map.insert(o.key.clone(), Window::default());
    }
    let Some(w) = map.get_mut(o.key.as_str()) else {
        return;
    };
    // Events that left the window before this one came fire first, at their own moment.
    slide(rule, t, &o.key, w, o.ts, out);
    w.entries.push_back((o.ts, o.value));
    w.sum += o.value;
    w.ctx = AlertSubject::of(o);
    evaluate(rule, t, &o.key, w, o.ts, Some(&o.source_id), out);
    register(deadlines, ri, &o.key, t, w);
}

fn observe_anomaly(
    map: &mut HashMap<String, Series>,
    rule: &SeriesRule,
    a: &AnomalyRule,
    o: &Observation,
    out: &mut Vec<Event>,
) {
    if !map.contains_key(o.key.as_str()) {
        let values = VecDeque::with_capacity(a.window.min(64));
        map.insert(
            o.key.clone(),
            Series {
                values,
                last_ts: o.ts,
            },
        );
    }
    let Some(s) = map.get_mut(o.key.as_str()) else {
        return;
    };
    if s.values.len() >= a.min_samples {
        let n = s.values.len() as f64;
        let mean = s.values.iter().sum::<f64>() / n;
        let var = s
            .values
            .iter()
            .map(|x| (x - mean) * (x - mean))
            .sum::<f64>()
            / n;
        let stddev = var.sqrt();
        if (o.value - mean).abs() > a.k * stddev {
            let id = derived_id(
                "alerts",
                &["anomaly_detected", &rule.name, &o.key, &o.source_id],
            );
            for r in &o.recipients {
                out.push(alert_event(
                    &rule.name,
                    rule.priority,
                    r,
                    format!("{}:{}", rule.name, o.key),
                    format!("{}: unusual {}", rule.name, a.metric),
                    format!(
                        "{} for {} is {}, against a recent mean of {} (standard deviation {}).",
                        a.metric,
                        o.key,
                        fmt_num(o.value),
                        fmt_num(mean),
                        fmt_num(stddev)
                    ),
                    &id,
                    o.ts,
                    o.project_id.as_ref(),
                    o.document_id.as_ref(),
                ));
            }
            out.push(Event {
                id,
                ts: o.ts,
                user_id: o.user_id.clone(),
                project_id: o.project_id.clone(),
                document_id: o.document_id.clone(),
                data: Payload::AnalyticsAnomalyDetected(AnomalyDetected {
                    rule: rule.name.clone(),
                    metric: a.metric.clone(),
                    key: o.key.clone(),
                    value: o.value,
                    mean,
                    stddev,
                    k: a.k,
                }),
            });
        }
    }
    s.values.push_back(o.value);
    if s.values.len() > a.window {
        s.values.pop_front();
    }
    s.last_ts = s.last_ts.max(o.ts);
}

/// Registers the key's next deadline (its oldest event leaving the window).
fn register(
    deadlines: &mut BTreeSet<(i64, u32, String)>,
    ri: u32,
    key: &str,
    t: &ThresholdRule,
    w: &mut Window,
) {
    let next = w
        .entries
        .front()
        .map(|(ts, _)| ts.saturating_add(t.window_ms));
    if next != w.deadline {
        w.deadline = next;
        if let Some(d) = next {
            deadlines.insert((d, ri, key.to_owned()));
        }
    }
}

/// Removes the events that leave the window at or before `until`, one
/// moment at a time (`ts + window`), evaluating after each.
fn slide(
    rule: &SeriesRule,
    t: &ThresholdRule,
    key: &str,
    w: &mut Window,
    until: i64,
    out: &mut Vec<Event>,
) {
    while let Some(&(t0, _)) = w.entries.front() {
        let d = t0.saturating_add(t.window_ms);
        if d > until {
            break;
        }
        while let Some(&(t1, v)) = w.entries.front() {
            if t1 != t0 {
                break;
            }
            w.entries.pop_front();
            w.sum -= v;
            w.evicted += 1;
        }
        // A running sum that never empties would drift (float add/subtract):
        // recompute it once as many events have left as remain (amortized O(1)).
        if w.evicted >= w.entries.len().max(64) {
            w.sum = w.entries.iter().map(|(_, v)| v).sum();
            w.evicted = 0;
        }
        if w.entries.is_empty() {
            // Reset, so float residue of the running sum never outlives the events.
            w.sum = 0.0;
            if w.above {
                w.above = false;
                crossing(rule, t, key, &w.ctx, Direction::Below, 0.0, d, None, out);
            }
        } else {
            evaluate(rule, t, key, w, d, None, out);
        }
    }
}

fn evaluate(
    rule: &SeriesRule,
    t: &ThresholdRule,
    key: &str,
    w: &mut Window,
    ts: i64,
    source: Option<&str>,
    out: &mut Vec<Event>,
) {
    let n = w.entries.len() as f64;
    let value = match t.aggregate {
        Aggregate::Count => n,
        Aggregate::Sum => w.sum,
        Aggregate::Avg if n > 0.0 => w.sum / n,
        Aggregate::Avg => 0.0,
    };
    let above = value >= t.threshold;
    if above != w.above {
        w.above = above;
        let dir = if above {
            Direction::Above
        } else {
            Direction::Below
        };
        crossing(rule, t, key, &w.ctx, dir, value, ts, source, out);
    }
}

#[allow(clippy::too_many_arguments)]
fn crossing(
    rule: &SeriesRule,
    t: &ThresholdRule,
    key: &str,
    ctx: &AlertSubject,
    dir: Direction,
    value: f64,
    ts: i64,
    source: Option<&str>,
    out: &mut Vec<Event>,
) {
    let dir_name = direction_name(dir);
    let id = derived_id(
        "alerts",
        &[
            "threshold_crossed",
            &rule.name,
            key,
            dir_name,
            &ts.to_string(),
            source.unwrap_or(""),
        ],
    );
    let notify = match dir {
        Direction::Above => t.notify_above,
        Direction::Below => t.notify_below,
    };
    if notify {
        let verb = if dir == Direction::Above {
            "rose above"
        } else {
            "fell below"
        };
        for r in &ctx.recipients {
            out.push(alert_event(
                &rule.name,
                rule.priority,
                r,
                format!("{}:{key}:{dir_name}", rule.name),
                format!(
                    "{}: {} {verb} {}",
                    rule.name,
                    t.metric,
                    fmt_num(t.threshold)
                ),
                format!(
                    "{} for {key} is {} over the last {}.",
                    t.metric,
                    fmt_num(value),
                    fmt_ms(t.window_ms)
                ),
                &id,
                ts,
                ctx.project_id.as_ref(),
                ctx.document_id.as_ref(),
            ));
        }
    }
    out.push(Event {
        id,
        ts,
        user_id: ctx.user_id.clone(),
        project_id: ctx.project_id.clone(),
        document_id: ctx.document_id.clone(),
        data: Payload::AnalyticsThresholdCrossed(ThresholdCrossed {
            rule: rule.name.clone(),
            metric: t.metric.clone(),
            key: key.to_owned(),
            value,
            threshold: t.threshold,
            direction: dir,
            window_ms: Some(t.window_ms),
        }),
    });
}

// ---- the timely wrapper ---------------------------------------------------------------------

/// An item of the live stage's output: split right after it.
#[derive(Clone)]
enum Staged {
    Alert(Event),
    Observe(Observation),
}

/// The timely wrapper: `events.alert_rules(&config, &ctx)`.
pub trait Alerts<'scope> {
    /// Every alert rule over `self` (all events, input and derived). A
    /// config that fails [`AlertRules::new`] should have been rejected at
    /// startup; if one gets here, it is logged and only the built-in rules run.
    fn alert_rules(self, config: &AlertsConfig, ctx: &OperatorCtx) -> Stream<'scope, u64, Vec<Event>>;

    /// The same with rules already compiled.
    fn compiled_alert_rules(
        self,
        rules: Arc<AlertRules>,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>>;
}

impl<'scope> Alerts<'scope> for Stream<'scope, u64, Vec<Record>> {
    fn alert_rules(self, config: &AlertsConfig, ctx: &OperatorCtx) -> Stream<'scope, u64, Vec<Event>> {
        let rules = AlertRules::new(config).unwrap_or_else(|error| {
            tracing::error!(%error, "invalid alert rules; only the built-in rules run");
            AlertRules::builtin(config.defaults)
        });
        self.compiled_alert_rules(Arc::new(rules), ctx)
    }

    /// Two stages: the live one is stateless (nothing to checkpoint) and runs
    /// where the event is; the stateful one is an [`AlertState`] in the
    /// operator runtime ([`Keyed`]), which exchanges, orders, stamps and
    /// checkpoints it like every stateful operator.
    fn compiled_alert_rules(
        self,
        rules: Arc<AlertRules>,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>> {
        let state = AlertState::new(&rules);
        // Live stage, on the worker that has the event: no exchange of whole events.
        let staged = self.unary::<CapacityContainerBuilder<Vec<Staged>>, _, _, _>(
            Pipeline,
            "AlertMatch",
            move |_cap, _info| {
                let (mut alerts, mut obs) = (Vec::new(), Vec::new());
                move |input, output| {
                    input.for_each(|cap, data| {
                        for r in data.drain(..) {
                            rules.stage(&r.event, &mut alerts, &mut obs);
                        }
                        if !alerts.is_empty() || !obs.is_empty() {
                            let mut session = output.session(&cap);
                            session.give_iterator(alerts.drain(..).map(Staged::Alert));
                            session.give_iterator(obs.drain(..).map(Staged::Observe));
                        }
                    });
                }
            },
        );
        // `Result` is only ok_err's routing tag here, not an error path.
        #[allow(clippy::result_large_err)]
        let (live, observed): (
            Stream<'scope, u64, Vec<Event>>,
            Stream<'scope, u64, Vec<Observation>>,
        ) = staged.ok_err(|s| match s {
            Staged::Alert(e) => Ok(e),
            Staged::Observe(o) => Err(o),
        });
        live.concat(observed.keyed(state, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::payload::Keystroke;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn ev(id: &str, ty: &str, ts: i64, user: Option<&str>, data: Value) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: user.map(Into::into),
            project_id: Some("p1".into()),
            document_id: Some("d1".into()),
            data: Payload::from_json_value(ty, data).unwrap().unwrap(),
        }
    }

    fn ks(id: &str, user: &str, ts: i64, words: i64) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: Some(user.into()),
            project_id: Some("p1".into()),
            document_id: None,
            data: Payload::WritingKeystroke(Keystroke {
                keystrokes: 1,
                words,
                chars: 1,
                deleted_chars: None,
                source: Default::default(),
            }),
        }
    }

    fn sales(id: &str, ts: i64, book: &str, units: i64, total: i64) -> Event {
        ev(
            id,
            "publishing.sales_updated",
            ts,
            Some("author"),
            json!({"book_id": book, "units": units, "revenue_cents": 0, "currency": "USD",
                   "total_units": total}),
        )
    }

    fn error(id: &str, ts: i64, severity: &str) -> Event {
        ev(
            id,
            "system.error",
            ts,
            Some("u1"),
            json!({"service": "ingest", "message": "disk full", "severity": severity,
                   "code": "E42"}),
        )
    }

    /// Parses `[alerts]` TOML as the config loader does (paths in errors).
    fn config(text: &str) -> Result<AlertsConfig, String> {
        #[derive(Deserialize)]
        struct Root {
            alerts: AlertsConfig,
        }
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        serde_path_to_error::deserialize::<_, Root>(value)
            .map(|r| r.alerts)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    fn rules(text: &str) -> AlertRules {
        AlertRules::new(&config(text).unwrap()).unwrap()
    }

    fn rules_error(text: &str) -> String {
        match config(text) {
            Err(e) => e,
            Ok(c) => AlertRules::new(&c).map(|_| ()).unwrap_err().to_string(),
        }
    }

    /// Stages every event, then feeds the observations in order, epoch by
    /// epoch (advancing the watermark between epochs), and flushes.
    fn run_core(rules: &AlertRules, events: &[Event]) -> Vec<Event> {
        let mut state = AlertState::new(rules);
        let (mut out, mut obs) = (Vec::new(), Vec::new());
        for e in events {
            rules.stage(e, &mut out, &mut obs);
        }
        sort_observations(&mut obs);
        let mut i = 0;
        while i < obs.len() {
            let end = obs[i].ts.div_euclid(100) * 100 + 100;
            while i < obs.len() && obs[i].ts < end {
                state.observe(&obs[i], &mut out);
                i += 1;
            }
            state.advance_to(end, &mut out);
        }
        state.flush(&mut out);
        out
    }

    fn alerts(out: &[Event]) -> Vec<(String, Priority, String, String)> {
        out.iter()
            .filter_map(|e| match &e.data {
                Payload::AnalyticsAlertTriggered(a) => Some((
                    a.rule.clone(),
                    a.priority,
                    a.recipient_id.clone(),
                    a.dedup_key.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    fn crossings(out: &[Event]) -> Vec<(i64, String, Direction, f64)> {
        out.iter()
            .filter_map(|e| match &e.data {
                Payload::AnalyticsThresholdCrossed(t) => {
                    Some((e.ts, t.key.clone(), t.direction, t.value))
                }
                _ => None,
            })
            .collect()
    }

    fn anomalies(out: &[Event]) -> Vec<(i64, String, f64)> {
        out.iter()
            .filter_map(|e| match &e.data {
                Payload::AnalyticsAnomalyDetected(a) => Some((e.ts, a.key.clone(), a.value)),
                _ => None,
            })
            .collect()
    }

    fn live(rules: &AlertRules, e: &Event) -> Vec<Event> {
        let (mut out, mut obs) = (Vec::new(), Vec::new());
        rules.stage(e, &mut out, &mut obs);
        out
    }

    use Direction::{Above, Below};

    #[test]
    fn a_system_error_alerts_the_admins_critical_at_once() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        let out = live(&r, &error("e1", 5_000, "error"));
        assert_eq!(
            alerts(&out),
            [(
                "system_error".into(),
                Priority::Critical,
                "role:admin".into(),
                "system_error:ingest:E42".into()
            )]
        );
        let e = &out[0];
        assert_eq!(e.ts, 5_000, "live: the source event's time");
        assert_eq!(e.user_id, None, "not routed to the user who reported it");
        let Payload::AnalyticsAlertTriggered(a) = &e.data else {
            panic!()
        };
        assert_eq!(
            (a.title.as_str(), a.body.as_str()),
            ("Error in ingest", "disk full")
        );
        assert_eq!(a.source_event_id, "e1");
        assert_eq!(
            e.id,
            live(&r, &error("e1", 5_000, "error"))[0].id,
            "deterministic id"
        );
    }

    #[test]
    fn system_errors_below_the_minimum_severity_do_not_alert() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        assert!(live(&r, &error("e1", 0, "warning")).is_empty());
        assert_eq!(live(&r, &error("e2", 0, "critical")).len(), 1);
        let all = AlertRules::new(&AlertsConfig {
            system_error_min_severity: Severity::Debug,
            ..AlertsConfig::default()
        })
        .unwrap();
        assert_eq!(live(&all, &error("e3", 0, "debug")).len(), 1);
    }

    #[test]
    fn a_published_book_alerts_its_owner_high_or_else_the_project() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        let mut e = ev(
            "e1",
            "publishing.book_published",
            0,
            Some("u1"),
            json!({"book_id": "b1", "title": "Dune", "channels": ["kindle"]}),
        );
        let out = live(&r, &e);
        assert_eq!(
            alerts(&out),
            [(
                "book_published".into(),
                Priority::High,
                "u1".into(),
                "book_published:b1".into()
            )]
        );
        assert_eq!(out[0].user_id.as_deref(), Some("u1"));
        e.user_id = None;
        let out = live(&r, &e);
        assert_eq!(alerts(&out)[0].2, "project:p1");
        assert_eq!(
            (out[0].user_id.as_deref(), out[0].project_id.as_deref()),
            (None, Some("p1"))
        );
    }

    #[test]
    fn entering_flow_state_alerts_the_writer_low() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        let e = ev(
            "f1",
            "writing.flow_state_entered",
            7,
            Some("u3"),
            json!({"wpm": 231.6, "sustained_ms": 120000}),
        );
        let out = live(&r, &e);
        assert_eq!(
            alerts(&out),
            [(
                "flow_state_entered".into(),
                Priority::Low,
                "u3".into(),
                "flow_state_entered:u3".into()
            )]
        );
        let Payload::AnalyticsAlertTriggered(a) = &out[0].data else {
            panic!()
        };
        assert_eq!(a.body, "232 words per minute for 120 s.");
    }

    #[test]
    fn each_mentioned_user_gets_one_medium_alert_but_not_the_author() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        let e = ev(
            "c1",
            "collaboration.comment_added",
            0,
            Some("u1"),
            json!({"comment_id": "c1", "paragraph": 2, "mentions": ["u2", "u1", "u3", "u2"]}),
        );
        let got = alerts(&live(&r, &e));
        assert_eq!(
            got,
            [
                (
                    "mention".into(),
                    Priority::Medium,
                    "u2".into(),
                    "mention:d1:c1".into()
                ),
                (
                    "mention".into(),
                    Priority::Medium,
                    "u3".into(),
                    "mention:d1:c1".into()
                ),
            ]
        );
        let no_mentions = ev(
            "c2",
            "collaboration.comment_added",
            0,
            Some("u1"),
            json!({"comment_id": "c2", "paragraph": 2}),
        );
        assert!(live(&r, &no_mentions).is_empty());
    }

    #[test]
    fn sales_milestones_fire_once_each_as_the_total_crosses_them() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        let events = [
            sales("s1", 1_000, "b1", 50, 50),
            sales("s2", 2_000, "b1", 70, 120),        // 100
            sales("s3", 3_000, "b1", 780, 900),       // —
            sales("s4", 4_000, "b1", 100, 1000),      // exactly 1 000
            sales("s5", 5_000, "b1", 500, 1500),      // already past 1 000
            sales("s6", 6_000, "b1", -600, 900),      // refunds: down…
            sales("s7", 7_000, "b1", 200, 1100),      // …and up again: not again
            sales("s8", 1_500, "b2", 12_000, 12_000), // a jump over all three
        ];
        let out = run_core(&r, &events);
        let mut got: Vec<(String, i64)> = out
            .iter()
            .filter_map(|e| match &e.data {
                Payload::AnalyticsThresholdCrossed(t) => Some((t.key.clone(), t.threshold as i64)),
                _ => None,
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("b1".into(), 100),
                ("b1".into(), 1000),
                ("b2".into(), 100),
                ("b2".into(), 1000),
                ("b2".into(), 10000)
            ]
        );
        let a = alerts(&out);
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|(rule, p, to, _)| rule == "sales_milestone"
            && *p == Priority::High
            && to == "author"));
        assert!(a.iter().any(|(_, _, _, d)| d == "sales_milestone:b2:10000"));
    }

    #[test]
    fn a_book_not_in_state_takes_its_previous_total_from_the_update() {
        let r = AlertRules::new(&AlertsConfig::default()).unwrap();
        let out = run_core(&r, &[sales("s1", 0, "b1", 10, 105)]);
        assert_eq!(crossings(&out).len(), 1, "95 → 105 crosses 100");
        let out = run_core(&r, &[sales("s1", 0, "b1", 20, 150)]);
        assert!(crossings(&out).is_empty(), "130 → 150 crosses nothing");
    }

    #[test]
    fn the_built_in_rules_can_be_switched_off() {
        let r = rules("[alerts]\ndefaults = false\n");
        assert!(
            run_core(
                &r,
                &[error("e", 0, "critical"), sales("s", 0, "b", 500, 500)]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_match_rule_filters_fans_out_and_fills_templates() {
        let r = rules(
            r#"
            [alerts]
            [[alerts.rules]]
            kind = "match"
            name = "review_ping"
            type = "collaboration.comment_added"
            where = [{field = "data.paragraph", op = "gte", value = 3},
                     {field = "data.mentions", op = "contains", value = "u9"}]
            priority = "high"
            recipient = "data.mentions[*]"
            key = "data.comment_id"
            title = "Comment {data.comment_id} by {user_id}"
            body = "mentions: {data.mentions[*]}"
            "#,
        );
        let comment = |id: &str, paragraph: i64, mentions: Value| {
            ev(
                id,
                "collaboration.comment_added",
                0,
                Some("u1"),
                json!({"comment_id": id, "paragraph": paragraph, "mentions": mentions}),
            )
        };
        let mut out = live(&r, &comment("c1", 2, json!(["u9"])));
        assert!(
            out.iter()
                .all(|e| alerts(std::slice::from_ref(e))[0].0 == "mention")
        );
        out = live(&r, &comment("c2", 5, json!(["u8"])));
        assert!(
            out.iter()
                .all(|e| alerts(std::slice::from_ref(e))[0].0 == "mention")
        );
        out = live(&r, &comment("c3", 5, json!(["u9", "u8"])));
        let mine: Vec<_> = out
            .iter()
            .filter_map(|e| match &e.data {
                Payload::AnalyticsAlertTriggered(a) if a.rule == "review_ping" => Some(a.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0].recipient_id, "u9");
        assert_eq!(mine[1].recipient_id, "u8");
        assert_eq!(mine[0].priority, Priority::High);
        assert_eq!(mine[0].title, "Comment c3 by u1");
        assert_eq!(mine[0].body, "mentions: u9, u8");
        assert_eq!(mine[0].dedup_key, "review_ping:c3");
    }

    #[test]
    fn conditions_compare_numbers_strings_and_arrays() {
        let e = error("e1", 1_000, "critical");
        let view = View::new(&e);
        let holds = |field: &str, op: &str, value: Value| {
            let rules = rules(&format!(
                "[alerts]\n[[alerts.rules]]\nkind = \"match\"\ntype = \"system.error\"\n\
                 recipient = \"role:x\"\nwhere = [{{field = \"{field}\", op = \"{op}\", value = {value}}}]\n"
            ));
            rules.rules[0].conditions[0].holds(&view)
        };
        assert!(holds("data.severity", "eq", json!("critical")));
        assert!(holds("data.severity", "ne", json!("error")));
        assert!(holds("ts", "gte", json!(1000)));
        assert!(!holds("ts", "gt", json!(1000)));
        assert!(holds("ts", "lt", json!(1000.5)));
        assert!(holds("data.message", "contains", json!("disk")));
        assert!(holds("data.code", "lte", json!("E42")));
        assert!(!holds("data.code", "lt", json!("E42")));
        assert!(holds("user_id", "eq", json!("u1")));
        assert!(
            !holds("data.nothing", "ne", json!("x")),
            "a missing field satisfies nothing"
        );
        assert!(holds("document_id", "ne", json!("x")));
        assert!(
            !holds("data.severity", "gt", json!(3)),
            "string vs number: no order"
        );
    }

    fn threshold_rules(extra: &str) -> AlertRules {
        rules(&format!(
            "[alerts]\ndefaults = false\n[[alerts.rules]]\nkind = \"threshold\"\nname = \"busy\"\n\
             type = \"writing.keystroke\"\nkey = \"user_id\"\n{extra}\n"
        ))
    }

    #[test]
    fn a_count_threshold_fires_on_crossing_not_while_above() {
        let r = threshold_rules("aggregate = \"count\"\nwindow = \"10s\"\nthreshold = 3");
        let events: Vec<Event> = (0..5)
            .map(|i| ks(&format!("k{i}"), "u1", i * 1000, 1))
            .collect();
        let out = run_core(&r, &events);
        // Above at the third event; the fourth and fifth do not repeat it. The
        // window slides: 0 and 1 000 leave at 10 000 and 11 000 (3 left), 2 000
        // at 12 000: below, at that moment.
        assert_eq!(
            crossings(&out),
            [
                (2000, "u1".into(), Above, 3.0),
                (12_000, "u1".into(), Below, 2.0)
            ]
        );
        assert!(alerts(&out).is_empty(), "no recipient: analytics only");
    }

    #[test]
    fn falling_below_by_the_window_sliding_waits_for_the_frontier() {
        let r = threshold_rules("aggregate = \"count\"\nwindow = \"10s\"\nthreshold = 2");
        let mut state = AlertState::new(&r);
        let (mut out, mut obs) = (Vec::new(), Vec::new());
        for e in [ks("a", "u1", 0, 1), ks("b", "u1", 500, 1)] {
            r.stage(&e, &mut out, &mut obs);
        }
        for o in &obs {
            state.observe(o, &mut out);
        }
        assert_eq!(crossings(&out), [(500, "u1".into(), Above, 2.0)]);
        out.clear();
        state.advance_to(9_999, &mut out);
        assert!(out.is_empty(), "an event could still come before 10 000");
        state.advance_to(10_000, &mut out);
        assert_eq!(crossings(&out), [(10_000, "u1".into(), Below, 1.0)]);
        assert_eq!(state.state_size(), 1);
        out.clear();
        state.advance_to(10_500, &mut out);
        assert!(out.is_empty(), "already below: emptying says nothing more");
        assert_eq!(state.state_size(), 0, "an empty window leaves no state");
    }

    #[test]
    fn exactly_at_the_threshold_is_above_and_the_window_start_is_exclusive() {
        let r = threshold_rules("aggregate = \"count\"\nwindow = \"1s\"\nthreshold = 2");
        let out = run_core(&r, &[ks("a", "u1", 0, 1), ks("b", "u1", 1000, 1)]);
        assert!(crossings(&out).is_empty(), "0 has left when 1 000 comes");
        let out = run_core(&r, &[ks("a", "u1", 0, 1), ks("b", "u1", 999, 1)]);
        assert_eq!(
            crossings(&out),
            [
                (999, "u1".into(), Above, 2.0),
                (1000, "u1".into(), Below, 1.0)
            ]
        );
    }

    #[test]
    fn sum_and_avg_thresholds_are_per_key() {
        let r = threshold_rules(
            "aggregate = \"sum\"\nvalue = \"data.words\"\nwindow = \"1m\"\nthreshold = 10",
        );
        let events = [
            ks("a", "u1", 0, 4),
            ks("b", "u2", 100, 3),
            ks("c", "u1", 200, 4),
            ks("d", "u1", 300, 4),
        ];
        let out = run_core(&r, &events);
        assert_eq!(
            crossings(&out),
            [
                (300, "u1".into(), Above, 12.0),
                (60_000, "u1".into(), Below, 8.0)
            ]
        );
        let r = threshold_rules(
            "aggregate = \"avg\"\nvalue = \"data.words\"\nwindow = \"1m\"\nthreshold = 5",
        );
        let events = [
            ks("a", "u1", 0, 10),
            ks("b", "u1", 1, 0),
            ks("c", "u1", 2, 0),
        ];
        let out = run_core(&r, &events);
        let got = crossings(&out);
        assert_eq!(got[0], (0, "u1".into(), Above, 10.0));
        assert_eq!((got[1].0, got[1].2), (2, Below), "avg 10/3 after the third");
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn threshold_alerts_go_to_the_recipients_of_the_notified_crossings() {
        let r = threshold_rules(
            "aggregate = \"count\"\nwindow = \"1s\"\nthreshold = 2\nrecipient = \"user_id\"\n\
             notify = \"both\"\npriority = \"LOW\"",
        );
        let out = run_core(&r, &[ks("a", "u1", 0, 1), ks("b", "u1", 10, 1)]);
        let got = alerts(&out);
        assert_eq!(
            got,
            [
                (
                    "busy".into(),
                    Priority::Low,
                    "u1".into(),
                    "busy:u1:above".into()
                ),
                (
                    "busy".into(),
                    Priority::Low,
                    "u1".into(),
                    "busy:u1:below".into()
                ),
            ]
        );
        // The alert points at the crossing it announces.
        let crossing_ids: Vec<&str> = out
            .iter()
            .filter(|e| matches!(e.data, Payload::AnalyticsThresholdCrossed(_)))
            .map(|e| e.id.as_str())
            .collect();
        for e in &out {
            if let Payload::AnalyticsAlertTriggered(a) = &e.data {
                assert!(crossing_ids.contains(&a.source_event_id.as_str()));
            }
        }
        let only_above = threshold_rules(
            "aggregate = \"count\"\nwindow = \"1s\"\nthreshold = 2\nrecipient = \"role:ops\"",
        );
        let out = run_core(&only_above, &[ks("a", "u1", 0, 1), ks("b", "u1", 10, 1)]);
        assert_eq!(alerts(&out).len(), 1);
        assert_eq!(crossings(&out).len(), 2);
    }

    fn anomaly_rules() -> AlertRules {
        rules(
            "[alerts]\ndefaults = false\n[[alerts.rules]]\nkind = \"anomaly\"\nname = \"odd\"\n\
             type = \"writing.keystroke\"\nkey = \"user_id\"\nvalue = \"data.words\"\nwindow = 10\n\
             k = 3\nmin_samples = 5\nrecipient = \"role:admin\"\n",
        )
    }

    #[test]
    fn an_anomaly_needs_min_samples() {
        let r = anomaly_rules();
        let values = [10, 11, 9, 10, 500];
        let events: Vec<Event> = values
            .iter()
            .enumerate()
            .map(|(i, v)| ks(&format!("k{i}"), "u1", i as i64, *v))
            .collect();
        assert!(
            run_core(&r, &events).is_empty(),
            "4 previous values < min_samples 5"
        );
    }

    #[test]
    fn an_anomaly_fires_beyond_k_standard_deviations_only() {
        let r = anomaly_rules();
        let values = [10, 11, 9, 10, 10, 11, 50, 10];
        let events: Vec<Event> = values
            .iter()
            .enumerate()
            .map(|(i, v)| ks(&format!("k{i}"), "u1", i as i64, *v))
            .collect();
        let out = run_core(&r, &events);
        // 11 after [10, 11, 9, 10, 10] (mean 10, sd 0.63): within 3 sd; 50 is not.
        assert_eq!(anomalies(&out), [(6, "u1".into(), 50.0)]);
        assert_eq!(
            alerts(&out),
            [(
                "odd".into(),
                Priority::Medium,
                "role:admin".into(),
                "odd:u1".into()
            )]
        );
        let Payload::AnalyticsAnomalyDetected(a) = &out
            .iter()
            .find(|e| e.ts == 6 && matches!(e.data, Payload::AnalyticsAnomalyDetected(_)))
            .unwrap()
            .data
        else {
            panic!()
        };
        assert!((a.mean - 61.0 / 6.0).abs() < 1e-9 && a.k == 3.0);
    }

    #[test]
    fn idle_series_and_book_totals_are_forgotten_after_the_ttl() {
        let mut cfg = config(
            "[alerts]\nstate_ttl = \"1h\"\n[[alerts.rules]]\nkind = \"anomaly\"\n\
             type = \"writing.keystroke\"\nkey = \"user_id\"\nvalue = \"data.words\"\n",
        )
        .unwrap();
        cfg.sales_milestones = vec![100];
        let r = AlertRules::new(&cfg).unwrap();
        let mut state = AlertState::new(&r);
        let (mut out, mut obs) = (Vec::new(), Vec::new());
        for e in [
            ks("a", "u1", 0, 1),
            ks("b", "u2", 0, 1),
            sales("s", 0, "b1", 1, 1),
        ] {
            r.stage(&e, &mut out, &mut obs);
        }
        for o in &obs {
            state.observe(o, &mut out);
        }
        assert_eq!(state.state_size(), 3);
        state.advance_to(3_600_000, &mut out);
        assert_eq!(state.state_size(), 3, "idle for exactly the ttl: kept");
        state.advance_to(3_600_000 + 900_001, &mut out);
        assert_eq!(state.state_size(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn config_validation_errors_name_the_path() {
        let rule = |body: &str| {
            format!(
                "[alerts]\n[[alerts.rules]]\nkind = \"match\"\ntype = \"system.error\"\n\
                 recipient = \"role:admin\"\n[[alerts.rules]]\n{body}\n"
            )
        };
        let threshold = |more: &str| {
            rule(&format!(
                "kind = \"threshold\"\ntype = \"writing.keystroke\"\nwindow = \"1m\"\n\
                 threshold = 3\n{more}"
            ))
        };
        let cases = [
            (
                threshold("aggregate = \"median\""),
                "alerts.rules[1].aggregate: expected one of count, sum, avg",
            ),
            (
                threshold("aggregate = \"sum\""),
                "alerts.rules[1].value: sum and avg need a value field path",
            ),
            (
                threshold("aggregate = \"count\"\nvalue = \"data.words\""),
                "alerts.rules[1].value: count takes no value",
            ),
            (
                threshold("aggregate = \"count\"\nkey = \"data..x\""),
                "alerts.rules[1].key: expected a field path",
            ),
            (
                threshold("aggregate = \"count\"\nkey = \"author\""),
                "alerts.rules[1].key: expected a field path",
            ),
            (
                threshold("aggregate = \"count\"\nnotify = \"sideways\""),
                "alerts.rules[1].notify: expected one of above, below, both",
            ),
            (
                threshold("aggregate = \"avg\"\nvalue = \"data.x[*]\""),
                "alerts.rules[1].value: a value path cannot use [*]",
            ),
            (
                threshold(
                    "aggregate = \"count\"\nwhere = [{field = \"data.x\", op = \"like\", value = 1}]",
                ),
                "alerts.rules[1].where[0].op: expected one of eq, ne, gt, gte, lt, lte, contains",
            ),
            (
                threshold(
                    "aggregate = \"count\"\nwhere = [{field = \"data[x]\", op = \"eq\", value = 1}]",
                ),
                "alerts.rules[1].where[0].field: expected a field path",
            ),
            (
                threshold("aggregate = \"count\"\npriority = \"urgent\""),
                "alerts.rules[1].priority: expected one of LOW, MEDIUM, HIGH, CRITICAL",
            ),
            (
                rule("kind = \"match\"\ntype = \"writing.keystrok\"\nrecipient = \"user_id\""),
                "alerts.rules[1].type: unknown event type \"writing.keystrok\"; did you mean writing.keystroke",
            ),
            (
                rule(
                    "kind = \"match\"\ntype = \"system.error\"\nrecipient = \"user_id\"\ntitle = \"{data.service\"",
                ),
                "alerts.rules[1].title: unclosed `{`",
            ),
            (
                rule("kind = \"match\"\ntype = \"system.error\"\nrecipient = \":x\""),
                "alerts.rules[1].recipient: expected a field path or an address",
            ),
            (
                rule(
                    "kind = \"match\"\nname = \"match_0\"\ntype = \"system.error\"\nrecipient = \"user_id\"",
                ),
                "alerts.rules[1].name: \"match_0\" is used by another rule",
            ),
            (
                rule(
                    "kind = \"match\"\nname = \"mention\"\ntype = \"system.error\"\nrecipient = \"user_id\"",
                ),
                "alerts.rules[1].name: \"mention\" is the name of a built-in rule",
            ),
            (
                rule(
                    "kind = \"anomaly\"\ntype = \"writing.keystroke\"\nvalue = \"data.words\"\nwindow = 5\nmin_samples = 6",
                ),
                "alerts.rules[1].min_samples: expected 2 to window (5) samples",
            ),
            (
                rule(
                    "kind = \"anomaly\"\ntype = \"writing.keystroke\"\nvalue = \"data.words\"\nk = 0",
                ),
                "alerts.rules[1].k: must be a positive number",
            ),
            (
                "[alerts]\nsales_milestones = [100, 0]\n".to_owned(),
                "alerts.sales_milestones[1]: must be positive",
            ),
        ];
        for (text, want) in cases {
            let got = rules_error(&text);
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn an_unknown_kind_or_field_is_rejected_naming_the_rule() {
        let got =
            rules_error("[alerts]\n[[alerts.rules]]\nkind = \"regex\"\ntype = \"system.error\"\n");
        assert!(got.starts_with("alerts.rules[0]"), "{got}");
        assert!(got.contains("unknown variant `regex`"), "{got}");
        let got = rules_error(
            "[alerts]\n[[alerts.rules]]\nkind = \"match\"\ntype = \"system.error\"\n\
             recipient = \"role:a\"\naggregate = \"sum\"\n",
        );
        assert!(
            got.starts_with("alerts.rules[0]") && got.contains("aggregate"),
            "{got}"
        );
    }

    #[test]
    fn a_full_alerts_section_parses() {
        let r = rules(
            r#"
            [alerts]
            defaults = true
            sales_milestones = [1000, 100]
            state_ttl = "12h"
            [[alerts.rules]]
            kind = "match"
            type = "automation.workflow_failed"
            recipient = "role:automation"
            priority = "HIGH"
            title = "Workflow {data.workflow_id} failed"
            [[alerts.rules]]
            kind = "threshold"
            name = "error_burst"
            type = "system.error"
            key = "data.service"
            aggregate = "count"
            window = "5m"
            threshold = 10
            recipient = "role:admin"
            [[alerts.rules]]
            kind = "anomaly"
            type = "publishing.sales_updated"
            key = "data.book_id"
            value = "data.units"
            "#,
        );
        assert_eq!(r.milestones, [100, 1000]);
        assert_eq!(r.rules.len(), 3);
        assert_eq!(r.rules[0].name, "match_0");
        assert_eq!(r.rules[2].name, "anomaly_2");
        assert_eq!(r.state_ttl_ms, 12 * 3_600_000);
    }

    /// SplitMix64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The windowed threshold, obviously: at every moment something enters
    /// (an event) or leaves (an event time + window, before events of that
    /// moment), recompute the aggregate from scratch.
    fn reference(
        events: &[Event],
        aggregate: &str,
        window: i64,
        threshold: f64,
    ) -> BTreeMap<String, Vec<(i64, Direction, f64)>> {
        let mut by_key: BTreeMap<String, Vec<(i64, String, f64)>> = BTreeMap::new();
        for e in events {
            let Payload::WritingKeystroke(k) = &e.data else {
                continue;
            };
            by_key.entry(e.user_id.clone().unwrap()).or_default().push((
                e.ts,
                e.id.clone(),
                k.words as f64,
            ));
        }
        let mut result = BTreeMap::new();
        for (key, mut evs) in by_key {
            evs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let mut steps: Vec<(i64, u8, usize)> = Vec::new();
            for (i, (ts, _, _)) in evs.iter().enumerate() {
                steps.push((*ts, 1, i));
                steps.push((ts + window, 0, 0));
            }
            steps.sort();
            steps.dedup_by(|a, b| a.1 == 0 && b.1 == 0 && a.0 == b.0);
            let mut seen = vec![false; evs.len()];
            let mut above = false;
            let mut out = Vec::new();
            for (time, kind, i) in steps {
                if kind == 1 {
                    seen[i] = true;
                }
                let win: Vec<f64> = evs
                    .iter()
                    .zip(&seen)
                    .filter(|((ts, _, _), s)| **s && *ts > time - window && *ts <= time)
                    .map(|((_, _, v), _)| *v)
                    .collect();
                if win.is_empty() {
                    if above {
                        above = false;
                        out.push((time, Below, 0.0));
                    }
                    continue;
                }
                let sum: f64 = win.iter().sum();
                let value = match aggregate {
                    "count" => win.len() as f64,
                    "sum" => sum,
                    _ => sum / win.len() as f64,
                };
                if (value >= threshold) != above {
                    above = !above;
                    out.push((time, if above { Above } else { Below }, value));
                }
            }
            result.insert(key, out);
        }
        result
    }

    #[test]
    fn windowed_thresholds_match_a_naive_reference_on_seeded_random_streams() {
        let mut compared = 0;
        for seed in 0..24 {
            let mut rng = Rng(seed);
            let aggregate = ["count", "sum", "avg"][seed as usize % 3];
            let window = 200 + rng.below(3000) as i64;
            let threshold = match aggregate {
                "count" => 1.0 + rng.below(8) as f64,
                "sum" => rng.below(20) as f64 - 4.0,
                _ => rng.below(6) as f64 - 1.0,
            };
            let value = if aggregate == "count" {
                ""
            } else {
                "value = \"data.words\"\n"
            };
            let r = threshold_rules(&format!(
                "aggregate = \"{aggregate}\"\n{value}window = {window}\nthreshold = {threshold:?}"
            ));
            let mut ts = 0;
            let events: Vec<Event> = (0..300)
                .map(|i| {
                    ts += rng.below(400) as i64 * i64::from(rng.below(4) != 0);
                    let user = format!("u{}", rng.below(3));
                    let words = rng.below(9) as i64 - 3;
                    ks(
                        &format!("e{:03}", rng.below(1000) * 1000 + i),
                        &user,
                        ts,
                        words,
                    )
                })
                .collect();
            let mut got: BTreeMap<String, Vec<(i64, Direction, f64)>> = BTreeMap::new();
            for (ts, key, dir, value) in crossings(&run_core(&r, &events)) {
                got.entry(key).or_default().push((ts, dir, value));
            }
            let mut want = reference(&events, aggregate, window, threshold);
            want.retain(|_, v| !v.is_empty());
            compared += want.values().map(Vec::len).sum::<usize>();
            assert_eq!(
                got, want,
                "seed {seed}: {aggregate} over {window} ms ≥ {threshold}"
            );
        }
        assert!(compared > 200, "the streams cross often enough: {compared}");
    }

    #[test]
    fn a_copy_of_an_observation_counts_once() {
        let r = threshold_rules("aggregate = \"count\"\nwindow = \"10s\"\nthreshold = 2");
        let (mut out, mut obs) = (Vec::new(), Vec::new());
        for e in [ks("a", "u1", 0, 1), ks("b", "u1", 500, 1)] {
            r.stage(&e, &mut out, &mut obs);
        }
        let mut twice = obs.clone();
        twice.insert(0, obs[0].clone());
        sort_observations(&mut twice);
        let mut state = AlertState::new(&r);
        for o in &twice {
            state.observe(o, &mut out);
        }
        // Counted once, "a" and "b" make 2: above at "b", not at the copy.
        assert_eq!(crossings(&out), [(500, "u1".into(), Above, 2.0)]);
    }

    #[test]
    fn an_idle_book_is_forgotten_after_the_ttl_whether_or_not_a_sweep_ran() {
        let mut cfg = config("[alerts]\nstate_ttl = \"1h\"\n").unwrap();
        cfg.sales_milestones = vec![100];
        let r = AlertRules::new(&cfg).unwrap();
        let run = |second_ts: i64, sweep: bool| {
            let mut state = AlertState::new(&r);
            let (mut out, mut obs) = (Vec::new(), Vec::new());
            r.stage(&sales("s1", 0, "b1", 50, 50), &mut out, &mut obs);
            r.stage(&sales("s2", second_ts, "b1", 10, 110), &mut out, &mut obs);
            state.observe(&obs[0], &mut out);
            if sweep {
                state.advance_to(second_ts, &mut out);
            }
            state.observe(&obs[1], &mut out);
            crossings(&out).len()
        };
        // Idle for exactly the ttl: remembered (50 → 110 crosses 100).
        assert_eq!((run(3_600_000, false), run(3_600_000, true)), (1, 1));
        // Longer: forgotten, the update's own previous total (100) is not below 100.
        assert_eq!((run(3_600_001, false), run(3_600_001, true)), (0, 0));
    }

    /// Observations of `events` by epoch (100 ms), in processing order.
    fn epochs_of(rules: &AlertRules, events: &[Event]) -> Vec<(i64, Vec<Observation>)> {
        let (mut alerts, mut obs) = (Vec::new(), Vec::new());
        for e in events {
            rules.stage(e, &mut alerts, &mut obs);
        }
        let mut by_epoch: BTreeMap<i64, Vec<Observation>> = BTreeMap::new();
        for o in obs {
            by_epoch
                .entry(o.ts.div_euclid(100) * 100)
                .or_default()
                .push(o);
        }
        by_epoch
            .into_iter()
            .map(|(t, mut obs)| {
                sort_observations(&mut obs);
                (t + 100, obs)
            })
            .collect()
    }

    /// As the runtime does: each epoch's observations, then the watermark at its end.
    fn feed(state: &mut AlertState, epochs: &[(i64, Vec<Observation>)]) -> Vec<Event> {
        let mut out = Vec::new();
        for (end, obs) in epochs {
            for o in obs {
                state.observe(o, &mut out);
            }
            state.advance_to(*end, &mut out);
        }
        out
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let mut cfg = config(
            r#"
            [alerts]
            [[alerts.rules]]
            kind = "threshold"
            name = "burst"
            type = "writing.keystroke"
            key = "user_id"
            aggregate = "count"
            window = "1s"
            threshold = 12
            recipient = "user_id"
            notify = "both"
            [[alerts.rules]]
            kind = "threshold"
            name = "words"
            type = "writing.keystroke"
            aggregate = "avg"
            value = "data.words"
            window = "500ms"
            threshold = 4
            [[alerts.rules]]
            kind = "anomaly"
            name = "odd_words"
            type = "writing.keystroke"
            key = "user_id"
            value = "data.words"
            window = 20
            min_samples = 5
            k = 2.5
            recipient = "role:admin"
            "#,
        )
        .unwrap();
        cfg.sales_milestones = vec![100, 300, 1000, 3000];
        let r = AlertRules::new(&cfg).unwrap();
        for seed in 0..3 {
            let epochs = epochs_of(&r, &mixed_stream(seed, 2000));
            let (first, second) = epochs.split_at(epochs.len() / 2);
            let mut original = AlertState::new(&r);
            let before = feed(&mut original, first);
            assert!(!before.is_empty());
            assert!(
                original.state_size() > 0 && !original.deadlines.is_empty(),
                "seed {seed}: open windows at the snapshot"
            );
            let bytes = bincode::serialize(&original).unwrap();
            let mut restored: AlertState = bincode::deserialize(&bytes).unwrap();
            assert_eq!(restored.state_size(), original.state_size());
            let mut want = feed(&mut original, second);
            let mut got = feed(&mut restored, second);
            assert_eq!(restored.state_size(), original.state_size());
            want.extend(original.flush_out());
            got.extend(restored.flush_out());
            let kinds = |out: &[Event]| {
                ["analytics.threshold_crossed", "analytics.anomaly_detected"]
                    .map(|ty| out.iter().filter(|e| e.event_type() == ty).count())
            };
            assert!(
                kinds(&want).iter().all(|n| *n > 0),
                "seed {seed}: {:?}",
                kinds(&want)
            );
            assert!(
                crossings(&want)
                    .iter()
                    .any(|(_, k, _, _)| k == "b0" || k == "b1")
            );
            assert!(got == want, "seed {seed}: outputs after the restore differ");
        }
    }

    impl AlertState {
        fn flush_out(&mut self) -> Vec<Event> {
            let mut out = Vec::new();
            self.flush(&mut out);
            out
        }
    }

    // ---- the timely wrapper --------------------------------------------------------------

    fn mixed_stream(seed: u64, n: usize) -> Vec<Event> {
        let mut rng = Rng(seed);
        let mut ts = 1_000_000;
        let mut totals = [0i64; 2];
        (0..n)
            .map(|i| {
                ts += rng.below(40) as i64;
                let id = format!("e{i}");
                let user = format!("u{}", rng.below(4));
                match rng.below(40) {
                    0 => error(
                        &id,
                        ts,
                        ["warning", "error", "critical"][rng.below(3) as usize],
                    ),
                    1 | 2 => {
                        let b = rng.below(2) as usize;
                        let units = rng.below(120) as i64;
                        totals[b] += units;
                        sales(&id, ts, &format!("b{b}"), units, totals[b])
                    }
                    3 => ev(
                        &id,
                        "collaboration.comment_added",
                        ts,
                        Some(&user),
                        json!({"comment_id": id, "paragraph": 1,
                               "mentions": [format!("u{}", rng.below(4))]}),
                    ),
                    4 => ev(
                        &id,
                        "writing.flow_state_entered",
                        ts,
                        Some(&user),
                        json!({"wpm": 210.0, "sustained_ms": 120000}),
                    ),
                    5 => ev(
                        &id,
                        "publishing.book_published",
                        ts,
                        Some(&user),
                        json!({"book_id": "b0", "title": "T"}),
                    ),
                    _ => {
                        let words = if rng.below(30) == 0 {
                            60
                        } else {
                            rng.below(6) as i64
                        };
                        ks(&id, &user, ts, words)
                    }
                }
            })
            .collect()
    }

    fn shuffled_within(events: &[Event], disorder_ms: i64, seed: u64) -> Vec<Event> {
        let mut rng = Rng(seed);
        let mut keyed: Vec<(i64, usize, Event)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.ts + rng.below(disorder_ms as u64) as i64, i, e.clone()))
            .collect();
        keyed.sort_by_key(|(k, i, _)| (*k, *i));
        keyed.into_iter().map(|(_, _, e)| e).collect()
    }

    #[test]
    fn outputs_are_identical_with_1_and_2_workers_any_batching_and_disorder() {
        let alerts_cfg = config(
            r#"
            [alerts]
            [[alerts.rules]]
            kind = "threshold"
            name = "burst"
            type = "writing.keystroke"
            key = "user_id"
            aggregate = "count"
            window = "1s"
            threshold = 12
            recipient = "user_id"
            notify = "both"
            [[alerts.rules]]
            kind = "threshold"
            name = "words"
            type = "writing.keystroke"
            aggregate = "avg"
            value = "data.words"
            window = "500ms"
            threshold = 4
            [[alerts.rules]]
            kind = "anomaly"
            name = "odd_words"
            type = "writing.keystroke"
            key = "user_id"
            value = "data.words"
            window = 20
            min_samples = 5
            k = 2.5
            recipient = "role:admin"
            [[alerts.rules]]
            kind = "match"
            name = "critical"
            type = "system.error"
            where = [{field = "data.severity", op = "eq", value = "critical"}]
            recipient = "role:oncall"
            "#,
        )
        .unwrap();
        let config = crate::config::Config::default();
        let disorder = config.dataflow.allowed_disorder.as_millis() as i64;
        let events = mixed_stream(7, 3000);
        let run = |events: Vec<Event>, workers: usize, batch: usize| {
            let a = alerts_cfg.clone();
            let (out, late) =
                crate::dataflow::run_for_test(events, workers, batch, &config, move |s, cfg| {
                    let ctx = OperatorCtx::plain(crate::runtime::EventTime {
                            epoch_ms: cfg.dataflow.epoch.as_millis() as u64,
                            flush_at_end: cfg.dataflow.flush_at_end,
                        });
                    s.alert_rules(&a, &ctx)
                });
            assert!(late.is_empty());
            out
        };
        let first = run(events.clone(), 1, 1);
        let kinds = |ty: &str| first.iter().filter(|e| e.event_type() == ty).count();
        assert!(
            kinds("analytics.threshold_crossed") > 10,
            "{}",
            kinds("analytics.threshold_crossed")
        );
        assert!(kinds("analytics.anomaly_detected") > 0);
        assert!(kinds("analytics.alert_triggered") > 50);
        let rules: std::collections::BTreeSet<String> = first
            .iter()
            .filter_map(|e| match &e.data {
                Payload::AnalyticsAlertTriggered(a) => Some(a.rule.clone()),
                _ => None,
            })
            .collect();
        for r in [
            "system_error",
            "book_published",
            "flow_state_entered",
            "mention",
            "sales_milestone",
            "burst",
            "odd_words",
            "critical",
        ] {
            assert!(rules.contains(r), "no {r} alert");
        }
        let mut ids: Vec<&str> = first.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), first.len(), "derived ids are unique");
        for (workers, batch) in [(1, 64), (2, 1), (2, 7), (2, 1000)] {
            assert!(
                run(events.clone(), workers, batch) == first,
                "{workers} workers, batch {batch}"
            );
        }
        for seed in 0..2 {
            let shuffled = shuffled_within(&events, disorder, seed);
            assert!(
                run(shuffled, 2, 13) == first,
                "shuffled within the disorder bound, seed {seed}"
            );
        }
    }
}
