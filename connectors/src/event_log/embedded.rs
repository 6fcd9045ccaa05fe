//! The in-process log. Not durable: it lives and dies with the process. It
//! exists so that `inkstream serve` runs with nothing installed, and it keeps
//! the semantics of Redis Streams consumer groups so that code written against
//! it behaves the same against Redis.
//!
//! Bounded: it holds at most `max_entries` entries (those not yet
//! acknowledged by every group). An append that does not fit is refused
//! whole ([`LogError::Full`], a 503 to the caller) instead of growing the
//! process until the kernel kills it, which would lose every event it had
//! acknowledged.

use super::entry::{Appended, EntryRef, IdForm, LogEntry, dataflow_id, stream_name};
use super::error::LogError;
use schemas::{Category, Event};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// An entry id, ordered as Redis orders them: (milliseconds, sequence).
type Id = (u64, u64);

/// `ms-seq`, as Redis writes ids (by hand: `format!` costs more than the
/// rest of building an entry, and every appended and read entry has one).
/// Written on the stack, then allocated once, as the shared string an
/// [`EntryRef`] holds.
fn render(id: Id) -> Arc<str> {
    fn digits(mut n: u64, buf: &mut [u8], mut end: usize) -> usize {
        loop {
            end -= 1;
            buf[end] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return end;
            }
        }
    }
    // 20 digits, '-', 20 digits at most.
    let mut buf = [0u8; 41];
    let start = digits(id.1, &mut buf, 41) - 1;
    buf[start] = b'-';
    let start = digits(id.0, &mut buf, start);
    Arc::from(std::str::from_utf8(&buf[start..]).unwrap_or_default())
}

fn parse(id: &str) -> Option<Id> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

struct Stream {
    name: Arc<str>,
    entries: VecDeque<(Id, Stored)>,
}

impl Stream {
    /// The entry `id` as a reader gets it: the stored event itself, shared.
    fn read(&self, id: Id, stored: &Stored) -> LogEntry {
        LogEntry {
            entry: EntryRef {
                stream: self.name.clone(),
                id: render(id),
            },
            event: Ok(stored.event.clone()),
            id_form: IdForm::Dataflow,
            namespace: Some(stored.namespace.clone()),
            part: None,
        }
    }
}

/// One stored event and the caller namespace it was appended under. The
/// event is stored as the dataflow knows it ([`IdForm::Dataflow`]: its id
/// is [`dataflow_id`]'s), and shared with the readers: the dataflow, which
/// reads the embedded log when there is no Kafka, holds the same copy
/// until the watermark passes it, instead of a second one.
struct Stored {
    event: Arc<Event>,
    namespace: Arc<str>,
}

#[derive(Default)]
struct Group {
    /// The last id delivered to any consumer of the group.
    last_delivered: Id,
    /// Delivered but unacknowledged.
    pending: Pending,
    /// Consumer names, shared by their pending entries.
    consumers: HashSet<Arc<str>>,
}

impl Group {
    fn consumer(&mut self, name: &str) -> Arc<str> {
        if let Some(c) = self.consumers.get(name) {
            return c.clone();
        }
        let c: Arc<str> = Arc::from(name);
        self.consumers.insert(c.clone());
        c
    }
}

/// A group's delivered, unacknowledged entries: per stream in id order (a
/// group delivers a stream's entries in id order, and a claim changes an
/// entry's owner, not its place), so delivery is a push, an acknowledgement
/// a binary search, and both leave the order Redis's PEL lists them in.
#[derive(Default)]
struct Pending {
    streams: Vec<VecDeque<Slot>>,
    len: usize,
}

struct Slot {
    id: Id,
    owner: Arc<str>,
    at: Instant,
    /// False once acknowledged (removed when it reaches the front).
    live: bool,
}

impl Pending {
    fn push(&mut self, si: usize, id: Id, owner: Arc<str>, at: Instant) {
        if self.streams.len() <= si {
            self.streams.resize_with(si + 1, VecDeque::new);
        }
        let q = &mut self.streams[si];
        debug_assert!(q.back().is_none_or(|s| s.id < id), "delivered in id order");
        q.push_back(Slot {
            id,
            owner,
            at,
            live: true,
        });
        self.len += 1;
    }

    fn remove(&mut self, si: usize, id: Id) {
        let Some(q) = self.streams.get_mut(si) else {
            return;
        };
        if let Ok(i) = q.binary_search_by_key(&id, |s| s.id)
            && q[i].live
        {
            q[i].live = false;
            self.len -= 1;
            while q.front().is_some_and(|s| !s.live) {
                q.pop_front();
            }
        }
    }

    /// Every pending entry, by stream then id.
    fn iter(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.streams
            .iter()
            .enumerate()
            .flat_map(|(si, q)| q.iter().filter(|s| s.live).map(move |s| (si, s)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Slot)> {
        self.streams
            .iter_mut()
            .enumerate()
            .flat_map(|(si, q)| q.iter_mut().filter(|s| s.live).map(move |s| (si, s)))
    }

    fn in_stream(&self, si: usize) -> impl Iterator<Item = &Slot> {
        self.streams
            .get(si)
            .into_iter()
            .flat_map(|q| q.iter().filter(|s| s.live))
    }

    fn len(&self) -> usize {
        self.len
    }
}

struct Inner {
    streams: Vec<Stream>,
    groups: HashMap<String, Group>,
    last_id: Id,
    dedup: Dedup,
}

/// Ids seen per app within the window, bounded in count: past `max_ids` the
/// oldest are forgotten early (documented in docs/OPERATIONS.md). Keys are a
/// 128-bit keyed hash of (app, id) — SipHash-1-3 with a 128-bit output and
/// a random key of this process, so no caller can craft two ids that
/// collide (a false "duplicate" would drop an event) — and values where the first copy
/// went: compact, and no allocation per event. The table is sized for
/// `max_ids` up front (its memory is touched only as it fills), so a burst
/// of new ids never waits for it to grow and rehash.
struct Dedup {
    window: Duration,
    max_ids: usize,
    seen: HashMap<u128, (usize, Id), BuildHasherDefault<PassThrough>>,
    order: VecDeque<(Instant, u128)>,
}

/// The keyed hash of the dedup table: one pass of SipHash-1-3 with a
/// 128-bit output (two 64-bit passes cost twice as much).
#[derive(Clone)]
struct DedupKeys(u64, u64);

impl DedupKeys {
    /// A random key: std's `RandomState` draws its keys from the operating
    /// system; a hash under them is as unpredictable.
    fn random() -> DedupKeys {
        let draw = |n: u64| RandomState::new().hash_one(n);
        DedupKeys(draw(0), draw(1))
    }

    fn key(&self, app: &str, id: &str) -> u128 {
        use siphasher::sip128::Hasher128;
        let mut h = siphasher::sip128::SipHasher13::new_with_keys(self.0, self.1);
        // As std hashes a pair of strings: each followed by 0xff, so
        // ("ab", "c") and ("a", "bc") differ.
        (app, id).hash(&mut h);
        h.finish128().as_u128()
    }
}

/// The keys are already uniform hashes: use their low bits as they are.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

impl Dedup {
    fn new(window: Duration, max_ids: usize) -> Dedup {
        let max_ids = max_ids.max(1);
        // Beyond a few million the up-front table is more address space
        // than a typical window needs; it grows from there.
        let presize = max_ids.min(4 << 20);
        Dedup {
            window,
            max_ids,
            seen: HashMap::with_capacity_and_hasher(presize, Default::default()),
            order: VecDeque::with_capacity(presize),
        }
    }
}

impl Dedup {
    /// Forgets the ids past the window, and the oldest past `max_ids`;
    /// returns how many of those were still within the window.
    fn expire(&mut self, now: Instant) -> u64 {
        let mut early = 0;
        while let Some((at, _)) = self.order.front() {
            let within = now.duration_since(*at) < self.window;
            if within && self.order.len() <= self.max_ids {
                break;
            }
            early += u64::from(within);
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
        early
    }
}

/// The embedded log; clones share the same log.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Mutex<Inner>>,
    /// Wakes blocked readers when entries are appended.
    appended: Arc<Notify>,
    dedup_keys: DedupKeys,
    /// Most entries held at once (see the module's doc).
    max_entries: usize,
    /// Counts ids forgotten before the dedup window ended.
    forgotten_early: Option<prometheus::IntCounter>,
}

/// The default bound on the entries an embedded log holds
/// (`ingest.embedded_max_events`).
pub const DEFAULT_MAX_ENTRIES: usize = 2_000_000;

impl Default for EmbeddedLog {
    fn default() -> Self {
        EmbeddedLog::new("inkstream", Duration::from_secs(24 * 3600), 1_000_000)
    }
}

impl EmbeddedLog {
    /// One stream per category (no shards: one process reads them all).
    /// Ids are remembered for `dedup_window`, at most `max_ids` of them.
    pub fn new(prefix: &str, dedup_window: Duration, max_ids: usize) -> EmbeddedLog {
        let streams = Category::ALL
            .iter()
            .map(|c| Stream {
                name: stream_name(prefix, *c, 0).into(),
                entries: VecDeque::new(),
            })
            .collect();
        EmbeddedLog {
            inner: Arc::new(Mutex::new(Inner {
                streams,
                groups: HashMap::new(),
                last_id: (0, 0),
                dedup: Dedup::new(dedup_window, max_ids),
            })),
            appended: Arc::new(Notify::new()),
            dedup_keys: DedupKeys::random(),
            max_entries: DEFAULT_MAX_ENTRIES,
            forgotten_early: None,
        }
    }

    /// At most `max_entries` entries held (at least 1); an append that would
    /// go past it is refused whole.
    pub fn with_max_entries(mut self, max_entries: usize) -> EmbeddedLog {
        self.max_entries = max_entries.max(1);
        self
    }

    /// Counts in `counter` the ids forgotten before the dedup window ended
    /// (more than `max_ids` within it): a retry of one is stored again.
    pub fn with_forgotten_early_counter(mut self, counter: prometheus::IntCounter) -> EmbeddedLog {
        self.forgotten_early = Some(counter);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the log half-written
        // (every mutation is a single push or remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn append(&self, app: &str, events: &[Event]) -> Result<Vec<Appended>, LogError> {
        self.append_owned(app, events.to_vec())
    }

    /// Appends events the caller hands over (no copy of each event). All or
    /// nothing: [`LogError::Full`] when the new ones (duplicates take no
    /// room) do not all fit.
    pub fn append_owned(&self, app: &str, events: Vec<Event>) -> Result<Vec<Appended>, LogError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let clock = Instant::now();
        let namespace: Arc<str> = Arc::from(app);
        // Hashing happens before the lock: it is held only for
        // the lookups and the pushes.
        let events: Vec<(u128, Arc<Event>)> = events
            .into_iter()
            .map(|mut e| {
                let key = self.dedup_keys.key(app, &e.id);
                if let Some(id) = dataflow_id(Some(app), &e.id) {
                    e.id = id.into();
                }
                (key, Arc::new(e))
            })
            .collect();
        let mut placed: Vec<(usize, Id, bool)> = Vec::with_capacity(events.len());
        let mut inner = self.lock();
        let Inner {
            streams,
            last_id,
            dedup,
            ..
        } = &mut *inner;
        let early = dedup.expire(clock);
        if early > 0
            && let Some(c) = &self.forgotten_early
        {
            c.inc_by(early);
        }
        let held: usize = streams.iter().map(|s| s.entries.len()).sum();
        if held + events.len() > self.max_entries {
            // Near the bound: count what would take room (ids neither
            // remembered nor repeated within the batch).
            let mut in_batch = HashSet::with_capacity(events.len());
            let new = events
                .iter()
                .filter(|(key, _)| !dedup.seen.contains_key(key) && in_batch.insert(*key))
                .count();
            if held + new > self.max_entries {
                return Err(LogError::Full {
                    held,
                    max: self.max_entries,
                });
            }
        }
        for (key, event) in events {
            // One probe of the table: most ids are new.
            let slot = match dedup.seen.entry(key) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    let &(si, id) = first.get();
                    placed.push((si, id, true));
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(slot) => slot,
            };
            let id = if now > last_id.0 {
                (now, 0)
            } else {
                (last_id.0, last_id.1 + 1)
            };
            *last_id = id;
            let idx = category_index(event.category());
            streams[idx].entries.push_back((
                id,
                Stored {
                    event,
                    namespace: namespace.clone(),
                },
            ));
            slot.insert((idx, id));
            dedup.order.push_back((clock, key));
            placed.push((idx, id, false));
        }
        let names: Vec<Arc<str>> = streams.iter().map(|s| s.name.clone()).collect();
        drop(inner);
        self.appended.notify_waiters();
        Ok(placed
            .into_iter()
            .map(|(si, id, duplicate)| Appended {
                entry: EntryRef {
                    stream: names[si].clone(),
                    id: render(id),
                },
                duplicate,
            })
            .collect())
    }

    pub fn ensure_group(&self, group: &str) {
        self.lock().groups.entry(group.to_owned()).or_default();
    }

    pub async fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Vec<LogEntry> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Register interest before looking, so an append between the look
            // and the wait is not missed.
            let notified = self.appended.notified();
            let batch = self.take_new(group, consumer, count);
            if !batch.is_empty() {
                return batch;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    fn take_new(&self, group: &str, consumer: &str, count: usize) -> Vec<LogEntry> {
        let mut inner = self.lock();
        let Inner {
            streams, groups, ..
        } = &mut *inner;
        let g = groups.entry(group.to_owned()).or_default();
        // Merge streams by id so delivery follows append order across categories.
        let mut out: Vec<(usize, Id, &Stored)> = Vec::new();
        for (si, s) in streams.iter().enumerate() {
            let start = s.entries.partition_point(|(id, _)| *id <= g.last_delivered);
            out.extend(
                s.entries
                    .iter()
                    .skip(start)
                    .take(count)
                    .map(|(id, e)| (si, *id, e)),
            );
        }
        out.sort_by_key(|(_, id, _)| *id);
        out.truncate(count);
        if out.is_empty() {
            return Vec::new();
        }
        if let Some((_, id, _)) = out.last() {
            g.last_delivered = *id;
        }
        let owner = g.consumer(consumer);
        let now = Instant::now();
        out.into_iter()
            .map(|(si, id, stored)| {
                g.pending.push(si, id, owner.clone(), now);
                streams[si].read(id, stored)
            })
            .collect()
    }

    pub fn read_pending(&self, group: &str, consumer: &str, count: usize) -> Vec<LogEntry> {
        self.read_pending_after(group, consumer, count, &HashMap::new())
    }

    /// One page of `consumer`'s pending entries: per stream, after the id in `after`.
    pub fn read_pending_after(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        after: &HashMap<Arc<str>, String>,
    ) -> Vec<LogEntry> {
        let inner = self.lock();
        let Some(g) = inner.groups.get(group) else {
            return Vec::new();
        };
        g.pending
            .iter()
            .filter(|(_, slot)| &*slot.owner == consumer)
            .filter(|(si, slot)| {
                after
                    .get(&inner.streams[*si].name)
                    .and_then(|a| parse(a))
                    .is_none_or(|a| slot.id > a)
            })
            .take(count)
            .filter_map(|(si, slot)| {
                let s = &inner.streams[si];
                let pos = s.entries.binary_search_by_key(&slot.id, |(i, _)| *i).ok()?;
                Some(s.read(slot.id, &s.entries[pos].1))
            })
            .collect()
    }

    pub fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Vec<LogEntry> {
        let mut inner = self.lock();
        let Inner {
            streams, groups, ..
        } = &mut *inner;
        let Some(g) = groups.get_mut(group) else {
            return Vec::new();
        };
        let now = Instant::now();
        let owner = g.consumer(consumer);
        let mut out = Vec::new();
        for (si, slot) in g.pending.iter_mut() {
            if out.len() >= count {
                break;
            }
            if now.duration_since(slot.at) < min_idle || *slot.owner == *consumer {
                continue;
            }
            let s = &streams[si];
            let Ok(pos) = s.entries.binary_search_by_key(&slot.id, |(i, _)| *i) else {
                continue;
            };
            slot.owner = owner.clone();
            slot.at = now;
            out.push(s.read(slot.id, &s.entries[pos].1));
        }
        out
    }

    pub fn ack(&self, group: &str, entries: &[EntryRef]) {
        let mut inner = self.lock();
        let Inner {
            streams, groups, ..
        } = &mut *inner;
        if let Some(g) = groups.get_mut(group) {
            for e in entries {
                let si = streams.iter().position(|s| *s.name == *e.stream);
                if let (Some(si), Some(id)) = (si, parse(&e.id)) {
                    g.pending.remove(si, id);
                }
            }
        }
        // Trim what every group has acknowledged: nothing unacknowledged or
        // undelivered is ever removed.
        for (si, s) in streams.iter_mut().enumerate() {
            let floor = groups
                .values()
                .map(|g| {
                    let first_pending = g.pending.in_stream(si).next().map(|slot| slot.id);
                    match first_pending {
                        Some(id) => id,
                        None => (g.last_delivered.0, g.last_delivered.1.saturating_add(1)),
                    }
                })
                .min();
            if let Some(floor) = floor {
                while s.entries.front().is_some_and(|(id, _)| *id < floor) {
                    s.entries.pop_front();
                }
            }
        }
    }

    pub fn group_lag(&self, group: &str) -> (u64, Option<u64>) {
        let inner = self.lock();
        let Some(g) = inner.groups.get(group) else {
            let n: usize = inner.streams.iter().map(|s| s.entries.len()).sum();
            let oldest = inner
                .streams
                .iter()
                .filter_map(|s| s.entries.front())
                .map(|(id, _)| id.0)
                .min();
            return (n as u64, oldest);
        };
        let undelivered: usize = inner
            .streams
            .iter()
            .map(|s| s.entries.len() - s.entries.partition_point(|(id, _)| *id <= g.last_delivered))
            .sum();
        let oldest_pending = g.pending.iter().map(|(_, slot)| slot.id.0).min();
        let oldest_new = inner
            .streams
            .iter()
            .filter_map(|s| s.entries.iter().find(|(id, _)| *id > g.last_delivered))
            .map(|(id, _)| id.0)
            .min();
        (
            (undelivered + g.pending.len()) as u64,
            oldest_pending.into_iter().chain(oldest_new).min(),
        )
    }

    /// Entries currently held, over all streams (tests, stats).
    pub fn len(&self) -> usize {
        self.lock().streams.iter().map(|s| s.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EmbeddedLog {
    /// Up to `limit + 1` entries of the category's one stream within the
    /// query's bounds (only entries not yet trimmed: the embedded log drops
    /// what every group has acknowledged).
    pub fn range_shards(&self, q: &super::query::RangeQuery) -> Vec<Vec<LogEntry>> {
        let inner = self.lock();
        let s = &inner.streams[category_index(q.category)];
        // An entry here holds one event, so a position inside an entry
        // (`id.k`, which only a packed Redis entry gives) has taken it whole.
        let after = q.after.first().and_then(|a| a.as_deref());
        let after = after
            .and_then(super::query::parse_position)
            .and_then(|(id, _)| parse(id));
        let start = match after {
            Some(after) => s.entries.partition_point(|(id, _)| *id <= after),
            None => {
                let from = q.from_ms.unwrap_or(0);
                s.entries.partition_point(|(id, _)| id.0 < from)
            }
        };
        let run = s
            .entries
            .iter()
            .skip(start)
            .take_while(|(id, _)| q.to_ms.is_none_or(|to| id.0 < to))
            .take(q.limit + 1)
            .map(|(id, e)| s.read(*id, e))
            .collect();
        vec![run]
    }

    /// The same figures XINFO STREAM / GROUPS give for Redis. Consumers are
    /// those holding pending entries (the embedded log keeps no other record).
    pub fn info(&self, category: Category) -> super::query::CategoryInfo {
        use super::query::{CategoryInfo, GroupInfo, StreamInfo};
        let inner = self.lock();
        let si = category_index(category);
        let s = &inner.streams[si];
        let mut groups: Vec<GroupInfo> = inner
            .groups
            .iter()
            .map(|(name, g)| {
                let pending: Vec<&str> = g.pending.in_stream(si).map(|slot| &*slot.owner).collect();
                let mut consumers = pending.clone();
                consumers.sort();
                consumers.dedup();
                let lag =
                    s.entries.len() - s.entries.partition_point(|(id, _)| *id <= g.last_delivered);
                GroupInfo {
                    name: name.clone(),
                    consumers: consumers.len() as u64,
                    pending: pending.len() as u64,
                    last_delivered_id: Some(render(g.last_delivered).to_string()),
                    lag: Some(lag as u64),
                }
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        let shard = StreamInfo {
            stream: s.name.to_string(),
            length: s.entries.len() as u64,
            first_id: s.entries.front().map(|(id, _)| render(*id).to_string()),
            last_id: s.entries.back().map(|(id, _)| render(*id).to_string()),
            groups,
        };
        CategoryInfo::total(category, "embedded", vec![shard])
    }
}

fn category_index(c: Category) -> usize {
    Category::ALL.iter().position(|x| *x == c).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, ty: &str) -> Event {
        Event {
            id: id.into(),
            ts: 1,
            user_id: Some("u".into()),
            project_id: Some("p".into()),
            document_id: Some("d".into()),
            data: schemas::Payload::example(ty).unwrap(),
        }
    }

    #[tokio::test]
    async fn delivers_in_append_order_and_redelivers_unacked_pending() {
        let log = EmbeddedLog::default();
        log.ensure_group("g");
        log.append(
            "app",
            &[ev("a", "writing.keystroke"), ev("b", "system.error")],
        )
        .unwrap();
        log.append("app", &[ev("c", "writing.keystroke")]).unwrap();
        let got = log.read_new("g", "c1", 10, Duration::ZERO).await;
        let ids: Vec<_> = got
            .iter()
            .map(|e| e.caller_event().unwrap().id.clone())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        // Stored as the dataflow knows them, and handed out as they are
        // stored: no copy per read.
        assert!(got.iter().all(|e| e.id_form == IdForm::Dataflow));
        assert_eq!(got[0].event.as_ref().unwrap().id, "app/a");
        let again = log.read_pending("g", "c1", 1);
        assert!(Arc::ptr_eq(
            again[0].event.as_ref().unwrap(),
            got[0].event.as_ref().unwrap()
        ));
        assert!(log.read_new("g", "c1", 10, Duration::ZERO).await.is_empty());
        // Unacknowledged: still pending for c1.
        assert_eq!(log.read_pending("g", "c1", 10).len(), 3);
        log.ack("g", &[got[0].entry.clone()]);
        assert_eq!(log.read_pending("g", "c1", 10).len(), 2);
        // Only the acknowledged prefix of the writing stream was trimmed.
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn dedup_keys_tell_apart_how_a_pair_is_split_and_differ_by_process() {
        let k = DedupKeys::random();
        assert_ne!(k.key("ab", "c"), k.key("a", "bc"));
        assert_ne!(k.key("app", "1"), k.key("app", "2"));
        assert_eq!(k.key("app", "1"), k.key("app", "1"));
        // Another process (another random key) hashes differently.
        assert_ne!(DedupKeys::random().key("app", "1"), k.key("app", "1"));
    }

    #[test]
    fn ids_render_as_redis_writes_them_and_parse_back() {
        for id in [
            (0, 0),
            (9, 10),
            (1_733_400_000_123, 7),
            (u64::MAX, u64::MAX),
        ] {
            assert_eq!(&*render(id), format!("{}-{}", id.0, id.1));
            assert_eq!(parse(&render(id)), Some(id));
        }
    }

    #[tokio::test]
    async fn acknowledgements_in_any_order_leave_the_rest_pending_in_order() {
        let log = EmbeddedLog::default();
        log.ensure_group("g");
        log.append(
            "app",
            &[
                ev("w1", "writing.keystroke"),
                ev("s1", "system.error"),
                ev("w2", "writing.keystroke"),
                ev("w3", "writing.keystroke"),
                ev("s2", "system.error"),
            ],
        )
        .unwrap();
        let got = log.read_new("g", "c1", 10, Duration::ZERO).await;
        let by_id = |id: &str| {
            got.iter()
                .find(|e| e.caller_event().unwrap().id == id)
                .unwrap()
                .entry
                .clone()
        };
        let pending_ids = |v: Vec<LogEntry>| -> Vec<String> {
            v.iter()
                .map(|e| e.caller_event().unwrap().id.to_string())
                .collect()
        };
        // Out of order: the middle of one stream, then the other's last.
        log.ack("g", &[by_id("w2"), by_id("s2")]);
        assert_eq!(
            pending_ids(log.read_pending("g", "c1", 10)),
            ["w1", "w3", "s1"],
            "per stream (streams in category order), in id order"
        );
        assert_eq!(log.group_lag("g").0, 3);
        // A claim moves entries to another consumer without reordering them.
        let claimed = log.claim_idle("g", "c2", Duration::ZERO, 2);
        assert_eq!(pending_ids(claimed), ["w1", "w3"]);
        assert!(log.read_pending("g", "c1", 10).len() == 1);
        assert_eq!(pending_ids(log.read_pending("g", "c2", 10)), ["w1", "w3"]);
        // Acknowledging twice changes nothing; the front goes, then the rest.
        log.ack("g", &[by_id("w1"), by_id("w1")]);
        assert_eq!(pending_ids(log.read_pending("g", "c2", 10)), ["w3"]);
        log.ack("g", &[by_id("w3"), by_id("s1")]);
        assert_eq!(log.group_lag("g").0, 0);
        assert!(log.is_empty(), "everything acknowledged is trimmed");
    }

    #[test]
    fn the_same_id_from_the_same_app_is_stored_once() {
        let log = EmbeddedLog::default();
        let first = log
            .append(
                "app",
                &[ev("a", "writing.keystroke"), ev("a", "writing.keystroke")],
            )
            .unwrap();
        assert!(!first[0].duplicate);
        assert!(first[1].duplicate);
        assert_eq!(first[0].entry, first[1].entry);
        let again = log.append("app", &[ev("a", "writing.keystroke")]).unwrap();
        assert!(again[0].duplicate);
        // Another app's id space is its own.
        assert!(
            !log.append("other", &[ev("a", "writing.keystroke")])
                .unwrap()[0]
                .duplicate
        );
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let log = EmbeddedLog::new("t", Duration::from_secs(3600), 10);
        for i in 0..100 {
            log.append("app", &[ev(&format!("e{i}"), "writing.keystroke")])
                .unwrap();
        }
        assert!(log.lock().dedup.seen.len() <= 11);
    }

    /// Ids forgotten within the window (the bound reached) are counted: a
    /// retry of one would be stored again, and an operator can see that.
    #[test]
    fn ids_forgotten_before_the_window_ends_are_counted() {
        let counter = prometheus::IntCounter::new("t", "t").unwrap();
        let log = EmbeddedLog::new("t", Duration::from_secs(3600), 10)
            .with_forgotten_early_counter(counter.clone());
        for i in 0..100 {
            log.append("app", &[ev(&format!("e{i}"), "writing.keystroke")])
                .unwrap();
        }
        // 100 ids, at most 10 kept (11 once the last is added): 89 were
        // forgotten within their hour.
        assert_eq!(counter.get(), 89);
        let again = log.append("app", &[ev("e0", "writing.keystroke")]).unwrap();
        assert!(
            !again[0].duplicate,
            "e0 was forgotten, so it is stored again"
        );
    }

    #[tokio::test]
    async fn blocking_read_wakes_on_append() {
        let log = EmbeddedLog::default();
        log.ensure_group("g");
        let reader = log.clone();
        let t = tokio::spawn(
            async move { reader.read_new("g", "c", 10, Duration::from_secs(5)).await },
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.append("app", &[ev("a", "writing.keystroke")]).unwrap();
        let got = t.await.unwrap();
        assert_eq!(got.len(), 1);
    }

    /// A log whose reader has stopped (the dataflow stuck, the Kafka
    /// mirror's broker away) must not grow until the process is killed for
    /// its memory, losing every event it acknowledged: past its bound an
    /// append is refused whole, with an error the caller sees (a 503), and
    /// appends succeed again once the reader has caught up.
    #[tokio::test]
    async fn a_full_log_refuses_appends_whole_and_takes_them_again_once_read() {
        let log = EmbeddedLog::default().with_max_entries(3);
        log.ensure_group("g");
        log.append(
            "app",
            &[ev("a", "writing.keystroke"), ev("b", "system.error")],
        )
        .unwrap();
        // Two new events do not fit beside the two held: nothing is stored.
        let refused = log.append(
            "app",
            &[ev("c", "writing.keystroke"), ev("d", "writing.keystroke")],
        );
        assert!(
            matches!(refused, Err(LogError::Full { held: 2, max: 3 })),
            "an append past the bound is refused: {refused:?}"
        );
        assert_eq!(log.len(), 2, "a refused append stores none of its events");
        assert!(schemas::Classify::retryable(&refused.unwrap_err()));
        // Duplicates take no room: a retry of what is stored is answered.
        let again = log
            .append(
                "app",
                &[
                    ev("a", "writing.keystroke"),
                    ev("c", "writing.keystroke"),
                    ev("c", "writing.keystroke"),
                ],
            )
            .unwrap();
        assert_eq!(
            again.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(log.len(), 3);
        assert!(matches!(
            log.append("app", &[ev("d", "writing.keystroke")]),
            Err(LogError::Full { held: 3, max: 3 })
        ));
        // The reader catches up: what it acknowledged makes room.
        let read = log.read_new("g", "c1", 10, Duration::ZERO).await;
        assert_eq!(read.len(), 3);
        log.ack("g", &[read[0].entry.clone(), read[1].entry.clone()]);
        assert_eq!(log.len(), 1);
        log.append(
            "app",
            &[ev("d", "writing.keystroke"), ev("e", "writing.keystroke")],
        )
        .unwrap();
        let ids: Vec<String> = log
            .read_new("g", "c1", 10, Duration::ZERO)
            .await
            .iter()
            .map(|e| e.caller_event().unwrap().id.to_string())
            .collect();
        assert_eq!(ids, ["d", "e"], "nothing refused was stored on the side");
    }
}
