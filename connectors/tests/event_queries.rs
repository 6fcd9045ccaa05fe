//! `EventLog::range` and `EventLog::info` on both backends: the same pages
//! (merged in id order, resumed exactly after each shard's last id) and the
//! same info shape, from the embedded log and a real redis-server.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::EventLog;
use inkstream_connectors::event_log::EmbeddedLog;
use inkstream_connectors::event_log::query::RangeQuery;
use inkstream_connectors::event_log::redis::{RedisLog, RedisLogConfig};
use inkstream_tests::{redis_url, unique};
use schemas::{Category, Event};
use std::time::Duration;

fn ev(id: String, user: String) -> Event {
    Event {
        id: id.into(),
        ts: 1_767_603_600_000,
        user_id: Some(user.into()),
        project_id: Some("p1".into()),
        document_id: Some("d1".into()),
        data: schemas::Payload::example("writing.keystroke").unwrap(),
    }
}

/// Appends 3 batches of 30 events (15 users) 2 ms apart, pages through them
/// 7 at a time, and checks order, exactness and the info figures (which
/// count entries, as XINFO does: a Redis entry holds up to 16 events of one
/// append). Returns how many entries hold the 90 events.
async fn pages_are_exact_and_ordered(log: &EventLog, shards: usize) -> u64 {
    log.ensure_group("g").await.unwrap();
    for b in 0..3 {
        let events: Vec<Event> = (0..30)
            .map(|i| ev(format!("b{b}-{i}"), format!("u{}", i % 15)))
            .collect();
        log.append("app", &events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut q = RangeQuery {
        category: Category::Writing,
        from_ms: None,
        to_ms: None,
        after: Vec::new(),
        limit: 7,
    };
    let mut ids = Vec::new();
    let mut entries = std::collections::HashSet::new();
    let mut last: Option<(u64, u64)> = None;
    loop {
        let page = log.range(&q).await.unwrap();
        assert!(page.entries.len() <= 7);
        for e in &page.entries {
            entries.insert(e.entry.clone());
            let (ms, seq) = e.entry.id.split_once('-').unwrap();
            let id = (ms.parse().unwrap(), seq.parse().unwrap());
            assert!(last.is_none_or(|l| l <= id), "ids in order");
            last = Some(id);
            ids.push(e.caller_event().unwrap().id.clone());
        }
        match page.next {
            Some(after) => {
                assert_eq!(after.len(), shards);
                q.after = after;
            }
            None => break,
        }
    }
    assert_eq!(ids.len(), 90);
    let batches: Vec<char> = ids.iter().map(|id| id.as_bytes()[1] as char).collect();
    assert!(batches.windows(2).all(|w| w[0] <= w[1]), "{batches:?}");
    let mut unique_ids = ids.clone();
    unique_ids.sort();
    unique_ids.dedup();
    assert_eq!(unique_ids.len(), 90);

    // Deliver some to the group: pending and lag show in the info.
    let read = log
        .read_new("g", "c1", 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(!read.is_empty());
    let read_entries = read
        .iter()
        .map(|e| &e.entry)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let stored = entries.len() as u64;
    let info = log.info(Category::Writing).await.unwrap();
    assert_eq!(info.shards.len(), shards);
    assert_eq!(info.length, stored);
    let g = info.groups.iter().find(|g| g.name == "g").unwrap();
    assert_eq!(g.pending, read_entries);
    assert_eq!(g.consumers, 1);
    assert_eq!(g.lag, Some(stored - read_entries));
    assert!(info.first_id.is_some() && info.last_id.is_some());
    let empty = log.info(Category::System).await.unwrap();
    assert_eq!(empty.length, 0);
    stored
}

#[tokio::test]
async fn embedded_log_pages_and_info() {
    let log = EventLog::Embedded(EmbeddedLog::default());
    assert_eq!(
        pages_are_exact_and_ordered(&log, 1).await,
        90,
        "an entry per event"
    );
}

#[tokio::test]
async fn redis_log_pages_and_info() {
    let mut config = RedisLogConfig::new(redis_url());
    config.prefix = unique("evq");
    let log = EventLog::Redis(RedisLog::connect(&config).await.unwrap());
    // 3 appends over at most 8 shards, at most 16 events an entry: packed.
    let entries = pages_are_exact_and_ordered(&log, 8).await;
    assert!(
        (6..=24).contains(&entries),
        "{entries} entries for 90 events"
    );
}

/// Every page of `q` until the end: the event ids, checking id order.
async fn page_all(log: &EventLog, mut q: RangeQuery) -> Vec<String> {
    let mut ids = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    loop {
        let page = log.range(&q).await.unwrap();
        assert!(page.entries.len() <= q.limit);
        for e in &page.entries {
            let (ms, seq) = e.entry.id.split_once('-').unwrap();
            let id = (ms.parse().unwrap(), seq.parse().unwrap());
            assert!(last.is_none_or(|l| l <= id), "ids in order");
            last = Some(id);
            ids.push(e.caller_event().unwrap().id.to_string());
        }
        match page.next {
            Some(after) => q.after = after,
            None => return ids,
        }
    }
}

#[tokio::test]
async fn redis_pages_of_a_hot_shard_read_it_in_chunks_and_stay_exact() {
    let mut config = RedisLogConfig::new(redis_url());
    config.prefix = unique("evq-hot");
    let log = EventLog::Redis(RedisLog::connect(&config).await.unwrap());
    // 300 events of one user (one shard) with a few of other users between.
    for b in 0..10 {
        let mut events: Vec<Event> = (0..30)
            .map(|i| ev(format!("hot-{b:02}-{i:02}"), "hot".into()))
            .collect();
        events.push(ev(format!("cold-{b:02}"), format!("cold{b}")));
        log.append("app", &events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for limit in [1, 7, 50, 1000] {
        let ids = page_all(
            &log,
            RangeQuery {
                category: Category::Writing,
                from_ms: None,
                to_ms: None,
                after: Vec::new(),
                limit,
            },
        )
        .await;
        assert_eq!(ids.len(), 310, "limit {limit}");
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 310, "limit {limit}: no repeats");
        // The hot user's events come in append order.
        let hot: Vec<&String> = ids.iter().filter(|i| i.starts_with("hot")).collect();
        assert!(hot.windows(2).all(|w| w[0] < w[1]), "limit {limit}");
    }
}
