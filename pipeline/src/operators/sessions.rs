//! Writing sessions per user, in event time.
//!
//! A session is a run of a user's `writing.*` events with no gap longer than
//! `sessions.gap` (default 30 min; a gap of exactly `gap` keeps the session).
//! `writing.session_started` opens a new session (closing an open one),
//! `writing.session_ended` closes the current one. When it ends, the summary
//! `writing.session_ended` is emitted: `start_ts` (first event), `end_ts`
//! (last event), `events`, `words` (typed only), `wpm` = words / max(1,
//! minutes), `active_ms` (time between consecutive events at most
//! `pause_after` apart) and `paused_ms` (the longer gaps). Flow accounting
//! (`flow_ms`, `longest_flow_ms`) is left null until the flow-state operator
//! feeds it.
//!
//! Determinism: the wrapper processes each epoch only once the frontier has
//! passed it, in (event time, arrival) order, so sessions are identical
//! whatever the arrival order within the disorder bound and whatever the
//! number of workers. Gap-based ends fire on the frontier: once it passes
//! `last_ts + gap`, no event can still extend the session.

use crate::operators::{EpochBuffer, EventTime, Record, derived_id, stable_hash, written_words};
use schemas::Event;
use schemas::payload::{Payload, SessionEnded};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

/// `[sessions]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A longer gap between a user's writing events ends the session (default 30 min).
    #[serde(deserialize_with = "crate::config::duration")]
    pub gap: Duration,
    /// Gaps longer than this count as paused, not active (default 60 s).
    #[serde(deserialize_with = "crate::config::duration")]
    pub pause_after: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            gap: Duration::from_secs(30 * 60),
            pause_after: Duration::from_secs(60),
        }
    }
}

struct Open {
    session_id: String,
    start_ts: i64,
    last_ts: i64,
    events: i64,
    words: i64,
    active_ms: i64,
    paused_ms: i64,
    project_id: Option<String>,
    document_id: Option<String>,
    /// Ids (hashed) of the session's events: each is counted once.
    seen: std::collections::HashSet<u64>,
}

/// The pure core. Feed each user's events in event-time order.
pub struct SessionTracker {
    gap_ms: i64,
    pause_ms: i64,
    users: HashMap<String, Open>,
}

impl SessionTracker {
    pub fn new(config: &SessionsConfig) -> SessionTracker {
        SessionTracker {
            gap_ms: config.gap.as_millis() as i64,
            pause_ms: config.pause_after.as_millis() as i64,
            users: HashMap::new(),
        }
    }

    /// Open sessions (memory is bounded by these, not by past sessions).
    pub fn open_sessions(&self) -> usize {
        self.users.len()
    }

    /// Takes one event (in event-time order for its user); pushes the
    /// summaries of the sessions it ends.
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Event>) {
        if e.category() != schemas::Category::Writing {
            return;
        }
        let Some(user) = e.user_id.as_deref() else {
            return;
        };
        let gap_ms = self.gap_ms;
        let expired = self
            .users
            .get(user)
            .is_some_and(|o| e.ts - o.last_ts > gap_ms);
        if expired && let Some(o) = self.users.remove(user) {
            out.push(summary(user, o, "gap"));
        }
        if let Payload::WritingSessionStarted(_) = &e.data
            && let Some(o) = self.users.remove(user)
        {
            out.push(summary(user, o, "restarted"));
        }
        let pause_ms = self.pause_ms;
        let open = self.users.entry(user.to_owned()).or_insert_with(|| Open {
            session_id: match &e.data {
                Payload::WritingSessionStarted(s) => s.session_id.clone(),
                _ => None,
            }
            .unwrap_or_else(|| format!("s-{:016x}", stable_hash(&(user, e.ts)))),
            start_ts: e.ts,
            last_ts: e.ts,
            events: 0,
            words: 0,
            active_ms: 0,
            paused_ms: 0,
            project_id: e.project_id.clone(),
            document_id: e.document_id.clone(),
            seen: Default::default(),
        });
        if !open.seen.insert(stable_hash(e.id.as_str())) {
            return; // the same event id again
        }
        if open.events > 0 {
            let step = e.ts - open.last_ts;
            if step <= pause_ms {
                open.active_ms += step;
            } else {
                open.paused_ms += step;
            }
        }
        open.events += 1;
        open.last_ts = e.ts;
        open.words += written_words(e).unwrap_or(0) as i64;
        if open.project_id.is_none() {
            open.project_id = e.project_id.clone();
        }
        if let Payload::WritingSessionEnded(_) = &e.data
            && let Some(o) = self.users.remove(user)
        {
            out.push(summary(user, o, "ended"));
        }
    }

    /// No event at a time before `watermark` will come: ends every session
    /// whose gap can no longer be bridged (`watermark > last_ts + gap`).
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        let gap_ms = self.gap_ms;
        let mut ended: Vec<String> = self
            .users
            .iter()
            .filter(|(_, o)| watermark > o.last_ts + gap_ms)
            .map(|(u, _)| u.clone())
            .collect();
        ended.sort();
        for user in ended {
            if let Some(o) = self.users.remove(&user) {
                out.push(summary(&user, o, "gap"));
            }
        }
    }

    /// End of input (replay): every open session ends at its last event.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        let mut users: Vec<String> = self.users.keys().cloned().collect();
        users.sort();
        for user in users {
            if let Some(o) = self.users.remove(&user) {
                out.push(summary(&user, o, "end_of_input"));
            }
        }
    }
}

fn summary(user: &str, o: Open, reason: &str) -> Event {
    let minutes = ((o.last_ts - o.start_ts) as f64 / 60_000.0).max(1.0);
    Event {
        id: derived_id("session_ended", &[user, &o.session_id]),
        ts: o.last_ts,
        user_id: Some(user.to_owned()),
        project_id: o.project_id,
        document_id: o.document_id,
        data: Payload::WritingSessionEnded(SessionEnded {
            session_id: Some(o.session_id),
            reason: Some(reason.to_owned()),
            start_ts: Some(o.start_ts),
            end_ts: Some(o.last_ts),
            events: Some(o.events),
            words: Some(o.words),
            wpm: Some(o.words as f64 / minutes),
            active_ms: Some(o.active_ms),
            flow_ms: None,
            paused_ms: Some(o.paused_ms),
            longest_flow_ms: None,
        }),
    }
}

/// The timely wrapper: `records.sessions(&config, flush_at_end)`.
pub trait Sessions<'scope> {
    fn sessions(self, config: &SessionsConfig, time: EventTime) -> Stream<'scope, u64, Vec<Event>>;
}

impl<'scope> Sessions<'scope> for Stream<'scope, u64, Vec<Record>> {
    fn sessions(self, config: &SessionsConfig, time: EventTime) -> Stream<'scope, u64, Vec<Event>> {
        let config = config.clone();
        let by_user =
            Exchange::new(|r: &Record| stable_hash(r.event.user_id.as_deref().unwrap_or("")));
        self.unary_frontier(by_user, "Sessions", move |initial, _info| {
            let mut tracker = SessionTracker::new(&config);
            let mut pending = EpochBuffer::default();
            // Held at the frontier to emit what the passing of time produces.
            let mut timer: Option<Capability<u64>> = Some(initial);
            let mut out = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|_cap, data| pending.push(&time, data));
                let f = frontier.frontier().first().copied();
                // Epochs the frontier has passed are final: process them in order.
                while let Some((t, mut records)) = pending.pop_ready(f) {
                    records.sort_by_key(|r| (r.event.ts, r.seq));
                    for r in &records {
                        tracker.observe(&r.event, &mut out);
                    }
                    tracker.advance_to(t as i64, &mut out);
                    if !out.is_empty()
                        && let Some(cap) = timer.as_ref()
                    {
                        let at = cap.delayed(&t.max(*cap.time()));
                        output.session(&at).give_iterator(out.drain(..));
                    }
                }
                match f {
                    Some(f) => {
                        tracker.advance_to(f as i64, &mut out);
                        if let Some(cap) = timer.as_mut() {
                            if !out.is_empty() {
                                output.session(&*cap).give_iterator(out.drain(..));
                            }
                            if *cap.time() < f {
                                cap.downgrade(&f);
                            }
                        }
                    }
                    None => {
                        if time.flush_at_end {
                            tracker.flush(&mut out);
                        }
                        if let Some(cap) = timer.take()
                            && !out.is_empty()
                        {
                            output.session(&cap).give_iterator(out.drain(..));
                        }
                        out.clear();
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(user: &str, ts: i64, words: i64) -> Event {
        Event {
            id: format!("e-{user}-{ts}"),
            ts,
            user_id: Some(user.into()),
            project_id: Some("p1".into()),
            document_id: None,
            data: Payload::from_json_value(
                "writing.keystroke",
                serde_json::json!({"keystrokes": 5, "words": words, "chars": 5}),
            )
            .unwrap()
            .unwrap(),
        }
    }

    fn ended(out: &[Event]) -> Vec<(i64, i64, i64)> {
        out.iter()
            .map(|e| match &e.data {
                Payload::WritingSessionEnded(s) => {
                    (s.start_ts.unwrap(), s.end_ts.unwrap(), s.events.unwrap())
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn cfg(gap_ms: u64) -> SessionsConfig {
        SessionsConfig {
            gap: Duration::from_millis(gap_ms),
            pause_after: Duration::from_millis(100),
        }
    }

    #[test]
    fn a_gap_of_exactly_the_threshold_keeps_the_session() {
        let mut t = SessionTracker::new(&cfg(1000));
        let mut out = Vec::new();
        t.observe(&ks("u", 0, 1), &mut out);
        t.observe(&ks("u", 1000, 1), &mut out);
        assert!(out.is_empty());
        t.observe(&ks("u", 2001, 1), &mut out);
        assert_eq!(ended(&out), [(0, 1000, 2)]);
    }

    #[test]
    fn the_watermark_ends_sessions_only_past_the_gap() {
        let mut t = SessionTracker::new(&cfg(1000));
        let mut out = Vec::new();
        t.observe(&ks("u", 0, 1), &mut out);
        t.advance_to(1000, &mut out);
        assert!(
            out.is_empty(),
            "an event at exactly 1000 could still extend it"
        );
        t.advance_to(1001, &mut out);
        assert_eq!(ended(&out), [(0, 0, 1)]);
        assert_eq!(t.open_sessions(), 0, "ended sessions leave no state");
    }

    #[test]
    fn summary_counts_words_wpm_active_and_paused_time() {
        let mut t = SessionTracker::new(&cfg(10_000));
        let mut out = Vec::new();
        for (ts, w) in [(0, 3), (50, 2), (500, 4)] {
            t.observe(&ks("u", ts, w), &mut out);
        }
        t.flush(&mut out);
        let Payload::WritingSessionEnded(s) = &out[0].data else {
            panic!()
        };
        assert_eq!(
            (s.words, s.active_ms, s.paused_ms),
            (Some(9), Some(50), Some(450))
        );
        assert_eq!(s.wpm, Some(9.0), "less than a minute counts as one");
        assert_eq!(s.reason.as_deref(), Some("end_of_input"));
    }

    #[test]
    fn explicit_start_and_end_bound_sessions() {
        let mut t = SessionTracker::new(&cfg(10_000));
        let mut out = Vec::new();
        let start = |ts: i64, id: &str| Event {
            data: Payload::from_json_value(
                "writing.session_started",
                serde_json::json!({"session_id": id}),
            )
            .unwrap()
            .unwrap(),
            ..ks("u", ts, 0)
        };
        t.observe(&start(0, "s1"), &mut out);
        t.observe(&ks("u", 10, 1), &mut out);
        t.observe(&start(20, "s2"), &mut out);
        let end = Event {
            data: Payload::from_json_value("writing.session_ended", serde_json::json!({}))
                .unwrap()
                .unwrap(),
            ..ks("u", 30, 0)
        };
        t.observe(&end, &mut out);
        let ids: Vec<_> = out
            .iter()
            .map(|e| match &e.data {
                Payload::WritingSessionEnded(s) => s.session_id.clone().unwrap(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, ["s1", "s2"]);
        assert_eq!(ended(&out), [(0, 10, 2), (20, 30, 2)]);
    }

    #[test]
    fn a_duplicated_event_id_counts_once() {
        let mut t = SessionTracker::new(&cfg(1000));
        let mut out = Vec::new();
        t.observe(&ks("u", 0, 2), &mut out);
        t.observe(&ks("u", 0, 2), &mut out);
        t.observe(&ks("u", 10, 1), &mut out);
        t.flush(&mut out);
        let Payload::WritingSessionEnded(s) = &out[0].data else {
            panic!()
        };
        assert_eq!((s.events, s.words), (Some(2), Some(3)));
    }

    #[test]
    fn non_writing_events_do_not_extend_sessions() {
        let mut t = SessionTracker::new(&cfg(1000));
        let mut out = Vec::new();
        t.observe(&ks("u", 0, 1), &mut out);
        let cursor = Event {
            data: Payload::from_json_value(
                "collaboration.cursor_moved",
                serde_json::json!({"paragraph":1,"offset":1}),
            )
            .unwrap()
            .unwrap(),
            ..ks("u", 900, 0)
        };
        t.observe(&cursor, &mut out);
        t.advance_to(1001, &mut out);
        assert_eq!(ended(&out), [(0, 0, 1)]);
    }
}
