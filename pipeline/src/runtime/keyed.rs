//! The runtime every stateful operator runs in: exchange by key, arrival-order
//! or event-time-order processing, capability management for outputs fired
//! by the passing of time, and checkpoint barriers (see [`crate::runtime::checkpoint`]).
//!
//! An operator supplies a [`Core`]: a pure, serializable state machine
//! (`observe`, `advance_to`, `flush`). This file is the only place that
//! knows how a core meets timely, so every operator gets the same
//! guarantees:
//! - records reach `observe` in per-key arrival order ([`Order::Arrival`],
//!   live operators) or, once the watermark has passed their epoch, in
//!   (event time, arrival) order ([`Order::EventTime`], deterministic
//!   whatever the disorder within the bound);
//! - `advance_to(w)` is called with a watermark `w` (no record with `ts < w`
//!   will be observed any more) each time it moves;
//! - every output is stamped at its own event-time epoch, never earlier than
//!   the input that caused it ([`give_at_own_epochs`]);
//! - at each checkpoint barrier the core and its parked records are saved,
//!   and restored at start.

use crate::runtime::checkpoint::Checkpoints;
use crate::runtime::operator_stats::OperatorStats;
use crate::runtime::time::{
    EpochBuffer, EventOutput, EventTime, Timed, give_at_own_epochs, give_stamped,
};
use schemas::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Filter;

/// In which order a core observes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// As they arrive (per key: log order). Live outputs, low latency.
    #[default]
    Arrival,
    /// Once the watermark has passed their epoch, sorted by
    /// [`Core::sort_epoch`]. Deterministic whatever the arrival order.
    EventTime,
}

/// A stateful operator's pure logic.
pub trait Core: Serialize + DeserializeOwned + 'static {
    /// What the operator reads and exchanges: usually [`crate::runtime::Record`].
    type Item: Timed + Clone + Serialize + DeserializeOwned + Send + 'static;
    /// Names the operator in timely, logs and checkpoint files.
    const NAME: &'static str;
    const ORDER: Order;
    /// The order this instance observes in (default [`Core::ORDER`]; an
    /// operator may make it a setting). Read from the configured core before
    /// a checkpoint is restored, so the setting, not the saved state, decides.
    fn order(&self) -> Order {
        Self::ORDER
    }
    /// Whether the operator reads `item` at all (filtered before the exchange).
    fn wants(item: &Self::Item) -> bool;
    /// The key items are exchanged by: all items of one key meet on one worker.
    fn key(item: &Self::Item) -> u64;
    /// Takes one item; pushes what it derives.
    fn observe(&mut self, item: &Self::Item, out: &mut Vec<Event>);
    /// No item with `ts < watermark` will be observed any more: fire what
    /// the passing of time decides (output `ts` = the moment it happened).
    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>);
    /// [`Core::advance_to`] in steps: emits about `budget` events (at least
    /// one unit of work: a window) and says whether everything due by
    /// `watermark` is done. The runtime calls it again, in a later step,
    /// until it is, so that an operator firing for every key at once (a
    /// window closing for ten thousand writers) holds the worker, and the
    /// live operators sharing it, for a slice at a time. Default: all at
    /// once.
    fn advance_some(&mut self, watermark: i64, out: &mut Vec<Event>, budget: usize) -> bool {
        let _ = budget;
        self.advance_to(watermark, out);
        true
    }
    /// End of input with `flush_at_end` (replay): close everything open.
    fn flush(&mut self, out: &mut Vec<Event>);
    /// Keys or entries held (memory is bounded by active keys).
    fn state_size(&self) -> usize;
    /// The order of one epoch's items ([`Order::EventTime`]): must not depend
    /// on arrival across workers (records: `(ts, seq)`).
    fn sort_epoch(items: &mut [Self::Item]);
}

/// Where an operator instance runs and what the runtime hands it besides
/// its records.
#[derive(Clone)]
pub struct OperatorCtx {
    /// Epoch length and whether to close everything at the end of input.
    pub time: EventTime,
    /// Global index of this worker (names its checkpoint parts).
    pub worker: usize,
    /// Where the instance saves and restores its state (`None`: no checkpoints).
    pub checkpoints: Option<Arc<Checkpoints>>,
    /// Where the instance reports its state size and input frontier for the
    /// metrics (`None`: not collected, as in replay and tests).
    pub stats: Option<OperatorStats>,
    /// Most items observed plus events fired by one event-time operator in
    /// one activation (`dataflow.step_budget`) before it yields the worker
    /// and resumes in the next step (`None`: everything due at once, as in
    /// replay, where no live operator waits).
    pub step_budget: Option<usize>,
}

impl OperatorCtx {
    /// Worker 0, without checkpoints or stats (single-operator graphs in tests).
    pub fn plain(time: EventTime) -> OperatorCtx {
        OperatorCtx {
            time,
            worker: 0,
            checkpoints: None,
            stats: None,
            step_budget: None,
        }
    }
}

/// An epoch taken out of the parked ones and sorted, observed up to `next`
/// when a step's budget ran out.
struct Current<T> {
    t: u64,
    items: Vec<T>,
    next: usize,
}

#[derive(Serialize)]
struct SnapshotRef<'a, C, T> {
    core: &'a C,
    pending: Vec<&'a T>,
}

#[derive(serde::Deserialize)]
#[serde(bound = "C: DeserializeOwned, T: DeserializeOwned")]
struct Snapshot<C, T> {
    core: C,
    pending: Vec<T>,
}

/// One operator instance's state besides its core's: what is parked by
/// epoch, what waits for a barrier, and the capability held at the
/// frontier for outputs fired by time.
struct Instance<C: Core> {
    core: C,
    pending: EpochBuffer<C::Item>,
    /// Containers stamped at or after the next barrier wait for it.
    held: Vec<(Capability<u64>, Vec<C::Item>)>,
    cap: Option<Capability<u64>>,
    time: EventTime,
    order: Order,
    /// Checkpoints without `flush_at_end` (`serve`): whoever resumes reads
    /// again what followed the last checkpoint, so the end of input fires
    /// nothing past the last frontier (see [`Instance::advance`]).
    resumable: bool,
    out: Vec<Event>,
    /// The epoch being worked through when the last step's budget ran out.
    current: Option<Current<C::Item>>,
}

impl<C: Core> Instance<C> {
    /// Takes in one container stamped `c`: observed at once (arrival order)
    /// or parked by epoch (event-time order).
    fn take(&mut self, output: &mut EventOutput<'_>, c: &Capability<u64>, data: &mut Vec<C::Item>) {
        match self.order {
            Order::Arrival => {
                for r in data.iter() {
                    self.core.observe(r, &mut self.out);
                }
                // From the held capability (never later than the container's
                // stamp), and no later than the container: a deadline an event
                // fires late keeps its own epoch, and an output never lands
                // after a checkpoint cut its cause came before.
                let floor = self.cap.as_ref().unwrap_or(c);
                give_stamped(output, floor, *c.time(), &self.time, &mut self.out);
            }
            Order::EventTime => self.pending.push(&self.time, data),
        }
    }

    /// Takes in the held containers stamped before `below`, in arrival order.
    fn release(&mut self, output: &mut EventOutput<'_>, below: u64) {
        let held = std::mem::take(&mut self.held);
        for (c, mut data) in held {
            if *c.time() >= below {
                self.held.push((c, data));
            } else {
                self.take(output, &c, &mut data);
            }
        }
    }

    /// Does the work due before `target` (`None`: the input ended) and
    /// moves the held capability to it.
    ///
    /// The end of input (`None`) in `serve` with checkpoints is a stop, not
    /// the end of time: the frontier never passed what is parked, and the
    /// log entries after the last completed checkpoint were not
    /// acknowledged. Taking the parked records in and firing their epochs'
    /// deadlines would publish outputs derived from part of their input
    /// (an event not yet read can still belong to those epochs), which the
    /// instance that resumes derives again, in full, with the same ids and
    /// other contents. So nothing more is observed or fired: the
    /// capability is dropped and the next holder derives those outputs
    /// once. (Flink, likewise, cancels a job for failover without firing
    /// its timers; only replay's `flush_at_end` closes everything.)
    ///
    /// With a `budget` (live serving), stops once that many items were
    /// observed and events fired, and says so (`false`): the capability
    /// stays where it was (nothing downstream passes the unfinished
    /// epoch), and the caller activates the operator again, which resumes
    /// exactly where this call stopped. Outputs and their order are the
    /// same as without a budget; only the steps they leave in differ.
    fn advance(
        &mut self,
        output: &mut EventOutput<'_>,
        target: Option<u64>,
        budget: Option<usize>,
    ) -> bool {
        let Some(floor) = self.cap.as_ref() else {
            return true;
        };
        if target.is_none() && self.resumable {
            self.pending = EpochBuffer::default();
            self.held.clear();
            self.cap = None;
            self.out.clear();
            self.current = None;
            return true;
        }
        // The end of input (replay's flush) finishes at once.
        let mut left = match target {
            Some(_) => budget.unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        // Work due before `target`, in event-time order: first what the
        // last step left unfinished.
        loop {
            let cur = match self.current.as_mut() {
                Some(cur) => cur,
                None => {
                    let Some((t, mut items)) = self.pending.pop_ready(target) else {
                        break;
                    };
                    C::sort_epoch(&mut items);
                    self.current.insert(Current { t, items, next: 0 })
                }
            };
            while let Some(r) = cur.items.get(cur.next) {
                if left == 0 {
                    give_at_own_epochs(output, floor, &self.time, &mut self.out);
                    return false;
                }
                self.core.observe(r, &mut self.out);
                cur.next += 1;
                left -= 1;
            }
            let w = (cur.t + self.time.epoch_ms) as i64;
            if target.is_none_or(|target| w <= target as i64) {
                let before = self.out.len();
                let done = self.core.advance_some(w, &mut self.out, left.max(1));
                left = left.saturating_sub(self.out.len() - before);
                if !done {
                    give_at_own_epochs(output, floor, &self.time, &mut self.out);
                    return false;
                }
            }
            if let Some(done) = self.current.take() {
                self.pending.recycle(done.items);
            }
            give_at_own_epochs(output, floor, &self.time, &mut self.out);
        }
        let Some(target) = target else {
            if self.time.flush_at_end {
                self.core.flush(&mut self.out);
            }
            if let Some(c) = self.cap.take() {
                give_at_own_epochs(output, &c, &self.time, &mut self.out);
            }
            self.out.clear();
            return true;
        };
        if !self
            .core
            .advance_some(target as i64, &mut self.out, left.max(1))
        {
            give_at_own_epochs(output, floor, &self.time, &mut self.out);
            return false;
        }
        if let Some(c) = self.cap.as_mut() {
            give_at_own_epochs(output, c, &self.time, &mut self.out);
            if *c.time() < target {
                c.downgrade(&target);
            }
        }
        true
    }
}

/// Runs `core` over a stream of its items: `records.keyed(core, &ctx)`.
pub trait Keyed<'scope, T> {
    fn keyed<C: Core<Item = T>>(
        self,
        core: C,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>>;
}

impl<'scope, T> Keyed<'scope, T> for Stream<'scope, u64, Vec<T>>
where
    T: Timed + Clone + Serialize + DeserializeOwned + Send + 'static,
{
    fn keyed<C: Core<Item = T>>(
        self,
        core: C,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>> {
        let ctx = ctx.clone();
        let time = ctx.time;
        let part = format!("{}-w{}", C::NAME, ctx.worker);
        // Metrics: state size and input frontier, sampled (ops, issue 9).
        let stats = ctx.stats.as_ref().map(|s| s.slot(C::NAME));
        let mut sampled = std::time::Instant::now();
        let scope = self.scope();
        let budget = ctx.step_budget.filter(|&b| b > 0);
        self.filter(|r| C::wants(r)).unary_frontier(
            Exchange::new(|r: &T| C::key(r)),
            C::NAME,
            move |initial, info| {
                // Resumes an advance the step's budget cut short.
                let activator = scope.activator_for(info.address);
                let ckpt = ctx.checkpoints.clone();
                let order = core.order();
                let mut me = Instance {
                    core,
                    pending: EpochBuffer::default(),
                    held: Vec::new(),
                    cap: Some(initial),
                    time,
                    order,
                    resumable: ckpt.is_some() && !time.flush_at_end,
                    out: Vec::new(),
                    current: None,
                };
                if let Some(c) = ckpt.as_ref() {
                    c.expect(&part);
                    match c.load::<Snapshot<C, T>>(&part) {
                        Ok(Some(s)) => {
                            me.core = s.core;
                            me.pending.push(&time, &mut s.pending.clone());
                            let state = me.core.state_size();
                            tracing::info!(operator = C::NAME, state, "state restored");
                        }
                        Ok(None) => {}
                        Err(error) => {
                            tracing::error!(%error, operator = C::NAME, "checkpoint unreadable; starting empty")
                        }
                    }
                }
                let mut next_barrier = ckpt
                    .as_ref()
                    .map(|c| c.next_barrier(c.restored().unwrap_or(0)));
                move |(input, frontier), output| {
                    input.for_each(|c, data| {
                        let Some(c) = c.retain_least(0) else {
                            return;
                        };
                        if next_barrier.is_some_and(|b| *c.time() >= b) {
                            me.held.push((c, std::mem::take(data)));
                        } else {
                            me.take(output, &c, data);
                        }
                    });
                    let f = frontier.frontier().first().copied();
                    if let Some(s) = stats.as_ref().filter(|_| sampled.elapsed().as_millis() >= 200) {
                        sampled = std::time::Instant::now();
                        s.set(me.core.state_size(), f);
                    }
                    loop {
                        // The barrier the frontier reached, if any: the latest
                        // at or before it, when it jumped over several.
                        let barrier = match (f, next_barrier, ckpt.as_ref()) {
                            (Some(f), Some(b), Some(c)) if f >= b => {
                                Some(c.barrier_at_or_before(f))
                            }
                            _ => None,
                        };
                        let Some(b) = barrier else {
                            if f.is_none() && !me.resumable {
                                // Input ended: no barrier will come, and a
                                // held container keeps its capability (the
                                // dataflow would never finish). Take them in
                                // (when resumable, `advance` drops them).
                                me.release(output, u64::MAX);
                            }
                            if !me.advance(output, f, budget) {
                                activator.activate();
                            }
                            break;
                        };
                        // What was held for a barrier before `b` is before the cut.
                        me.release(output, b);
                        // The cut needs all of it: no budget.
                        me.advance(output, Some(b), None);
                        // Every item stamped before `b` has been observed or
                        // parked, nothing stamped later: the cut.
                        if let Some(c) = ckpt.as_ref() {
                            let snapshot = SnapshotRef {
                                core: &me.core,
                                pending: me.pending.iter().collect(),
                            };
                            c.save(b, &part, &snapshot);
                            next_barrier = Some(c.next_barrier(b));
                        }
                        if let Some(nb) = next_barrier {
                            me.release(output, nb);
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::dataflow::{VecSink, install_graph};
    use crate::operators::live_wpm::{LiveWpm, LiveWpmConfig};
    use crate::runtime::checkpoint::{CheckpointConfig, Checkpoints};
    use schemas::payload::{Keystroke, Payload};

    fn ks(id: &str, ts: i64) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: Some("u1".into()),
            project_id: None,
            document_id: None,
            data: Payload::WritingKeystroke(Keystroke {
                keystrokes: 1,
                words: 1,
                chars: 1,
                deleted_chars: None,
                source: Default::default(),
            }),
        }
    }

    /// Wires one keyed operator, configured from the [`Config`].
    type OneOperator = for<'s> fn(
        Stream<'s, u64, Vec<crate::runtime::Record>>,
        &Config,
        &OperatorCtx,
    ) -> Stream<'s, u64, Vec<Event>>;

    /// One keyed operator (`operator`, the Config's) in a one-worker
    /// dataflow, with checkpoints (1 s of event time, epochs of 100 ms) or
    /// without: pushes each of `batches` (stepping `steps` times after
    /// each), ends the input and steps until the dataflow is done. What the
    /// operator derived.
    fn until_input_ends(
        checkpoints: bool,
        flush_at_end: bool,
        batches: Vec<Vec<Event>>,
        steps: usize,
        operator: OneOperator,
    ) -> Vec<Event> {
        budgeted_until_input_ends(checkpoints, flush_at_end, None, batches, steps, operator)
    }

    /// [`until_input_ends`] with a step budget.
    fn budgeted_until_input_ends(
        checkpoints: bool,
        flush_at_end: bool,
        step_budget: Option<usize>,
        batches: Vec<Vec<Event>>,
        steps: usize,
        operator: OneOperator,
    ) -> Vec<Event> {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "inkstream-keyed-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let ckpt = checkpoints
            .then(|| {
                Checkpoints::open(
                    &CheckpointConfig {
                        dir: Some(dir.clone()),
                        interval: std::time::Duration::from_secs(1),
                        store: None,
                    },
                    100,
                    crate::runtime::checkpoint::Layout {
                        workers: 1,
                        processes: 1,
                    },
                )
                .unwrap()
            })
            .flatten()
            .map(Arc::new);
        let sink = Arc::new(VecSink::default());
        let s2 = sink.clone();
        timely::execute_directly(move |worker| {
            let ctx = OperatorCtx {
                checkpoints: ckpt.clone(),
                step_budget,
                ..OperatorCtx::plain(EventTime {
                    epoch_ms: 100,
                    flush_at_end,
                })
            };
            let config = Config::default();
            let (driver, probe) = install_graph(worker, &config, s2, true, ckpt, |s| {
                operator(s, &config, &ctx)
            });
            let mut driver = driver.unwrap();
            for batch in batches {
                driver.push(batch);
                for _ in 0..steps {
                    worker.step();
                }
            }
            driver.close();
            let mut steps = 0;
            while !probe.done() {
                worker.step();
                steps += 1;
                assert!(steps < 100_000, "the dataflow never finishes");
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
        let out = sink.0.lock().unwrap();
        out.clone()
    }

    /// The sessions operator as `serve` runs it (no `flush_at_end`), with or
    /// without checkpoints, until its input ends: who and what it derived, when.
    fn sessions_until_input_ends(checkpoints: bool, events: Vec<Event>) -> Vec<(String, i64)> {
        use crate::operators::sessions::Sessions;
        until_input_ends(checkpoints, false, vec![events], 100, |s, config, ctx| {
            s.keyed(Sessions::new(&config.sessions, &config.flow), ctx)
        })
        .iter()
        .map(|e| {
            (
                format!("{}:{}", e.user_id.as_deref().unwrap_or(""), e.event_type()),
                e.ts,
            )
        })
        .collect()
    }

    /// The 1 M chaos run's 3 differing derived events: an instance that lost
    /// the lease stopped its input, took in the records parked past the
    /// frontier and fired their deadlines, and so published a flow entry
    /// whose WPM missed words not yet read; the next holder derived it
    /// again, from the checkpoint, with all of them. With checkpoints, the
    /// end of input in `serve` fires nothing past the frontier.
    #[test]
    fn a_stop_with_checkpoints_fires_nothing_past_the_frontier() {
        let at = |user: &str, id: &str, ts: i64| Event {
            user_id: Some(user.into()),
            ..ks(id, ts)
        };
        // Disorder 2 s: after the event at 10 s the frontier is at 8 s, so
        // u1's event at 0 is taken in, u2's at 10 s stays parked.
        let events = || vec![at("u1", "a", 0), at("u2", "b", 10_000)];
        let stopped = sessions_until_input_ends(true, events());
        assert!(
            stopped
                .iter()
                .any(|(k, ts)| k == "u1:writing.session_started" && *ts == 0),
            "what the frontier passed is derived: {stopped:?}"
        );
        assert!(
            stopped
                .iter()
                .all(|(k, ts)| !k.starts_with("u2:") && *ts < 8_000),
            "nothing past the frontier (8 s) is derived at a stop: {stopped:?}"
        );
        // Without checkpoints nothing is read again, so a stop drains: the
        // parked event is taken in (and its entry then acknowledged).
        let drained = sessions_until_input_ends(false, events());
        assert!(
            drained
                .iter()
                .any(|(k, ts)| k == "u2:writing.session_started" && *ts == 10_000),
            "without checkpoints the stop drains what is parked: {drained:?}"
        );
    }

    #[test]
    fn containers_held_for_a_barrier_are_taken_in_when_the_input_ends_first() {
        // The first batch moves the input past the first barriers; the
        // second is stamped after them and must wait for the operator's
        // frontier to reach a barrier — but the input ends first, with no
        // step in between.
        let batches = vec![
            vec![ks("a", 0), ks("b", 5_000)],
            vec![ks("c", 5_100), ks("d", 5_200)],
        ];
        let out = until_input_ends(true, true, batches, 0, |s, _, ctx| {
            s.keyed(
                LiveWpm::new(&LiveWpmConfig {
                    min_interval: std::time::Duration::ZERO,
                    ..LiveWpmConfig::default()
                }),
                ctx,
            )
        });
        let ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 4, "every event was taken in: {ids:?}");
    }

    /// A step budget changes when outputs leave, never what they are or
    /// their order per operator: 300 writers in 6 projects over 2.5 minutes
    /// (sessions opening for all at once, team windows closing for all of
    /// them at 60 and 120 s), every operator, with and without checkpoints,
    /// unbounded and with budgets of 1, 7 and 256 items per step.
    #[test]
    fn a_step_budget_changes_when_outputs_leave_not_what_they_are() {
        let mut events = Vec::new();
        for i in 0..3_000i64 {
            let user = i % 300;
            events.push(Event {
                user_id: Some(format!("u{user}").into()),
                project_id: Some(format!("p{}", user % 6).into()),
                document_id: Some(format!("d{}", user % 12).into()),
                ..ks(&format!("e{i}"), i * 50 + (user % 7) * 10)
            });
        }
        let batches = || {
            events
                .chunks(250)
                .map(<[Event]>::to_vec)
                .collect::<Vec<_>>()
        };
        let by_operator = |out: Vec<Event>| {
            let mut per: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for e in out {
                let kind = match &e.data {
                    Payload::AnalyticsMetricUpdated(m) => m.metric.to_string(),
                    _ => e.event_type().to_owned(),
                };
                per.entry(kind)
                    .or_default()
                    .push(format!("{} {}", e.id, e.ts));
            }
            per
        };
        for checkpoints in [false, true] {
            let run = |budget| {
                by_operator(budgeted_until_input_ends(
                    checkpoints,
                    false,
                    budget,
                    batches(),
                    2,
                    crate::dataflow::build_graph,
                ))
            };
            let unbounded = run(None);
            assert!(
                unbounded.get("team.words").is_some_and(|v| v.len() >= 600),
                "team windows closed for every writer: {:?}",
                unbounded
                    .iter()
                    .map(|(k, v)| (k, v.len()))
                    .collect::<Vec<_>>()
            );
            for budget in [1, 7, 256] {
                let budgeted = run(Some(budget));
                assert_eq!(
                    budgeted.keys().collect::<Vec<_>>(),
                    unbounded.keys().collect::<Vec<_>>(),
                    "budget {budget}, checkpoints {checkpoints}: the same kinds of output"
                );
                for (kind, want) in &unbounded {
                    assert_eq!(
                        &budgeted[kind], want,
                        "budget {budget}, checkpoints {checkpoints}: {kind} differs"
                    );
                }
            }
        }
    }
}
