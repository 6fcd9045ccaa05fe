//! Redis Streams: the durable log.
//!
//! **Layout.** One stream per category and shard:
//! `<prefix>:events:<category>:<shard>`, the shard chosen by a stable hash of
//! the event's partition key (DESIGN.md), so all events of one key land in
//! one stream in order, and consumers can scale out by stream. An entry is
//! *packed*: it holds up to [`PACK_EVENTS`] events of one append to one
//! stream, in order (`events`: each event's Avro binary of the envelope
//! schema `inkstream.Event`, framed as an Avro `bytes` value, one after
//! another), and the caller namespace (`ns`). Readers hand out one
//! [`LogEntry`] per event and acknowledge the entry as a whole. Entries
//! written before 2026-12-06 hold one event each (`id`, `event`, `ns`, and
//! before 2026-12 `type`); readers read both.
//!
//! **Appends** are one round trip per batch: one Lua script call
//! (`append.rs`) that stores each event once per caller namespace and
//! dedup window. Ids are remembered in sets per namespace and time bucket
//! (`<prefix>:ids:<len(ns)>:<ns>:<bucket>`, bucket = Redis time ÷ window):
//! the script looks the batch's ids up in the current and the previous
//! bucket (one SMISMEMBER each per batch, the previous one only if it
//! exists), XADDs the new ones (one XADD per packed entry) and records them
//! in the current bucket (one SADD per batch). A bucket expires as a whole
//! at the end of the bucket after it, so an id is remembered at least one
//! window and at most two. From 2026-12-03 to 2026-12-06 the buckets were
//! hashes (`<prefix>:idem:…`, id → `1`: a set costs Redis less per id);
//! while such a bucket exists (at most two windows after the upgrade) it is
//! looked up too. The namespace is length-prefixed in the key, so
//! no namespace (partly chosen by callers) can reach another's ids. The
//! script runs atomically, so a crash can never leave an id recorded
//! without its event or an event without its id; a retried batch after a
//! timeout is stored exactly once. Ingest answers only after the script
//! returned. Before the buckets (until 2026-12) each id was a key of its
//! own (`<prefix>:dedup:<ns>:<id>`, SET NX PX): on a log that has entries
//! when this version first starts, those keys are also checked for one
//! window (marker `<prefix>:idem:legacy-until`). All instances must be
//! upgraded together: a version before packing reads a packed entry as
//! undecodable.
//!
//! **Consumers** use consumer groups (XREADGROUP / XACK); entries a stopped
//! consumer left pending are claimed by another after a visibility timeout
//! (XPENDING IDLE + XCLAIM). Blocking reads carry
//! a short timeout so shutdown is prompt. Writes and blocking reads use
//! separate connections: a `BLOCK`ed read on a multiplexed connection would
//! stall every append queued behind it.
//!
//! **Trimming** ([`RedisLog::trim`]) removes only entries that every required
//! consumer group has acknowledged and that are older than the retention.

mod append;
pub mod persistence;
mod query;

use super::entry::{
    EntryRef, ForwardEntry, IdForm, LogEntry, Part, StoredEvent, Undecodable, stream_name,
};
use super::error::LogError;
use crate::redis_conn::PrimaryConnection as ConnectionManager;
use redis::aio::ConnectionManagerConfig;
use schemas::{Category, Event};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the Redis log.
#[derive(Debug, Clone)]
pub struct RedisLogConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Key prefix of every stream (default `inkstream`).
    pub prefix: String,
    /// Streams per category (default 8). Changing it for an existing log
    /// moves keys to other streams: per-key order then holds only for new events.
    pub shards: u32,
    /// How long one command may take before the log counts as unavailable.
    pub response_timeout: Duration,
    /// How long an event id is remembered for deduplication (default 24 h).
    pub dedup_window: Duration,
    /// `redis.tls` (used with `rediss://`).
    pub tls: crate::tls::TlsFiles,
    /// Replicas that must confirm an append (`WAIT`) before it counts as
    /// stored (default 0).
    pub min_replica_acks: u32,
    /// How long an append waits for them (default 1 s).
    pub replica_ack_timeout: Duration,
}

impl RedisLogConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RedisLogConfig {
            url: url.into(),
            prefix: "inkstream".into(),
            shards: 8,
            response_timeout: Duration::from_secs(2),
            dedup_window: Duration::from_secs(24 * 3600),
            tls: Default::default(),
            min_replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
        }
    }
}

/// The Redis Streams log; clones share connections.
#[derive(Clone)]
pub struct RedisLog {
    writer: ConnectionManager,
    reader: ConnectionManager,
    /// All streams, category-major: index = category × shards + shard.
    streams: Arc<[Arc<str>]>,
    shards: u32,
    prefix: Arc<str>,
    dedup_window_ms: u64,
    /// `min_replica_acks` and `replica_ack_timeout` of the config.
    replicas: crate::redis_conn::ReplicaAcks,
}

/// Whether the server refused the command itself (not allowed to this
/// user, renamed, unknown), rather than failing to answer.
fn refused(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.to_string())
}

impl RedisLog {
    /// Connects (lazily reconnecting later) to Redis.
    pub async fn connect(config: &RedisLogConfig) -> Result<RedisLog, LogError> {
        let client = crate::tls::redis_client(&config.url, &config.tls)
            .map_err(|e| LogError::Unavailable(format!("invalid redis settings: {e}")))?;
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let writer = ConnectionManager::new_with_config(
            client.clone(),
            base.clone()
                .set_response_timeout(Some(config.response_timeout)),
        )
        .await
        .map_err(unavailable)?;
        // Blocking reads wait up to their BLOCK time on top of the usual answer time.
        let reader = ConnectionManager::new_with_config(
            client,
            base.set_response_timeout(Some(config.response_timeout + Duration::from_secs(5))),
        )
        .await
        .map_err(unavailable)?;
        let shards = config.shards.max(1);
        let streams = Category::ALL
            .iter()
            .flat_map(|c| {
                (0..shards).map(move |s| Arc::<str>::from(stream_name(&config.prefix, *c, s)))
            })
            .collect();
        let log = RedisLog {
            writer,
            reader,
            streams,
            shards,
            prefix: config.prefix.as_str().into(),
            dedup_window_ms: config.dedup_window.as_millis().max(1) as u64,
            replicas: crate::redis_conn::ReplicaAcks {
                needed: config.min_replica_acks,
                timeout: config.replica_ack_timeout,
            },
        };
        log.refuse_cluster().await?;
        log.mark_legacy_window().await?;
        Ok(log)
    }

    /// A Redis Cluster cannot hold the log: the append script reads and
    /// writes keys of several hash slots (the streams of a batch, the dedup
    /// sets), which a cluster refuses (`CROSSSLOT`) or redirects (`MOVED`).
    /// Said at connect, naming the setting, instead of as the first failing
    /// command's error.
    async fn refuse_cluster(&self) -> Result<(), LogError> {
        let mut conn = self.writer.clone();
        let info: String = match redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
        {
            Ok(info) => info,
            // INFO refused (an ACL user without @dangerous, a managed
            // service's command list): not checked, as before the check.
            Err(e) if refused(&e) => {
                tracing::debug!(error = %e, "INFO cluster refused; not checking for a Redis Cluster");
                return Ok(());
            }
            Err(e) => return Err(unavailable(e)),
        };
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Err(LogError::Unsupported(
                "redis.url reaches a Redis Cluster (cluster_enabled:1); the log needs a standalone \
                 or Sentinel-managed primary (its append script touches keys of several hash slots)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Ids stored by a version before the dedup buckets (one key per id,
    /// `<prefix>:dedup:<ns>:<id>`) are still checked for one window after
    /// the first start of this version on a log that already has entries;
    /// on a new log never. The marker holds the end of that time (ms, Redis
    /// clock; 0 = none) and is written once.
    async fn mark_legacy_window(&self) -> Result<(), LogError> {
        let mut conn = self.writer.clone();
        let marker = legacy_marker(&self.prefix);
        let set: bool = redis::cmd("EXISTS")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if set {
            return Ok(());
        }
        let existing: u64 = redis::cmd("EXISTS")
            .arg(self.streams.iter().map(|s| &**s).collect::<Vec<&str>>())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let until = if existing > 0 {
            secs * 1000 + micros / 1000 + self.dedup_window_ms
        } else {
            0
        };
        let _: Option<String> = redis::cmd("SET")
            .arg(&marker)
            .arg(until)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The stream an event belongs to.
    pub fn stream_for(&self, event: &Event) -> &Arc<str> {
        &self.streams[self.stream_index(event)]
    }

    fn stream_index(&self, event: &Event) -> usize {
        let c = Category::ALL
            .iter()
            .position(|c| *c == event.category())
            .unwrap_or(0);
        let shard = (schemas::stable_hash(event.partition_key()) % u64::from(self.shards)) as usize;
        c * self.shards as usize + shard
    }

    fn intern(&self, stream: &str) -> Arc<str> {
        self.streams
            .iter()
            .find(|s| ***s == *stream)
            .cloned()
            .unwrap_or_else(|| Arc::from(stream))
    }

    pub async fn ensure_group(&self, group: &str) -> Result<(), LogError> {
        let mut conn = self.writer.clone();
        for stream in self.streams.iter() {
            let res: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&**stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match res {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    pub async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.read_new_as(group, consumer, count, block).await
    }

    pub(crate) async fn read_new_as<T: ReadAs>(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<T>, LogError> {
        let mut batch: Vec<T> = self
            .read_group_of(group, consumer, count, Some(block), ">", &self.streams)
            .await?;
        if !batch.is_empty() {
            // A blocked XREADGROUP is woken by one stream and answers with
            // that stream's entries only; the other streams may have been
            // written in the same instant (one ingest batch spans many).
            // Take theirs too, without blocking, so that a batch is a
            // snapshot across streams: the dataflow keeps a watermark per
            // stream, and a stream first seen a batch later would find it
            // moved on. (`count` stays a bound per stream.)
            let answered: std::collections::HashSet<&str> =
                batch.iter().map(|e| &**e.stream()).collect();
            let others: Vec<Arc<str>> = self
                .streams
                .iter()
                .filter(|s| !answered.contains(&***s))
                .cloned()
                .collect();
            if !others.is_empty() {
                let rest = self
                    .read_group_of(group, consumer, count, None, ">", &others)
                    .await?;
                batch.extend(rest);
            }
        }
        Ok(batch)
    }

    pub async fn read_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.read_pending_after(group, consumer, count, &HashMap::new())
            .await
    }

    /// One page of `consumer`'s pending entries: per stream, those after the
    /// id in `after` (from the start where absent).
    pub async fn read_pending_after(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        after: &HashMap<Arc<str>, String>,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.read_pending_after_as(group, consumer, count, after)
            .await
    }

    pub(crate) async fn read_pending_after_as<T: ReadAs>(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        after: &HashMap<Arc<str>, String>,
    ) -> Result<Vec<T>, LogError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        cmd.arg("STREAMS");
        for s in self.streams.iter() {
            cmd.arg(&**s);
        }
        for s in self.streams.iter() {
            cmd.arg(after.get(s).map(String::as_str).unwrap_or("0"));
        }
        self.run_read(cmd).await
    }

    /// `XREADGROUP` over `streams` only.
    async fn read_group_of<T: ReadAs>(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
        from: &str,
        streams: &[Arc<str>],
    ) -> Result<Vec<T>, LogError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS");
        for s in streams {
            cmd.arg(&**s);
        }
        for _ in streams {
            cmd.arg(from);
        }
        self.run_read(cmd).await
    }

    async fn run_read<T: ReadAs>(&self, cmd: redis::Cmd) -> Result<Vec<T>, LogError> {
        let mut conn = self.reader.clone();
        let reply: redis::Value = cmd.query_async(&mut conn).await.map_err(unavailable)?;
        let streams = match reply {
            redis::Value::Nil => return Ok(Vec::new()),
            redis::Value::Map(m) => m,
            redis::Value::Array(a) => a
                .into_iter()
                .map(|kv| pair(kv).ok_or_else(|| bad_reply("stream")))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad_reply("XREADGROUP")),
        };
        let mut out = Vec::new();
        let mut last_ns = None;
        for (key, entries) in streams {
            let stream = self.intern(bulk_str(&key).ok_or_else(|| bad_reply("stream name"))?);
            let redis::Value::Array(entries) = entries else {
                return Err(bad_reply("entries"));
            };
            out.reserve(entries.len());
            for entry in entries {
                entry_of(&stream, entry, &mut last_ns, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Claims up to `count` entries per stream that have been pending with
    /// another consumer for at least `min_idle` (a consumer that stopped), for
    /// `consumer`. Its own pending entries are never claimed: they may still
    /// be in flight in its dataflow. (XPENDING … IDLE, then XCLAIM.)
    pub async fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.claim_idle_as(group, consumer, min_idle, count).await
    }

    pub(crate) async fn claim_idle_as<T: ReadAs>(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<T>, LogError> {
        let mut conn = self.reader.clone();
        let idle_ms = min_idle.as_millis() as u64;
        let mut out = Vec::new();
        for stream in self.streams.iter() {
            let pending: redis::RedisResult<Vec<(String, String, u64, u64)>> =
                redis::cmd("XPENDING")
                    .arg(&**stream)
                    .arg(group)
                    .arg("IDLE")
                    .arg(idle_ms)
                    .arg("-")
                    .arg("+")
                    .arg(count)
                    .query_async(&mut conn)
                    .await;
            let pending = match pending {
                Ok(p) => p,
                // The group does not exist on this stream yet.
                Err(e) if e.code() == Some("NOGROUP") => continue,
                Err(e) => return Err(unavailable(e)),
            };
            let ids: Vec<&str> = pending
                .iter()
                .filter(|(_, owner, _, _)| owner != consumer)
                .map(|(id, _, _, _)| id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let claimed: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
                .arg(&**stream)
                .arg(group)
                .arg(consumer)
                .arg(idle_ms)
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for entry in claimed.ids {
                let at = EntryRef {
                    stream: stream.clone(),
                    id: entry.id.into(),
                };
                entries_of_map(at, &entry.map, &mut out);
            }
        }
        Ok(out)
    }

    pub async fn ack(&self, group: &str, entries: &[EntryRef]) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
        for e in entries {
            let ids = by_stream.entry(&e.stream).or_default();
            // The events of a packed entry come one after another: its id once.
            if ids.last() != Some(&&*e.id) {
                ids.push(&e.id);
            }
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in by_stream {
            pipe.cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
        }
        let mut conn = self.writer.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    pub async fn ping(&self) -> Result<(), LogError> {
        match self.writer.is_primary().await {
            Ok(true) => Ok(()),
            // A replica answers PING but refuses every append: not ready
            // (its connection is replaced, see `redis_conn`).
            Ok(false) => Err(LogError::Unavailable(
                "the Redis server reached is a replica (read-only): a failover? reconnecting"
                    .into(),
            )),
            // ROLE refused (a managed service's command list): PING then.
            Err(e) if refused(&e) => {
                let mut conn = self.writer.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Trims every stream below the oldest entry that one of `groups` still
    /// needs (pending, or not yet delivered), and never newer than
    /// `keep_after_ms` (a retention floor, ms since the epoch). A stream on
    /// which a required group does not exist yet is not trimmed. Returns the
    /// number of entries removed.
    pub async fn trim(&self, groups: &[String], keep_after_ms: u64) -> Result<u64, LogError> {
        let mut conn = self.writer.clone();
        let mut removed = 0;
        for stream in self.streams.iter() {
            let infos: Vec<HashMap<String, redis::Value>> = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&**stream)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                Err(e) if e.code() == Some("ERR") => continue, // no such stream yet
                Err(e) => return Err(unavailable(e)),
            };
            let mut floor = format!("{keep_after_ms}-0");
            let mut ok = true;
            for g in groups {
                let Some(info) = infos
                    .iter()
                    .find(|i| value_str(i.get("name")) == Some(g.clone()))
                else {
                    ok = false;
                    break;
                };
                let pending = match info.get("pending") {
                    Some(redis::Value::Int(n)) => *n,
                    _ => 0,
                };
                let need = if pending > 0 {
                    oldest_pending(&mut conn, stream, g).await?
                } else {
                    value_str(info.get("last-delivered-id"))
                };
                match need {
                    Some(id) if id_lt(&id, &floor) => floor = id,
                    Some(_) => {}
                    None => ok = false,
                }
            }
            if !ok {
                continue;
            }
            let n: u64 = redis::cmd("XTRIM")
                .arg(&**stream)
                .arg("MINID")
                .arg(&floor)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            removed += n;
        }
        Ok(removed)
    }

    /// How far `group` is behind over every stream: entries not acknowledged
    /// (XINFO GROUPS `lag` + `pending`), and the ms part of the oldest one's id.
    ///
    /// Redis derives `lag` from the group's `entries-read` counter, which is
    /// not exact after a restart that reloads the AOF (the 1 M chaos run: a
    /// group read to the stream's last id, nothing pending, `lag` 10,000 on
    /// each of 8 streams for good) and is nil when it cannot be computed.
    /// So the unread part is checked against the stream itself: no entry
    /// after `last-delivered-id` means 0, whatever `lag` says; a nil `lag`
    /// with entries after it counts them (up to [`LAG_COUNT_CAP`] per stream).
    pub async fn group_lag(&self, group: &str) -> Result<(u64, Option<u64>), LogError> {
        let mut conn = self.writer.clone();
        let mut total = 0u64;
        let mut oldest: Option<u64> = None;
        for stream in self.streams.iter() {
            let infos: Vec<HashMap<String, redis::Value>> = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&**stream)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                Err(e) if e.code() == Some("ERR") => continue,
                Err(e) => return Err(unavailable(e)),
            };
            let Some(info) = infos
                .iter()
                .find(|i| value_str(i.get("name")).as_deref() == Some(group))
            else {
                continue;
            };
            let int = |k: &str| match info.get(k) {
                Some(redis::Value::Int(n)) => Some(*n as u64),
                _ => None,
            };
            let pending = int("pending").unwrap_or(0);
            let reported = int("lag");
            // The first unread entry, if any (see above: `lag` alone may be stale).
            let (lag, next_unread) = if reported == Some(0) {
                (0, None)
            } else {
                let last = value_str(info.get("last-delivered-id")).unwrap_or_else(|| "0-0".into());
                let count = if reported.is_some() { 1 } else { LAG_COUNT_CAP };
                let unread: Vec<(String, redis::Value)> = redis::cmd("XRANGE")
                    .arg(&**stream)
                    .arg(format!("({last}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let lag = match (reported, unread.is_empty()) {
                    (_, true) => 0,
                    (Some(n), false) => n,
                    (None, false) => unread.len() as u64,
                };
                (lag, unread.into_iter().next().map(|(id, _)| id))
            };
            total += pending + lag;
            let first = if pending > 0 {
                oldest_pending(&mut conn, stream, group).await?
            } else {
                next_unread
            };
            if let Some(ms) = first.and_then(|id| id.split('-').next().and_then(|m| m.parse().ok()))
            {
                oldest = Some(oldest.map_or(ms, |o: u64| o.min(ms)));
            }
        }
        Ok((total, oldest))
    }

    /// Every stream name, category-major.
    pub fn streams(&self) -> &[Arc<str>] {
        &self.streams
    }
}

/// At most this many unread entries are counted per stream when Redis
/// cannot tell a group's lag (a lower bound beyond it).
const LAG_COUNT_CAP: u64 = 10_000;

/// The key prefix of namespace `ns`'s dedup buckets (sets of ids): the
/// namespace is length-prefixed, so no namespace (which the caller partly
/// chooses) can produce another's keys, whatever characters it holds.
fn dedup_prefix(prefix: &str, ns: &str) -> String {
    format!("{prefix}:ids:{}:{ns}:", ns.len())
}

/// The same for the buckets of the layout before sets (2026-12-03 to
/// 2026-12-06: hashes, id → `1`), still looked up while they exist (at most
/// two windows after an upgrade).
fn hash_dedup_prefix(prefix: &str, ns: &str) -> String {
    format!("{prefix}:idem:{}:{ns}:", ns.len())
}

/// Until when (ms, Redis clock) ids of the previous dedup layout are checked.
fn legacy_marker(prefix: &str) -> String {
    format!("{prefix}:idem:legacy-until")
}

/// The smallest id pending in `group` on `stream` (XPENDING summary:
/// `[count, smallest id, greatest id, consumers]`).
async fn oldest_pending(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<Option<String>, LogError> {
    let summary: (i64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .map_err(unavailable)?;
    Ok(summary.1)
}

fn value_str(v: Option<&redis::Value>) -> Option<String> {
    match v? {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Compares two stream ids (`ms-seq`).
fn id_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> (u64, u64) {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) < parse(b)
}

fn bad_reply(what: &str) -> LogError {
    LogError::Protocol(format!("unexpected shape of a stream reply ({what})"))
}

/// A two-element array as a pair.
fn pair(v: redis::Value) -> Option<(redis::Value, redis::Value)> {
    match v {
        redis::Value::Array(a) if a.len() == 2 => {
            let mut a = a.into_iter();
            Some((a.next()?, a.next()?))
        }
        _ => None,
    }
}

fn bulk_str(v: &redis::Value) -> Option<&str> {
    match v {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// One `[id, [field, value, …]]` of a read reply, decoded straight from the
/// reply into `out`: no map per entry, and the namespace shared with the
/// previous entry when it is the same (`last_ns`). A packed entry (`events`)
/// gives one [`LogEntry`] per event, an entry of one event (`event`,
/// written before packing) one. An entry whose fields are gone (deleted
/// while pending: nil) or hold neither is returned undecodable.
fn entry_of<T: ReadAs>(
    stream: &Arc<str>,
    entry: redis::Value,
    last_ns: &mut Option<Arc<str>>,
    out: &mut Vec<T>,
) -> Result<(), LogError> {
    let (id, fields) = pair(entry).ok_or_else(|| bad_reply("entry"))?;
    let id = match id {
        redis::Value::BulkString(b) => String::from_utf8(b).map_err(|_| bad_reply("entry id"))?,
        redis::Value::SimpleString(s) => s,
        _ => return Err(bad_reply("entry id")),
    };
    let fields = match fields {
        redis::Value::Array(fields) => fields,
        _ => Vec::new(),
    };
    let mut body = Body::Missing;
    let mut namespace = None;
    {
        for kv in fields.chunks_exact(2) {
            let redis::Value::BulkString(name) = &kv[0] else {
                continue;
            };
            match name.as_slice() {
                b"event" | b"events" => body = Body::of(name, &kv[1]),
                b"ns" => {
                    if let redis::Value::BulkString(ns) = &kv[1]
                        && let Ok(ns) = std::str::from_utf8(ns)
                    {
                        namespace = Some(match last_ns {
                            Some(last) if **last == *ns => last.clone(),
                            _ => {
                                let ns: Arc<str> = Arc::from(ns);
                                *last_ns = Some(ns.clone());
                                ns
                            }
                        });
                    }
                }
                _ => {}
            }
        }
    }
    let entry = EntryRef {
        stream: stream.clone(),
        id: id.into(),
    };
    T::push(body, entry, namespace, out);
    Ok(())
}

/// What an entry holds, before it is decoded.
pub(crate) enum Body<'a> {
    /// Field `event`: one event (entries written before packing).
    One(&'a [u8]),
    /// Field `events`: framed events ([`schemas::binary::decode_framed`]).
    Packed(&'a [u8]),
    Missing,
    NotAString(&'static str),
}

fn undecodable(e: schemas::binary::BinaryError) -> Undecodable {
    Undecodable(format!("entry does not decode: {e}"))
}

impl<'a> Body<'a> {
    fn of(name: &[u8], value: &'a redis::Value) -> Body<'a> {
        match (name, value) {
            (b"event", redis::Value::BulkString(raw)) => Body::One(raw),
            (b"events", redis::Value::BulkString(raw)) => Body::Packed(raw),
            (b"event", _) => Body::NotAString("event"),
            _ => Body::NotAString("events"),
        }
    }

    /// Why an entry holds no events at all (`None`: it holds some).
    fn empty(&self) -> Option<Undecodable> {
        match self {
            Body::Missing => Some(Undecodable("entry has no `event` or `events` field".into())),
            Body::NotAString(field) => {
                Some(Undecodable(format!("field `{field}` is not a string")))
            }
            Body::Packed([]) => Some(Undecodable("a packed entry with no events".into())),
            _ => None,
        }
    }
}

/// What a read makes of each entry's events: decoded ([`LogEntry`], for
/// the dataflow and the queries) or as stored ([`ForwardEntry`], for the
/// Kafka mirror, which passes the bytes on).
pub(crate) trait ReadAs: Sized + Send + 'static {
    /// The entry's events, one each, appended to `out`.
    fn push(body: Body<'_>, entry: EntryRef, namespace: Option<Arc<str>>, out: &mut Vec<Self>);
    fn stream(&self) -> &Arc<str>;
}

impl ReadAs for LogEntry {
    fn push(body: Body<'_>, entry: EntryRef, namespace: Option<Arc<str>>, out: &mut Vec<Self>) {
        let one = |event: Result<Event, Undecodable>| LogEntry {
            entry: entry.clone(),
            event: event.map(Arc::new),
            id_form: IdForm::Caller,
            namespace: namespace.clone(),
            part: None,
        };
        if let Some(reason) = body.empty() {
            out.push(one(Err(reason)));
            return;
        }
        match body {
            Body::One(raw) => out.push(one(schemas::binary::decode(raw).map_err(undecodable))),
            Body::Packed(raw) => {
                let events = schemas::binary::decode_framed(raw);
                let of = events.len() as u32;
                out.reserve(events.len());
                for (index, event) in events.into_iter().enumerate() {
                    out.push(LogEntry {
                        entry: entry.clone(),
                        event: event.map(Arc::new).map_err(undecodable),
                        id_form: IdForm::Caller,
                        namespace: namespace.clone(),
                        part: Some(Part {
                            index: index as u32,
                            of,
                        }),
                    });
                }
            }
            Body::Missing | Body::NotAString(_) => {}
        }
    }

    fn stream(&self) -> &Arc<str> {
        &self.entry.stream
    }
}

impl ReadAs for ForwardEntry {
    fn push(body: Body<'_>, entry: EntryRef, namespace: Option<Arc<str>>, out: &mut Vec<Self>) {
        let stored = |part, avro| {
            ForwardEntry::Stored(StoredEvent {
                entry: entry.clone(),
                namespace: namespace.clone(),
                part,
                avro,
            })
        };
        if let Some(reason) = body.empty() {
            out.push(stored(None, Err(reason)));
            return;
        }
        match body {
            Body::One(raw) => out.push(stored(None, Ok((Arc::from(raw), 0..raw.len())))),
            Body::Packed(raw) => {
                // One copy of the entry's bytes, shared by its events.
                let frames = schemas::binary::frames(raw);
                let buf: Arc<[u8]> = Arc::from(raw);
                let of = frames.len() as u32;
                out.reserve(frames.len());
                for (index, frame) in frames.into_iter().enumerate() {
                    let part = Some(Part {
                        index: index as u32,
                        of,
                    });
                    out.push(stored(
                        part,
                        frame.map(|r| (buf.clone(), r)).map_err(undecodable),
                    ));
                }
            }
            Body::Missing | Body::NotAString(_) => {}
        }
    }

    fn stream(&self) -> &Arc<str> {
        &self.entry().stream
    }
}

/// The events of an entry read as a field map (XCLAIM, XRANGE), appended
/// to `out` as [`entry_of`] does.
pub(crate) fn entries_of_map<T: ReadAs>(
    entry: EntryRef,
    map: &HashMap<String, redis::Value>,
    out: &mut Vec<T>,
) {
    let namespace = match map.get("ns") {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok().map(Arc::from),
        _ => None,
    };
    let body = match (map.get("events"), map.get("event")) {
        (Some(v), _) => Body::of(b"events", v),
        (None, Some(v)) => Body::of(b"event", v),
        (None, None) => Body::Missing,
    };
    T::push(body, entry, namespace, out);
}

/// The events of an entry's fields as XRANGE returns them (for tools and
/// tests that read the streams themselves): one per event of a packed
/// entry, one for an entry written before packing.
pub fn events_of_fields(map: &HashMap<String, redis::Value>) -> Vec<Result<Event, Undecodable>> {
    let mut out: Vec<LogEntry> = Vec::new();
    let entry = EntryRef {
        stream: Arc::from(""),
        id: Arc::from(""),
    };
    entries_of_map(entry, map, &mut out);
    out.into_iter()
        .map(|e| e.event.map(Arc::unwrap_or_clone))
        .collect()
}
