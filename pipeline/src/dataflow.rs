//! Wires the operators into one timely dataflow, and drives its input.
//!
//! **Time.** Dataflow timestamps are event times (ms since the epoch) rounded
//! down to `dataflow.epoch`, so records batch into epochs and the timely
//! frontier *is* the event-time watermark. The input is an unordered input:
//! worker 0's [`InputDriver`] holds the one capability, at the watermark, and
//! sends each event at its own epoch. An event older than the watermark can no
//! longer be sent at its time; it is *late*, and goes to the dead-letter output
//! with reason `late` instead (counted, never silently dropped).
//!
//! **Watermark** = newest event time seen − `allowed_disorder`. In `serve` it
//! also advances with the wall clock while the input is idle (see
//! [`crate::bridge`]); `replay` is pure event time and flushes at end of input.

use crate::config::Config;
use crate::operators::alert_windows::{AlertWindows, AlertWindowsExt};
use crate::operators::conflict_windows::ConflictWindows;
use crate::operators::live_wpm::LiveWpm;
use crate::operators::presence::Presence;
use crate::operators::sessions::Sessions;
use crate::operators::team_metrics::TeamMetrics;
use crate::operators::{derived_id, stable_hash};
use crate::runtime::checkpoint::Checkpoints;
use crate::runtime::operator_stats::OperatorStats;
use crate::runtime::{Core, Keyed, OperatorCtx};
use crate::runtime::{EventTime, Record};
use schemas::Event;
use schemas::payload::{DeadLetter, Payload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::operators::core::unordered_input::{UnorderedHandle, UnorderedInput};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{ActivateCapability, Probe};
use timely::dataflow::{ProbeHandle, Stream};
use timely::worker::Worker;

/// Where derived events go: the fanout hub in `serve`, files in `replay`,
/// a vector in tests. Called from worker threads, so it must be `Sync`.
pub trait DerivedSink: Send + Sync + 'static {
    /// Takes a batch of derived events (drain it).
    fn emit(&self, events: &mut Vec<Event>);
    /// Takes a batch of derived events stamped with dataflow time `time`
    /// (the dataflow's own output; `emit` takes the bridge's dead letters).
    fn emit_at(&self, time: u64, events: &mut Vec<Event>) {
        let _ = time;
        self.emit(events)
    }
    /// Takes the input's dead letters (undecodable, invalid, late) of a
    /// batch read after the cut of the checkpoint at `stamp` (`None`:
    /// before every cut, [`InputDriver::last_crossed`]): a restore from
    /// `stamp` or an older barrier reads that batch again and dead-letters
    /// them again; a sink that keeps what it was given may cut them then.
    fn emit_input(&self, stamp: Option<u64>, events: &mut Vec<Event>) {
        let _ = stamp;
        self.emit(events)
    }
    /// Makes everything emitted so far, or at least everything stamped
    /// before `barrier`, durable (before the checkpoint at `barrier` is
    /// declared complete; an error fails that checkpoint).
    fn sync(&self, barrier: u64) -> Result<(), SinkError> {
        let _ = barrier;
        Ok(())
    }
    /// A sink with a second phase (exactly-once Kafka topics): what the
    /// checkpoint at `barrier` must hold so that a restore from it can still
    /// commit it. `None`: nothing (the default).
    fn pending(&self, barrier: u64) -> Result<Option<Pending>, SinkError> {
        let _ = barrier;
        Ok(None)
    }
    /// The checkpoint at `barrier` is complete in every process: commit
    /// what it holds.
    fn commit(&self, barrier: u64) -> Result<(), SinkError> {
        let _ = barrier;
        Ok(())
    }
    /// At the start of a dataflow with checkpoints: the restored checkpoint
    /// (`None`: none) and what [`DerivedSink::pending`] gave for it,
    /// committed unless it already is.
    fn restore(&self, barrier: Option<u64>, pending: Option<Pending>) -> Result<(), SinkError> {
        let _ = (barrier, pending);
        Ok(())
    }
}

/// What a checkpoint holds for a two-phase sink.
pub use connectors::kafka::derived::Pending;

/// Timely's own failures: workers that could not start (a cluster peer
/// unreachable, an address in use) or that panicked. Timely reports both
/// only as text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkerError(pub String);

impl schemas::Classify for WorkerError {
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::External
    }
}

/// Why a sink could not write or make durable what it was given.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write to {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("kafka derived topics: {0}")]
    Kafka(#[from] connectors::kafka::derived::DeliveryError),
    #[error("notifier: alerts not routed yet could not be queued: {0}")]
    Notifier(#[from] connectors::notifier::store::StoreError),
}

impl schemas::Classify for SinkError {
    /// The disk or the service behind it (full, gone, read-only), or the
    /// brokers.
    fn fault(&self) -> schemas::Fault {
        match self {
            SinkError::File { .. } => schemas::Fault::External,
            SinkError::Kafka(e) => schemas::Classify::fault(e),
            SinkError::Notifier(e) => schemas::Classify::fault(e),
        }
    }
}

/// Every operator, wired: events in, derived events out.
///
/// ```text
/// records ─┬─ live_wpm ───────────────────────────────┐
///          ├─ sessions (state machine, flow) ──┬──────┤
///          ├─ presence ────────────────────────│──────┤
///          ├─ conflict_windows ──┬─────────────│──────┼──▶ derived events
///          │                     ▼             │      │
///          ├─ team_metrics ◀── conflicts       │      │
///          │                                   ▼      │
///          └─ alert_windows ◀── records + session/flow ─┘
/// ```
pub fn build_graph<'scope>(
    events: Stream<'scope, u64, Vec<Record>>,
    config: &Config,
    ctx: &OperatorCtx,
) -> Stream<'scope, u64, Vec<Event>> {
    use crate::operators::selection::OperatorName as Op;
    let run = config.dataflow.operators;
    let scope = events.scope();
    let mut outputs = Vec::new();
    if run.contains(Op::Wpm) {
        outputs.push(events.clone().keyed(LiveWpm::new(&config.wpm), ctx));
    }
    let sessions = run.contains(Op::Sessions).then(|| {
        events
            .clone()
            .keyed(Sessions::new(&config.sessions, &config.flow), ctx)
    });
    outputs.extend(sessions.clone());
    if run.contains(Op::Presence) {
        outputs.push(events.clone().keyed(Presence::new(&config.presence), ctx));
    }
    let conflicts = run.contains(Op::Conflicts).then(|| {
        events
            .clone()
            .keyed(ConflictWindows::new(&config.conflicts), ctx)
    });
    outputs.extend(conflicts.clone());
    // The selection pulls in what an operator reads (team: conflicts;
    // alerts: sessions), so the streams below exist when they run.
    if let (true, Some(conflicts)) = (run.contains(Op::Team), conflicts) {
        outputs.push(
            events
                .clone()
                .concat(as_records(conflicts))
                .keyed(TeamMetrics::new(&config.team), ctx),
        );
    }
    // Alerts read the input and what the sessions derive (flow state).
    if let (true, Some(sessions)) = (run.contains(Op::Alerts), sessions) {
        outputs.push(
            events
                .concat(as_records(sessions))
                .alert_windows(&config.alerts, ctx),
        );
    }
    scope.concatenate(outputs)
}

/// Every keyed operator's name ([`Core::NAME`]: its metric label and
/// checkpoint file), in the order [`build_graph`] wires them: the closed
/// label set of the per-operator metrics, initialized at startup so each
/// series exists at once.
pub const OPERATORS: [&str; 6] = [
    LiveWpm::NAME,
    Sessions::NAME,
    Presence::NAME,
    ConflictWindows::NAME,
    TeamMetrics::NAME,
    AlertWindows::NAME,
];

/// Derived events as records, to feed other operators (records are what
/// crosses workers; see [`Record`]).
fn as_records<'scope>(events: Stream<'scope, u64, Vec<Event>>) -> Stream<'scope, u64, Vec<Record>> {
    events.map(Record::derived)
}

type Handle = UnorderedHandle<u64, CapacityContainerBuilder<Vec<Record>>>;

/// Feeds events into the dataflow at their event-time epoch and holds the
/// watermark. Lives on worker 0; other workers drop their capability at once.
pub struct InputDriver {
    handle: Handle,
    cap: Option<ActivateCapability<u64>>,
    epoch_ms: u64,
    disorder_ms: i64,
    /// Newest event time seen.
    max_ts: Option<i64>,
    /// Events with `ts < watermark` are late.
    watermark: i64,
    /// Arrival sequence number of the next event.
    next_seq: u64,
    /// Hashed ids ([`DedupKey`]) of events no more than
    /// `dedup_retention_ms` behind the watermark, with their time.
    /// Keyed hasher for the table itself: the hashes are attacker-chosen
    /// input for it (HashDoS).
    seen: foldhash::HashMap<u64, i64>,
    /// How an id becomes its key in `seen`.
    dedup_key: DedupKey,
    /// Size of `seen` after its last pruning (prune when it doubles).
    seen_pruned_at: usize,
    /// How far behind the watermark ids are kept (`dataflow.dedup_retention`):
    /// a copy within it is a duplicate, not a late event.
    dedup_retention_ms: i64,
    duplicates: u64,
    checkpoints: Option<Arc<Checkpoints>>,
    /// The next checkpoint barrier the capability will cross.
    next_barrier: Option<u64>,
    /// Barriers crossed since the last [`InputDriver::take_crossed`].
    crossed: Vec<u64>,
    /// The newest barrier crossed (or restored from): see
    /// [`InputDriver::last_crossed`].
    last_crossed: Option<u64>,
    /// Per input partition (a Redis stream, a Kafka partition): its newest
    /// event time and when it last delivered. With partitions, the watermark
    /// follows the *slowest active* one (Flink's per-partition watermarks):
    /// a backlog read stream by stream does not make the streams read later
    /// look late. A partition silent for `idle_after` stops holding it back.
    parts: Partitions,
    idle_after: std::time::Duration,
    /// `serve` only: the server clock bounds event time (see
    /// [`InputDriver::bound_by_clock`]); `None` in `replay` (pure event time).
    clock: Option<ServerClock>,
}

/// The server clock that bounds how far event time may move the watermark:
/// an event stamped after `now() + tolerance_ms` is processed with its own
/// time, but counts as `now() + tolerance_ms` for the watermark, so one
/// client with a fast clock cannot make everyone else late.
#[derive(Clone, Copy)]
pub struct ServerClock {
    /// Milliseconds since the Unix epoch (a plain `fn`, so tests can fake it).
    pub now_ms: fn() -> i64,
    pub tolerance_ms: i64,
}

impl ServerClock {
    /// The system clock.
    pub fn system(tolerance: std::time::Duration) -> ServerClock {
        fn now_ms() -> i64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        }
        ServerClock {
            now_ms,
            tolerance_ms: tolerance.as_millis() as i64,
        }
    }

    /// The latest event time that may count for the watermark now.
    fn horizon(&self) -> i64 {
        (self.now_ms)().saturating_add(self.tolerance_ms)
    }
}

/// The input partitions of a reader and the least newest event time among
/// the active ones (cached: most events do not change it).
#[derive(Default)]
struct Partitions {
    parts: HashMap<Arc<str>, Part>,
    min: Option<i64>,
}

struct Part {
    max_ts: i64,
    last_seen: std::time::Instant,
    /// Held by the reader ([`InputDriver::hold`]): `max_ts` is a stand-in
    /// until the partition's first record.
    held: bool,
}

impl Partitions {
    fn recompute(&mut self) {
        self.min = self.parts.values().map(|p| p.max_ts).min();
    }

    /// Marks `part` active now; a new one starts at `ts`.
    fn touch(&mut self, part: &Arc<str>, ts: i64, now: std::time::Instant) {
        match self.parts.get_mut(part) {
            Some(p) if p.held => {
                // Its first record: from here on its own time counts.
                p.held = false;
                p.max_ts = ts;
                p.last_seen = now;
                self.recompute();
            }
            Some(p) => p.last_seen = now,
            None => {
                self.parts.insert(
                    part.clone(),
                    Part {
                        max_ts: ts,
                        last_seen: now,
                        held: false,
                    },
                );
                self.min = Some(self.min.map_or(ts, |m| m.min(ts)));
            }
        }
    }

    /// `part` delivered an event at `ts`; returns the least newest time of
    /// the active partitions.
    fn observe(&mut self, part: &Arc<str>, ts: i64, now: std::time::Instant) -> Option<i64> {
        match self.parts.get_mut(part) {
            Some(p) if p.held => {
                p.held = false;
                p.max_ts = ts;
                p.last_seen = now;
                self.recompute();
            }
            Some(p) => {
                p.last_seen = now;
                if ts > p.max_ts {
                    let was_min = self.min == Some(p.max_ts);
                    p.max_ts = ts;
                    if was_min {
                        self.recompute();
                    }
                }
            }
            None => self.touch(part, ts, now),
        }
        self.min
    }

    /// Drops partitions silent for `idle_after`; whether any was.
    fn expire(&mut self, now: std::time::Instant, idle_after: std::time::Duration) -> bool {
        let before = self.parts.len();
        self.parts
            .retain(|_, p| now.duration_since(p.last_seen) < idle_after);
        let expired = self.parts.len() != before;
        if expired {
            self.recompute();
        }
        expired
    }
}

/// `stream`'s index in `parts` (the partitions of a batch for
/// [`InputDriver::push_parted`]), added if new. A reply lists a stream's
/// entries together and the embedded log shares one name per stream, so
/// the last one or a pointer comparison nearly always finds it.
pub fn part_index(parts: &mut Vec<Arc<str>>, stream: &Arc<str>) -> u32 {
    if let Some(i) = parts.iter().rposition(|p| Arc::ptr_eq(p, stream)) {
        return i as u32;
    }
    if let Some(i) = parts.iter().position(|p| **p == **stream) {
        return i as u32;
    }
    parts.push(stream.clone());
    (parts.len() - 1) as u32
}

/// How the input driver turns an event id into the 64-bit identity it
/// remembers. Two ids with the same identity are one event to the
/// dataflow, so the identity must not be forgeable: with an unkeyed hash
/// (FNV until 2026-12-06) a caller could compute an id of its own that
/// passes for another caller's next id (ids are often predictable) and so
/// drop that event from every operator as a "duplicate", an alert
/// included. SipHash-1-3 under a random 128-bit key, kept in each
/// checkpoint, makes that a guess against 2^64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupKey {
    /// FNV-1a of the id: only for state restored from a checkpoint written
    /// before the keyed identity, whose remembered ids are FNV hashes;
    /// the next checkpoint keeps it, so that state stays consistent.
    Fnv,
    SipHash13(u64, u64),
}

impl DedupKey {
    /// A fresh secret key from the OS's randomness (through std's
    /// per-process `RandomState`, SipHash-keyed from `getrandom`).
    pub fn random() -> DedupKey {
        use std::hash::BuildHasher;
        let secret = std::collections::hash_map::RandomState::new();
        DedupKey::SipHash13(secret.hash_one(0u8), secret.hash_one(1u8))
    }

    /// The identity of `id`.
    pub fn of(&self, id: &str) -> u64 {
        match *self {
            DedupKey::Fnv => stable_hash(id),
            DedupKey::SipHash13(k0, k1) => {
                use std::hash::Hasher;
                let mut h = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
                h.write(id.as_bytes());
                h.finish()
            }
        }
    }
}

/// What the input driver must restore to resume exactly where a
/// checkpoint was taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverState {
    pub base: DriverBase,
    /// How `base.seen` identifies ids.
    pub dedup_key: DedupKey,
}

/// The driver's state but for its [`DedupKey`]: all that checkpoints before
/// 2026-12-06 stored (their `seen` are FNV hashes). bincode writes a nested
/// struct's fields inline, so a [`DriverState`] is these bytes followed by
/// the key; readers decode a part as the current shape first and as this
/// one when that fails (the older bytes end where the key would start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverBase {
    pub watermark: i64,
    pub max_ts: Option<i64>,
    pub next_seq: u64,
    /// Identities ([`DriverState::dedup_key`]) of the ids remembered.
    pub seen: Vec<(u64, i64)>,
    pub duplicates: u64,
    /// Newest event time per input partition.
    pub parts: Vec<(String, i64)>,
}

impl From<DriverBase> for DriverState {
    fn from(base: DriverBase) -> DriverState {
        DriverState {
            base,
            dedup_key: DedupKey::Fnv,
        }
    }
}

impl InputDriver {
    /// The epoch (dataflow timestamp) of an event time.
    pub fn epoch_of(&self, ts: i64) -> u64 {
        let ts = ts.max(0) as u64;
        ts - ts % self.epoch_ms
    }

    /// Sends `events` into the dataflow; returns those that are late.
    pub fn push(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Event> {
        self.push_positioned(events.into_iter().map(|e| (None, e)))
    }

    /// Like [`InputDriver::push`], with each event's position in its log
    /// (Redis entry id, Kafka offset) as its arrival sequence number when
    /// known: per key, log order is arrival order, whichever worker reads
    /// it, and a redelivered event keeps its number (so it is recognised).
    ///
    /// Records are stamped with the watermark's epoch at arrival, not their
    /// own: one container per call, in arrival order, so every downstream
    /// channel delivers each key's records in the order they arrived (timely
    /// channels are FIFO). A record's stamp is never later than its own
    /// epoch, so the frontier still means "no event before this time can
    /// come": frontier-driven operators park records by their own epoch
    /// ([`crate::runtime::EpochBuffer`]).
    ///
    /// An event id seen before (within the disorder window: older copies are
    /// late anyway) is a duplicate: counted in [`InputDriver::duplicates`]
    /// and not sent, so operators see each event once.
    pub fn push_positioned(
        &mut self,
        events: impl IntoIterator<Item = (Option<u64>, Event)>,
    ) -> Vec<Event> {
        let now = std::time::Instant::now();
        self.push_inner(events.into_iter().map(|(p, e)| (None, p, e)), now)
    }

    /// Like [`InputDriver::push_positioned`], with each event's input
    /// partition (`None`: the one default partition, as in `replay`).
    pub fn push_from(&mut self, events: Vec<(Option<Arc<str>>, Option<u64>, Event)>) -> Vec<Event> {
        let mut parts: Vec<Arc<str>> = Vec::new();
        let events = events
            .into_iter()
            .map(|(part, position, e)| {
                let part = part.map(|p| part_index(&mut parts, &p));
                (part, position, Arc::new(e))
            })
            .collect();
        self.push_parted(&parts, events)
    }

    /// [`InputDriver::push_from`] with each event's partition given as an
    /// index into `parts`: the reader names each partition once per batch,
    /// so no event clones (and drops) a shared name — an atomic on a cache
    /// line the log's threads touch too. Each event comes in its `Arc`
    /// already (made where the reader hands it over: one move of the
    /// event, not two).
    pub fn push_parted(
        &mut self,
        parts: &[Arc<str>],
        events: Vec<(Option<u32>, Option<u64>, Arc<Event>)>,
    ) -> Vec<Event> {
        let now = std::time::Instant::now();
        self.expire_idle(now);
        let horizon = self.horizon();
        // Every partition in this batch is active from its start, at its
        // first event's time: a stream that comes later in the batch (a
        // reply lists stream after stream) holds the watermark back from
        // the first event on, instead of finding it moved past by the
        // streams listed before it. (Touching it again for its later
        // events would change nothing: same instant, and only a new or
        // held partition takes the time.)
        let mut touched = vec![false; parts.len()];
        for (part, _, e) in &events {
            if let Some(i) = *part
                && !std::mem::replace(&mut touched[i as usize], true)
            {
                self.parts.touch(&parts[i as usize], e.ts.min(horizon), now);
            }
        }
        self.push_arcs(
            events
                .into_iter()
                .map(|(part, position, e)| (part.map(|i| &parts[i as usize]), position, e)),
            now,
        )
    }

    /// Like [`InputDriver::push`], for events decoded elsewhere (the
    /// replay's block decoders) and already shared, so the feeding worker
    /// neither allocates nor copies them.
    pub fn push_shared(&mut self, events: Vec<Arc<Event>>) -> Vec<Event> {
        let now = std::time::Instant::now();
        // Half of these were decoded on another core: the first read of
        // each is a cache miss. A pass of independent reads first lets the
        // core wait for many at once, not one per event in turn.
        std::hint::black_box(touch_all(&events));
        self.push_arcs(events.into_iter().map(|e| (None, None, e)), now)
    }

    fn push_inner<'a>(
        &mut self,
        events: impl Iterator<Item = (Option<&'a Arc<str>>, Option<u64>, Event)>,
        now: std::time::Instant,
    ) -> Vec<Event> {
        self.push_arcs(
            events.map(|(part, position, e)| (part, position, Arc::new(e))),
            now,
        )
    }

    /// The input proper: each event with its partition and its position.
    fn push_arcs<'a>(
        &mut self,
        events: impl Iterator<Item = (Option<&'a Arc<str>>, Option<u64>, Arc<Event>)>,
        now: std::time::Instant,
    ) -> Vec<Event> {
        // A late event is not shared within the dataflow: unwrapping it
        // copies it only when the embedded log still holds it (rare: late
        // events are few).
        let unshared = |e: Arc<Event>| Arc::try_unwrap(e).unwrap_or_else(|e| (*e).clone());
        let mut late = Vec::new();
        let Some(cap) = self.cap.as_ref() else {
            late.extend(events.map(|(_, _, e)| unshared(e)));
            return late;
        };
        let horizon = self.horizon();
        let mut handle = self.handle.activate();
        let mut session = handle.session(cap);
        for (part, position, e) in events {
            // A copy of an event already taken is a duplicate even behind
            // the watermark (within `dedup_retention`): it was processed.
            // One lookup: most ids are new.
            let std::collections::hash_map::Entry::Vacant(slot) =
                self.seen.entry(self.dedup_key.of(e.id.as_str()))
            else {
                self.duplicates += 1;
                continue;
            };
            if e.ts < self.watermark {
                late.push(unshared(e));
                continue;
            }
            slot.insert(e.ts);
            // The watermark moves per event, not per batch, so which events are
            // late depends only on arrival order, never on how input was batched.
            // An event from the future counts only up to the server clock.
            let counted = e.ts.min(horizon);
            if self.max_ts.is_none_or(|m| counted > m) {
                self.max_ts = Some(counted);
            }
            let newest = match &part {
                None => Some(counted),
                Some(part) => self.parts.observe(part, counted, now),
            };
            if let Some(newest) = newest {
                self.watermark = self.watermark.max(newest - self.disorder_ms);
            }
            let seq = position.unwrap_or(self.next_seq);
            self.next_seq = self.next_seq.max(seq) + 1;
            session.give(Record { seq, event: e });
        }
        drop(session);
        drop(handle);
        self.downgrade_to_watermark();
        late
    }

    /// Events dropped as duplicates of an id already in the window.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Partitions silent for `idle_after` stop holding the watermark back.
    fn expire_idle(&mut self, now: std::time::Instant) {
        if self.parts.expire(now, self.idle_after)
            && let Some(min) = self.parts.min
        {
            self.watermark = self.watermark.max(min - self.disorder_ms);
        }
    }

    /// `part` has records the reader has yet to deliver (a Kafka source's
    /// new assignment with a backlog): until its first record arrives, it
    /// holds the watermark where it is now, as an active partition would —
    /// without it, the partitions delivered first would move the watermark
    /// past this one's backlog (Flink's per-split watermarks start at the
    /// minimum for the same reason). A partition already known is only
    /// marked active. Like any partition it stops holding once silent for
    /// `idle_after`.
    pub fn hold(&mut self, part: Arc<str>) {
        let now = std::time::Instant::now();
        let at = self.watermark.saturating_add(self.disorder_ms);
        match self.parts.parts.get_mut(&part) {
            Some(p) => p.last_seen = now,
            None => {
                self.parts.parts.insert(
                    part,
                    Part {
                        max_ts: at,
                        last_seen: now,
                        held: true,
                    },
                );
                self.parts.recompute();
            }
        }
    }

    /// Lets time pass without input: partitions that delivered nothing for
    /// `idle_after` before `quiet_until` (the instant the reader last caught
    /// up with its input) stop holding the watermark back.
    pub fn tick(&mut self, quiet_until: Option<std::time::Instant>) {
        if let Some(until) = quiet_until {
            self.expire_idle(until);
        }
        self.downgrade_to_watermark();
    }

    /// Bounds event time by the server clock (`serve`): no event moves the
    /// watermark past `now + tolerance − allowed_disorder`, and neither does
    /// the idle advance.
    pub fn bound_by_clock(&mut self, clock: ServerClock) {
        self.clock = Some(clock);
    }

    /// The latest event time that counts for the watermark now.
    fn horizon(&self) -> i64 {
        self.clock.as_ref().map_or(i64::MAX, ServerClock::horizon)
    }

    /// Moves the watermark forward to `watermark` (never back, and with a
    /// server clock never past it: see [`InputDriver::bound_by_clock`]).
    pub fn advance_to(&mut self, watermark: i64) {
        let watermark = watermark.min(self.horizon().saturating_sub(self.disorder_ms));
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        self.downgrade_to_watermark();
    }

    fn downgrade_to_watermark(&mut self) {
        // Ids further behind the watermark than the retention can go: a
        // copy of them is late.
        if self.seen.len() > self.seen_pruned_at.saturating_mul(2).max(1024) {
            let w = self.watermark.saturating_sub(self.dedup_retention_ms);
            self.seen.retain(|_, ts| *ts >= w);
            self.seen_pruned_at = self.seen.len();
        }
        let t = self.epoch_of(self.watermark);
        if let Some(cap) = self.cap.as_mut()
            && *cap.time() < t
        {
            cap.downgrade(&t);
            // Everything sent so far is stamped before `t`: a checkpoint cut.
            if let (Some(c), Some(next)) = (self.checkpoints.as_ref(), self.next_barrier)
                && t >= next
            {
                let b = c.barrier_at_or_before(t);
                self.crossed.push(b);
                self.last_crossed = Some(b);
                self.next_barrier = Some(c.next_barrier(b));
            }
        }
    }

    /// The newest checkpoint barrier the input crossed so far (`None`:
    /// none). Read before a batch is pushed, it says which restores read
    /// that batch again: those from this barrier or an older one (the
    /// batch is after its cut), so the batch's dead letters carry it
    /// ([`DerivedSink::emit_input`]).
    pub fn last_crossed(&self) -> Option<u64> {
        self.last_crossed
    }

    /// Checkpoint barriers the input crossed since the last call: save the
    /// driver's part of each ([`InputDriver::state`] and the source position).
    pub fn take_crossed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.crossed)
    }

    /// What a checkpoint keeps of the driver.
    pub fn state(&self) -> DriverState {
        let mut seen: Vec<(u64, i64)> = self.seen.iter().map(|(k, v)| (*k, *v)).collect();
        seen.sort_unstable();
        let mut parts: Vec<(String, i64)> = self
            .parts
            .parts
            .iter()
            .map(|(k, p)| (k.to_string(), p.max_ts))
            .collect();
        parts.sort_unstable();
        DriverState {
            base: DriverBase {
                watermark: self.watermark,
                max_ts: self.max_ts,
                next_seq: self.next_seq,
                seen,
                duplicates: self.duplicates,
                parts,
            },
            dedup_key: self.dedup_key,
        }
    }

    /// Resumes from a checkpoint's driver part.
    pub fn restore(
        &mut self,
        DriverState {
            base: state,
            dedup_key,
        }: DriverState,
    ) {
        self.watermark = state.watermark;
        self.max_ts = state.max_ts;
        self.next_seq = state.next_seq;
        self.seen = state.seen.into_iter().collect();
        self.seen_pruned_at = self.seen.len();
        self.dedup_key = dedup_key;
        self.duplicates = state.duplicates;
        let now = std::time::Instant::now();
        self.parts.parts = state
            .parts
            .into_iter()
            .map(|(k, max_ts)| {
                (
                    Arc::from(k),
                    Part {
                        max_ts,
                        last_seen: now,
                        held: false,
                    },
                )
            })
            .collect();
        self.parts.recompute();
        self.downgrade_to_watermark();
        // The restored barrier itself is not crossed again.
        self.crossed.clear();
        self.last_crossed = self.checkpoints.as_ref().and_then(|c| c.restored());
    }

    /// The current watermark (ms).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The newest event time seen.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// The dataflow time the input is at (`None` once closed).
    pub fn time(&self) -> Option<u64> {
        self.cap.as_ref().map(|c| *c.time())
    }

    /// Ends the input: everything pending is flushed through the dataflow.
    pub fn close(&mut self) {
        self.cap = None;
    }
}

/// Builds the dataflow on `worker` with its output going to `sink` (and its
/// operators' figures to `stats`, when given). Returns
/// the input driver when this worker reads a source (`reader`), and a probe
/// on the output. Each reading worker holds its own watermark (per-input
/// watermarks, as with Kafka partitions); the frontier is their minimum.
pub fn install<S: DerivedSink>(
    worker: &mut Worker,
    config: &Config,
    sink: Arc<S>,
    reader: bool,
    checkpoints: Option<Arc<Checkpoints>>,
    stats: Option<OperatorStats>,
) -> (Option<InputDriver>, ProbeHandle<u64>) {
    let ctx = OperatorCtx {
        time: EventTime {
            epoch_ms: config.dataflow.epoch.as_millis().max(1) as u64,
            flush_at_end: config.dataflow.flush_at_end,
        },
        worker: worker.index(),
        checkpoints,
        stats,
        // Replay (`flush_at_end`) has no live operator to let through.
        step_budget: (!config.dataflow.flush_at_end).then_some(config.dataflow.step_budget),
    };
    let checkpoints = ctx.checkpoints.clone();
    install_graph(worker, config, sink, reader, checkpoints, |events| {
        build_graph(events, config, &ctx)
    })
}

/// [`install`] with another graph (tests run one operator this way, with the
/// real input driver: stamping, watermark, lateness and deduplication).
pub fn install_graph<S, G>(
    worker: &mut Worker,
    config: &Config,
    sink: Arc<S>,
    reader: bool,
    checkpoints: Option<Arc<Checkpoints>>,
    graph: G,
) -> (Option<InputDriver>, ProbeHandle<u64>)
where
    S: DerivedSink,
    G: for<'s> FnOnce(Stream<'s, u64, Vec<Record>>) -> Stream<'s, u64, Vec<Event>>,
{
    let probe = ProbeHandle::new();
    let (handle, cap) = worker.dataflow::<u64, _, _>(|scope| {
        let ((handle, cap), events) =
            scope.new_unordered_input::<CapacityContainerBuilder<Vec<Record>>>();
        // The probe is after the sink: once it passes a time, everything
        // stamped before it has been handed to the sink (checkpoints rely on
        // it to flush outputs before declaring a checkpoint complete).
        graph(events)
            .unary::<CapacityContainerBuilder<Vec<Event>>, _, _, _>(
                Pipeline,
                "DerivedSink",
                move |_cap, _info| {
                    move |input, _output| {
                        input.for_each(|cap, data| {
                            sink.emit_at(cap.least().copied().unwrap_or(0), data)
                        });
                    }
                },
            )
            .probe_with(&probe);
        (handle, cap)
    });
    if !reader {
        // A worker that reads nothing holds no capability: the frontier is
        // decided by the readers alone.
        drop(cap);
        return (None, probe);
    }
    let driver = InputDriver {
        handle,
        cap: Some(cap),
        epoch_ms: config.dataflow.epoch.as_millis().max(1) as u64,
        disorder_ms: config.dataflow.allowed_disorder.as_millis() as i64,
        max_ts: None,
        watermark: i64::MIN,
        next_seq: 0,
        seen: Default::default(),
        dedup_key: DedupKey::random(),
        seen_pruned_at: 0,
        dedup_retention_ms: config.dataflow.dedup_retention.as_millis() as i64,
        duplicates: 0,
        next_barrier: checkpoints
            .as_ref()
            .map(|c| c.next_barrier(c.restored().unwrap_or(0))),
        checkpoints,
        crossed: Vec::new(),
        last_crossed: None,
        parts: Partitions::default(),
        idle_after: config.dataflow.idle_advance_after,
        clock: None,
    };
    (Some(driver), probe)
}

/// A dead-letter event: why `original` (or an undecodable record) was not
/// processed. Deterministic id, so replays deduplicate.
pub fn dead_letter(reason: &str, key: &str, ts: i64, detail: serde_json::Value) -> Event {
    Event {
        id: derived_id("dead_letter", &[reason, key]),
        ts,
        user_id: None,
        project_id: None,
        document_id: None,
        data: Payload::SystemDeadLetter(DeadLetter {
            reason: reason.to_owned(),
            detail: detail.to_string(),
        }),
    }
}

/// Dead-letters a late event.
pub fn late_event(e: Event, watermark: i64) -> Event {
    let (id, ts) = (e.id.clone(), e.ts);
    dead_letter(
        "late",
        &id,
        ts,
        serde_json::json!({ "watermark": watermark, "event": e }),
    )
}

/// Derived events collected in memory (tests).
#[cfg(test)]
#[derive(Default)]
pub struct VecSink(pub std::sync::Mutex<Vec<Event>>);

#[cfg(test)]
impl DerivedSink for VecSink {
    fn emit(&self, events: &mut Vec<Event>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(events);
    }
}

/// Runs a graph over events in tests: as `replay` does (worker 0 feeds
/// `events` in this arrival order, `batch` at a time, through the real input
/// driver; the others compute), then returns every output sorted by
/// (ts, id) and the events the driver found late.
#[cfg(test)]
pub fn run_for_test<G>(
    events: Vec<Event>,
    workers: usize,
    batch: usize,
    config: &Config,
    graph: G,
) -> (Vec<Event>, Vec<Event>)
where
    G: for<'s> Fn(Stream<'s, u64, Vec<Record>>, &Config) -> Stream<'s, u64, Vec<Event>>
        + Send
        + Sync
        + 'static,
{
    use std::sync::Mutex;
    let sink = Arc::new(VecSink::default());
    let late = Arc::new(Mutex::new(Vec::new()));
    let input = Arc::new(Mutex::new(Some(events)));
    let mut config = config.clone();
    config.dataflow.flush_at_end = true;
    let (s2, late2) = (sink.clone(), late.clone());
    let timely_config = if workers <= 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    let guards = timely::execute(timely_config, move |worker| {
        let reads = worker.index() == 0;
        let (driver, probe) = install_graph(worker, &config, s2.clone(), reads, None, |s| {
            graph(s, &config)
        });
        if let Some(mut driver) = driver {
            let events = input
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_default();
            let mut rest = events.into_iter().peekable();
            while rest.peek().is_some() {
                let chunk: Vec<Event> = rest.by_ref().take(batch.max(1)).collect();
                let l = driver.push(chunk);
                late2.lock().unwrap_or_else(|p| p.into_inner()).extend(l);
                worker.step();
            }
            driver.close();
        }
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely starts");
    for r in guards.join() {
        r.expect("worker ok");
    }
    let mut out = std::mem::take(&mut *sink.0.lock().unwrap_or_else(|p| p.into_inner()));
    out.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
    let late = std::mem::take(&mut *late.lock().unwrap_or_else(|p| p.into_inner()));
    (out, late)
}

/// Reads each event's time, the end of its id and of its user, and its
/// payload's variant (what the input, then the operators' filters and the
/// exchange on this worker, read first), so that the reads overlap; the
/// sum only keeps them from being optimized away.
fn touch_all(events: &[Arc<Event>]) -> i64 {
    events.iter().fold(0i64, |acc, e| {
        acc.wrapping_add(e.ts)
            ^ e.id.len() as i64
            ^ e.user_id.as_ref().map_or(0, |u| u.len() as i64)
            ^ i64::from(e.category() == schemas::Category::Writing)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(id: &str, ts: i64, words: i64) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: Some("u1".into()),
            project_id: None,
            document_id: None,
            data: Payload::WritingKeystroke(schemas::payload::Keystroke {
                keystrokes: 1,
                words,
                chars: 1,
                deleted_chars: None,
                source: Default::default(),
            }),
        }
    }

    #[test]
    fn a_duplicated_id_reaches_operators_once() {
        let events = vec![ks("a", 1_000, 1), ks("a", 1_000, 1), ks("b", 1_500, 1)];
        let (out, late) = run_for_test(events, 2, 1, &Config::default(), |s, _| {
            s.map(|r| (*r.event).clone())
        });
        assert!(late.is_empty());
        assert_eq!(
            out.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    /// The identity an id is remembered by is a keyed hash under a fresh
    /// secret key: not the id's FNV hash (which anyone can compute, and so
    /// forge an id of their own that passes for another caller's), not the
    /// same in two runs, and carried by a checkpoint, so a copy after a
    /// restore is still a duplicate.
    #[test]
    fn an_id_is_remembered_by_a_secret_identity_that_a_checkpoint_keeps() {
        let config = Config::default();
        let (first, second) = (
            drive(config.clone(), |d| {
                d.push([ks("app:a/e1", 1_000, 1)]);
                d.state()
            }),
            drive(config.clone(), |d| d.state()),
        );
        let DedupKey::SipHash13(..) = first.dedup_key else {
            panic!("a fresh driver is keyed: {:?}", first.dedup_key);
        };
        assert_ne!(first.dedup_key, second.dedup_key, "two runs drew one key");
        let remembered: Vec<u64> = first.base.seen.iter().map(|(k, _)| *k).collect();
        assert_eq!(remembered, [first.dedup_key.of("app:a/e1")]);
        assert_ne!(remembered, [stable_hash("app:a/e1")]);
        let restored = first.clone();
        let (late, duplicates, key) = drive(config, move |d| {
            d.restore(restored);
            let late = d.push([ks("app:a/e1", 1_000, 1), ks("app:a/e2", 1_001, 1)]);
            (late, d.duplicates(), d.state().dedup_key)
        });
        assert!(late.is_empty());
        assert_eq!(
            duplicates, 1,
            "the copy after the restore was not a duplicate"
        );
        assert_eq!(key, first.dedup_key);
    }

    /// A checkpoint written before the keyed identity (its remembered ids
    /// FNV hashes, no key) restores: the driver goes on with FNV, so a copy
    /// of an id it remembers is still a duplicate, and says so in its next
    /// checkpoint.
    #[test]
    fn a_checkpoint_from_before_the_keyed_identity_goes_on_with_fnv() {
        let v1 = DriverBase {
            watermark: 0,
            max_ts: Some(1_000),
            next_seq: 1,
            seen: vec![(stable_hash("e1"), 1_000)],
            duplicates: 0,
            parts: Vec::new(),
        };
        let bytes = bincode::serialize(&v1).unwrap();
        assert!(
            bincode::deserialize::<DriverState>(&bytes).is_err(),
            "the older bytes must not pass for the current shape"
        );
        let state: DriverState = bincode::deserialize::<DriverBase>(&bytes).unwrap().into();
        let (duplicates, key) = drive(Config::default(), move |d| {
            d.restore(state);
            d.push([ks("e1", 1_000, 1), ks("e2", 1_001, 1)]);
            (d.duplicates(), d.state().dedup_key)
        });
        assert_eq!(duplicates, 1);
        assert_eq!(key, DedupKey::Fnv);
    }

    /// Runs `feed` against the input driver of a pass-through graph, then
    /// ends the input and drains the graph.
    fn drive<T: Send + 'static>(
        config: Config,
        feed: impl FnOnce(&mut InputDriver) -> T + Send + Sync + 'static,
    ) -> T {
        let sink = Arc::new(VecSink::default());
        timely::execute_directly(move |worker| {
            let (driver, probe) = install_graph(worker, &config, sink, true, None, |s| {
                s.map(|r| (*r.event).clone())
            });
            let mut driver = driver.unwrap();
            let out = feed(&mut driver);
            driver.close();
            while !probe.done() {
                worker.step();
            }
            out
        })
    }

    #[test]
    fn the_watermark_follows_the_slowest_active_partition_until_it_goes_quiet() {
        let mut config = Config::default();
        config.dataflow.idle_advance_after = std::time::Duration::from_millis(200);
        let late = drive(config, |driver| {
            let (a, b): (Arc<str>, Arc<str>) = (Arc::from("stream-a"), Arc::from("stream-b"));
            let mut late = Vec::new();
            // A backlog read stream by stream: all of a, then b, 60 s behind.
            late.extend(driver.push_from(vec![
                (Some(b.clone()), None, ks("b0", 0, 1)),
                (Some(a.clone()), None, ks("a1", 60_000, 1)),
                (Some(a.clone()), None, ks("a2", 70_000, 1)),
            ]));
            assert_eq!(
                driver.watermark(),
                -2_000,
                "held back by the slower stream b"
            );
            late.extend(driver.push_from(vec![(Some(b.clone()), None, ks("b1", 5_000, 1))]));
            assert_eq!(driver.watermark(), 3_000);
            // b goes quiet: once idle, a alone decides.
            std::thread::sleep(std::time::Duration::from_millis(250));
            late.extend(driver.push_from(vec![(Some(a.clone()), None, ks("a3", 71_000, 1))]));
            assert_eq!(driver.watermark(), 69_000);
            // Now an old event of b is late (the watermark never goes back).
            late.extend(driver.push_from(vec![(Some(b), None, ks("b2", 6_000, 1))]));
            late
        });
        assert_eq!(
            late.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["b2"],
            "one stream far ahead makes nothing late while the other is active"
        );
    }

    #[test]
    fn a_held_partition_keeps_the_watermark_until_its_first_record() {
        let mut config = Config::default();
        config.dataflow.idle_advance_after = std::time::Duration::from_secs(3600);
        let late = drive(config, |driver| {
            let (a, c): (Arc<str>, Arc<str>) = (Arc::from("topic#0"), Arc::from("topic#2"));
            let mut late = Vec::new();
            late.extend(driver.push_from(vec![(Some(a.clone()), None, ks("a0", 10_000, 1))]));
            assert_eq!(driver.watermark(), 8_000);
            // A new assignment: c has a backlog the reader has not fetched.
            driver.hold(c.clone());
            late.extend(driver.push_from(vec![(Some(a.clone()), None, ks("a1", 90_000, 1))]));
            assert_eq!(
                driver.watermark(),
                8_000,
                "c holds the watermark where it was"
            );
            // c's backlog, 80 s behind a: nothing of it is late.
            late.extend(driver.push_from(vec![
                (Some(c.clone()), None, ks("c0", 9_000, 1)),
                (Some(c.clone()), None, ks("c1", 60_000, 1)),
            ]));
            assert_eq!(driver.watermark(), 58_000, "c's own time counts now");
            late
        });
        assert!(late.is_empty(), "late: {late:?}");
    }

    #[test]
    fn a_copy_behind_the_watermark_is_a_duplicate_not_a_late_event() {
        // dedup_retention: 1 min by default.
        let (late, duplicates) = drive(Config::default(), |driver| {
            let mut late = Vec::new();
            late.extend(driver.push(vec![ks("x", 10_000, 1), ks("y", 40_000, 1)]));
            assert_eq!(driver.watermark(), 38_000);
            // x again (a page produced twice), 28 s behind the watermark;
            // z, never seen and as old, is late.
            late.extend(driver.push(vec![ks("x", 10_000, 1), ks("z", 10_000, 1)]));
            (late, driver.duplicates())
        });
        assert_eq!(
            late.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["z"]
        );
        assert_eq!(duplicates, 1);
    }

    /// The fake server clock of the test below (ms).
    static FAKE_NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

    fn fake_now() -> i64 {
        FAKE_NOW.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn user_ks(id: &str, user: &str, ts: i64) -> Event {
        Event {
            user_id: Some(user.into()),
            ..ks(id, ts, 1)
        }
    }

    #[test]
    fn an_event_from_the_future_makes_nobody_late_and_waits_for_its_time() {
        use std::sync::atomic::Ordering::Relaxed;
        let now = 1_767_603_600_000;
        FAKE_NOW.store(now, Relaxed);
        let config = Config::default();
        let disorder = config.dataflow.allowed_disorder.as_millis() as i64;
        let sink = Arc::new(VecSink::default());
        let s2 = sink.clone();
        let started = move |user: &str| {
            s2.0.lock()
                .unwrap()
                .iter()
                .filter(|e| {
                    e.event_type() == "writing.session_started"
                        && e.user_id.as_deref() == Some(user)
                })
                .count()
        };
        let late = timely::execute_directly(move |worker| {
            let (driver, probe) = install(worker, &config, sink, true, None, None);
            let mut driver = driver.unwrap();
            driver.bound_by_clock(ServerClock {
                now_ms: fake_now,
                tolerance_ms: 1_000,
            });
            let step_until = |worker: &mut timely::worker::Worker, what: &dyn Fn() -> bool| {
                for _ in 0..1_000 {
                    if what() {
                        return true;
                    }
                    worker.step();
                }
                what()
            };
            // One client with a clock 4 min fast, then everyone else on time.
            let mut late = driver.push(vec![user_ks("f", "fast", now + 240_000)]);
            assert!(
                driver.watermark() <= now + 1_000 - disorder,
                "the watermark passed the server clock: {}",
                driver.watermark() - now
            );
            for i in 0..20 {
                late.extend(driver.push(vec![
                    user_ks(&format!("a{i}"), "a", now + i * 10),
                    user_ks(&format!("b{i}"), "b", now + i * 10 + 5),
                ]));
            }
            // The server clock moves on (as the idle advance does in serve).
            FAKE_NOW.store(now + 5_000, Relaxed);
            driver.advance_to(i64::MAX);
            assert!(
                step_until(worker, &|| started("a") == 1 && started("b") == 1),
                "the on-time users' sessions did not start"
            );
            assert_eq!(started("fast"), 0, "the future event ran ahead of its time");
            // Its time comes.
            FAKE_NOW.store(now + 240_000 + disorder, Relaxed);
            driver.advance_to(i64::MAX);
            assert!(
                step_until(worker, &|| started("fast") == 1),
                "the future event's own outputs never appeared"
            );
            driver.close();
            while !probe.done() {
                worker.step();
            }
            late
        });
        assert!(late.is_empty(), "late: {late:?}");
    }

    #[test]
    fn events_behind_the_watermark_are_returned_as_late() {
        let sink = Arc::new(VecSink::default());
        let s2 = sink.clone();
        let late = timely::execute_directly(move |worker| {
            let (driver, probe) = install_graph(worker, &Config::default(), s2, true, None, |s| {
                s.map(|r| (*r.event).clone())
            });
            let mut driver = driver.unwrap();
            // Lateness is decided per event, also inside one batch.
            let mut late = driver.push(vec![
                ks("a", 10_000, 1),
                ks("x", 7_500, 1),
                ks("b", 9_000, 1),
            ]);
            // watermark is now 8 000: 7 999 is late, 8 000 is not.
            late.extend(driver.push(vec![ks("c", 7_999, 1), ks("d", 8_000, 1)]));
            driver.close();
            while !probe.done() {
                worker.step();
            }
            late
        });
        assert_eq!(
            late.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["x", "c"]
        );
        assert_eq!(sink.0.lock().unwrap().len(), 3);
    }
}
