//! The views in Redis. Keys (all under `<prefix>:view:`, each with a TTL
//! refreshed on write):
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `session:<id>` | string | a [`SessionView`] as JSON |
//! | `active` | sorted set | open session ids, scored by `updated_at` |
//! | `active:user:<user>`, `active:project:<project>` | sorted set | the same, of one user or project |
//! | `presence:<doc>` | hash | user → [`Collaborator`] JSON |
//! | `conflicts:<doc>` | hash | conflict id → [`ConflictView`] JSON |
//! | `team:<json [project, doc]>` | hash | `window\|metric\|user` → [`TeamFigure`] JSON |
//! | `writing:<project>` | hash | `day\|metric\|user` → integer (HINCRBY) |
//! | `writing:<project>:counted` | set | ids of the session summaries added to it (each added once) |
//! | `as_of` | string | the watermark the views reflect (ms) |
//! | `applied:<writer>` | string | the last write attempt of writer `<writer>` that Redis applied |
//!
//! Ids in keys (`<id>`, `<doc>`, `<project>`) are escaped by
//! [`crate::redis_key::part`] (`%`, `:`, `{`, `}`, `|` percent-escaped;
//! other ids unchanged). One script call per batch of changes.

use super::config::ViewStoreConfig;
use super::error::{Fresh, ViewError};
use super::state::ActiveScope;
use super::state::{
    Collaborator, ConflictView, Dirty, SessionView, TeamFigure, ViewState, WritingDelta,
    WritingTotals,
};
use crate::lease::Fence;
use crate::redis_calls::{Calls, run_calls_from};
use crate::redis_conn::PrimaryConnection as ConnectionManager;
use crate::redis_key::part;
use redis::aio::ConnectionManagerConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most open sessions an `active` query reads.
const ACTIVE_MAX: isize = 1000;

/// What a batch changed, serialized under the state lock and written after.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// (id, JSON or deleted, open?, score, user and project (`None` when
    /// deleted))
    sessions: Vec<SessionChange>,
    /// (doc, user, JSON or deleted)
    presence: Vec<(String, String, Option<String>)>,
    conflicts: Vec<(String, String, Option<String>)>,
    /// (project, doc, field, JSON or deleted)
    team: Vec<(String, Option<String>, String, Option<String>)>,
    writing: Vec<WritingDelta>,
    /// (project, day, user) pruned: their fields deleted.
    writing_dropped: Vec<(String, String, String)>,
}

/// One session's change: (id, JSON or deleted, open?, score, its user and
/// project when known).
type SessionChange = (
    String,
    Option<String>,
    bool,
    i64,
    Option<(String, Option<String>)>,
);

fn json<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_string(v).ok()
}

impl Changes {
    /// Records (writes) held.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
            + self.presence.len()
            + self.conflicts.len()
            + self.team.len()
            + self.writing.len()
            + self.writing_dropped.len()
    }

    /// Appends `later`: written after, so its values win.
    pub(crate) fn extend(&mut self, later: Changes) {
        self.sessions.extend(later.sessions);
        self.presence.extend(later.presence);
        self.conflicts.extend(later.conflicts);
        self.team.extend(later.team);
        self.writing.extend(later.writing);
        self.writing_dropped.extend(later.writing_dropped);
    }

    /// Writing deltas held.
    pub(crate) fn writing_len(&self) -> usize {
        self.writing.len()
    }

    /// Forgets the first `n` writing deltas: a write Redis applied though
    /// its reply was lost carried them (see [`RedisViews::applied`]). The
    /// other changes set values, so writing them again changes nothing.
    pub(crate) fn forget_writing(&mut self, n: usize) {
        self.writing.drain(..n.min(self.writing.len()));
    }

    /// Takes the state's dirty marks and writing deltas.
    pub(crate) fn take(st: &mut ViewState) -> Changes {
        let mut c = Changes::default();
        for d in std::mem::take(&mut st.dirty) {
            match d {
                Dirty::Session(id) => {
                    let v = st.sessions.get(&id);
                    c.sessions.push((
                        id.clone(),
                        v.and_then(json),
                        v.is_some_and(|v| !v.ended),
                        v.map_or(0, |v| v.updated_at),
                        v.map(|v| (v.user_id.clone(), v.project_id.clone())),
                    ));
                }
                Dirty::Presence { document, user } => {
                    let v = st.presence.get(&document).and_then(|m| m.get(&user));
                    let v = v.and_then(json);
                    c.presence.push((document, user, v));
                }
                Dirty::Conflict { document, id } => {
                    let v = st.conflicts.get(&document).and_then(|m| m.get(&id));
                    let v = v.and_then(json);
                    c.conflicts.push((document, id, v));
                }
                Dirty::Team {
                    project,
                    document,
                    field,
                } => {
                    let v = st
                        .team
                        .get(&(project.clone(), document.clone()))
                        .and_then(|m| m.get(&field))
                        .and_then(json);
                    c.team.push((project, document, field, v));
                }
            }
        }
        c.writing = std::mem::take(&mut st.writing_deltas);
        c.writing_dropped = std::mem::take(&mut st.writing_dropped);
        c
    }
}

/// One view write: refused when the dataflow lease's fence (`ARGV[3]` key,
/// `ARGV[4]` token; empty: no lease) is no longer this writer's (another
/// instance took the dataflow over: its writer writes the views now);
/// applied only if this writer's marker (`KEYS[1]`) shows no attempt at or
/// after this one (`ARGV[1]`) ran, then marked with it (`ARGV[2]`: the
/// marker's TTL in seconds). The commands follow as [`Calls`]. A
/// MULTI/EXEC could not skip: a transaction delivered after its retry (held
/// on a dropped connection) added its `HINCRBY` deltas a second time.
static WRITE_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!(
        r"
if ARGV[3] ~= '' and redis.call('GET', ARGV[3]) ~= ARGV[4] then
  return 'views-fenced'
end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last and last >= tonumber(ARGV[1]) then
  return 'views-skipped'
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
{}return 'views-applied'
",
        run_calls_from(5)
    ))
});

#[derive(Clone)]
pub(crate) struct RedisViews {
    conn: ConnectionManager,
    prefix: String,
    ttl_s: u64,
    writing_ttl_s: u64,
    /// This writer (random per connect): names its `applied:` key.
    writer: String,
    /// The open sessions this writer put in their user's and project's
    /// indexes, with that user and project: each is added there once
    /// (those indexes pick which sessions a scoped read looks at, and are
    /// not kept in `updated_at` order, which costs two more writes per
    /// change), and taken out when it closes or is forgotten. Empty after a
    /// restart or a takeover: a session is added again at its next change.
    indexed: Arc<Mutex<HashMap<String, Owner>>>,
}

/// A session's user and project.
type Owner = (String, Option<String>);

fn unavailable(e: redis::RedisError) -> ViewError {
    ViewError::Unavailable(e.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_str(s).ok()
}

impl RedisViews {
    pub(crate) async fn connect(
        url: &str,
        config: &ViewStoreConfig,
    ) -> Result<RedisViews, ViewError> {
        let client = crate::tls::redis_client(url, &config.redis_tls)
            .map_err(|e| ViewError::Unavailable(format!("invalid redis settings: {e}")))?;
        let conn = ConnectionManager::new_with_config(
            client,
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1),
        )
        .await
        .map_err(unavailable)?;
        Ok(RedisViews {
            conn,
            prefix: format!("{}:view:", config.prefix),
            ttl_s: config.ttl.as_secs().max(1),
            writing_ttl_s: config.writing_retention.as_secs().max(1),
            writer: format!(
                "{:016x}",
                std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8)
            ),
            indexed: Arc::default(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn team_key(&self, project: &str, doc: Option<&str>) -> String {
        // JSON keeps ids with `:` unambiguous.
        self.key(&format!("team:{}", serde_json::json!([project, doc])))
    }

    fn applied_key(&self) -> String {
        self.key(&format!("applied:{}", self.writer))
    }

    /// Writes one batch of changes and the watermark, in one round trip, as
    /// one script call ([`WRITE_SCRIPT`]), marked as write `attempt` of this
    /// writer: a write that failed applied either nothing or everything,
    /// and [`RedisViews::applied`] tells which when its reply was lost. The
    /// script runs only if no later attempt ran first, so a write that
    /// reaches Redis after its retry (held on a dropped connection) is not
    /// applied again.
    pub(crate) async fn write(
        &self,
        c: &Changes,
        as_of: i64,
        attempt: u64,
        fence: Option<&Fence>,
    ) -> Result<(), ViewError> {
        let mut p = Calls::default();
        let active = self.key("active");
        // Sessions to note as indexed (`Some`) or not (`None`) once Redis
        // applied this write, and the user and project indexes it adds to.
        let mut noted: Vec<(&str, Option<Owner>)> = Vec::new();
        let mut added: Vec<String> = Vec::new();
        {
            let indexed = self.indexed.lock().unwrap_or_else(|p| p.into_inner());
            for (id, v, open, score, owner) in &c.sessions {
                let key = self.key(&format!("session:{}", part(id)));
                match v {
                    Some(v) => p.cmd("SET").arg(&key).arg(v).arg("EX").arg(self.ttl_s),
                    None => p.cmd("DEL").arg(&key),
                }
                .ignore();
                let command = if *open { "ZADD" } else { "ZREM" };
                p.cmd(command).arg(&active);
                if *open {
                    p.arg(score);
                }
                p.arg(id).ignore();
                // The user's and the project's index: added to once (again
                // when its project changed), taken out of when closed or
                // forgotten (its owner as indexed).
                let was = indexed.get(id);
                let (out_of, into) = match (open, owner) {
                    (true, Some(o)) if was == Some(o) => continue,
                    (true, Some(o)) => (was, Some(o)),
                    (true, None) => continue,
                    (false, _) => (was.or(owner.as_ref()), None),
                };
                for (o, add) in [(out_of, false), (into, true)] {
                    let Some((user, project)) = o else { continue };
                    let scopes = [
                        Some(ActiveScope::User(user.clone())),
                        project.clone().map(ActiveScope::Project),
                    ];
                    for scope in scopes.into_iter().flatten() {
                        let index = self.active_key(&scope);
                        if add {
                            p.cmd("ZADD").arg(&index).arg(score).arg(id).ignore();
                            added.push(index);
                        } else {
                            p.cmd("ZREM").arg(&index).arg(id).ignore();
                        }
                    }
                }
                noted.push((id, into.cloned()));
            }
        }
        added.sort_unstable();
        added.dedup();
        for index in &added {
            p.cmd("EXPIRE").arg(index).arg(self.ttl_s).ignore();
        }
        if !c.sessions.is_empty() {
            p.cmd("EXPIRE").arg(&active).arg(self.ttl_s).ignore();
            // Ids whose session key has expired (not updated for the TTL).
            p.cmd("ZREMRANGEBYSCORE")
                .arg(&active)
                .arg("-inf")
                .arg(format!("({}", as_of - self.ttl_s as i64 * 1000))
                .ignore();
        }
        let hashes = c
            .presence
            .iter()
            .map(|(d, f, v)| (self.key(&format!("presence:{}", part(d))), f, v))
            .chain(
                c.conflicts
                    .iter()
                    .map(|(d, f, v)| (self.key(&format!("conflicts:{}", part(d))), f, v)),
            )
            .chain(
                c.team
                    .iter()
                    .map(|(pr, d, f, v)| (self.team_key(pr, d.as_deref()), f, v)),
            );
        // One EXPIRE per key and batch, after its writes (same transaction):
        // a team window's figures are many fields of one hash.
        let mut expire: HashMap<String, u64> = HashMap::new();
        for (key, field, v) in hashes {
            match v {
                Some(v) => p.cmd("HSET").arg(&key).arg(field).arg(v),
                None => p.cmd("HDEL").arg(&key).arg(field),
            }
            .ignore();
            expire.entry(key).or_insert(self.ttl_s);
        }
        for WritingDelta {
            summary_id,
            project,
            day,
            user,
            totals: t,
        } in &c.writing
        {
            let key = self.key(&format!("writing:{}", part(project)));
            // Added once per summary: a restore that derives it again (same
            // id) finds it in the project's set and adds nothing.
            let counted = format!("{key}:counted");
            p.once(&counted, summary_id, 4);
            expire.entry(counted).or_insert(self.writing_ttl_s);
            for (metric, n) in [
                ("words", t.words),
                ("sessions", t.sessions),
                ("active_ms", t.active_ms),
                ("flow_ms", t.flow_ms),
            ] {
                p.cmd("HINCRBY")
                    .arg(&key)
                    .arg(format!("{day}|{metric}|{user}"))
                    .arg(n)
                    .ignore();
            }
            expire.entry(key).or_insert(self.writing_ttl_s);
        }
        for (project, day, user) in &c.writing_dropped {
            let key = self.key(&format!("writing:{}", part(project)));
            p.cmd("HDEL").arg(&key);
            for metric in ["words", "sessions", "active_ms", "flow_ms"] {
                p.arg(format!("{day}|{metric}|{user}"));
            }
            p.ignore();
        }
        for (key, ttl) in &expire {
            p.cmd("EXPIRE").arg(key).arg(ttl).ignore();
        }
        p.cmd("SET")
            .arg(self.key("as_of"))
            .arg(as_of)
            .arg("EX")
            .arg(self.ttl_s)
            .ignore();
        let mut inv = WRITE_SCRIPT.key(self.applied_key());
        inv.arg(attempt).arg(self.ttl_s);
        match fence {
            Some(f) => inv.arg(&f.key).arg(f.token),
            None => inv.arg("").arg(""),
        };
        inv.arg(p.into_args());
        let mut conn = self.conn.clone();
        let outcome: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        match (outcome.as_str(), fence) {
            ("views-fenced", Some(f)) => Err(ViewError::Fenced {
                key: f.key.clone(),
                token: f.token,
            }),
            _ => {
                let mut indexed = self.indexed.lock().unwrap_or_else(|p| p.into_inner());
                for (id, owner) in noted {
                    match owner {
                        Some(o) => indexed.insert(id.to_owned(), o),
                        None => indexed.remove(id),
                    };
                }
                Ok(())
            }
        }
    }

    /// Whether write `attempt` was applied. Its reply may be lost after
    /// Redis applied it (a timeout, a dropped connection); retried whole,
    /// its writing deltas (`HINCRBY`) would count twice.
    pub(crate) async fn applied(&self, attempt: u64) -> Result<bool, ViewError> {
        let mut conn = self.conn.clone();
        let last: Option<u64> = redis::cmd("GET")
            .arg(self.applied_key())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(last.is_some_and(|last| last >= attempt))
    }

    async fn as_of_and<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<(T, i64), ViewError> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(self.key("as_of"));
        p.add_command(cmd.clone());
        let mut conn = self.conn.clone();
        let (as_of, v): (Option<i64>, T) = p.query_async(&mut conn).await.map_err(unavailable)?;
        Ok((v, as_of.unwrap_or(0)))
    }

    async fn hash(&self, key: String) -> Result<(HashMap<String, String>, i64), ViewError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        self.as_of_and(&cmd).await
    }

    pub(crate) async fn session(&self, id: &str) -> Result<Fresh<Option<SessionView>>, ViewError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(&format!("session:{}", part(id))));
        let (v, as_of): (Option<String>, i64) = self.as_of_and(&cmd).await?;
        Ok((v.as_deref().and_then(parse), as_of))
    }

    /// Every open session Redis holds: a new writer's cache starts from
    /// them, so a restart or a takeover continues them (their start, their
    /// transitions) instead of making them anew from the next change.
    pub(crate) async fn open_sessions(&self) -> Result<Vec<SessionView>, ViewError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.key("active"))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut open = Vec::new();
        for chunk in ids.chunks(1000) {
            let mut get = redis::cmd("MGET");
            for id in chunk {
                get.arg(self.key(&format!("session:{}", part(id))));
            }
            let values: Vec<Option<String>> =
                get.query_async(&mut conn).await.map_err(unavailable)?;
            open.extend(
                values
                    .iter()
                    .flatten()
                    .filter_map(|s| parse::<SessionView>(s))
                    .filter(|s| !s.ended),
            );
        }
        Ok(open)
    }

    /// The conflicts Redis holds among `wanted` (document, conflict id).
    pub(crate) async fn conflicts_by_id(
        &self,
        wanted: &[(String, String)],
    ) -> Result<Vec<(String, ConflictView)>, ViewError> {
        let mut p = redis::pipe();
        for (doc, id) in wanted {
            p.hget(self.key(&format!("conflicts:{}", part(doc))), id);
        }
        let values: Vec<Option<String>> = p
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(wanted
            .iter()
            .zip(values)
            .filter_map(|((doc, _), v)| Some((doc.clone(), parse(v.as_deref()?)?)))
            .collect())
    }

    fn active_key(&self, scope: &ActiveScope) -> String {
        match scope {
            ActiveScope::All => self.key("active"),
            ActiveScope::User(u) => self.key(&format!("active:user:{}", part(u))),
            ActiveScope::Project(p) => self.key(&format!("active:project:{}", part(p))),
        }
    }

    /// The open sessions of any of `scopes`, most recently updated first,
    /// at most [`ACTIVE_MAX`]: the first of each scope's sorted set, merged
    /// (the newest of a union are among the newest of its parts). The
    /// global set is scored by `updated_at`; a user's or a project's by
    /// when the session was added to it, so of a project with more than
    /// [`ACTIVE_MAX`] open sessions it reads the most recently opened.
    pub(crate) async fn active(
        &self,
        scopes: &[ActiveScope],
    ) -> Result<Fresh<Vec<SessionView>>, ViewError> {
        let mut p = redis::pipe();
        p.cmd("GET").arg(self.key("as_of"));
        for scope in scopes {
            p.cmd("ZREVRANGE")
                .arg(self.active_key(scope))
                .arg(0)
                .arg(ACTIVE_MAX - 1)
                .arg("WITHSCORES");
        }
        let mut conn = self.conn.clone();
        let (as_of, lists): (Option<i64>, Vec<Vec<(String, f64)>>) = {
            let mut v: Vec<redis::Value> = p.query_async(&mut conn).await.map_err(unavailable)?;
            let bad = |e: redis::ParsingError| ViewError::Unavailable(e.to_string());
            let as_of = redis::from_redis_value(v.remove(0)).map_err(bad)?;
            let lists = v
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()
                .map_err(bad)?;
            (as_of, lists)
        };
        let as_of = as_of.unwrap_or(0);
        let mut newest: Vec<(String, f64)> = lists.into_iter().flatten().collect();
        newest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<String> = newest
            .into_iter()
            .filter(|(id, _)| seen.insert(id.clone()))
            .take(ACTIVE_MAX as usize)
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            return Ok((Vec::new(), as_of));
        }
        let mut get = redis::cmd("MGET");
        for id in &ids {
            get.arg(self.key(&format!("session:{}", part(id))));
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = get.query_async(&mut conn).await.map_err(unavailable)?;
        // A session whose key expired (its writer stopped) leaves its id in
        // the set until the next write of it: skip it.
        let mut sessions = values
            .iter()
            .flatten()
            .filter_map(|s| parse::<SessionView>(s))
            .filter(|s| !s.ended)
            .collect::<Vec<_>>();
        // Newest first by the sessions themselves: a user's or a project's
        // index keeps the time a session was added to it.
        sessions.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        Ok((sessions, as_of))
    }

    pub(crate) async fn collaborators(
        &self,
        doc: &str,
    ) -> Result<Fresh<Vec<Collaborator>>, ViewError> {
        let (m, as_of) = self
            .hash(self.key(&format!("presence:{}", part(doc))))
            .await?;
        let mut v: Vec<Collaborator> = m.values().filter_map(|s| parse(s)).collect();
        v.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok((v, as_of))
    }

    pub(crate) async fn conflicts(&self, doc: &str) -> Result<Fresh<Vec<ConflictView>>, ViewError> {
        let (m, as_of) = self
            .hash(self.key(&format!("conflicts:{}", part(doc))))
            .await?;
        let mut v: Vec<ConflictView> = m.values().filter_map(|s| parse(s)).collect();
        v.sort_by(|a, b| a.conflict_id.cmp(&b.conflict_id));
        Ok((v, as_of))
    }

    pub(crate) async fn team(
        &self,
        project: &str,
        doc: Option<&str>,
    ) -> Result<Fresh<Vec<TeamFigure>>, ViewError> {
        let (m, as_of) = self.hash(self.team_key(project, doc)).await?;
        Ok((m.values().filter_map(|s| parse(s)).collect(), as_of))
    }

    pub(crate) async fn writing(
        &self,
        project: &str,
    ) -> Result<Fresh<Vec<(String, String, WritingTotals)>>, ViewError> {
        let (m, as_of) = self
            .hash(self.key(&format!("writing:{}", part(project))))
            .await?;
        let mut rows: std::collections::BTreeMap<(String, String), WritingTotals> =
            Default::default();
        for (field, n) in m {
            let mut parts = field.splitn(3, '|');
            let (Some(day), Some(metric), Some(user)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let n: i64 = n.parse().unwrap_or(0);
            let t = rows.entry((day.to_owned(), user.to_owned())).or_default();
            match metric {
                "words" => t.words = n,
                "sessions" => t.sessions = n,
                "active_ms" => t.active_ms = n,
                "flow_ms" => t.flow_ms = n,
                _ => {}
            }
        }
        Ok((
            rows.into_iter().map(|((d, u), t)| (d, u, t)).collect(),
            as_of,
        ))
    }
}
