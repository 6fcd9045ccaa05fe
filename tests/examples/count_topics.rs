//! Counts the records on the event topics whose `event_id` header starts with
//! a prefix (every partition read to its end), how many distinct ids they
//! carry, and how many copies of an id
//! differ from its first (a duplicate must be an identical copy): the checks
//! of tests/bench/mirror.sh and mirror_restart.sh (Python is too slow for a
//! million).
//!
//! `cargo run --release -p inkstream-tests --example count_topics -- BROKERS PREFIX EXPECTED`

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, prefix, expected) = (&args[1], &args[2], args[3].parse::<usize>()?);
    let consumer: StreamConsumer = inkstream_tests::checking_consumer(brokers, "count").create()?;
    let topics: Vec<String> = schemas::Category::ALL
        .iter()
        .map(|c| connectors::kafka::events_topic(*c))
        .collect();
    // Every partition is read to the end it had when the count started (the
    // mirror has drained by then), so late duplicates are counted too.
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.contains(&t.name().to_owned()))
    {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(t.name(), p.id(), Duration::from_secs(30))?;
            if high > 0 {
                ends.insert((t.name().to_owned(), p.id()), high);
            }
        }
    }
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    // id → hash of the first copy's value.
    let mut ids: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut differing = 0u64;
    let mut records = 0u64;
    let mut decoded = 0u64;
    let start = Instant::now();
    let mut idle = Instant::now();
    while !ends.is_empty() && idle.elapsed() < Duration::from_secs(20) {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        idle = Instant::now();
        let place = (m.topic().to_owned(), m.partition());
        if ends.get(&place).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(&place);
        }
        let Some(id) = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "event_id").and_then(|h| h.value))
        else {
            continue;
        };
        if !id.starts_with(prefix.as_bytes()) {
            continue;
        }
        records += 1;
        if schemas::confluent::decode(m.payload().unwrap_or_default()).is_ok() {
            decoded += 1;
        }
        let value = schemas::stable_hash(m.payload().unwrap_or_default());
        if *ids.entry(id.to_vec()).or_insert(value) != value {
            differing += 1;
        }
    }
    println!(
        "{records} records ({decoded} decoded), {} distinct event ids (expected {expected}), \
         {differing} differing copies, in {:.1} s",
        ids.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
