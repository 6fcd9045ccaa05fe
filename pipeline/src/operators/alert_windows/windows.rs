//! The windowed state, frontier-driven: [`AlertWindows`] keeps a series per
//! (rule, key) — threshold windows, anomaly samples, per-book sales totals —
//! processes observations in event-time order and fires crossings when
//! events arrive or windows slide.

use super::live_rules::*;
use crate::operators::{derived_id, stable_hash};
use crate::runtime::{Core, Order};
use foldhash::HashMap;
use schemas::Event;
use schemas::payload::{AnomalyDetected, Direction, Payload, Priority, ThresholdCrossed};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};

/// The latest envelope and recipients of a series, for transitions that
/// no event carries (a window sliding).
#[derive(Default, Serialize, Deserialize)]
pub(super) struct AlertSubject {
    pub(super) user_id: Option<schemas::Text>,
    pub(super) project_id: Option<schemas::Text>,
    pub(super) document_id: Option<schemas::Text>,
    pub(super) recipients: Vec<String>,
}

impl AlertSubject {
    pub(super) fn of(o: &Observation) -> AlertSubject {
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
pub(super) struct Window {
    pub(super) entries: VecDeque<(i64, f64)>,
    pub(super) sum: f64,
    /// Events removed since `sum` was last recomputed from `entries`.
    pub(super) evicted: usize,
    pub(super) above: bool,
    /// The deadline registered for this key (lazy deletion of older ones).
    pub(super) deadline: Option<i64>,
    pub(super) ctx: AlertSubject,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Series {
    pub(super) values: VecDeque<f64>,
    pub(super) last_ts: i64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Book {
    pub(super) max_total: i64,
    pub(super) last_ts: i64,
}

/// A config rule as the stateful stage sees it: the outputs' name and
/// priority, and the parameters of its series. Its field paths, conditions
/// and recipients were applied by the live stage ([`LiveRules::stage`]),
/// whose results the observations carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SeriesRule {
    pub(super) name: String,
    pub(super) priority: Priority,
    pub(super) kind: SeriesKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum SeriesKind {
    /// A match rule: never observed here.
    Stateless,
    Threshold(ThresholdRule),
    Anomaly(AnomalyRule),
}

/// The stateful rules' state. Feed each (rule, key)'s observations in
/// [`sort_observations`] order; call [`AlertWindows::advance_to`] with the
/// watermark (no observation before it will come).
///
/// **Checkpoints.** The operator runtime saves the whole core with bincode
/// and restores it by deserializing, with no hook to hand it anything
/// afterwards. So the core holds its rules as plain data (names, priorities,
/// windows, thresholds, milestones: `SeriesRule`), copied out of the
/// compiled [`LiveRules`] at construction, not the `Arc<LiveRules>`
/// itself: that holds field paths, conditions with `serde_json::Value`s
/// (whose `Deserialize` needs `deserialize_any`, which bincode lacks) and
/// templates, none of which this stage uses. Re-attaching a skipped
/// `Arc<LiveRules>` would have needed state outside the core (a
/// process-wide `OnceLock`): one rule set per process, wrong for tests that
/// run several dataflows at once, and invisible in the snapshot. A restored
/// core therefore runs with the rules it was saved with; restoring with a
/// changed `[alerts]` section is not supported (as with a changed worker
/// count): the live stage's rule indices would name other rules.
#[derive(Serialize, Deserialize)]
pub struct AlertWindows {
    /// Per config rule index.
    pub(super) rules: Vec<SeriesRule>,
    /// Sorted, distinct, positive.
    pub(super) milestones: Vec<i64>,
    pub(super) state_ttl_ms: i64,
    /// Per rule index (empty maps for other kinds).
    pub(super) windows: Vec<HashMap<String, Window>>,
    /// (moment an event leaves a window, rule, key); entries whose key has
    /// since registered another deadline are skipped when they come up.
    pub(super) deadlines: BTreeSet<(i64, u32, String)>,
    pub(super) series: Vec<HashMap<String, Series>>,
    pub(super) books: HashMap<String, Book>,
    pub(super) swept_at: i64,
    /// Identity of the last observation processed: a copy sorts right after
    /// it (see [`sort_observations`]) and is skipped.
    pub(super) last: Option<(i64, schemas::Text, u32, String)>,
}

impl AlertWindows {
    pub fn new(rules: &LiveRules) -> AlertWindows {
        let n = rules.rules.len();
        AlertWindows {
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
            windows: (0..n).map(|_| HashMap::default()).collect(),
            deadlines: BTreeSet::new(),
            series: (0..n).map(|_| HashMap::default()).collect(),
            books: HashMap::default(),
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

    pub(super) fn observe_sales(&mut self, o: &Observation, out: &mut Vec<Event>) {
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
                data: Payload::AnalyticsThresholdCrossed(Box::new(ThresholdCrossed {
                    rule: "sales_milestone".to_owned(),
                    metric: "total_units".to_owned(),
                    key: o.key.clone(),
                    value: total as f64,
                    threshold: m as f64,
                    direction: Direction::Above,
                    window_ms: None,
                })),
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
impl Core for AlertWindows {
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
        AlertWindows::observe(self, o, out);
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        AlertWindows::advance_to(self, watermark, out);
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        AlertWindows::flush(self, out);
    }

    fn state_size(&self) -> usize {
        AlertWindows::state_size(self)
    }

    fn sort_epoch(items: &mut [Observation]) {
        sort_observations(items);
    }
}

/// Drops `key`'s entry if idle for more than `ttl_ms` before `ts`. The sweep
/// in [`AlertWindows::advance_to`] runs when the frontier happens to pass, so
/// it only bounds memory: this check makes "forgotten" depend on event time
/// alone, never on batching or on when the last sweep ran.
pub(super) fn forget_if_idle<V>(
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

pub(super) fn observe_threshold(
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

pub(super) fn observe_anomaly(
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
                data: Payload::AnalyticsAnomalyDetected(Box::new(AnomalyDetected {
                    rule: rule.name.clone(),
                    metric: a.metric.clone(),
                    key: o.key.clone(),
                    value: o.value,
                    mean,
                    stddev,
                    k: a.k,
                })),
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
pub(super) fn register(
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
pub(super) fn slide(
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

pub(super) fn evaluate(
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
pub(super) fn crossing(
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
        data: Payload::AnalyticsThresholdCrossed(Box::new(ThresholdCrossed {
            rule: rule.name.clone(),
            metric: t.metric.clone(),
            key: key.to_owned(),
            value,
            threshold: t.threshold,
            direction: dir,
            window_ms: Some(t.window_ms),
        })),
    });
}
