//! Read-only queries of the Redis log: range pages (XRANGE, every shard of a
//! category in one pipelined round trip) and XINFO STREAM / GROUPS.

use super::{RedisLog, entries_of_map, unavailable, value_str};
#[cfg(doc)]
use crate::event_log::entry::PACK_EVENTS;
use crate::event_log::entry::{EntryRef, LogEntry, packed_entries_for};
use crate::event_log::error::LogError;
use crate::event_log::query::{
    CategoryInfo, GroupInfo, RangeQuery, StreamInfo, bounds, merge, parse_id, skip_taken,
};
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

    /// One page of events.
    ///
    /// Reading `limit + 1` from each of the 8 shards would read 8 times the
    /// page. Instead each shard is read in chunks of about twice its fair
    /// share, and a shard is read further only while its last fetched id
    /// still sorts before the page's last event (its unread entries could
    /// belong to the page). Evenly spread keys need one round trip; one hot
    /// shard needs a few. Chunks count entries, and a packed entry holds up
    /// to [`PACK_EVENTS`] events: a chunk is an eighth of the events wanted
    /// ([`packed_entries_for`], at least 16 entries), so a page decodes
    /// about twice its events.
    pub(crate) async fn range_page(
        &self,
        q: &RangeQuery,
    ) -> Result<(Vec<LogEntry>, Option<Vec<Option<String>>>), LogError> {
        let streams = self.category_streams(q.category);
        let n = streams.len();
        let chunk = packed_entries_for((q.limit + 1).div_ceil(n) * 2)
            .max(16)
            .min(q.limit + 1);
        let mut runs: Vec<Vec<LogEntry>> = (0..n).map(|_| Vec::new()).collect();
        let mut exhausted = vec![false; n];
        let mut fetch: Vec<usize> = (0..n).collect();
        let key = |e: &LogEntry, shard: usize| {
            let (ms, seq) = parse_id(&e.entry.id).unwrap_or((0, 0));
            (ms, seq, shard, e.index())
        };
        let mut first = vec![true; n];
        while !fetch.is_empty() {
            let mut pipe = redis::pipe();
            for &shard in &fetch {
                let (start, end) = bounds(q, shard);
                // After a first read every fetched entry was taken whole.
                let start = runs[shard]
                    .last()
                    .map_or(start, |e| format!("({}", e.entry.id));
                pipe.cmd("XRANGE")
                    .arg(&*streams[shard])
                    .arg(start)
                    .arg(end)
                    .arg("COUNT")
                    .arg(chunk);
            }
            let mut conn = self.writer.clone();
            let replies: Vec<Vec<(String, HashMap<String, Value>)>> =
                pipe.query_async(&mut conn).await.map_err(unavailable)?;
            for (&shard, run) in fetch.iter().zip(replies) {
                exhausted[shard] = run.len() < chunk;
                let mut events = Vec::with_capacity(run.len());
                for (id, map) in run {
                    let at = EntryRef {
                        stream: streams[shard].clone(),
                        id: id.into(),
                    };
                    entries_of_map(at, &map, &mut events);
                }
                if std::mem::take(&mut first[shard]) {
                    skip_taken(q, shard, &mut events);
                }
                runs[shard].extend(events);
            }
            // The page's last event, as far as fetched: its (id, shard, index).
            let mut keys: Vec<(u64, u64, usize, u32)> = runs
                .iter()
                .enumerate()
                .flat_map(|(s, run)| run.iter().map(move |e| key(e, s)))
                .collect();
            let page_last = if keys.len() >= q.limit {
                keys.select_nth_unstable(q.limit - 1);
                Some(keys[q.limit - 1])
            } else {
                None
            };
            fetch = (0..n)
                .filter(|&s| !exhausted[s])
                .filter(|&s| match (page_last, runs[s].last()) {
                    (Some(last), Some(e)) => key(e, s) < last,
                    _ => true,
                })
                .collect();
        }
        let drained = exhausted.iter().all(|e| *e);
        Ok(merge(q, runs, drained))
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
