//! The compiled rules and the live stage: per event, the stateless alerts
//! (built-in and `match` rules) at once, and an [`Observation`] per stateful
//! rule (sales milestones, thresholds, anomalies) for the windowed state.

use super::config::*;
use super::fields::*;
use crate::operators::OperatorConfigError;
use crate::operators::derived_id;
use crate::runtime::Timed;
use foldhash::HashMap;
use schemas::payload::{AlertTriggered, Direction, Payload, Priority, Severity};
use schemas::{Event, EventType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) enum Aggregate {
    Count,
    Sum,
    Avg,
}

/// What a threshold rule's windows need (the field paths stay with the live
/// stage): plain data, saved with the windows at each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ThresholdRule {
    pub(super) aggregate: Aggregate,
    pub(super) window_ms: i64,
    pub(super) threshold: f64,
    pub(super) metric: String,
    pub(super) notify_above: bool,
    pub(super) notify_below: bool,
}

/// What an anomaly rule's series need (plain data, as [`ThresholdRule`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AnomalyRule {
    pub(super) window: usize,
    pub(super) k: f64,
    pub(super) min_samples: usize,
    pub(super) metric: String,
}

#[derive(Debug, Clone)]
pub(super) enum RuleKind {
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
pub(super) struct Rule {
    pub(super) name: String,
    pub(super) conditions: Vec<Condition>,
    pub(super) priority: Priority,
    pub(super) recipient: Option<Recipient>,
    pub(super) kind: RuleKind,
}

/// The rules, validated and compiled: construct once, share (`Arc`).
#[derive(Debug, Clone)]
pub struct LiveRules {
    pub(super) defaults: bool,
    /// Sorted, distinct, positive.
    pub(super) milestones: Vec<i64>,
    pub(super) min_severity: u8,
    pub(super) state_ttl_ms: i64,
    pub(super) rules: Vec<Rule>,
    /// Config rule indices by event type, in config order.
    pub(super) by_type: HashMap<&'static str, Vec<u32>>,
}

pub(super) fn severity_rank(s: Severity) -> u8 {
    match s {
        Severity::Debug => 0,
        Severity::Info => 1,
        Severity::Warning => 2,
        Severity::Error => 3,
        Severity::Critical => 4,
    }
}

/// Names of the built-in rules (reserved).
pub(super) const BUILTIN_NAMES: &[&str] = &[
    "system_error",
    "book_published",
    "flow_state_entered",
    "mention",
    "sales_milestone",
];

/// The rule index of sales milestones in [`Observation::rule`].
pub(super) const SALES: u32 = u32::MAX;

impl LiveRules {
    /// Validates and compiles `[alerts]`; errors name the key path
    /// (`alerts.rules[2].aggregate: expected one of count, sum, avg`).
    pub fn new(config: &AlertsConfig) -> Result<LiveRules, OperatorConfigError> {
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
        let mut by_type: HashMap<&'static str, Vec<u32>> = HashMap::default();
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
                .map_err(|e| OperatorConfigError {
                    path: at("type"),
                    message: e.to_string(),
                })?
                .name;
            let path = |field: &str, text: &str| {
                FieldPath::parse(text).map_err(|e| OperatorConfigError {
                    path: at(field),
                    message: e.to_string(),
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
                Some(r) => Some(Recipient::parse(r).map_err(|e| OperatorConfigError {
                    path: at("recipient"),
                    message: e.to_string(),
                })?),
                None => None,
            };
            let key = |k: &Option<String>| k.as_deref().map(|k| path("key", k)).transpose();
            let kind = match rc {
                RuleConfig::Match(m) => {
                    let template = |field: &str, text: &str| {
                        Template::parse(text).map_err(|e| OperatorConfigError {
                            path: at(field),
                            message: e.to_string(),
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
        Ok(LiveRules {
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
    pub fn builtin(defaults: bool) -> LiveRules {
        let d = AlertsConfig::default();
        LiveRules {
            defaults,
            milestones: d.sales_milestones,
            min_severity: severity_rank(d.system_error_min_severity),
            state_ttl_ms: d.state_ttl.as_millis() as i64,
            rules: Vec::new(),
            by_type: HashMap::default(),
        }
    }

    /// The live stage: pushes the alerts of stateless rules to `alerts`
    /// (at once, `ts` = the event's) and the inputs of stateful rules to
    /// `obs`, for [`AlertWindows::observe`] in event-time order.
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

    pub(super) fn builtin_rules(
        &self,
        e: &Event,
        alerts: &mut Vec<Event>,
        obs: &mut Vec<Observation>,
    ) {
        let owner = || match (&e.user_id, &e.project_id) {
            (Some(u), _) => u.to_string(),
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
                    if m.is_empty()
                        || Some(m.as_str()) == e.user_id.as_deref()
                        || c.mentions[..i].contains(m)
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

pub(super) fn push_observations(
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
pub(super) fn alert_event(
    rule: &str,
    priority: Priority,
    recipient: &str,
    dedup_key: String,
    title: String,
    body: String,
    source_id: &str,
    ts: i64,
    project_id: Option<&schemas::Text>,
    document_id: Option<&schemas::Text>,
) -> Event {
    let (user_id, project_id) = match recipient.split_once(':') {
        None => (Some(schemas::Text::from(recipient)), project_id.cloned()),
        Some(("project", p)) => (None, Some(schemas::Text::from(p))),
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
        data: Payload::AnalyticsAlertTriggered(Box::new(AlertTriggered {
            rule: rule.to_owned(),
            priority,
            recipient_id: recipient.to_owned(),
            dedup_key,
            title,
            body,
            source_event_id: source_id.to_owned(),
        })),
    }
}

/// `3` for whole numbers, `2.50` otherwise.
pub(super) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn fmt_ms(ms: i64) -> String {
    match ms {
        m if m % 3_600_000 == 0 => format!("{} h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{} min", m / 60_000),
        m if m % 1000 == 0 => format!("{} s", m / 1000),
        m => format!("{m} ms"),
    }
}

pub(super) fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Above => "above",
        Direction::Below => "below",
    }
}

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
    pub source_id: schemas::Text,
    /// The value (1 for counts; `total_units` for sales).
    pub value: f64,
    /// Sales: `units` of the update; else 0.
    pub aux: f64,
    pub user_id: Option<schemas::Text>,
    pub project_id: Option<schemas::Text>,
    pub document_id: Option<schemas::Text>,
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
    pub(super) fn identity(&self) -> (i64, &str, u32, &str) {
        (self.ts, &self.source_id, self.rule, &self.key)
    }
}

/// The order in which a key's observations must be processed: event time,
/// then the event id (unique), so it is the same on every run. Copies of one
/// observation end up next to each other ([`AlertWindows::observe`] skips them).
pub fn sort_observations(obs: &mut [Observation]) {
    obs.sort_by(|a, b| a.identity().cmp(&b.identity()));
}
