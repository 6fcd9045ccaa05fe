//! The view endpoints against the real binary: events ingested over HTTP
//! become, through the dataflow and the view store, sessions, collaborators,
//! conflicts, team metrics and writing totals that the query endpoints
//! answer — with `as_of`/`lag_ms` — in-process and in Redis; and the
//! endpoints refuse what the caller's channels would refuse.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use inkstream_tests::{Server, now_ms, redis_url, unique};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Team windows of 2 s so a window closes within the test.
const FAST_TEAM: &str = "team.windows=[\"2s\"]";

async fn post(server: &Server, path: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{path}: {}", r.text().await.unwrap());
}

/// GETs `path` until `ok(body)` holds (20 s at most); returns the body.
async fn poll(server: &Server, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.get(server.url(path)).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: view never showed it; last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_fresh(body: &Value) {
    let as_of = body["as_of"].as_i64().unwrap();
    let lag = body["lag_ms"].as_i64().unwrap();
    let now = now_ms();
    assert!(
        as_of > now - 60_000 && as_of <= now,
        "as_of {as_of}, now {now}"
    );
    // lag_ms = (time of the answer) − as_of, so at most now − as_of.
    assert!(
        lag >= 0 && lag <= now - as_of + 5,
        "lag_ms {lag}, as_of {as_of}"
    );
    assert!(lag < 30_000, "the view lags {lag} ms");
}

/// Runs every view scenario against `server`; returns the session id.
async fn views_answer_what_was_ingested(server: &Server) -> String {
    let (u1, u2) = (unique("u1"), unique("u2"));
    let (p, d) = (unique("p"), unique("d"));
    let session = unique("s");
    let ts = now_ms();

    // A writing session: started, typed in, ended.
    post(
        server,
        "/api/realtime/writing/sessions/start",
        json!({"session_id": session, "user_id": u1, "project_id": p, "document_id": d, "ts": ts}),
    )
    .await;
    post(
        server,
        &format!("/api/realtime/writing/sessions/{session}/keystroke"),
        json!({"user_id": u1, "project_id": p, "document_id": d, "ts": ts + 500,
               "keystrokes": 40, "words": 8, "chars": 40, "source": "typed"}),
    )
    .await;
    let metrics = poll(
        server,
        &format!("/api/realtime/writing/sessions/{session}/metrics"),
        |b| b["session"]["state"] == "WARMING_UP",
    )
    .await;
    assert_eq!(metrics["session"]["user_id"], json!(u1));
    assert_eq!(metrics["session"]["project_id"], json!(p));
    assert_eq!(metrics["session"]["ended"], false);
    assert_fresh(&metrics);
    let active = poll(
        server,
        &format!("/api/realtime/writing/sessions/active?user={u1}"),
        |b| b["sessions"].as_array().is_some_and(|s| s.len() == 1),
    )
    .await;
    assert_eq!(active["sessions"][0]["session_id"], json!(session));
    assert_fresh(&active);
    // Live WPM reaches the open session (8 words within the first minute).
    poll(
        server,
        &format!("/api/realtime/writing/sessions/{session}/metrics"),
        |b| b["session"]["wpm"].as_f64().is_some_and(|w| w > 0.0),
    )
    .await;

    post(
        server,
        &format!("/api/realtime/writing/sessions/{session}/end"),
        json!({"user_id": u1, "project_id": p, "document_id": d, "ts": ts + 1000, "reason": "manual"}),
    )
    .await;
    let ended = poll(
        server,
        &format!("/api/realtime/writing/sessions/{session}/metrics"),
        |b| b["session"]["ended"] == true && b["session"]["summary"].is_object(),
    )
    .await;
    assert_eq!(ended["session"]["summary"]["words"], 8);
    let none = poll(
        server,
        &format!("/api/realtime/writing/sessions/active?user={u1}&project={p}"),
        |_| true,
    )
    .await;
    assert_eq!(
        none["sessions"],
        json!([]),
        "an ended session is not active"
    );
    let writing = poll(
        server,
        &format!(
            "/api/realtime/analytics/project/{p}/writing?from={}&to={}",
            ts - 86_400_000,
            ts + 86_400_000
        ),
        |b| b["totals"]["sessions"] == 1,
    )
    .await;
    assert_eq!(writing["totals"]["words"], 8);
    assert_eq!(writing["per_user"][&u1]["words"], 8);
    assert_eq!(writing["per_user"][&u1]["sessions"], 1);
    assert!(writing["per_user"][&u1]["active_ms"].as_i64().unwrap() > 0);
    assert_eq!(writing["per_day"].as_object().unwrap().len(), 1);
    assert_eq!(writing["rows"][0]["user_id"], json!(u1));
    assert_fresh(&writing);
    // A range of other days holds nothing.
    let empty = poll(
        server,
        &format!("/api/realtime/analytics/project/{p}/writing?from=2001-01-01&to=2001-01-31"),
        |_| true,
    )
    .await;
    assert_eq!(empty["totals"]["sessions"], 0);

    // Two collaborators editing the same paragraph: presence with cursors,
    // then a HIGH conflict with a suggestion; one moves away: resolved.
    for (u, offset) in [(&u1, 3), (&u2, 9)] {
        post(
            server,
            "/api/realtime/collaboration/cursor",
            json!({"user_id": u, "project_id": p, "document_id": d, "ts": ts + 2000,
                   "paragraph": 4, "offset": offset, "mode": "edit"}),
        )
        .await;
    }
    let present = poll(
        server,
        &format!("/api/realtime/collaboration/document/{d}/collaborators"),
        |b| b["collaborators"].as_array().is_some_and(|c| c.len() == 2),
    )
    .await;
    let c1 = present["collaborators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user_id"] == json!(u1))
        .unwrap();
    assert_eq!(
        (
            c1["status"].as_str(),
            c1["paragraph"].as_i64(),
            c1["offset"].as_i64()
        ),
        (Some("online"), Some(4), Some(3))
    );
    assert_fresh(&present);
    let conflicts = poll(
        server,
        &format!("/api/realtime/collaboration/document/{d}/conflicts"),
        |b| b["open"].as_array().is_some_and(|c| c.len() == 1),
    )
    .await;
    let c = &conflicts["open"][0];
    assert_eq!(c["severity"], "HIGH");
    assert_eq!(c["paragraph"], 4);
    let mut pair = vec![u1.clone(), u2.clone()];
    pair.sort();
    assert_eq!(c["users"], json!(pair));
    assert!(
        c["suggestions"][&u1]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    assert_fresh(&conflicts);
    post(
        server,
        "/api/realtime/collaboration/cursor",
        json!({"user_id": u2, "project_id": p, "document_id": d, "ts": ts + 3000,
               "paragraph": 40, "offset": 0, "mode": "edit"}),
    )
    .await;
    let resolved = poll(
        server,
        &format!("/api/realtime/collaboration/document/{d}/conflicts"),
        |b| b["recent"].as_array().is_some_and(|c| c.len() == 1),
    )
    .await;
    assert_eq!(resolved["open"], json!([]));
    assert_eq!(resolved["recent"][0]["status"], "resolved");

    // Team metrics of the document (2 s windows close as the watermark moves).
    post(
        server,
        "/api/realtime/collaboration/edit",
        json!({"user_id": u1, "project_id": p, "document_id": d, "ts": ts + 3500,
               "paragraph": 4, "offset": 3, "inserted": 5, "deleted": 0}),
    )
    .await;
    let team = poll(
        server,
        &format!("/api/realtime/collaboration/project/{p}/document/{d}/metrics"),
        |b| b["windows"]["2s"]["users"][&u1]["team.edits"].as_f64() == Some(1.0),
    )
    .await;
    assert_eq!(team["windows"]["2s"]["window_ms"], 2000);
    assert_fresh(&team);
    session
}

#[tokio::test]
async fn views_answer_ingested_sessions_presence_conflicts_and_team_metrics_embedded() {
    let server = Server::start(&["--set", FAST_TEAM]).await;
    views_answer_what_was_ingested(&server).await;
}

#[tokio::test]
async fn views_answer_ingested_sessions_presence_conflicts_and_team_metrics_from_redis() {
    let prefix = unique("views");
    let url = redis_url();
    let server = Server::start(&[
        "--redis-url",
        &url,
        "--set",
        &format!("redis.prefix=\"{prefix}\""),
        "--set",
        FAST_TEAM,
    ])
    .await;
    let session = views_answer_what_was_ingested(&server).await;
    // The answers came from Redis: the keys are there, with a TTL.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:view:session:{session}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "{key} has TTL {ttl}");
    // Every view key expires: sessions, presence, conflicts, team figures
    // and writing totals alike (one EXPIRE per key and batch).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:view:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for kind in ["session:", "presence:", "conflicts:", "team:", "writing:"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("{prefix}:view:{kind}"))),
            "no {kind} key among {keys:?}"
        );
    }
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has TTL {ttl}");
    }
    let as_of: i64 = redis::cmd("GET")
        .arg(format!("{prefix}:view:as_of"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(as_of > now_ms() - 60_000);
}

fn token(sub: &str, role: &str, project: &str, doc: &str) -> String {
    connectors::auth::sign_jwt(
        &json!({"sub": sub, "role": role, "projects": [project], "documents": [doc],
                "exp": now_ms() / 1000 + 300}),
        b"views-secret",
    )
}

#[tokio::test]
async fn views_refuse_what_the_callers_channels_would_refuse() {
    let server = Server::start(&["--set", "auth.jwt_secret=\"views-secret\""]).await;
    let client = reqwest::Client::new();
    let (p, d) = ("p-auth", "d-auth");
    let owner = token("u-owner", "member", p, d);
    // A session of u-owner in project p, so there is something to refuse.
    let r = client
        .post(server.url("/api/realtime/writing/sessions/start"))
        .bearer_auth(&owner)
        .json(&json!({"session_id": "s-auth", "project_id": p, "document_id": d, "ts": now_ms()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let get = |path: String, tok: Option<String>| {
        let client = client.clone();
        let url = server.url(&path);
        async move {
            let mut req = client.get(url);
            if let Some(t) = tok {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Wait until the view has the session (read as its owner).
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(
        "/api/realtime/writing/sessions/s-auth/metrics".into(),
        Some(owner.clone()),
    )
    .await
    .0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "the session never reached the view"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stranger = token("u-stranger", "member", "p-other", "d-other");
    let analyst = token("u-analyst", "analyst", "p-none", "d-none");
    let cases: Vec<(String, Option<String>, u16)> = vec![
        (
            "/api/realtime/writing/sessions/s-auth/metrics".into(),
            None,
            401,
        ),
        (
            "/api/realtime/writing/sessions/s-auth/metrics".into(),
            Some(stranger.clone()),
            403,
        ),
        (
            "/api/realtime/writing/sessions/s-auth/metrics".into(),
            Some(analyst.clone()),
            200,
        ),
        (
            "/api/realtime/writing/sessions/active?user=u-owner".into(),
            Some(stranger.clone()),
            403,
        ),
        (
            format!("/api/realtime/writing/sessions/active?project={p}"),
            Some(stranger.clone()),
            403,
        ),
        (
            format!("/api/realtime/writing/sessions/active?project={p}"),
            Some(owner.clone()),
            200,
        ),
        (
            format!("/api/realtime/analytics/project/{p}/writing"),
            Some(stranger.clone()),
            403,
        ),
        (
            format!("/api/realtime/analytics/project/{p}/writing"),
            Some(owner.clone()),
            200,
        ),
        (
            format!("/api/realtime/collaboration/document/{d}/collaborators"),
            Some(stranger.clone()),
            403,
        ),
        (
            format!("/api/realtime/collaboration/document/{d}/collaborators"),
            Some(owner.clone()),
            200,
        ),
        (
            format!("/api/realtime/collaboration/document/{d}/conflicts"),
            Some(stranger.clone()),
            403,
        ),
        (
            format!("/api/realtime/collaboration/document/{d}/conflicts"),
            Some(analyst.clone()),
            200,
        ),
        (
            format!("/api/realtime/collaboration/project/{p}/document/{d}/metrics"),
            Some(stranger.clone()),
            403,
        ),
        (
            format!("/api/realtime/collaboration/project/{p}/document/{d}/metrics"),
            Some(owner.clone()),
            200,
        ),
        (
            "/api/realtime/events/writing".into(),
            Some(owner.clone()),
            403,
        ),
        (
            "/api/realtime/events/writing/info".into(),
            Some(analyst.clone()),
            200,
        ),
    ];
    for (path, tok, want) in cases {
        let (status, body) = get(path.clone(), tok).await;
        assert_eq!(status, want, "{path}: {body}");
        if want == 403 {
            assert_eq!(body["error"]["code"], "forbidden", "{path}: {body}");
        }
    }
    // The stranger's unfiltered list hides the owner's session.
    let (status, body) = get(
        "/api/realtime/writing/sessions/active".into(),
        Some(stranger),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["sessions"], json!([]));
    let (_, body) = get("/api/realtime/writing/sessions/active".into(), Some(owner)).await;
    assert_eq!(body["sessions"][0]["session_id"], "s-auth");
}

/// An instance on Redis with checkpoints every `interval` of event time,
/// restarted in place (the same port: it takes its lease back at once).
struct Restartable {
    args: Vec<String>,
    port: u16,
    prefix: String,
}

impl Restartable {
    fn new(name: &str, interval: &str) -> Restartable {
        let prefix = unique(name);
        let args = [
            "--redis-url",
            &redis_url(),
            "--set",
            &format!("redis.prefix={prefix}"),
            "--set",
            "redis.shards=1",
            "--set",
            "checkpoint.store=redis",
            "--set",
            &format!("checkpoint.interval={interval}"),
        ]
        .map(String::from)
        .to_vec();
        Restartable {
            args,
            port: inkstream_tests::free_port(),
            prefix,
        }
    }

    async fn start(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Server::start_on(self.port, &args).await
    }

    /// Waits (60 s at most) until a checkpoint past event time `past`
    /// completed: a restart restores what came before it.
    async fn checkpointed_past(&self, past: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while inkstream_tests::checkpoint_barrier(&self.prefix).await <= past {
            assert!(
                Instant::now() < deadline,
                "no checkpoint past {past} completed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGKILL: nothing flushed, nothing acknowledged, the lease kept.
fn kill(mut server: Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// One writing session of `words` words in project `p`, started at `ts`:
/// started, typed in, ended.
async fn one_session(server: &Server, user: &str, p: &str, ts: i64, words: i64) {
    let (session, d) = (unique("s"), unique("d"));
    let at = |dt: i64| json!({"user_id": user, "project_id": p, "document_id": d, "ts": ts + dt});
    let mut start = at(0);
    start["session_id"] = json!(session);
    post(server, "/api/realtime/writing/sessions/start", start).await;
    let mut typed = at(500);
    for (k, v) in [
        ("keystrokes", json!(words * 5)),
        ("words", json!(words)),
        ("chars", json!(words * 5)),
    ] {
        typed[k] = v;
    }
    post(
        server,
        &format!("/api/realtime/writing/sessions/{session}/keystroke"),
        typed,
    )
    .await;
    let mut end = at(1000);
    end["reason"] = json!("manual");
    post(
        server,
        &format!("/api/realtime/writing/sessions/{session}/end"),
        end,
    )
    .await;
}

/// The project's writing totals once they show `sessions`.
async fn totals(server: &Server, p: &str, sessions: i64) -> Value {
    poll(
        server,
        &format!("/api/realtime/analytics/project/{p}/writing"),
        |b| b["totals"]["sessions"] == sessions,
    )
    .await["totals"]
        .clone()
}

/// A session ends, its totals are in Redis, and the instance is killed
/// (SIGKILL) before a checkpoint covers it. The restarted instance derives
/// the session's summary again from the log (same id): the totals count it
/// once (until 2026-12-07 they counted it twice: the totals are added, and
/// the restarted view writer did not know the summary had been added).
#[tokio::test]
async fn writing_totals_count_a_session_once_when_a_restart_derives_it_again() {
    // No checkpoint covers the session: the restart reads it again.
    let instance = Restartable::new("views-replay", "1h");
    let first = instance.start().await;
    let (user, p) = (unique("u"), unique("p"));
    let ts = now_ms();
    one_session(&first, &user, &p, ts, 8).await;
    let before = totals(&first, &p, 1).await;
    assert_eq!(before["words"], 8, "{before}");
    kill(first);

    let again = instance.start().await;
    // A later session of another project, after the first in the log (one
    // shard) and in event time: once its totals show, the view writer has
    // applied whatever the restart derived again before it.
    let later = unique("p");
    one_session(&again, &user, &later, ts + 5_000, 3).await;
    totals(&again, &later, 1).await;
    let after = poll(
        &again,
        &format!("/api/realtime/analytics/project/{p}/writing"),
        |_| true,
    )
    .await["totals"]
        .clone();
    assert_eq!(after, before, "the restart counted the session again");
}

/// A session opened before a checkpoint, the instance killed (SIGKILL)
/// and restarted: the session's view keeps its start and its transitions
/// when it ends (until 2026-12-07 the restarted view writer, whose cache
/// was empty, made the session anew from its end: `started_at` became the
/// end's time and the transitions started again from one).
#[tokio::test]
async fn an_open_session_keeps_its_view_across_a_restart() {
    let instance = Restartable::new("views-open", "1s");
    let first = instance.start().await;
    let (user, p, d, session) = (unique("u"), unique("p"), unique("d"), unique("s"));
    let ts = now_ms();
    post(
        &first,
        "/api/realtime/writing/sessions/start",
        json!({"session_id": session, "user_id": user, "project_id": p, "document_id": d, "ts": ts}),
    )
    .await;
    post(
        &first,
        &format!("/api/realtime/writing/sessions/{session}/keystroke"),
        json!({"user_id": user, "project_id": p, "document_id": d, "ts": ts + 500,
               "keystrokes": 40, "words": 8, "chars": 40, "source": "typed"}),
    )
    .await;
    let path = format!("/api/realtime/writing/sessions/{session}/metrics");
    let open =
        poll(&first, &path, |b| b["session"]["state"] == "WARMING_UP").await["session"].clone();
    // A checkpoint holds the open session: the restart restores it and
    // does not derive its start again.
    instance.checkpointed_past(ts + 1_000).await;
    kill(first);

    let again = instance.start().await;
    post(
        &again,
        &format!("/api/realtime/writing/sessions/{session}/end"),
        json!({"user_id": user, "project_id": p, "document_id": d, "ts": now_ms(), "reason": "manual"}),
    )
    .await;
    let ended = poll(&again, &path, |b| b["session"]["ended"] == true).await["session"].clone();
    assert_eq!(ended["started_at"], open["started_at"], "{ended}");
    assert_eq!(
        ended["transitions"].as_i64().unwrap(),
        open["transitions"].as_i64().unwrap() + 1,
        "the ending is one more transition of the same view: {ended}"
    );
}

/// Two collaborators in one paragraph of `d` at `ts`: an open conflict.
async fn cursors(server: &Server, users: &[(&str, i64)], p: &str, d: &str, ts: i64) {
    for (u, paragraph) in users {
        post(
            server,
            "/api/realtime/collaboration/cursor",
            json!({"user_id": u, "project_id": p, "document_id": d, "ts": ts,
                   "paragraph": paragraph, "offset": 0, "mode": "edit"}),
        )
        .await;
    }
}

/// A conflict opened before a checkpoint, the instance killed (SIGKILL)
/// and restarted, then resolved: the view shows it resolved (until
/// 2026-12-07 the restarted view writer did not know the conflict and
/// dropped its resolution, so it stayed open in Redis).
#[tokio::test]
async fn a_conflict_opened_before_a_restart_is_resolved_after_it() {
    let instance = Restartable::new("views-conflict", "1s");
    let first = instance.start().await;
    let (u1, u2, p, d) = (unique("u1"), unique("u2"), unique("p"), unique("d"));
    let ts = now_ms();
    cursors(&first, &[(&u1, 4), (&u2, 4)], &p, &d, ts).await;
    let path = format!("/api/realtime/collaboration/document/{d}/conflicts");
    poll(&first, &path, |b| {
        b["open"].as_array().is_some_and(|c| c.len() == 1)
    })
    .await;
    instance.checkpointed_past(ts + 1_000).await;
    kill(first);

    let again = instance.start().await;
    cursors(&again, &[(&u2, 40)], &p, &d, now_ms()).await;
    let resolved = poll(&again, &path, |b| {
        b["recent"].as_array().is_some_and(|c| c.len() == 1)
    })
    .await;
    assert_eq!(resolved["open"], json!([]), "{resolved}");
    assert_eq!(resolved["recent"][0]["status"], "resolved", "{resolved}");
}
