//! Kafka over SASL_SSL: Apache Kafka with a second listener (SCRAM-SHA-512
//! over TLS, a CA made in the test). inkstream is given only that listener:
//! the mirror, the dataflow's Kafka source and the derived producer all go
//! through it, with the password from the environment. Wrong credentials or
//! a wrong CA stop `serve` at startup with a message naming the setting;
//! credentials the broker stops accepting later are counted
//! (`inkstream_kafka_auth_failures_total`) and lose nothing: the events
//! wait in the log until access is back.
//!
//! The topics are read back through the broker's PLAINTEXT listener by an
//! independent consumer.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::tls::TestPki;
use inkstream_tests::{
    PrivateKafka, Server, checking_consumer, free_port, inkstream_bin, kafka_tool, keystrokes,
    metric, now_ms, post_events, redis_url, unique,
};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const USER: &str = "inkstream-app";
const PASSWORD: &str = "correct horse battery staple";
const EVENTS: &str = "inkstream.events.writing";
const WPM: &str = "inkstream.derived.analytics.metric_updated";

/// The settings that make inkstream use the SASL_SSL listener (the password
/// comes from the environment).
fn sasl_args(kafka: &PrivateKafka, pki: &TestPki) -> Vec<String> {
    vec![
        "--kafka-brokers".into(),
        kafka.sasl_brokers(),
        "--set".into(),
        "kafka.security_protocol=sasl_ssl".into(),
        "--set".into(),
        "kafka.sasl_mechanism=SCRAM-SHA-512".into(),
        "--set".into(),
        format!("kafka.sasl_username={USER}"),
        "--set".into(),
        format!("kafka.tls.ca_file=\"{}\"", pki.ca_file.display()),
    ]
}

/// Ids seen on `topic` (through the PLAINTEXT listener) whose record
/// `keep`s, until `n` distinct ones or a 90 s deadline.
async fn read_until(
    brokers: &str,
    topic: &str,
    n: usize,
    keep: impl Fn(&schemas::Event) -> bool,
) -> HashSet<String> {
    let consumer: StreamConsumer = checking_consumer(brokers, "sasl-check").create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records on {topic} within 90 s",
            seen.len()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let event = schemas::confluent::decode(m.payload().unwrap()).unwrap();
        if keep(&event) {
            seen.insert(event.id.to_string());
        }
    }
    seen
}

fn is_wpm_of(user: &str) -> impl Fn(&schemas::Event) -> bool + '_ {
    move |e| {
        e.user_id.as_deref() == Some(user)
            && matches!(&e.data, schemas::Payload::AnalyticsMetricUpdated(m) if m.metric == "wpm")
    }
}

/// Sets `USER`'s SCRAM-SHA-512 password on the broker (through PLAINTEXT).
fn set_password(kafka: &PrivateKafka, password: &str) {
    let out = kafka_tool(
        "kafka.admin.ConfigCommand",
        &[
            "--bootstrap-server",
            &kafka.brokers(),
            "--alter",
            "--entity-type",
            "users",
            "--entity-name",
            USER,
            "--add-config",
            &format!("SCRAM-SHA-512=[password={password}]"),
        ],
    );
    assert!(
        out.status.success(),
        "kafka-configs --alter: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_mirror_the_kafka_source_and_the_derived_producer_work_through_sasl_ssl() {
    let pki = TestPki::new("kafka-sasl");
    let mut kafka = PrivateKafka::start_sasl_ssl(&pki.server_cert, &pki.server_key, USER, PASSWORD);
    let prefix = unique("sasl");
    let user = format!("{prefix}-u");
    let mut args = sasl_args(&kafka, &pki);
    args.extend([
        "--redis-url".into(),
        redis_url(),
        "--set".into(),
        format!("redis.prefix={prefix}"),
        "--set".into(),
        format!("kafka.dataflow_group=\"{prefix}-g\""),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with_env(
        free_port(),
        &[("INKSTREAM_KAFKA_SASL_PASSWORD", PASSWORD)],
        &args,
    )
    .await;

    // 40 keystroke batches: the mirror puts them on the event topic, the
    // dataflow reads them back from it and derives 40 WPM updates.
    let t0 = now_ms() - 60_000;
    let events = keystrokes(&prefix, &user, &format!("{prefix}-p"), t0, 40);
    assert_eq!(post_events(&server, &events).await, 202);
    let brokers = kafka.brokers();
    let sent: HashSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let mirrored = read_until(&brokers, EVENTS, 40, |e| {
        e.user_id.as_deref() == Some(user.as_str())
    })
    .await;
    assert_eq!(mirrored, sent, "the mirror delivered every event");
    let derived = read_until(&brokers, WPM, 40, is_wpm_of(&user)).await;
    assert_eq!(
        derived.len(),
        40,
        "source and derived producer over SASL_SSL"
    );
    let refused = metric(&server, "inkstream_kafka_auth_failures_total").await;
    assert_eq!(
        refused, 0.0,
        "no refused connection with the right password"
    );

    // The broker stops accepting the password (changed, and the broker
    // restarted so that every client reconnects): refusals are counted,
    // ingest goes on, and nothing is lost once the password is right again.
    set_password(&kafka, "rotated-elsewhere");
    kafka.stop();
    kafka.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(
        &server,
        "inkstream_kafka_auth_failures_total{client=\"source\",kind=\"sasl\"}",
    )
    .await
        == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the dataflow's consumer never counted a refused SASL authentication within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Their event time is of no concern here (after a long refusal they may
    // rightly be late for the dataflow): what counts is that they reach Kafka.
    let later = keystrokes(&format!("{prefix}-later"), &user, "p-later", now_ms(), 10);
    assert_eq!(
        post_events(&server, &later).await,
        202,
        "ingest does not depend on Kafka"
    );
    set_password(&kafka, PASSWORD);
    let mut all = sent.clone();
    all.extend(later.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
    let mirrored = read_until(&brokers, EVENTS, 50, |e| {
        e.user_id.as_deref() == Some(user.as_str())
    })
    .await;
    assert_eq!(
        mirrored, all,
        "the events ingested while refused reached Kafka"
    );
}

/// Runs `inkstream serve` to its exit (60 s at most): status and stderr.
async fn serve_to_exit(args: &[String], password: &str) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(inkstream_bin())
        .arg("serve")
        .args(["--port", &free_port().to_string()])
        .args(args)
        .env_remove("REDIS_URL")
        .env("INKSTREAM_KAFKA_SASL_PASSWORD", password)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    inkstream_tests::exit_within(&mut child, Duration::from_secs(60))
        .await
        .expect("inkstream serve did not stop within 60 s although Kafka refused it")
}

#[tokio::test]
async fn a_wrong_password_or_ca_stops_serve_at_startup_naming_the_setting() {
    let pki = TestPki::new("kafka-sasl-wrong");
    let kafka = PrivateKafka::start_sasl_ssl(&pki.server_cert, &pki.server_key, USER, PASSWORD);
    let args = sasl_args(&kafka, &pki);
    let wrong = "not-the-password-1234";
    let (status, stderr) = serve_to_exit(&args, wrong).await;
    assert!(
        !status.success(),
        "a refused password must not start: {stderr}"
    );
    for needle in [
        "kafka.sasl_password",
        "INKSTREAM_KAFKA_SASL_PASSWORD",
        "SCRAM-SHA-512",
    ] {
        assert!(
            stderr.contains(needle),
            "the error names {needle}: {stderr}"
        );
    }
    assert!(
        !stderr.contains(wrong),
        "the password is never logged: {stderr}"
    );

    // Another CA than the one that signed the broker's certificate.
    let other = TestPki::new("kafka-sasl-other-ca");
    let mut args = args;
    let ca = args.len() - 1;
    args[ca] = format!("kafka.tls.ca_file=\"{}\"", other.ca_file.display());
    let (status, stderr) = serve_to_exit(&args, PASSWORD).await;
    assert!(
        !status.success(),
        "an unverifiable broker must not start: {stderr}"
    );
    assert!(
        stderr.contains("kafka.tls.ca_file"),
        "the error names the CA setting: {stderr}"
    );
    assert!(
        !stderr.contains(PASSWORD),
        "the password is never logged: {stderr}"
    );
}
