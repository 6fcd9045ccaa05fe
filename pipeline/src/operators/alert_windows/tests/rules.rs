//! Built-in rules (system errors, publications, flow, mentions, sales
//! milestones) and match rules with their conditions.

use super::*;

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
