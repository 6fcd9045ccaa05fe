//! The chaos run at full size (`tests/bench/chaos.sh`; docs/BENCHMARKS.md):
//! prints acknowledged ids, ids in the log and on the topics, derived
//! events against an undisturbed run, dead letters and the recovery time of
//! each fault; exits 1 when anything acknowledged was lost, duplicated in
//! the log, or derived differently. Settings from the environment: EVENTS
//! (1000000), USERS (1000), SEED (42), BATCH (1000), DOWN (10, seconds),
//! DEADLINE (600, seconds per condition).

use inkstream_tests::chaos;
use std::time::Duration;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let report = chaos::run(&chaos::Config {
        events: env("EVENTS", 1_000_000),
        users: env("USERS", 1000),
        seed: env("SEED", 42),
        batch: env("BATCH", 1000),
        down: Duration::from_secs(env("DOWN", 10)),
        deadline: Duration::from_secs(env("DEADLINE", 600)),
        verbose: true,
    })
    .await;
    report.print();
    let problems = report.problems();
    if !problems.is_empty() {
        for p in problems {
            println!("PROBLEM: {p}");
        }
        std::process::exit(1);
    }
}
