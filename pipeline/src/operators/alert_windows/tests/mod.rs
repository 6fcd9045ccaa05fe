//! The alert operator's tests: config validation, each kind of rule, and the
//! windowed state, on the pure parts and through the dataflow.

use super::config::*;
use super::fields::*;
use super::live_rules::*;
use super::windows::*;
use super::*;
use schemas::Event;
use schemas::payload::{Direction, Keystroke, Payload, Priority, Severity};
use serde::Deserialize;
use serde_json::Value;
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

fn rules(text: &str) -> LiveRules {
    LiveRules::new(&config(text).unwrap()).unwrap()
}

fn rules_error(text: &str) -> String {
    match config(text) {
        Err(e) => e,
        Ok(c) => LiveRules::new(&c).map(|_| ()).unwrap_err().to_string(),
    }
}

/// Stages every event, then feeds the observations in order, epoch by
/// epoch (advancing the watermark between epochs), and flushes.
fn run_core(rules: &LiveRules, events: &[Event]) -> Vec<Event> {
    let mut state = AlertWindows::new(rules);
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

fn live(rules: &LiveRules, e: &Event) -> Vec<Event> {
    let (mut out, mut obs) = (Vec::new(), Vec::new());
    rules.stage(e, &mut out, &mut obs);
    out
}

use Direction::{Above, Below};

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

mod config;
mod dataflow;
mod rules;
mod windows;
