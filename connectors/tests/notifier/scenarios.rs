//! The "done when" scenarios: a 3 am system error, a flow badge in
//! the 8 am digest, a repeated alert suppressed and reported.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_error_at_3am_user_time_reaches_the_admin_by_in_app_email_and_sms() {
    let smtpd = Smtpd::start();
    let provider = Provider::start().await;
    let mut config = base_config();
    config.admins = vec!["ada".into()];
    config.smtp = Some(smtpd.config());
    config.sms = Some(provider.api());
    let clock = ManualClock::new(local(NY, 3, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    n.handle().set_prefs("ada", ada(NY)).await.unwrap();

    // The built-in rule's shape: CRITICAL to `role:admin`.
    let e = alert_event(
        "d-err-1",
        Priority::Critical,
        "role:admin",
        "system_error:api:E1",
        "Error in api",
    );
    n.on_event(&e).await.unwrap();

    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", true, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1, "in-app notification stored");
    assert_eq!(inbox[0].title, "Error in api");
    let mails = smtpd.messages();
    assert_eq!(mails.len(), 1, "one mail received by the SMTP server");
    let (rcpt, raw) = &mails[0];
    assert_eq!(rcpt, "ada@example.com");
    assert!(raw.contains("To: ada@example.com"), "{raw}");
    assert!(raw.contains("Subject: Error in api"), "{raw}");
    assert!(raw.contains("multipart/alternative"), "{raw}");
    assert!(raw.contains("Content-Type: text/plain"), "{raw}");
    assert!(raw.contains("Content-Type: text/html"), "{raw}");
    assert!(raw.contains("<h1>Error in api</h1>"), "{raw}");
    let sms = provider.received(SMS);
    assert_eq!(sms.len(), 1, "one SMS");
    let body: serde_json::Value = serde_json::from_slice(&sms[0].body).unwrap();
    assert_eq!(body["recipient"], "+15550100");
    assert!(body["content"].as_str().unwrap().contains("Error in api"));
    for ch in ["in_app", "email", "sms"] {
        assert_eq!(count(&metrics, "critical", ch, "delivered"), 1, "{ch}");
    }
    // Re-emitted after a restore (same id): nothing is sent again.
    n.on_event(&e).await.unwrap();
    assert_eq!(smtpd.messages().len(), 1);
    assert_eq!(provider.received(SMS).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_state_badge_at_3am_arrives_in_the_8am_local_digest() {
    let smtpd = Smtpd::start();
    let mut config = base_config();
    config.smtp = Some(smtpd.config());
    let clock = ManualClock::new(local(NY, 3, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    n.handle().set_prefs("ada", ada(NY)).await.unwrap();

    let badge = alert_event(
        "d-flow-1",
        Priority::Low,
        "ada",
        "flow_state_entered:ada",
        "You're in flow",
    );
    n.on_event(&badge).await.unwrap();
    n.tick().await.unwrap();
    assert_eq!(count(&metrics, "low", "digest", "digested"), 1);
    clock.set(local(NY, 7, 59));
    n.tick().await.unwrap();
    assert!(smtpd.messages().is_empty(), "nothing before 08:00 local");
    assert_eq!(
        n.handle()
            .store
            .in_app_list("ada", false, 0, 10)
            .await
            .unwrap()
            .1,
        0
    );
    assert_eq!(
        metrics.pending.get(),
        1,
        "the digest queue counts as pending"
    );

    clock.set(local(NY, 8, 0));
    n.tick().await.unwrap();
    let mails = smtpd.messages();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].1.contains("Subject: Your digest: 1 notifications"),
        "{}",
        mails[0].1
    );
    assert!(mails[0].1.contains("in flow"), "{}", mails[0].1);
    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].body.contains("You're in flow"));
    assert_eq!(metrics.pending.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_alert_within_the_hour_is_suppressed_and_reported_in_the_next_delivery() {
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(base_config(), Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::InApp];
    n.handle().set_prefs("ada", p).await.unwrap();

    for i in 0..3 {
        clock.set(local("UTC", 12, i * 10));
        let e = alert_event(
            &format!("d-pub-{i}"),
            Priority::High,
            "ada",
            "book_published:b1",
            "Published",
        );
        n.on_event(&e).await.unwrap();
    }
    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1, "the repeats were suppressed");
    assert_eq!(count(&metrics, "high", "in_app", "suppressed_muted"), 2);

    clock.set(local("UTC", 13, 5));
    let e = alert_event(
        "d-pub-9",
        Priority::High,
        "ada",
        "book_published:b1",
        "Published",
    );
    n.on_event(&e).await.unwrap();
    let (inbox, _) = n
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(
        inbox[0].suppressed_similar, 2,
        "newest first, reports the suppressed"
    );
    assert!(
        inbox[0]
            .body
            .contains("2 similar notifications were suppressed")
    );
}
