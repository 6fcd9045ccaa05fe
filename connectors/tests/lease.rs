//! The dataflow lease against a real Redis: unique holders per process,
//! and early reclaim of an instance's own dead lease.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::lease::Lease;
use inkstream_tests::{redis_url, unique};
use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::sync::watch;

const TTL: Duration = Duration::from_secs(9);

async fn conn() -> ConnectionManager {
    let client = redis::Client::open(redis_url()).unwrap();
    ConnectionManager::new(client).await.unwrap()
}

/// Puts `holder` on lease `name` with `ttl_ms` left, as a holder that
/// renewed `TTL − ttl_ms` ago and then died would leave it.
async fn dead_holder(
    c: &mut ConnectionManager,
    prefix: &str,
    name: &str,
    holder: &str,
    ttl_ms: u64,
) {
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:lease:{name}"))
        .arg(holder)
        .arg("PX")
        .arg(ttl_ms)
        .query_async(c)
        .await
        .unwrap();
}

/// Tries to take the lease for up to 600 ms (`TTL / 3` is 3 s: no
/// renewal period ends meanwhile).
async fn try_take(prefix: &str, name: &str, holder: &str) -> Option<Lease> {
    let (_stop_tx, stop) = watch::channel(false);
    tokio::time::timeout(
        Duration::from_millis(600),
        Lease::acquire(conn().await, prefix, name, holder, TTL, stop),
    )
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn a_live_holder_keeps_the_lease_against_a_process_with_the_same_host_and_port() {
    let prefix = unique("lease");
    let (_stop_tx, stop) = watch::channel(false);
    let first = Lease::acquire(
        conn().await,
        &prefix,
        "dataflow",
        "host-a:8080/1-aaaa",
        TTL,
        stop,
    )
    .await
    .unwrap();
    // Another process on a host with the same name and port: not the holder.
    assert!(
        try_take(&prefix, "dataflow", "host-a:8080/2-bbbb")
            .await
            .is_none(),
        "two processes with one hostname both held the lease"
    );
    assert!(!*first.lost().borrow());
    first.release().await;
    assert!(
        try_take(&prefix, "dataflow", "host-a:8080/2-bbbb")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_restarted_instance_reclaims_its_own_dead_lease_after_two_thirds_of_the_ttl() {
    let prefix = unique("lease");
    let mut c = conn().await;
    let ttl = TTL.as_millis() as u64;
    // Renewed a moment ago: the holder may be alive; nobody takes it.
    dead_holder(&mut c, &prefix, "a", "host-a:8080/1-dead", ttl - 100).await;
    assert!(try_take(&prefix, "a", "host-a:8080/2-new").await.is_none());
    // Unrenewed for two thirds of the TTL: a live holder would have given it
    // up; the same instance, restarted, takes it back...
    dead_holder(&mut c, &prefix, "b", "host-a:8080/1-dead", ttl / 3 - 100).await;
    assert!(
        try_take(&prefix, "b", "host-a:8080/2-new").await.is_some(),
        "the restarted instance did not reclaim its own dead lease"
    );
    // ...but another instance waits for the TTL.
    dead_holder(&mut c, &prefix, "c", "host-a:8080/1-dead", ttl / 3 - 100).await;
    assert!(
        try_take(&prefix, "c", "host-b:8080/3-other")
            .await
            .is_none()
    );
}
