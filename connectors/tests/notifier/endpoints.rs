//! The HTTP endpoints: send, list, page, mark read, preferences.

use super::*;

/// The real router (auth on: a JWT secret and one app key) with the
/// notifier task running, served on a loopback port.
async fn serve_api(
    config: NotifierConfig,
) -> (
    String,
    inkstream_connectors::notifier::NotifierHandle,
    tokio::sync::watch::Sender<bool>,
) {
    use inkstream_connectors::auth::{ApiKey, AuthConfig, Authenticator, RateLimiter};
    use inkstream_connectors::event_log::EmbeddedLog;
    use inkstream_connectors::http_api::{AppState, IngestConfig, router};
    use inkstream_connectors::websocket_fanout::{Hub, HubConfig};
    use inkstream_connectors::{EventLog, Metrics};
    let metrics = Metrics::standalone();
    let hub = Arc::new(Hub::new(HubConfig::default(), metrics.clone()));
    let auth = Authenticator::new(
        AuthConfig {
            jwt_secret: Some("jwt-secret".into()),
            session_secret: None,
            api_keys: vec![ApiKey {
                name: "ops".into(),
                sha256: inkstream_connectors::auth::hash_api_key("svc-key"),
                scopes: vec![inkstream_connectors::auth::Scope::Admin],
                categories: None,
                projects: None,
                rate: None,
            }],
            ..AuthConfig::default()
        },
        None,
        metrics.auth_jwks_fetches.clone(),
    )
    .unwrap();
    let (views, _feed) = inkstream_connectors::view_store::ViewStore::start(
        inkstream_connectors::view_store::ViewStoreConfig::default(),
        &metrics,
    )
    .await
    .unwrap();
    let mut state = AppState {
        views,
        log: EventLog::Embedded(EmbeddedLog::new("t", Duration::from_secs(60), 1000)),
        hub: hub.clone(),
        metrics: metrics.clone(),
        config: Arc::new(IngestConfig::default()),
        auth,
        limiter: Arc::new(RateLimiter::new(1000)),
        notifier: None,
    };
    let nm = NotifierMetrics::register(metrics.registry()).unwrap();
    let (n, rx) = Notifier::start(
        config,
        Store::memory(),
        Some(hub),
        nm,
        inkstream_connectors::notifier::SystemClock,
    )
    .await
    .unwrap();
    let handle = n.handle();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(n.run(rx, stop_rx));
    state.notifier = Some(handle.clone());
    let app = router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // Metrics are exposed, every label combination at 0 from the start.
    let text = metrics.render();
    assert!(text.contains(r#"inkstream_notifications_total{channel="sms",outcome="dead_lettered",priority="critical"} 0"#), "{text}");
    assert!(text.contains("inkstream_notification_pending 0"));
    assert!(text.contains(r#"inkstream_notification_delivery_seconds_count{channel="webhook"} 0"#));
    (base, handle, stop_tx)
}

fn token(user: &str, role: &str) -> String {
    let exp = inkstream_tests::now_ms() / 1000 + 3600;
    inkstream_connectors::auth::sign_jwt(
        &serde_json::json!({"sub": user, "role": role, "exp": exp}),
        b"jwt-secret",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_send_list_page_mark_read_and_preferences() {
    let mut config = base_config();
    config.defaults.quiet_hours = None;
    config.admins = vec!["root".into()];
    let (base, _handle, _stop) = serve_api(config).await;
    let http = reqwest::Client::new();
    let ada = format!("Bearer {}", token("ada", "member"));
    let admin = format!("Bearer {}", token("root", "admin"));

    // A member may not send; an app key and an admin may.
    let r = http
        .post(format!("{base}/api/realtime/notifications/send"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"recipient": "ada", "priority": "HIGH", "title": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for i in 0..3 {
        let r = http
            .post(format!("{base}/api/realtime/notifications/send"))
            .header("authorization", "Bearer svc-key")
            .json(&serde_json::json!({"recipient": "ada", "priority": "HIGH", "title": format!("n{i}"), "body": "hi", "id": format!("send-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Delivered by the running task.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let v: serde_json::Value = http
            .get(format!("{base}/api/realtime/notifications?limit=2"))
            .header("authorization", &ada)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["total"] == 3 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list["total"], 3, "{list}");
    assert_eq!(list["notifications"].as_array().unwrap().len(), 2, "paged");
    let id = list["notifications"][0]["id"].as_str().unwrap().to_owned();
    let r = http
        .post(format!("{base}/api/realtime/notifications/{id}/read"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let unread: serde_json::Value = http
        .get(format!("{base}/api/realtime/notifications?unread=true"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unread["total"], 2);
    let r = http
        .post(format!("{base}/api/realtime/notifications/nope/read"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Another user's list: admins only.
    let r = http
        .get(format!("{base}/api/realtime/notifications?user_id=root"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{base}/api/realtime/notifications?user_id=ada"))
        .header("authorization", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/realtime/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Preferences: defaults, then a partial PUT, validated.
    let v: serde_json::Value = http
        .get(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["preferences"]["timezone"], "UTC");
    assert_eq!(v["preferences"]["digest"], "daily");
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"timezone": "Mars/Olympus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["field"], "timezone");
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"timezone": "Europe/Paris", "quiet_hours": {"start": "23:00", "end": "07:30"}, "digest": "weekly", "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = http
        .get(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["preferences"]["timezone"], "Europe/Paris");
    assert_eq!(v["preferences"]["quiet_hours"]["end"], "07:30");
    assert_eq!(v["preferences"]["digest"], "weekly");
    assert_eq!(
        v["preferences"]["digest_hour"], 8,
        "unset fields keep the defaults"
    );
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&serde_json::json!({"bogus": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "unknown fields are refused");
    // A member may not point the server at a URL of their choice; an admin may.
    let hook = serde_json::json!({"webhook_url": "http://169.254.169.254/"});
    let r = http
        .put(format!("{base}/api/realtime/notifications/preferences"))
        .header("authorization", &ada)
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .put(format!(
            "{base}/api/realtime/notifications/preferences?user_id=ada"
        ))
        .header("authorization", &admin)
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
