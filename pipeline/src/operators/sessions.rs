//! Writing sessions per user, in event time: the session state machine, with
//! flow state ([`crate::operators::flow`]) as one of its states.
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
//!   `session_ended` (`ended`), a client `session_started` (`restarted`), and
//!   at end of input in replay (`end_of_input`, at the same instant as a gap
//!   end would be: every deadline fires once no event can come).
//! - FLOW_STATE ⟷ ACTIVE_WRITING as [`crate::operators::flow`] says;
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
//! `session_paused`, `break_timeout`, `gap`, `ended`, `restarted`,
//! `end_of_input`.
//!
//! **Determinism.** The wrapper processes each epoch only once the frontier
//! has passed it, in (event time, arrival) order, and fires deadlines from
//! the frontier, so outputs are identical whatever the arrival order within
//! the disorder bound and whatever the number of workers. Derived ids hash
//! the user, the session (id and start) and the instant or the transition's
//! rank in its session.
//!
//! **Memory.** A user's state is dropped once the session has ended and the
//! rolling window is empty ([`SessionTracker::state_size`]).

use crate::operators::flow::{FlowChange, FlowConfig, FlowRules, FlowTracker};
use crate::operators::{
    EpochBuffer, EventTime, Record, derived_id, give_at_own_epochs, stable_hash, written_words,
};
use schemas::Event;
use schemas::payload::{
    FlowStateEntered, FlowStateExited, Payload, SessionEnded, SessionPaused, SessionResumed,
    SessionStarted, SessionState, SessionStateChanged, TextSource,
};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

/// `[sessions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A longer gap between a user's writing events ends the session; exactly
    /// this keeps it (default 30 min).
    #[serde(deserialize_with = "crate::config::duration")]
    pub gap: Duration,
    /// PAUSED after this long without activity; exactly this keeps the user
    /// writing (default 60 s).
    #[serde(deserialize_with = "crate::config::duration")]
    pub pause_after: Duration,
    /// BREAK after this long without activity (default 5 min).
    #[serde(deserialize_with = "crate::config::duration")]
    pub break_after: Duration,
    /// WARMING_UP for this long from the start of a session (default 2 min).
    #[serde(deserialize_with = "crate::config::duration")]
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
#[derive(Debug, Clone, Copy)]
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
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    active_ms: i64,
    flow_ms: i64,
    paused_ms: i64,
    longest_flow_ms: i64,
}

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
    project_id: Option<String>,
    document_id: Option<String>,
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
struct Ctx<'a> {
    user: &'a str,
    rules: Rules,
    /// End of input: a gap end is reported as `end_of_input`.
    flushing: bool,
    out: &'a mut Vec<Event>,
}

impl Ctx<'_> {
    fn emit(&mut self, s: &Session, ts: i64, operator: &str, extra: &str, data: Payload) {
        let start = s.start_ts.to_string();
        self.out.push(Event {
            id: derived_id(operator, &[self.user, &s.id, &start, extra]),
            ts,
            user_id: Some(self.user.to_owned()),
            project_id: s.project_id.clone(),
            document_id: s.document_id.clone(),
            data,
        });
    }

    fn transition(
        &mut self,
        s: &mut Session,
        to: SessionState,
        at: i64,
        reason: &str,
        wpm: f64,
    ) {
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
                    SessionState::Paused => {
                        consider(Some(s.last_activity.saturating_add(r.brk)))
                    }
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
    fn run_until(&mut self, x: i64, ctx: &mut Ctx<'_>) {
        while let Some(t) = self.next_instant(ctx.rules) {
            if t >= x {
                break;
            }
            self.instant(t, ctx);
        }
    }

    /// Evaluates instant `t`, after every event at `t`.
    fn instant(&mut self, t: i64, ctx: &mut Ctx<'_>) {
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
            let reason = if ctx.flushing { "end_of_input" } else { "gap" };
            self.end(t.saturating_add(1), reason, ctx);
            return;
        }
        if s.state == SessionState::ActiveWriting && self.flow.entry_due(t) {
            let change = self.flow.enter(t);
            ctx.transition(
                s,
                SessionState::FlowState,
                t,
                "wpm_above_threshold",
                wpm,
            );
            ctx.flow_event(s, t, change);
        }
    }

    /// Ends the open session at `at`: the summary.
    fn end(&mut self, at: i64, reason: &str, ctx: &mut Ctx<'_>) {
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
            Payload::WritingSessionEnded(SessionEnded {
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
            }),
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
        ctx: &mut Ctx<'_>,
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
    fn apply(&mut self, t: i64, e: &Event, kind: Kind, ctx: &mut Ctx<'_>) {
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

    fn activity_or_open(&mut self, t: i64, e: &Event, reason: &str, ctx: &mut Ctx<'_>) {
        if self.session.is_none() {
            self.open(t, e, None, reason, true, ctx);
        }
        self.activity(t, e, ctx);
    }

    /// Activity at `t` in the open session: resumes it if paused, counts it.
    fn activity(&mut self, t: i64, e: &Event, ctx: &mut Ctx<'_>) {
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
fn pause(s: &mut Session, flow: &mut FlowTracker, t: i64, reason: &str, ctx: &mut Ctx<'_>) {
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

/// The pure core. Feed each user's events in event-time order (the wrapper
/// does), and tell it when the watermark moves.
pub struct SessionTracker {
    rules: Rules,
    flow: FlowRules,
    users: HashMap<String, User>,
    /// (instant, user): each user is listed at or before its next instant.
    queue: BTreeSet<(i64, String)>,
}

impl SessionTracker {
    pub fn new(config: &SessionsConfig, flow: &FlowConfig) -> SessionTracker {
        SessionTracker {
            rules: Rules {
                gap: config.gap.as_millis() as i64,
                pause: config.pause_after.as_millis() as i64,
                // A break is a long pause: never before the pause itself.
                brk: config.break_after.max(config.pause_after).as_millis() as i64,
                warmup: config.warmup.as_millis() as i64,
            },
            flow: FlowRules::new(flow),
            users: HashMap::new(),
            queue: BTreeSet::new(),
        }
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.users.values().filter(|u| u.session.is_some()).count()
    }

    /// Users with state (an open session or words still in the rolling
    /// window): memory is bounded by these, not by past sessions.
    pub fn state_size(&self) -> usize {
        self.users.len()
    }

    /// The state of `user`'s session (IDLE when none is open).
    pub fn state_of(&self, user: &str) -> SessionState {
        self.users
            .get(user)
            .and_then(|u| u.session.as_ref())
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
        if !self.users.contains_key(user) {
            if matches!(kind, Kind::Ended | Kind::Paused) {
                return; // nothing to end or pause
            }
            self.users.insert(user.to_owned(), User::new(self.flow));
        }
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        let mut ctx = Ctx {
            user,
            rules: self.rules,
            flushing: false,
            out,
        };
        // An event older than what was evaluated (only if fed out of order)
        // counts at the user's current time.
        let t = e.ts.max(u.clock.saturating_add(1));
        u.run_until(t, &mut ctx);
        u.apply(t, e, kind, &mut ctx);
        u.pending = Some(t);
        if u.scheduled.is_none_or(|s| s > t) {
            if let Some(s) = u.scheduled.replace(t) {
                self.queue.remove(&(s, user.to_owned()));
            }
            self.queue.insert((t, user.to_owned()));
        }
    }

    /// No event before `watermark` will come: fires every deadline before it.
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        self.run(watermark, false, out);
    }

    /// End of input (replay): no event will ever come, so every deadline
    /// fires, and every session ends (`end_of_input`) at the instant a gap
    /// would have ended it.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.run(i64::MAX, true, out);
        self.users.clear();
        self.queue.clear();
    }

    fn run(&mut self, watermark: i64, flushing: bool, out: &mut Vec<Event>) {
        while let Some((t, _)) = self.queue.first()
            && *t < watermark
        {
            let Some((_, user)) = self.queue.pop_first() else {
                break;
            };
            let Some(u) = self.users.get_mut(&user) else {
                continue;
            };
            u.scheduled = None;
            let mut ctx = Ctx {
                user: &user,
                rules: self.rules,
                flushing,
                out: &mut *out,
            };
            u.run_until(watermark, &mut ctx);
            match u.next_instant(self.rules) {
                Some(n) => {
                    u.scheduled = Some(n);
                    self.queue.insert((n, user));
                }
                None if u.is_empty() => {
                    self.users.remove(&user);
                }
                None => {}
            }
        }
    }
}

/// The timely wrapper: `records.sessions(&config.sessions, &config.flow, time)`.
pub trait Sessions<'scope> {
    fn sessions(
        self,
        config: &SessionsConfig,
        flow: &FlowConfig,
        time: EventTime,
    ) -> Stream<'scope, u64, Vec<Event>>;
}

impl<'scope> Sessions<'scope> for Stream<'scope, u64, Vec<Record>> {
    fn sessions(
        self,
        config: &SessionsConfig,
        flow: &FlowConfig,
        time: EventTime,
    ) -> Stream<'scope, u64, Vec<Event>> {
        let (config, flow) = (config.clone(), flow.clone());
        let by_user =
            Exchange::new(|r: &Record| stable_hash(r.event.user_id.as_deref().unwrap_or("")));
        self.unary_frontier(by_user, "Sessions", move |initial, _info| {
            let mut tracker = SessionTracker::new(&config, &flow);
            let mut pending = EpochBuffer::default();
            // Held at the frontier to emit what the passing of time produces.
            let mut timer: Option<Capability<u64>> = Some(initial);
            let mut out = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|_cap, data| pending.push(&time, data));
                let f = frontier.frontier().first().copied();
                // Epochs the frontier has passed are final: process them in order.
                while let Some((_t, mut records)) = pending.pop_ready(f) {
                    // Per user: event-time order, ties in arrival order.
                    records.sort_by_key(|r| (r.event.ts, r.seq));
                    for r in &records {
                        tracker.observe(&r.event, &mut out);
                    }
                }
                match f {
                    Some(f) => {
                        tracker.advance_to(f as i64, &mut out);
                        if let Some(cap) = timer.as_mut() {
                            // Every output is at or after the previous
                            // frontier (= cap): stamped at its own epoch.
                            give_at_own_epochs(output, cap, &time, &mut out);
                            if *cap.time() < f {
                                cap.downgrade(&f);
                            }
                        }
                    }
                    None => {
                        if time.flush_at_end {
                            tracker.flush(&mut out);
                        }
                        if let Some(cap) = timer.take() {
                            give_at_own_epochs(output, &cap, &time, &mut out);
                        }
                        out.clear();
                    }
                }
            }
        })
    }
}
