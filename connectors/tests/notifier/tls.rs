//! TLS and outbound safety: https providers and webhooks, refused private
//! destinations, no redirects, SMTP STARTTLS and implicit TLS.

use super::*;

/// One HIGH alert to `ada` on `channel`, delivered (or not) on the spot.
async fn deliver_once(config: NotifierConfig, channel: Channel) -> (Store, NotifierMetrics) {
    let clock = ManualClock::new(local("UTC", 12, 0));
    let store = Store::memory();
    let (mut n, metrics) = start(config, store.clone(), &clock).await;
    let mut p = ada("UTC");
    p.channels.high = vec![channel];
    n.handle().set_prefs("ada", p).await.unwrap();
    n.on_event(&alert_event(
        "d-tls",
        Priority::High,
        "ada",
        "k",
        "Over TLS",
    ))
    .await
    .unwrap();
    (store, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_api_sms_and_webhook_are_delivered_over_https_trusting_the_configured_ca() {
    let pki = TestPki::new("notifier-https");
    let provider = Provider::start_https(&pki).await;
    assert!(provider.base.starts_with("https://"));
    for channel in [Channel::Email, Channel::Sms, Channel::Webhook] {
        let mut config = base_config();
        config.tls.ca_file = Some(pki.ca_file.clone());
        config.email_api = Some(provider.api());
        config.sms = Some(provider.api());
        config.webhook.urls = vec![format!("{}{HOOK}", provider.base)];
        let (_, metrics) = deliver_once(config, channel).await;
        assert_eq!(
            count(&metrics, "high", channel.as_str(), "delivered"),
            1,
            "{channel:?} over https"
        );
    }
    assert_eq!(provider.received(EMAIL).len(), 1);
    assert_eq!(provider.received(SMS).len(), 1);
    assert_eq!(provider.received(HOOK).len(), 1);

    // Without the CA the provider's certificate is not trusted: nothing
    // reaches it, and the failure is a retryable connection error.
    let mut config = base_config();
    config.webhook.urls = vec![format!("{}{HOOK}", provider.base)];
    let (_, metrics) = deliver_once(config, Channel::Webhook).await;
    assert_eq!(count(&metrics, "high", "webhook", "delivered"), 0);
    assert_eq!(count(&metrics, "high", "webhook", "retried"), 1);
    assert_eq!(
        provider.received(HOOK).len(),
        1,
        "an untrusted server got nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_loopback_private_and_metadata_addresses_are_refused_unless_allowed() {
    let provider = Provider::start().await;
    let port = provider.base.rsplit(':').next().unwrap().to_owned();
    for url in [
        format!("http://127.0.0.1:{port}{HOOK}"),
        format!("http://localhost:{port}{HOOK}"),
        format!("http://[::ffff:127.0.0.1]:{port}{HOOK}"),
        "http://10.1.2.3/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let mut config = base_config();
        config.allow_private_destinations = false;
        config.webhook.urls = vec![url.clone()];
        let (store, metrics) = deliver_once(config, Channel::Webhook).await;
        assert_eq!(
            metrics.refused.with_label_values(&["webhook"]).get(),
            1,
            "{url} was not refused"
        );
        // Refused for good: not retried, in the dead letters with the reason.
        assert_eq!(
            count(&metrics, "high", "webhook", "dead_lettered"),
            1,
            "{url}"
        );
        let dead = store.dead_letters().await.unwrap();
        let reason = dead[0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("destination refused")
                && reason.contains("notifications.allow_private_destinations"),
            "{url}: {reason}"
        );
    }
    assert!(
        provider.received(HOOK).is_empty(),
        "a refused webhook reached the receiver"
    );

    // The setting allows them.
    let mut config = base_config();
    config.webhook.urls = vec![format!("http://127.0.0.1:{port}{HOOK}")];
    let (_, metrics) = deliver_once(config, Channel::Webhook).await;
    assert_eq!(count(&metrics, "high", "webhook", "delivered"), 1);
    assert_eq!(metrics.refused.with_label_values(&["webhook"]).get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_the_answer_and_is_never_followed() {
    let provider = Provider::start().await;
    let mut config = base_config();
    config.webhook.urls = vec![format!("{}{HOOK}", provider.base)];
    provider.always(HOOK, 307);
    let (store, metrics) = deliver_once(config, Channel::Webhook).await;
    assert_eq!(
        provider.received(HOOK).len(),
        1,
        "the redirect was followed"
    );
    assert_eq!(count(&metrics, "high", "webhook", "dead_lettered"), 1);
    let dead = store.dead_letters().await.unwrap();
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("307"),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivers_with_starttls_and_with_implicit_tls_to_a_real_server() {
    let pki = TestPki::new("smtp-tls");
    for mode in ["starttls", "implicit"] {
        let smtpd = Smtpd::start_tls(mode, &pki);
        let mut config = base_config();
        config.tls.ca_file = Some(pki.ca_file.clone());
        config.smtp = Some(SmtpConfig {
            host: "localhost".into(),
            tls: Some(if mode == "starttls" {
                SmtpTls::Starttls
            } else {
                SmtpTls::Implicit
            }),
            ..smtpd.config()
        });
        let (_, metrics) = deliver_once(config, Channel::Email).await;
        assert_eq!(count(&metrics, "high", "email", "delivered"), 1, "{mode}");
        let msgs = smtpd.messages();
        assert_eq!(msgs.len(), 1, "{mode}: one message received");
        assert!(msgs[0].1.contains("Over TLS"), "{mode}: {}", msgs[0].1);
    }
    // A server that requires STARTTLS refuses a plain client's mail: the
    // requirement is real, so the success above went through TLS.
    let smtpd = Smtpd::start_tls("starttls", &pki);
    let mut config = base_config();
    config.smtp = Some(SmtpConfig {
        tls: Some(SmtpTls::None),
        ..smtpd.config()
    });
    let (_, metrics) = deliver_once(config, Channel::Email).await;
    assert_eq!(count(&metrics, "high", "email", "delivered"), 0);
    assert!(smtpd.messages().is_empty());
}
