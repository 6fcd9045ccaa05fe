//! The notification policy core on its own (pure, explicit `now`): quiet
//! hours in a non-UTC zone, digests at the local hour, auto-mute counts,
//! flow hold, CRITICAL bypass and fallback. The clock is the `now` argument.
#![allow(clippy::unwrap_used)]

use inkstream_connectors::notifier::policy::*;
use schemas::payload::Priority;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// Wall-clock ms of a local time in `tz`: the tests' controllable clock.
fn local(tz: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
    jiff::civil::date(y, mo, d)
        .at(h, mi, 0, 0)
        .in_tz(tz)
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn prefs(tz: &str) -> Preferences {
    Preferences {
        timezone: tz.into(),
        email: Some("ada@example.com".into()),
        phone: Some("+15550100".into()),
        ..Preferences::default()
    }
}

fn alert(id: &str, p: Priority, dedup: &str) -> Alert {
    Alert {
        id: id.into(),
        rule: Some("r".into()),
        priority: p,
        recipient: "ada".into(),
        dedup_key: dedup.into(),
        title: format!("t-{id}"),
        body: format!("b-{id}"),
    }
}

fn channels(ds: &[Delivery]) -> Vec<Channel> {
    let mut c: Vec<Channel> = ds.iter().map(|d| d.channel).collect();
    c.sort();
    c
}

const NY: &str = "America/New_York";

#[test]
fn quiet_hours_follow_the_users_time_zone_not_utc() {
    let p = prefs(NY);
    // 03:00 in New York is 08:00 UTC: quiet for the user, not for UTC.
    let three_am = local(NY, 2026, 11, 30, 3, 0);
    assert!(p.is_quiet(three_am));
    assert!(!prefs("UTC").is_quiet(three_am));
    assert!(p.is_quiet(local(NY, 2026, 11, 30, 22, 0)));
    assert!(
        !p.is_quiet(local(NY, 2026, 11, 30, 8, 0)),
        "the end is exclusive"
    );
    assert!(!p.is_quiet(local(NY, 2026, 11, 30, 21, 59)));
}

#[test]
fn high_alert_in_quiet_hours_is_held_and_sent_when_the_window_opens() {
    let p = prefs(NY);
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local(NY, 2026, 11, 30, 3, 0);
    assert!(
        pol.on_alert(&alert("a1", Priority::High, "k"), &p, t)
            .is_empty()
    );
    assert!(
        pol.tick(local(NY, 2026, 11, 30, 7, 59), &|_| p.clone())
            .is_empty()
    );
    let out = pol.tick(local(NY, 2026, 11, 30, 8, 0), &|_| p.clone());
    assert_eq!(channels(&out), vec![Channel::InApp, Channel::Email]);
    assert!(
        out.iter()
            .all(|d| d.kind == DeliveryKind::Held && d.items[0].id == "a1")
    );
}

#[test]
fn low_alert_at_3am_arrives_in_the_8am_local_digest() {
    let p = prefs(NY);
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local(NY, 2026, 11, 30, 3, 0);
    assert!(
        pol.on_alert(&alert("badge", Priority::Low, "flow"), &p, t)
            .is_empty()
    );
    let tallies = pol.take_tallies();
    assert_eq!(tallies[0].outcome, Outcome::Digested);
    assert!(pol.tick(t + MIN, &|_| p.clone()).is_empty());
    assert_eq!(pol.next_deadline(), Some(local(NY, 2026, 11, 30, 8, 0)));
    assert!(
        pol.tick(local(NY, 2026, 11, 30, 7, 59), &|_| p.clone())
            .is_empty()
    );
    let out = pol.tick(local(NY, 2026, 11, 30, 8, 0), &|_| p.clone());
    assert_eq!(channels(&out), vec![Channel::InApp, Channel::Email]);
    assert!(
        out.iter()
            .all(|d| d.kind == DeliveryKind::Digest && d.items[0].id == "badge")
    );
    assert!(
        pol.tick(local(NY, 2026, 12, 1, 8, 0), &|_| p.clone())
            .is_empty()
    );
}

#[test]
fn a_digest_due_inside_quiet_hours_goes_out_when_they_end_not_never() {
    // Daily digest at 23:00 with the default quiet hours 22:00-08:00: every
    // digest hour is quiet.
    let mut p = prefs(NY);
    p.digest_hour = 23;
    let mut pol = Policy::new(PolicyConfig::default());
    let noon = local(NY, 2026, 11, 30, 12, 0);
    assert!(
        pol.on_alert(&alert("badge", Priority::Low, "flow"), &p, noon)
            .is_empty()
    );
    assert!(
        pol.tick(local(NY, 2026, 11, 30, 23, 0), &|_| p.clone())
            .is_empty(),
        "sent inside the quiet hours"
    );
    // Every minute of the next three days: the digest must go out once, at
    // the end of the first quiet hours (08:00 on Dec 1).
    let mut sent = Vec::new();
    let mut t = local(NY, 2026, 11, 30, 23, 1);
    while t < local(NY, 2026, 12, 3, 23, 59) {
        for d in pol.tick(t, &|_| p.clone()) {
            sent.push((t, d));
        }
        t += MIN;
    }
    assert!(
        !sent.is_empty(),
        "a LOW alert whose digest hour is always in quiet hours was never delivered \
         (still waiting: {})",
        pol.waiting()
    );
    let when = local(NY, 2026, 12, 1, 8, 0);
    assert!(
        sent.iter().all(|(at, d)| *at == when
            && d.kind == DeliveryKind::Digest
            && d.items.len() == 1
            && d.items[0].id == "badge"),
        "expected one digest at 08:00 on Dec 1, got {:?}",
        sent.iter()
            .map(|(at, d)| (*at, d.channel))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        channels(&sent.into_iter().map(|(_, d)| d).collect::<Vec<_>>()),
        vec![Channel::InApp, Channel::Email]
    );
    assert_eq!(pol.waiting(), 0);
}

#[test]
fn hourly_and_weekly_digests_fall_on_local_boundaries() {
    let mut p = prefs("Asia/Kolkata"); // UTC+05:30
    p.digest = DigestFrequency::Hourly;
    let t = local("Asia/Kolkata", 2026, 11, 30, 10, 20);
    assert_eq!(
        p.next_digest_after(t),
        local("Asia/Kolkata", 2026, 11, 30, 11, 0)
    );
    p.digest = DigestFrequency::Weekly;
    p.digest_weekday = 3; // Wednesday; 2026-11-30 is a Monday
    assert_eq!(
        p.next_digest_after(t),
        local("Asia/Kolkata", 2026, 12, 2, 8, 0)
    );
}

#[test]
fn repeated_alert_within_the_hour_is_suppressed_and_counted_in_the_next_delivery() {
    let p = prefs("UTC");
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local("UTC", 2026, 11, 30, 12, 0);
    let first = pol.on_alert(&alert("a1", Priority::High, "book:1"), &p, t);
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].suppressed_similar, 0);
    for i in 0..3 {
        let again = pol.on_alert(
            &alert(&format!("r{i}"), Priority::High, "book:1"),
            &p,
            t + (10 + i) * MIN,
        );
        assert!(again.is_empty(), "suppressed within the hour");
    }
    assert_eq!(
        pol.take_tallies()
            .iter()
            .filter(|t| t.outcome == Outcome::SuppressedMuted)
            .count(),
        3
    );
    // After the hour, the same alert goes out and says how many were suppressed.
    let next = pol.on_alert(&alert("a2", Priority::High, "book:1"), &p, t + HOUR + MIN);
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|d| d.suppressed_similar == 3));
    assert!(
        next[0]
            .text()
            .contains("3 similar notifications were suppressed")
    );
    let after = pol.on_alert(
        &alert("a3", Priority::High, "other"),
        &p,
        t + HOUR + 2 * MIN,
    );
    assert!(
        after.iter().all(|d| d.suppressed_similar == 0),
        "reported once"
    );
}

#[test]
fn flow_hold_keeps_in_app_and_email_until_the_user_pauses() {
    let p = prefs("UTC");
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local("UTC", 2026, 11, 30, 12, 0);
    assert!(pol.on_flow("ada", true, &p, t).is_empty());
    assert!(
        pol.on_alert(&alert("h", Priority::High, "k"), &p, t + MIN)
            .is_empty()
    );
    assert!(
        pol.tick(t + 10 * MIN, &|_| p.clone()).is_empty(),
        "still in flow"
    );
    assert!(
        pol.take_tallies()
            .iter()
            .any(|t| t.outcome == Outcome::HeldFlow)
    );
    let out = pol.on_flow("ada", false, &p, t + 20 * MIN);
    assert_eq!(channels(&out), vec![Channel::InApp, Channel::Email]);
    assert!(out.iter().all(|d| d.items[0].id == "h"));
}

#[test]
fn flow_hold_can_be_turned_off_per_user() {
    let mut p = prefs("UTC");
    p.flow_hold = false;
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local("UTC", 2026, 11, 30, 12, 0);
    pol.on_flow("ada", true, &p, t);
    assert_eq!(
        pol.on_alert(&alert("h", Priority::High, "k"), &p, t).len(),
        2
    );
}

#[test]
fn critical_bypasses_quiet_hours_mutes_and_flow() {
    let p = prefs(NY);
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local(NY, 2026, 11, 30, 3, 0);
    pol.on_flow("ada", true, &p, t);
    let a = pol.on_alert(&alert("c1", Priority::Critical, "sys"), &p, t);
    assert_eq!(
        channels(&a),
        vec![
            Channel::InApp,
            Channel::Email,
            Channel::Sms,
            Channel::Webhook
        ]
    );
    let b = pol.on_alert(&alert("c2", Priority::Critical, "sys"), &p, t + MIN);
    assert_eq!(b.len(), 4, "no mute for CRITICAL");
}

#[test]
fn critical_email_falls_back_to_sms() {
    let mut p = prefs("UTC");
    p.channels.critical = vec![Channel::InApp, Channel::Email];
    let mut pol = Policy::new(PolicyConfig::default());
    let out = pol.on_alert(&alert("c", Priority::Critical, "sys"), &p, 0);
    let email = out.iter().find(|d| d.channel == Channel::Email).unwrap();
    assert_eq!(email.fallback, Some(Channel::Sms));
    let sms = pol.on_failed(email).unwrap();
    assert_eq!(sms.channel, Channel::Sms);
    assert_eq!(sms.kind, DeliveryKind::Fallback);
    assert_ne!(sms.id, email.id);
    // No email address at all: SMS straight away.
    p.email = None;
    let out = pol.on_alert(&alert("c2", Priority::Critical, "sys"), &p, 0);
    assert_eq!(channels(&out), vec![Channel::InApp, Channel::Sms]);
}

#[test]
fn medium_in_app_is_immediate_and_email_waits_for_the_batch_window() {
    let mut p = prefs("UTC");
    p.channels.medium = vec![Channel::InApp, Channel::Email];
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local("UTC", 2026, 11, 30, 12, 0);
    // In-app: each alert at once, on its own.
    let first = pol.on_alert(&alert("m1", Priority::Medium, "a"), &p, t);
    assert_eq!(channels(&first), vec![Channel::InApp]);
    assert_eq!(first[0].kind, DeliveryKind::Immediate);
    let second = pol.on_alert(&alert("m2", Priority::Medium, "b"), &p, t + 10_000);
    assert_eq!(channels(&second), vec![Channel::InApp]);
    assert_eq!(second[0].items[0].id, "m2");
    // Email: both in one batch when the window closes.
    assert!(pol.tick(t + 59_000, &|_| p.clone()).is_empty());
    let out = pol.tick(t + 60_000, &|_| p.clone());
    assert_eq!(channels(&out), vec![Channel::Email]);
    assert_eq!(out[0].kind, DeliveryKind::Batch);
    assert_eq!(out[0].items.len(), 2);
}

#[test]
fn medium_with_only_in_app_leaves_nothing_waiting() {
    let p = prefs("UTC"); // channels.medium = [in_app]
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local("UTC", 2026, 11, 30, 12, 0);
    let out = pol.on_alert(&alert("m1", Priority::Medium, "a"), &p, t);
    assert_eq!(channels(&out), vec![Channel::InApp]);
    assert_eq!(pol.waiting(), 0);
    assert_eq!(pol.next_deadline(), None);
}

#[test]
fn delivery_ids_are_deterministic_and_state_round_trips() {
    let p = prefs(NY);
    let t = local(NY, 2026, 11, 30, 3, 0);
    let mut a = Policy::new(PolicyConfig::default());
    a.on_alert(&alert("badge", Priority::Low, "flow"), &p, t);
    a.tick(t, &|_| p.clone());
    // Persist, restore into a fresh policy (a restart), and compare.
    let mut b = Policy::new(PolicyConfig::default());
    for (u, s) in a.take_dirty() {
        let json = serde_json::to_string(&s.unwrap()).unwrap();
        b.restore(u, serde_json::from_str(&json).unwrap());
    }
    let at8 = local(NY, 2026, 11, 30, 8, 0);
    let da = a.tick(at8, &|_| p.clone());
    let db = b.tick(at8, &|_| p.clone());
    assert_eq!(da, db);
    assert_eq!(da.len(), 2);
}

#[test]
fn flow_hold_ends_after_its_maximum_even_without_a_pause() {
    let p = prefs("UTC");
    let mut pol = Policy::new(PolicyConfig::default()); // 2 h maximum
    let t = local("UTC", 2026, 11, 30, 12, 0);
    pol.on_flow("ada", true, &p, t);
    assert!(
        pol.on_alert(&alert("h", Priority::High, "k"), &p, t)
            .is_empty()
    );
    assert!(pol.tick(t + HOUR, &|_| p.clone()).is_empty());
    let out = pol.tick(t + 2 * HOUR, &|_| p.clone());
    assert_eq!(channels(&out), vec![Channel::InApp, Channel::Email]);
}

#[test]
fn sms_and_webhook_are_not_held_by_flow() {
    let mut p = prefs("UTC");
    p.channels.high = vec![Channel::InApp, Channel::Sms, Channel::Webhook];
    let mut pol = Policy::new(PolicyConfig::default());
    let t = local("UTC", 2026, 11, 30, 12, 0);
    pol.on_flow("ada", true, &p, t);
    let out = pol.on_alert(&alert("h", Priority::High, "k"), &p, t);
    assert_eq!(channels(&out), vec![Channel::Sms, Channel::Webhook]);
    let released = pol.on_flow("ada", false, &p, t + MIN);
    assert_eq!(channels(&released), vec![Channel::InApp]);
}

#[test]
fn unconfigured_channels_and_missing_addresses_are_skipped_and_counted() {
    let mut p = prefs("UTC");
    p.email = None;
    let config = PolicyConfig {
        available: vec![Channel::InApp, Channel::Email],
        ..PolicyConfig::default()
    };
    let mut pol = Policy::new(config);
    let t = local("UTC", 2026, 11, 30, 12, 0);
    let out = pol.on_alert(&alert("h", Priority::High, "k"), &p, t);
    assert_eq!(channels(&out), vec![Channel::InApp]);
    assert!(
        pol.take_tallies()
            .iter()
            .any(|t| t.outcome == Outcome::Failed && t.channel == "email")
    );
    // CRITICAL: no SMS backend, no email address: in-app only.
    let out = pol.on_alert(&alert("c", Priority::Critical, "s"), &p, t);
    assert_eq!(channels(&out), vec![Channel::InApp]);
}

#[test]
fn queues_are_bounded_per_user_and_drop_the_oldest() {
    let p = prefs(NY);
    let config = PolicyConfig {
        max_queued_per_user: 3,
        ..PolicyConfig::default()
    };
    let mut pol = Policy::new(config);
    let t = local(NY, 2026, 11, 30, 3, 0);
    for i in 0..5 {
        pol.on_alert(
            &alert(&format!("l{i}"), Priority::Low, &format!("k{i}")),
            &p,
            t,
        );
    }
    assert_eq!(
        pol.take_tallies()
            .iter()
            .filter(|t| t.outcome == Outcome::Failed)
            .count(),
        2
    );
    let out = pol.tick(local(NY, 2026, 11, 30, 8, 0), &|_| p.clone());
    let ids: Vec<&str> = out[0].items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, vec!["l2", "l3", "l4"]);
}
