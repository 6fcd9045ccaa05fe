//! Where the notifier keeps what must outlive a delivery attempt: Redis when
//! `redis.url` is set (survives restarts), in-process otherwise (not durable,
//! like the embedded log).
//!
//! Redis keys (`P` = `redis.prefix`; ids in keys escaped by
//! [`crate::redis_key::part`]: `%`, `:`, `{`, `}`, `|` as `%25`, `%3A`, …,
//! so user `a:items` no longer names user `a`'s items hash):
//! - `P:notifications:seen:<alert id>` — alert ids already routed (TTL):
//!   derived events re-emitted after a checkpoint restore are dropped.
//! - `P:notifications:users` — hash user → policy state (JSON).
//! - `P:notifications:pending` — hash delivery id → [`Pending`] (JSON).
//! - `P:notifications:done:<delivery id>` — delivered (TTL): never twice.
//! - `P:notifications:dead` — stream of dead letters (id, channel,
//!   recipient, reason, delivery).
//! - `P:notifications:inapp:<user>` — zset id by time; `…:inapp:<user>:items`
//!   hash id → notification JSON; `…:unread:<user>` set of unread ids.
//! - `P:notifications:prefs` — hash user → preferences (JSON);
//!   `…:prefs:seq` counts their changes and `…:prefs:changed` (zset user by
//!   the change's number) tells every instance whose changed since it last
//!   looked ([`Store::prefs_changed_since`]).
//! - `P:notifications:sends` — stream of custom notifications
//!   (`POST /notifications/send`) accepted by any instance and not routed
//!   yet: field `alert` (JSON); the task routes and deletes them.
//! - `P:notifications:applied:<writer>` — the last step of notifier task
//!   `<writer>` (random per task start) that Redis ran (TTL 24 h).
//!
//! In-process, ids are remembered by count (the last 100 000 alert ids and
//! delivered ids) and the newest 10 000 dead letters are kept.
//!
//! Routing an alert commits its seen mark, the users' state and the new
//! pending deliveries in one step, so a crash leaves either all or none.
//!
//! **Steps.** The notifier task's writes (a routing step, a delivery
//! finished, a dead letter) are each one script call ([`STEP`]) that runs
//! only if
//! - the dataflow lease's fence still holds ([`Store::fenced`]): a process
//!   that lost the lease (stalled past its TTL, or replaced) can no longer
//!   write what the new holder already loaded and moves on from, and
//! - no later step of this task ran: a write that reaches Redis after its
//!   retry (held on a dropped connection) is skipped instead of putting
//!   older user state or a finished delivery back.

use super::policy::{Delivery, Preferences, UserState};
use crate::lease::Fence;
use crate::redis_calls::{Calls, run_calls_from};
use crate::redis_conn::PrimaryConnection as ConnectionManager;
use crate::redis_key::part;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A store failure (Redis unreachable, bad JSON).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("the thread that wrote to the store panicked")]
    Panicked,
    #[error(
        "this instance no longer holds the dataflow lease (fence token {token} of {key} is \
         stale): the notifier's write was refused; the new holder delivers"
    )]
    Fenced { key: String, token: i64 },
}

impl schemas::Classify for StoreError {
    fn fault(&self) -> schemas::Fault {
        match self {
            StoreError::Redis(_) => schemas::Fault::External,
            StoreError::Tls(_) => schemas::Fault::Config,
            // Another process runs the dataflow now: nothing to retry here.
            StoreError::Fenced { .. } => schemas::Fault::Internal,
            // What this process wrote does not read back: a bug (or a
            // foreign writer under our prefix).
            StoreError::Json(_) | StoreError::Panicked => schemas::Fault::Internal,
        }
    }
}

/// A delivery waiting for its (next) attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub delivery: Delivery,
    /// Attempts made so far.
    pub attempt: u32,
    /// Not before (ms since the epoch).
    pub next_at_ms: i64,
    pub last_error: Option<String>,
}

/// One stored in-app notification, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InAppNotification {
    pub id: String,
    pub recipient_id: String,
    pub priority: schemas::payload::Priority,
    pub title: String,
    pub body: String,
    pub rule: Option<String>,
    pub suppressed_similar: u64,
    pub kind: super::policy::DeliveryKind,
    pub created_ms: i64,
    #[serde(default)]
    pub read: bool,
}

/// The last `cap` ids (the embedded store's stand-in for keys with a TTL:
/// bounded by count, since it is not durable anyway).
#[derive(Debug, Default)]
struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    const CAP: usize = 100_000;

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            while self.order.len() > Self::CAP {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// Dead letters kept by the embedded store (oldest dropped first).
const MEMORY_DEAD_LETTERS: usize = 10_000;

#[derive(Debug, Default)]
struct Mem {
    seen: Recent,
    users: HashMap<String, String>,
    pending: BTreeMap<String, String>,
    done: Recent,
    dead: VecDeque<serde_json::Value>,
    in_app: HashMap<String, Vec<InAppNotification>>,
    prefs: HashMap<String, String>,
}

/// The store: Redis or in-process.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<Mutex<MemoryStore>>),
    Redis {
        conn: ConnectionManager,
        /// `redis.prefix`.
        prefix: String,
        /// Who writes the steps, and what guards them.
        writer: Arc<Writer>,
    },
}

/// The writer of a store's steps: one task at a time (its steps are
/// numbered in the order it makes them).
#[derive(Debug)]
pub struct Writer {
    /// Random per [`Store::redis`] and [`Store::fenced`]: names its marker.
    id: String,
    /// The last step number handed out.
    step: AtomicU64,
    /// The dataflow lease's fence, when the task runs under it.
    fence: Option<Fence>,
}

impl Writer {
    fn new(fence: Option<Fence>) -> Arc<Writer> {
        Arc::new(Writer {
            id: format!(
                "{:016x}",
                std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8)
            ),
            step: AtomicU64::new(0),
            fence,
        })
    }
}

/// How long a writer's marker outlives its last step (a held write
/// arriving later than that would run).
const MARKER_TTL_S: u64 = 24 * 3600;

/// One step of the notifier task (see the module doc): returns -1 when the
/// lease's fence (`ARGV[1]` key, `ARGV[2]` token; empty: no lease) no
/// longer holds, 0 when this writer's marker (`KEYS[1]`) shows this step
/// (`ARGV[3]`) or a later one ran, else marks it (TTL `ARGV[4]` s), runs
/// the [`Calls`] that follow and returns 1.
static STEP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!(
        r"
if ARGV[1] ~= '' and redis.call('GET', ARGV[1]) ~= ARGV[2] then return -1 end
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last and last >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
{}return 1
",
        run_calls_from(5)
    ))
});

/// Stores an in-app notification once (`KEYS`: the user's sorted set of
/// ids, the hash of bodies, the set of unread ids; `ARGV`: id, time, JSON,
/// how many to keep): a retry of a write that ran leaves it as it is (read,
/// if the user read it). Trims the oldest beyond `keep`, 1,000 per call.
/// Returns 1 when stored, 0 when it was there already.
static IN_APP_ADD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
while over > 0 do
  local old = redis.call('ZRANGE', KEYS[1], 0, math.min(over, 1000) - 1)
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('SREM', KEYS[3], unpack(old))
  over = over - #old
end
return 1
",
    )
});

/// Queues a custom notification unless `ARGV[1]` are waiting already
/// (`KEYS[1]`: the stream; `ARGV[2]`: the alert's JSON). Returns 1 when
/// queued, 0 when full: an accepted send is never trimmed away.
const ENQUEUE_SEND: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'alert', ARGV[2])
return 1
";

/// A preference change: the counter, the hash and the change set in one
/// step (`KEYS`: seq, prefs, changed; `ARGV`: user, JSON).
const PUT_PREFS: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], n, ARGV[1])
return n
";

/// The in-process store (not durable).
#[derive(Debug, Default)]
pub struct MemoryStore(Mem);

type R<T> = Result<T, StoreError>;

impl Store {
    pub fn memory() -> Store {
        Store::Memory(Arc::new(Mutex::new(MemoryStore::default())))
    }

    /// A Redis store (connects lazily; reconnects by itself).
    pub fn redis(url: &str, prefix: &str, tls: &crate::tls::TlsFiles) -> R<Store> {
        let client = crate::tls::redis_client(url, tls)?;
        let conn = ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )?;
        Ok(Store::Redis {
            conn,
            prefix: prefix.to_owned(),
            writer: Writer::new(None),
        })
    }

    /// This store for a new writer task whose steps the dataflow lease's
    /// `fence` guards (`None`: no lease, one instance). The task that runs
    /// beside the dataflow writes through it; nothing else may.
    pub fn fenced(&self, fence: Option<Fence>) -> Store {
        match self {
            Store::Memory(_) => self.clone(),
            Store::Redis { conn, prefix, .. } => Store::Redis {
                conn: conn.clone(),
                prefix: prefix.clone(),
                writer: Writer::new(fence),
            },
        }
    }

    /// Runs `calls` as the writer's next step ([`STEP`]).
    async fn step(conn: &ConnectionManager, prefix: &str, writer: &Writer, calls: Calls) -> R<()> {
        let n = writer.step.fetch_add(1, Ordering::Relaxed) + 1;
        let (fence_key, token) = match &writer.fence {
            Some(f) => (f.key.as_str(), f.token.to_string()),
            None => ("", String::new()),
        };
        let ran: i64 = STEP
            .key(Self::key(prefix, &format!("applied:{}", writer.id)))
            .arg(fence_key)
            .arg(token)
            .arg(n)
            .arg(MARKER_TTL_S)
            .arg(calls.into_args())
            .invoke_async(&mut conn.clone())
            .await?;
        match (ran, &writer.fence) {
            (-1, Some(f)) => Err(StoreError::Fenced {
                key: f.key.clone(),
                token: f.token,
            }),
            _ => Ok(()),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => "embedded",
            Store::Redis { .. } => "redis",
        }
    }

    fn key(prefix: &str, rest: &str) -> String {
        format!("{prefix}:notifications:{rest}")
    }

    fn mem(m: &Arc<Mutex<MemoryStore>>) -> MutexGuard<'_, MemoryStore> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an alert id was routed already (and not expired).
    pub async fn is_seen(&self, id: &str) -> R<bool> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m).0.seen.contains(id)),
            Store::Redis { conn, prefix, .. } => {
                let n: i64 = redis::cmd("EXISTS")
                    .arg(Self::key(prefix, &format!("seen:{}", part(id))))
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(n > 0)
            }
        }
    }

    /// Commits one routing step: the alert's seen mark (if any), changed
    /// user states (`None` = delete) and new pending deliveries, atomically.
    pub async fn commit(
        &self,
        seen: &[String],
        ttl_s: u64,
        users: &[(String, Option<UserState>)],
        pending: &[Pending],
    ) -> R<()> {
        match self {
            Store::Memory(m) => {
                let mut g = Self::mem(m);
                for id in seen {
                    g.0.seen.insert(id);
                }
                for (u, s) in users {
                    match s {
                        Some(s) => {
                            g.0.users.insert(u.clone(), serde_json::to_string(s)?);
                        }
                        None => {
                            g.0.users.remove(u);
                        }
                    }
                }
                for p in pending {
                    g.0.pending
                        .insert(p.delivery.id.clone(), serde_json::to_string(p)?);
                }
                Ok(())
            }
            Store::Redis {
                conn,
                prefix,
                writer,
            } => {
                let mut calls = Calls::default();
                for id in seen {
                    calls
                        .cmd("SET")
                        .arg(Self::key(prefix, &format!("seen:{}", part(id))))
                        .arg(1)
                        .arg("EX")
                        .arg(ttl_s.max(1));
                }
                let users_key = Self::key(prefix, "users");
                for (u, s) in users {
                    match s {
                        Some(s) => calls
                            .cmd("HSET")
                            .arg(&users_key)
                            .arg(u)
                            .arg(serde_json::to_string(s)?),
                        None => calls.cmd("HDEL").arg(&users_key).arg(u),
                    };
                }
                let pending_key = Self::key(prefix, "pending");
                for p in pending {
                    calls
                        .cmd("HSET")
                        .arg(&pending_key)
                        .arg(&p.delivery.id)
                        .arg(serde_json::to_string(p)?);
                }
                if calls.is_empty() {
                    return Ok(());
                }
                Self::step(conn, prefix, writer, calls).await
            }
        }
    }

    /// Every persisted user state.
    pub async fn load_users(&self) -> R<Vec<(String, UserState)>> {
        let raw: Vec<(String, String)> = match self {
            Store::Memory(m) => Self::mem(m)
                .0
                .users
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Store::Redis { conn, prefix, .. } => {
                redis::cmd("HGETALL")
                    .arg(Self::key(prefix, "users"))
                    .query_async(&mut conn.clone())
                    .await?
            }
        };
        raw.into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str(&v)?)))
            .collect()
    }

    /// Every pending delivery.
    pub async fn load_pending(&self) -> R<Vec<Pending>> {
        let raw: Vec<(String, String)> = match self {
            Store::Memory(m) => Self::mem(m)
                .0
                .pending
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Store::Redis { conn, prefix, .. } => {
                redis::cmd("HGETALL")
                    .arg(Self::key(prefix, "pending"))
                    .query_async(&mut conn.clone())
                    .await?
            }
        };
        raw.into_iter()
            .map(|(_, v)| Ok(serde_json::from_str(&v)?))
            .collect()
    }

    /// Saves a pending delivery (after a failed attempt).
    pub async fn put_pending(&self, p: &Pending) -> R<()> {
        self.commit(&[], 1, &[], std::slice::from_ref(p)).await
    }

    /// Whether a delivery id was delivered already.
    pub async fn is_done(&self, id: &str) -> R<bool> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m).0.done.contains(id)),
            Store::Redis { conn, prefix, .. } => {
                let n: i64 = redis::cmd("EXISTS")
                    .arg(Self::key(prefix, &format!("done:{}", part(id))))
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(n > 0)
            }
        }
    }

    /// Marks a delivery delivered and drops it from the pending set.
    pub async fn finish(&self, id: &str, ttl_s: u64) -> R<()> {
        match self {
            Store::Memory(m) => {
                let mut g = Self::mem(m);
                g.0.done.insert(id);
                g.0.pending.remove(id);
                Ok(())
            }
            Store::Redis {
                conn,
                prefix,
                writer,
            } => {
                let mut calls = Calls::default();
                calls
                    .cmd("SET")
                    .arg(Self::key(prefix, &format!("done:{}", part(id))))
                    .arg(1)
                    .arg("EX")
                    .arg(ttl_s.max(1));
                calls.cmd("HDEL").arg(Self::key(prefix, "pending")).arg(id);
                Self::step(conn, prefix, writer, calls).await
            }
        }
    }

    /// Moves a delivery to the dead letters with its reason.
    pub async fn dead_letter(&self, p: &Pending, reason: &str) -> R<()> {
        let d = &p.delivery;
        let json = serde_json::to_string(p)?;
        match self {
            Store::Memory(m) => {
                let mut g = Self::mem(m);
                g.0.pending.remove(&d.id);
                if g.0.dead.len() >= MEMORY_DEAD_LETTERS {
                    g.0.dead.pop_front();
                }
                g.0.dead.push_back(serde_json::json!({
                    "id": d.id, "channel": d.channel.as_str(), "recipient": d.recipient,
                    "reason": reason, "delivery": json,
                }));
                Ok(())
            }
            Store::Redis {
                conn,
                prefix,
                writer,
            } => {
                let mut calls = Calls::default();
                calls
                    .cmd("XADD")
                    .arg(Self::key(prefix, "dead"))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(100_000)
                    .arg("*")
                    .arg("id")
                    .arg(&d.id)
                    .arg("channel")
                    .arg(d.channel.as_str())
                    .arg("recipient")
                    .arg(&d.recipient)
                    .arg("reason")
                    .arg(reason)
                    .arg("delivery")
                    .arg(json);
                calls
                    .cmd("HDEL")
                    .arg(Self::key(prefix, "pending"))
                    .arg(&d.id);
                Self::step(conn, prefix, writer, calls).await
            }
        }
    }

    /// The dead letters (oldest first): `{id, channel, recipient, reason, delivery}`.
    pub async fn dead_letters(&self) -> R<Vec<serde_json::Value>> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m).0.dead.iter().cloned().collect()),
            Store::Redis { conn, prefix, .. } => {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(Self::key(prefix, "dead"))
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(reply
                    .ids
                    .into_iter()
                    .map(|e| {
                        let mut o = serde_json::Map::new();
                        for (k, v) in e.map {
                            if let Ok(s) = redis::from_redis_value::<String>(v) {
                                o.insert(k, s.into());
                            }
                        }
                        serde_json::Value::Object(o)
                    })
                    .collect())
            }
        }
    }

    /// Stores an in-app notification (unread), keeping the newest `keep`.
    pub async fn in_app_add(&self, n: &InAppNotification, keep: usize) -> R<()> {
        let user = &n.recipient_id;
        match self {
            Store::Memory(m) => {
                let mut g = Self::mem(m);
                let list = g.0.in_app.entry(user.clone()).or_default();
                if !list.iter().any(|x| x.id == n.id) {
                    list.push(n.clone());
                }
                if list.len() > keep {
                    let extra = list.len() - keep;
                    list.drain(..extra);
                }
                Ok(())
            }
            Store::Redis { conn, prefix, .. } => {
                let zset = Self::key(prefix, &format!("inapp:{}", part(user)));
                let items = format!("{zset}:items");
                let unread = Self::key(prefix, &format!("unread:{}", part(user)));
                let _: i64 = IN_APP_ADD
                    .key(&zset)
                    .key(&items)
                    .key(&unread)
                    .arg(&n.id)
                    .arg(n.created_ms)
                    .arg(serde_json::to_string(n)?)
                    .arg(keep)
                    .invoke_async(&mut conn.clone())
                    .await?;
                Ok(())
            }
        }
    }

    /// A page of a user's in-app notifications, newest first, and the total
    /// matching the filter.
    pub async fn in_app_list(
        &self,
        user: &str,
        unread_only: bool,
        offset: usize,
        limit: usize,
    ) -> R<(Vec<InAppNotification>, usize)> {
        let all: Vec<InAppNotification> = match self {
            Store::Memory(m) => {
                let g = Self::mem(m);
                let mut v = g.0.in_app.get(user).cloned().unwrap_or_default();
                v.reverse();
                v
            }
            Store::Redis { conn, prefix, .. } => {
                let zset = Self::key(prefix, &format!("inapp:{}", part(user)));
                let mut c = conn.clone();
                let ids: Vec<String> = redis::cmd("ZREVRANGE")
                    .arg(&zset)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await?;
                if ids.is_empty() {
                    return Ok((Vec::new(), 0));
                }
                let unread: HashSet<String> = redis::cmd("SMEMBERS")
                    .arg(Self::key(prefix, &format!("unread:{}", part(user))))
                    .query_async(&mut c)
                    .await?;
                let bodies: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(format!("{zset}:items"))
                    .arg(&ids)
                    .query_async(&mut c)
                    .await?;
                let mut out = Vec::new();
                for (id, b) in ids.iter().zip(bodies) {
                    if let Some(b) = b {
                        let mut n: InAppNotification = serde_json::from_str(&b)?;
                        n.read = !unread.contains(id);
                        out.push(n);
                    }
                }
                out
            }
        };
        let filtered: Vec<InAppNotification> = all
            .into_iter()
            .filter(|n| !unread_only || !n.read)
            .collect();
        let total = filtered.len();
        Ok((
            filtered.into_iter().skip(offset).take(limit).collect(),
            total,
        ))
    }

    /// Marks one notification read; `false` when the user has no such id.
    pub async fn in_app_mark_read(&self, user: &str, id: &str) -> R<bool> {
        match self {
            Store::Memory(m) => {
                let mut g = Self::mem(m);
                match g
                    .0
                    .in_app
                    .get_mut(user)
                    .and_then(|l| l.iter_mut().find(|n| n.id == id))
                {
                    Some(n) => {
                        n.read = true;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            Store::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                let score: Option<f64> = redis::cmd("ZSCORE")
                    .arg(Self::key(prefix, &format!("inapp:{}", part(user))))
                    .arg(id)
                    .query_async(&mut c)
                    .await?;
                if score.is_none() {
                    return Ok(false);
                }
                let _: i64 = redis::cmd("SREM")
                    .arg(Self::key(prefix, &format!("unread:{}", part(user))))
                    .arg(id)
                    .query_async(&mut c)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Queues a custom notification for the notifier task, wherever it
    /// runs (`Ok(false)`: `cap` are waiting already). In Redis it is
    /// durable once this returns; in-process there is no store to queue
    /// in (the caller hands it to the local task).
    pub async fn enqueue_send(&self, alert: &super::policy::Alert, cap: usize) -> R<bool> {
        let Store::Redis { conn, prefix, .. } = self else {
            return Ok(false);
        };
        let queued: i64 = redis::Script::new(ENQUEUE_SEND)
            .key(Self::key(prefix, "sends"))
            .arg(cap.max(1))
            .arg(serde_json::to_string(alert)?)
            .invoke_async(&mut conn.clone())
            .await?;
        Ok(queued == 1)
    }

    /// Queues alerts the dataflow derived and the task has not routed yet
    /// with the custom sends (never refused for room: a checkpoint counts
    /// them done once this returns).
    pub async fn enqueue_unrouted(&self, alerts: &[super::policy::Alert]) -> R<()> {
        let Store::Redis { conn, prefix, .. } = self else {
            return Ok(());
        };
        let key = Self::key(prefix, "sends");
        let mut p = redis::pipe();
        p.atomic();
        for a in alerts {
            p.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("alert")
                .arg(serde_json::to_string(a)?)
                .ignore();
        }
        let () = p.query_async(&mut conn.clone()).await?;
        Ok(())
    }

    /// The oldest queued custom notifications (entry id, alert; `None`: an
    /// entry that does not read back as one), at most `count`.
    pub async fn queued_sends(
        &self,
        count: usize,
    ) -> R<Vec<(String, Option<super::policy::Alert>)>> {
        let Store::Redis { conn, prefix, .. } = self else {
            return Ok(Vec::new());
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(Self::key(prefix, "sends"))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|e| {
                let alert = e
                    .get::<String>("alert")
                    .and_then(|j| serde_json::from_str(&j).ok());
                (e.id, alert)
            })
            .collect())
    }

    /// Deletes queued custom notifications that were routed (a step of the
    /// task: fenced like the others).
    pub async fn sends_routed(&self, ids: &[String]) -> R<()> {
        let Store::Redis {
            conn,
            prefix,
            writer,
        } = self
        else {
            return Ok(());
        };
        if ids.is_empty() {
            return Ok(());
        }
        let mut calls = Calls::default();
        calls.cmd("XDEL").arg(Self::key(prefix, "sends")).arg(ids);
        Self::step(conn, prefix, writer, calls).await
    }

    /// Every stored preference, and a change number they include at least
    /// (read first: a change made while they are read is seen again by
    /// [`Store::prefs_changed_since`]).
    pub async fn prefs_all(&self) -> R<(Vec<(String, Preferences)>, u64)> {
        let (raw, seq): (Vec<(String, String)>, u64) = match self {
            Store::Memory(m) => (
                Self::mem(m)
                    .0
                    .prefs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                0,
            ),
            Store::Redis { conn, prefix, .. } => {
                let mut c = conn.clone();
                let seq: Option<u64> = redis::cmd("GET")
                    .arg(Self::key(prefix, "prefs:seq"))
                    .query_async(&mut c)
                    .await?;
                let raw = redis::cmd("HGETALL")
                    .arg(Self::key(prefix, "prefs"))
                    .query_async(&mut c)
                    .await?;
                (raw, seq.unwrap_or(0))
            }
        };
        let all = raw
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str(&v)?)))
            .collect::<R<_>>()?;
        Ok((all, seq))
    }

    /// The preferences changed after change number `since` (by any
    /// instance sharing the store), and the latest change number among
    /// them (`since` when none). In-process there is one instance: none.
    pub async fn prefs_changed_since(&self, since: u64) -> R<(Vec<(String, Preferences)>, u64)> {
        let Store::Redis { conn, prefix, .. } = self else {
            return Ok((Vec::new(), since));
        };
        let mut c = conn.clone();
        let changed: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(Self::key(prefix, "prefs:changed"))
            .arg(format!("({since}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await?;
        if changed.is_empty() {
            return Ok((Vec::new(), since));
        }
        let latest = changed.iter().map(|(_, n)| *n).max().unwrap_or(since);
        let users: Vec<&String> = changed.iter().map(|(u, _)| u).collect();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(Self::key(prefix, "prefs"))
            .arg(&users)
            .query_async(&mut c)
            .await?;
        let mut out = Vec::with_capacity(users.len());
        for (u, v) in users.into_iter().zip(values) {
            if let Some(v) = v {
                out.push((u.clone(), serde_json::from_str(&v)?));
            }
        }
        Ok((out, latest))
    }

    /// Stores a user's preferences; every instance sharing the store sees
    /// the change at its next [`Store::prefs_changed_since`].
    pub async fn prefs_put(&self, user: &str, p: &Preferences) -> R<()> {
        let json = serde_json::to_string(p)?;
        match self {
            Store::Memory(m) => {
                Self::mem(m).0.prefs.insert(user.to_owned(), json);
                Ok(())
            }
            Store::Redis { conn, prefix, .. } => {
                let _: i64 = redis::Script::new(PUT_PREFS)
                    .key(Self::key(prefix, "prefs:seq"))
                    .key(Self::key(prefix, "prefs"))
                    .key(Self::key(prefix, "prefs:changed"))
                    .arg(user)
                    .arg(json)
                    .invoke_async(&mut conn.clone())
                    .await?;
                Ok(())
            }
        }
    }
}
