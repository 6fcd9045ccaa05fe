//! Read-only queries over the log: time-range pages and stream statistics.
//!
//! **Range pages.** A category is several streams (8 shards in Redis, one in
//! the embedded log). A page reads up to `limit + 1` entries from every shard
//! after that shard's position, merges them by (entry id, shard index) and
//! keeps the first `limit`. The position of each shard (the last id taken
//! from it) goes into the cursor, so the next page resumes *exactly*: nothing
//! is skipped or repeated, whatever arrives meanwhile behind the positions.
//! A page may end inside a packed Redis entry (up to [`PACK_EVENTS`] events
//! in one entry): the position is then `<id>.<k>`, the entry with its first
//! `k` events taken, and the next page reads that entry again from its
//! event `k`.
//! Times are the log's append times (the `ms` part of the entry id), which
//! is what XRANGE can seek by; the event time `ts` is in each event.
//!
//! **Info** reports what XINFO STREAM / XINFO GROUPS report, per shard and
//! totalled; the embedded log answers the same shape.

use super::entry::LogEntry;
#[cfg(doc)]
use super::entry::PACK_EVENTS;
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

/// A shard's bounds as XRANGE arguments: start (`(id` exclusive after a
/// whole entry, `id` inclusive inside a packed one, `ms-0` inclusive or
/// `-`) and end (`(ms-0` exclusive or `+`).
pub(crate) fn bounds(q: &RangeQuery, shard: usize) -> (String, String) {
    let start = match position(q, shard) {
        Some((id, 0)) => format!("({id}"),
        Some((id, _)) => id.to_owned(),
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

/// Parses a shard position: an entry id, taken whole (`ms-seq`, 0), or
/// with its first `k` events taken (`ms-seq.k`, k ≥ 1).
pub(crate) fn parse_position(p: &str) -> Option<(&str, u32)> {
    let (id, taken) = match p.split_once('.') {
        Some((id, k)) => (id, k.parse().ok().filter(|k| *k >= 1)?),
        None => (p, 0),
    };
    parse_id(id)?;
    Some((id, taken))
}

/// The position `q` resumes shard `shard` from, parsed.
fn position(q: &RangeQuery, shard: usize) -> Option<(&str, u32)> {
    q.after
        .get(shard)
        .and_then(|a| a.as_deref())
        .and_then(parse_position)
}

/// Drops from the front of `run` (a shard's first read, which starts at
/// its position's entry when that entry was only partly taken) the events
/// the position says were taken.
pub(crate) fn skip_taken(q: &RangeQuery, shard: usize, run: &mut Vec<LogEntry>) {
    let Some((id, taken)) = position(q, shard) else {
        return;
    };
    if taken == 0 {
        return;
    }
    let n = run
        .iter()
        .take_while(|e| &*e.entry.id == id && e.index() < taken)
        .count();
    run.drain(..n);
}

/// Merges per-shard runs (each in log order) into one page of `limit`
/// events, in (id, shard, place in the entry) order, and computes the
/// positions.
///
/// `drained`: the runs hold everything each shard has up to the page's end
/// (no shard was cut short before it); otherwise a cursor is always given.
pub(crate) fn merge(
    q: &RangeQuery,
    per_shard: Vec<Vec<LogEntry>>,
    drained: bool,
) -> (Vec<LogEntry>, Option<Vec<Option<String>>>) {
    let shards = per_shard.len();
    let mut positions: Vec<Option<String>> = (0..shards)
        .map(|s| q.after.get(s).cloned().flatten())
        .collect();
    let mut all: Vec<(u64, u64, usize, u32, LogEntry)> = per_shard
        .into_iter()
        .enumerate()
        .flat_map(|(shard, run)| {
            run.into_iter().map(move |e| {
                let (ms, seq) = parse_id(&e.entry.id).unwrap_or((0, 0));
                (ms, seq, shard, e.index(), e)
            })
        })
        .collect();
    all.sort_by_key(|a| (a.0, a.1, a.2, a.3));
    // More than limit: something is left for the next page. At most limit
    // and drained: every shard is exhausted.
    let more = all.len() > q.limit || !drained;
    all.truncate(q.limit);
    let mut entries = Vec::with_capacity(all.len());
    for (_, _, shard, index, e) in all {
        positions[shard] = Some(if e.ends_entry() {
            e.entry.id.to_string()
        } else {
            format!("{}.{}", e.entry.id, index + 1)
        });
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

    use crate::event_log::entry::{EntryRef, Part};

    fn entry(id: &str) -> LogEntry {
        LogEntry {
            entry: EntryRef {
                stream: "s".into(),
                id: id.into(),
            },
            event: Err(crate::event_log::Undecodable("unused".into())),
            id_form: crate::event_log::IdForm::Caller,
            namespace: None,
            part: None,
        }
    }

    /// The `of` events of packed entry `id`.
    fn packed(id: &str, of: u32) -> Vec<LogEntry> {
        (0..of)
            .map(|index| LogEntry {
                part: Some(Part { index, of }),
                ..entry(id)
            })
            .collect()
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
        let ids: Vec<_> = entries.iter().map(|e| &*e.entry.id).collect();
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
    fn a_page_that_ends_inside_a_packed_entry_resumes_at_its_next_event() {
        let shard0 = [packed("5-0", 3), packed("8-0", 2)].concat();
        let shard1 = vec![entry("6-0")];
        let (entries, next) = merge(&q(2, vec![]), vec![shard0.clone(), shard1.clone()], true);
        let got: Vec<_> = entries
            .iter()
            .map(|e| (&*e.entry.id, e.part.unwrap().index))
            .collect();
        assert_eq!(got, [("5-0", 0), ("5-0", 1)]);
        assert_eq!(next, Some(vec![Some("5-0.2".into()), None]));

        // The next page reads entry 5-0 again (inclusive) and skips what
        // the position says was taken.
        let query = q(3, next.unwrap());
        assert_eq!(bounds(&query, 0).0, "5-0");
        let mut run = shard0;
        skip_taken(&query, 0, &mut run);
        let (entries, next) = merge(&query, vec![run, shard1], true);
        let got: Vec<_> = entries
            .iter()
            .map(|e| (&*e.entry.id, e.part.map_or(0, |p| p.index)))
            .collect();
        assert_eq!(got, [("5-0", 2), ("6-0", 0), ("8-0", 0)]);
        // 5-0 is taken whole now: the position is its id alone (exclusive).
        assert_eq!(next, Some(vec![Some("8-0.1".into()), Some("6-0".into())]));
    }

    #[test]
    fn positions_parse_whole_or_inside_an_entry_and_nothing_else() {
        assert_eq!(parse_position("7-3"), Some(("7-3", 0)));
        assert_eq!(parse_position("7-3.4"), Some(("7-3", 4)));
        for bad in ["7-3.0", "7-3.", "7-3.x", "7.4", "", "7-3.4.5", "7-3.-1"] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
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
