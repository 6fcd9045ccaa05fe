//! Read-only queries over the log: time-range pages and stream statistics.
//!
//! **Range pages.** A category is several streams (8 shards in Redis, one in
//! the embedded log). A page reads up to `limit + 1` entries from every shard
//! after that shard's position, merges them by (entry id, shard index) and
//! keeps the first `limit`. The position of each shard (the last id taken
//! from it) goes into the cursor, so the next page resumes *exactly*: nothing
//! is skipped or repeated, whatever arrives meanwhile behind the positions.
//! Times are the log's append times (the `ms` part of the entry id), which
//! is what XRANGE can seek by; the event time `ts` is in each event.
//!
//! **Info** reports what XINFO STREAM / XINFO GROUPS report, per shard and
//! totalled; the embedded log answers the same shape.

use super::entry::{EntryRef, LogEntry};
use schemas::Category;
use serde::Serialize;

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
/// Page size when the caller gives none.
pub const DEFAULT_LIMIT: usize = 100;

/// Where a page starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    pub category: Category,
    /// Inclusive lower bound on the append time, ms since the epoch.
    pub from_ms: Option<u64>,
    /// Exclusive upper bound on the append time, ms since the epoch.
    pub to_ms: Option<u64>,
    /// Per shard, the last id already returned (exclusive start); `None`
    /// starts the shard at `from_ms`. Empty = every shard from `from_ms`.
    pub after: Vec<Option<String>>,
    /// Entries per page, 1..=[`MAX_LIMIT`].
    pub limit: usize,
}

/// One page of a range read.
#[derive(Debug, Clone)]
pub struct RangePage {
    pub entries: Vec<LogEntry>,
    /// Per shard position after this page, when more entries remain.
    pub next: Option<Vec<Option<String>>>,
}

/// A shard's bounds as XRANGE arguments: start (`(id` exclusive, `ms-0`
/// inclusive or `-`) and end (`(ms-0` exclusive or `+`).
pub(crate) fn bounds(q: &RangeQuery, shard: usize) -> (String, String) {
    let start = match q.after.get(shard).cloned().flatten() {
        Some(id) => format!("({id}"),
        None => q
            .from_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms}-0")),
    };
    let end = q
        .to_ms
        .map_or_else(|| "+".to_owned(), |ms| format!("({ms}-0"));
    (start, end)
}

/// Parses `ms-seq`.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Something read from a shard, with its place in the log.
pub(crate) trait Positioned {
    fn entry_ref(&self) -> &EntryRef;
}

impl Positioned for LogEntry {
    fn entry_ref(&self) -> &EntryRef {
        &self.entry
    }
}

/// Merges per-shard runs (each in id order) into one page of `limit`, in
/// (id, shard) order, and computes the positions.
/// Generic so that a backend can merge undecoded entries and decode only
/// the page (up to `shards × (limit + 1)` are read, `limit` kept).
///
/// `drained`: the runs hold everything each shard has up to the page's end
/// (no shard was cut short before it); otherwise a cursor is always given.
pub(crate) fn merge<T: Positioned>(
    q: &RangeQuery,
    per_shard: Vec<Vec<T>>,
    drained: bool,
) -> (Vec<T>, Option<Vec<Option<String>>>) {
    let shards = per_shard.len();
    let mut positions: Vec<Option<String>> = (0..shards)
        .map(|s| q.after.get(s).cloned().flatten())
        .collect();
    let mut all: Vec<(u64, u64, usize, T)> = per_shard
        .into_iter()
        .enumerate()
        .flat_map(|(shard, run)| {
            run.into_iter().map(move |e| {
                let (ms, seq) = parse_id(&e.entry_ref().id).unwrap_or((0, 0));
                (ms, seq, shard, e)
            })
        })
        .collect();
    all.sort_by_key(|a| (a.0, a.1, a.2));
    // More than limit: something is left for the next page. At most limit
    // and drained: every shard is exhausted.
    let more = all.len() > q.limit || !drained;
    all.truncate(q.limit);
    let mut entries = Vec::with_capacity(all.len());
    for (_, _, shard, e) in all {
        positions[shard] = Some(e.entry_ref().id.clone());
        entries.push(e);
    }
    (entries, more.then_some(positions))
}

/// One consumer group on one stream, as XINFO GROUPS reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GroupInfo {
    pub name: String,
    /// Consumers known to the group on this stream.
    pub consumers: u64,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    pub last_delivered_id: Option<String>,
    /// Entries not yet delivered to the group (`null` when Redis cannot tell).
    pub lag: Option<u64>,
}

/// One stream (shard), as XINFO STREAM reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StreamInfo {
    pub stream: String,
    pub length: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub groups: Vec<GroupInfo>,
}

/// A group totalled over the shards of a category.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GroupTotals {
    pub name: String,
    /// The most consumers the group has on any one shard (a consumer reads
    /// every shard, so a sum would count it once per shard).
    pub consumers: u64,
    pub pending: u64,
    /// Sum over the shards; `null` when any shard cannot tell.
    pub lag: Option<u64>,
}

/// Statistics of a category's streams.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CategoryInfo {
    #[schema(value_type = String)]
    pub category: Category,
    pub backend: &'static str,
    pub length: u64,
    /// The smallest first id over the shards.
    pub first_id: Option<String>,
    /// The greatest last id over the shards.
    pub last_id: Option<String>,
    pub groups: Vec<GroupTotals>,
    pub shards: Vec<StreamInfo>,
}

impl CategoryInfo {
    /// Totals over `shards`.
    pub(crate) fn total(
        category: Category,
        backend: &'static str,
        shards: Vec<StreamInfo>,
    ) -> CategoryInfo {
        let key = |id: &String| parse_id(id).unwrap_or((0, 0));
        let first_id = shards
            .iter()
            .filter_map(|s| s.first_id.clone())
            .min_by_key(key);
        let last_id = shards
            .iter()
            .filter_map(|s| s.last_id.clone())
            .max_by_key(key);
        let mut groups: Vec<GroupTotals> = Vec::new();
        for g in shards.iter().flat_map(|s| &s.groups) {
            match groups.iter_mut().find(|t| t.name == g.name) {
                Some(t) => {
                    t.consumers = t.consumers.max(g.consumers);
                    t.pending += g.pending;
                    t.lag = t.lag.zip(g.lag).map(|(a, b)| a + b);
                }
                None => groups.push(GroupTotals {
                    name: g.name.clone(),
                    consumers: g.consumers,
                    pending: g.pending,
                    lag: g.lag,
                }),
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        CategoryInfo {
            category,
            backend,
            length: shards.iter().map(|s| s.length).sum(),
            first_id,
            last_id,
            groups,
            shards,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> LogEntry {
        LogEntry {
            entry: EntryRef {
                stream: "s".into(),
                id: id.into(),
            },
            event: Err(crate::event_log::Undecodable("unused".into())),
            namespace: None,
        }
    }

    fn q(limit: usize, after: Vec<Option<String>>) -> RangeQuery {
        RangeQuery {
            category: Category::Writing,
            from_ms: None,
            to_ms: None,
            after,
            limit,
        }
    }

    #[test]
    fn merge_orders_by_id_then_shard_and_resumes_each_shard_after_its_last() {
        let (entries, next) = merge(
            &q(3, vec![]),
            vec![
                vec![entry("5-0"), entry("9-0")],
                vec![entry("5-0"), entry("6-1"), entry("7-0")],
            ],
            true,
        );
        let ids: Vec<_> = entries.iter().map(|e| e.entry.id.as_str()).collect();
        assert_eq!(ids, ["5-0", "5-0", "6-1"]);
        assert_eq!(next, Some(vec![Some("5-0".into()), Some("6-1".into())]));
    }

    #[test]
    fn a_page_that_holds_everything_has_no_cursor() {
        let (entries, next) = merge(
            &q(3, vec![]),
            vec![vec![entry("1-0")], vec![entry("2-0")]],
            true,
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(next, None);
    }

    #[test]
    fn bounds_are_exclusive_after_a_cursor_and_at_to() {
        let mut query = q(10, vec![Some("7-3".into()), None]);
        query.from_ms = Some(5);
        query.to_ms = Some(9);
        assert_eq!(bounds(&query, 0), ("(7-3".into(), "(9-0".into()));
        assert_eq!(bounds(&query, 1), ("5-0".into(), "(9-0".into()));
    }
}
