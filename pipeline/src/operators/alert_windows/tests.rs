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

#[test]
fn a_system_error_alerts_the_admins_critical_at_once() {
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
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
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
    assert!(live(&r, &error("e1", 0, "warning")).is_empty());
    assert_eq!(live(&r, &error("e2", 0, "critical")).len(), 1);
    let all = LiveRules::new(&AlertsConfig {
        system_error_min_severity: Severity::Debug,
        ..AlertsConfig::default()
    })
    .unwrap();
    assert_eq!(live(&all, &error("e3", 0, "debug")).len(), 1);
}

#[test]
fn a_published_book_alerts_its_owner_high_or_else_the_project() {
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
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
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
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
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
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
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
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
    let r = LiveRules::new(&AlertsConfig::default()).unwrap();
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

fn threshold_rules(extra: &str) -> LiveRules {
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
    let mut state = AlertWindows::new(&r);
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

fn anomaly_rules() -> LiveRules {
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
    let r = LiveRules::new(&cfg).unwrap();
    let mut state = AlertWindows::new(&r);
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
            rule("kind = \"anomaly\"\ntype = \"writing.keystroke\"\nvalue = \"data.words\"\nk = 0"),
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
    let mut state = AlertWindows::new(&r);
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
    let r = LiveRules::new(&cfg).unwrap();
    let run = |second_ts: i64, sweep: bool| {
        let mut state = AlertWindows::new(&r);
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
fn epochs_of(rules: &LiveRules, events: &[Event]) -> Vec<(i64, Vec<Observation>)> {
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
fn feed(state: &mut AlertWindows, epochs: &[(i64, Vec<Observation>)]) -> Vec<Event> {
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
    let r = LiveRules::new(&cfg).unwrap();
    for seed in 0..3 {
        let epochs = epochs_of(&r, &mixed_stream(seed, 2000));
        let (first, second) = epochs.split_at(epochs.len() / 2);
        let mut original = AlertWindows::new(&r);
        let before = feed(&mut original, first);
        assert!(!before.is_empty());
        assert!(
            original.state_size() > 0 && !original.deadlines.is_empty(),
            "seed {seed}: open windows at the snapshot"
        );
        let bytes = bincode::serialize(&original).unwrap();
        let mut restored: AlertWindows = bincode::deserialize(&bytes).unwrap();
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

impl AlertWindows {
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
                s.alert_windows(&a, &ctx)
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
