//! The one place where tokio meets timely.
//!
//! The tokio side ([`connectors::event_log::reader`]) reads log entries and sends them over a
//! bounded channel; worker 0 drains that channel into the [`InputDriver`],
//! steps the dataflow, and reports back which entries are fully processed
//! (the output frontier has passed their epoch) so that the source can
//! acknowledge them in the log. A full channel blocks the source: that is the
//! backpressure from a slow dataflow to the log reader.

use crate::config::Config;
use crate::dataflow::{self, DerivedSink, OPERATORS, WorkerError, late_event};
use crate::runtime::checkpoint::Checkpoints;
use crate::runtime::operator_stats::OperatorStats;
use connectors::event_log::reader::CaughtUp;
use connectors::{EntryRef, LogEntry, Metrics};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Handle to the running dataflow's worker threads.
pub struct Bridge {
    guards: timely::communication::initialize::WorkerGuards<()>,
}

/// The tokio-side ends of a started bridge.
pub struct BridgeEnds {
    /// Entries to process; dropping it ends the input and drains the dataflow.
    pub entries: mpsc::Sender<Vec<LogEntry>>,
    /// Entries fully processed, to acknowledge in the log.
    pub processed: mpsc::UnboundedReceiver<Vec<EntryRef>>,
    /// Marked by the reader when it has caught up with its input: event time
    /// follows the wall clock through a quiet input only up to there.
    pub caught_up: CaughtUp,
}

impl Bridge {
    /// Starts `config.dataflow.workers` worker threads, the first `readers`
    /// of which each take one input (one [`BridgeEnds`] per reader: e.g. one
    /// Kafka consumer per worker, each with its share of the partitions).
    pub fn start<S: DerivedSink>(
        config: &Config,
        sink: Arc<S>,
        metrics: Metrics,
        readers: usize,
        checkpoints: Option<Arc<Checkpoints>>,
    ) -> Result<(Bridge, Vec<BridgeEnds>), WorkerError> {
        let readers = readers.clamp(1, config.dataflow.workers.max(1));
        if let Some(c) = checkpoints.as_ref() {
            restore_sink(c, &*sink, config.dataflow.process_index)?;
        }
        let mut tokio_ends = Vec::with_capacity(readers);
        let mut worker_ends = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (tx, rx) = mpsc::channel::<Vec<LogEntry>>(64);
            let (done_tx, done_rx) = mpsc::unbounded_channel();
            let caught_up = CaughtUp::default();
            tokio_ends.push(BridgeEnds {
                entries: tx,
                processed: done_rx,
                caught_up: caught_up.clone(),
            });
            worker_ends.push(Some((rx, done_tx, caught_up)));
        }
        // Worker i takes reader i's channels; the closure is shared by all workers.
        let ends = Arc::new(Mutex::new(worker_ends));
        // The highest watermark of any reader: an idle reader (say, one whose
        // Kafka partitions get no traffic) follows it instead of holding the
        // frontier back forever — Flink's idle-source rule.
        let leading = Arc::new(AtomicI64::new(i64::MIN));
        let stats = OperatorStats::default();
        if !config.dataflow.operators.is_all() {
            tracing::info!(
                operators = %config.dataflow.operators.describe(),
                "running only some operators"
            );
        }
        for op in OPERATORS {
            metrics.dataflow_state_keys.with_label_values(&[op]);
            metrics
                .dataflow_watermark_lag_seconds
                .with_label_values(&[op]);
        }
        let config = config.clone();
        let workers = config.dataflow.workers;
        let timely_config = config.dataflow.timely_config();
        let guards = timely::execute(timely_config, move |worker| {
            // Workers are numbered across a cluster; readers are this
            // process's first `readers` workers.
            let index = worker.index() - config.dataflow.process_index * workers.max(1);
            let (driver, probe) = dataflow::install(
                worker,
                &config,
                sink.clone(),
                index < readers,
                checkpoints.clone(),
                Some(stats.clone()),
            );
            let Some(mut driver) = driver else {
                return;
            };
            driver.bound_by_clock(dataflow::ServerClock::system(
                config.dataflow.future_tolerance,
            ));
            let (process, processes) = (config.dataflow.process_index, config.dataflow.processes());
            let mut acks = match checkpoints.as_ref() {
                None => Acks::Frontier(BTreeMap::new()),
                Some(c) => match CheckpointAcks::restore(c, worker.index(), &mut driver) {
                    Ok(a) => Acks::Checkpoint(a),
                    Err(error) => {
                        tracing::error!(%error, "checkpoint unreadable; the dataflow does not start");
                        return;
                    }
                },
            };
            let taken = ends
                .lock()
                .ok()
                .and_then(|mut e| e.get_mut(index).and_then(Option::take));
            let Some((mut rx, done_tx, caught_up)) = taken else {
                return;
            };
            let idle_after = config.dataflow.idle_advance_after;
            let disorder = config.dataflow.allowed_disorder.as_millis() as i64;
            let mut last_arrival = Instant::now();
            let mut timing = Timing::default();
            loop {
                let mut closed = false;
                // Read before draining: what the reader sent before it
                // marked this is in the channel by now.
                let quiet_until = caught_up.get();
                loop {
                    match rx.try_recv() {
                        Ok(batch) => {
                            last_arrival = Instant::now();
                            // Held before this batch was sent: see CaughtUp::hold.
                            for part in caught_up.take_held() {
                                driver.hold(part);
                            }
                            let done = feed(
                                &mut driver,
                                batch,
                                &mut acks,
                                checkpoints.as_deref(),
                                &*sink,
                                &metrics,
                            );
                            if !done.is_empty() {
                                let _ = done_tx.send(done);
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    driver.close();
                    while !probe.done() {
                        worker.step();
                    }
                    // Without checkpoints, drained means done. With them, the
                    // open state was not saved: what followed the last
                    // checkpoint stays pending, to be read again after a restart.
                    if let Acks::Frontier(in_flight) = &mut acks {
                        let rest: Vec<EntryRef> =
                            std::mem::take(in_flight).into_values().flatten().collect();
                        if !rest.is_empty() {
                            let _ = done_tx.send(rest);
                        }
                    }
                    return;
                }
                // Idle input: let the watermark follow the wall clock, so that
                // absence of events still moves time forward — but only for
                // the time the reader has confirmed there was nothing to read
                // (a slow or starved reader must not make its backlog late).
                let idle = quiet_until
                    .map(|q| q.saturating_duration_since(last_arrival))
                    .unwrap_or_default();
                // Partitions that went quiet stop holding the watermark back.
                driver.tick(quiet_until);
                if idle >= idle_after {
                    if let Some(max) = driver.max_ts() {
                        driver.advance_to(max + idle.as_millis() as i64 - disorder);
                    }
                    driver.advance_to(leading.load(Ordering::Relaxed));
                }
                leading.fetch_max(driver.watermark(), Ordering::Relaxed);
                metrics
                    .dataflow_watermark_seconds
                    .set(driver.watermark().max(0) as f64 / 1000.0);
                timing.input_at(driver.time());
                if let (Acks::Checkpoint(a), Some(c)) = (&mut acks, checkpoints.as_ref()) {
                    for b in driver.take_crossed() {
                        a.cut(c, b, &driver);
                    }
                }
                worker.step_or_park(Some(Duration::from_millis(2)));
                timing.output_passed(&probe, &metrics);
                timing.publish(&stats, &metrics);
                let done = match (&mut acks, checkpoints.as_ref()) {
                    // Entries whose epoch the output frontier has passed.
                    (Acks::Frontier(in_flight), _) => {
                        let mut done = Vec::new();
                        while let Some(entry) = in_flight.first_entry() {
                            if probe.less_equal(entry.key()) {
                                break;
                            }
                            done.extend(entry.remove());
                        }
                        done
                    }
                    // Entries before the cut of a completed checkpoint.
                    (Acks::Checkpoint(a), Some(c)) => {
                        a.completed(c, &probe, &*sink, process, processes)
                    }
                    (Acks::Checkpoint(_), None) => Vec::new(),
                };
                if !done.is_empty() {
                    let _ = done_tx.send(done);
                }
            }
        })
        .map_err(WorkerError)?;
        Ok((Bridge { guards }, tokio_ends))
    }

    /// Waits for the workers to finish (after `entries` was dropped).
    pub fn join(self) {
        for r in self.guards.join() {
            if let Err(e) = r {
                tracing::error!(error = %e, "dataflow worker failed");
            }
        }
    }
}

/// Feeds one batch; returns entries that are done at once (late or invalid:
/// their dead letter has been emitted).
fn feed<S: DerivedSink>(
    driver: &mut dataflow::InputDriver,
    batch: Vec<LogEntry>,
    acks: &mut Acks,
    checkpoints: Option<&Checkpoints>,
    sink: &S,
    metrics: &Metrics,
) -> Vec<EntryRef> {
    let mut done = Vec::new();
    let mut dead = Vec::new();
    let stamp = driver.last_crossed();
    let mut events: Vec<(Option<u32>, Option<u64>, Arc<schemas::Event>)> =
        Vec::with_capacity(batch.len());
    // The batch's streams, each named once (see `InputDriver::push_parted`).
    let mut parts: Vec<Arc<str>> = Vec::new();
    // An entry is acknowledged once, when its last event is seen: a packed
    // entry's events come one after another, and may fall into several
    // epochs (acknowledged at the latest), or be partly late or undecodable
    // (acknowledged with the rest, never before).
    let mut held = Held::default();
    for log_entry in batch {
        let last = log_entry.ends_entry();
        let LogEntry {
            entry,
            event,
            id_form,
            namespace,
            part,
        } = log_entry;
        match event {
            Ok(e) => {
                // The log's identity of an event, (namespace, id), is the
                // dataflow's too: the same id from two callers is two events.
                // (The embedded log stores events in this form: then `e` is
                // the log's copy, shared, and nothing is copied.)
                let e = LogEntry::dataflow_event(e, id_form, namespace.as_deref());
                let at = position(&entry);
                let part = dataflow::part_index(&mut parts, &entry.stream);
                match acks {
                    Acks::Frontier(_) => {
                        if e.ts >= driver.watermark() {
                            let t = driver.epoch_of(e.ts);
                            held.epoch = held.epoch.max(Some(t));
                        }
                    }
                    Acks::Checkpoint(a) => {
                        if !a.admit(&entry, at) {
                            // Before the restored cut: already in the state.
                            if last {
                                held.settle(entry, acks, &mut done);
                            }
                            continue;
                        }
                        held.admitted = true;
                    }
                }
                // Each stream (or topic partition) is an input partition with
                // its own watermark: see `InputDriver::push_parted`.
                events.push((Some(part), at, e));
            }
            Err(reason) => {
                // With checkpoints the entry waits for one, like a decoded
                // one: by then its dead letter is durable with the derived
                // topics (acknowledged at once, a crash could lose it).
                if let Acks::Checkpoint(a) = acks {
                    if !a.admit(&entry, position(&entry)) {
                        // Before the restored cut: dead-lettered already.
                        if last {
                            held.settle(entry, acks, &mut done);
                        }
                        continue;
                    }
                    held.admitted = true;
                }
                metrics
                    .dataflow_dead_letters
                    .with_label_values(&["undecodable"])
                    .inc();
                let at = match part {
                    Some(p) if p.of > 1 => format!("{}/{}#{}", entry.stream, entry.id, p.index),
                    _ => format!("{}/{}", entry.stream, entry.id),
                };
                dead.push(dataflow::dead_letter(
                    "undecodable",
                    &at,
                    0,
                    serde_json::json!({ "stream": &*entry.stream, "entry": &entry.id, "error": reason }),
                ));
            }
        }
        if last {
            held.settle(entry, acks, &mut done);
        }
    }
    if let Some(oldest) = events.iter().map(|(_, _, e)| e.ts).min() {
        connectors::metrics::observe_age(&metrics.dataflow_input_delay_seconds, oldest);
    }
    // After the delay: a scrape that sees these events counted sees it too.
    metrics.dataflow_events_in.inc_by(events.len() as u64);
    let watermark = driver.watermark();
    let duplicates = driver.duplicates();
    let late = driver.push_parted(&parts, events);
    // A barrier this batch crossed: its cut is *here*, after this batch and
    // before the next one (saving it later, after more batches, would put
    // entries the restored state never saw before the cut).
    if let (Acks::Checkpoint(a), Some(c)) = (&mut *acks, checkpoints) {
        for b in driver.take_crossed() {
            a.cut(c, b, driver);
        }
    }
    metrics
        .dataflow_duplicate_events
        .inc_by(driver.duplicates() - duplicates);
    for e in late {
        metrics
            .dataflow_late_events
            .with_label_values(&[e.event_type()])
            .inc();
        metrics
            .dataflow_dead_letters
            .with_label_values(&["late"])
            .inc();
        dead.push(late_event(e, watermark));
    }
    if !dead.is_empty() {
        sink.emit_input(stamp, &mut dead);
    }
    done
}

/// The dataflow's timing metrics, kept by each reading worker's loop.
#[derive(Default)]
struct Timing {
    /// Input times not yet passed by the output frontier, with when the
    /// input moved to them (closing every earlier epoch). Bounded: under a
    /// long stall the oldest are dropped (their delay is then unmeasured).
    open: VecDeque<(u64, Instant)>,
    /// The input time last seen (each time is recorded once).
    input: Option<u64>,
    /// Last publication of the per-operator gauges.
    published: Option<Instant>,
}

impl Timing {
    const MAX_OPEN: usize = 4096;

    /// The input is now at `time` (`None`: closed).
    fn input_at(&mut self, time: Option<u64>) {
        let Some(t) = time else { return };
        // Time 0 is the input's start: no epoch before it to wait for.
        if t > 0 && self.input.is_none_or(|last| last < t) {
            self.input = Some(t);
            if self.open.len() >= Self::MAX_OPEN {
                self.open.pop_front();
            }
            self.open.push_back((t, Instant::now()));
        }
    }

    /// Observes the delay of every epoch the output frontier has passed.
    fn output_passed(&mut self, probe: &timely::dataflow::ProbeHandle<u64>, metrics: &Metrics) {
        while let Some((t, at)) = self.open.front().copied() {
            // Everything before `t` is done once no output time is below it.
            if probe.less_than(&t) {
                break;
            }
            self.open.pop_front();
            metrics
                .dataflow_epoch_delay_seconds
                .observe(at.elapsed().as_secs_f64());
        }
    }

    /// Publishes state size and watermark lag per operator, 4 times a second.
    fn publish(&mut self, stats: &OperatorStats, metrics: &Metrics) {
        if self
            .published
            .is_some_and(|p| p.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.published = Some(Instant::now());
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for (op, state, frontier) in stats.summary() {
            metrics
                .dataflow_state_keys
                .with_label_values(&[op])
                .set(state as i64);
            // Frontier 0: no event time yet; `None`: input ended.
            let lag = match frontier {
                Some(f) if f > 0 => now_ms.saturating_sub(f) as f64 / 1000.0,
                _ => 0.0,
            };
            metrics
                .dataflow_watermark_lag_seconds
                .with_label_values(&[op])
                .set(lag);
        }
    }
}

/// What one entry's events so far decided about its acknowledgement (see
/// [`feed`]).
#[derive(Default)]
struct Held {
    /// Without checkpoints: the latest epoch an event of it is in flight in.
    epoch: Option<u64>,
    /// With checkpoints: an event of it was fed (it awaits a checkpoint).
    admitted: bool,
}

impl Held {
    /// The entry's last event was seen: in flight at its latest epoch,
    /// awaiting a checkpoint, or done now (every event late, undecodable or
    /// already in the restored state).
    fn settle(&mut self, entry: EntryRef, acks: &mut Acks, done: &mut Vec<EntryRef>) {
        let held = std::mem::take(self);
        match (acks, held.epoch) {
            (Acks::Frontier(in_flight), Some(t)) => in_flight.entry(t).or_default().push(entry),
            (Acks::Checkpoint(_), _) if held.admitted => {}
            _ => done.push(entry),
        }
    }
}

/// Which processed entries may be acknowledged in the log, and when.
enum Acks {
    /// No checkpoints: an entry is done once the output frontier has passed
    /// its epoch (entries by epoch).
    Frontier(BTreeMap<u64, Vec<EntryRef>>),
    /// Checkpoints: an entry is done once a checkpoint whose cut follows it
    /// is complete; until then a crash must find it pending, to read again.
    Checkpoint(CheckpointAcks),
}

/// The reader's part of a checkpoint in `serve`: the input driver's state
/// and, per stream (or topic partition), the position of the last entry fed
/// before the cut.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReaderPart {
    driver: dataflow::DriverState,
    cut: HashMap<String, u64>,
}

/// [`ReaderPart`] as written before 2026-12-06 (no dedup key).
#[derive(serde::Deserialize)]
struct ReaderPartV1 {
    driver: dataflow::DriverBase,
    cut: HashMap<String, u64>,
}

impl From<ReaderPartV1> for ReaderPart {
    fn from(p: ReaderPartV1) -> ReaderPart {
        ReaderPart {
            driver: p.driver.into(),
            cut: p.cut,
        }
    }
}

struct CheckpointAcks {
    /// This reader's part name (`reader-<worker>`).
    part: String,
    /// Entries fed, not yet acknowledged, in feed order.
    awaiting: VecDeque<EntryRef>,
    /// Entries ever fed into `awaiting` / ever acknowledged from it.
    fed: u64,
    acked: u64,
    /// Checkpoints this reader cut: barrier and `fed` at the cut.
    cuts: VecDeque<(u64, u64)>,
    /// Position of the last entry fed, per stream (the next cut).
    pushed: HashMap<String, u64>,
    /// The restored cut: entries at or before it are already in the state.
    skip: HashMap<String, u64>,
    last_completed: u64,
    /// A completed checkpoint whose two-phase outputs are not committed.
    uncommitted: Option<u64>,
}

impl CheckpointAcks {
    /// Restores the driver from this reader's part of the restored
    /// checkpoint, if any.
    fn restore(
        checkpoints: &Checkpoints,
        worker: usize,
        driver: &mut dataflow::InputDriver,
    ) -> Result<CheckpointAcks, crate::runtime::checkpoint::CheckpointError> {
        let part = format!("reader-{worker}");
        checkpoints.expect(&part);
        let mut skip = HashMap::new();
        if let Some(p) = checkpoints.load_or_older::<ReaderPart, ReaderPartV1>(&part)? {
            driver.restore(p.driver);
            tracing::info!(streams = p.cut.len(), "input resumed from checkpoint");
            skip = p.cut;
        }
        Ok(CheckpointAcks {
            part,
            awaiting: VecDeque::new(),
            fed: 0,
            acked: 0,
            cuts: VecDeque::new(),
            pushed: skip.clone(),
            skip,
            last_completed: checkpoints.restored().unwrap_or(0),
            uncommitted: None,
        })
    }

    /// Takes an entry to feed; `false` if the restored state already has it.
    fn admit(&mut self, entry: &EntryRef, at: Option<u64>) -> bool {
        if let Some(at) = at {
            if self.skip.get(&*entry.stream).is_some_and(|cut| at <= *cut) {
                return false;
            }
            self.pushed.insert(entry.stream.to_string(), at);
        }
        self.awaiting.push_back(entry.clone());
        self.fed += 1;
        true
    }

    /// The input crossed barrier `b`: save this reader's part.
    fn cut(&mut self, checkpoints: &Checkpoints, b: u64, driver: &dataflow::InputDriver) {
        let part = ReaderPart {
            driver: driver.state(),
            cut: self.pushed.clone(),
        };
        checkpoints.save(b, &self.part, &part);
        self.cuts.push_back((b, self.fed));
    }

    /// Completes the newest checkpoint the output probe has passed (after
    /// making the sink durable) and returns the entries it covers.
    fn completed<S: DerivedSink>(
        &mut self,
        checkpoints: &Checkpoints,
        probe: &timely::dataflow::ProbeHandle<u64>,
        sink: &S,
        process: usize,
        processes: usize,
    ) -> Vec<EntryRef> {
        let Some(f) = probe.with_frontier(|f| f.first().copied()) else {
            return Vec::new();
        };
        let b = checkpoints.barrier_at_or_before(f.saturating_sub(1));
        if f == 0 || b <= self.last_completed {
            return Vec::new();
        }
        self.last_completed = b;
        // A completed checkpoint whose outputs are not committed yet (the
        // commit failed, or another process had not completed it) is
        // committed first: until it is, no later checkpoint completes, so
        // uncommitted outputs never pile up checkpoint after checkpoint.
        if let Some(prev) = self.uncommitted {
            if !commit_completed(checkpoints, sink, prev, processes) {
                return Vec::new();
            }
            self.uncommitted = None;
        }
        if let Err(error) = sink.sync(b) {
            tracing::error!(%error, "derived events not made durable; checkpoint skipped");
            return Vec::new();
        }
        // A two-phase sink's uncommitted outputs are part of the checkpoint:
        // whoever restores it commits them if this process does not.
        match sink.pending(b) {
            Ok(Some(pending)) => checkpoints.save(b, &pending_part(process), &pending),
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, "derived events not saved; checkpoint skipped");
                return Vec::new();
            }
        }
        match checkpoints.complete(b, process, processes) {
            Ok(true) => {}
            Ok(false) => return Vec::new(),
            Err(error) => {
                tracing::error!(%error, "checkpoint not completed");
                return Vec::new();
            }
        }
        crate::runtime::checkpoint::crash_point("checkpoint-completed");
        // Committed only once no restore can go back before this checkpoint;
        // until then (another process has not completed it, the commit
        // failed) the outputs stay with the sink, and the next checkpoint
        // commits them first.
        if !commit_completed(checkpoints, sink, b, processes) {
            self.uncommitted = Some(b);
        }
        // Everything fed before this barrier's cut is in the checkpoint.
        let mut upto = self.acked;
        while let Some((cb, fed)) = self.cuts.front().copied() {
            if cb > b {
                break;
            }
            upto = fed;
            self.cuts.pop_front();
        }
        let n = (upto - self.acked) as usize;
        self.acked = upto;
        self.awaiting.drain(..n.min(self.awaiting.len())).collect()
    }
}

/// Commits a two-phase sink's outputs of the completed checkpoint `b` once
/// every process has completed it; `false` when that is not (yet) so or
/// the commit failed (the outputs stay with the sink).
fn commit_completed<S: DerivedSink>(
    checkpoints: &Checkpoints,
    sink: &S,
    b: u64,
    processes: usize,
) -> bool {
    match checkpoints.complete_everywhere(b, processes) {
        Ok(true) => match sink.commit(b) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, barrier = b, "derived events not committed; the next checkpoint commits them first");
                false
            }
        },
        Ok(false) => false,
        Err(error) => {
            tracing::warn!(%error, barrier = b, "checkpoint completion unknown; the next checkpoint commits its derived events first");
            false
        }
    }
}

/// The checkpoint part holding process `process`'s uncommitted outputs.
fn pending_part(process: usize) -> String {
    format!("derived-pending-p{process}")
}

/// Before the dataflow runs with checkpoints: the outputs the restored one
/// saved for a two-phase sink are committed (unless they were).
fn restore_sink<S: DerivedSink>(
    checkpoints: &Checkpoints,
    sink: &S,
    process: usize,
) -> Result<(), WorkerError> {
    let pending = checkpoints
        .load::<dataflow::Pending>(&pending_part(process))
        .map_err(|e| WorkerError(format!("checkpoint unreadable: {e}")))?;
    if let Err(error) = sink.restore(checkpoints.restored(), pending) {
        tracing::warn!(%error, "the restored checkpoint's derived events are not committed yet");
    }
    Ok(())
}

/// An entry's position in its log as a number: a Kafka offset
/// (`topic#partition` streams), or a Redis/embedded stream id `ms-seq`
/// packed as `ms << 20 | seq`. Monotonic per stream, hence per key.
fn position(entry: &EntryRef) -> Option<u64> {
    if entry.stream.contains('#') {
        return entry.id.parse().ok();
    }
    let (ms, seq) = entry.id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some((ms << 20) | seq.min((1 << 20) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> EntryRef {
        EntryRef {
            stream: "s".into(),
            id: id.into(),
        }
    }

    /// Without checkpoints a packed entry is acknowledged once, when the
    /// latest epoch one of its events is in has passed; with every event
    /// late (or undecodable) at once.
    #[test]
    fn a_packed_entry_is_acknowledged_once_after_its_latest_event() {
        let mut acks = Acks::Frontier(BTreeMap::new());
        let mut done = Vec::new();
        let mut held = Held::default();
        for epoch in [Some(7), None, Some(3)] {
            held.epoch = held.epoch.max(epoch);
        }
        held.settle(entry("1-0"), &mut acks, &mut done);
        Held::default().settle(entry("2-0"), &mut acks, &mut done);
        let Acks::Frontier(in_flight) = &acks else {
            unreachable!()
        };
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight[&7], [entry("1-0")]);
        assert_eq!(done, [entry("2-0")], "every event late: done at once");
        assert!(held.epoch.is_none() && !held.admitted, "settling resets");
    }
}
