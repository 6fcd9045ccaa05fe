//! Read-only queries of the Redis log: range pages (XRANGE, every shard of a
//! category in one pipelined round trip) and XINFO STREAM / GROUPS.

use super::{RedisLog, decode_entry, unavailable, value_str};
use crate::event_log::query::{CategoryInfo, GroupInfo, RangeQuery, StreamInfo, bounds};
use crate::event_log::{EntryRef, LogEntry, LogError};
use redis::Value;
use schemas::Category;
use std::collections::HashMap;
use std::sync::Arc;

impl RedisLog {
    /// The shards of `category`, in shard order.
    fn category_streams(&self, category: Category) -> &[Arc<str>] {
        let c = Category::ALL
            .iter()
            .position(|c| *c == category)
            .unwrap_or(0);
        let n = self.shards as usize;
        &self.streams[c * n..(c + 1) * n]
    }

    /// Up to `limit + 1` entries per shard within the query's bounds.
    pub async fn range_shards(&self, q: &RangeQuery) -> Result<Vec<Vec<LogEntry>>, LogError> {
        let streams = self.category_streams(q.category);
        let mut pipe = redis::pipe();
        for (shard, stream) in streams.iter().enumerate() {
            let (start, end) = bounds(q, shard);
            pipe.cmd("XRANGE")
                .arg(&**stream)
                .arg(start)
                .arg(end)
                .arg("COUNT")
                .arg(q.limit + 1);
        }
        let mut conn = self.writer.clone();
        let replies: Vec<Vec<(String, HashMap<String, Value>)>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(streams
            .iter()
            .zip(replies)
            .map(|(stream, run)| {
                run.into_iter()
                    .map(|(id, map)| LogEntry {
                        entry: EntryRef {
                            stream: stream.clone(),
                            id,
                        },
                        event: decode_entry(&map),
                    })
                    .collect()
            })
            .collect())
    }

    /// Number of shards per category.
    pub fn shard_count(&self) -> usize {
        self.shards as usize
    }

    /// XINFO STREAM and XINFO GROUPS of every shard of `category`; a shard
    /// that does not exist yet reports length 0.
    pub async fn info(&self, category: Category) -> Result<CategoryInfo, LogError> {
        let mut conn = self.writer.clone();
        let mut shards = Vec::new();
        for stream in self.category_streams(category) {
            let info: HashMap<String, Value> = match redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&**stream)
                .query_async(&mut conn)
                .await
            {
                Ok(v) => v,
                // "ERR no such key": the shard has never been written.
                Err(e) if e.code() == Some("ERR") => {
                    shards.push(StreamInfo {
                        stream: stream.to_string(),
                        length: 0,
                        first_id: None,
                        last_id: None,
                        groups: Vec::new(),
                    });
                    continue;
                }
                Err(e) => return Err(unavailable(e)),
            };
            let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&**stream)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            shards.push(StreamInfo {
                stream: stream.to_string(),
                length: int(info.get("length")).unwrap_or(0),
                first_id: entry_id(info.get("first-entry")),
                last_id: entry_id(info.get("last-entry")),
                groups: groups
                    .iter()
                    .map(|g| GroupInfo {
                        name: value_str(g.get("name")).unwrap_or_default(),
                        consumers: int(g.get("consumers")).unwrap_or(0),
                        pending: int(g.get("pending")).unwrap_or(0),
                        last_delivered_id: value_str(g.get("last-delivered-id")),
                        lag: int(g.get("lag")),
                    })
                    .collect(),
            });
        }
        Ok(CategoryInfo::total(category, "redis", shards))
    }
}

fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => value_str(Some(other)).and_then(|s| s.parse().ok()),
    }
}

/// The id of an XINFO `first-entry`/`last-entry` (`[id, [field, value…]]` or nil).
fn entry_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Array(parts) => value_str(parts.first()),
        _ => None,
    }
}
