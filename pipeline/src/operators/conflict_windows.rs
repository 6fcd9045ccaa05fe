//! Conflict windows between co-editors, per document: *predicted* from where
//! collaborators are working, before their edits collide.
//!
//! **Where a user is.** Each user of a document has one position, set by:
//! - `collaboration.cursor_moved` in an editing mode (`conflicts.editing_modes`,
//!   default `edit` and `review`, since a review suggests changes to the text):
//!   its paragraph and selection. In `comment` or `navigate` mode the user is
//!   reading or annotating, not changing text: the position is cleared (the
//!   user is "not editing"), which ends their conflicts with resolution
//!   `stopped_editing`.
//! - `collaboration.edit_applied`: its paragraph, no selection (an edit
//!   replaces the selection). It counts whatever the cursor's mode.
//! - `collaboration.user_left`: clears the position; conflicts end with
//!   resolution `user_left`.
//!
//! `comment_added` does not place the user: a comment anchors to a paragraph
//! without changing its text, so it cannot collide with an edit.
//! `user_joined`, `presence_updated` (derived from cursors by the presence
//! operator: counting it would count every cursor twice) and every other
//! event are ignored, as are events without a user or a document.
//! An event older than the user's current position (`ts <` its `ts`; out of
//! order within the disorder bound) is stale and ignored; at equal times the
//! later arrival wins.
//!
//! **When two users conflict.** Two *different* users' positions, at times
//! `tu` and `tv`, conflict when they are within the window of each other
//! (`|tu - tv| <= window`, inclusive: exactly `window` apart conflicts, 1 ms
//! more does not) and:
//! - same paragraph and both selections overlap → HIGH `overlapping_selection`
//!   (selections are half-open `[start, end)` after ordering their ends, so
//!   `[0,5]` and `[5,9]` touch without overlapping; an empty selection is a
//!   plain cursor);
//! - same paragraph otherwise → HIGH `same_paragraph`;
//! - paragraphs one apart → MEDIUM `adjacent_paragraph`; the conflict's
//!   `paragraph` is the lower of the two (the boundary they share);
//! - anything farther apart → no conflict.
//!
//! **Lifecycle, per pair** (a pair has at most one open conflict: each user
//! has one position). A conflict is identified by (pair, paragraph,
//! severity); its `kind` is the one at detection (a same-paragraph conflict
//! whose selections come to overlap stays the same HIGH conflict).
//! - *Detected* when a position of either user makes the pair conflict and
//!   no conflict with that identity is open: ts = the event's ts. Deadline =
//!   the later of the two positions + window.
//! - A new position with the same identity continues it (never detected
//!   twice); if it is within the window of the other's position, the
//!   deadline moves to the later position + window.
//! - A new position with another identity (or none) *resolves* it at the
//!   event's ts (never before its detection): `escalated` when the pair now
//!   conflicts at a higher severity (MEDIUM → HIGH is a new conflict with a
//!   new id, so HIGH is notified as HIGH), `user_left`, `stopped_editing`,
//!   else `moved_apart`. A new conflict is then detected if the new relation
//!   is one.
//! - *Window passed*: resolved `timeout` at ts = deadline, when the frontier
//!   passes it (`frontier > deadline`: a position at exactly the deadline
//!   could still extend it) — or, equally, when a position of either user
//!   later than the deadline arrives first. The second rule is what keeps
//!   the result independent of when the frontier happens to be seen.
//! - `duration_ms` = resolution ts − detection ts.
//!
//! **Outputs.** Each detection and each resolution is emitted once *per user
//! of the pair*, with `user_id` = that user (the recipient) and
//! `other_user_id` = the other one, so each user gets their own suggestion on
//! their own channel; both carry the same `conflict_id` =
//! `derived_id("conflict", [document, user a, user b (sorted), paragraph,
//! detecting event id])`. Event ids: `derived_id("conflict_detected" |
//! "conflict_resolved", [conflict_id, recipient])`. `document_id` is the
//! document; `project_id` is the document's last project_id as of the
//! detection (remembered per document, forgotten once nothing of the document
//! is live), and the resolution carries the detection's. Suggestions name the
//! other user and the paragraph index as in the payload (0-based): "u2 is
//! editing paragraph 14", "u2 is editing paragraph 15, next to yours", "u2
//! has selected the same text in paragraph 14".
//!
//! **Determinism.** Live: detections and moves are emitted as events are
//! processed, in per-document arrival order (the Exchange is by document).
//! Outputs depend on that order only, never on batching, on the number of
//! workers, or on when the frontier is seen: the frontier only does early
//! what the pair's next event would do (expire deadlines already passed) and
//! drops state no future event can touch.
//!
//! **State.** Per document: positions, open conflicts and the project id.
//! A position is dropped once the frontier is past `ts + window` and it is in
//! no open conflict; a conflict once resolved; a document once empty.

use crate::operators::{derived_id, stable_hash};
use crate::runtime::Record;
use crate::runtime::{Core, Order};
use foldhash::HashMap;
use schemas::Event;
use schemas::payload::{
    ConflictDetected, ConflictKind, ConflictResolved, ConflictSeverity, EditMode, Payload,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Settings of the conflict-window operator (`[conflicts]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictWindowsConfig {
    /// Two positions at most this far apart in event time can conflict, and
    /// a conflict ends this long after its later position (default 30 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub window: Duration,
    /// `cursor_moved` modes that place the user as editing (default
    /// `["edit", "review"]`); in other modes the cursor clears the position.
    pub editing_modes: Vec<EditMode>,
}

impl Default for ConflictWindowsConfig {
    fn default() -> Self {
        ConflictWindowsConfig {
            window: Duration::from_secs(30),
            editing_modes: vec![EditMode::Edit, EditMode::Review],
        }
    }
}

/// Where a user is editing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    paragraph: i64,
    /// Half-open `[start, end)`, `start < end`; `None` for a plain cursor.
    selection: Option<(i64, i64)>,
}

/// A user's latest position in a document. `place` is `None` once they
/// left or stopped editing: the slot stays (until the frontier passes `ts +
/// window`) so that older events of theirs are still recognised as stale.
#[derive(Serialize, Deserialize)]
struct Slot {
    ts: i64,
    place: Option<Place>,
}

/// How two places conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Relation {
    paragraph: i64,
    severity: ConflictSeverity,
    kind: ConflictKind,
}

fn relation(a: Option<Place>, b: Option<Place>) -> Option<Relation> {
    let (a, b) = (a?, b?);
    let (paragraph, severity, kind) = if a.paragraph == b.paragraph {
        let overlap = matches!((a.selection, b.selection),
            (Some((s1, e1)), Some((s2, e2))) if s1.max(s2) < e1.min(e2));
        let kind = if overlap {
            ConflictKind::OverlappingSelection
        } else {
            ConflictKind::SameParagraph
        };
        (a.paragraph, ConflictSeverity::High, kind)
    } else if a.paragraph.abs_diff(b.paragraph) == 1 {
        (
            a.paragraph.min(b.paragraph),
            ConflictSeverity::Medium,
            ConflictKind::AdjacentParagraph,
        )
    } else {
        return None;
    };
    Some(Relation {
        paragraph,
        severity,
        kind,
    })
}

fn rank(s: ConflictSeverity) -> u8 {
    match s {
        ConflictSeverity::Low => 0,
        ConflictSeverity::Medium => 1,
        ConflictSeverity::High => 2,
    }
}

/// An open conflict of a pair.
#[derive(Serialize, Deserialize)]
struct Open {
    conflict_id: String,
    paragraph: i64,
    severity: ConflictSeverity,
    detected_ts: i64,
    /// Resolved `timeout` at this time once nothing extended it.
    deadline: i64,
    project_id: Option<schemas::Text>,
}

#[derive(Default, Serialize, Deserialize)]
struct Doc {
    slots: BTreeMap<String, Slot>,
    /// Keyed by the pair, sorted.
    conflicts: BTreeMap<(String, String), Open>,
    /// Last project id seen, forgotten when the document goes dormant.
    project_id: Option<schemas::Text>,
    /// This document's entry in `ConflictWindows::timers`.
    wake: Option<i64>,
}

impl Doc {
    /// When the frontier must next look at this document: the earliest
    /// deadline, or the earliest time a slot held by no conflict can go.
    fn next_wake(&self, window_ms: i64) -> Option<i64> {
        let held = |u: &String| self.conflicts.keys().any(|(a, b)| a == u || b == u);
        let deadlines = self.conflicts.values().map(|c| c.deadline);
        let slots = self
            .slots
            .iter()
            .filter(|(u, _)| !held(u))
            .map(|(_, s)| s.ts.saturating_add(window_ms));
        deadlines.chain(slots).min()
    }
}

/// The pure core. Feed each document's events in arrival order.
///
/// Serializable as a whole (checkpoints): it holds no config struct, only
/// the window in ms and the editing modes, and no `Event`.
#[derive(Serialize, Deserialize)]
pub struct ConflictWindows {
    window_ms: i64,
    editing_modes: Vec<EditMode>,
    docs: HashMap<String, Doc>,
    /// (wake time, document): documents with something to expire or drop
    /// once the frontier is past the wake time. One entry per document.
    timers: BTreeSet<(i64, String)>,
}

impl ConflictWindows {
    pub fn new(config: &ConflictWindowsConfig) -> ConflictWindows {
        ConflictWindows {
            window_ms: config.window.as_millis().min(i64::MAX as u128) as i64,
            editing_modes: config.editing_modes.clone(),
            docs: HashMap::default(),
            timers: BTreeSet::new(),
        }
    }

    /// Documents, positions and open conflicts held (bounded by what is
    /// live within one window).
    pub fn state_size(&self) -> usize {
        self.docs
            .values()
            .map(|d| 1 + d.slots.len() + d.conflicts.len())
            .sum()
    }

    /// Takes one event (in its document's arrival order); pushes the
    /// detections and resolutions it causes.
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Event>) {
        let (Some(user), Some(doc_id)) = (e.user_id.as_deref(), e.document_id.as_deref()) else {
            return;
        };
        let (place, gone) = match &e.data {
            Payload::CollaborationCursorMoved(c) if self.editing_modes.contains(&c.mode) => (
                Some(Place {
                    paragraph: c.paragraph,
                    selection: c.selection.as_deref().and_then(half_open),
                }),
                "",
            ),
            Payload::CollaborationCursorMoved(_) => (None, "stopped_editing"),
            Payload::CollaborationEditApplied(a) => (
                Some(Place {
                    paragraph: a.paragraph,
                    selection: None,
                }),
                "",
            ),
            Payload::CollaborationUserLeft(_) => (None, "user_left"),
            _ => return,
        };
        let t = e.ts;
        let w = self.window_ms;
        if !self.docs.contains_key(doc_id) {
            self.docs.insert(doc_id.to_owned(), Doc::default());
        }
        let Some(doc) = self.docs.get_mut(doc_id) else {
            return;
        };
        if doc.slots.get(user).is_some_and(|s| s.ts > t) {
            return; // stale: the user has a newer position already
        }
        // Nothing of the document is live at `t`: it is as if it had been
        // dropped (which the frontier may or may not have done yet), so its
        // project is forgotten either way.
        let dormant = doc.slots.values().all(|s| s.ts.saturating_add(w) < t)
            && doc.conflicts.values().all(|c| c.deadline < t);
        if dormant {
            doc.project_id = None;
        }
        if e.project_id.is_some() {
            doc.project_id.clone_from(&e.project_id);
        }
        doc.slots.insert(user.to_owned(), Slot { ts: t, place });

        // Only users near in time, or already in conflict with this one, can
        // be affected: skip the others without allocating.
        let in_conflict = doc.conflicts.keys().any(|(a, b)| a == user || b == user);
        let others: Vec<(String, i64, Option<Place>)> = doc
            .slots
            .iter()
            .filter(|(v, s)| v.as_str() != user && (in_conflict || t.abs_diff(s.ts) <= w as u64))
            .map(|(v, s)| (v.clone(), s.ts, s.place))
            .collect();
        for (v, tv, vplace) in others {
            let key = if user < v.as_str() {
                (user.to_owned(), v.clone())
            } else {
                (v.clone(), user.to_owned())
            };
            let mut open = doc.conflicts.remove(&key);
            // Past its deadline: the frontier may already have resolved it
            // as `timeout` at the deadline; do the same whatever it did.
            if let Some(c) = open.take_if(|c| c.deadline < t) {
                resolved(doc_id, &key, &c, c.deadline, "timeout", out);
            }
            let rel = relation(place, vplace);
            let near = t.abs_diff(tv) <= w as u64;
            match open {
                Some(mut c)
                    if rel.is_some_and(|r| {
                        r.paragraph == c.paragraph && r.severity == c.severity
                    }) =>
                {
                    if near {
                        c.deadline = c.deadline.max(t.max(tv).saturating_add(w));
                    }
                    doc.conflicts.insert(key, c);
                    continue;
                }
                Some(c) => {
                    let why = match rel {
                        Some(r) if near && rank(r.severity) > rank(c.severity) => "escalated",
                        _ if place.is_none() => gone,
                        _ => "moved_apart",
                    };
                    resolved(doc_id, &key, &c, t.max(c.detected_ts), why, out);
                }
                None => {}
            }
            if let Some(r) = rel.filter(|_| near) {
                let conflict_id = derived_id(
                    "conflict",
                    &[doc_id, &key.0, &key.1, &r.paragraph.to_string(), &e.id],
                );
                let c = Open {
                    conflict_id: conflict_id.into(),
                    paragraph: r.paragraph,
                    severity: r.severity,
                    detected_ts: t,
                    deadline: t.max(tv).saturating_add(w),
                    project_id: doc.project_id.clone(),
                };
                let paragraph_of = |p: Option<Place>| p.map_or(r.paragraph, |p| p.paragraph);
                detected(doc_id, user, &v, paragraph_of(vplace), r, &c, t, out);
                detected(doc_id, &v, user, paragraph_of(place), r, &c, t, out);
                doc.conflicts.insert(key, c);
            }
        }
        reschedule(&mut self.timers, doc_id, doc, w);
    }

    /// No event before `watermark` (ms) will come: resolves the conflicts
    /// whose deadline it passed (`timeout`, ts = deadline) and drops what no
    /// future event can touch.
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        let w = self.window_ms;
        while let Some((wake, _)) = self.timers.first()
            && *wake < watermark
        {
            let Some((_, doc_id)) = self.timers.pop_first() else {
                break;
            };
            let Some(doc) = self.docs.get_mut(&doc_id) else {
                continue;
            };
            doc.wake = None;
            let expired: Vec<(String, String)> = doc
                .conflicts
                .iter()
                .filter(|(_, c)| c.deadline < watermark)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                if let Some(c) = doc.conflicts.remove(&key) {
                    resolved(&doc_id, &key, &c, c.deadline, "timeout", out);
                }
            }
            let conflicts = &doc.conflicts;
            doc.slots.retain(|u, s| {
                s.ts.saturating_add(w) >= watermark
                    || conflicts.keys().any(|(a, b)| a == u || b == u)
            });
            if doc.slots.is_empty() && doc.conflicts.is_empty() {
                self.docs.remove(&doc_id);
            } else {
                reschedule(&mut self.timers, &doc_id, doc, w);
            }
        }
    }

    /// End of input: every deadline passes.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.advance_to(i64::MAX, out);
    }
}

/// A selection `[start, end]` as a half-open range; `None` when empty or
/// malformed (then it is a plain cursor).
fn half_open(sel: &[i64]) -> Option<(i64, i64)> {
    match *sel {
        [a, b] if a != b => Some((a.min(b), a.max(b))),
        _ => None,
    }
}

fn reschedule(timers: &mut BTreeSet<(i64, String)>, doc_id: &str, doc: &mut Doc, window_ms: i64) {
    let next = doc.next_wake(window_ms);
    if next == doc.wake {
        return;
    }
    if let Some(old) = doc.wake.take() {
        timers.remove(&(old, doc_id.to_owned()));
    }
    if let Some(t) = next {
        timers.insert((t, doc_id.to_owned()));
    }
    doc.wake = next;
}

fn suggestion(other: &str, other_paragraph: i64, r: Relation) -> String {
    match r.kind {
        ConflictKind::SameParagraph => format!("{other} is editing paragraph {}", r.paragraph),
        ConflictKind::OverlappingSelection => {
            format!(
                "{other} has selected the same text in paragraph {}",
                r.paragraph
            )
        }
        ConflictKind::AdjacentParagraph => {
            format!("{other} is editing paragraph {other_paragraph}, next to yours")
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn detected(
    doc_id: &str,
    to: &str,
    other: &str,
    other_paragraph: i64,
    r: Relation,
    c: &Open,
    ts: i64,
    out: &mut Vec<Event>,
) {
    out.push(Event {
        id: derived_id("conflict_detected", &[&c.conflict_id, to]),
        ts,
        user_id: Some(to.into()),
        project_id: c.project_id.clone(),
        document_id: Some(doc_id.into()),
        data: Payload::CollaborationConflictDetected(Box::new(ConflictDetected {
            conflict_id: c.conflict_id.clone(),
            other_user_id: other.to_owned(),
            paragraph: r.paragraph,
            severity: r.severity,
            kind: r.kind,
            suggestion: suggestion(other, other_paragraph, r),
        })),
    });
}

/// Both users' `conflict_resolved`.
fn resolved(
    doc_id: &str,
    pair: &(String, String),
    c: &Open,
    ts: i64,
    resolution: &str,
    out: &mut Vec<Event>,
) {
    for (to, other) in [(&pair.0, &pair.1), (&pair.1, &pair.0)] {
        out.push(Event {
            id: derived_id("conflict_resolved", &[&c.conflict_id, to]),
            ts,
            user_id: Some(to.clone().into()),
            project_id: c.project_id.clone(),
            document_id: Some(doc_id.into()),
            data: Payload::CollaborationConflictResolved(Box::new(ConflictResolved {
                conflict_id: c.conflict_id.clone(),
                other_user_id: other.clone(),
                paragraph: c.paragraph,
                duration_ms: ts - c.detected_ts,
                resolution: Some(resolution.to_owned()),
            })),
        });
    }
}

/// Live (per-document arrival order) and keyed by document, in the
/// operator runtime: every position of a document meets on one worker.
impl Core for ConflictWindows {
    type Item = Record;
    const NAME: &'static str = "ConflictWindows";
    const ORDER: Order = Order::Arrival;

    /// Only what can place or clear a user (the core ignores the rest), so
    /// the rest does not cross workers.
    fn wants(r: &Record) -> bool {
        let e = &r.event;
        e.user_id.is_some()
            && e.document_id.is_some()
            && matches!(
                e.data,
                Payload::CollaborationCursorMoved(_)
                    | Payload::CollaborationEditApplied(_)
                    | Payload::CollaborationUserLeft(_)
            )
    }

    fn key(r: &Record) -> u64 {
        stable_hash(r.event.document_id.as_deref().unwrap_or(""))
    }

    fn observe(&mut self, r: &Record, out: &mut Vec<Event>) {
        ConflictWindows::observe(self, &r.event, out);
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        ConflictWindows::advance_to(self, watermark, out);
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        ConflictWindows::flush(self, out);
    }

    fn state_size(&self) -> usize {
        ConflictWindows::state_size(self)
    }

    /// Unused (arrival order); what `Order::EventTime` would need.
    fn sort_epoch(records: &mut [Record]) {
        records.sort_by_key(|r| (r.event.ts, r.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::naive;
    use super::*;
    use schemas::payload::{CommentAdded, CursorMoved, EditApplied, UserLeft};

    const W: i64 = 30_000;

    fn ev(id: &str, user: &str, ts: i64, data: Payload) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: Some(user.into()),
            project_id: Some("p1".into()),
            document_id: Some("d1".into()),
            data,
        }
    }

    fn cursor_in(mode: EditMode, paragraph: i64, selection: Option<[i64; 2]>) -> Payload {
        Payload::CollaborationCursorMoved(CursorMoved {
            paragraph,
            offset: 0,
            selection: selection.map(|s| s.to_vec()),
            viewport: None,
            mode,
        })
    }

    fn cursor(paragraph: i64, selection: Option<[i64; 2]>) -> Payload {
        cursor_in(EditMode::Edit, paragraph, selection)
    }

    fn edit(paragraph: i64) -> Payload {
        Payload::CollaborationEditApplied(EditApplied {
            paragraph,
            offset: 0,
            inserted: 1,
            deleted: 0,
        })
    }

    fn left() -> Payload {
        Payload::CollaborationUserLeft(UserLeft { reason: None })
    }

    /// A readable digest of an output event.
    #[derive(Debug, PartialEq)]
    enum Out {
        /// (ts, recipient, other, paragraph, severity, kind)
        D(i64, String, String, i64, ConflictSeverity, ConflictKind),
        /// (ts, recipient, other, paragraph, duration, resolution)
        R(i64, String, String, i64, i64, String),
    }
    use ConflictKind::*;
    use ConflictSeverity::*;

    fn d(ts: i64, to: &str, other: &str, p: i64, s: ConflictSeverity, k: ConflictKind) -> Out {
        Out::D(ts, to.into(), other.into(), p, s, k)
    }

    fn r(ts: i64, to: &str, other: &str, p: i64, dur: i64, why: &str) -> Out {
        Out::R(ts, to.into(), other.into(), p, dur, why.into())
    }

    fn digest(out: &mut Vec<Event>) -> Vec<Out> {
        out.drain(..)
            .map(|e| {
                let to = e.user_id.as_deref().map(String::from).unwrap();
                match e.data {
                    Payload::CollaborationConflictDetected(c) => {
                        Out::D(e.ts, to, c.other_user_id, c.paragraph, c.severity, c.kind)
                    }
                    Payload::CollaborationConflictResolved(c) => Out::R(
                        e.ts,
                        to,
                        c.other_user_id,
                        c.paragraph,
                        c.duration_ms,
                        c.resolution.unwrap(),
                    ),
                    other => panic!("unexpected output {other:?}"),
                }
            })
            .collect()
    }

    fn tracker() -> ConflictWindows {
        ConflictWindows::new(&ConflictWindowsConfig::default())
    }

    /// Feeds `events` and returns the digest of what they emitted.
    fn run(t: &mut ConflictWindows, events: &[Event]) -> Vec<Out> {
        let mut out = Vec::new();
        for e in events {
            t.observe(e, &mut out);
        }
        digest(&mut out)
    }

    #[test]
    fn same_paragraph_within_the_window_is_high_and_told_to_both_users() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.observe(&ev("a", "u1", 1_000, cursor(14, None)), &mut out);
        assert!(out.is_empty(), "one user alone is no conflict");
        t.observe(&ev("b", "u2", 5_000, edit(14)), &mut out);
        assert_eq!(out.len(), 2);
        let ids: Vec<_> = out.iter().map(|e| e.id.clone()).collect();
        let Payload::CollaborationConflictDetected(c) = &out[0].data else {
            panic!()
        };
        assert_eq!(c.suggestion, "u1 is editing paragraph 14");
        assert_eq!(out[0].user_id.as_deref(), Some("u2"));
        assert_eq!(out[0].document_id.as_deref(), Some("d1"));
        assert_eq!(out[0].project_id.as_deref(), Some("p1"));
        let Payload::CollaborationConflictDetected(c2) = &out[1].data else {
            panic!()
        };
        assert_eq!(
            c.conflict_id, c2.conflict_id,
            "one conflict, two recipients"
        );
        assert_eq!(c2.suggestion, "u2 is editing paragraph 14");
        assert_ne!(ids[0], ids[1]);
        assert_eq!(
            digest(&mut out),
            [
                d(5_000, "u2", "u1", 14, High, SameParagraph),
                d(5_000, "u1", "u2", 14, High, SameParagraph)
            ]
        );
    }

    #[test]
    fn positions_exactly_the_window_apart_conflict_one_ms_more_do_not() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(3, None)),
                ev("b", "u2", W, cursor(3, None)),
            ],
        );
        assert_eq!(got.len(), 2);
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(3, None)),
                ev("b", "u2", W + 1, cursor(3, None)),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn adjacent_paragraphs_are_medium_at_the_lower_paragraph_and_far_ones_nothing() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.observe(&ev("a", "u1", 0, cursor(7, None)), &mut out);
        t.observe(&ev("b", "u2", 10, cursor(6, None)), &mut out);
        let Payload::CollaborationConflictDetected(c) = &out[1].data else {
            panic!()
        };
        assert_eq!(c.suggestion, "u2 is editing paragraph 6, next to yours");
        assert_eq!(
            digest(&mut out),
            [
                d(10, "u2", "u1", 6, Medium, AdjacentParagraph),
                d(10, "u1", "u2", 6, Medium, AdjacentParagraph)
            ]
        );
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(7, None)),
                ev("b", "u2", 10, cursor(9, None)),
            ],
        );
        assert!(got.is_empty(), "two paragraphs apart: {got:?}");
    }

    #[test]
    fn overlapping_selections_are_high_and_touching_ones_are_just_same_paragraph() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, Some([0, 6]))),
                ev("b", "u2", 10, cursor(2, Some([9, 5]))), // backwards selection
            ],
        );
        assert_eq!(got[0], d(10, "u2", "u1", 2, High, OverlappingSelection));
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, Some([0, 5]))),
                ev("b", "u2", 10, cursor(2, Some([5, 9]))),
            ],
        );
        assert_eq!(got[0], d(10, "u2", "u1", 2, High, SameParagraph));
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, Some([3, 3]))), // empty: a cursor
                ev("b", "u2", 10, cursor(2, Some([0, 9]))),
            ],
        );
        assert_eq!(got[0], d(10, "u2", "u1", 2, High, SameParagraph));
    }

    #[test]
    fn a_single_user_never_conflicts_with_themselves() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, Some([0, 6]))),
                ev("b", "u1", 10, edit(2)),
                ev("c", "u1", 20, cursor(2, Some([0, 6]))),
            ],
        );
        assert!(got.is_empty());
    }

    #[test]
    fn detection_is_not_repeated_while_the_conflict_lasts() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, None)),
                ev("b", "u2", 10, cursor(2, None)),
                ev("c", "u1", 20, edit(2)),
                ev("d", "u2", 30, cursor(2, Some([1, 4]))),
                // selections now overlap: still the same HIGH conflict
                ev("e", "u1", 40, cursor(2, Some([2, 3]))),
            ],
        );
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn moving_apart_resolves_with_its_duration() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.observe(&ev("a", "u1", 1_000, cursor(2, None)), &mut out);
        t.observe(&ev("b", "u2", 2_000, cursor(2, None)), &mut out);
        let Payload::CollaborationConflictDetected(c) = &out[0].data else {
            panic!()
        };
        let id = c.conflict_id.clone();
        out.clear();
        t.observe(&ev("c", "u1", 9_500, cursor(5, None)), &mut out);
        let Payload::CollaborationConflictResolved(c) = &out[0].data else {
            panic!()
        };
        assert_eq!(c.conflict_id, id, "the resolution names its conflict");
        assert_eq!(
            digest(&mut out),
            [
                r(9_500, "u1", "u2", 2, 7_500, "moved_apart"),
                r(9_500, "u2", "u1", 2, 7_500, "moved_apart")
            ]
        );
        assert!(run(&mut t, &[ev("d", "u2", 9_600, cursor(7, None))]).is_empty());
    }

    #[test]
    fn the_window_passing_resolves_at_the_deadline_of_the_later_position() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.observe(&ev("a", "u1", 1_000, cursor(2, None)), &mut out);
        t.observe(&ev("b", "u2", 4_000, cursor(2, None)), &mut out);
        out.clear();
        let deadline = 4_000 + W;
        t.advance_to(deadline, &mut out);
        assert!(
            out.is_empty(),
            "a position at the deadline could still extend it"
        );
        t.advance_to(deadline + 1, &mut out);
        assert_eq!(
            digest(&mut out),
            [
                r(deadline, "u1", "u2", 2, deadline - 4_000, "timeout"),
                r(deadline, "u2", "u1", 2, deadline - 4_000, "timeout")
            ]
        );
        assert_eq!(t.state_size(), 0, "nothing of the document is left");
    }

    #[test]
    fn a_position_within_the_window_extends_the_deadline() {
        let mut t = tracker();
        let mut out = Vec::new();
        t.observe(&ev("a", "u1", 0, cursor(2, None)), &mut out);
        t.observe(&ev("b", "u2", 1_000, cursor(2, None)), &mut out);
        t.observe(&ev("c", "u1", 20_000, edit(2)), &mut out);
        out.clear();
        t.advance_to(1_000 + W + 1, &mut out);
        assert!(out.is_empty());
        t.flush(&mut out);
        assert_eq!(out[0].ts, 20_000 + W);
    }

    #[test]
    fn a_position_past_the_deadline_resolves_by_timeout_at_the_deadline() {
        // Whether the frontier passed the deadline before this event was
        // processed or not, the outcome is the same.
        let events = [
            ev("a", "u1", 0, cursor(2, None)),
            ev("b", "u2", 1_000, cursor(2, None)),
            ev("c", "u1", 1_000 + W + 500, cursor(2, None)),
        ];
        let mut t = tracker();
        let got = run(&mut t, &events);
        let mut t2 = tracker();
        let mut out = Vec::new();
        t2.observe(&events[0], &mut out);
        t2.observe(&events[1], &mut out);
        t2.advance_to(1_000 + W + 100, &mut out);
        t2.observe(&events[2], &mut out);
        assert_eq!(got, digest(&mut out));
        assert_eq!(got[2], r(1_000 + W, "u1", "u2", 2, W, "timeout"));
        assert_eq!(got.len(), 4, "u2's position is too old to conflict again");
    }

    #[test]
    fn user_left_resolves_their_conflicts() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, None)),
                ev("b", "u2", 100, cursor(3, None)),
                ev("c", "u3", 200, cursor(5, None)),
                ev("d", "u2", 1_100, left()),
                ev("e", "u1", 1_200, cursor(3, None)), // u2 is gone
            ],
        );
        assert_eq!(
            got[2..],
            [
                r(1_100, "u1", "u2", 2, 1_000, "user_left"),
                r(1_100, "u2", "u1", 2, 1_000, "user_left")
            ]
        );
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn navigate_and_comment_modes_and_comments_do_not_count_as_editing() {
        let mut t = tracker();
        let comment = Payload::CollaborationCommentAdded(CommentAdded {
            comment_id: "c".into(),
            paragraph: 2,
            mentions: vec![],
            thread_id: None,
        });
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 0, cursor(2, None)),
                ev("b", "u2", 10, cursor_in(EditMode::Navigate, 2, None)),
                ev("c", "u3", 20, cursor_in(EditMode::Comment, 2, Some([0, 9]))),
                ev("d", "u4", 30, comment),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
        // Review suggests changes: it counts; switching to navigate ends it.
        let got = run(
            &mut t,
            &[
                ev("e", "u2", 40, cursor_in(EditMode::Review, 2, None)),
                ev("f", "u2", 50, cursor_in(EditMode::Navigate, 2, None)),
            ],
        );
        assert_eq!(
            got,
            [
                d(40, "u2", "u1", 2, High, SameParagraph),
                d(40, "u1", "u2", 2, High, SameParagraph),
                r(50, "u1", "u2", 2, 10, "stopped_editing"),
                r(50, "u2", "u1", 2, 10, "stopped_editing"),
            ]
        );
    }

    #[test]
    fn medium_becoming_high_is_a_new_conflict() {
        let mut t = tracker();
        let mut out = Vec::new();
        for e in [
            ev("a", "u1", 0, cursor(4, None)),
            ev("b", "u2", 10, cursor(5, None)),
            ev("c", "u2", 30, cursor(4, None)),
        ] {
            t.observe(&e, &mut out);
        }
        let ids: Vec<String> = out
            .iter()
            .map(|e| match &e.data {
                Payload::CollaborationConflictDetected(c) => c.conflict_id.clone(),
                Payload::CollaborationConflictResolved(c) => c.conflict_id.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            digest(&mut out),
            [
                d(10, "u2", "u1", 4, Medium, AdjacentParagraph),
                d(10, "u1", "u2", 4, Medium, AdjacentParagraph),
                r(30, "u1", "u2", 4, 20, "escalated"),
                r(30, "u2", "u1", 4, 20, "escalated"),
                d(30, "u2", "u1", 4, High, SameParagraph),
                d(30, "u1", "u2", 4, High, SameParagraph),
            ]
        );
        assert_eq!(ids[0], ids[3]);
        assert_ne!(ids[0], ids[4], "a new conflict id for the HIGH one");
        // And back to adjacent: the HIGH one ends, a MEDIUM one starts.
        let got = run(&mut t, &[ev("d", "u1", 40, cursor(3, None))]);
        assert_eq!(got[0], r(40, "u1", "u2", 4, 10, "moved_apart"));
        assert_eq!(got[2], d(40, "u1", "u2", 3, Medium, AdjacentParagraph));
    }

    #[test]
    fn a_stale_position_is_ignored() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 1_000, cursor(2, None)),
                ev("b", "u1", 900, cursor(8, None)), // older, arrived later
                ev("c", "u2", 1_100, cursor(2, None)),
            ],
        );
        assert_eq!(got[0], d(1_100, "u2", "u1", 2, High, SameParagraph));
    }

    #[test]
    fn an_older_position_arriving_after_detection_never_gives_a_negative_duration() {
        let mut t = tracker();
        let got = run(
            &mut t,
            &[
                ev("a", "u1", 1_000, cursor(2, None)),
                ev("b", "u2", 1_500, cursor(2, None)),
                ev("c", "u1", 1_200, cursor(9, None)), // newer than u1's, older than the detection
            ],
        );
        assert_eq!(got[2], r(1_500, "u1", "u2", 2, 0, "moved_apart"));
    }

    #[test]
    fn state_is_dropped_once_the_window_has_passed() {
        let mut t = tracker();
        let mut out = Vec::new();
        for i in 0..50 {
            let doc = format!("d{i}");
            for (j, u) in ["u1", "u2"].into_iter().enumerate() {
                let mut e = ev(&format!("e{i}{u}"), u, 1_000 + j as i64, cursor(1, None));
                e.document_id = Some(doc.clone().into());
                t.observe(&e, &mut out);
            }
        }
        assert_eq!(out.len(), 100);
        assert_eq!(
            t.state_size(),
            50 * 4,
            "a document, two positions, one conflict"
        );
        t.advance_to(1_001 + W, &mut out);
        assert_eq!(t.state_size(), 50 * 4);
        t.advance_to(1_002 + W, &mut out);
        assert_eq!(out.len(), 200, "every conflict timed out");
        assert_eq!(t.state_size(), 0);
        // A lone user's position goes too, and so does a left user's mark.
        let got = run(&mut t, &[ev("a", "u1", 5_000_000, left())]);
        assert!(got.is_empty());
        assert_eq!(t.state_size(), 2);
        t.advance_to(5_000_001 + W, &mut out);
        assert_eq!(t.state_size(), 0);
    }

    #[test]
    fn the_project_is_remembered_per_document_and_carried_to_the_resolution() {
        let mut t = tracker();
        let mut out = Vec::new();
        let mut a = ev("a", "u1", 0, cursor(1, None));
        a.project_id = Some("p9".into());
        let mut b = ev("b", "u2", 10, cursor(1, None));
        b.project_id = None;
        t.observe(&a, &mut out);
        t.observe(&b, &mut out);
        t.flush(&mut out);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|e| e.project_id.as_deref() == Some("p9")));
        // Once the document went quiet, its project is forgotten.
        out.clear();
        let mut c = ev("c", "u1", 100_000, cursor(1, None));
        c.project_id = None;
        let mut e = ev("e", "u2", 100_010, cursor(1, None));
        e.project_id = None;
        t.observe(&c, &mut out);
        t.observe(&e, &mut out);
        assert!(out.iter().all(|e| e.project_id.is_none()));
    }

    #[test]
    fn ids_are_deterministic() {
        let events = [
            ev("a", "u1", 0, cursor(1, None)),
            ev("b", "u2", 10, cursor(1, None)),
            ev("c", "u2", 20, cursor(8, None)),
        ];
        let go = || {
            let mut t = tracker();
            let mut out = Vec::new();
            for e in &events {
                t.observe(e, &mut out);
            }
            out
        };
        let (a, b) = (go(), go());
        assert_eq!(a, b);
        let mut ids: Vec<_> = a.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4);
    }

    #[test]
    fn config_reads_from_toml() {
        let c: ConflictWindowsConfig =
            toml::from_str("window = \"10s\"\nediting_modes = [\"edit\"]").unwrap();
        assert_eq!(c.window, Duration::from_secs(10));
        assert_eq!(c.editing_modes, [EditMode::Edit]);
        let c: ConflictWindowsConfig = toml::from_str("").unwrap();
        assert_eq!(c.window, Duration::from_secs(30));
        assert!(toml::from_str::<ConflictWindowsConfig>("windw = 1").is_err());
    }

    // ---- a naive reference, compared on seeded random streams ----------------

    struct SplitMix64(u64);
    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Events in arrival order, never later than `disorder_ms` behind the
    /// newest (so none is late for the input driver).
    fn random_stream(seed: u64, n: usize, disorder_ms: u64) -> Vec<Event> {
        let mut rng = SplitMix64(seed);
        let mut base = 1_000_000i64;
        (0..n)
            .map(|i| {
                base += rng.below(6_000) as i64;
                let ts = base - rng.below(disorder_ms) as i64;
                let user = format!("u{}", rng.below(4));
                let p = rng.below(5) as i64;
                let sel = match rng.below(4) {
                    0 => None,
                    _ => {
                        let a = rng.below(10) as i64;
                        Some([a, rng.below(10) as i64])
                    }
                };
                let data = match rng.below(100) {
                    0..45 => {
                        let mode = match rng.below(10) {
                            0 => EditMode::Navigate,
                            1 => EditMode::Comment,
                            2 => EditMode::Review,
                            _ => EditMode::Edit,
                        };
                        cursor_in(mode, p, sel)
                    }
                    45..80 => edit(p),
                    80..88 => left(),
                    88..95 => Payload::CollaborationCommentAdded(CommentAdded {
                        comment_id: format!("c{i}"),
                        paragraph: p,
                        mentions: vec![],
                        thread_id: None,
                    }),
                    _ => Payload::CollaborationUserJoined(schemas::payload::UserJoined {
                        client: None,
                    }),
                };
                Event {
                    id: format!("e{i}").into(),
                    ts,
                    user_id: Some(user.into()),
                    project_id: match rng.below(3) {
                        0 => None,
                        k => Some(format!("p{k}").into()),
                    },
                    document_id: Some(format!("d{}", rng.below(2)).into()),
                    data,
                }
            })
            .collect()
    }

    fn sorted(mut v: Vec<Event>) -> Vec<Event> {
        v.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
        v
    }

    #[test]
    fn matches_a_naive_reference_on_random_streams() {
        let w = 10_000;
        let config = ConflictWindowsConfig {
            window: Duration::from_millis(w as u64),
            ..ConflictWindowsConfig::default()
        };
        let mut resolutions = std::collections::BTreeMap::<String, usize>::new();
        for seed in 1..=20u64 {
            let events = random_stream(seed, 400, 2_000);
            let mut reference = naive::Reference::default();
            for e in &events {
                reference.observe(e, w);
            }
            reference.finish();
            let expected = sorted(std::mem::take(&mut reference.out));
            // The core, with the frontier seen at random moments (as the
            // watermark allows: newest ts − 2 s), and with no frontier at all.
            let mut rng = SplitMix64(seed ^ 0xABCD);
            for every in [0u64, 1, 3] {
                let mut t = ConflictWindows::new(&config);
                let mut out = Vec::new();
                let mut max_ts = i64::MIN;
                for e in &events {
                    t.observe(e, &mut out);
                    max_ts = max_ts.max(e.ts);
                    if every > 0 && rng.below(every) == 0 {
                        t.advance_to(max_ts - 2_000, &mut out);
                        assert!(t.state_size() <= 2 * (1 + 4 + 6), "bounded state");
                    }
                }
                t.flush(&mut out);
                assert_eq!(t.state_size(), 0);
                let got = sorted(out);
                assert_eq!(got.len(), expected.len(), "seed {seed}, every {every}");
                for (g, x) in got.iter().zip(&expected) {
                    assert_eq!(g, x, "seed {seed}, every {every}");
                }
            }
            for e in &expected {
                if let Payload::CollaborationConflictResolved(c) = &e.data {
                    *resolutions
                        .entry(c.resolution.clone().unwrap())
                        .or_default() += 1;
                }
            }
        }
        // The streams exercise every way a conflict ends.
        for why in [
            "timeout",
            "moved_apart",
            "escalated",
            "user_left",
            "stopped_editing",
        ] {
            assert!(
                resolutions.get(why).is_some_and(|n| *n > 0),
                "{why}: {resolutions:?}"
            );
        }
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        for seed in 1..=10u64 {
            let records: Vec<Record> = random_stream(seed, 400, 2_000)
                .into_iter()
                .enumerate()
                .map(|(i, e)| Record {
                    seq: i as u64,
                    event: std::sync::Arc::new(e),
                })
                .collect();
            let (first, second) = records.split_at(records.len() / 2);
            // Through the `Core` interface, with the watermark following the
            // stream as the runtime would move it.
            let feed = |t: &mut ConflictWindows, rs: &[Record], out: &mut Vec<Event>| {
                let mut max_ts = i64::MIN;
                for (i, r) in rs.iter().enumerate() {
                    if <ConflictWindows as Core>::wants(r) {
                        Core::observe(t, r, out);
                    }
                    max_ts = max_ts.max(r.event.ts);
                    if i % 5 == 4 {
                        Core::advance_to(t, max_ts - 2_000, out);
                    }
                }
            };
            let mut original = tracker();
            let mut before = Vec::new();
            feed(&mut original, first, &mut before);
            assert!(original.state_size() > 0, "seed {seed}: something to save");
            let bytes = bincode::serialize(&original).expect("serialize");
            let mut restored: ConflictWindows = bincode::deserialize(&bytes).expect("deserialize");
            assert_eq!(restored.state_size(), original.state_size(), "seed {seed}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            feed(&mut original, second, &mut a);
            feed(&mut restored, second, &mut b);
            assert!(!a.is_empty(), "seed {seed}");
            assert_eq!(a, b, "seed {seed}: same outputs after the cut");
            assert_eq!(restored.state_size(), original.state_size(), "seed {seed}");
            Core::flush(&mut original, &mut a);
            Core::flush(&mut restored, &mut b);
            assert_eq!(a, b, "seed {seed}: same flush");
            assert_eq!((original.state_size(), restored.state_size()), (0, 0));
        }
    }

    #[test]
    fn the_dataflow_gives_the_same_outputs_whatever_the_workers_and_batches() {
        let config = crate::config::Config::default();
        let disorder = config.dataflow.allowed_disorder.as_millis() as u64;
        let events = random_stream(7, 600, disorder);
        let mut t = tracker();
        let mut expected = Vec::new();
        for e in &events {
            t.observe(e, &mut expected);
        }
        t.flush(&mut expected);
        let expected = sorted(expected);
        assert!(expected.len() > 50, "{}", expected.len());
        let conflicts = ConflictWindowsConfig::default();
        for workers in [1, 2] {
            for batch in [1, 7, 1000] {
                use crate::runtime::EventTime;
                use crate::runtime::{Keyed, OperatorCtx};
                use timely::dataflow::operators::Inspect;
                let c = conflicts.clone();
                let (out, late) = crate::dataflow::run_for_test(
                    events.clone(),
                    workers,
                    batch,
                    &config,
                    move |s, cfg| {
                        let time = EventTime {
                            epoch_ms: cfg.dataflow.epoch.as_millis() as u64,
                            flush_at_end: cfg.dataflow.flush_at_end,
                        };
                        let epoch_ms = time.epoch_ms;
                        let ctx = OperatorCtx::plain(time);
                        s.keyed(ConflictWindows::new(&c), &ctx)
                            .inspect_core(move |event| {
                                if let Ok((stamp, data)) = event {
                                    for e in data {
                                        let own = e.ts.max(0) as u64 / epoch_ms * epoch_ms;
                                        // At or before its own epoch (never after:
                                        // downstream operators rely on it).
                                        assert!(
                                            stamp.iter().all(|t| *t <= own),
                                            "{e:?} stamped {stamp:?}, own epoch {own}"
                                        );
                                    }
                                }
                            })
                    },
                );
                assert!(late.is_empty());
                assert_eq!(out, expected, "workers {workers}, batch {batch}");
            }
        }
    }
}

/// The rules, written out naively: every position ever seen is kept,
/// nothing is dropped, and time only passes at the end.
#[cfg(test)]
mod naive {
    use super::*;
    use ConflictKind::*;
    use ConflictSeverity::*;

    /// Where a user edits: (paragraph, half-open selection), `None` when not editing.
    pub type At = Option<(i64, Option<(i64, i64)>)>;

    pub struct Conflict {
        pub doc: String,
        pub a: String,
        pub b: String,
        pub id: schemas::Text,
        pub paragraph: i64,
        pub high: bool,
        pub since: i64,
        pub until: i64,
        pub project: Option<String>,
    }

    #[derive(Default)]
    pub struct Reference {
        /// (doc, user, ts, Some((paragraph, selection)) when editing)
        pub positions: Vec<(String, String, i64, At)>,
        pub conflicts: Vec<Conflict>,
        pub projects: Vec<(String, Option<String>)>,
        pub out: Vec<Event>,
    }

    fn emit(out: &mut Vec<Event>, c: &Conflict, data: [Payload; 2], ts: i64, kind: &str) {
        for (to, data) in [&c.a, &c.b].into_iter().zip(data) {
            out.push(Event {
                id: derived_id(kind, &[&c.id, to]),
                ts,
                user_id: Some(to.clone().into()),
                project_id: c.project.clone().map(Into::into),
                document_id: Some(c.doc.clone().into()),
                data,
            });
        }
    }

    fn resolve(out: &mut Vec<Event>, c: &Conflict, ts: i64, why: &str) {
        let data = |other: &str| {
            Payload::CollaborationConflictResolved(Box::new(ConflictResolved {
                conflict_id: c.id.to_string(),
                other_user_id: other.to_owned(),
                paragraph: c.paragraph,
                duration_ms: ts - c.since,
                resolution: Some(why.to_owned()),
            }))
        };
        emit(out, c, [data(&c.b), data(&c.a)], ts, "conflict_resolved");
    }

    impl Reference {
        fn latest(&self, doc: &str, user: &str) -> Option<usize> {
            self.positions
                .iter()
                .rposition(|(d, u, _, _)| d == doc && u == user)
        }

        pub fn observe(&mut self, e: &Event, w: i64) {
            let doc = e.document_id.as_deref().map(String::from).unwrap();
            let user = e.user_id.as_deref().map(String::from).unwrap();
            let at = match &e.data {
                Payload::CollaborationCursorMoved(c)
                    if matches!(c.mode, EditMode::Edit | EditMode::Review) =>
                {
                    let sel = match c.selection.as_deref() {
                        Some(&[x, y]) if x < y => Some((x, y)),
                        Some(&[x, y]) if y < x => Some((y, x)),
                        _ => None,
                    };
                    Some((c.paragraph, sel))
                }
                Payload::CollaborationCursorMoved(_) => None,
                Payload::CollaborationEditApplied(a) => Some((a.paragraph, None)),
                Payload::CollaborationUserLeft(_) => None,
                _ => return,
            };
            let why_gone = match &e.data {
                Payload::CollaborationUserLeft(_) => "user_left",
                _ => "stopped_editing",
            };
            let t = e.ts;
            if let Some(i) = self.latest(&doc, &user)
                && self.positions[i].2 > t
            {
                return;
            }
            // Project memory: forgotten when nothing of the doc is live at t.
            let live = self
                .positions
                .iter()
                .any(|(d, _, ts, _)| *d == doc && ts + w >= t)
                || self.conflicts.iter().any(|c| c.doc == doc && c.until >= t);
            let mut project = self
                .projects
                .iter()
                .rev()
                .find(|(d, _)| *d == doc)
                .and_then(|(_, p)| p.clone());
            if !live {
                project = None;
            }
            if e.project_id.is_some() {
                project = e.project_id.as_deref().map(String::from);
            }
            self.projects.push((doc.clone(), project.clone()));
            self.positions.push((doc.clone(), user.clone(), t, at));

            let mut users: Vec<String> = self
                .positions
                .iter()
                .filter(|(d, u, _, _)| *d == doc && *u != user)
                .map(|(_, u, _, _)| u.clone())
                .collect();
            users.sort();
            users.dedup();
            for v in users {
                let (_, _, tv, vat) = self.positions[self.latest(&doc, &v).unwrap()].clone();
                let (a, b) = if user < v {
                    (user.clone(), v.clone())
                } else {
                    (v.clone(), user.clone())
                };
                // (paragraph, high, kind)
                let rel = match (at, vat) {
                    (Some((p, s1)), Some((q, s2))) if p == q => {
                        let overlap = match (s1, s2) {
                            (Some((x1, y1)), Some((x2, y2))) => x1 < y2 && x2 < y1,
                            _ => false,
                        };
                        Some((
                            p,
                            true,
                            if overlap {
                                OverlappingSelection
                            } else {
                                SameParagraph
                            },
                        ))
                    }
                    (Some((p, _)), Some((q, _))) if p + 1 == q || q + 1 == p => {
                        Some((p.min(q), false, AdjacentParagraph))
                    }
                    _ => None,
                };
                let near = t - w <= tv && tv <= t + w;
                let open = self
                    .conflicts
                    .iter()
                    .position(|c| c.doc == doc && c.a == a && c.b == b);
                let mut detect = rel.is_some() && near;
                if let Some(i) = open {
                    if self.conflicts[i].until < t {
                        let c = self.conflicts.remove(i);
                        resolve(&mut self.out, &c, c.until, "timeout");
                    } else if rel.is_some_and(|(p, high, _)| {
                        p == self.conflicts[i].paragraph && high == self.conflicts[i].high
                    }) {
                        if near {
                            let c = &mut self.conflicts[i];
                            c.until = c.until.max(t + w).max(tv + w);
                        }
                        detect = false;
                    } else {
                        let c = self.conflicts.remove(i);
                        let why = if near && rel.is_some_and(|(_, high, _)| high && !c.high) {
                            "escalated"
                        } else if at.is_none() {
                            why_gone
                        } else {
                            "moved_apart"
                        };
                        resolve(&mut self.out, &c, t.max(c.since), why);
                    }
                }
                if detect {
                    let (p, high, kind) = rel.unwrap();
                    let c = Conflict {
                        doc: doc.clone(),
                        a: a.clone(),
                        b: b.clone(),
                        id: derived_id("conflict", &[&doc, &a, &b, &p.to_string(), &e.id]),
                        paragraph: p,
                        high,
                        since: t,
                        until: t.max(tv) + w,
                        project: project.clone(),
                    };
                    let severity = if high { High } else { Medium };
                    let para = |x: &At| x.unwrap().0;
                    let data = |other: &str, other_p: i64| {
                        let suggestion = match kind {
                            SameParagraph => format!("{other} is editing paragraph {p}"),
                            OverlappingSelection => {
                                format!("{other} has selected the same text in paragraph {p}")
                            }
                            AdjacentParagraph => {
                                format!("{other} is editing paragraph {other_p}, next to yours")
                            }
                        };
                        Payload::CollaborationConflictDetected(Box::new(ConflictDetected {
                            conflict_id: c.id.to_string(),
                            other_user_id: other.to_owned(),
                            paragraph: p,
                            severity,
                            kind,
                            suggestion,
                        }))
                    };
                    let (pa, pb) = if a == user {
                        (para(&at), para(&vat))
                    } else {
                        (para(&vat), para(&at))
                    };
                    emit(
                        &mut self.out,
                        &c,
                        [data(&b, pb), data(&a, pa)],
                        t,
                        "conflict_detected",
                    );
                    self.conflicts.push(c);
                }
            }
        }

        pub fn finish(&mut self) {
            for c in std::mem::take(&mut self.conflicts) {
                resolve(&mut self.out, &c, c.until, "timeout");
            }
        }
    }
}
