//! The timely wrapper: the same outputs with 1 and 2 workers, any batching
//! and disorder.

use super::*;

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
