//! The view store in Redis: what one instance's dataflow fed is answered by
//! another instance (sharing only Redis), with the feeding instance's
//! watermark as `as_of`; writing totals add up across writer restarts.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_connectors::Metrics;
use inkstream_connectors::view_store::{ActiveScope, ViewStore, ViewStoreConfig};
use inkstream_tests::{redis_url, unique};
use schemas::Event;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn ev(ty: &str, ts: i64, user: &str, data: Value) -> Event {
    serde_json::from_value(
        json!({"id": unique("e"), "type": ty, "ts": ts, "user_id": user,
        "project_id": "p1", "document_id": "d1", "data": data}),
    )
    .unwrap()
}

fn config(prefix: &str) -> ViewStoreConfig {
    ViewStoreConfig {
        redis_url: Some(redis_url()),
        prefix: prefix.into(),
        ..Default::default()
    }
}

fn summary(user: &str, start: i64) -> Event {
    ev(
        "writing.session_ended",
        start + 1000,
        user,
        json!({"session_id": null, "reason": "ended", "start_ts": start, "end_ts": start + 1000,
               "events": 3, "words": 5, "wpm": 5.0, "active_ms": 1000, "flow_ms": 0,
               "paused_ms": 0, "longest_flow_ms": 0, "pasted_words": 0}),
    )
}

#[tokio::test]
async fn another_instance_answers_from_redis_with_the_writers_watermark() {
    let prefix = unique("views");
    let writer_metrics = Metrics::standalone();
    let (_writer, feed) = ViewStore::start(config(&prefix), &writer_metrics)
        .await
        .unwrap();
    let reader_metrics = Metrics::standalone();
    let (reader, _unused) = ViewStore::start(config(&prefix), &reader_metrics)
        .await
        .unwrap();
    let ts = 1_767_603_600_000;
    writer_metrics
        .dataflow_watermark_seconds
        .set((ts + 5000) as f64 / 1000.0);
    feed.offer(&[
        ev(
            "collaboration.presence_updated",
            ts,
            "u1",
            json!({"status": "online", "paragraph": 2, "offset": 5, "mode": "edit"}),
        ),
        ev(
            "writing.session_state_changed",
            ts,
            "u1",
            json!({"session_id": "s1", "from": "IDLE", "to": "WARMING_UP", "reason": "activity", "wpm": 0.0}),
        ),
        summary("u2", ts),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (collaborators, as_of) = loop {
        let (c, as_of) = reader.collaborators("d1").await.unwrap();
        if !c.is_empty() {
            break (c, as_of);
        }
        assert!(
            Instant::now() < deadline,
            "the reader never saw the writer's view"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(collaborators[0].user_id, "u1");
    assert_eq!(collaborators[0].paragraph, Some(2));
    assert_eq!(as_of, ts + 5000, "as_of is the watermark the writer fed");
    let (session, _) = reader.session("s1").await.unwrap();
    assert_eq!(session.unwrap().state, "WARMING_UP");
    let (active, _) = reader.active(&[ActiveScope::All]).await.unwrap();
    assert_eq!(active.len(), 1);
    let (writing, _) = reader.writing("p1").await.unwrap();
    assert_eq!(writing.len(), 1);
    assert_eq!((writing[0].2.words, writing[0].2.sessions), (5, 1));

    // A restarted writer (empty cache) adds to the totals instead of
    // overwriting them.
    let metrics = Metrics::standalone();
    let (_again, feed) = ViewStore::start(config(&prefix), &metrics).await.unwrap();
    metrics
        .dataflow_watermark_seconds
        .set((ts + 9000) as f64 / 1000.0);
    feed.offer(&[summary("u2", ts + 100)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (writing, as_of) = reader.writing("p1").await.unwrap();
        if writing[0].2.sessions == 2 {
            assert_eq!(writing[0].2.words, 10);
            assert_eq!(as_of, ts + 9000);
            break;
        }
        assert!(Instant::now() < deadline, "totals not added: {writing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session opened at `ts` by `user` in `project`.
fn opened(session: &str, ts: i64, user: &str, project: &str) -> Event {
    changed(session, ts, user, project, ["IDLE", "WARMING_UP"])
}

/// A session's transition at `ts`.
fn changed(session: &str, ts: i64, user: &str, project: &str, [from, to]: [&str; 2]) -> Event {
    serde_json::from_value(json!({
        "id": unique("e"), "type": "writing.session_state_changed", "ts": ts,
        "user_id": user, "project_id": project,
        "data": {"session_id": session, "from": from, "to": to,
                 "reason": "activity", "wpm": 0.0}
    }))
    .unwrap()
}

/// More than 1000 sessions open elsewhere, all newer than one member's:
/// the member's scopes still find theirs (the 1000 newest of everyone's,
/// cut before filtering, held none of them), in memory and in Redis.
#[tokio::test]
async fn the_newest_1000_are_chosen_among_the_scopes_asked_for() {
    for redis in [false, true] {
        let config = ViewStoreConfig {
            redis_url: redis.then(redis_url),
            prefix: unique("views"),
            ..Default::default()
        };
        let metrics = Metrics::standalone();
        let (store, feed) = ViewStore::start(config, &metrics).await.unwrap();
        let ts = 1_767_603_600_000;
        metrics
            .dataflow_watermark_seconds
            .set((ts + 10_000) as f64 / 1000.0);
        feed.offer(&[opened("mine", ts, "me", "p-mine")]);
        for chunk in 0..11 {
            let crowd: Vec<Event> = (0..100)
                .map(|i| {
                    let n = chunk * 100 + i;
                    opened(&format!("s{n}"), ts + 1 + n, &format!("u{n}"), "p-crowd")
                })
                .collect();
            feed.offer(&crowd);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (all, _) = store.active(&[ActiveScope::All]).await.unwrap();
            if all.len() == 1000 && all.iter().all(|s| s.user_id != "me") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis {redis}: the 1,101 sessions were not all in the view: {} read",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mine = [
            ActiveScope::User("me".into()),
            ActiveScope::Project("p-mine".into()),
        ];
        for scopes in [&mine[..], &mine[..1], &mine[1..]] {
            let (found, _) = store.active(scopes).await.unwrap();
            let ids: Vec<&str> = found.iter().map(|s| s.session_id.as_str()).collect();
            assert_eq!(ids, ["mine"], "redis {redis}, {scopes:?}");
        }
        // A project's own newest, merged with a user's, newest first.
        let (crowd, _) = store
            .active(&[
                ActiveScope::Project("p-crowd".into()),
                ActiveScope::User("me".into()),
            ])
            .await
            .unwrap();
        assert_eq!(crowd.len(), 1000, "redis {redis}");
        assert_eq!(crowd[0].session_id, "s1099", "redis {redis}");
        assert!(
            crowd.windows(2).all(|w| w[0].updated_at >= w[1].updated_at),
            "redis {redis}: not newest first"
        );
        // A session that moves to another project is found there only; one
        // that ends leaves its user's index.
        let moved = ["WARMING_UP", "ACTIVE_WRITING"];
        feed.offer(&[changed("mine", ts + 5000, "me", "p-other", moved)]);
        let scoped = |scope: ActiveScope| {
            let store = store.clone();
            async move {
                let (found, _) = store.active(&[scope]).await.unwrap();
                found.into_iter().map(|s| s.session_id).collect::<Vec<_>>()
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while scoped(ActiveScope::Project("p-other".into())).await != ["mine"] {
            assert!(
                Instant::now() < deadline,
                "redis {redis}: the moved session is not in its new project"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            scoped(ActiveScope::Project("p-mine".into()))
                .await
                .is_empty(),
            "redis {redis}: the moved session is still in its first project"
        );
        let ended = ["ACTIVE_WRITING", "ENDED"];
        feed.offer(&[changed("mine", ts + 6000, "me", "p-other", ended)]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !scoped(ActiveScope::User("me".into())).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "redis {redis}: the ended session is still open for its user"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            scoped(ActiveScope::Project("p-other".into()))
                .await
                .is_empty()
        );
    }
}

#[tokio::test]
async fn changes_made_while_redis_is_down_are_written_when_it_is_back() {
    let mut redis = inkstream_tests::PrivateRedis::start("views-outage");
    let config = ViewStoreConfig {
        redis_url: Some(redis.url()),
        prefix: unique("views"),
        ..Default::default()
    };
    let metrics = Metrics::standalone();
    let (store, feed) = ViewStore::start(config, &metrics).await.unwrap();
    redis.stop();
    let ts = 1_767_603_600_000;
    metrics.dataflow_watermark_seconds.set((ts) as f64 / 1000.0);
    feed.offer(&[ev(
        "collaboration.presence_updated",
        ts,
        "u9",
        json!({"status": "online", "paragraph": 1, "offset": 0}),
    )]);
    // The write fails (counted) while Redis is down...
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics
        .render()
        .lines()
        .any(|l| l.starts_with("inkstream_view_write_errors_total") && !l.ends_with(" 0"))
    {
        assert!(Instant::now() < deadline, "no write error counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and is retried once it is back (the AOF kept nothing of ours: the
    // data can only come from the retry).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((c, as_of)) = store.collaborators("d1").await
            && !c.is_empty()
        {
            assert_eq!(c[0].user_id, "u9");
            assert_eq!(as_of, ts);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held change was never written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the writer prunes from its own state (a collaborator not seen for
/// the TTL, writing days past their retention) goes from Redis too. Before,
/// only the in-process copy forgot them: a hash's TTL is renewed by every
/// write to it, so an active document kept a collaborator whose `offline`
/// never came (a ghost, answered by every other instance) and an active
/// project every day of its writing, for ever.
#[tokio::test]
async fn what_the_writer_prunes_goes_from_redis_too() {
    let prefix = unique("views-prune");
    let day = 86_400_000;
    let short = ViewStoreConfig {
        ttl: Duration::from_secs(600),
        writing_retention: Duration::from_secs(86_400),
        ..config(&prefix)
    };
    let writer_metrics = Metrics::standalone();
    let (_writer, feed) = ViewStore::start(short.clone(), &writer_metrics)
        .await
        .unwrap();
    let (reader, _unused) = ViewStore::start(short, &Metrics::standalone())
        .await
        .unwrap();
    let presence = |user: &str, ts: i64| {
        ev(
            "collaboration.presence_updated",
            ts,
            user,
            json!({"status": "online", "paragraph": 1, "offset": 0, "mode": "edit"}),
        )
    };
    let ts = 1_767_603_600_000;
    writer_metrics
        .dataflow_watermark_seconds
        .set((ts + 5000) as f64 / 1000.0);
    feed.offer(&[presence("ghost", ts), summary("old-writer", ts)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, _) = reader.collaborators("d1").await.unwrap();
        let (w, _) = reader.writing("p1").await.unwrap();
        if c.len() == 1 && w.len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first views never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Three days later: the ghost is past the TTL, the old day past the
    // retention. The writer prunes at most once a second, at a batch.
    let later = ts + 3 * day;
    writer_metrics
        .dataflow_watermark_seconds
        .set(later as f64 / 1000.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        feed.offer(&[presence("present", later), summary("new-writer", later)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (c, _) = reader.collaborators("d1").await.unwrap();
        let (w, _) = reader.writing("p1").await.unwrap();
        let users: Vec<&str> = c.iter().map(|c| c.user_id.as_str()).collect();
        let writers: Vec<&str> = w.iter().map(|(_, u, _)| u.as_str()).collect();
        if users == ["present"] && writers == ["new-writer"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pruned views still answered from Redis after 30 s: collaborators {users:?}, writing {writers:?}"
        );
    }
}

/// A view writer that reaches the suite's Redis through the cutting proxy,
/// and a reader that does not.
struct Proxied {
    proxy: inkstream_tests::cut_proxy::CutProxy,
    /// The writer's: its watermark is the views' `as_of`.
    metrics: Metrics,
    feed: inkstream_connectors::view_store::ViewFeed,
    reader: ViewStore,
    prefix: String,
    _writer: ViewStore,
}

impl Proxied {
    async fn start(name: &str) -> Proxied {
        let url = redis_url();
        let upstream = url.trim_start_matches("redis://").trim_end_matches('/');
        let proxy = inkstream_tests::cut_proxy::CutProxy::start(upstream).await;
        let prefix = unique(name);
        let through_proxy = ViewStoreConfig {
            redis_url: Some(format!("redis://127.0.0.1:{}", proxy.port())),
            ..config(&prefix)
        };
        let metrics = Metrics::standalone();
        let (writer, feed) = ViewStore::start(through_proxy, &metrics).await.unwrap();
        let (reader, _unused) = ViewStore::start(config(&prefix), &Metrics::standalone())
            .await
            .unwrap();
        Proxied {
            proxy,
            metrics,
            feed,
            reader,
            prefix,
            _writer: writer,
        }
    }
}

/// A view write Redis applied whose reply was lost (a timeout, a dropped
/// connection) is not applied twice by its retry. The writing totals are
/// `HINCRBY` deltas: before, the retry added a session's words and count
/// again. The fault is real: a loopback proxy in front of the real
/// redis-server drops the reply to the write's script call (it holds
/// `views-applied`) and closes that connection.
#[tokio::test]
async fn a_write_applied_whose_reply_was_lost_is_not_counted_twice() {
    let Proxied {
        proxy,
        metrics,
        feed,
        reader,
        _writer,
        ..
    } = Proxied::start("views-lost-reply").await;
    let ts = 1_767_603_600_000;
    // No watermark yet, so the writer's idle tick writes nothing: the first
    // transaction through the proxy is this batch's.
    proxy.arm("views-applied");
    feed.offer(&[summary("u1", ts)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.cuts() == 0 {
        assert!(Instant::now() < deadline, "the write's reply was never cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A later change, with a later watermark: once Redis shows it, the
    // retry of the first write is done too (it comes first).
    let later = ts + 60_000;
    metrics
        .dataflow_watermark_seconds
        .set(later as f64 / 1000.0);
    feed.offer(&[summary("u1", later)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let writing = loop {
        let (writing, as_of) = reader.writing("p1").await.unwrap();
        if as_of == later {
            break writing;
        }
        assert!(
            Instant::now() < deadline,
            "the later change never reached Redis (as_of {as_of})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(writing.len(), 1, "{writing:?}");
    assert_eq!(
        (writing[0].2.sessions, writing[0].2.words),
        (2, 10),
        "two sessions of 5 words each, each counted once: {writing:?}"
    );
}

/// A view write that reaches Redis only after its retry (held on a
/// connection the writer gave up on, as a proxy or a congested link can)
/// is not applied a second time. The writer's check before the retry found
/// it not applied, so the retry carried its `HINCRBY` deltas again; the
/// write script skips an attempt older than the last one applied. Before,
/// the writes were MULTI/EXEC transactions, and the late one added the
/// first session's words and count again (3 sessions, 15 words).
#[tokio::test]
async fn a_write_that_arrives_after_its_retry_is_not_counted_twice() {
    let Proxied {
        proxy,
        metrics,
        feed,
        reader,
        prefix,
        _writer,
    } = Proxied::start("views-late-write").await;
    let ts = 1_767_603_600_000;
    // The first write with writing deltas is held; the writer sees its
    // connection close.
    proxy.arm_hold("HINCRBY");
    feed.offer(&[summary("u1", ts)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.holds() {
        assert!(Instant::now() < deadline, "the write was never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The retry (with a later change and watermark) is applied.
    let later = ts + 60_000;
    metrics
        .dataflow_watermark_seconds
        .set(later as f64 / 1000.0);
    feed.offer(&[summary("u1", later)]);
    let totals = || async {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (writing, as_of) = reader.writing("p1").await.unwrap();
            if as_of == later {
                assert_eq!(writing.len(), 1, "{writing:?}");
                return (writing[0].2.sessions, writing[0].2.words);
            }
            assert!(
                Instant::now() < deadline,
                "the later change never reached Redis (as_of {as_of})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(totals().await, (2, 10), "before the late write arrived");
    // Now the held write arrives, and has run.
    proxy
        .release(&format!("{prefix}:late-write-done"), &redis_url())
        .await;
    let (writing, as_of) = reader.writing("p1").await.unwrap();
    let totals: Vec<_> = writing.iter().map(|w| (w.2.sessions, w.2.words)).collect();
    assert_eq!(
        (as_of, totals),
        (later, vec![(2, 10)]),
        "after the late write: the watermark unmoved, two sessions of 5 words each, each \
         counted once"
    );
}

/// The writer of an instance that lost the dataflow lease (paused past its
/// TTL, cut off: another instance took the dataflow over and its fence
/// token moved on) writes no view over the new holder's; the holder of
/// the current token writes (until 2026-12-07 view writes carried no fence:
/// a stale holder's queued batch could reopen a session the new holder had
/// ended, and move `as_of` back).
#[tokio::test]
async fn a_writer_that_lost_the_lease_writes_no_view() {
    use inkstream_connectors::lease::Fence;
    let prefix = unique("views-fenced");
    let fence_key = inkstream_tests::set_dataflow_fence(&prefix, 2).await;
    let fence = |token| Fence {
        key: fence_key.clone(),
        token,
    };
    let ts = 1_767_603_600_000;
    let presence = |user: &str| {
        ev(
            "collaboration.presence_updated",
            ts,
            user,
            json!({"status": "online", "paragraph": 2, "offset": 5, "mode": "edit"}),
        )
    };
    let stale_metrics = Metrics::standalone();
    let (reader, stale) = ViewStore::start(config(&prefix), &stale_metrics)
        .await
        .unwrap();
    stale.fenced(Some(fence(1)));
    stale_metrics
        .dataflow_watermark_seconds
        .set((ts + 5000) as f64 / 1000.0);
    stale.offer(&[presence("stale")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stale_metrics
        .render()
        .contains("inkstream_view_fenced_writes_total 1")
    {
        assert!(
            Instant::now() < deadline,
            "the stale writer's write was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (collaborators, _) = reader.collaborators("d1").await.unwrap();
    assert!(
        collaborators.is_empty(),
        "a stale holder wrote a view: {collaborators:?}"
    );

    let holder_metrics = Metrics::standalone();
    let (_holder, current) = ViewStore::start(config(&prefix), &holder_metrics)
        .await
        .unwrap();
    current.fenced(Some(fence(2)));
    holder_metrics
        .dataflow_watermark_seconds
        .set((ts + 5000) as f64 / 1000.0);
    current.offer(&[presence("holder")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, _) = reader.collaborators("d1").await.unwrap();
        if !c.is_empty() {
            let users: Vec<&str> = c.iter().map(|c| c.user_id.as_str()).collect();
            assert_eq!(users, ["holder"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the holder's view was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
