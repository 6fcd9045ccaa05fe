//! Threshold and anomaly rules over event-time windows: crossings, keys,
//! recipients, TTLs, a naive reference on random streams, snapshots.

use super::*;

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
        by_key
            .entry(e.user_id.as_deref().unwrap().to_owned())
            .or_default()
            .push((e.ts, e.id.to_string(), k.words as f64));
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
