//! A produce/consume round trip against the real broker (Apache Kafka,
//! started by tests/run.sh): keys, headers, per-key order; how topics are
//! created.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::kafka::{
    KafkaError, NewTopics, client_config, ensure_topics, idempotent_producer,
};
use inkstream_tests::{kafka_brokers, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::collections::HashMap;
use std::time::Duration;

/// Three partitions, the broker's replication factor.
fn three() -> NewTopics {
    NewTopics {
        partitions: 3,
        ..NewTopics::default()
    }
}

#[tokio::test]
async fn produced_records_come_back_with_keys_headers_and_per_key_order() {
    let brokers = kafka_brokers();
    let topic = unique("inkstream.test.roundtrip");
    ensure_topics(&brokers, std::slice::from_ref(&topic), three())
        .await
        .unwrap();
    // Creating it again is not an error.
    ensure_topics(&brokers, std::slice::from_ref(&topic), three())
        .await
        .unwrap();

    let producer = idempotent_producer(&brokers).unwrap();
    let n = 300;
    for i in 0..n {
        let key = format!("u{}", i % 5);
        let value = format!("{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "event_type",
            value: Some("writing.keystroke"),
        });
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let consumer: StreamConsumer = client_config(&brokers)
        .set("group.id", unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
    let mut seen = 0;
    while seen < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .unwrap();
        let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
        let value: u32 = std::str::from_utf8(msg.payload().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let header = msg.headers().unwrap().get(0);
        assert_eq!(header.key, "event_type");
        assert_eq!(header.value, Some(&b"writing.keystroke"[..]));
        assert_eq!(
            format!("u{}", value % 5),
            key,
            "key travels with its record"
        );
        by_key.entry(key).or_default().push(value);
        seen += 1;
    }
    assert_eq!(by_key.len(), 5);
    for (key, values) in by_key {
        let mut sorted = values.clone();
        sorted.sort();
        assert_eq!(values, sorted, "order of key {key} preserved");
        assert_eq!(values.len(), n as usize / 5);
    }
}

/// Topics are created with the broker's `default.replication.factor` unless
/// `kafka.replication_factor` says otherwise (until 2026-12-07 always 1: on
/// a cluster of three brokers inkstream's topics had one copy), and a
/// factor the cluster cannot hold is refused as a configuration error that
/// names the setting.
#[tokio::test]
async fn topics_take_the_brokers_replication_factor_and_an_impossible_one_is_a_config_error() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::BaseConsumer;
    use schemas::Classify;

    let brokers = kafka_brokers();
    let topic = unique("inkstream.test.replication");
    ensure_topics(&brokers, std::slice::from_ref(&topic), three())
        .await
        .unwrap();
    // The broker's default, as the broker reports it.
    let admin: AdminClient<DefaultClientContext> = client_config(&brokers).create().unwrap();
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Broker(1)], &AdminOptions::new())
        .await
        .unwrap();
    let broker = configs.into_iter().next().unwrap().unwrap();
    let default_rf: usize = broker
        .get("default.replication.factor")
        .and_then(|e| e.value.as_deref())
        .expect("the broker reports default.replication.factor")
        .parse()
        .unwrap();
    let consumer: BaseConsumer = client_config(&brokers).create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(30))
        .unwrap();
    let partitions = metadata.topics()[0].partitions();
    assert_eq!(partitions.len(), 3, "kafka.partitions is kept");
    for p in partitions {
        assert_eq!(
            p.replicas().len(),
            default_rf,
            "partition {} has the broker's default.replication.factor",
            p.id()
        );
    }

    // The test cluster is one broker: two copies cannot be placed.
    let other = unique("inkstream.test.replication");
    let two = NewTopics {
        replication_factor: 2,
        ..three()
    };
    let e = ensure_topics(&brokers, std::slice::from_ref(&other), two)
        .await
        .expect_err("two copies on one broker");
    assert!(
        matches!(&e, KafkaError::ReplicationFactor { topic, replication_factor: 2, .. } if *topic == other),
        "{e:?}"
    );
    assert_eq!(e.fault(), schemas::Fault::Config);
    let message = e.to_string();
    assert!(
        message.contains("kafka.replication_factor = 2") && message.contains(&other),
        "the error names the setting and the topic: {message}"
    );
}
