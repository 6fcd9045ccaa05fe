//! The Redis Streams log against a real redis-server (started by tests/run.sh).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::EventLog;
use inkstream_connectors::event_log::redis::{RedisLog, RedisLogConfig};
use inkstream_tests::{redis_url, unique};
use schemas::Event;
use std::time::Duration;

fn ev(id: &str, ty: &str, user: &str) -> Event {
    Event {
        id: id.into(),
        ts: 1_767_603_600_000,
        user_id: Some(user.into()),
        project_id: Some("p1".into()),
        document_id: Some("d1".into()),
        data: schemas::Payload::example(ty).unwrap(),
    }
}

/// The entries of `stream`, as Redis counts them.
async fn xlen(stream: &str) -> u64 {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn config(prefix: &str) -> RedisLogConfig {
    let mut config = RedisLogConfig::new(redis_url());
    config.prefix = prefix.into();
    config
}

async fn open_with(config: &RedisLogConfig) -> EventLog {
    EventLog::Redis(RedisLog::connect(config).await.expect("connect to redis"))
}

async fn open(prefix: &str) -> EventLog {
    open_with(&config(prefix)).await
}

#[tokio::test]
async fn appended_events_are_read_by_a_group_acked_and_not_redelivered() {
    let prefix = unique("log");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let refs = log
        .append(
            "app",
            &[
                ev("a", "writing.keystroke", "u1"),
                ev("b", "collaboration.cursor_moved", "u1"),
                ev("c", "writing.keystroke", "u1"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(refs.len(), 3);
    assert!(
        refs[0]
            .entry
            .stream
            .starts_with(&format!("{prefix}:events:writing:"))
    );
    assert!(
        refs[1]
            .entry
            .stream
            .starts_with(&format!("{prefix}:events:collaboration:"))
    );
    // Same partition key (user) → same shard stream.
    assert_eq!(refs[0].entry.stream, refs[2].entry.stream);
    assert!(refs.iter().all(|r| !r.duplicate));

    let got = log
        .read_new("g", "c1", 100, Duration::from_millis(100))
        .await
        .unwrap();
    let mut ids: Vec<String> = got
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    // Per-stream order holds: a before c in the writing stream.
    let writing: Vec<&str> = got
        .iter()
        .filter(|e| e.entry.stream.contains(":writing:"))
        .map(|e| e.event.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(writing, ["a", "c"]);
    assert_eq!(
        &**got[0].event.as_ref().unwrap(),
        &ev("a", "writing.keystroke", "u1")
    );

    // a and c went into one entry (one append, one stream): acknowledging
    // it leaves b pending.
    let entry_of = |id: &str| {
        got.iter()
            .find(|e| e.event.as_ref().unwrap().id == id)
            .unwrap()
            .entry
            .clone()
    };
    assert_eq!(entry_of("a"), entry_of("c"));
    log.ack("g", &[entry_of("a")]).await.unwrap();
    assert!(
        log.read_new("g", "c1", 100, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    let pending = log.read_pending("g", "c1", 100).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event.as_ref().unwrap().id, "b");
}

#[tokio::test]
async fn pending_entries_survive_a_restart_of_the_consumer() {
    let prefix = unique("restart");
    {
        let log = open(&prefix).await;
        log.ensure_group("g").await.unwrap();
        log.append("app", &[ev("a", "writing.keystroke", "u1")])
            .await
            .unwrap();
        let got = log
            .read_new("g", "c1", 10, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        // dropped without ack: a crash between read and processing
    }
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let pending = log.read_pending("g", "c1", 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event.as_ref().unwrap().id, "a");
}

#[tokio::test]
async fn blocking_read_returns_promptly_when_nothing_arrives() {
    let log = open(&unique("block")).await;
    log.ensure_group("g").await.unwrap();
    let start = std::time::Instant::now();
    let got = log
        .read_new("g", "c1", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_undecodable_entry_is_returned_as_an_error_not_a_failed_read() {
    let prefix = unique("corrupt");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:events:system:0"))
        .arg("*")
        .arg("event")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    log.append("app", &[ev("ok", "writing.keystroke", "u1")])
        .await
        .unwrap();
    let got = log
        .read_new("g", "c1", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().any(|e| {
        e.event
            .as_ref()
            .is_err_and(|r| r.0.contains("does not decode"))
    }));
    assert!(
        got.iter()
            .any(|e| e.event.as_ref().is_ok_and(|e| e.id == "ok"))
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_as_unavailable() {
    let mut config = RedisLogConfig::new("redis://127.0.0.1:1/");
    config.response_timeout = Duration::from_millis(300);
    match RedisLog::connect(&config).await {
        Err(inkstream_connectors::LogError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

#[tokio::test]
async fn the_same_id_from_the_same_app_is_stored_once_across_restarts() {
    let prefix = unique("dedup");
    let first = open(&prefix).await;
    let a = first
        .append(
            "app",
            &[
                ev("x", "writing.keystroke", "u1"),
                ev("x", "writing.keystroke", "u1"),
            ],
        )
        .await
        .unwrap();
    assert!(!a[0].duplicate);
    assert!(a[1].duplicate, "a duplicate within one batch");
    drop(first);
    // A new connection (as after a restart of inkstream) still knows the id.
    let second = open(&prefix).await;
    let b = second
        .append("app", &[ev("x", "writing.keystroke", "u1")])
        .await
        .unwrap();
    assert!(b[0].duplicate);
    // Another app's ids are its own.
    let c = second
        .append("other", &[ev("x", "writing.keystroke", "u1")])
        .await
        .unwrap();
    assert!(!c[0].duplicate);
    let len = xlen(&a[0].entry.stream).await;
    assert_eq!(len, 2, "one copy for app, one for other");
}

#[tokio::test]
async fn a_namespace_holding_the_key_separator_cannot_reach_another_namespaces_ids() {
    // With ids keyed `<ns>:<id>`, app "a:b" sending "c" and app "a" sending
    // "b:c" would have been one key: the second event dropped as a duplicate.
    let prefix = unique("sep");
    let log = open(&prefix).await;
    let first = log
        .append("a:b", &[ev("c", "writing.keystroke", "u1")])
        .await
        .unwrap();
    let second = log
        .append("a", &[ev("b:c", "writing.keystroke", "u1")])
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert!(
        !second[0].duplicate,
        "another namespace's event is not a duplicate"
    );
    // And a batch mixing new ids, repeats within the batch and ids stored
    // before answers each one right, in order.
    let third = log
        .append(
            "a",
            &[
                ev("b:c", "writing.keystroke", "u1"),
                ev("n1", "writing.keystroke", "u2"),
                ev("n1", "writing.keystroke", "u2"),
                ev("n2", "collaboration.cursor_moved", "u3"),
            ],
        )
        .await
        .unwrap();
    let dup: Vec<bool> = third.iter().map(|a| a.duplicate).collect();
    assert_eq!(dup, [true, false, true, false]);
}

#[tokio::test]
async fn ids_stored_by_the_previous_layout_are_still_duplicates_for_one_window() {
    // A log written by the version before the dedup buckets: an entry in a
    // stream and one key per id (`<prefix>:dedup:<ns>:<id>`).
    let prefix = unique("legacy");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:events:writing:0"))
        .arg("*")
        .arg("id")
        .arg("old")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:dedup:app:old"))
        .arg("1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let log = open(&prefix).await;
    let a = log
        .append(
            "app",
            &[
                ev("old", "writing.keystroke", "u1"),
                ev("new", "writing.keystroke", "u1"),
            ],
        )
        .await
        .unwrap();
    assert!(a[0].duplicate, "the id the previous version stored");
    assert!(!a[1].duplicate);
    // On a new log there is nothing of the previous layout to look up.
    let fresh = unique("fresh");
    let _: () = redis::cmd("SET")
        .arg(format!("{fresh}:dedup:app:old"))
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let b = open(&fresh)
        .await
        .append("app", &[ev("old", "writing.keystroke", "u1")])
        .await
        .unwrap();
    assert!(!b[0].duplicate, "a new log does not read the old keys");
}

#[tokio::test]
async fn ids_in_the_previous_set_and_in_the_hash_buckets_of_the_layout_before_are_duplicates() {
    // The layout of 2026-12-03 to 2026-12-06: a hash per namespace and
    // bucket (`<prefix>:idem:<len>:<ns>:<bucket>`, id → 1), in the current
    // bucket and in the one before; bucket = Redis time ÷ window. A window
    // as long as Redis's clock now puts every append of this test in
    // bucket 1 (for decades), with bucket 0 before it: no bucket boundary
    // can fall between writing the buckets and appending.
    let prefix = unique("hashes");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let window = Duration::from_millis(secs * 1000 + micros / 1000);
    let bucket = 1;
    for (key, id) in [
        (format!("{prefix}:idem:3:app:{bucket}"), "in-current"),
        (format!("{prefix}:idem:3:app:{}", bucket - 1), "in-previous"),
        // Another namespace's hash is not this one's.
        (format!("{prefix}:idem:4:app2:{bucket}"), "theirs"),
    ] {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg(id)
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The previous bucket in this layout (a set) is looked up too.
    let _: () = redis::cmd("SADD")
        .arg(format!("{prefix}:ids:3:app:{}", bucket - 1))
        .arg("in-previous-set")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut config = config(&prefix);
    config.dedup_window = window;
    let log = open_with(&config).await;
    let batch = [
        ev("in-current", "writing.keystroke", "u1"),
        ev("in-previous", "writing.keystroke", "u1"),
        ev("theirs", "writing.keystroke", "u1"),
        ev("new", "writing.keystroke", "u1"),
        ev("in-previous-set", "writing.keystroke", "u1"),
    ];
    let duplicates = async || -> Vec<bool> {
        let appended = log.append("app", &batch).await.unwrap();
        appended.iter().map(|a| a.duplicate).collect()
    };
    assert_eq!(duplicates().await, [true, true, false, false, true]);
    // What this version stored is remembered in its own sets.
    let again = duplicates().await;
    assert_eq!(again, [true; 5]);
    let members: u64 = redis::cmd("SCARD")
        .arg(format!("{prefix}:ids:3:app:{bucket}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, 2, "the two new ids, in this bucket's set");
}

#[tokio::test]
async fn trimming_never_removes_what_a_required_group_still_needs() {
    let prefix = unique("trim");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let events: Vec<Event> = (0..10)
        .map(|i| ev(&format!("t{i}"), "writing.keystroke", "u1"))
        .collect();
    // One append each: an append packs its events of one stream into one
    // entry, and trimming works by entry.
    let mut stored = Vec::new();
    for e in &events {
        stored.extend(log.append("app", std::slice::from_ref(e)).await.unwrap());
    }
    let stream = stored[0].entry.stream.clone();
    let far_future = u64::MAX / 2;
    // Nothing delivered yet: nothing may go.
    assert_eq!(log.trim(&["g".into()], far_future).await.unwrap(), 0);
    let got = log
        .read_new("g", "c", 4, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    // Delivered but not acknowledged: still nothing.
    assert_eq!(log.trim(&["g".into()], far_future).await.unwrap(), 0);
    log.ack("g", &[got[0].entry.clone(), got[1].entry.clone()])
        .await
        .unwrap();
    // The first two are acknowledged: exactly those go.
    assert_eq!(log.trim(&["g".into()], far_future).await.unwrap(), 2);
    // A required group that does not exist yet protects everything.
    assert_eq!(
        log.trim(&["g".into(), "mirror".into()], far_future)
            .await
            .unwrap(),
        0
    );
    // The retention floor protects recent entries whatever the groups did.
    log.ack("g", &[got[2].entry.clone(), got[3].entry.clone()])
        .await
        .unwrap();
    assert_eq!(log.trim(&["g".into()], 0).await.unwrap(), 0);
    let len = xlen(&stream).await;
    assert_eq!(len, 8);
}

#[tokio::test]
async fn entries_left_pending_by_a_stopped_consumer_are_claimed_by_another() {
    let prefix = unique("claim");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    log.append("app", &[ev("a", "writing.keystroke", "u1")])
        .await
        .unwrap();
    let got = log
        .read_new("g", "dead", 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    // Too fresh to claim, and a consumer never claims its own entries.
    assert!(
        log.claim_idle("g", "alive", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        log.claim_idle("g", "dead", Duration::from_millis(50), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = log
        .claim_idle("g", "alive", Duration::from_millis(50), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event.as_ref().unwrap().id, "a");
    // Now it is pending with the new owner.
    assert_eq!(log.read_pending("g", "alive", 10).await.unwrap().len(), 1);
    assert!(log.read_pending("g", "dead", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_pending_backlog_is_read_back_page_by_page() {
    let prefix = unique("pages");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let events: Vec<Event> = (0..25)
        .map(|i| {
            ev(
                &format!("p{i}"),
                "writing.keystroke",
                &format!("u{}", i % 3),
            )
        })
        .collect();
    log.append("app", &events).await.unwrap();
    assert_eq!(
        log.read_new("g", "c", 100, Duration::from_millis(100))
            .await
            .unwrap()
            .len(),
        25
    );
    // As after a crash: everything pending, read back in pages of 10.
    let mut cursor = std::collections::HashMap::new();
    let mut seen = Vec::new();
    loop {
        let page = log.read_pending_after("g", "c", 10, &cursor).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10 * 8, "one page per stream at most");
        for e in page {
            cursor.insert(e.entry.stream.clone(), e.entry.id.to_string());
            seen.push(e.event.unwrap().id.clone());
        }
    }
    seen.sort();
    let mut expected: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected, "every pending entry once, none twice");
}

/// The 1 M chaos run: after Redis reloaded its AOF, XINFO GROUPS reported
/// `lag` 10,000 on streams the mirror group had read to the end (nothing
/// pending), so `inkstream_mirror_lag_events` never went back to 0. The
/// group's `entries-read` counter is set wrong here on purpose (XGROUP SETID
/// … ENTRIESREAD), then an entry is deleted (Redis can no longer tell the
/// lag: nil).
#[tokio::test]
async fn a_groups_lag_is_what_is_unread_even_when_redis_miscounts_it() {
    let prefix = unique("lag");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let events: Vec<Event> = (0..6)
        .map(|i| ev(&format!("e{i}"), "writing.keystroke", "u1"))
        .collect();
    // One append each: an entry each (an append packs a stream's events).
    let mut refs = Vec::new();
    for e in &events {
        refs.extend(log.append("app", std::slice::from_ref(e)).await.unwrap());
    }
    let stream = refs[0].entry.stream.to_string();
    let got = log
        .read_new("g", "c1", 100, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 6, "all six read");
    let entries: Vec<_> = got.iter().map(|e| e.entry.clone()).collect();
    log.ack("g", &entries).await.unwrap();
    assert_eq!(
        log.group_lag("g").await.unwrap(),
        (0, None),
        "read and acknowledged"
    );

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let last = refs[5].entry.id.clone();
    // Read to the last entry, but Redis believes 2 of 6 were read: lag 4.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg("g")
        .arg(&*last)
        .arg("ENTRIESREAD")
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    let info: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        info[0].get("lag"),
        Some(&redis::Value::Int(4)),
        "Redis miscounts: {info:?}"
    );
    assert_eq!(
        log.group_lag("g").await.unwrap(),
        (0, None),
        "nothing follows the last delivered id: lag 0 whatever Redis counts"
    );

    // Three unread entries, one of them deleted before it was read: Redis
    // cannot tell the lag (nil); the unread ones are counted.
    let more: Vec<Event> = (6..9)
        .map(|i| ev(&format!("e{i}"), "writing.keystroke", "u1"))
        .collect();
    let mut appended = Vec::new();
    for e in &more {
        appended.extend(log.append("app", std::slice::from_ref(e)).await.unwrap());
    }
    let more = appended;
    let _: u64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&*more[1].entry.id)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (lag, oldest) = log.group_lag("g").await.unwrap();
    assert_eq!(lag, 2, "the two unread entries left");
    let first_ms: u64 = more[0].entry.id.split('-').next().unwrap().parse().unwrap();
    assert_eq!(oldest, Some(first_ms), "the oldest unread entry's time");
}

/// What group `g`'s consumer `c` reads next, and the events' ids.
async fn read_new_ids(
    log: &EventLog,
) -> (Vec<inkstream_connectors::event_log::LogEntry>, Vec<String>) {
    let got = log
        .read_new("g", "c", 100, Duration::from_millis(100))
        .await
        .unwrap();
    let ids = got
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.to_string())
        .collect();
    (got, ids)
}

/// An append packs its new events of one stream into entries of up to
/// `PACK_EVENTS`, in order: 40 events of one user are 3 entries (16, 16,
/// 8), read back as 40 events with their places, acknowledged by entry. A
/// duplicate in the batch takes no place. Entries of one event written
/// before packing (`id`, `event`, `ns`) still read, and a packed entry
/// with a frame that does not decode gives that event as undecodable and
/// the others as they are.
#[tokio::test]
async fn an_append_packs_a_streams_events_into_entries_read_back_one_event_each() {
    use inkstream_connectors::event_log::{PACK_EVENTS, Part};
    assert_eq!(PACK_EVENTS, 16);
    let prefix = unique("pack");
    let log = open(&prefix).await;
    log.ensure_group("g").await.unwrap();
    let mut events: Vec<Event> = (0..40)
        .map(|i| ev(&format!("p{i:02}"), "writing.keystroke", "u1"))
        .collect();
    events.insert(20, ev("p03", "writing.keystroke", "u1"));
    let stored = log.append("app", &events).await.unwrap();
    assert!(stored[20].duplicate, "a copy within the batch");
    let entries: Vec<&str> = stored
        .iter()
        .filter(|a| !a.duplicate)
        .map(|a| &*a.entry.id)
        .collect();
    let mut distinct = entries.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{entries:?}");
    assert!(entries[..16].iter().all(|e| *e == entries[0]));
    assert!(entries[16..32].iter().all(|e| *e == entries[16]));
    assert!(entries[32..].iter().all(|e| *e == entries[32]));
    let stream = stored[0].entry.stream.clone();
    let len = xlen(&stream).await;
    assert_eq!(len, 3);

    let (got, ids) = read_new_ids(&log).await;
    let want: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
    assert_eq!(ids, want, "every event once, in append order");
    let parts: Vec<Part> = got.iter().map(|e| e.part.unwrap()).collect();
    assert_eq!(parts[0], Part { index: 0, of: 16 });
    assert_eq!(parts[15], Part { index: 15, of: 16 });
    assert_eq!(parts[39], Part { index: 7, of: 8 });
    assert!(got.iter().all(|e| e.namespace.as_deref() == Some("app")));
    // One acknowledgement per entry, whatever the events say.
    let refs: Vec<_> = got.iter().map(|e| e.entry.clone()).collect();
    log.ack("g", &refs).await.unwrap();
    assert!(log.read_pending("g", "c", 100).await.unwrap().is_empty());

    // Ids stored before, inside a batch: the rest is packed without them.
    let mut again: Vec<Event> = (0..18)
        .map(|i| ev(&format!("q{i:02}"), "writing.keystroke", "u1"))
        .collect();
    again.insert(5, ev("p05", "writing.keystroke", "u1"));
    again.insert(12, ev("p10", "writing.keystroke", "u1"));
    let stored = log.append("app", &again).await.unwrap();
    let duplicates: Vec<usize> = (0..stored.len()).filter(|&i| stored[i].duplicate).collect();
    assert_eq!(duplicates, [5, 12]);
    let (got, ids) = read_new_ids(&log).await;
    let want: Vec<String> = (0..18).map(|i| format!("q{i:02}")).collect();
    assert_eq!(ids, want);
    assert_eq!(got[17].part, Some(Part { index: 1, of: 2 }));
    let refs: Vec<_> = got.iter().map(|e| e.entry.clone()).collect();
    log.ack("g", &refs).await.unwrap();

    // Written before packing, and a packed entry with a bad frame.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let old = schemas::binary::encode(&ev("old", "writing.keystroke", "u1")).unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&*stream)
        .arg("*")
        .arg("id")
        .arg("old")
        .arg("event")
        .arg(old)
        .arg("ns")
        .arg("app")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut blob = Vec::new();
    schemas::binary::encode_framed_into(&ev("good1", "writing.keystroke", "u1"), &mut blob)
        .unwrap();
    blob.extend_from_slice(&[6, b'b', b'a', b'd']); // a frame of 3 bytes
    schemas::binary::encode_framed_into(&ev("good2", "writing.keystroke", "u1"), &mut blob)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&*stream)
        .arg("*")
        .arg("ns")
        .arg("app")
        .arg("events")
        .arg(blob)
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = log
        .read_new("g", "c", 100, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].event.as_ref().unwrap().id, "old");
    assert_eq!(got[0].part, None);
    assert_eq!(got[1].event.as_ref().unwrap().id, "good1");
    let bad = got[2].event.as_ref().unwrap_err().to_string();
    assert!(bad.contains("does not decode"), "{bad}");
    assert_eq!(got[2].part, Some(Part { index: 1, of: 3 }));
    assert_eq!(got[3].event.as_ref().unwrap().id, "good2");

    // The same entries as the Kafka mirror reads them, as stored: each
    // event's bytes are its encoding (its head reads without the payload),
    // in the same places; the bad frame's head does not read.
    use inkstream_connectors::event_log::ForwardEntry;
    let stored = log.read_pending_forward("g", "c", 100).await.unwrap();
    assert_eq!(stored.len(), 4);
    for (s, e) in stored.iter().zip(&got) {
        let ForwardEntry::Stored(s) = s else {
            panic!("a Redis read gave a decoded entry")
        };
        assert_eq!(
            (&s.entry, s.part, s.namespace.as_deref()),
            (&e.entry, e.part, Some("app"))
        );
        let bytes = s.bytes().unwrap();
        match &e.event {
            Ok(event) => {
                assert_eq!(&schemas::binary::decode(bytes).unwrap(), &**event);
                let head = schemas::binary::decode_head(bytes).unwrap();
                assert_eq!((head.id, head.ts), (event.id.as_str(), event.ts));
            }
            Err(_) => assert!(schemas::binary::decode_head(bytes).is_err()),
        }
    }
}

/// What a 202 is worth comes from Redis itself: its append-only file and
/// fsync policy, read again after they change at run time (a private
/// redis-server, since this test reconfigures it).
#[tokio::test]
async fn the_log_reports_what_redis_promises_about_acknowledged_events() {
    use inkstream_connectors::event_log::redis::persistence::{Durability, Eviction};
    let redis = inkstream_tests::PrivateRedis::start("persistence");
    let mut config = RedisLogConfig::new(redis.url());
    config.prefix = unique("persistence");
    let log = open_with(&config).await;
    let set = |key: &'static str, value: &'static str| {
        let url = redis.url();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    };
    let now = || async { log.persistence().await.unwrap().expect("a Redis log") };

    // The private server runs as the docs advise: AOF, fsync always.
    let p = now().await;
    assert!(p.aof, "{p:?}");
    assert_eq!(p.appendfsync.as_deref(), Some("always"));
    assert_eq!(p.durability(), Durability::Fsynced);

    set("appendfsync", "everysec").await;
    assert_eq!(now().await.durability(), Durability::WithinASecond);
    set("appendfsync", "no").await;
    assert_eq!(now().await.durability(), Durability::OsDecides);
    set("appendonly", "no").await;
    let p = now().await;
    assert_eq!(p.durability(), Durability::NotLogged, "{p:?}");
    assert!(p.durability().weak());
    assert_eq!((p.appendonly_label(), p.appendfsync_label()), ("no", "no"));

    // No memory limit: nothing is evicted, whatever the policy.
    assert_eq!(p.evicts(), Eviction::Never);
    set("maxmemory-policy", "allkeys-lru").await;
    assert_eq!(now().await.evicts(), Eviction::Never);
    set("maxmemory", "1gb").await;
    let p = now().await;
    assert_eq!(p.evicts(), Eviction::AnyKey, "{p:?}");
    assert_eq!(p.eviction_label(), "allkeys-lru");
    set("maxmemory-policy", "volatile-lru").await;
    assert_eq!(now().await.evicts(), Eviction::KeysWithTtl);
    set("maxmemory-policy", "noeviction").await;
    assert_eq!(now().await.evicts(), Eviction::Never);

    // The embedded log promises nothing beyond its process.
    let embedded = EventLog::Embedded(Default::default());
    assert_eq!(embedded.persistence().await.unwrap(), None);
}

/// A TCP forwarder whose target can be switched: connections made after a
/// switch reach the new target, those made before stay with the old one
/// (what a failover behind a DNS name looks like to a client).
struct SwitchingProxy {
    port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

impl SwitchingProxy {
    async fn start(target: u16) -> SwitchingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let to = target.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let port = to.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        SwitchingProxy { port, target }
    }

    fn switch_to(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `REPLICAOF` on the server at `port` (`None`: `NO ONE`, a primary again).
async fn replica_of(port: u16, primary: Option<u16>) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd("REPLICAOF");
    match primary {
        Some(p) => cmd.arg("127.0.0.1").arg(p),
        None => cmd.arg("NO").arg("ONE"),
    };
    cmd.query_async::<()>(&mut conn).await.unwrap();
}

/// A failover behind one address: the old primary stays up as a replica,
/// so the connection opened before it answers PING but refuses every write
/// with READONLY. redis-rs does not reconnect on that; the log's
/// connections do (`redis_conn`): the append that met the replica fails
/// (ingest answers 503, the caller retries), the next reaches the new
/// primary; readiness reports the replica and reconnects the same way.
/// Before, every append failed until a restart.
#[tokio::test]
async fn after_a_failover_behind_one_address_the_log_reaches_the_new_primary() {
    let (a, b) = (
        inkstream_tests::PrivateRedis::start("failover-a"),
        inkstream_tests::PrivateRedis::start("failover-b"),
    );
    let proxy = SwitchingProxy::start(a.port).await;
    let mut config = RedisLogConfig::new(format!("redis://127.0.0.1:{}", proxy.port));
    config.prefix = unique("failover");
    let log = open_with(&config).await;
    let stored_on = |port: u16| {
        let pattern = format!("{}:events:*", config.prefix);
        async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut n = 0u64;
            for k in keys {
                n += redis::cmd("XLEN")
                    .arg(&k)
                    .query_async::<u64>(&mut conn)
                    .await
                    .unwrap();
            }
            n
        }
    };
    log.append("app", &[ev(&unique("e1"), "writing.keystroke", "u1")])
        .await
        .unwrap();
    assert_eq!(stored_on(a.port).await, 1);

    // The address now leads to B; A is B's replica.
    proxy.switch_to(b.port);
    replica_of(a.port, Some(b.port)).await;
    let e2 = [ev(&unique("e2"), "writing.keystroke", "u1")];
    let refused = log.append("app", &e2).await;
    assert!(
        refused.is_err(),
        "the connection opened before the failover reaches the replica: {refused:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match log.append("app", &e2).await {
            Ok(_) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "appends still fail 30 s after the failover: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_on(b.port).await, 1, "the retried append is on B");

    // Back the other way, seen first by readiness (no write meanwhile).
    replica_of(a.port, None).await;
    proxy.switch_to(a.port);
    replica_of(b.port, Some(a.port)).await;
    let not_ready = log.ping().await;
    assert!(
        not_ready
            .as_ref()
            .is_err_and(|e| e.to_string().contains("replica")),
        "readiness on a replica: {not_ready:?}"
    );
    log.ping()
        .await
        .expect("ready again once reconnected to the primary");
    log.append("app", &[ev(&unique("e3"), "writing.keystroke", "u1")])
        .await
        .expect("the first append after readiness reconnected");
}

/// A Redis Cluster is refused at connect with an error naming the setting
/// (the append script touches keys of several hash slots: every append
/// would fail with CROSSSLOT or MOVED).
#[tokio::test]
async fn a_redis_cluster_is_refused_at_connect_naming_the_setting() {
    use schemas::Classify;
    let bin = std::env::var("INKSTREAM_TEST_REDIS_SERVER")
        .expect("INKSTREAM_TEST_REDIS_SERVER (tests/run.sh sets it): redis-server is needed");
    let dir = std::env::temp_dir().join(unique("cluster-node"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = inkstream_tests::free_port();
    let mut node = std::process::Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster-enabled redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut config = RedisLogConfig::new(format!("redis://127.0.0.1:{port}"));
    config.prefix = unique("cluster");
    let refused = RedisLog::connect(&config).await;
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let e = refused.err().expect("a Redis Cluster is refused");
    assert!(
        e.to_string().contains("redis.url") && e.to_string().contains("Redis Cluster"),
        "{e}"
    );
    assert_eq!(e.fault(), schemas::Fault::Config);
}

/// With `redis.min_replica_acks`, an append counts as stored only once a
/// replica holds it (`WAIT`): with the replica stalled it fails as
/// unavailable (ingest answers 503) though the primary has the events, and
/// the retry, once the replica is back, is deduplicated.
#[tokio::test]
async fn with_min_replica_acks_an_append_is_stored_once_a_replica_holds_it() {
    let (primary, replica) = (
        inkstream_tests::PrivateRedis::start("replicated-primary"),
        inkstream_tests::PrivateRedis::start("replicated-replica"),
    );
    replica.replicate(&primary);
    let mut config = RedisLogConfig::new(primary.url());
    config.prefix = unique("replicated");
    config.min_replica_acks = 1;
    config.replica_ack_timeout = Duration::from_millis(300);
    let log = open_with(&config).await;
    // Stored once the replica holds it: retried until it confirms within
    // the 300 ms (a loaded machine may take longer once; the retry is
    // deduplicated).
    let e1 = [ev(&unique("e1"), "writing.keystroke", "u1")];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = log.append("app", &e1).await {
        assert!(
            std::time::Instant::now() < deadline,
            "no append confirmed by the online replica within 30 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    replica.pause();
    let e2 = [ev(&unique("e2"), "writing.keystroke", "u1")];
    let refused = log.append("app", &e2).await;
    replica.resume();
    let e = refused.expect_err("no replica confirms while it is stopped");
    assert!(e.to_string().contains("redis.min_replica_acks"), "{e}");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        match log.append("app", &e2).await {
            Ok(stored) => break stored,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the retry still fails 30 s after the replica's return: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stored[0].duplicate,
        "the retry finds the event the refused append stored on the primary"
    );
}

/// An ACL user that may not run INFO (a common least-privilege setup)
/// still connects and appends: the connect-time checks that use INFO (the
/// Redis Cluster refusal) are skipped for it, not fatal.
#[tokio::test]
async fn a_user_without_info_still_connects_and_appends() {
    let redis = inkstream_tests::PrivateRedis::start("acl-no-info");
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "appender",
                "on",
                ">appender-pw",
                "~*",
                "&*",
                "+@all",
                "-info",
            ][..],
        )
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut config = RedisLogConfig::new(format!(
        "redis://appender:appender-pw@127.0.0.1:{}",
        redis.port
    ));
    config.prefix = unique("acl");
    let log = open_with(&config).await;
    log.append("app", &[ev(&unique("e"), "writing.keystroke", "u1")])
        .await
        .expect("an append by a user without INFO");
    assert!(
        log.persistence().await.is_err(),
        "INFO is refused to this user (the persistence check then says nothing)"
    );
}
