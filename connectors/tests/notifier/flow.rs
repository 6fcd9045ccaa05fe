//! In-app held while the writer is in flow; timeouts and refused connections.

use super::*;

fn writing(id: &str, data: Payload) -> Event {
    Event {
        id: id.into(),
        ts: 0,
        user_id: Some("ada".into()),
        project_id: None,
        document_id: None,
        data,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_app_waits_while_the_writer_is_in_flow_and_arrives_when_they_pause() {
    use schemas::payload::{
        FlowStateEntered, FlowStateExited, SessionPaused, SessionState, SessionStateChanged,
    };
    let (mut n, metrics, clock) = in_app_at_noon(Store::memory()).await;

    n.on_event(&writing(
        "f1",
        Payload::WritingFlowStateEntered(FlowStateEntered {
            session_id: None,
            wpm: 210.0,
            sustained_ms: 120_000,
        }),
    ))
    .await
    .unwrap();
    n.on_event(&alert_event(
        "d-f-1",
        Priority::High,
        "ada",
        "k",
        "Review ready",
    ))
    .await
    .unwrap();
    assert_eq!(inbox(&n).await, 0, "held while in flow");
    assert_eq!(count(&metrics, "high", "in_app", "held_flow"), 1);
    // Flow ends but the writer keeps writing: still held.
    clock.advance(60_000);
    n.on_event(&writing(
        "f2",
        Payload::WritingFlowStateExited(FlowStateExited {
            session_id: None,
            wpm: 150.0,
            duration_ms: 60_000,
        }),
    ))
    .await
    .unwrap();
    n.on_event(&writing(
        "f3",
        Payload::WritingSessionStateChanged(SessionStateChanged {
            session_id: None,
            from: SessionState::FlowState,
            to: SessionState::ActiveWriting,
            reason: "wpm_below_threshold".into(),
            wpm: 150.0,
        }),
    ))
    .await
    .unwrap();
    n.tick().await.unwrap();
    assert_eq!(inbox(&n).await, 0, "not paused yet");
    // The pause releases it.
    clock.advance(60_000);
    n.on_event(&writing(
        "f4",
        Payload::WritingSessionPaused(SessionPaused {
            session_id: None,
            reason: None,
        }),
    ))
    .await
    .unwrap();
    assert_eq!(inbox(&n).await, 1);
    assert_eq!(count(&metrics, "high", "in_app", "delivered"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried_and_a_refused_connection_ends_in_a_dead_letter() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.retry.timeout_ms = 300;
    config.retry.max_attempts = 2;
    config.email_api = Some(provider.api());
    // Nothing listens there.
    config.sms = Some(HttpApiConfig {
        base_url: format!("http://127.0.0.1:{}", inkstream_tests::free_port()),
        ..provider.api()
    });
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = Store::memory();
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![Channel::Email, Channel::Sms];
    n.handle().set_prefs("ada", p).await.unwrap();
    provider.delay(EMAIL, &[2_000]);

    n.on_event(&alert_event("d-t1", Priority::High, "ada", "k", "Slow"))
        .await
        .unwrap();
    assert_eq!(n.pending(), 2, "both wait for a retry");
    clock.advance(after_backoff(1));
    n.tick().await.unwrap();
    assert_eq!(count(&metrics, "high", "email", "retried"), 1);
    assert_eq!(count(&metrics, "high", "email", "delivered"), 1);
    assert_eq!(count(&metrics, "high", "sms", "retried"), 1);
    assert_eq!(count(&metrics, "high", "sms", "dead_lettered"), 1);
    let dead = store.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["channel"], "sms");
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("request failed"),
        "{dead:?}"
    );
    // The timed-out request reached the provider once, the retry once more
    // (same key): a provider deduplicating by key sends one email.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let got = provider.received(EMAIL);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].idempotency_key, got[1].idempotency_key);
    assert_eq!(n.pending(), 0);
}
