//! An external Schema Registry (Apicurio Registry's Confluent-compatible
//! API, started by `tests/run.sh`): inkstream registers the value schema of
//! its topics there (subject `<topic>-value`, BACKWARD), frames its records
//! with the registry's ids, and a standard consumer (confluent-kafka's
//! `AvroDeserializer` with a `SchemaRegistryClient` pointed at the registry)
//! decodes them; an incompatible schema already under a subject stops
//! inkstream at startup with the registry's message.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{
    PrivateKafka, Server, free_port, inkstream_bin, keystrokes, now_ms, post_events, python,
    redis_url, schema_registry_url, unique,
};
use serde_json::{Value, json};
use std::time::Duration;

/// The two tests change the same registry's subjects: one at a time.
static REGISTRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CT: &str = "application/vnd.schemaregistry.v1+json";

async fn registry_call(method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", schema_registry_url());
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .header("Content-Type", CT);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The registry's id of the latest version under `subject`.
async fn latest_id(subject: &str) -> u32 {
    let (status, body) = registry_call(
        reqwest::Method::GET,
        &format!("/subjects/{subject}/versions/latest"),
        None,
    )
    .await;
    assert_eq!(status, 200, "latest version of {subject}: {body}");
    body["id"].as_u64().unwrap() as u32
}

/// Runs `consume_registry.py`: the records of `topics` that `matching`
/// selects, decoded through the registry.
fn consume(brokers: &str, topics: &str, matching: &str, expected: usize) -> Vec<Value> {
    // `timeout` enforces the deadline even if the client hangs (its HTTP
    // client has no timeout of its own unless configured).
    let out = std::process::Command::new("timeout")
        .args(["--kill-after=5", "120"])
        .arg(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/consume_registry.py"
        ))
        .args([
            brokers,
            &schema_registry_url(),
            topics,
            matching,
            &expected.to_string(),
            "90",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "confluent-kafka's AvroDeserializer did not decode {expected} records of {topics} ({matching}) \
         within 90 s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn records_are_framed_with_the_registry_ids_and_decode_through_the_registry() {
    let _one = REGISTRY.lock().await;
    let kafka = PrivateKafka::start();
    let brokers = kafka.brokers();
    let prefix = unique("registry");
    let (user, project) = (format!("{prefix}-u"), format!("{prefix}-p"));
    let registry = schema_registry_url();
    let server = Server::start(&[
        "--redis-url",
        &redis_url(),
        "--kafka-brokers",
        &brokers,
        "--schema-registry-url",
        &registry,
        "--set",
        &format!("redis.prefix={prefix}"),
    ])
    .await;

    // Registered before serve answered: every topic's subject, BACKWARD.
    let events_subject = "inkstream.events.writing-value";
    let derived_subject = "inkstream.derived.analytics.metric_updated-value";
    let events_id = latest_id(events_subject).await;
    let derived_id = latest_id(derived_subject).await;
    for subject in [events_subject, derived_subject] {
        let (status, config) =
            registry_call(reqwest::Method::GET, &format!("/config/{subject}"), None).await;
        assert_eq!(status, 200, "{subject}: {config}");
        assert_eq!(
            config["compatibilityLevel"], "BACKWARD",
            "{subject}: {config}"
        );
        let (_, schema) = registry_call(
            reqwest::Method::GET,
            &format!("/subjects/{subject}/versions/latest"),
            None,
        )
        .await;
        let registered: Value = serde_json::from_str(schema["schema"].as_str().unwrap()).unwrap();
        let ours: Value = serde_json::from_str(schemas::confluent::published_schema()).unwrap();
        assert_eq!(registered, ours, "{subject} holds the published schema");
    }

    let t0 = now_ms() - 30_000;
    let posted = keystrokes(&prefix, &user, &project, t0, 20);
    assert_eq!(post_events(&server, &posted).await, 202);

    // The event topic: every posted event, decoded by the standard client
    // with the writer schema it fetched from the registry by id.
    let b = brokers.clone();
    let id_match = format!("id:{prefix}");
    let decoded =
        tokio::task::spawn_blocking(move || consume(&b, "inkstream.events.writing", &id_match, 20))
            .await
            .unwrap();
    assert_eq!(decoded.len(), 20, "each event once");
    for d in &decoded {
        assert_eq!(d["schema_id"], events_id, "framed with the registry's id");
        assert_eq!(d["schema_id_header"], events_id.to_string());
        let e = &d["event"];
        let sent = posted
            .iter()
            .find(|p| p["id"] == e["id"])
            .unwrap_or_else(|| panic!("decoded an event that was not posted: {e}"));
        for field in ["id", "type", "ts", "user_id", "project_id"] {
            assert_eq!(e[field], sent[field], "{field} of {}", sent["id"]);
        }
        for (k, v) in sent["data"].as_object().unwrap() {
            assert_eq!(&e["data"][k], v, "data.{k} of {}", sent["id"]);
        }
        assert_eq!(d["key"], json!(user));
    }

    // A derived topic: the dataflow's metric updates for the project, framed
    // with that subject's id, decoded the same way.
    let b = brokers.clone();
    let key_match = format!("key:{project}");
    let derived = tokio::task::spawn_blocking(move || {
        consume(
            &b,
            "inkstream.derived.analytics.metric_updated",
            &key_match,
            1,
        )
    })
    .await
    .unwrap();
    for d in &derived {
        assert_eq!(d["schema_id"], derived_id, "framed with the registry's id");
        assert_eq!(d["event"]["type"], "analytics.metric_updated");
        assert_eq!(d["event"]["project_id"], json!(project));
    }
    drop(server);
    drop(kafka);
}

/// Deletes `subject` (soft, then for good) and checks it is gone.
async fn clear(subject: &str) {
    let path = format!("/subjects/{subject}");
    registry_call(reqwest::Method::DELETE, &path, None).await;
    registry_call(
        reqwest::Method::DELETE,
        &format!("{path}?permanent=true"),
        None,
    )
    .await;
    let (status, body) =
        registry_call(reqwest::Method::GET, &format!("{path}/versions"), None).await;
    assert_eq!(status, 404, "{subject} could not be deleted: {body}");
}

#[tokio::test]
async fn an_incompatible_schema_under_a_subject_stops_startup_with_the_registry_message() {
    let _one = REGISTRY.lock().await;
    let subject = "inkstream.events.automation-value";
    clear(subject).await;
    // Another team's schema under the subject: a record inkstream's envelope
    // cannot read (its fields have no defaults), so BACKWARD refuses it.
    let legacy = json!({"type": "record", "name": "Event", "namespace": "inkstream",
        "fields": [{"name": "legacy_only", "type": "string"}]})
    .to_string();
    let (status, body) = registry_call(
        reqwest::Method::POST,
        &format!("/subjects/{subject}/versions"),
        Some(json!({"schema": legacy})),
    )
    .await;
    assert_eq!(status, 200, "pre-registering the other schema: {body}");

    let mut child = std::process::Command::new(inkstream_bin())
        .args(["serve", "--port", &free_port().to_string()])
        .args(["--kafka-brokers", &format!("127.0.0.1:{}", free_port())])
        .args(["--schema-registry-url", &schema_registry_url()])
        .env_remove("REDIS_URL")
        .env_remove("KAFKA_BROKERS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Some((status, stderr)) =
        inkstream_tests::exit_within(&mut child, Duration::from_secs(60)).await
    else {
        clear(subject).await;
        panic!("inkstream serve started (or hung) despite the incompatible schema under {subject}");
    };
    clear(subject).await;
    assert!(!status.success(), "exit status {status}: {stderr}");
    assert!(
        stderr.contains(&format!("schema of subject {subject}"))
            && stderr.contains("not compatible (BACKWARD)"),
        "the error names the subject: {stderr}"
    );
    // The registry's own words (Apicurio: "Incompatible artifact: <subject> [AVRO], …").
    assert!(
        stderr.contains("Incompatible artifact"),
        "the registry's message is in the error: {stderr}"
    );
}
