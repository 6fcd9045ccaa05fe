//! Provider outages (retried delivery or dead letter, never a duplicate) and
//! a restart with pending retries and digests.

use super::*;
use inkstream_connectors::lease::Fence;
use inkstream_connectors::notifier::policy::UserState;
use inkstream_connectors::notifier::store::StoreError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_api_5xx_then_ok_is_delivered_on_the_retry_with_the_same_idempotency_key() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.email_api = Some(provider.api());
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Email];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.plan(EMAIL, &[503]);

    n.on_event(&alert_event("d-h1", Priority::High, "ada", "k", "Hello"))
        .await
        .unwrap();
    assert_eq!(provider.received(EMAIL).len(), 1);
    assert_eq!(n.pending(), 1, "waiting for its retry");
    n.tick().await.unwrap();
    assert_eq!(provider.received(EMAIL).len(), 1, "not before the backoff");
    clock.advance(after_backoff(1));
    n.tick().await.unwrap();
    let got = provider.received(EMAIL);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].status, 200);
    assert_eq!(got[0].idempotency_key, got[1].idempotency_key);
    assert!(!got[0].idempotency_key.is_empty());
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["to"][0]["email"], "ada@example.com");
    assert!(
        body["htmlContent"]
            .as_str()
            .unwrap()
            .contains("<h1>Hello</h1>")
    );
    assert!(
        body["textContent"]
            .as_str()
            .unwrap()
            .contains("body of Hello")
    );
    clock.advance(3_600_000);
    n.tick().await.unwrap();
    assert_eq!(
        provider.received(EMAIL).len(),
        2,
        "delivered once, never again"
    );
    assert_eq!(count(&metrics, "high", "email", "retried"), 1);
    assert_eq!(count(&metrics, "high", "email", "delivered"), 1);
    assert_eq!(n.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_4xx_is_not_retried_and_goes_to_the_dead_letters() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.sms = Some(provider.api());
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = Store::memory();
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Sms];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.always(SMS, 400);

    n.on_event(&alert_event("d-s1", Priority::High, "ada", "k", "Hi"))
        .await
        .unwrap();
    for _ in 0..5 {
        clock.advance(600_000);
        n.tick().await.unwrap();
    }
    assert_eq!(provider.received(SMS).len(), 1, "a 4xx is not retried");
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["channel"], "sms");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("400"),
        "{dead:?}"
    );
    assert_eq!(count(&metrics, "high", "sms", "dead_lettered"), 1);
    assert_eq!(count(&metrics, "high", "sms", "retried"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_always_5xx_is_dead_lettered_in_redis_after_the_last_try() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.retry.max_attempts = 3;
    config.email_api = Some(provider.api());
    let prefix = inkstream_tests::unique("notify-dead");
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = redis_store(&prefix);
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Email];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.always(EMAIL, 502);

    n.on_event(&alert_event("d-x1", Priority::High, "ada", "k", "Down"))
        .await
        .unwrap();
    for attempt in 1..=4 {
        clock.advance(after_backoff(attempt));
        n.tick().await.unwrap();
    }
    let got = provider.received(EMAIL);
    assert_eq!(got.len(), 3, "max_attempts tries, then stop");
    assert!(
        got.iter()
            .all(|r| r.idempotency_key == got[0].idempotency_key)
    );
    // The dead-letter stream in Redis, read directly.
    let client = redis::Client::open(inkstream_tests::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:notifications:dead"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(reply.ids.len(), 1);
    let reason: String = reply.ids[0].get("reason").unwrap();
    assert!(reason.contains("502"), "{reason}");
    let id: String = reply.ids[0].get("id").unwrap();
    assert_eq!(id, got[0].idempotency_key);
    assert_eq!(count(&metrics, "high", "email", "retried"), 2);
    assert_eq!(count(&metrics, "high", "email", "dead_lettered"), 1);
    assert_eq!(n.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_email_rejected_falls_back_to_sms() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.email_api = Some(provider.api());
    config.sms = Some(provider.api());
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, metrics) = start(config, Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.critical = vec![Channel::InApp, Channel::Email];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.always(EMAIL, 400);

    n.on_event(&alert_event("d-c1", Priority::Critical, "ada", "k", "Boom"))
        .await
        .unwrap();
    assert_eq!(provider.received(EMAIL).len(), 1);
    let sms = provider.received(SMS);
    assert_eq!(sms.len(), 1, "the fallback SMS");
    assert!(String::from_utf8_lossy(&sms[0].body).contains("Boom"));
    assert_eq!(count(&metrics, "critical", "sms", "delivered"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_signed_and_the_signature_verifies() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.webhook = WebhookConfig {
        urls: vec![format!("{}{HOOK}", provider.base)],
        secret: Some("s3cret".into()),
        allow_user_urls: false,
    };
    let clock = ManualClock::new(local("UTC", 12, 0));
    let (mut n, _) = start(config, Store::memory(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Webhook];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.plan(HOOK, &[500]);

    n.on_event(&alert_event("d-w1", Priority::High, "ada", "k", "Hook"))
        .await
        .unwrap();
    clock.advance(after_backoff(1));
    n.tick().await.unwrap();
    let got = provider.received(HOOK);
    assert_eq!(got.len(), 2, "5xx then OK");
    use inkstream_connectors::notifier::webhook::verify;
    for r in &got {
        let sig = r.signature.as_deref().expect("signed");
        assert!(verify(b"s3cret", &r.body, sig), "signature verifies");
        assert!(!verify(b"wrong", &r.body, sig));
    }
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["recipient_id"], "ada");
    assert_eq!(body["title"], "Hook");
    assert_eq!(body["id"], got[1].idempotency_key);
}

// --- restart ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_and_digest_queue_survive_a_restart_and_nothing_is_sent_twice() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.email_api = Some(provider.api());
    config.sms = Some(provider.api());
    let prefix = inkstream_tests::unique("notify-restart");
    let clock = ManualClock::new(local(NY, 3, 0));
    let critical = alert_event("d-r-crit", Priority::Critical, "ada", "sys", "Outage");
    let badge = alert_event("d-r-low", Priority::Low, "ada", "flow", "Flow badge");
    provider.plan(SMS, &[503]);
    {
        let (mut a, _) = start(config.clone(), redis_store(&prefix), &clock).await;
        a.handle().set_prefs("ada", ada(NY)).await.unwrap();
        a.on_event(&critical).await.unwrap();
        a.on_event(&badge).await.unwrap();
        assert_eq!(a.pending(), 1, "the SMS waits for its retry");
        // Dropped without any shutdown: a crash.
    }
    assert_eq!(provider.received(EMAIL).len(), 1);
    assert_eq!(provider.received(SMS).len(), 1);

    let (mut b, metrics) = start(config.clone(), redis_store(&prefix), &clock).await;
    assert_eq!(b.pending(), 1, "the pending retry was restored");
    assert_eq!(b.handle().prefs("ada").timezone, NY, "preferences restored");
    assert_eq!(metrics.pending.get(), 2, "one retry + one digest item");
    // The dataflow re-emits both alerts after its checkpoint restore.
    b.on_event(&critical).await.unwrap();
    b.on_event(&badge).await.unwrap();
    clock.advance(after_backoff(1));
    b.tick().await.unwrap();
    assert_eq!(provider.received(SMS).len(), 2, "the retry, once");
    assert_eq!(
        provider.received(EMAIL).len(),
        1,
        "no second email for the alert"
    );

    clock.set(local(NY, 8, 0));
    b.tick().await.unwrap();
    drop(b);
    let (mut c, _) = start(config, redis_store(&prefix), &clock).await;
    c.on_event(&critical).await.unwrap();
    c.on_event(&badge).await.unwrap();
    clock.advance(3_600_000);
    c.tick().await.unwrap();

    let emails = provider.received(EMAIL);
    assert_eq!(emails.len(), 2, "the critical email and the 08:00 digest");
    assert!(String::from_utf8_lossy(&emails[1].body).contains("Flow badge"));
    assert_ne!(emails[0].idempotency_key, emails[1].idempotency_key);
    let sms = provider.received(SMS);
    assert_eq!(sms.len(), 2);
    assert_eq!(sms[0].idempotency_key, sms[1].idempotency_key);
    let (inbox, total) = c
        .handle()
        .store
        .in_app_list("ada", false, 0, 10)
        .await
        .unwrap();
    assert_eq!(total, 2, "critical + digest in-app, each once: {inbox:?}");
    assert_eq!(c.pending(), 0);
}

/// Alerts that arrive while Redis cannot answer are late, not lost: one
/// whose `seen` check fails, and one whose routing step (seen mark, state,
/// pending deliveries) is refused, each cut on its way to Redis as by a
/// dropped connection, are routed and delivered at the next tick; their
/// re-emissions (after a checkpoint restore) are still recognised. Before,
/// both were dropped with a warning: no notification, ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_the_store_could_not_check_or_save_are_delivered_at_the_next_tick() {
    let url = inkstream_tests::redis_url();
    let upstream = url.trim_start_matches("redis://").trim_end_matches('/');
    let proxy = inkstream_tests::cut_proxy::CutProxy::start(upstream).await;
    let prefix = inkstream_tests::unique("notif-refused");
    let store = Store::redis(
        &format!("redis://127.0.0.1:{}", proxy.port()),
        &prefix,
        &Default::default(),
    )
    .expect("redis store");
    let (mut n, metrics, clock) = in_app_at_noon(store).await;

    // 1. Its `seen` check (EXISTS on the seen key) is cut.
    proxy.arm_request("notifications:seen:d-unchecked");
    let unchecked = alert_event("d-unchecked", Priority::High, "ada", "k1", "First");
    assert!(
        n.on_event(&unchecked).await.is_err(),
        "the cut check was reported"
    );
    // 2. Its routing step (the only request naming the pending hash) is cut.
    proxy.arm_request("notifications:pending");
    let unsaved = alert_event("d-unsaved", Priority::High, "ada", "k2", "Second");
    assert!(
        n.on_event(&unsaved).await.is_err(),
        "the cut step was reported"
    );
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(inbox(&n).await, 0, "nothing delivered before it is saved");

    clock.advance(1_000);
    n.tick().await.expect("the next tick routes and saves both");
    assert_eq!(inbox(&n).await, 2, "both delivered once saved");
    assert_eq!(count(&metrics, "high", "in_app", "delivered"), 2);
    // Re-emitted after a checkpoint restore (same ids): routed once.
    n.on_event(&unchecked).await.unwrap();
    n.on_event(&unsaved).await.unwrap();
    clock.advance(1_000);
    n.tick().await.unwrap();
    assert_eq!(inbox(&n).await, 2);
}

/// A user state told apart from others by its `suppressed` count.
fn state(suppressed: u64) -> UserState {
    let mut v = serde_json::to_value(UserState::default()).unwrap();
    v["suppressed"] = suppressed.into();
    serde_json::from_value(v).unwrap()
}

/// A routing step held on a dropped connection reaches Redis after the
/// step that replaced it: it is skipped, so the user's state stays the
/// newer one (as a MULTI it ran, and put the older state back).
#[tokio::test]
async fn a_step_that_reaches_redis_after_a_later_one_changes_nothing() {
    let url = inkstream_tests::redis_url();
    let upstream = url.trim_start_matches("redis://").trim_end_matches('/');
    let proxy = inkstream_tests::cut_proxy::CutProxy::start(upstream).await;
    let prefix = inkstream_tests::unique("notif-late-step");
    let store = Store::redis(
        &format!("redis://127.0.0.1:{}", proxy.port()),
        &prefix,
        &Default::default(),
    )
    .expect("redis store")
    .fenced(None);
    // The only request naming the users' hash is the step itself.
    proxy.arm_hold("notifications:users");
    let older = [("ada".to_owned(), Some(state(1)))];
    assert!(
        store.commit(&[], 60, &older, &[]).await.is_err(),
        "the held step was reported"
    );
    assert!(proxy.holds(), "the step was never held");
    let newer = [("ada".to_owned(), Some(state(2)))];
    store.commit(&[], 60, &newer, &[]).await.unwrap();
    // Now the held step arrives, and has run.
    proxy.release(&format!("{prefix}:released"), &url).await;
    let users = redis_store(&prefix).load_users().await.unwrap();
    assert_eq!(
        users,
        vec![("ada".to_owned(), state(2))],
        "the late step put the older state back"
    );
}

/// A notifier whose process lost the dataflow lease (another took it: the
/// fence token moved on) writes nothing; the holder of the current token
/// does.
#[tokio::test]
async fn a_notifier_that_lost_the_lease_writes_nothing() {
    let prefix = inkstream_tests::unique("notif-fenced");
    let fence_key = inkstream_tests::set_dataflow_fence(&prefix, 2).await;
    let fence = |token| Fence {
        key: fence_key.clone(),
        token,
    };
    let users = [("ada".to_owned(), Some(state(1)))];
    let stale = redis_store(&prefix).fenced(Some(fence(1)));
    for refused in [
        stale.commit(&["a1".to_owned()], 60, &users, &[]).await,
        stale.finish("d1", 60).await,
    ] {
        match refused {
            Err(StoreError::Fenced { token: 1, .. }) => {}
            other => panic!("a stale holder's write was not refused: {other:?}"),
        }
    }
    let reader = redis_store(&prefix);
    assert!(!reader.is_seen("a1").await.unwrap());
    assert!(!reader.is_done("d1").await.unwrap());
    assert!(reader.load_users().await.unwrap().is_empty());

    let current = redis_store(&prefix).fenced(Some(fence(2)));
    current
        .commit(&["a1".to_owned()], 60, &users, &[])
        .await
        .unwrap();
    current.finish("d1", 60).await.unwrap();
    assert!(reader.is_seen("a1").await.unwrap());
    assert!(reader.is_done("d1").await.unwrap());
    assert_eq!(
        reader.load_users().await.unwrap(),
        vec![("ada".to_owned(), state(1))]
    );
}

/// An in-app delivery whose store write ran but whose reply was lost is
/// tried again: the notification is stored once and stays read if the
/// user read it in between (the retry's `SADD` marked it unread again).
#[tokio::test]
async fn an_in_app_notification_stored_again_by_a_retry_stays_read() {
    use inkstream_connectors::notifier::policy::DeliveryKind;
    use inkstream_connectors::notifier::store::InAppNotification;
    let prefix = inkstream_tests::unique("notif-inapp-retry");
    let store = redis_store(&prefix);
    let note = |id: &str, created_ms| InAppNotification {
        id: id.into(),
        recipient_id: "ada".into(),
        priority: schemas::payload::Priority::High,
        title: format!("note {id}"),
        body: String::new(),
        rule: None,
        suppressed_similar: 0,
        kind: DeliveryKind::Immediate,
        created_ms,
        read: false,
    };
    store.in_app_add(&note("d1", 10), 2).await.unwrap();
    assert!(store.in_app_mark_read("ada", "d1").await.unwrap());
    // The retry, with the time of its own try.
    store.in_app_add(&note("d1", 20), 2).await.unwrap();
    let (unread, total) = store.in_app_list("ada", true, 0, 10).await.unwrap();
    assert!(
        unread.is_empty() && total == 0,
        "the retry marked a read notification unread: {unread:?}"
    );
    let (all, total) = store.in_app_list("ada", false, 0, 10).await.unwrap();
    assert_eq!(total, 1, "stored once: {all:?}");
    assert_eq!(all[0].created_ms, 10, "the first write stands: {all:?}");
    // Trimming to `keep` still drops the oldest, body and unread mark too.
    store.in_app_add(&note("d2", 30), 2).await.unwrap();
    store.in_app_add(&note("d3", 40), 2).await.unwrap();
    let (all, total) = store.in_app_list("ada", false, 0, 10).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|n| n.id.as_str()).collect();
    assert_eq!((ids, total), (vec!["d3", "d2"], 2));
    let (unread, _) = store.in_app_list("ada", true, 0, 10).await.unwrap();
    assert_eq!(unread.len(), 2);
}
