//! Redis Streams: the durable log.
//!
//! **Layout.** One stream per category and shard:
//! `<prefix>:events:<category>:<shard>`, the shard chosen by a stable hash of
//! the event's partition key (DESIGN.md), so all events of one key land in
//! one stream in order, and consumers can scale out by stream. Entries carry
//! the event's `type`, `id` and the event itself (`event`: raw Avro binary of
//! the envelope schema `inkstream.Event`).
//!
//! **Appends** are one round trip per batch: a Lua script that, per event,
//! claims the idempotency key `<prefix>:dedup:<app>:<id>` (SET NX with the
//! dedup window as TTL) and XADDs the event only when the claim succeeded.
//! The script runs atomically, so a crash can never leave an id recorded
//! without its event or an event without its id; a retried batch after a
//! timeout is stored exactly once. Ingest answers only after the script
//! returned.
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

mod query;

use super::entry::{Appended, EntryRef, LogEntry, Undecodable, stream_name};
use super::error::LogError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamReadReply;
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
        }
    }
}

/// KEYS: dedup keys 1..n, then stream keys n+1..2n.
/// ARGV: ttl_ms, n, then (type, id, body) per event.
/// Returns per event the new entry id, or 0 for a duplicate. Two commands per
/// event: the dedup key is claimed with SET NX (so a duplicate costs one),
/// and the entry appended only when the claim succeeded. Both run inside one
/// script, so no crash can separate them.
const APPEND_SCRIPT: &str = r#"
local ttl = ARGV[1]
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local a = 3 + (i - 1) * 3
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ttl) then
    out[i] = redis.call('XADD', KEYS[n + i], '*', 'type', ARGV[a + 1], 'id', ARGV[a + 2], 'event', ARGV[a + 3], 'ns', ARGV[3])
  else
    out[i] = 0
  end
end
return out
"#;

/// The Redis Streams log; clones share connections.
#[derive(Clone)]
pub struct RedisLog {
    writer: ConnectionManager,
    reader: ConnectionManager,
    /// All streams, category-major: index = category × shards + shard.
    streams: Arc<[Arc<str>]>,
    shards: u32,
    prefix: Arc<str>,
    dedup_ttl_ms: u64,
    append: Arc<redis::Script>,
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
        Ok(RedisLog {
            writer,
            reader,
            streams,
            shards,
            prefix: config.prefix.as_str().into(),
            dedup_ttl_ms: config.dedup_window.as_millis().max(1) as u64,
            append: Arc::new(redis::Script::new(APPEND_SCRIPT)),
        })
    }

    /// The stream an event belongs to.
    pub fn stream_for(&self, event: &Event) -> &Arc<str> {
        let c = Category::ALL
            .iter()
            .position(|c| *c == event.category())
            .unwrap_or(0);
        let shard = (schemas::stable_hash(event.partition_key()) % u64::from(self.shards)) as usize;
        &self.streams[c * self.shards as usize + shard]
    }

    /// Appends `events` for `app` in one round trip; events whose id `app`
    /// already stored within the dedup window are not stored again.
    pub async fn append(&self, app: &str, events: &[Event]) -> Result<Vec<Appended>, LogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.append.prepare_invoke();
        for e in events {
            invocation.key(format!("{}:dedup:{app}:{}", self.prefix, e.id));
        }
        for e in events {
            invocation.key(&**self.stream_for(e));
        }
        invocation.arg(self.dedup_ttl_ms).arg(events.len()).arg(app);
        for e in events {
            let body = schemas::binary::encode(e)
                .map_err(|err| LogError::Protocol(format!("encode event {}: {err}", e.id)))?;
            invocation.arg(e.event_type()).arg(&e.id).arg(body);
        }
        let mut conn = self.writer.clone();
        let replies: Vec<redis::Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if replies.len() != events.len() {
            return Err(LogError::Protocol(format!(
                "{} append replies for {} events",
                replies.len(),
                events.len()
            )));
        }
        events
            .iter()
            .zip(replies)
            .map(|(e, reply)| {
                let stream = self.stream_for(e).clone();
                match reply {
                    redis::Value::BulkString(id) => Ok(Appended {
                        entry: EntryRef {
                            stream,
                            id: String::from_utf8_lossy(&id).into_owned(),
                        },
                        duplicate: false,
                    }),
                    // A duplicate: stored earlier (where is not recorded).
                    redis::Value::Int(0) => Ok(Appended {
                        entry: EntryRef {
                            stream,
                            id: String::new(),
                        },
                        duplicate: true,
                    }),
                    other => Err(LogError::Protocol(format!("bad append reply {other:?}"))),
                }
            })
            .collect()
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
        let mut batch = self
            .read_group(group, consumer, count, Some(block), ">")
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
                batch.iter().map(|e| &*e.entry.stream).collect();
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

    async fn read_group(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
        from: &str,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.read_group_of(group, consumer, count, block, from, &self.streams)
            .await
    }

    /// `XREADGROUP` over `streams` only.
    async fn read_group_of(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
        from: &str,
        streams: &[Arc<str>],
    ) -> Result<Vec<LogEntry>, LogError> {
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

    async fn run_read(&self, cmd: redis::Cmd) -> Result<Vec<LogEntry>, LogError> {
        let mut conn = self.reader.clone();
        let reply: Option<StreamReadReply> =
            cmd.query_async(&mut conn).await.map_err(unavailable)?;
        let Some(reply) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for key in reply.keys {
            let stream = self.intern(&key.key);
            for entry in key.ids {
                let event = decode_entry(&entry.map);
                let namespace = entry_namespace(&entry.map);
                out.push(LogEntry {
                    entry: EntryRef {
                        stream: stream.clone(),
                        id: entry.id,
                    },
                    event,
                    namespace,
                });
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
                out.push(LogEntry {
                    entry: EntryRef {
                        stream: stream.clone(),
                        id: entry.id.clone(),
                    },
                    event: decode_entry(&entry.map),
                    namespace: entry_namespace(&entry.map),
                });
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
            by_stream.entry(&e.stream).or_default().push(&e.id);
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in by_stream {
            pipe.cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
        }
        let mut conn = self.writer.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    pub async fn ping(&self) -> Result<(), LogError> {
        let mut conn = self.writer.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
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
            let lag = int("lag").unwrap_or(0);
            total += pending + lag;
            let first = if pending > 0 {
                oldest_pending(&mut conn, stream, group).await?
            } else if lag > 0 {
                let last = value_str(info.get("last-delivered-id")).unwrap_or_else(|| "0-0".into());
                let next: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
                    .arg(&**stream)
                    .arg(format!("({last}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                next.into_iter().next().map(|(id, _)| id)
            } else {
                None
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

/// The caller namespace an entry was appended under (field `ns`).
pub(crate) fn entry_namespace(map: &HashMap<String, redis::Value>) -> Option<Arc<str>> {
    match map.get("ns") {
        Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok().map(Arc::from),
        _ => None,
    }
}

fn decode_entry(map: &HashMap<String, redis::Value>) -> Result<Event, Undecodable> {
    let raw = match map.get("event") {
        Some(redis::Value::BulkString(b)) => b,
        Some(_) => return Err(Undecodable("field `event` is not a string".into())),
        None => return Err(Undecodable("entry has no `event` field".into())),
    };
    schemas::binary::decode(raw).map_err(|e| Undecodable(format!("entry does not decode: {e}")))
}
