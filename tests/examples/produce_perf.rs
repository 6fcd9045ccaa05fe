//! The broker's own producer ceiling for tests/bench/mirror.sh: N records of
//! the mirror's size (~80 bytes) with the mirror's producer settings
//! (idempotent, acks=all, linger 5 ms), as fast as delivery reports allow.
//! (The same client and settings as the mirror, so the ratio compares like with like.)
//!
//! `cargo run --release -p inkstream-tests --example produce_perf -- BROKERS N`

use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, n) = (&args[1], args[2].parse::<usize>()?);
    let topic = format!("bench.produce.{}", std::process::id());
    connectors::kafka::ensure_topics(brokers, std::slice::from_ref(&topic), 8).await?;
    let producer = connectors::kafka::idempotent_producer(brokers)?;
    let value = vec![7u8; 80];
    let start = Instant::now();
    let mut in_flight = Vec::with_capacity(2000);
    for i in 0..n {
        let key = format!("u{}", i % 10_000);
        let mut record = FutureRecord::to(&topic).key(&key).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    in_flight.push(f);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        if in_flight.len() >= 2000 {
            for f in in_flight.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in in_flight.drain(..) {
        f.await?.map_err(|(e, _)| e)?;
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "broker producer: {n} records in {s:.2} s = {:.0} records/s (idempotent, acks=all, windows of 2,000 like the mirror)",
        n as f64 / s
    );
    Ok(())
}
