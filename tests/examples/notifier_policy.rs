//! Throughput of the notification policy core and of the notifier with the
//! in-process store and in-app delivery (no network):
//! `cargo run -p inkstream-tests --example notifier_policy` (with
//! `INKSTREAM_TEST_REDIS_URL` set, also with the Redis store).

use connectors::notifier::metrics::NotifierMetrics;
use connectors::notifier::policy::{Alert, Policy, PolicyConfig, Preferences};
use connectors::notifier::{ManualClock, Notifier, NotifierConfig, Store};
use schemas::payload::Priority;
use std::time::Instant;

fn alert(i: u64) -> Alert {
    let priority = match i % 10 {
        0 => Priority::Critical,
        1..=3 => Priority::High,
        4..=6 => Priority::Medium,
        _ => Priority::Low,
    };
    Alert {
        id: format!("a{i}"),
        rule: Some("bench".into()),
        priority,
        recipient: format!("u{}", i % 10_000),
        dedup_key: format!("k{}", i % 50_000),
        title: "title".into(),
        body: "body".into(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let prefs = Preferences {
        timezone: "America/New_York".into(),
        email: Some("a@example.com".into()),
        ..Preferences::default()
    };
    let n = 1_000_000u64;
    let mut policy = Policy::new(PolicyConfig::default());
    let t0 = 1_764_500_000_000i64;
    let start = Instant::now();
    let mut out = 0usize;
    for i in 0..n {
        out += policy.on_alert(&alert(i), &prefs, t0 + i as i64).len();
    }
    let routed = start.elapsed();
    let start = Instant::now();
    out += policy.tick(t0 + 86_400_000, &|_| prefs.clone()).len();
    let ticked = start.elapsed();
    println!(
        "policy: {n} alerts over 10 000 users in {routed:?} ({:.0}/s), {out} deliveries; \
         a tick releasing every queue took {ticked:?}",
        n as f64 / routed.as_secs_f64()
    );

    let clock = ManualClock::new(t0);
    let mut config = NotifierConfig::default();
    config.defaults.quiet_hours = None;
    let (mut notifier, _rx) = Notifier::start(
        config,
        Store::memory(),
        None,
        NotifierMetrics::standalone(),
        clock.clone(),
    )
    .await?;
    let m = 100_000u64;
    let start = Instant::now();
    for i in 0..m {
        let mut a = alert(i);
        a.priority = Priority::High;
        a.dedup_key = format!("unique{i}");
        notifier.send(a).await?;
    }
    let took = start.elapsed();
    println!(
        "notifier (embedded store, in-app): {m} HIGH alerts delivered in {took:?} ({:.0}/s)",
        m as f64 / took.as_secs_f64()
    );
    if let Ok(url) = std::env::var("INKSTREAM_TEST_REDIS_URL") {
        let mut config = NotifierConfig::default();
        config.defaults.quiet_hours = None;
        let prefix = format!("bench-{}", std::process::id());
        let store = Store::redis(&url, &prefix, &Default::default())?;
        let (mut notifier, _rx) = Notifier::start(
            config,
            store,
            None,
            NotifierMetrics::standalone(),
            clock.clone(),
        )
        .await?;
        let m = 10_000u64;
        let start = Instant::now();
        for i in 0..m {
            let mut a = alert(i);
            a.priority = Priority::High;
            a.dedup_key = format!("unique{i}");
            notifier.send(a).await?;
        }
        let took = start.elapsed();
        println!(
            "notifier (Redis store, in-app): {m} HIGH alerts delivered in {took:?} ({:.0}/s)",
            m as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}
