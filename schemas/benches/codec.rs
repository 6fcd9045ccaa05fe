//! Codec throughput: JSON decode + validate, and Avro encode, per keystroke
//! event. Prints figures; run with `cargo bench -p inkstream-schemas --bench codec`.

use inkstream_schemas::{AvroSchemas, Limits, decode_event};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let lines: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                r#"{{"id":"e-{i:08}","type":"writing.keystroke","ts":{},"user_id":"u{:05}","project_id":"p00007","document_id":"d00007-1","data":{{"keystrokes":{},"words":{},"chars":{}}}}}"#,
                1_767_603_600_000i64 + i as i64 * 250,
                i % 500,
                10 + i % 7,
                i % 4,
                11 + i % 9
            )
        })
        .collect();
    let limits = Limits::default();
    let schemas = AvroSchemas::shared().expect("embedded schemas");

    let start = Instant::now();
    for i in 0..n {
        black_box(decode_event(lines[i % lines.len()].as_bytes(), &limits).expect("valid"));
    }
    let decode = start.elapsed();
    if std::env::var("ONLY_JSON").is_ok() {
        println!(
            "json decode + validate: {:.0} ns/event",
            decode.as_nanos() as f64 / n as f64
        );
        return;
    }

    let events: Vec<_> = lines
        .iter()
        .map(|l| decode_event(l.as_bytes(), &limits).expect("valid"))
        .collect();
    let start = Instant::now();
    let mut bytes = 0usize;
    for i in 0..n {
        bytes += black_box(schemas.encode(&events[i % events.len()]).expect("encodes")).len();
    }
    let encode = start.elapsed();

    let start = Instant::now();
    let mut buf = Vec::with_capacity(256);
    for i in 0..n {
        buf.clear();
        inkstream_schemas::binary::encode_into(&events[i % events.len()], &mut buf)
            .expect("encodes");
        black_box(&buf);
    }
    let fast_encode = start.elapsed();
    let encoded: Vec<Vec<u8>> = events
        .iter()
        .map(|e| schemas.encode(e).expect("encodes"))
        .collect();
    let start = Instant::now();
    for i in 0..n {
        black_box(inkstream_schemas::binary::decode(&encoded[i % encoded.len()]).expect("decodes"));
    }
    let fast_decode = start.elapsed();
    let start = Instant::now();
    for i in 0..n {
        black_box(
            schemas
                .decode(&encoded[i % encoded.len()])
                .expect("decodes"),
        );
    }
    let avro_decode = start.elapsed();

    let per_sec = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "events: {n} keystroke events, one thread (apache-avro = generic library path; binary = inkstream's codec used by the log and Kafka)"
    );
    println!(
        "json decode + validate: {:>10.0} events/s ({:.0} ns/event)",
        per_sec(decode),
        decode.as_nanos() as f64 / n as f64
    );
    println!(
        "avro encode (apache):   {:>10.0} events/s ({:.0} ns/event, {:.1} bytes/event)",
        per_sec(encode),
        encode.as_nanos() as f64 / n as f64,
        bytes as f64 / n as f64
    );
    println!(
        "avro decode (apache):   {:>10.0} events/s ({:.0} ns/event)",
        per_sec(avro_decode),
        avro_decode.as_nanos() as f64 / n as f64
    );
    println!(
        "avro encode (binary):   {:>10.0} events/s ({:.0} ns/event)",
        per_sec(fast_encode),
        fast_encode.as_nanos() as f64 / n as f64
    );
    println!(
        "avro decode (binary):   {:>10.0} events/s ({:.0} ns/event)",
        per_sec(fast_decode),
        fast_decode.as_nanos() as f64 / n as f64
    );
    // A request body of the 1,000 events, as NDJSON (POST /v1/events) and as
    // a JSON array (an array body, a /ws/ingest frame), decoded whole.
    let ndjson = lines.join("\n");
    let array = format!("[{}]", lines.join(","));
    let rounds = (n / lines.len()).max(1);
    let batch = |body: &str, is_ndjson: bool| {
        let start = Instant::now();
        for _ in 0..rounds {
            black_box(
                inkstream_schemas::decode_batch(body.as_bytes(), is_ndjson, &limits)
                    .expect("decodes"),
            );
        }
        start.elapsed().as_nanos() as f64 / (rounds * lines.len()) as f64
    };
    println!(
        "batch of 1,000, NDJSON / JSON array: {:.0} / {:.0} ns/event",
        batch(&ndjson, true),
        batch(&array, false)
    );
    let both = decode + fast_encode;
    println!(
        "decode + validate + encode: {:>6.0} events/s",
        per_sec(both)
    );
}
