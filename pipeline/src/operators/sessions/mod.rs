//! Writing sessions per user, in event time: the session state machine, with
//! flow state ([`crate::operators::sessions::flow`]) as one of its states.
//!
//! ```text
//! IDLE ─▶ WARMING_UP ─▶ ACTIVE_WRITING ⟷ FLOW_STATE
//!             │              │               │
//!             └──────────────┴───────────────┴─▶ PAUSED ─▶ BREAK      (any) ─▶ ENDED
//! ```
//!
//! **Input.** Only the user's `writing.*` events count, except the derived
//! ones (`flow_state_*`, `session_state_changed`: a client cannot fake them;
//! they are ignored). *Activity* = every counted event except
//! `session_paused` and `session_ended` (keystrokes of any source,
//! `word_added`, `paragraph_completed`, `session_started`, `session_resumed`).
//! *Words* = typed words ([`crate::operators::written_words`]); keystrokes
//! whose `source` is not `typed` count in `pasted_words` instead.
//!
//! **Rules** (durations from `[sessions]`; `last_activity` / `last_event` of
//! the open session):
//! - Activity with no open session opens one (implicit): IDLE → WARMING_UP,
//!   and `writing.session_started` is emitted. A client `session_started`
//!   ends the open session (reason `restarted`) and opens an explicit one with
//!   the client's `session_id` (not echoed). A `session_resumed` with no open
//!   session opens an implicit one. `session_ended` / `session_paused` with
//!   no open session are ignored.
//! - WARMING_UP for the first `warmup` (default 2 min): at `start + warmup`
//!   → ACTIVE_WRITING (`warmed_up`).
//! - PAUSED at `last_activity + pause_after` (default 60 s; an activity at
//!   exactly that instant keeps the user writing, as a session gap of exactly
//!   `gap` keeps the session), `writing.session_paused` emitted; or at once on
//!   a client `session_paused` (not echoed). BREAK at `last_activity +
//!   break_after` (default 5 min). From PAUSED or BREAK, activity resumes
//!   (to WARMING_UP before `start + warmup`, else ACTIVE_WRITING) and
//!   `writing.session_resumed` is emitted (also when a client
//!   `session_resumed` is what resumed it).
//! - ENDED when the gap since the last event exceeds `gap` (default 30 min;
//!   exactly `gap` keeps it): at `last_event + gap + 1 ms`. Also on a client
//!   `session_ended` (`ended`) and a client `session_started` (`restarted`).
//!   At end of input (replay) every deadline fires as if the watermark went
//!   on forever: open sessions pause, break, and end by the gap.
//! - FLOW_STATE ⟷ ACTIVE_WRITING as [`crate::operators::sessions::flow`] says;
//!   `writing.flow_state_entered` / `flow_state_exited`; pausing or ending
//!   exits flow too.
//!
//! **Order at one instant.** Events at a millisecond are applied first, in
//! arrival order (per user that is log order); then the instant is evaluated:
//! WPM measured, warm-up end, flow exit, pause, break, gap end, flow entry.
//! A timer at instant `D` therefore fires only once nothing at or before `D`
//! can still arrive (the frontier is past `D`, or a later event of the user
//! came), and its outputs have `ts = D` (`D + 1` for a gap end).
//!
//! **Outputs** (envelope: the user, and the latest project/document the
//! session's events named): every transition as
//! `writing.session_state_changed` (`from`, `to`, `reason`, `wpm` = rolling
//! WPM at that moment), plus the events named above, and the summary
//! `writing.session_ended` with `ts` = the moment the end is known:
//! `session_id`, `start_ts` (first event), `end_ts` (last event), `events`,
//! `words`, `wpm` = words / max(1, (end_ts − start_ts) minutes), `active_ms`
//! (time in WARMING_UP, ACTIVE_WRITING, FLOW_STATE), `flow_ms` (in
//! FLOW_STATE), `paused_ms` (in PAUSED, BREAK), `longest_flow_ms`,
//! `pasted_words`, `reason`. The durations cover `[start_ts, end_ts]`, so
//! `active_ms + paused_ms = end_ts − start_ts`: after a writing event the
//! user counts as active for `pause_after`, then paused. (The previous
//! definition counted a whole gap longer than `pause_after` as paused, which
//! disagreed with the states: the user is ACTIVE_WRITING during its first
//! `pause_after`.)
//!
//! Reasons: `activity`, `session_started`, `session_resumed`, `warmed_up`,
//! `wpm_above_threshold`, `wpm_below_threshold`, `idle_timeout`,
//! `session_paused`, `break_timeout`, `gap`, `ended`, `restarted`.
//!
//! **Determinism.** The operator runtime ([`crate::runtime::keyed`],
//! event-time order) processes each epoch only once the frontier
//! has passed it, in (event time, arrival) order, and fires deadlines from
//! the frontier, so outputs are identical whatever the arrival order within
//! the disorder bound and whatever the number of workers. Derived ids hash
//! the user, the session (id and start) and the instant or the transition's
//! rank in its session.
//!
//! **Memory.** A user's state is dropped once the session has ended and the
//! rolling window is empty ([`Sessions::state_size`]).

pub mod flow;

use crate::operators::{derived_id, stable_hash, written_words};
use crate::runtime::{Core, Order, Record};
use flow::{FlowChange, FlowConfig, FlowRules, FlowTracker};
use foldhash::HashMap;
use schemas::Event;
use schemas::payload::{
    FlowStateEntered, FlowStateExited, Payload, SessionEnded, SessionPaused, SessionResumed,
    SessionStarted, SessionState, SessionStateChanged, TextSource,
};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

/// `[sessions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A longer gap between a user's writing events ends the session; exactly
    /// this keeps it (default 30 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub gap: Duration,
    /// PAUSED after this long without activity; exactly this keeps the user
    /// writing (default 60 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub pause_after: Duration,
    /// BREAK after this long without activity (default 5 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub break_after: Duration,
    /// WARMING_UP for this long from the start of a session (default 2 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub warmup: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            gap: Duration::from_secs(30 * 60),
            pause_after: Duration::from_secs(60),
            break_after: Duration::from_secs(5 * 60),
            warmup: Duration::from_secs(2 * 60),
        }
    }
}

/// [`SessionsConfig`] in ms.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Rules {
    gap: i64,
    pause: i64,
    brk: i64,
    warmup: i64,
}

fn writing(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::WarmingUp | SessionState::ActiveWriting | SessionState::FlowState
    )
}

/// Time per kind of state.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Totals {
    active_ms: i64,
    flow_ms: i64,
    paused_ms: i64,
    longest_flow_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Session {
    id: String,
    start_ts: i64,
    /// Last event (any counted writing event): the gap runs from here.
    last_ts: i64,
    /// Last activity: pause and break run from here.
    last_activity: i64,
    state: SessionState,
    /// When `state` was entered (for FLOW_STATE: the flow entry).
    state_since: i64,
    /// Transitions emitted so far (the rank of the next one, for its id).
    transitions: u32,
    events: i64,
    words: i64,
    pasted_words: i64,
    /// Time per state up to `state_since`.
    totals: Totals,
    /// Totals as of the last event: the summary covers `[start_ts, last_ts]`.
    at_last: Totals,
    project_id: Option<schemas::Text>,
    document_id: Option<schemas::Text>,
}

impl Session {
    fn totals_at(&self, t: i64) -> Totals {
        let mut x = self.totals;
        let d = (t - self.state_since).max(0);
        match self.state {
            SessionState::WarmingUp | SessionState::ActiveWriting => x.active_ms += d,
            SessionState::FlowState => {
                x.active_ms += d;
                x.flow_ms += d;
                x.longest_flow_ms = x.longest_flow_ms.max(d);
            }
            SessionState::Paused | SessionState::Break => x.paused_ms += d,
            SessionState::Idle | SessionState::Ended => {}
        }
        x
    }

    fn touch(&mut self, e: &Event) {
        if e.project_id.is_some() {
            self.project_id.clone_from(&e.project_id);
        }
        if e.document_id.is_some() {
            self.document_id.clone_from(&e.document_id);
        }
    }

    /// Counts an event at `t` (after its transitions).
    fn count(&mut self, t: i64) {
        self.events += 1;
        self.last_ts = self.last_ts.max(t);
        self.at_last = self.totals_at(t);
    }
}

/// What an event is to the state machine.
enum Kind {
    Started(Option<String>),
    Ended,
    Paused,
    Resumed,
    Activity { typed: u64, pasted: u64 },
    Ignored,
}

fn kind(e: &Event) -> Kind {
    match &e.data {
        Payload::WritingSessionStarted(s) => Kind::Started(s.session_id.clone()),
        Payload::WritingSessionEnded(_) => Kind::Ended,
        Payload::WritingSessionPaused(_) => Kind::Paused,
        Payload::WritingSessionResumed(_) => Kind::Resumed,
        Payload::WritingFlowStateEntered(_)
        | Payload::WritingFlowStateExited(_)
        | Payload::WritingSessionStateChanged(_) => Kind::Ignored,
        Payload::WritingKeystroke(k) if k.source != TextSource::Typed => Kind::Activity {
            typed: 0,
            pasted: k.words.max(0) as u64,
        },
        _ if e.category() == schemas::Category::Writing => Kind::Activity {
            typed: written_words(e).unwrap_or(0),
            pasted: 0,
        },
        _ => Kind::Ignored,
    }
}

/// Where a user's outputs go.
struct UserOutputs<'a> {
    user: &'a str,
    rules: Rules,
    out: &'a mut Vec<Event>,
}

impl UserOutputs<'_> {
    fn emit(&mut self, s: &Session, ts: i64, operator: &str, extra: &str, data: Payload) {
        let start = s.start_ts.to_string();
        self.out.push(Event {
            id: derived_id(operator, &[self.user, &s.id, &start, extra]),
            ts,
            user_id: Some(self.user.into()),
            project_id: s.project_id.clone(),
            document_id: s.document_id.clone(),
            data,
        });
    }

    fn transition(&mut self, s: &mut Session, to: SessionState, at: i64, reason: &str, wpm: f64) {
        s.totals = s.totals_at(at);
        s.state_since = at;
        let from = std::mem::replace(&mut s.state, to);
        let rank = s.transitions.to_string();
        s.transitions += 1;
        self.emit(
            s,
            at,
            "session_state_changed",
            &rank,
            Payload::WritingSessionStateChanged(SessionStateChanged {
                session_id: Some(s.id.clone()),
                from,
                to,
                reason: reason.to_owned(),
                wpm,
            }),
        );
    }

    fn flow_event(&mut self, s: &Session, at: i64, change: FlowChange) {
        let (operator, data) = match change {
            FlowChange::Entered { wpm, sustained_ms } => (
                "flow_state_entered",
                Payload::WritingFlowStateEntered(FlowStateEntered {
                    session_id: Some(s.id.clone()),
                    wpm,
                    sustained_ms,
                }),
            ),
            FlowChange::Exited { wpm, duration_ms } => (
                "flow_state_exited",
                Payload::WritingFlowStateExited(FlowStateExited {
                    session_id: Some(s.id.clone()),
                    wpm,
                    duration_ms,
                }),
            ),
        };
        self.emit(s, at, operator, &at.to_string(), data);
    }
}

/// One user's state.
#[derive(Serialize, Deserialize)]
struct User {
    session: Option<Session>,
    flow: FlowTracker,
    /// Last instant evaluated: time never goes back.
    clock: i64,
    /// Instant of the last applied event, not evaluated yet.
    pending: Option<i64>,
    /// This user's key in the timer queue: at or before its next instant.
    scheduled: Option<i64>,
}

impl User {
    fn new(flow: FlowRules) -> User {
        User {
            session: None,
            flow: FlowTracker::new(flow),
            clock: i64::MIN,
            pending: None,
            scheduled: None,
        }
    }

    /// Nothing left to track: the user's state can go.
    fn is_empty(&self) -> bool {
        self.session.is_none() && self.pending.is_none() && self.flow.is_idle()
    }

    /// The next instant to evaluate.
    fn next_instant(&self, r: Rules) -> Option<i64> {
        let mut next = self.pending;
        let mut consider = |d: Option<i64>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        match &self.session {
            None => consider(self.flow.empty_at()),
            Some(s) => {
                consider(Some(s.last_ts.saturating_add(r.gap)));
                match s.state {
                    SessionState::WarmingUp
                    | SessionState::ActiveWriting
                    | SessionState::FlowState => {
                        let warm_end = s.start_ts.saturating_add(r.warmup);
                        consider(Some(s.last_activity.saturating_add(r.pause)));
                        consider(self.flow.next_drop());
                        if s.state == SessionState::WarmingUp {
                            consider(Some(warm_end));
                            consider(self.flow.deadline(warm_end));
                        } else {
                            consider(self.flow.deadline(i64::MIN));
                        }
                    }
                    SessionState::Paused => consider(Some(s.last_activity.saturating_add(r.brk))),
                    _ => {}
                }
            }
        }
        // Every deadline is after the last evaluated instant (a deadline at
        // or before it would have fired then); never loop on one.
        debug_assert!(next.is_none_or(|n| n > self.clock), "deadline in the past");
        next.map(|n| n.max(self.clock.saturating_add(1)))
    }

    /// Evaluates every instant before `x`, in order.
    fn run_until(&mut self, x: i64, ctx: &mut UserOutputs<'_>) {
        while let Some(t) = self.next_instant(ctx.rules) {
            if t >= x {
                break;
            }
            self.instant(t, ctx);
        }
    }

    /// Evaluates instant `t`, after every event at `t`.
    fn instant(&mut self, t: i64, ctx: &mut UserOutputs<'_>) {
        let r = ctx.rules;
        self.clock = t;
        if self.pending.is_some_and(|p| p <= t) {
            self.pending = None;
        }
        let wpm = self.flow.measure(t);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.state == SessionState::WarmingUp && t >= s.start_ts.saturating_add(r.warmup) {
            ctx.transition(s, SessionState::ActiveWriting, t, "warmed_up", wpm);
        }
        if s.state == SessionState::FlowState
            && self.flow.exit_due(t)
            && let Some(change) = self.flow.exit(t)
        {
            ctx.transition(
                s,
                SessionState::ActiveWriting,
                t,
                "wpm_below_threshold",
                wpm,
            );
            ctx.flow_event(s, t, change);
        }
        if writing(s.state) && t >= s.last_activity.saturating_add(r.pause) {
            pause(s, &mut self.flow, t, "idle_timeout", ctx);
        }
        if s.state == SessionState::Paused && t >= s.last_activity.saturating_add(r.brk) {
            ctx.transition(s, SessionState::Break, t, "break_timeout", wpm);
        }
        if t >= s.last_ts.saturating_add(r.gap) {
            self.end(t.saturating_add(1), "gap", ctx);
            return;
        }
        if s.state == SessionState::ActiveWriting && self.flow.entry_due(t) {
            let change = self.flow.enter(t);
            ctx.transition(s, SessionState::FlowState, t, "wpm_above_threshold", wpm);
            ctx.flow_event(s, t, change);
        }
    }

    /// Ends the open session at `at`: the summary.
    fn end(&mut self, at: i64, reason: &str, ctx: &mut UserOutputs<'_>) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        let change = self.flow.stop(at);
        let wpm = self.flow.wpm_at(at);
        ctx.transition(&mut s, SessionState::Ended, at, reason, wpm);
        if let Some(change) = change {
            ctx.flow_event(&s, at, change);
        }
        let x = s.at_last;
        let minutes = ((s.last_ts - s.start_ts) as f64 / 60_000.0).max(1.0);
        ctx.emit(
            &s,
            at,
            "session_ended",
            "",
            Payload::WritingSessionEnded(Box::new(SessionEnded {
                session_id: Some(s.id.clone()),
                reason: Some(reason.to_owned()),
                start_ts: Some(s.start_ts),
                end_ts: Some(s.last_ts),
                events: Some(s.events),
                words: Some(s.words),
                wpm: Some(s.words as f64 / minutes),
                active_ms: Some(x.active_ms),
                flow_ms: Some(x.flow_ms),
                paused_ms: Some(x.paused_ms),
                longest_flow_ms: Some(x.longest_flow_ms),
                pasted_words: Some(s.pasted_words),
            })),
        );
    }

    /// Opens a session at `t` with the event `e`.
    /// `implicit`: opened by activity, so `session_started` is emitted (an
    /// explicit one is the client's own event, not echoed).
    fn open(
        &mut self,
        t: i64,
        e: &Event,
        id: Option<String>,
        reason: &str,
        implicit: bool,
        ctx: &mut UserOutputs<'_>,
    ) {
        let id = id.unwrap_or_else(|| format!("s-{:016x}", stable_hash(&(ctx.user, t))));
        let mut s = Session {
            id,
            start_ts: t,
            last_ts: t,
            last_activity: t,
            state: SessionState::Idle,
            state_since: t,
            transitions: 0,
            events: 0,
            words: 0,
            pasted_words: 0,
            totals: Totals::default(),
            at_last: Totals::default(),
            project_id: e.project_id.clone(),
            document_id: e.document_id.clone(),
        };
        let wpm = self.flow.wpm_at(t);
        ctx.transition(&mut s, SessionState::WarmingUp, t, reason, wpm);
        if implicit {
            ctx.emit(
                &s,
                t,
                "session_started",
                "",
                Payload::WritingSessionStarted(SessionStarted {
                    session_id: Some(s.id.clone()),
                    reason: Some(reason.to_owned()),
                }),
            );
        }
        self.flow.start();
        self.session = Some(s);
    }

    /// Applies one event at `t` (its instant is evaluated later).
    fn apply(&mut self, t: i64, e: &Event, kind: Kind, ctx: &mut UserOutputs<'_>) {
        match kind {
            Kind::Ignored => {}
            Kind::Started(id) => {
                self.end(t, "restarted", ctx);
                self.open(t, e, id, "session_started", false, ctx);
                self.activity(t, e, ctx);
            }
            Kind::Ended => {
                if let Some(s) = self.session.as_mut() {
                    s.touch(e);
                    s.count(t);
                    self.end(t, "ended", ctx);
                }
            }
            Kind::Paused => {
                if let Some(s) = self.session.as_mut() {
                    s.touch(e);
                    if writing(s.state) {
                        pause(s, &mut self.flow, t, "session_paused", ctx);
                    }
                    s.count(t);
                }
            }
            Kind::Resumed => self.activity_or_open(t, e, "session_resumed", ctx),
            Kind::Activity { typed, pasted } => {
                self.flow.add_words(t, typed);
                self.activity_or_open(t, e, "activity", ctx);
                if let Some(s) = self.session.as_mut() {
                    s.words += typed as i64;
                    s.pasted_words += pasted as i64;
                }
            }
        }
    }

    fn activity_or_open(&mut self, t: i64, e: &Event, reason: &str, ctx: &mut UserOutputs<'_>) {
        if self.session.is_none() {
            self.open(t, e, None, reason, true, ctx);
        }
        self.activity(t, e, ctx);
    }

    /// Activity at `t` in the open session: resumes it if paused, counts it.
    fn activity(&mut self, t: i64, e: &Event, ctx: &mut UserOutputs<'_>) {
        let r = ctx.rules;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.touch(e);
        if matches!(s.state, SessionState::Paused | SessionState::Break) {
            let to = if t < s.start_ts.saturating_add(r.warmup) {
                SessionState::WarmingUp
            } else {
                SessionState::ActiveWriting
            };
            let reason = if matches!(&e.data, Payload::WritingSessionResumed(_)) {
                "session_resumed"
            } else {
                "activity"
            };
            let wpm = self.flow.wpm_at(t);
            ctx.transition(s, to, t, reason, wpm);
            ctx.emit(
                s,
                t,
                "session_resumed",
                &t.to_string(),
                Payload::WritingSessionResumed(SessionResumed {
                    session_id: Some(s.id.clone()),
                    reason: Some(reason.to_owned()),
                }),
            );
            self.flow.start();
        }
        s.last_activity = s.last_activity.max(t);
        s.count(t);
    }
}

/// Enters PAUSED at `t` (from a writing state), leaving flow.
fn pause(s: &mut Session, flow: &mut FlowTracker, t: i64, reason: &str, ctx: &mut UserOutputs<'_>) {
    let change = flow.stop(t);
    let wpm = flow.wpm_at(t);
    ctx.transition(s, SessionState::Paused, t, reason, wpm);
    if let Some(change) = change {
        ctx.flow_event(s, t, change);
    }
    if reason == "idle_timeout" {
        ctx.emit(
            s,
            t,
            "session_paused",
            &t.to_string(),
            Payload::WritingSessionPaused(SessionPaused {
                session_id: Some(s.id.clone()),
                reason: Some(reason.to_owned()),
            }),
        );
    }
}

/// The pure core. Feed each user's events in event-time order (the runtime
/// does, as a [`Core`]), and tell it when the watermark moves. Serializable
/// (plain fields only, bincode-safe), so it is checkpointed.
#[derive(Deserialize)]
#[serde(from = "StoredSessions")]
pub struct Sessions {
    rules: Rules,
    flow: FlowRules,
    /// Each user's slot in `slots`: the one hash lookup of an event.
    index: HashMap<Arc<str>, u32>,
    /// Users by slot; `None` is free (listed in `free`) and reused.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// (instant, slot), earliest first: each user with a `scheduled`
    /// instant is listed at it. An entry whose instant is no longer its
    /// slot's `scheduled` (rescheduled, or the slot freed and reused) is
    /// stale and skipped when it comes up (a reschedule pushes, it does not
    /// search); a reschedule that finds more than twice as many entries as
    /// users (+ 64) rebuilds the heap from the users, so it stays within
    /// twice the most users held. Plain integers: a comparison reads no
    /// name and a push touches no reference count.
    queue: BinaryHeap<Reverse<(i64, u32)>>,
    /// (instant, slot) scheduled by events since the last run, in arrival
    /// order: an event schedules its own instant, which the next run (at
    /// the end of the event's epoch) takes at once, so it skips the heap.
    /// A run sorts these and merges them with the heap: users are taken in
    /// the same (instant, slot) order either way. Stale entries are
    /// skipped like the heap's.
    recent: Vec<(i64, u32)>,
}

/// One user: the name (shared with `index`) and the state.
struct Slot {
    name: Arc<str>,
    user: User,
}

/// A checkpoint stores what it stored before the slots: the users by name,
/// and the queue as the sorted set of (instant, user), one entry per
/// scheduled user.
impl Serialize for Sessions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Sessions", 4)?;
        st.serialize_field("rules", &self.rules)?;
        st.serialize_field("flow", &self.flow)?;
        st.serialize_field("users", &UsersByName(self))?;
        st.serialize_field("queue", &self.scheduled())?;
        st.end()
    }
}

/// The users as the map `name → state` a checkpoint holds.
struct UsersByName<'a>(&'a Sessions);

impl Serialize for UsersByName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.index.len()))?;
        for (name, user) in self.0.users() {
            m.serialize_entry(name, user)?;
        }
        m.end()
    }
}

#[derive(Deserialize)]
struct StoredSessions {
    rules: Rules,
    flow: FlowRules,
    users: HashMap<Arc<str>, User>,
    queue: Vec<(i64, Arc<str>)>,
}

impl From<StoredSessions> for Sessions {
    fn from(stored: StoredSessions) -> Sessions {
        let mut s = Sessions::with_rules(stored.rules, stored.flow);
        for (name, user) in stored.users {
            s.insert(name, user);
        }
        s.queue = stored
            .queue
            .into_iter()
            .filter_map(|(t, name)| s.index.get(&name).map(|&slot| Reverse((t, slot))))
            .collect();
        s
    }
}

impl Sessions {
    pub fn new(config: &SessionsConfig, flow: &FlowConfig) -> Sessions {
        Sessions::with_rules(
            Rules {
                gap: config.gap.as_millis() as i64,
                pause: config.pause_after.as_millis() as i64,
                // A break is a long pause: never before the pause itself.
                brk: config.break_after.max(config.pause_after).as_millis() as i64,
                warmup: config.warmup.as_millis() as i64,
            },
            FlowRules::new(flow),
        )
    }

    fn with_rules(rules: Rules, flow: FlowRules) -> Sessions {
        Sessions {
            rules,
            flow,
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            queue: BinaryHeap::new(),
            recent: Vec::new(),
        }
    }

    /// Every user with state: (name, state).
    fn users(&self) -> impl Iterator<Item = (&Arc<str>, &User)> {
        self.slots.iter().flatten().map(|s| (&s.name, &s.user))
    }

    /// Gives `user` a slot (a free one first).
    fn insert(&mut self, name: Arc<str>, user: User) -> u32 {
        let slot = Slot {
            name: Arc::clone(&name),
            user,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = Some(slot);
                at
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(name, at);
        at
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.users().filter(|(_, u)| u.session.is_some()).count()
    }

    /// Users with state (an open session or words still in the rolling
    /// window): memory is bounded by these, not by past sessions.
    pub fn state_size(&self) -> usize {
        self.index.len()
    }

    /// The state of `user`'s session (IDLE when none is open).
    pub fn state_of(&self, user: &str) -> SessionState {
        self.index
            .get(user)
            .and_then(|&at| self.slots[at as usize].as_ref())
            .and_then(|s| s.user.session.as_ref())
            .map_or(SessionState::Idle, |s| s.state)
    }

    /// Takes one event (in event-time order for its user, ties in arrival
    /// order); pushes what it and the instants before it produce.
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Event>) {
        let kind = kind(e);
        if matches!(kind, Kind::Ignored) {
            return;
        }
        let Some(user) = e.user_id.as_deref() else {
            return;
        };
        let at = match self.index.get(user) {
            Some(&at) => at,
            // Nothing to end or pause.
            None if matches!(kind, Kind::Ended | Kind::Paused) => return,
            None => self.insert(Arc::from(user), User::new(self.flow)),
        };
        let Some(Slot { name, user: u }) = self.slots[at as usize].as_mut() else {
            return;
        };
        let mut ctx = UserOutputs {
            user: name,
            rules: self.rules,
            out,
        };
        // An event older than what was evaluated (only if fed out of order)
        // counts at the user's current time.
        let t = e.ts.max(u.clock.saturating_add(1));
        u.run_until(t, &mut ctx);
        u.apply(t, e, kind, &mut ctx);
        u.pending = Some(t);
        if u.scheduled.is_none_or(|s| s > t) {
            let earlier = u.scheduled.replace(t);
            self.recent.push((t, at));
            if earlier.is_some() && self.queue.len() + self.recent.len() > 2 * self.index.len() + 64
            {
                self.rebuild_queue();
            }
        }
    }

    /// Every scheduled (instant, user), in order: the queue without its
    /// stale entries.
    fn scheduled(&self) -> Vec<(i64, &Arc<str>)> {
        let mut v: Vec<(i64, &Arc<str>)> = self
            .users()
            .filter_map(|(k, u)| u.scheduled.map(|t| (t, k)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Drops the stale entries.
    fn rebuild_queue(&mut self) {
        let fresh: Vec<Reverse<(i64, u32)>> = (self.slots.iter().enumerate())
            .filter_map(|(at, s)| Some(Reverse((s.as_ref()?.user.scheduled?, at as u32))))
            .collect();
        self.queue = BinaryHeap::from(fresh);
        self.recent.clear();
    }

    /// No event before `watermark` will come: fires every deadline before it.
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        self.run(watermark, out);
    }

    /// End of input (replay): no event will ever come, so every deadline
    /// fires: open sessions pause, break and end by the gap (`gap`, at
    /// `last_event + gap + 1`), exactly as an ever-advancing watermark would
    /// end them. (A distinct `end_of_input` reason would depend on which
    /// frontiers the operator happened to see before the input closed.)
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.run(i64::MAX, out);
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.queue.clear();
        self.recent.clear();
    }

    fn run(&mut self, watermark: i64, out: &mut Vec<Event>) {
        // The recent entries due (all of them, in order), merged with the
        // heap's: the earliest (instant, slot) first, as one heap would.
        let mut recent = std::mem::take(&mut self.recent);
        recent.sort_unstable();
        let due = recent.partition_point(|&(t, _)| t < watermark);
        let mut next = 0;
        loop {
            let from_heap = self.queue.peek().map(|&Reverse(e)| e);
            let (t, at) = match (recent[..due].get(next), from_heap) {
                (Some(&r), Some(h)) if h < r && h.0 < watermark => {
                    self.queue.pop();
                    h
                }
                (Some(&r), _) => {
                    next += 1;
                    r
                }
                (None, Some(h)) if h.0 < watermark => {
                    self.queue.pop();
                    h
                }
                (None, _) => break,
            };
            let Some(Slot { name, user: u }) = self.slots[at as usize].as_mut() else {
                continue; // stale: the user's state has gone
            };
            if u.scheduled != Some(t) {
                continue; // stale: rescheduled since
            }
            u.scheduled = None;
            let mut ctx = UserOutputs {
                user: name,
                rules: self.rules,
                out: &mut *out,
            };
            u.run_until(watermark, &mut ctx);
            match u.next_instant(self.rules) {
                Some(n) => {
                    u.scheduled = Some(n);
                    self.queue.push(Reverse((n, at)));
                }
                None if u.is_empty() => {
                    self.index.remove(&**name);
                    self.slots[at as usize] = None;
                    self.free.push(at);
                }
                None => {}
            }
        }
        // Entries not due yet go to the heap; the vector is kept for reuse.
        self.queue.extend(recent.drain(due..).map(Reverse));
        recent.clear();
        self.recent = recent;
    }
}

/// In the operator runtime: `records.keyed(Sessions::new(&config.sessions,
/// &config.flow), &ctx)`, checkpointed, with the same outputs as [`Sessions`].
impl Core for Sessions {
    type Item = Record;
    const NAME: &'static str = "Sessions";
    const ORDER: Order = Order::EventTime;

    /// What `observe` would ignore anyway: filtered before the exchange.
    fn wants(r: &Record) -> bool {
        r.event.user_id.is_some()
            && r.event.category() == schemas::Category::Writing
            && !matches!(
                r.event.data,
                Payload::WritingFlowStateEntered(_)
                    | Payload::WritingFlowStateExited(_)
                    | Payload::WritingSessionStateChanged(_)
            )
    }

    fn key(r: &Record) -> u64 {
        stable_hash(r.event.user_id.as_deref().unwrap_or(""))
    }

    fn observe(&mut self, r: &Record, out: &mut Vec<Event>) {
        Sessions::observe(self, &r.event, out);
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        Sessions::advance_to(self, watermark, out);
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        Sessions::flush(self, out);
    }

    fn state_size(&self) -> usize {
        Sessions::state_size(self)
    }

    /// Per user: event time, ties in arrival order.
    fn sort_epoch(records: &mut [Record]) {
        records.sort_by_key(|r| (r.event.ts, r.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{EpochBuffer, EventTime};
    use serde_json::json;
    use std::sync::Arc;

    const MIN: i64 = 60_000;

    fn ev(user: &str, ts: i64, ty: &str, data: serde_json::Value) -> Event {
        Event {
            id: format!("e-{user}-{ts}-{ty}").into(),
            ts,
            user_id: Some(user.into()),
            project_id: Some("p1".into()),
            document_id: Some("d1".into()),
            data: Payload::from_json_value(ty, data).unwrap().unwrap(),
        }
    }

    fn ks(user: &str, ts: i64, words: i64) -> Event {
        ev(
            user,
            ts,
            "writing.keystroke",
            json!({"keystrokes": 5, "words": words, "chars": 5}),
        )
    }

    fn pasted(user: &str, ts: i64, words: i64) -> Event {
        ev(
            user,
            ts,
            "writing.keystroke",
            json!({"keystrokes": 1, "words": words, "chars": 5, "source": "paste"}),
        )
    }

    fn words(user: &str, ts: i64, words: i64) -> Event {
        ev(user, ts, "writing.word_added", json!({ "words": words }))
    }

    fn control(user: &str, ts: i64, name: &str, id: Option<&str>) -> Event {
        let data = match id {
            Some(id) => json!({ "session_id": id }),
            None => json!({}),
        };
        ev(user, ts, &format!("writing.{name}"), data)
    }

    fn tracker() -> Sessions {
        Sessions::new(&SessionsConfig::default(), &FlowConfig::default())
    }

    /// Feeds `events` (in time order), then moves the watermark to `watermark`.
    fn run(t: &mut Sessions, events: &[Event], watermark: i64) -> Vec<Event> {
        let mut out = Vec::new();
        for e in events {
            t.observe(e, &mut out);
        }
        t.advance_to(watermark, &mut out);
        out
    }

    type Transition = (i64, SessionState, SessionState, String);

    fn transitions(out: &[Event]) -> Vec<Transition> {
        out.iter()
            .filter_map(|e| match &e.data {
                Payload::WritingSessionStateChanged(c) => {
                    Some((e.ts, c.from, c.to, c.reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn tr(ts: i64, from: SessionState, to: SessionState, reason: &str) -> Transition {
        (ts, from, to, reason.to_owned())
    }

    fn summaries(out: &[Event]) -> Vec<(i64, SessionEnded)> {
        out.iter()
            .filter_map(|e| match &e.data {
                Payload::WritingSessionEnded(s) => Some((e.ts, (**s).clone())),
                _ => None,
            })
            .collect()
    }

    fn types(out: &[Event]) -> Vec<(&'static str, i64)> {
        out.iter()
            .filter(|e| e.event_type() != "writing.session_state_changed")
            .map(|e| (e.event_type(), e.ts))
            .collect()
    }

    use SessionState::{
        ActiveWriting as Active, Break, Ended, FlowState as Flow, Idle, Paused, WarmingUp as Warm,
    };

    #[test]
    fn activity_opens_an_implicit_session_in_warm_up() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("u", 1_000, 2)], 0);
        assert_eq!(transitions(&out), [tr(1_000, Idle, Warm, "activity")]);
        assert_eq!(types(&out), [("writing.session_started", 1_000)]);
        assert_eq!(t.state_of("u"), Warm);
        assert_eq!(out[0].user_id.as_deref(), Some("u"));
        assert_eq!(out[0].project_id.as_deref(), Some("p1"));
        assert_eq!(out[0].document_id.as_deref(), Some("d1"));
    }

    #[test]
    fn a_gap_of_exactly_the_threshold_keeps_the_session() {
        let mut t = tracker();
        let gap = 30 * MIN;
        let out = run(&mut t, &[ks("u", 0, 1), ks("u", gap, 1)], 0);
        assert!(summaries(&out).is_empty());
        let out = run(&mut t, &[ks("u", 2 * gap + 1, 1)], 0);
        let s = summaries(&out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, 2 * gap + 1, "known at last + gap + 1 ms");
        assert_eq!(
            (s[0].1.start_ts, s[0].1.end_ts, s[0].1.events),
            (Some(0), Some(gap), Some(2))
        );
        assert_eq!(s[0].1.reason.as_deref(), Some("gap"));
        assert_eq!(t.open_sessions(), 1, "the last event opened a new one");
    }

    #[test]
    fn the_watermark_ends_a_session_one_ms_past_the_gap() {
        let mut t = tracker();
        let gap = 30 * MIN;
        let out = run(&mut t, &[ks("u", 0, 1)], gap);
        assert!(
            summaries(&out).is_empty(),
            "an event at gap could still come"
        );
        let out = run(&mut t, &[], gap + 1);
        let s = summaries(&out);
        assert_eq!(s[0].0, gap + 1);
        assert_eq!(s[0].1.end_ts, Some(0), "end_ts stays the last event");
        assert_eq!(
            transitions(&out).last(),
            Some(&tr(gap + 1, Break, Ended, "gap"))
        );
        assert_eq!(t.open_sessions(), 0);
        assert_eq!(t.state_size(), 0, "ended sessions leave no state");
    }

    #[test]
    fn pause_fires_exactly_at_pause_after_without_activity() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("u", 0, 1)], MIN);
        assert!(
            transitions(&out).len() == 1,
            "not before the frontier passes 60 s"
        );
        let out = run(&mut t, &[], MIN + 1);
        assert_eq!(transitions(&out), [tr(MIN, Warm, Paused, "idle_timeout")]);
        assert_eq!(types(&out), [("writing.session_paused", MIN)]);
        let Payload::WritingSessionPaused(p) = &out[1].data else {
            panic!("{:?}", out[1])
        };
        assert_eq!(p.reason.as_deref(), Some("idle_timeout"));
    }

    #[test]
    fn activity_at_exactly_pause_after_keeps_the_user_writing() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("u", 0, 1), ks("u", MIN, 1)], MIN + 1);
        assert_eq!(transitions(&out), [tr(0, Idle, Warm, "activity")]);
        assert_eq!(t.state_of("u"), Warm);
    }

    #[test]
    fn break_after_five_minutes_without_writing() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("u", 0, 1)], 5 * MIN);
        assert_eq!(t.state_of("u"), Paused);
        assert_eq!(transitions(&out).len(), 2);
        let out = run(&mut t, &[], 5 * MIN + 1);
        assert_eq!(
            transitions(&out),
            [tr(5 * MIN, Paused, Break, "break_timeout")]
        );
    }

    #[test]
    fn warm_up_ends_at_two_minutes() {
        let mut t = tracker();
        let evs: Vec<Event> = (0..=12).map(|i| ks("u", i * 10_000, 1)).collect();
        let out = run(&mut t, &evs, 2 * MIN);
        assert_eq!(t.state_of("u"), Warm, "the instant 2 min is not final yet");
        let out2 = run(&mut t, &[], 2 * MIN + 1);
        assert_eq!(transitions(&out).len(), 1);
        assert_eq!(transitions(&out2), [tr(2 * MIN, Warm, Active, "warmed_up")]);
    }

    #[test]
    fn writing_after_a_pause_resumes_and_the_summary_splits_the_time() {
        let mut t = tracker();
        let mut out = run(
            &mut t,
            &[ks("u", 0, 1), ks("u", 90_000, 1), ks("u", 200_000, 1)],
            0,
        );
        t.flush(&mut out);
        let tr_ = transitions(&out);
        assert_eq!(
            tr_[..4],
            [
                tr(0, Idle, Warm, "activity"),
                tr(MIN, Warm, Paused, "idle_timeout"),
                tr(90_000, Paused, Warm, "activity"),
                tr(2 * MIN, Warm, Active, "warmed_up"),
            ]
        );
        assert!(types(&out).contains(&("writing.session_resumed", 90_000)));
        let s = &summaries(&out)[0].1;
        // Active [0, 60 s) and [90 s, 150 s); paused [60 s, 90 s) and [150 s, 200 s).
        assert_eq!(s.active_ms, Some(MIN + MIN));
        assert_eq!(s.paused_ms, Some(30_000 + 50_000));
        assert_eq!(
            s.active_ms.unwrap() + s.paused_ms.unwrap(),
            s.end_ts.unwrap() - s.start_ts.unwrap()
        );
    }

    #[test]
    fn resuming_after_the_warm_up_goes_straight_to_active_writing() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("u", 0, 1), ks("u", 3 * MIN, 1)], 0);
        assert_eq!(
            transitions(&out)[1..],
            [
                tr(MIN, Warm, Paused, "idle_timeout"),
                tr(3 * MIN, Paused, Active, "activity")
            ]
        );
    }

    /// 200 words every 30 s: the rolling WPM is 200 or 400 throughout.
    fn fast_writing(from: i64, to: i64) -> Vec<Event> {
        (0..)
            .map(|i| from + i * 30_000)
            .take_while(|ts| *ts <= to)
            .map(|ts| words("u", ts, 200))
            .collect()
    }

    fn flow_events(out: &[Event]) -> Vec<(i64, &'static str, f64, i64)> {
        out.iter()
            .filter_map(|e| match &e.data {
                Payload::WritingFlowStateEntered(f) => {
                    Some((e.ts, "entered", f.wpm, f.sustained_ms))
                }
                Payload::WritingFlowStateExited(f) => Some((e.ts, "exited", f.wpm, f.duration_ms)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn flow_is_entered_exactly_when_the_wpm_has_been_sustained() {
        let mut t = tracker();
        let out = run(&mut t, &fast_writing(0, 2 * MIN), 2 * MIN);
        assert!(flow_events(&out).is_empty());
        let out = run(&mut t, &[], 2 * MIN + 1);
        assert_eq!(
            transitions(&out),
            [
                tr(2 * MIN, Warm, Active, "warmed_up"),
                tr(2 * MIN, Active, Flow, "wpm_above_threshold")
            ]
        );
        assert_eq!(flow_events(&out), [(2 * MIN, "entered", 400.0, 2 * MIN)]);
        assert_eq!(t.state_of("u"), Flow);
    }

    #[test]
    fn a_one_ms_dip_restarts_the_sustain() {
        let mut t = tracker();
        // W = 200 on [0, 60 000), 0 at 60 000, 200 again from 60 001.
        let mut evs = vec![words("u", 0, 200)];
        evs.extend(fast_writing(MIN + 1, 4 * MIN));
        let out = run(&mut t, &evs, 4 * MIN);
        assert_eq!(
            flow_events(&out),
            [(3 * MIN + 1, "entered", 400.0, 2 * MIN)]
        );
    }

    #[test]
    fn flow_is_not_entered_during_warm_up_but_as_it_ends() {
        let flow = FlowConfig {
            sustain: Duration::from_secs(10),
            ..FlowConfig::default()
        };
        let mut t = Sessions::new(&SessionsConfig::default(), &flow);
        let out = run(&mut t, &fast_writing(0, 150_000), 3 * MIN);
        assert_eq!(
            flow_events(&out),
            [(2 * MIN, "entered", 400.0, 2 * MIN)],
            "due at 10 s, deferred to the end of the warm-up"
        );
    }

    #[test]
    fn flow_exits_after_thirty_seconds_below_the_threshold() {
        let mut t = tracker();
        // Last fast event at 120 s: W falls below 200 at 180 s; slow typing
        // (1 word every 10 s) keeps the user from pausing.
        let mut evs = fast_writing(0, 2 * MIN);
        evs.extend((13..=30).map(|i| ks("u", i * 10_000, 1)));
        let out = run(&mut t, &evs, 4 * MIN);
        let f = flow_events(&out);
        assert_eq!(f[0].0, 2 * MIN);
        // W at 210 s: the six 1-word events in (150 s, 210 s].
        assert_eq!(f[1], (210_000, "exited", 6.0, 90_000));
        assert!(transitions(&out).contains(&tr(210_000, Flow, Active, "wpm_below_threshold")));
    }

    #[test]
    fn writing_fast_again_at_exactly_the_exit_instant_keeps_flow() {
        let mut t = tracker();
        let mut evs = fast_writing(0, 2 * MIN);
        evs.extend((13..=20).map(|i| ks("u", i * 10_000, 1)));
        evs.push(words("u", 210_000, 200));
        let out = run(&mut t, &evs, 210_001);
        assert_eq!(flow_events(&out).len(), 1, "{:?}", flow_events(&out));
        assert_eq!(t.state_of("u"), Flow);
    }

    #[test]
    fn pausing_exits_flow() {
        let mut t = tracker();
        let out = run(&mut t, &fast_writing(0, 2 * MIN), 4 * MIN);
        assert_eq!(
            flow_events(&out)[1],
            (3 * MIN, "exited", 0.0, MIN),
            "paused 60 s after the last event"
        );
        assert!(transitions(&out).contains(&tr(3 * MIN, Flow, Paused, "idle_timeout")));
        let mut t = tracker();
        let mut evs = fast_writing(0, 2 * MIN);
        evs.push(control("u", 130_000, "session_paused", None));
        let out = run(&mut t, &evs, 130_001);
        assert_eq!(flow_events(&out)[1].0, 130_000);
        assert!(transitions(&out).contains(&tr(130_000, Flow, Paused, "session_paused")));
    }

    #[test]
    fn the_summary_accounts_flow_time() {
        let mut t = tracker();
        let mut out = run(&mut t, &fast_writing(0, 3 * MIN), 0);
        t.flush(&mut out);
        let s = &summaries(&out)[0].1;
        // Flow from 120 s; the summary stops at the last event (180 s).
        assert_eq!(
            (s.flow_ms, s.longest_flow_ms, s.active_ms, s.paused_ms),
            (Some(MIN), Some(MIN), Some(3 * MIN), Some(0))
        );
        assert_eq!(s.words, Some(7 * 200));
        assert_eq!(s.wpm, Some(7.0 * 200.0 / 3.0));
    }

    #[test]
    fn pasted_words_are_counted_apart_and_are_not_writing_speed() {
        let mut t = tracker();
        let evs: Vec<Event> = (0..10).map(|i| pasted("u", i * 10_000, 500)).collect();
        let mut out = run(&mut t, &evs, 0);
        out.extend(run(&mut t, &[ks("u", 100_000, 3)], 0));
        t.flush(&mut out);
        assert!(flow_events(&out).is_empty());
        let s = &summaries(&out)[0].1;
        assert_eq!((s.words, s.pasted_words), (Some(3), Some(5_000)));
        let c: Vec<f64> = out
            .iter()
            .filter_map(|e| match &e.data {
                Payload::WritingSessionStateChanged(c) => Some(c.wpm),
                _ => None,
            })
            .collect();
        assert!(c.iter().all(|w| *w <= 3.0), "{c:?}");
    }

    #[test]
    fn explicit_start_pause_resume_and_end() {
        let mut t = tracker();
        let evs = [
            control("u", 0, "session_started", Some("s1")),
            ks("u", 5_000, 1),
            control("u", 10_000, "session_paused", None),
            control("u", 20_000, "session_resumed", None),
            control("u", 30_000, "session_ended", None),
        ];
        let out = run(&mut t, &evs, 40_000);
        assert_eq!(
            transitions(&out),
            [
                tr(0, Idle, Warm, "session_started"),
                tr(10_000, Warm, Paused, "session_paused"),
                tr(20_000, Paused, Warm, "session_resumed"),
                tr(30_000, Warm, Ended, "ended"),
            ]
        );
        // Client session_started and session_paused are not echoed.
        assert_eq!(
            types(&out),
            [
                ("writing.session_resumed", 20_000),
                ("writing.session_ended", 30_000)
            ]
        );
        let s = &summaries(&out)[0].1;
        assert_eq!(s.session_id.as_deref(), Some("s1"));
        assert_eq!(
            (s.events, s.words, s.reason.as_deref()),
            (Some(5), Some(1), Some("ended"))
        );
        assert_eq!((s.active_ms, s.paused_ms), (Some(20_000), Some(10_000)));
        assert_eq!(t.state_size(), 1, "the window still holds the word");
        t.advance_to(5_000 + MIN + 1, &mut Vec::new());
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn a_client_session_started_ends_the_open_session() {
        let mut t = tracker();
        let evs = [
            ks("u", 0, 1),
            control("u", 10_000, "session_started", Some("s2")),
            ks("u", 20_000, 1),
        ];
        let out = run(&mut t, &evs, 0);
        let s = summaries(&out);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, 10_000);
        assert_eq!(
            (s[0].1.reason.as_deref(), s[0].1.end_ts, s[0].1.events),
            (Some("restarted"), Some(0), Some(1))
        );
        assert_eq!(
            transitions(&out)[1..],
            [
                tr(10_000, Warm, Ended, "restarted"),
                tr(10_000, Idle, Warm, "session_started")
            ]
        );
    }

    #[test]
    fn control_events_without_a_session_are_ignored() {
        let mut t = tracker();
        let out = run(
            &mut t,
            &[
                control("u", 0, "session_ended", None),
                control("u", 1, "session_paused", None),
            ],
            MIN,
        );
        assert!(out.is_empty());
        assert_eq!(t.state_size(), 0);
        // session_resumed means writing: it opens a session.
        let out = run(&mut t, &[control("u", 2, "session_resumed", None)], 0);
        assert_eq!(transitions(&out), [tr(2, Idle, Warm, "session_resumed")]);
    }

    #[test]
    fn derived_events_sent_by_clients_are_ignored() {
        let mut t = tracker();
        let fake = ev(
            "u",
            0,
            "writing.flow_state_entered",
            json!({"wpm": 900.0, "sustained_ms": 1}),
        );
        let out = run(&mut t, &[fake], MIN);
        assert!(out.is_empty());
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn non_writing_events_do_not_extend_sessions() {
        let mut t = tracker();
        let cursor = ev(
            "u",
            20 * MIN,
            "collaboration.cursor_moved",
            json!({"paragraph": 1, "offset": 1}),
        );
        let out = run(&mut t, &[ks("u", 0, 1), cursor], 30 * MIN + 1);
        assert_eq!(summaries(&out)[0].1.events, Some(1));
    }

    #[test]
    fn flush_fires_every_deadline_and_drops_all_state() {
        let mut t = tracker();
        let mut out = run(&mut t, &[ks("u", 0, 1), ks("v", 10, 1)], 0);
        t.flush(&mut out);
        let u: Vec<_> = out
            .iter()
            .filter(|e| e.user_id.as_deref() == Some("u"))
            .cloned()
            .collect();
        assert_eq!(
            transitions(&u)[1..],
            [
                tr(MIN, Warm, Paused, "idle_timeout"),
                tr(5 * MIN, Paused, Break, "break_timeout"),
                tr(30 * MIN + 1, Break, Ended, "gap"),
            ]
        );
        assert_eq!(summaries(&out).len(), 2);
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn derived_ids_are_unique_and_reproducible() {
        let evs = fast_writing(0, 10 * MIN);
        let mut a = tracker();
        let mut out = run(&mut a, &evs, 0);
        a.flush(&mut out);
        let mut ids: Vec<&str> = out.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), out.len());
        let mut b = tracker();
        let mut again = run(&mut b, &evs, 0);
        b.flush(&mut again);
        assert_eq!(out, again);
    }

    // ---- as the wrapper runs it: reordering within the bound ------------------------------

    /// Feeds `arrivals` as the wrapper does: parked by epoch, released when the
    /// watermark (newest time − `disorder`) passes, then flushed.
    fn drive(
        arrivals: &[Event],
        disorder: i64,
        epoch: u64,
        sessions: &SessionsConfig,
        flow: &FlowConfig,
    ) -> Vec<Event> {
        let time = EventTime {
            epoch_ms: epoch,
            flush_at_end: true,
        };
        let mut t = Sessions::new(sessions, flow);
        let mut parked = EpochBuffer::default();
        let mut out = Vec::new();
        let mut newest = i64::MIN;
        for (seq, e) in arrivals.iter().enumerate() {
            newest = newest.max(e.ts);
            let mut batch = vec![Record {
                seq: seq as u64,
                event: Arc::new(e.clone()),
            }];
            parked.push(&time, &mut batch);
            let frontier = time.epoch_of(newest - disorder);
            while let Some((_, mut records)) = parked.pop_ready(Some(frontier)) {
                records.sort_by_key(|r| (r.event.ts, r.seq));
                for r in &records {
                    t.observe(&r.event, &mut out);
                }
            }
            t.advance_to(frontier as i64, &mut out);
        }
        while let Some((_, mut records)) = parked.pop_ready(None) {
            records.sort_by_key(|r| (r.event.ts, r.seq));
            for r in &records {
                t.observe(&r.event, &mut out);
            }
        }
        t.flush(&mut out);
        assert_eq!(t.state_size(), 0);
        out.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        out
    }

    /// SplitMix64.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo + 1) as u64) as i64
        }
    }

    /// A scaled-down configuration (ms instead of minutes), so a naive
    /// reference can step through every millisecond.
    fn small() -> (SessionsConfig, FlowConfig) {
        (
            SessionsConfig {
                gap: Duration::from_millis(1_000),
                pause_after: Duration::from_millis(60),
                break_after: Duration::from_millis(300),
                warmup: Duration::from_millis(120),
            },
            FlowConfig {
                // 10 words within the last 60 ms.
                min_wpm: 10_000.0,
                sustain: Duration::from_millis(120),
                exit_after: Duration::from_millis(30),
                window: Duration::from_millis(60),
            },
        )
    }

    /// Random writing streams around every threshold, in time order: bursts
    /// of fast or slow typing (switching speed now and then) separated by
    /// gaps just around the pause, warm-up, break and session gap, with rare
    /// control events. With `distinct`, one user never has two events at the
    /// same ms.
    fn random_stream(seed: u64, users: usize, n: usize, distinct: bool) -> Vec<Event> {
        let mut rng = Rng(seed);
        let mut all = Vec::new();
        for u in 0..users {
            let user = format!("u{u}");
            let mut ts = 1_000_000 + rng.range(0, 500);
            let (mut left, mut slow) = (0, false);
            for i in 0..n {
                ts += if left == 0 {
                    left = rng.range(5, 150);
                    slow = rng.range(0, 2) == 0;
                    match rng.range(0, 99) {
                        0..=29 => rng.range(5, 40),
                        30..=49 => rng.range(55, 65),
                        50..=64 => rng.range(110, 130),
                        65..=84 => rng.range(290, 310),
                        _ => rng.range(990, 1_010),
                    }
                } else {
                    left -= 1;
                    if rng.range(0, 29) == 0 {
                        slow = !slow;
                    }
                    if slow {
                        rng.range(5, 15)
                    } else {
                        rng.range(i64::from(distinct), 6)
                    }
                };
                let mut e = match rng.range(0, 999) {
                    0..=779 => ks(&user, ts, rng.range(0, 4)),
                    780..=849 => pasted(&user, ts, rng.range(1, 9)),
                    850..=899 => words(&user, ts, rng.range(1, 3)),
                    900..=919 => ev(
                        &user,
                        ts,
                        "writing.paragraph_completed",
                        json!({"paragraph": 1, "words": 9}),
                    ),
                    920..=929 => control(&user, ts, "session_started", Some("client")),
                    930..=934 => control(&user, ts, "session_started", None),
                    935..=949 => control(&user, ts, "session_paused", None),
                    950..=964 => control(&user, ts, "session_resumed", None),
                    965..=974 => control(&user, ts, "session_ended", None),
                    975..=979 => ev(
                        &user,
                        ts,
                        "writing.flow_state_entered",
                        json!({"wpm": 1.0, "sustained_ms": 1}),
                    ),
                    _ => ev(
                        &user,
                        ts,
                        "collaboration.cursor_moved",
                        json!({"paragraph": 1, "offset": 1}),
                    ),
                };
                e.id = format!("e-{user}-{i}").into();
                all.push(e);
            }
        }
        // Interleave users by time (stable: each user's order is kept).
        all.sort_by_key(|e| e.ts);
        all
    }

    /// Arrival order: each event delayed by up to `disorder` ms.
    fn shuffle_within(events: &[Event], disorder: i64, seed: u64) -> Vec<Event> {
        let mut rng = Rng(seed ^ 0xABCD);
        let mut keyed: Vec<(i64, usize, Event)> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.ts + rng.range(0, disorder), i, e.clone()))
            .collect();
        keyed.sort_by_key(|(k, i, _)| (*k, *i));
        keyed.into_iter().map(|(_, _, e)| e).collect()
    }

    #[test]
    fn out_of_order_arrival_within_the_bound_gives_the_same_outputs() {
        let (s, f) = small();
        for seed in 0..6 {
            let events = random_stream(seed, 3, 400, true);
            let in_order = drive(&events, 50, 10, &s, &f);
            assert!(in_order.len() > 100);
            for shuffle in 0..3 {
                let arrivals = shuffle_within(&events, 50, seed * 10 + shuffle);
                assert_ne!(arrivals, events);
                assert_eq!(drive(&arrivals, 50, 10, &s, &f), in_order, "seed {seed}");
            }
        }
    }

    // ---- the reference: a naive simulation, one millisecond at a time -------------------

    mod reference {
        use schemas::Event;
        use schemas::payload::{Payload, SessionState, TextSource};
        use serde_json::{Value, json};
        use std::collections::BTreeMap;

        pub struct Cfg {
            pub gap: i64,
            pub pause: i64,
            pub brk: i64,
            pub warmup: i64,
            pub min_wpm: f64,
            pub sustain: i64,
            pub exit: i64,
            pub window: i64,
        }

        /// (ts, user, type, data) of every output.
        pub type Out = (i64, String, String, Value);

        struct S {
            id: String,
            start: i64,
            last: i64,
            last_activity: i64,
            state: SessionState,
            events: i64,
            words: i64,
            pasted: i64,
            /// State of every ms from `start` on (after that ms's instant).
            history: Vec<SessionState>,
            above: Option<i64>,
            below: Option<i64>,
            flow_since: i64,
        }

        struct U<'a> {
            c: &'a Cfg,
            user: String,
            typed: Vec<(i64, i64)>,
            s: Option<S>,
            out: Vec<Out>,
        }

        fn writing(s: SessionState) -> bool {
            matches!(
                s,
                SessionState::WarmingUp | SessionState::ActiveWriting | SessionState::FlowState
            )
        }

        impl U<'_> {
            fn wpm(&self, t: i64) -> f64 {
                let n: i64 = self
                    .typed
                    .iter()
                    .filter(|(ts, _)| *ts > t - self.c.window && *ts <= t)
                    .map(|(_, w)| w)
                    .sum();
                n as f64 * 60_000.0 / self.c.window as f64
            }

            fn push(&mut self, t: i64, ty: &str, data: Value) {
                self.out
                    .push((t, self.user.clone(), format!("writing.{ty}"), data));
            }

            fn go(&mut self, t: i64, to: SessionState, reason: &str) {
                let wpm = self.wpm(t);
                let s = self.s.as_mut().unwrap();
                let from = std::mem::replace(&mut s.state, to);
                let id = s.id.clone();
                if to == SessionState::FlowState {
                    s.flow_since = t;
                }
                self.push(
                    t,
                    "session_state_changed",
                    json!({"session_id": id, "from": from, "to": to, "reason": reason, "wpm": wpm}),
                );
            }

            fn exited(&mut self, t: i64) {
                let s = self.s.as_ref().unwrap();
                let data = json!({"session_id": s.id, "wpm": self.wpm(t), "duration_ms": t - s.flow_since});
                self.push(t, "flow_state_exited", data);
            }

            fn pause(&mut self, t: i64, reason: &str) {
                let in_flow = self.s.as_ref().unwrap().state == SessionState::FlowState;
                self.go(t, SessionState::Paused, reason);
                if in_flow {
                    self.exited(t);
                }
                let s = self.s.as_mut().unwrap();
                (s.above, s.below) = (None, None);
                if reason == "idle_timeout" {
                    let id = s.id.clone();
                    self.push(
                        t,
                        "session_paused",
                        json!({"session_id": id, "reason": reason}),
                    );
                }
            }

            fn end(&mut self, t: i64, reason: &str) {
                let in_flow = self.s.as_ref().unwrap().state == SessionState::FlowState;
                self.go(t, SessionState::Ended, reason);
                if in_flow {
                    self.exited(t);
                }
                let s = self.s.take().unwrap();
                // Durations: every ms of [start, last) by its state.
                let mut active = 0;
                let mut flow = 0;
                let mut paused = 0;
                let mut longest = 0;
                let mut run = 0;
                for st in &s.history[..(s.last - s.start) as usize] {
                    match st {
                        SessionState::FlowState => {
                            active += 1;
                            flow += 1;
                            run += 1;
                            longest = longest.max(run);
                            continue;
                        }
                        SessionState::WarmingUp | SessionState::ActiveWriting => active += 1,
                        SessionState::Paused | SessionState::Break => paused += 1,
                        _ => unreachable!(),
                    }
                    run = 0;
                }
                let minutes = ((s.last - s.start) as f64 / 60_000.0).max(1.0);
                let data = json!({
                    "session_id": s.id, "reason": reason, "start_ts": s.start, "end_ts": s.last,
                    "events": s.events, "words": s.words, "wpm": s.words as f64 / minutes,
                    "active_ms": active, "flow_ms": flow, "paused_ms": paused,
                    "longest_flow_ms": longest, "pasted_words": s.pasted,
                });
                self.push(t, "session_ended", data);
            }

            fn open(&mut self, t: i64, id: Option<String>, reason: &str, implicit: bool) {
                let id = id.unwrap_or_else(|| {
                    format!("s-{:016x}", schemas::stable_hash(&(self.user.as_str(), t)))
                });
                self.s = Some(S {
                    id: id.clone(),
                    start: t,
                    last: t,
                    last_activity: t,
                    state: SessionState::Idle,
                    events: 0,
                    words: 0,
                    pasted: 0,
                    history: Vec::new(),
                    above: None,
                    below: None,
                    flow_since: 0,
                });
                self.go(t, SessionState::WarmingUp, reason);
                if implicit {
                    self.push(
                        t,
                        "session_started",
                        json!({"session_id": id, "reason": reason}),
                    );
                }
            }

            fn activity(&mut self, t: i64, reason: &str) {
                let s = self.s.as_ref().unwrap();
                if matches!(s.state, SessionState::Paused | SessionState::Break) {
                    let to = if t < s.start + self.c.warmup {
                        SessionState::WarmingUp
                    } else {
                        SessionState::ActiveWriting
                    };
                    let id = s.id.clone();
                    self.go(t, to, reason);
                    self.push(
                        t,
                        "session_resumed",
                        json!({"session_id": id, "reason": reason}),
                    );
                }
                let s = self.s.as_mut().unwrap();
                s.last_activity = t;
                s.events += 1;
                s.last = t;
            }

            fn apply(&mut self, e: &Event) {
                let t = e.ts;
                match &e.data {
                    Payload::WritingFlowStateEntered(_)
                    | Payload::WritingFlowStateExited(_)
                    | Payload::WritingSessionStateChanged(_) => {}
                    _ if !e.event_type().starts_with("writing.") => {}
                    Payload::WritingSessionStarted(st) => {
                        if self.s.is_some() {
                            self.end(t, "restarted");
                        }
                        self.open(t, st.session_id.clone(), "session_started", false);
                        self.activity(t, "session_started");
                    }
                    Payload::WritingSessionEnded(_) => {
                        if let Some(s) = self.s.as_mut() {
                            s.events += 1;
                            s.last = t;
                            self.end(t, "ended");
                        }
                    }
                    Payload::WritingSessionPaused(_) => {
                        if let Some(s) = self.s.as_mut() {
                            s.events += 1;
                            s.last = t;
                            if writing(s.state) {
                                self.pause(t, "session_paused");
                            }
                        }
                    }
                    Payload::WritingSessionResumed(_) => {
                        if self.s.is_none() {
                            self.open(t, None, "session_resumed", true);
                        }
                        self.activity(t, "session_resumed");
                    }
                    other => {
                        let (typed, pasted) = match other {
                            Payload::WritingKeystroke(k) if k.source == TextSource::Typed => {
                                (k.words, 0)
                            }
                            Payload::WritingKeystroke(k) => (0, k.words),
                            Payload::WritingWordAdded(w) => (w.words, 0),
                            _ => (0, 0),
                        };
                        self.typed.push((t, typed));
                        if self.s.is_none() {
                            self.open(t, None, "activity", true);
                        }
                        self.activity(t, "activity");
                        let s = self.s.as_mut().unwrap();
                        s.words += typed;
                        s.pasted += pasted;
                    }
                }
            }

            /// The instant `t`, after its events.
            fn instant(&mut self, t: i64) {
                let c = self.c;
                let wpm = self.wpm(t);
                let Some(s) = self.s.as_mut() else { return };
                if writing(s.state) {
                    if wpm >= c.min_wpm {
                        s.above.get_or_insert(t);
                        s.below = None;
                    } else {
                        s.above = None;
                        if s.state == SessionState::FlowState {
                            s.below.get_or_insert(t);
                        }
                    }
                }
                if s.state == SessionState::WarmingUp && t >= s.start + c.warmup {
                    self.go(t, SessionState::ActiveWriting, "warmed_up");
                }
                let s = self.s.as_mut().unwrap();
                if s.state == SessionState::FlowState && s.below.is_some_and(|b| t >= b + c.exit) {
                    s.below = None;
                    self.go(t, SessionState::ActiveWriting, "wpm_below_threshold");
                    self.exited(t);
                }
                let s = self.s.as_ref().unwrap();
                if writing(s.state) && t >= s.last_activity + c.pause {
                    self.pause(t, "idle_timeout");
                }
                let s = self.s.as_ref().unwrap();
                if s.state == SessionState::Paused && t >= s.last_activity + c.brk {
                    self.go(t, SessionState::Break, "break_timeout");
                }
                let s = self.s.as_ref().unwrap();
                if t >= s.last + c.gap {
                    self.end(t + 1, "gap");
                    return;
                }
                if s.state == SessionState::ActiveWriting
                    && let Some(a) = s.above.filter(|a| t >= a + c.sustain)
                {
                    self.go(t, SessionState::FlowState, "wpm_above_threshold");
                    let id = self.s.as_ref().unwrap().id.clone();
                    let wpm = self.wpm(t);
                    self.push(
                        t,
                        "flow_state_entered",
                        json!({"session_id": id, "wpm": wpm, "sustained_ms": t - a}),
                    );
                }
            }
        }

        /// Every output for `events` (time order, ties in list order).
        pub fn run(c: &Cfg, events: &[Event]) -> Vec<Out> {
            let mut by_user: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
            for e in events {
                by_user
                    .entry(e.user_id.as_deref().map(String::from).unwrap())
                    .or_default()
                    .push(e);
            }
            let mut out = Vec::new();
            for (user, evs) in by_user {
                let mut u = U {
                    c,
                    user,
                    typed: Vec::new(),
                    s: None,
                    out: Vec::new(),
                };
                let mut i = 0;
                let mut t = evs[0].ts;
                while i < evs.len() || u.s.is_some() {
                    while i < evs.len() && evs[i].ts == t {
                        u.apply(evs[i]);
                        i += 1;
                    }
                    u.instant(t);
                    if let Some(s) = u.s.as_mut() {
                        let st = s.state;
                        s.history.push(st);
                        assert_eq!(s.history.len() as i64, t - s.start + 1);
                    }
                    t += 1;
                }
                out.extend(u.out);
            }
            out
        }
    }

    fn normalized(out: &[Event]) -> Vec<reference::Out> {
        let mut v: Vec<reference::Out> = out
            .iter()
            .map(|e| {
                (
                    e.ts,
                    e.user_id.as_deref().map(String::from).unwrap(),
                    e.event_type().to_owned(),
                    serde_json::to_value(&e.data).unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        v
    }

    #[test]
    fn matches_a_naive_millisecond_by_millisecond_reference_on_random_streams() {
        let (s, f) = small();
        let c = reference::Cfg {
            gap: 1_000,
            pause: 60,
            brk: 300,
            warmup: 120,
            min_wpm: f.min_wpm,
            sustain: 120,
            exit: 30,
            window: 60,
        };
        let mut seen: HashMap<String, usize> = HashMap::default();
        for seed in 0..10 {
            // Ties at one ms included: they are taken in arrival order by both.
            let events = random_stream(100 + seed, 3, 500, false);
            let got = drive(&events, 0, 1, &s, &f);
            let want = reference::run(&c, &events);
            let (mut got, mut want) = (normalized(&got), want);
            // Same order for equal (ts, user): by content.
            let key = |o: &reference::Out| (o.0, o.1.clone(), o.2.clone(), o.3.to_string());
            got.sort_by_key(key);
            want.sort_by_key(key);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "seed {seed}, output {i}");
            }
            assert_eq!(got.len(), want.len(), "seed {seed}");
            for o in &got {
                let k = match o.3.get("to").and_then(|v| v.as_str()) {
                    Some(to) => format!("to {to}"),
                    None => o.2.clone(),
                };
                *seen.entry(k).or_default() += 1;
            }
        }
        // The streams do reach every state and event.
        for k in [
            "to WARMING_UP",
            "to ACTIVE_WRITING",
            "to FLOW_STATE",
            "to PAUSED",
            "to BREAK",
            "to ENDED",
            "writing.flow_state_entered",
            "writing.flow_state_exited",
            "writing.session_started",
            "writing.session_paused",
            "writing.session_resumed",
            "writing.session_ended",
        ] {
            assert!(seen.get(k).is_some_and(|n| *n >= 5), "{k}: {seen:?}");
        }
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let (s, f) = small();
        let mut held = std::collections::BTreeSet::new();
        for seed in 0..8 {
            let events = random_stream(300 + seed, 3, 400, true);
            let half = events.len() / 2;
            let feed = |t: &mut Sessions, e: &Event| {
                let mut out = Vec::new();
                t.observe(e, &mut out);
                t.advance_to(e.ts - 50, &mut out);
                out
            };
            let mut before = Sessions::new(&s, &f);
            for e in &events[..half] {
                feed(&mut before, e);
            }
            let bytes = bincode::serialize(&before).expect("serializes");
            let mut after: Sessions = bincode::deserialize(&bytes).expect("deserializes");
            assert!(before.state_size() > 0, "seed {seed}: empty snapshot");
            for u in ["u0", "u1", "u2"] {
                held.insert(format!("{:?}", before.state_of(u)));
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for e in &events[half..] {
                a.extend(feed(&mut before, e));
                b.extend(feed(&mut after, e));
            }
            before.flush(&mut a);
            after.flush(&mut b);
            assert!(a.len() > 50, "seed {seed}: too few outputs");
            assert!(a == b, "seed {seed}: outputs differ after a restore");
        }
        assert!(held.len() >= 3, "snapshots held states {held:?}");
    }

    /// The timer heap skips what was rescheduled, stays within twice the
    /// users, and a checkpoint stores it as the sorted set it was before
    /// (one (instant, user) per scheduled user), so checkpoints written by
    /// either shape restore.
    #[test]
    fn the_timer_queue_is_stored_as_the_sorted_set_it_was() {
        /// What a checkpoint held before the slots: the users as a map by
        /// name (here in the slots' order, as a map iterates in any), the
        /// queue as a sorted set.
        #[derive(Serialize)]
        struct AsBefore<'a> {
            rules: &'a Rules,
            flow: &'a FlowRules,
            #[serde(serialize_with = "as_map")]
            users: Vec<(&'a Arc<str>, &'a User)>,
            queue: std::collections::BTreeSet<(i64, Arc<str>)>,
        }
        fn as_map<S: serde::Serializer>(v: &[(&Arc<str>, &User)], s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(v.iter().copied())
        }
        let (s, f) = small();
        let events = random_stream(11, 40, 3000, true);
        let mut t = Sessions::new(&s, &f);
        let mut out = Vec::new();
        let mut most = 0;
        let mut freed = 0;
        for (i, e) in events.iter().enumerate() {
            t.observe(e, &mut out);
            if i % 7 == 0 {
                t.advance_to(e.ts - 50, &mut out);
            }
            let queued = t.queue.len() + t.recent.len();
            most = most.max(queued);
            freed = freed.max(t.free.len());
            assert!(queued <= 2 * t.index.len() + 64 + 1);
            assert_eq!(t.index.len(), t.slots.iter().flatten().count());
        }
        assert!(most > 40, "the queue held {most} entries at most");
        assert!(
            freed > 0,
            "no user's state ever went, so no slot was reused"
        );
        let before = AsBefore {
            rules: &t.rules,
            flow: &t.flow,
            users: t.users().collect(),
            queue: t
                .users()
                .filter_map(|(k, u)| u.scheduled.map(|at| (at, Arc::clone(k))))
                .collect(),
        };
        assert!(!before.queue.is_empty());
        let bytes = bincode::serialize(&t).expect("serializes");
        assert!(bytes == bincode::serialize(&before).expect("serializes"));
        let back: Sessions = bincode::deserialize(&bytes).expect("deserializes");
        assert_eq!(back.queue.len(), before.queue.len());
        assert_eq!(back.state_size(), t.state_size());
        // The restored core goes on exactly as the original.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut back = back;
        let end = events.last().map_or(0, |e| e.ts);
        t.advance_to(end + 600_000, &mut a);
        back.advance_to(end + 600_000, &mut b);
        assert!(!a.is_empty());
        assert!(a == b, "the restored core fired otherwise");
    }

    // ---- in the operator runtime --------------------------------------------------------

    #[test]
    fn the_runtime_gives_identical_outputs_for_any_workers_batches_and_arrival_order() {
        let (s, f) = small();
        let mut config = crate::config::Config::default();
        config.dataflow.allowed_disorder = Duration::from_millis(50);
        config.dataflow.epoch = Duration::from_millis(10);
        let events = random_stream(7, 6, 300, true);
        let expected = drive(&events, 50, 10, &s, &f);
        assert!(expected.len() > 200);
        let runs = [(1, 1, 0), (1, 64, 1), (2, 7, 2), (2, 1000, 3)];
        for (workers, batch, shuffle) in runs {
            let arrivals = if shuffle == 0 {
                events.clone()
            } else {
                shuffle_within(&events, 50, shuffle)
            };
            let (s2, f2) = (s.clone(), f.clone());
            let (out, late) =
                crate::dataflow::run_for_test(arrivals, workers, batch, &config, move |st, cfg| {
                    let ctx = crate::runtime::OperatorCtx::plain(EventTime {
                        epoch_ms: cfg.dataflow.epoch.as_millis() as u64,
                        flush_at_end: cfg.dataflow.flush_at_end,
                    });
                    crate::runtime::Keyed::keyed(st, Sessions::new(&s2, &f2), &ctx)
                });
            assert!(late.is_empty());
            assert_eq!(out, expected, "{workers} worker(s), batch {batch}");
        }
    }
}
