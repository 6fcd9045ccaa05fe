//! Redis Streams: the durable log.
//!
//! One stream per category (`<prefix>:events:<category>`); entries carry the
//! event's `type`, `id` and the event itself (`event`, JSON). Appends are
//! pipelined: one round trip per batch, and the batch is acknowledged to the
//! client only after every XADD returned. Consumers use consumer groups
//! (XREADGROUP / XACK); blocking reads carry a short timeout so that shutdown
//! is prompt.
//!
//! Writes and blocking reads use separate connections: a `BLOCK`ed read on a
//! multiplexed connection would stall every append queued behind it.

use crate::event_log::{EntryRef, LogEntry, LogError, stream_name};
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
    /// How long one command may take before the log counts as unavailable.
    pub response_timeout: Duration,
}

impl RedisLogConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RedisLogConfig {
            url: url.into(),
            prefix: "inkstream".into(),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// The Redis Streams log; clones share connections.
#[derive(Clone)]
pub struct RedisLog {
    writer: ConnectionManager,
    reader: ConnectionManager,
    streams: Arc<[Arc<str>]>,
}

fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.to_string())
}

impl RedisLog {
    /// Connects (lazily reconnecting later) to Redis.
    pub async fn connect(config: &RedisLogConfig) -> Result<RedisLog, LogError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| LogError::Unavailable(format!("invalid redis url: {e}")))?;
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
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
        let streams = Category::ALL
            .iter()
            .map(|c| Arc::<str>::from(stream_name(&config.prefix, *c)))
            .collect();
        Ok(RedisLog {
            writer,
            reader,
            streams,
        })
    }

    fn stream_of(&self, category: Category) -> &Arc<str> {
        let idx = Category::ALL
            .iter()
            .position(|c| *c == category)
            .unwrap_or(0);
        &self.streams[idx]
    }

    pub async fn append(&self, events: &[Event]) -> Result<Vec<EntryRef>, LogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let mut streams = Vec::with_capacity(events.len());
        for event in events {
            let stream = self.stream_of(event.category()).clone();
            let body = serde_json::to_string(event)
                .map_err(|e| LogError::Protocol(format!("encode event: {e}")))?;
            pipe.cmd("XADD")
                .arg(&*stream)
                .arg("*")
                .arg("type")
                .arg(&event.event_type)
                .arg("id")
                .arg(&event.id)
                .arg("event")
                .arg(body);
            streams.push(stream);
        }
        let mut conn = self.writer.clone();
        let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        if ids.len() != streams.len() {
            return Err(LogError::Protocol(format!(
                "{} XADD replies for {} events",
                ids.len(),
                streams.len()
            )));
        }
        Ok(streams
            .into_iter()
            .zip(ids)
            .map(|(stream, id)| EntryRef { stream, id })
            .collect())
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
        self.read_group(group, consumer, count, Some(block), ">")
            .await
    }

    pub async fn read_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.read_group(group, consumer, count, None, "0").await
    }

    async fn read_group(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
        from: &str,
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
        for s in self.streams.iter() {
            cmd.arg(&**s);
        }
        for _ in self.streams.iter() {
            cmd.arg(from);
        }
        let mut conn = self.reader.clone();
        let reply: Option<StreamReadReply> =
            cmd.query_async(&mut conn).await.map_err(unavailable)?;
        let Some(reply) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for key in reply.keys {
            let stream = self
                .streams
                .iter()
                .find(|s| ***s == *key.key)
                .cloned()
                .unwrap_or_else(|| Arc::from(key.key.as_str()));
            for entry in key.ids {
                let event = decode_entry(&entry.map);
                out.push(LogEntry {
                    entry: EntryRef {
                        stream: stream.clone(),
                        id: entry.id,
                    },
                    event,
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

    /// The stream names, in category order.
    pub fn streams(&self) -> &[Arc<str>] {
        &self.streams
    }
}

fn decode_entry(map: &HashMap<String, redis::Value>) -> Result<Event, String> {
    let raw = match map.get("event") {
        Some(redis::Value::BulkString(b)) => b,
        Some(_) => return Err("field `event` is not a string".into()),
        None => return Err("entry has no `event` field".into()),
    };
    serde_json::from_slice(raw).map_err(|e| format!("entry does not decode: {e}"))
}
