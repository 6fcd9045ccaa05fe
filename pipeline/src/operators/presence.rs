//! Presence of each collaborator in each document, live.
//!
//! **Key.** A pair (`user_id`, `document_id`), taken from every event that
//! has both, whatever its category (a `writing.keystroke` with a
//! `document_id` is activity in that document, so are `collaboration.*`
//! events and comments). Events without a `user_id` or without a
//! `document_id` are ignored, and so are derived types (`EventType::derived`:
//! conflicts, flow state, metrics...), which the pipeline computes itself.
//! It runs in the operator runtime ([`crate::runtime::keyed`]), exchanged by
//! `document_id`, so one document's collaborators live on one worker; its
//! whole state is saved at checkpoint barriers.
//!
//! **Order** (`presence.order`). A pair's events come from two categories
//! (`writing` is partitioned by user, `collaboration` by document), so no
//! log orders them with each other: how they interleave depends on when each
//! partition is fetched. `arrival` (the default) observes them as they come:
//! updates are live, but a rerun of the same log (a failover that resumes
//! from a checkpoint, a replay) may interleave them differently and so emit
//! different cursor-rate-limited updates or `typing_wpm`. `event_time` parks
//! them until the watermark passes their epoch and observes each epoch
//! sorted by (`ts`, `id`): the updates come `dataflow.allowed_disorder` plus up to
//! one epoch later, and the same log gives the same updates whatever the
//! fetch order, failovers or worker count (what an analytics reader of the
//! derived stream that needs reproducible presence wants; the chaos run
//! checks it).
//!
//! **Statuses.** A pair with no state is offline.
//! - Any other event of the pair is *activity*: the pair is online, and
//!   `last_activity` = the greatest event time seen for it (an out-of-order,
//!   older event never moves it back).
//! - **away** at `last_activity + away_after` (default 5 min), **offline** at
//!   `last_activity + offline_after` (default 15 min). Idle for exactly the
//!   threshold does not count: activity at exactly `last_activity +
//!   away_after` keeps the pair online (as a gap of exactly `sessions.gap`
//!   keeps a session). So a transition at deadline `d` fires once the
//!   frontier is past `d` (`frontier > d`, no event at or before `d` can still
//!   come), with `ts = d`. When `offline_after <= away_after` there is no away.
//! - **Missed deadlines.** An event of the pair with `ts > d` for a deadline
//!   `d` not fired yet (the frontier had not caught up) first fires that
//!   transition, with `ts = d`, exactly as the frontier would have, and then
//!   takes effect (activity → online again). Firing a transition only needs
//!   the pair's state, and that state only changes with the pair's events, so
//!   whether the frontier or the next event fires it, the output is the same:
//!   it depends on the pair's arrival order only, never on batching or on the
//!   number of workers.
//! - `collaboration.user_left` → offline at once (`ts` = the event's), and
//!   the pair's state is dropped; so is it after a deadline offline. A
//!   `user_left` for a pair with no state emits nothing. `user_joined` is
//!   activity (online).
//! - A client may send `collaboration.presence_updated` itself (`POST
//!   /collaboration/presence`): `online` is activity, `offline` is treated as
//!   `user_left`, `away` turns an online pair away at the event's `ts`
//!   without touching `last_activity` (so offline still comes at
//!   `last_activity + offline_after`); an `away` for an away or offline pair
//!   does nothing. Its cursor fields are not read.
//!
//! **What is emitted.** `collaboration.presence_updated` on every status
//! change, and for cursor movement: a `collaboration.cursor_moved` of an
//! online pair that does not change its status emits an update iff
//! `ts - last_emitted >= cursor_interval` (default 1 s), where
//! `last_emitted` is the greatest `ts` of any update already emitted for the
//! pair (status changes included, and they are never rate limited); with no
//! update emitted yet, it emits. A suppressed cursor still updates the stored
//! cursor, which every later update carries. The stored cursor (paragraph,
//! offset, selection, viewport, mode) is the one of the `cursor_moved` with
//! the greatest `ts` (at equal `ts`, the later arrival); other events do not
//! move it. Other activity of an online pair emits nothing.
//!
//! Each update carries the stored cursor (`null`s before any cursor) and
//! `typing_wpm`: words typed by this user in this document (`written_words`:
//! typed keystroke words and `word_added`; paste, import and AI text count 0)
//! in the event-time window `(ts - typing_window, ts]` (default 1 min), among
//! the events that had arrived when the update was emitted, scaled to words
//! per minute; `null` when that count is 0.
//!
//! **Envelope.** `ts`: the triggering event's time, or the deadline.
//! `user_id`, `document_id`: the pair's; `project_id`: the last one seen on
//! the pair's events (an event without one keeps the previous), so the fanout
//! reaches both the `document:` and `project:` channels. `id`:
//! `derived_id("presence", [user, doc, status, event id])` for updates an
//! event caused, `derived_id("presence", [user, doc, status, "deadline",
//! ts])` for away/offline fired by time (a distinct arity, so no client event
//! id can collide with a deadline).
//!
//! **End of input.** With `flush_at_end` (replay) every pair is left to time
//! passing: its pending away and offline fire at their deadlines. Memory is
//! the pairs not offline, each with its typed words of the last window, and
//! one timer entry per pair (plus entries of dropped pairs until their time
//! passes).

use crate::operators::{derived_id, stable_hash, written_words};
use crate::runtime::Record;
use crate::runtime::{Core, Order};
use foldhash::HashMap;
use schemas::Event;
use schemas::payload::{CursorMoved, EditMode, Payload, PresenceStatus, PresenceUpdated};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// Settings of the presence operator (`[presence]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Idle time after which an online collaborator is away (default 5 min;
    /// idle for exactly this long is still online).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub away_after: Duration,
    /// Idle time after which a collaborator is offline and forgotten
    /// (default 15 min; exactly this long is not yet offline).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub offline_after: Duration,
    /// Least event time between two updates caused by cursor movement of one
    /// collaborator in one document (default 1 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub cursor_interval: Duration,
    /// Window of `typing_wpm` (default 1 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub typing_window: Duration,
    /// `arrival` (live, default) or `event_time` (reproducible; later by the
    /// watermark's delay). See the module documentation.
    pub order: Order,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            away_after: Duration::from_secs(5 * 60),
            offline_after: Duration::from_secs(15 * 60),
            cursor_interval: Duration::from_secs(1),
            typing_window: Duration::from_secs(60),
            order: Order::Arrival,
        }
    }
}

/// The config in ms (what a checkpoint keeps of it: plain numbers, not the
/// TOML-shaped config).
#[derive(Serialize, Deserialize)]
struct Limits {
    away_ms: i64,
    offline_ms: i64,
    cursor_ms: i64,
    window_ms: i64,
}

impl Limits {
    /// The pair's next transition if no activity comes: (deadline, status).
    fn next_transition(&self, p: &Pair) -> (i64, PresenceStatus) {
        if p.status == PresenceStatus::Online && self.away_ms < self.offline_ms {
            (
                p.last_activity.saturating_add(self.away_ms),
                PresenceStatus::Away,
            )
        } else {
            (
                p.last_activity.saturating_add(self.offline_ms),
                PresenceStatus::Offline,
            )
        }
    }
}

/// The stored cursor: `CursorMoved`'s fields. Not `CursorMoved` itself:
/// its serde leaves `None`s out (JSON-shaped), which bincode cannot read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    paragraph: i64,
    offset: i64,
    selection: Option<Vec<i64>>,
    viewport: Option<Vec<i64>>,
    mode: EditMode,
}

impl From<&CursorMoved> for Cursor {
    fn from(c: &CursorMoved) -> Cursor {
        Cursor {
            paragraph: c.paragraph,
            offset: c.offset,
            selection: c.selection.clone(),
            viewport: c.viewport.clone(),
            mode: c.mode,
        }
    }
}

/// One collaborator in one document (online or away: offline holds no state).
#[derive(Serialize, Deserialize)]
struct Pair {
    status: PresenceStatus,
    /// Greatest event time of the pair's activity.
    last_activity: i64,
    /// Greatest `ts` of an update emitted for the pair (the cursor rate limit).
    last_emitted: Option<i64>,
    project_id: Option<schemas::Text>,
    /// The cursor with the greatest event time, and that time.
    cursor: Option<(i64, Cursor)>,
    /// (event time, words) of typed words, in time order; older than the
    /// typing window behind the watermark is pruned.
    typing: VecDeque<(i64, u64)>,
    /// Time of this pair's entry in the timer queue; never later than its
    /// next deadline, so the entry comes up in time. Deadlines only move
    /// later except when an away pair comes back online (next: away, before
    /// the offline it was scheduled for): that adds an entry, and the old
    /// one, no longer matching `scheduled`, is skipped when it comes up.
    scheduled: i64,
}

/// What caused an update (for its id).
enum Cause<'a> {
    Event(&'a str),
    Deadline,
}

fn status_name(s: PresenceStatus) -> &'static str {
    match s {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

/// Types the pipeline derives (`EventType::derived`): not activity. A match
/// rather than the catalogue lookup, which scans every type name; a test
/// keeps the two in step.
fn is_derived(p: &Payload) -> bool {
    matches!(
        p,
        Payload::WritingFlowStateEntered(_)
            | Payload::WritingFlowStateExited(_)
            | Payload::WritingSessionStateChanged(_)
            | Payload::CollaborationConflictDetected(_)
            | Payload::CollaborationConflictResolved(_)
            | Payload::AnalyticsMetricUpdated(_)
            | Payload::AnalyticsThresholdCrossed(_)
            | Payload::AnalyticsAnomalyDetected(_)
            | Payload::AnalyticsAlertTriggered(_)
            | Payload::SystemDeadLetter(_)
            | Payload::SystemNotification(_)
    )
}

/// Words per minute typed in `(ts - window, ts]`; `None` when none.
fn typing_wpm(p: &Pair, ts: i64, window_ms: i64) -> Option<f64> {
    let from = ts.saturating_sub(window_ms);
    let words: u64 = p
        .typing
        .iter()
        .filter(|(t, _)| *t > from && *t <= ts)
        .map(|(_, w)| *w)
        .sum();
    (words > 0).then(|| words as f64 * 60_000.0 / window_ms as f64)
}

/// The update for `p` at `ts` (and note that it was emitted).
fn update(
    lim: &Limits,
    user: &str,
    doc: &str,
    p: &mut Pair,
    status: PresenceStatus,
    ts: i64,
    cause: Cause<'_>,
) -> Event {
    p.last_emitted = Some(p.last_emitted.map_or(ts, |l| l.max(ts)));
    let name = status_name(status);
    let id = match cause {
        Cause::Event(id) => derived_id("presence", &[user, doc, name, id]),
        Cause::Deadline => derived_id("presence", &[user, doc, name, "deadline", &ts.to_string()]),
    };
    let c = p.cursor.as_ref().map(|(_, c)| c);
    Event {
        id,
        ts,
        user_id: Some(user.into()),
        project_id: p.project_id.clone(),
        document_id: Some(doc.into()),
        data: Payload::CollaborationPresenceUpdated(Box::new(PresenceUpdated {
            status,
            paragraph: c.map(|c| c.paragraph),
            offset: c.map(|c| c.offset),
            selection: c.and_then(|c| c.selection.clone()),
            viewport: c.and_then(|c| c.viewport.clone()),
            mode: c.map(|c| c.mode),
            typing_wpm: typing_wpm(p, ts, lim.window_ms),
        })),
    }
}

/// Fires the pair's transitions with a deadline before `limit`, in order.
/// Returns true when the pair went offline (its state must be dropped).
fn fire_before(
    lim: &Limits,
    user: &str,
    doc: &str,
    p: &mut Pair,
    limit: i64,
    out: &mut Vec<Event>,
) -> bool {
    loop {
        let (deadline, status) = lim.next_transition(p);
        if deadline >= limit {
            return false;
        }
        out.push(update(lim, user, doc, p, status, deadline, Cause::Deadline));
        if status == PresenceStatus::Offline {
            return true;
        }
        p.status = status;
    }
}

/// An activity event of a known pair (`changed`: the pair was just made):
/// online again, its next transition, typing and cursor, and an update
/// when something changed or a cursor move is due.
fn on_activity(
    lim: &Limits,
    timers: &mut BTreeSet<(i64, String, String)>,
    p: &mut Pair,
    (user, doc): (&str, &str),
    e: &Event,
    mut changed: bool,
    out: &mut Vec<Event>,
) {
    let t = e.ts;
    if p.status != PresenceStatus::Online {
        p.status = PresenceStatus::Online;
        changed = true;
    }
    p.last_activity = p.last_activity.max(t);
    let deadline = lim.next_transition(p).0;
    if deadline < p.scheduled {
        p.scheduled = deadline;
        timers.insert((deadline, doc.to_owned(), user.to_owned()));
    }
    note_project(p, e);
    if let Some(words) = written_words(e)
        && words > 0
    {
        // In time order; arrivals are mostly in order, so search from the back.
        let pos = p.typing.len() - p.typing.iter().rev().take_while(|(u, _)| *u > t).count();
        p.typing.insert(pos, (t, words));
    }
    let mut cursor_moved = false;
    if let Payload::CollaborationCursorMoved(c) = &e.data {
        cursor_moved = true;
        if p.cursor.as_ref().is_none_or(|(at, _)| t >= *at) {
            p.cursor = Some((t, Cursor::from(c)));
        }
    }
    let due = cursor_moved
        && p.last_emitted
            .is_none_or(|l| t.saturating_sub(l) >= lim.cursor_ms);
    if changed || due {
        out.push(update(
            lim,
            user,
            doc,
            p,
            PresenceStatus::Online,
            t,
            Cause::Event(&e.id),
        ));
    }
}

/// Drops typed words no future update can count: every later update is at
/// or after the watermark.
fn prune_typing(p: &mut Pair, watermark: i64, window_ms: i64) {
    let horizon = watermark.saturating_sub(window_ms);
    while p.typing.front().is_some_and(|(t, _)| *t <= horizon) {
        p.typing.pop_front();
    }
}

/// The pure core. Feed each pair's events in arrival order; tell it the
/// watermark with [`Presence::advance_to`]. Serializable whole (a
/// checkpoint restores it as it was).
#[derive(Serialize, Deserialize)]
pub struct Presence {
    lim: Limits,
    /// document → user → state.
    docs: HashMap<String, HashMap<String, Pair>>,
    /// (time, document, user): when to look at a pair's deadlines again.
    timers: BTreeSet<(i64, String, String)>,
    pairs: usize,
    /// The last watermark given: no event before it will come.
    watermark: i64,
    /// `presence.order`: the runtime reads it from the configured operator,
    /// never from a checkpoint.
    #[serde(skip)]
    order: Order,
}

enum Action {
    Activity,
    Away,
    Leave,
}

impl Presence {
    pub fn new(config: &PresenceConfig) -> Presence {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        Presence {
            lim: Limits {
                away_ms: ms(config.away_after),
                offline_ms: ms(config.offline_after),
                cursor_ms: ms(config.cursor_interval),
                window_ms: ms(config.typing_window).max(1),
            },
            docs: HashMap::default(),
            timers: BTreeSet::new(),
            pairs: 0,
            watermark: i64::MIN,
            order: config.order,
        }
    }

    /// Pairs with state (online or away): memory is bounded by these.
    pub fn state_size(&self) -> usize {
        self.pairs
    }

    /// Entries in the timer queue (one per pair, plus those of dropped pairs
    /// until their time passes).
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    fn pair_mut(&mut self, doc: &str, user: &str) -> Option<&mut Pair> {
        self.docs.get_mut(doc)?.get_mut(user)
    }

    fn remove(&mut self, doc: &str, user: &str) -> Option<Pair> {
        let users = self.docs.get_mut(doc)?;
        let p = users.remove(user)?;
        if users.is_empty() {
            self.docs.remove(doc);
        }
        self.pairs -= 1;
        Some(p)
    }

    /// Takes one event, in arrival order for its pair; pushes the updates it
    /// causes (missed away/offline first, then its own).
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Event>) {
        if is_derived(&e.data) {
            return;
        }
        let (Some(user), Some(doc)) = (e.user_id.as_deref(), e.document_id.as_deref()) else {
            return;
        };
        let t = e.ts;
        let action = match &e.data {
            Payload::CollaborationUserLeft(_) => Action::Leave,
            Payload::CollaborationPresenceUpdated(p) => match p.status {
                PresenceStatus::Online => Action::Activity,
                PresenceStatus::Away => Action::Away,
                PresenceStatus::Offline => Action::Leave,
            },
            _ => Action::Activity,
        };
        let (watermark, window_ms) = (self.watermark, self.lim.window_ms);
        let mut gone = false;
        if let Some(p) = self.docs.get_mut(doc).and_then(|u| u.get_mut(user)) {
            prune_typing(p, watermark, window_ms);
            gone = fire_before(&self.lim, user, doc, p, t, out);
            if !gone && matches!(action, Action::Activity) {
                // A known pair's activity (most events): one lookup.
                on_activity(&self.lim, &mut self.timers, p, (user, doc), e, false, out);
                return;
            }
        }
        if gone {
            self.remove(doc, user);
        }
        match action {
            Action::Leave => {
                if let Some(mut p) = self.remove(doc, user) {
                    note_project(&mut p, e);
                    let lim = &self.lim;
                    out.push(update(
                        lim,
                        user,
                        doc,
                        &mut p,
                        PresenceStatus::Offline,
                        t,
                        Cause::Event(&e.id),
                    ));
                }
            }
            Action::Away => {
                let lim = &self.lim;
                if let Some(p) = self.docs.get_mut(doc).and_then(|u| u.get_mut(user))
                    && p.status == PresenceStatus::Online
                {
                    note_project(p, e);
                    p.status = PresenceStatus::Away;
                    out.push(update(
                        lim,
                        user,
                        doc,
                        p,
                        PresenceStatus::Away,
                        t,
                        Cause::Event(&e.id),
                    ));
                }
            }
            Action::Activity => self.activity(user, doc, e, out),
        }
    }

    /// Activity of a pair not known yet (or just gone offline).
    fn activity(&mut self, user: &str, doc: &str, e: &Event, out: &mut Vec<Event>) {
        let t = e.ts;
        let mut changed = false;
        if self.pair_mut(doc, user).is_none() {
            let mut p = Pair {
                status: PresenceStatus::Online,
                last_activity: t,
                last_emitted: None,
                project_id: None,
                cursor: None,
                typing: VecDeque::new(),
                scheduled: 0,
            };
            p.scheduled = self.lim.next_transition(&p).0;
            // Look up before inserting: `entry` would allocate the key each time.
            if !self.docs.contains_key(doc) {
                self.docs.insert(doc.to_owned(), HashMap::default());
            }
            if let Some(users) = self.docs.get_mut(doc) {
                self.timers
                    .insert((p.scheduled, doc.to_owned(), user.to_owned()));
                users.insert(user.to_owned(), p);
                self.pairs += 1;
                changed = true;
            }
        }
        let Some(p) = self.docs.get_mut(doc).and_then(|u| u.get_mut(user)) else {
            return;
        };
        on_activity(&self.lim, &mut self.timers, p, (user, doc), e, changed, out);
    }

    /// No event before `watermark` will come: fires every away/offline whose
    /// deadline is before it.
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        self.watermark = self.watermark.max(watermark);
        while self
            .timers
            .first()
            .is_some_and(|(at, _, _)| *at < watermark)
        {
            let Some((at, doc, user)) = self.timers.pop_first() else {
                break;
            };
            let lim = &self.lim;
            let Some(p) = self.docs.get_mut(&doc).and_then(|u| u.get_mut(&user)) else {
                continue; // the pair went offline since
            };
            if p.scheduled != at {
                continue; // an entry of an earlier life of this pair
            }
            if fire_before(lim, &user, &doc, p, watermark, out) {
                self.remove(&doc, &user);
                continue;
            }
            prune_typing(p, watermark, lim.window_ms);
            p.scheduled = lim.next_transition(p).0;
            self.timers.insert((p.scheduled, doc, user));
        }
    }

    /// End of input (replay): time passes for every pair, so its pending
    /// away and offline fire at their deadlines; no state is left.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        let mut keys: Vec<(String, String)> = self
            .docs
            .iter()
            .flat_map(|(d, users)| users.keys().map(move |u| (d.clone(), u.clone())))
            .collect();
        keys.sort();
        for (doc, user) in keys {
            let lim = &self.lim;
            if let Some(p) = self.docs.get_mut(&doc).and_then(|u| u.get_mut(&user)) {
                fire_before(lim, &user, &doc, p, i64::MAX, out);
            }
        }
        self.docs.clear();
        self.timers.clear();
        self.pairs = 0;
    }
}

fn note_project(p: &mut Pair, e: &Event) {
    if let Some(project) = &e.project_id
        && p.project_id.as_ref() != Some(project)
    {
        p.project_id = Some(project.clone());
    }
}

/// Live (arrival order), keyed by document, in the operator runtime:
/// `records.keyed(Presence::new(&config.presence), &ctx)`.
///
/// The runtime stamps what `observe` emits no earlier than the input
/// container's stamp, so a missed away/offline fired by a later event can
/// be stamped later than its own epoch (its deadline may be before that
/// stamp, the frontier not having caught up); harmless while nothing
/// downstream parks presence updates.
impl Core for Presence {
    type Item = Record;
    const NAME: &'static str = "Presence";
    const ORDER: Order = Order::Arrival;

    fn order(&self) -> Order {
        self.order
    }

    /// What `observe` would ignore anyway: filtered before the exchange.
    fn wants(r: &Record) -> bool {
        let e = &r.event;
        e.user_id.is_some() && e.document_id.is_some() && !is_derived(&e.data)
    }

    fn key(r: &Record) -> u64 {
        stable_hash(r.event.document_id.as_deref().unwrap_or(""))
    }

    fn observe(&mut self, r: &Record, out: &mut Vec<Event>) {
        Presence::observe(self, &r.event, out);
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        Presence::advance_to(self, watermark, out);
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        Presence::flush(self, out);
    }

    fn state_size(&self) -> usize {
        Presence::state_size(self)
    }

    /// `presence.order = "event_time"`: by time, then id (unique after
    /// dedup), so neither arrival nor batching decides.
    fn sort_epoch(records: &mut [Record]) {
        records.sort_by(|a, b| (a.event.ts, &a.event.id).cmp(&(b.event.ts, &b.event.id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::EventTime;
    use crate::runtime::{Keyed, OperatorCtx};
    use serde_json::json;

    const MIN: i64 = 60_000;
    const AWAY: i64 = 5 * MIN;
    const OFFLINE: i64 = 15 * MIN;

    fn ev(id: &str, ty: &str, ts: i64, user: &str, doc: &str, data: serde_json::Value) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: Some(user.into()),
            project_id: Some("p1".into()),
            document_id: Some(doc.into()),
            data: Payload::from_json_value(ty, data).unwrap().unwrap(),
        }
    }

    fn ks(id: &str, ts: i64, words: i64) -> Event {
        ev(
            id,
            "writing.keystroke",
            ts,
            "u1",
            "d1",
            json!({"keystrokes": 5, "words": words, "chars": 5}),
        )
    }

    fn cursor(id: &str, ts: i64, paragraph: i64, offset: i64) -> Event {
        ev(
            id,
            "collaboration.cursor_moved",
            ts,
            "u1",
            "d1",
            json!({"paragraph": paragraph, "offset": offset}),
        )
    }

    fn joined(id: &str, ts: i64) -> Event {
        ev(id, "collaboration.user_joined", ts, "u1", "d1", json!({}))
    }

    fn left(id: &str, ts: i64) -> Event {
        ev(id, "collaboration.user_left", ts, "u1", "d1", json!({}))
    }

    fn presence(e: &Event) -> &PresenceUpdated {
        match &e.data {
            Payload::CollaborationPresenceUpdated(p) => p,
            other => panic!("not presence: {other:?}"),
        }
    }

    /// (ts, status) of each update.
    fn statuses(out: &[Event]) -> Vec<(i64, &'static str)> {
        out.iter()
            .map(|e| (e.ts, status_name(presence(e).status)))
            .collect()
    }

    fn run(t: &mut Presence, events: &[Event]) -> Vec<Event> {
        let mut out = Vec::new();
        for e in events {
            t.observe(e, &mut out);
        }
        out
    }

    fn tracker() -> Presence {
        Presence::new(&PresenceConfig::default())
    }

    #[test]
    fn first_activity_brings_the_pair_online_with_its_envelope() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("a", 1_000, 2)]);
        assert_eq!(statuses(&out), [(1_000, "online")]);
        let e = &out[0];
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.document_id.as_deref(), Some("d1"));
        assert_eq!(e.project_id.as_deref(), Some("p1"));
        assert_eq!(e.id, derived_id("presence", &["u1", "d1", "online", "a"]));
        assert_eq!(e.event_type(), "collaboration.presence_updated");
        assert_eq!(t.state_size(), 1);
    }

    #[test]
    fn away_waits_until_the_watermark_is_past_exactly_five_minutes_idle() {
        let mut t = tracker();
        let mut out = run(&mut t, &[ks("a", 0, 1)]);
        t.advance_to(AWAY, &mut out);
        assert_eq!(
            statuses(&out),
            [(0, "online")],
            "an event at exactly 5 min could still come"
        );
        t.advance_to(AWAY + 1, &mut out);
        assert_eq!(statuses(&out), [(0, "online"), (AWAY, "away")]);
        assert_eq!(
            out[1].id,
            derived_id(
                "presence",
                &["u1", "d1", "away", "deadline", &AWAY.to_string()]
            )
        );
        assert_eq!(t.state_size(), 1, "away keeps its state");
    }

    #[test]
    fn activity_at_exactly_five_minutes_idle_keeps_the_pair_online() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("a", 0, 1), ks("b", AWAY, 1)]);
        assert_eq!(statuses(&out), [(0, "online")]);
    }

    #[test]
    fn activity_just_past_the_away_deadline_emits_the_missed_away_then_online() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("a", 0, 1), ks("b", AWAY + 1, 1)]);
        assert_eq!(
            statuses(&out),
            [(0, "online"), (AWAY, "away"), (AWAY + 1, "online")]
        );
    }

    #[test]
    fn the_same_transitions_whether_the_watermark_or_the_next_event_fires_them() {
        let events = [
            ks("a", 0, 1),
            cursor("c", 1_000, 3, 4),
            ks("b", 1_000 + OFFLINE + 7, 1),
        ];
        let mut by_event = tracker();
        let a = run(&mut by_event, &events);
        let mut by_time = tracker();
        let mut b = run(&mut by_time, &events[..2]);
        by_time.advance_to(1_000 + OFFLINE + 7, &mut b);
        by_time.observe(&events[2], &mut b);
        assert_eq!(a, b);
        assert_eq!(
            statuses(&a),
            [
                (0, "online"),
                (1_000, "online"),
                (1_000 + AWAY, "away"),
                (1_000 + OFFLINE, "offline"),
                (1_000 + OFFLINE + 7, "online")
            ]
        );
    }

    #[test]
    fn a_pair_back_from_away_goes_away_again_on_time() {
        let mut t = tracker();
        let mut out = run(&mut t, &[ks("a", 0, 1)]);
        t.advance_to(AWAY + 1, &mut out); // away; next look: at the offline deadline
        t.observe(&ks("b", AWAY + 10, 1), &mut out);
        t.advance_to(2 * AWAY + 11, &mut out);
        assert_eq!(
            statuses(&out),
            [
                (0, "online"),
                (AWAY, "away"),
                (AWAY + 10, "online"),
                (2 * AWAY + 10, "away")
            ]
        );
    }

    #[test]
    fn offline_fires_past_fifteen_minutes_idle_and_drops_the_state() {
        let mut t = tracker();
        let mut out = run(&mut t, &[ks("a", 0, 1)]);
        t.advance_to(OFFLINE, &mut out);
        assert_eq!(statuses(&out), [(0, "online"), (AWAY, "away")]);
        assert_eq!(t.state_size(), 1);
        t.advance_to(OFFLINE + 1, &mut out);
        assert_eq!(
            statuses(&out),
            [(0, "online"), (AWAY, "away"), (OFFLINE, "offline")]
        );
        assert_eq!((t.state_size(), t.pending_timers()), (0, 0));
    }

    #[test]
    fn activity_at_exactly_fifteen_minutes_idle_comes_back_from_away_not_offline() {
        let mut t = tracker();
        let out = run(&mut t, &[ks("a", 0, 1), ks("b", OFFLINE, 1)]);
        assert_eq!(
            statuses(&out),
            [(0, "online"), (AWAY, "away"), (OFFLINE, "online")]
        );
    }

    #[test]
    fn user_left_sends_offline_at_once_and_drops_the_state() {
        let mut t = tracker();
        let out = run(
            &mut t,
            &[joined("j", 0), cursor("c", 10, 2, 5), left("l", 500)],
        );
        assert_eq!(statuses(&out), [(0, "online"), (500, "offline")]);
        assert_eq!(
            presence(&out[1]).paragraph,
            Some(2),
            "it carries the last cursor"
        );
        assert_eq!(
            out[1].id,
            derived_id("presence", &["u1", "d1", "offline", "l"])
        );
        assert_eq!(t.state_size(), 0);
        let mut again = Vec::new();
        t.advance_to(OFFLINE * 2, &mut again);
        assert!(again.is_empty(), "no away/offline after leaving");
    }

    #[test]
    fn user_left_for_an_offline_pair_emits_nothing() {
        let mut t = tracker();
        assert!(run(&mut t, &[left("l", 500)]).is_empty());
        let out = run(&mut t, &[ks("a", 0, 1), left("l2", OFFLINE + 1)]);
        assert_eq!(
            statuses(&out),
            [(0, "online"), (AWAY, "away"), (OFFLINE, "offline")],
            "already offline by its deadline when the leave came"
        );
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn user_joined_of_an_online_pair_is_not_a_change() {
        let mut t = tracker();
        let out = run(&mut t, &[joined("j", 0), joined("j2", 100)]);
        assert_eq!(statuses(&out), [(0, "online")]);
    }

    #[test]
    fn cursor_updates_are_limited_to_one_per_interval_of_event_time() {
        let mut t = tracker();
        let out = run(
            &mut t,
            &[
                joined("j", 0),
                cursor("c1", 999, 1, 1),   // 999 ms after the online: dropped
                cursor("c2", 1_000, 1, 2), // exactly 1 s: emitted
                cursor("c3", 1_500, 1, 3),
                cursor("c4", 1_999, 1, 4),
                cursor("c5", 2_000, 1, 5),
            ],
        );
        let got: Vec<_> = out.iter().map(|e| (e.ts, presence(e).offset)).collect();
        assert_eq!(got, [(0, None), (1_000, Some(2)), (2_000, Some(5))]);
        assert!(
            out.iter()
                .all(|e| presence(e).status == PresenceStatus::Online)
        );
    }

    #[test]
    fn a_first_cursor_is_never_rate_limited_and_carries_its_position() {
        let mut t = tracker();
        let mut c = cursor("c", 7, 4, 9);
        if let Payload::CollaborationCursorMoved(m) = &mut c.data {
            m.selection = Some(vec![9, 12]);
            m.viewport = Some(vec![0, 20]);
            m.mode = schemas::payload::EditMode::Review;
        }
        let out = run(&mut t, &[c]);
        let p = presence(&out[0]);
        assert_eq!(
            (
                p.paragraph,
                p.offset,
                p.selection.clone(),
                p.viewport.clone(),
                p.mode
            ),
            (
                Some(4),
                Some(9),
                Some(vec![9, 12]),
                Some(vec![0, 20]),
                Some(schemas::payload::EditMode::Review)
            )
        );
    }

    #[test]
    fn a_dropped_cursor_position_is_carried_by_the_next_update() {
        let mut t = tracker();
        let mut out = run(&mut t, &[cursor("c1", 0, 1, 1), cursor("c2", 400, 7, 8)]);
        assert_eq!(out.len(), 1);
        t.advance_to(400 + AWAY + 1, &mut out);
        assert_eq!(statuses(&out), [(0, "online"), (400 + AWAY, "away")]);
        assert_eq!(
            (presence(&out[1]).paragraph, presence(&out[1]).offset),
            (Some(7), Some(8))
        );
    }

    #[test]
    fn status_changes_are_not_rate_limited() {
        let mut t = tracker();
        let out = run(
            &mut t,
            &[cursor("c1", 0, 1, 1), left("l", 10), cursor("c2", 20, 1, 2)],
        );
        assert_eq!(
            statuses(&out),
            [(0, "online"), (10, "offline"), (20, "online")]
        );
    }

    #[test]
    fn an_out_of_order_event_does_not_move_last_activity_back() {
        let mut t = tracker();
        let mut out = run(&mut t, &[ks("a", 10_000, 1), ks("b", 5_000, 1)]);
        t.advance_to(5_000 + AWAY + 1, &mut out);
        assert_eq!(statuses(&out), [(10_000, "online")]);
        t.advance_to(10_000 + AWAY + 1, &mut out);
        assert_eq!(
            statuses(&out),
            [(10_000, "online"), (10_000 + AWAY, "away")]
        );
    }

    #[test]
    fn an_out_of_order_cursor_does_not_replace_a_newer_position() {
        let mut t = tracker();
        let mut out = run(
            &mut t,
            &[cursor("c1", 5_000, 2, 2), cursor("c0", 4_000, 1, 1)],
        );
        assert_eq!(out.len(), 1, "older than the last update: rate limited");
        t.advance_to(5_000 + AWAY + 1, &mut out);
        assert_eq!(presence(&out[1]).paragraph, Some(2));
    }

    #[test]
    fn typing_wpm_counts_typed_words_of_the_last_minute_in_this_document() {
        let mut t = tracker();
        let paste = ev(
            "p",
            "writing.keystroke",
            20_000,
            "u1",
            "d1",
            json!({"keystrokes": 1, "words": 100, "chars": 500, "source": "paste"}),
        );
        let other_doc = ev(
            "o",
            "writing.keystroke",
            25_000,
            "u1",
            "d2",
            json!({"keystrokes": 1, "words": 50, "chars": 5}),
        );
        let added = ev(
            "w",
            "writing.word_added",
            30_000,
            "u1",
            "d1",
            json!({"words": 2}),
        );
        let out = run(
            &mut t,
            &[
                ks("a", 0, 10),
                ks("b", 10_000, 5),
                paste,
                other_doc,
                added,
                cursor("c", MIN, 1, 1),
            ],
        );
        let d1: Vec<_> = out
            .iter()
            .filter(|e| e.document_id.as_deref() == Some("d1"))
            .map(|e| (e.ts, presence(e).typing_wpm))
            .collect();
        // At 60 s the window is (0, 60 000]: the 10 words at 0 are out.
        assert_eq!(d1, [(0, Some(10.0)), (MIN, Some(7.0))]);
        let mut late = Vec::new();
        t.advance_to(MIN + AWAY + 1, &mut late);
        assert_eq!(presence(&late[0]).typing_wpm, None, "not typing when away");
    }

    #[test]
    fn typing_wpm_scales_to_a_minute_for_other_windows() {
        let cfg = PresenceConfig {
            typing_window: Duration::from_secs(30),
            ..Default::default()
        };
        let mut t = Presence::new(&cfg);
        let out = run(&mut t, &[ks("a", 0, 10)]);
        assert_eq!(presence(&out[0]).typing_wpm, Some(20.0));
    }

    #[test]
    fn events_without_user_or_document_and_derived_events_are_ignored() {
        let mut t = tracker();
        let mut no_doc = ks("a", 0, 1);
        no_doc.document_id = None;
        let mut no_user = cursor("b", 0, 1, 1);
        no_user.user_id = None;
        let derived = ev(
            "c",
            "collaboration.conflict_detected",
            0,
            "u1",
            "d1",
            json!({"conflict_id": "k", "other_user_id": "u2", "paragraph": 1,
                   "severity": "HIGH", "kind": "same_paragraph", "suggestion": "x"}),
        );
        assert!(run(&mut t, &[no_doc, no_user, derived]).is_empty());
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn derived_types_are_those_of_the_catalogue() {
        for ty in schemas::EventType::all() {
            let payload = Payload::example(ty.name).unwrap();
            assert_eq!(is_derived(&payload), ty.derived, "{}", ty.name);
        }
    }

    #[test]
    fn any_category_with_a_document_is_activity_and_pairs_are_independent() {
        let mut t = tracker();
        let comment = ev(
            "c",
            "collaboration.comment_added",
            0,
            "u2",
            "d1",
            json!({"comment_id": "k", "paragraph": 1}),
        );
        let other = ev(
            "o",
            "writing.keystroke",
            0,
            "u1",
            "d2",
            json!({"keystrokes": 1, "words": 0, "chars": 1}),
        );
        let out = run(&mut t, &[ks("a", 0, 1), comment, other]);
        let pairs: Vec<_> = out
            .iter()
            .map(|e| {
                (
                    e.user_id.as_deref().map(String::from).unwrap(),
                    e.document_id.as_deref().map(String::from).unwrap(),
                )
            })
            .collect();
        assert_eq!(pairs.len(), 3);
        assert_eq!(t.state_size(), 3);
    }

    #[test]
    fn project_id_is_the_last_one_seen_for_the_pair() {
        let mut t = tracker();
        let mut a = ks("a", 0, 1);
        a.project_id = None;
        let mut b = ks("b", 10, 1);
        b.project_id = Some("p9".into());
        let mut c = ks("c", 20, 1);
        c.project_id = None;
        let mut out = run(&mut t, &[a, b, c]);
        assert_eq!(out[0].project_id, None);
        t.advance_to(20 + AWAY + 1, &mut out);
        assert_eq!(out[1].project_id.as_deref(), Some("p9"));
    }

    #[test]
    fn a_client_presence_update_is_honoured() {
        let mut t = tracker();
        let status = |id: &str, ts: i64, s: &str| {
            ev(
                id,
                "collaboration.presence_updated",
                ts,
                "u1",
                "d1",
                json!({"status": s}),
            )
        };
        let mut out = run(
            &mut t,
            &[
                status("s1", 0, "online"),
                status("s2", 100, "away"),
                status("s3", 200, "away"),
                ks("k", 300, 1),
                status("s4", 400, "away"),
            ],
        );
        assert_eq!(
            statuses(&out),
            [(0, "online"), (100, "away"), (300, "online"), (400, "away")]
        );
        // Away by the client: offline still comes from the last activity.
        t.advance_to(300 + OFFLINE + 1, &mut out);
        assert_eq!(
            out.last().map(|e| (e.ts, status_name(presence(e).status))),
            Some((300 + OFFLINE, "offline"))
        );
        let out = run(
            &mut t,
            &[
                status("s5", OFFLINE * 2, "online"),
                status("s6", OFFLINE * 2 + 1, "offline"),
            ],
        );
        assert_eq!(
            statuses(&out),
            [(OFFLINE * 2, "online"), (OFFLINE * 2 + 1, "offline")]
        );
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn without_a_shorter_away_threshold_there_is_no_away() {
        let cfg = PresenceConfig {
            away_after: OFFLINE_D,
            ..Default::default()
        };
        let mut t = Presence::new(&cfg);
        let mut out = run(&mut t, &[ks("a", 0, 1)]);
        t.advance_to(OFFLINE + 1, &mut out);
        assert_eq!(statuses(&out), [(0, "online"), (OFFLINE, "offline")]);
    }
    const OFFLINE_D: Duration = Duration::from_secs(15 * 60);

    #[test]
    fn flush_lets_time_pass_for_every_pair() {
        let mut t = tracker();
        let mut out = run(&mut t, &[ks("a", 0, 1), ks("b", AWAY + 1, 1)]);
        t.flush(&mut out);
        assert_eq!(
            statuses(&out),
            [
                (0, "online"),
                (AWAY, "away"),
                (AWAY + 1, "online"),
                (2 * AWAY + 1, "away"),
                (AWAY + 1 + OFFLINE, "offline")
            ]
        );
        assert_eq!((t.state_size(), t.pending_timers()), (0, 0));
    }

    #[test]
    fn state_and_timers_stay_bounded_by_active_pairs() {
        let mut t = tracker();
        let mut out = Vec::new();
        for round in 0..5_i64 {
            for u in 0..100 {
                // Each pair leaves and comes back: stale timer entries.
                let base = round * 1_000;
                let e = ev(
                    &format!("j{round}-{u}"),
                    "collaboration.user_joined",
                    base,
                    &format!("u{u}"),
                    "d1",
                    json!({}),
                );
                t.observe(&e, &mut out);
                let l = ev(
                    &format!("l{round}-{u}"),
                    "collaboration.user_left",
                    base + 1,
                    &format!("u{u}"),
                    "d1",
                    json!({}),
                );
                t.observe(&l, &mut out);
            }
        }
        assert_eq!(t.state_size(), 0);
        for u in 0..100 {
            t.observe(
                &ev(
                    &format!("k{u}"),
                    "writing.keystroke",
                    10_000,
                    &format!("u{u}"),
                    "d1",
                    json!({"keystrokes": 1, "words": 1, "chars": 1}),
                ),
                &mut out,
            );
        }
        assert_eq!(t.state_size(), 100);
        t.advance_to(10_000 + OFFLINE + 1, &mut out);
        assert_eq!((t.state_size(), t.pending_timers()), (0, 0));
    }

    #[test]
    fn ids_are_deterministic_and_unique() {
        let events = [
            joined("j", 0),
            cursor("c", 2_000, 1, 1),
            ks("k", AWAY * 3, 1),
            left("l", AWAY * 3 + 5),
        ];
        let mut a = tracker();
        let mut b = tracker();
        let (mut x, y) = (run(&mut a, &events), run(&mut b, &events));
        assert_eq!(x, y);
        let n = x.len();
        x.sort_by(|p, q| p.id.cmp(&q.id));
        x.dedup_by(|p, q| p.id == q.id);
        assert_eq!(x.len(), n);
    }

    #[test]
    fn config_reads_durations_from_toml() {
        let cfg: PresenceConfig =
            toml::from_str("away_after = \"2m\"\ncursor_interval = 500").unwrap();
        assert_eq!(cfg.away_after, Duration::from_secs(120));
        assert_eq!(cfg.cursor_interval, Duration::from_millis(500));
        assert_eq!(cfg.offline_after, Duration::from_secs(900));
        assert_eq!(cfg.typing_window, Duration::from_secs(60));
        assert!(toml::from_str::<PresenceConfig>("idle = \"1m\"").is_err());
    }

    // ---- a naive reference, on seeded random streams -------------------------------------

    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> i64 {
            (self.next() % n.max(1)) as i64
        }
    }

    /// Everything kept, nothing pruned, no timers: each event first plays
    /// out the deadlines it is past, one by one; at the end, all of them.
    fn naive(cfg: &PresenceConfig, events: &[Event]) -> Vec<Event> {
        struct P {
            online: bool,
            last: i64,
            emitted: Option<i64>,
            project: Option<String>,
            cursor: Option<(i64, CursorMoved)>,
            typed: Vec<(i64, u64)>,
        }
        let away = cfg.away_after.as_millis() as i64;
        let offline = cfg.offline_after.as_millis() as i64;
        let interval = cfg.cursor_interval.as_millis() as i64;
        let window = (cfg.typing_window.as_millis() as i64).max(1);
        fn emit(
            out: &mut Vec<Event>,
            (u, d): &(String, String),
            p: &mut P,
            status: PresenceStatus,
            ts: i64,
            cause: Option<&str>,
            window: i64,
        ) {
            let name = status_name(status);
            let id = match cause {
                Some(id) => derived_id("presence", &[u, d, name, id]),
                None => derived_id("presence", &[u, d, name, "deadline", &ts.to_string()]),
            };
            let words: u64 = p
                .typed
                .iter()
                .filter(|(t, _)| ts - window < *t && *t <= ts)
                .map(|(_, w)| w)
                .sum();
            let c = p.cursor.as_ref().map(|(_, c)| c.clone());
            p.emitted = Some(p.emitted.unwrap_or(ts).max(ts));
            out.push(Event {
                id,
                ts,
                user_id: Some(u.clone().into()),
                project_id: p.project.clone().map(Into::into),
                document_id: Some(d.clone().into()),
                data: Payload::CollaborationPresenceUpdated(Box::new(PresenceUpdated {
                    status,
                    paragraph: c.as_ref().map(|c| c.paragraph),
                    offset: c.as_ref().map(|c| c.offset),
                    selection: c.as_ref().and_then(|c| c.selection.clone()),
                    viewport: c.as_ref().and_then(|c| c.viewport.clone()),
                    mode: c.as_ref().map(|c| c.mode),
                    typing_wpm: (words > 0).then(|| words as f64 * 60_000.0 / window as f64),
                })),
            });
        }
        let mut pairs: std::collections::BTreeMap<(String, String), P> = Default::default();
        let mut out = Vec::new();
        // Plays out the deadlines before `until`; false when the pair went offline.
        let play = |out: &mut Vec<Event>, key: &(String, String), p: &mut P, until: i64| -> bool {
            if p.online && away < offline && p.last + away < until {
                emit(
                    out,
                    key,
                    p,
                    PresenceStatus::Away,
                    p.last + away,
                    None,
                    window,
                );
                p.online = false;
            }
            if p.last + offline < until {
                emit(
                    out,
                    key,
                    p,
                    PresenceStatus::Offline,
                    p.last + offline,
                    None,
                    window,
                );
                return false;
            }
            true
        };
        for e in events {
            if schemas::EventType::lookup(e.event_type()).unwrap().derived {
                continue;
            }
            let (Some(u), Some(d)) = (&e.user_id, &e.document_id) else {
                continue;
            };
            let key = (u.to_string(), d.to_string());
            if let Some(p) = pairs.get_mut(&key)
                && !play(&mut out, &key, p, e.ts)
            {
                pairs.remove(&key);
            }
            let status = match &e.data {
                Payload::CollaborationUserLeft(_) => PresenceStatus::Offline,
                Payload::CollaborationPresenceUpdated(p) => p.status,
                _ => PresenceStatus::Online,
            };
            match status {
                PresenceStatus::Offline => {
                    if let Some(mut p) = pairs.remove(&key) {
                        if e.project_id.is_some() {
                            p.project = e.project_id.as_deref().map(String::from);
                        }
                        emit(
                            &mut out,
                            &key,
                            &mut p,
                            PresenceStatus::Offline,
                            e.ts,
                            Some(&e.id),
                            window,
                        );
                    }
                }
                PresenceStatus::Away => {
                    if let Some(p) = pairs.get_mut(&key)
                        && p.online
                    {
                        if e.project_id.is_some() {
                            p.project = e.project_id.as_deref().map(String::from);
                        }
                        p.online = false;
                        emit(
                            &mut out,
                            &key,
                            p,
                            PresenceStatus::Away,
                            e.ts,
                            Some(&e.id),
                            window,
                        );
                    }
                }
                PresenceStatus::Online => {
                    let is_new = !pairs.contains_key(&key);
                    let p = pairs.entry(key.clone()).or_insert(P {
                        online: false,
                        last: e.ts,
                        emitted: None,
                        project: None,
                        cursor: None,
                        typed: Vec::new(),
                    });
                    let changed = is_new || !p.online;
                    p.online = true;
                    p.last = p.last.max(e.ts);
                    if e.project_id.is_some() {
                        p.project = e.project_id.as_deref().map(String::from);
                    }
                    if let Some(w) = crate::operators::written_words(e) {
                        p.typed.push((e.ts, w));
                    }
                    let mut due = false;
                    if let Payload::CollaborationCursorMoved(c) = &e.data {
                        if p.cursor.as_ref().is_none_or(|(t, _)| e.ts >= *t) {
                            p.cursor = Some((e.ts, c.clone()));
                        }
                        due = p.emitted.is_none_or(|l| e.ts - l >= interval);
                    }
                    if changed || due {
                        emit(
                            &mut out,
                            &key,
                            p,
                            PresenceStatus::Online,
                            e.ts,
                            Some(&e.id),
                            window,
                        );
                    }
                }
            }
        }
        for (key, mut p) in std::mem::take(&mut pairs) {
            play(&mut out, &key, &mut p, i64::MAX);
        }
        sorted(out)
    }

    fn sorted(mut out: Vec<Event>) -> Vec<Event> {
        out.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        out
    }

    /// A small config, so that random streams cross every threshold often.
    fn small() -> PresenceConfig {
        PresenceConfig {
            away_after: Duration::from_secs(5),
            offline_after: Duration::from_secs(15),
            cursor_interval: Duration::from_secs(1),
            typing_window: Duration::from_secs(3),
            order: Order::Arrival,
        }
    }

    const DISORDER: i64 = 2_000;
    const MODES: [&str; 4] = ["edit", "review", "comment", "navigate"];
    const STATUSES: [&str; 3] = ["online", "away", "offline"];

    /// Events of 3 users in 2 documents, with gaps around every threshold,
    /// disorder up to `DISORDER`, and late events (as the input driver would
    /// find them) removed.
    fn random_stream(seed: u64, n: usize, cfg: &PresenceConfig) -> Vec<Event> {
        let mut rng = SplitMix(seed);
        let thresholds = [
            cfg.away_after.as_millis() as i64,
            cfg.offline_after.as_millis() as i64,
            cfg.cursor_interval.as_millis() as i64,
            cfg.typing_window.as_millis() as i64,
        ];
        let mut clock = 1_000_000_i64;
        let mut last: HashMap<(i64, i64), i64> = HashMap::default();
        let (mut max_ts, mut watermark) = (i64::MIN, i64::MIN);
        let mut events = Vec::new();
        for i in 0..n {
            clock += match rng.below(100) {
                0..60 => rng.below(1_500),
                60..85 => rng.below(8_000),
                85..97 => rng.below(30_000),
                _ => rng.below(120_000),
            };
            let (u, d) = (rng.below(3), rng.below(2));
            let mut ts = clock - rng.below(DISORDER as u64 + 1);
            if rng.below(8) == 0
                && let Some(l) = last.get(&(u, d))
            {
                // Exactly at a threshold, or one ms either side.
                ts = l + thresholds[rng.below(4) as usize] + rng.below(3) - 1;
                clock = clock.max(ts);
            }
            let id = format!("e{seed}-{i}");
            let (ty, data) = match rng.below(100) {
                0..30 => (
                    "writing.keystroke",
                    json!({"keystrokes": 5, "words": rng.below(6), "chars": 5}),
                ),
                30..34 => (
                    "writing.keystroke",
                    json!({"keystrokes": 5, "words": 9, "chars": 50, "source": "paste"}),
                ),
                34..40 => ("writing.word_added", json!({"words": rng.below(3)})),
                40..65 => {
                    let mut c = json!({"paragraph": rng.below(5), "offset": rng.below(40),
                        "mode": MODES[rng.below(4) as usize]});
                    if rng.below(2) == 0 {
                        c["selection"] = json!([1, 1 + rng.below(9)]);
                        c["viewport"] = json!([0, rng.below(30)]);
                    }
                    ("collaboration.cursor_moved", c)
                }
                65..70 => ("collaboration.user_joined", json!({})),
                70..75 => ("collaboration.user_left", json!({})),
                75..80 => (
                    "collaboration.comment_added",
                    json!({"comment_id": id.clone(), "paragraph": 1}),
                ),
                80..84 => (
                    "collaboration.edit_applied",
                    json!({"paragraph": 1, "offset": 2, "inserted": 3, "deleted": 0}),
                ),
                84..88 => (
                    "collaboration.presence_updated",
                    json!({"status": STATUSES[rng.below(3) as usize]}),
                ),
                88..91 => (
                    "collaboration.conflict_detected",
                    json!({"conflict_id": "k", "other_user_id": "u9", "paragraph": 1,
                           "severity": "HIGH", "kind": "same_paragraph", "suggestion": "x"}),
                ),
                _ => (
                    "publishing.upload_started",
                    Payload::example("publishing.upload_started")
                        .unwrap()
                        .to_json_value(),
                ),
            };
            let Some(Ok(data)) = Payload::from_json_value(ty, data.clone()) else {
                panic!("bad test payload {ty} {data}");
            };
            let mut e = Event {
                id: id.into(),
                ts,
                user_id: Some(format!("u{u}").into()),
                project_id: [Some("p0".into()), Some("p1".into()), None][rng.below(3) as usize]
                    .clone(),
                document_id: Some(format!("d{d}").into()),
                data,
            };
            match rng.below(40) {
                0 => e.document_id = None,
                1 => e.user_id = None,
                _ => {}
            }
            // The input driver's rule: late if before the watermark at arrival.
            if ts < watermark {
                continue;
            }
            if ts > max_ts {
                max_ts = ts;
                watermark = watermark.max(ts - DISORDER);
            }
            let l = last.entry((u, d)).or_insert(ts);
            *l = (*l).max(ts);
            events.push(e);
        }
        events
    }

    /// The core, told of the watermark at random points (never past an event
    /// still to come), checking that nothing is emitted before the watermark
    /// it was at (what lets the runtime stamp every update at its own epoch).
    fn core(cfg: &PresenceConfig, events: &[Event], seed: u64) -> Vec<Event> {
        let mut rng = SplitMix(seed ^ 0xabcd);
        let mut t = Presence::new(cfg);
        let mut out = Vec::new();
        let (mut max_ts, mut said) = (i64::MIN, i64::MIN);
        let check = |out: &[Event], from: usize, said: i64| {
            for e in &out[from..] {
                assert!(
                    e.ts >= said,
                    "{} emitted at {} behind watermark {said}",
                    e.id,
                    e.ts
                );
            }
        };
        for e in events {
            let from = out.len();
            t.observe(e, &mut out);
            check(&out, from, said);
            max_ts = max_ts.max(e.ts);
            if rng.below(3) == 0 {
                // Like the frontier: an epoch boundary at or before the watermark.
                let w = max_ts - DISORDER - rng.below(300);
                let w = w - w.rem_euclid(100);
                if w > said {
                    let from = out.len();
                    t.advance_to(w, &mut out);
                    check(&out, from, said);
                    said = w;
                }
            }
        }
        t.flush(&mut out);
        assert_eq!((t.state_size(), t.pending_timers()), (0, 0));
        sorted(out)
    }

    #[test]
    fn matches_a_naive_reference_on_random_streams() {
        let configs = [
            small(),
            PresenceConfig {
                cursor_interval: Duration::ZERO,
                ..small()
            },
            PresenceConfig {
                away_after: Duration::from_secs(15),
                ..small()
            },
        ];
        for (c, cfg) in configs.iter().enumerate() {
            for seed in 0..20 {
                let events = random_stream(seed * 31 + c as u64, 600, cfg);
                let want = naive(cfg, &events);
                let got = core(cfg, &events, seed);
                assert!(want.len() > 50, "seed {seed}: too few updates to mean much");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g, w, "config {c} seed {seed}: update {i}");
                }
                assert_eq!(got.len(), want.len(), "config {c} seed {seed}");
            }
        }
    }

    #[test]
    fn random_streams_cross_every_threshold() {
        // The reference test means something only if its streams reach every
        // kind of update, and put events exactly on the thresholds.
        let cfg = small();
        let mut seen = std::collections::BTreeSet::new();
        let mut typing = false;
        let mut exactly_at = 0;
        for seed in 0..20 {
            let events = random_stream(seed * 31, 600, &cfg);
            let mut last: HashMap<(&str, &str), i64> = HashMap::default();
            for e in &events {
                if let (Some(u), Some(d)) = (e.user_id.as_deref(), e.document_id.as_deref()) {
                    let l = last.entry((u, d)).or_insert(e.ts);
                    if [5_000, 15_000].contains(&(e.ts - *l)) {
                        exactly_at += 1;
                    }
                    *l = (*l).max(e.ts);
                }
            }
            for e in naive(&cfg, &events) {
                let p = presence(&e);
                seen.insert(status_name(p.status));
                typing |= p.typing_wpm.is_some();
            }
        }
        assert_eq!(seen.len(), 3, "statuses seen: {seen:?}");
        assert!(typing, "typing never seen");
        assert!(
            exactly_at > 20,
            "only {exactly_at} events exactly at a threshold"
        );
    }

    // ---- in the runtime -----------------------------------------------------------------

    #[test]
    fn same_output_with_one_or_two_workers_and_any_batch_size() {
        for seed in [3_u64, 17] {
            let cfg = small();
            let events = random_stream(seed, 800, &cfg);
            let want = core(&cfg, &events, seed);
            for workers in [1, 2] {
                for batch in [1, 7, 1000] {
                    let out = in_dataflow(&cfg, &events, workers, batch);
                    assert_eq!(
                        out.len(),
                        want.len(),
                        "seed {seed}, {workers} workers, batch {batch}"
                    );
                    assert!(out == want, "seed {seed}, {workers} workers, batch {batch}");
                }
            }
        }
    }

    /// The presence operator alone in the dataflow, fed `events` in that
    /// order (the source's watermark: greatest `ts` − 2 s).
    fn in_dataflow(
        cfg: &PresenceConfig,
        events: &[Event],
        workers: usize,
        batch: usize,
    ) -> Vec<Event> {
        let pc = cfg.clone();
        let (out, late) = crate::dataflow::run_for_test(
            events.to_vec(),
            workers,
            batch,
            &crate::config::Config::default(),
            move |s, c| {
                let time = EventTime {
                    epoch_ms: c.dataflow.epoch.as_millis() as u64,
                    flush_at_end: c.dataflow.flush_at_end,
                };
                s.keyed(Presence::new(&pc), &OperatorCtx::plain(time))
            },
        );
        assert!(
            late.is_empty(),
            "no event of these orders is late: {late:?}"
        );
        out
    }

    /// The same log fetched in other interleavings: every event moved at
    /// most 500 ms of event time (less than the 2 s disorder bound, so none
    /// becomes late), as a pair's writing and collaboration partitions are
    /// when fetched at different moments or replayed after a failover.
    fn interleavings(events: &[Event], seed: u64) -> Vec<Vec<Event>> {
        let mut rng = SplitMix(seed);
        let mut by_time = events.to_vec();
        by_time.sort_by_key(|e| e.ts);
        let mut jittered: Vec<(i64, Event)> = events
            .iter()
            .map(|e| (e.ts + rng.below(500), e.clone()))
            .collect();
        jittered.sort_by_key(|(k, _)| *k);
        vec![
            events.to_vec(),
            by_time,
            jittered.into_iter().map(|(_, e)| e).collect(),
        ]
    }

    #[test]
    fn in_event_time_order_any_interleaving_gives_the_same_updates_in_arrival_order_not() {
        let mut arrival_differs = false;
        for seed in [5_u64, 29] {
            let cfg = PresenceConfig {
                order: Order::EventTime,
                ..small()
            };
            let events = random_stream(seed, 800, &cfg);
            let orders = interleavings(&events, seed);
            let sorted = |mut v: Vec<Event>| {
                v.sort_by(|a, b| a.id.cmp(&b.id));
                v
            };
            let want = sorted(in_dataflow(&cfg, &orders[0], 1, 1000));
            assert!(want.len() > 50, "seed {seed}: too few updates to mean much");
            for (o, events) in orders.iter().enumerate() {
                for (workers, batch) in [(1, 1), (2, 7), (2, 1000)] {
                    let got = sorted(in_dataflow(&cfg, events, workers, batch));
                    assert_eq!(
                        got.len(),
                        want.len(),
                        "seed {seed}, order {o}, {workers} workers, batch {batch}"
                    );
                    assert!(
                        got == want,
                        "seed {seed}, order {o}, {workers} workers, batch {batch}"
                    );
                }
            }
            // What the setting is for: arrival order follows the interleaving.
            let live = small();
            let first = sorted(in_dataflow(&live, &orders[0], 1, 1000));
            arrival_differs |= orders[1..]
                .iter()
                .any(|o| sorted(in_dataflow(&live, o, 1, 1000)) != first);
        }
        assert!(
            arrival_differs,
            "arrival order gave the same updates for every interleaving: the test shows nothing"
        );
    }

    /// Through the `Core` interface, as the runtime drives it: the record,
    /// then (maybe) a watermark.
    fn feed(t: &mut Presence, e: &Event, watermark: Option<i64>) -> Vec<Event> {
        let mut out = Vec::new();
        let r = Record {
            seq: 0,
            event: std::sync::Arc::new(e.clone()),
        };
        if <Presence as Core>::wants(&r) {
            Core::observe(t, &r, &mut out);
        }
        if let Some(w) = watermark {
            Core::advance_to(t, w, &mut out);
        }
        out
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let configs = [
            small(),
            PresenceConfig {
                away_after: Duration::from_secs(15),
                ..small()
            },
        ];
        // What the snapshots held, over all seeds: every part of a pair's state.
        let (mut held_cursor, mut held_typing, mut held_away) = (false, false, false);
        for (c, cfg) in configs.iter().enumerate() {
            for seed in 0..10 {
                let events = random_stream(seed * 7 + 100 + c as u64, 600, cfg);
                let mut rng = SplitMix(seed ^ 0x5eed);
                let (mut max_ts, mut said) = (i64::MIN, i64::MIN);
                // Like the frontier: epoch boundaries behind the disorder bound.
                let mut watermarks: Vec<Option<i64>> = Vec::new();
                for e in &events {
                    max_ts = max_ts.max(e.ts);
                    let w = max_ts - DISORDER;
                    let w = w - w.rem_euclid(100);
                    let tick = rng.below(3) == 0 && w > said;
                    if tick {
                        said = w;
                    }
                    watermarks.push(tick.then_some(w));
                }
                let half = events.len() / 2;
                let mut before = Presence::new(cfg);
                for (e, w) in events[..half].iter().zip(&watermarks) {
                    feed(&mut before, e, *w);
                }
                let bytes = bincode::serialize(&before).expect("serializes");
                let mut after: Presence = bincode::deserialize(&bytes).expect("deserializes");
                assert!(
                    before.state_size() > 0,
                    "config {c} seed {seed}: empty snapshot"
                );
                for p in before.docs.values().flat_map(|u| u.values()) {
                    held_cursor |= p.cursor.is_some();
                    held_typing |= !p.typing.is_empty();
                    held_away |= p.status == PresenceStatus::Away;
                }
                assert_eq!(
                    (after.state_size(), after.pending_timers()),
                    (before.state_size(), before.pending_timers())
                );
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for (e, w) in events[half..].iter().zip(&watermarks[half..]) {
                    a.extend(feed(&mut before, e, *w));
                    b.extend(feed(&mut after, e, *w));
                    assert_eq!(
                        (after.state_size(), after.pending_timers()),
                        (before.state_size(), before.pending_timers())
                    );
                }
                Core::flush(&mut before, &mut a);
                Core::flush(&mut after, &mut b);
                assert!(a.len() > 20, "config {c} seed {seed}: too few updates");
                assert!(
                    a == b,
                    "config {c} seed {seed}: outputs differ after a restore"
                );
                assert_eq!(Core::state_size(&after), Core::state_size(&before));
            }
        }
        assert!(
            held_cursor && held_typing && held_away,
            "snapshots held cursor {held_cursor}, typing {held_typing}, away {held_away}"
        );
    }
}
