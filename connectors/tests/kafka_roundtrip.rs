//! A produce/consume round trip against the real Kafka-compatible broker
//! (tansu, started by tests/run.sh): keys, headers, per-key order.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::kafka::{client_config, ensure_topics, idempotent_producer};
use inkstream_tests::{kafka_brokers, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn produced_records_come_back_with_keys_headers_and_per_key_order() {
    let brokers = kafka_brokers();
    let topic = unique("inkstream.test.roundtrip");
    ensure_topics(&brokers, std::slice::from_ref(&topic), 3)
        .await
        .unwrap();
    // Creating it again is not an error.
    ensure_topics(&brokers, std::slice::from_ref(&topic), 3)
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
