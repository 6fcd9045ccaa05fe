//! The `[alerts]` section as written: the built-in switches and the config
//! rules (`match`, `threshold`, `anomaly`), and the error naming the key of
//! an invalid one. Compiled by [`super::live_rules::LiveRules::new`].

use crate::operators::OperatorConfigError;
use schemas::payload::Severity;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

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

pub(super) fn default_anomaly_window() -> usize {
    30
}
pub(super) fn default_k() -> f64 {
    3.0
}
pub(super) fn default_min_samples() -> usize {
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

pub(super) fn invalid<T>(
    path: String,
    message: impl Into<String>,
) -> Result<T, OperatorConfigError> {
    Err(OperatorConfigError {
        path,
        message: message.into(),
    })
}
