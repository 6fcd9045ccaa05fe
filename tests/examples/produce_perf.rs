//! The broker's own producer ceiling for tests/bench/ratios.sh and
//! tests/bench/mirror.sh: N records of the mirror's size (~80 bytes) with the
//! mirror's producer (`connectors::kafka::mirror::producer`: idempotent,
//! acks=all, the backlog tuning `ProducerTuning::BULK` unless `live` is
//! given), sent as fast as the producer's queue takes them, then every
//! delivery report awaited, counted per page as the mirror counts them
//! (`connectors::kafka::mirror::Reports`). (The same client, settings and
//! delivery reports as the mirror draining a backlog, so the ratio compares
//! like with like.)
//!
//! `cargo run --release -p inkstream-tests --example produce_perf -- BROKERS N [bulk|live]`

use connectors::kafka::mirror::{ProducerTuning, producer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::{Duration, Instant};

// The allocator of the `inkstream` binary (which librdkafka uses too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, n) = (&args[1], args[2].parse::<usize>()?);
    let (name, tuning) = match args.get(3).map(String::as_str) {
        None | Some("bulk") => ("bulk", ProducerTuning::BULK),
        Some("live") => ("live", ProducerTuning::LIVE),
        Some(other) => anyhow::bail!("unknown tuning {other:?} (bulk or live)"),
    };
    let topic = format!("bench.produce.{}", std::process::id());
    connectors::kafka::ensure_topics(
        brokers,
        std::slice::from_ref(&topic),
        connectors::kafka::NewTopics::default(),
    )
    .await?;
    let producer = producer(brokers, tuning)?;
    let value = vec![7u8; 80];
    let start = Instant::now();
    let reports = producer.context();
    let page = reports.open();
    for i in 0..n {
        let key = format!("u{}", i % 10_000);
        let opaque = page.expect(i as u32);
        let mut record = BaseRecord::with_opaque_to(&topic, opaque)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    reports.seal(&page);
    if let Some((place, e)) = page.wait().await.into_iter().next() {
        anyhow::bail!("record {place} was not delivered: {e}");
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "broker producer: {n} records in {s:.2} s = {:.0} records/s (the mirror's producer, {name} tuning: idempotent, acks=all, linger {} ms, batch.size {} B; all in flight)",
        n as f64 / s,
        tuning.linger.as_millis(),
        tuning.batch_bytes
    );
    Ok(())
}
