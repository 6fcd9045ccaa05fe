//! Flow state: the pure core that the sessions operator runs per user, so
//! that FLOW_STATE is one of the session states (no timely types here).
//!
//! **Rolling WPM.** `W(t)` = typed words (see [`crate::operators::written_words`]:
//! pasted, imported and AI text counts 0) of the user's events with event
//! time in `(t − window, t]`, times `60 000 / window_ms` (words per minute;
//! window default 60 s, so `W` is the words of the last minute). `W` is a
//! step function of event time: it rises only at event times and falls only
//! at `t_i + window` (when the event at `t_i` leaves the window).
//!
//! **Instants.** `W` is measured at *instants*: every event time of the user
//! (after **all** of the user's events at that millisecond are applied, so
//! the result never depends on their order) and every deadline below, fired
//! when the frontier passes it (or a later event of the user arrives). Since
//! every instant where `W` changes is measured while the user is writing
//! (a fall only while `W` is at or above `min_wpm`: a fall from below stays
//! below and changes no run), the runs below are exact, not sampled.
//!
//! **Runs.** While the session is in a writing state (WARMING_UP,
//! ACTIVE_WRITING, FLOW_STATE), an *above run* starts at the first instant
//! with `W ≥ min_wpm` (inclusive) and lasts while every measured instant has
//! `W ≥ min_wpm`; a *below run* (only counted in flow) starts at the first
//! instant with `W < min_wpm`. Pausing, a break or the end of the session
//! stop tracking and forget both runs; resuming starts afresh.
//!
//! **Entry**: at `max(above_since + sustain, warmup end)`, if the above run
//! still holds at that instant (so `W ≥ min_wpm` on the closed interval
//! `[above_since, entry]`) and the session is ACTIVE_WRITING: a run that is
//! due during WARMING_UP enters when the warm-up ends.
//! `flow_state_entered.sustained_ms` = entry − above_since (≥ `sustain`).
//! **Exit**: at `below_since + exit_after` if `W < min_wpm` on all of
//! `[below_since, exit]` (an event at exactly the exit instant that brings
//! `W` back up keeps the flow), or at once when the user pauses (idle or
//! `session_paused`) or the session ends. `flow_state_exited.duration_ms` =
//! exit − entry.
//!
//! Defaults (`[flow]`): `min_wpm` 200, `sustain` 2 min, `exit_after` 30 s,
//! `window` 60 s. Memory: the window keeps one entry per distinct event time
//! with typed words in the last `window`, so it is bounded by the window.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// `[flow]`: when a writer is in flow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// Rolling WPM at or above this counts toward flow (words per minute; default 200).
    pub min_wpm: f64,
    /// How long the WPM must stay at or above `min_wpm` to enter flow (default 2 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub sustain: Duration,
    /// How long the WPM must stay below `min_wpm` to leave flow (default 30 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub exit_after: Duration,
    /// Length of the rolling WPM window (default 60 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub window: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            min_wpm: 200.0,
            sustain: Duration::from_secs(120),
            exit_after: Duration::from_secs(30),
            window: Duration::from_secs(60),
        }
    }
}

/// [`FlowConfig`] in the units the core works in (ms).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FlowRules {
    pub min_wpm: f64,
    pub sustain_ms: i64,
    pub exit_after_ms: i64,
    pub window_ms: i64,
}

impl FlowRules {
    pub fn new(config: &FlowConfig) -> FlowRules {
        FlowRules {
            min_wpm: config.min_wpm,
            sustain_ms: config.sustain.as_millis() as i64,
            exit_after_ms: config.exit_after.as_millis() as i64,
            // A zero window would divide by zero and hold nothing.
            window_ms: config.window.as_millis().max(1) as i64,
        }
    }
}

/// Typed words per event time over the last `window_ms`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RollingWpm {
    window_ms: i64,
    /// (event time, words), by time; one entry per distinct time.
    entries: VecDeque<(i64, u64)>,
    words: u64,
}

impl RollingWpm {
    pub fn new(window_ms: i64) -> RollingWpm {
        RollingWpm {
            window_ms: window_ms.max(1),
            entries: VecDeque::new(),
            words: 0,
        }
    }

    /// Adds `words` typed at `ts` (events come in time order; an older one is
    /// still placed by its time).
    pub fn add(&mut self, ts: i64, words: u64) {
        if words == 0 {
            return;
        }
        self.words += words;
        let pos = self.entries.len()
            - self
                .entries
                .iter()
                .rev()
                .take_while(|(t, _)| *t > ts)
                .count();
        match self.entries.get_mut(pos.wrapping_sub(1)) {
            Some((t, w)) if *t == ts => *w += words,
            _ => self.entries.insert(pos, (ts, words)),
        }
    }

    /// The WPM at `now`, forgetting what has left the window (times at or
    /// before `now − window`).
    pub fn at(&mut self, now: i64) -> f64 {
        let horizon = now.saturating_sub(self.window_ms);
        while let Some(&(t, w)) = self.entries.front() {
            if t > horizon {
                break;
            }
            self.words -= w;
            self.entries.pop_front();
        }
        self.words as f64 * 60_000.0 / self.window_ms as f64
    }

    /// When the WPM next falls (the oldest entry leaves the window).
    pub fn next_drop(&self) -> Option<i64> {
        self.entries
            .front()
            .map(|(t, _)| t.saturating_add(self.window_ms))
    }

    /// When the window will be empty (its newest entry leaves it).
    pub fn empty_at(&self) -> Option<i64> {
        self.entries
            .back()
            .map(|(t, _)| t.saturating_add(self.window_ms))
    }

    /// Entries held (distinct event times).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A change of flow, to be turned into a session transition and a
/// `flow_state_entered`/`flow_state_exited` event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlowChange {
    Entered { wpm: f64, sustained_ms: i64 },
    Exited { wpm: f64, duration_ms: i64 },
}

/// One user's rolling WPM and flow runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct FlowTracker {
    rules: FlowRules,
    wpm: RollingWpm,
    /// The user is writing (the session is in a writing state): runs count.
    tracking: bool,
    above_since: Option<i64>,
    /// Only while in flow.
    below_since: Option<i64>,
    /// When flow was entered; `Some` = in flow.
    entered_at: Option<i64>,
}

impl FlowTracker {
    pub fn new(rules: FlowRules) -> FlowTracker {
        FlowTracker {
            rules,
            wpm: RollingWpm::new(rules.window_ms),
            tracking: false,
            above_since: None,
            below_since: None,
            entered_at: None,
        }
    }

    /// Typed words of an event at `ts`.
    pub fn add_words(&mut self, ts: i64, words: u64) {
        self.wpm.add(ts, words);
    }

    /// The rolling WPM at `now` (for the `wpm` of transitions).
    pub fn wpm_at(&mut self, now: i64) -> f64 {
        self.wpm.at(now)
    }

    /// The user (re)started writing: runs start afresh at the next instant.
    pub fn start(&mut self) {
        self.tracking = true;
        self.above_since = None;
        self.below_since = None;
    }

    /// Measures `W` at instant `now` (after every event at `now`) and extends
    /// or breaks the runs. Returns `W`.
    pub fn measure(&mut self, now: i64) -> f64 {
        let wpm = self.wpm.at(now);
        if self.tracking {
            if wpm >= self.rules.min_wpm {
                self.above_since.get_or_insert(now);
                self.below_since = None;
            } else {
                self.above_since = None;
                if self.entered_at.is_some() {
                    self.below_since.get_or_insert(now);
                }
            }
        }
        wpm
    }

    /// The above run has lasted `sustain` at `now` (and flow is not on).
    pub fn entry_due(&self, now: i64) -> bool {
        self.tracking
            && self.entered_at.is_none()
            && self
                .above_since
                .is_some_and(|a| now >= a.saturating_add(self.rules.sustain_ms))
    }

    /// Enters flow at `now` (call when [`FlowTracker::entry_due`]).
    pub fn enter(&mut self, now: i64) -> FlowChange {
        self.entered_at = Some(now);
        self.below_since = None;
        FlowChange::Entered {
            wpm: self.wpm.at(now),
            sustained_ms: now - self.above_since.unwrap_or(now),
        }
    }

    /// In flow, the below run has lasted `exit_after` at `now`.
    pub fn exit_due(&self, now: i64) -> bool {
        self.entered_at.is_some()
            && self
                .below_since
                .is_some_and(|b| now >= b.saturating_add(self.rules.exit_after_ms))
    }

    /// Leaves flow at `now` if in it; tracking goes on (the user still writes).
    pub fn exit(&mut self, now: i64) -> Option<FlowChange> {
        let entered = self.entered_at.take()?;
        self.below_since = None;
        Some(FlowChange::Exited {
            wpm: self.wpm.at(now),
            duration_ms: now - entered,
        })
    }

    /// The user stopped writing (pause, break, end): leaves flow if in it and
    /// forgets the runs.
    pub fn stop(&mut self, now: i64) -> Option<FlowChange> {
        let change = self.exit(now);
        self.tracking = false;
        self.above_since = None;
        self.below_since = None;
        change
    }

    pub fn in_flow(&self) -> bool {
        self.entered_at.is_some()
    }

    /// The next flow deadline: the exit when in flow, else the entry (not
    /// before `not_before`, the end of the warm-up).
    pub fn deadline(&self, not_before: i64) -> Option<i64> {
        if !self.tracking {
            return None;
        }
        if self.entered_at.is_some() {
            self.below_since
                .map(|b| b.saturating_add(self.rules.exit_after_ms))
        } else {
            self.above_since
                .map(|a| a.saturating_add(self.rules.sustain_ms).max(not_before))
        }
    }

    /// When `W` next falls in a way that can change the runs (an instant to
    /// measure at while writing): only while the last measured `W` was at
    /// or above `min_wpm`. From below it can only stay below, which changes
    /// nothing (the below run, if any, goes on; no above run starts), so
    /// such a fall needs no instant of its own: the next event's instant
    /// measures the window exactly. After [`FlowTracker::start`] nothing is
    /// measured yet, but the starting event's own instant comes first.
    pub fn next_drop(&self) -> Option<i64> {
        if self.tracking && self.above_since.is_none() {
            return None;
        }
        self.wpm.next_drop()
    }

    /// When the window will be empty.
    pub fn empty_at(&self) -> Option<i64> {
        self.wpm.empty_at()
    }

    /// Not writing and nothing in the window: the state can be dropped.
    pub fn is_idle(&self) -> bool {
        !self.tracking && self.wpm.is_empty()
    }

    /// Entries held by the window.
    pub fn window_len(&self) -> usize {
        self.wpm.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> FlowRules {
        FlowRules {
            min_wpm: 10.0,
            sustain_ms: 100,
            exit_after_ms: 30,
            window_ms: 60_000,
        }
    }

    #[test]
    fn the_window_excludes_its_start_and_includes_now() {
        let mut w = RollingWpm::new(1_000);
        w.add(0, 3);
        w.add(500, 2);
        w.add(500, 1);
        assert_eq!(w.len(), 2, "one entry per distinct time");
        assert_eq!(w.at(999), 6.0 * 60.0);
        assert_eq!(w.at(1_000), 3.0 * 60.0, "the event at 0 left at 1 000");
        assert_eq!(w.next_drop(), Some(1_500));
        assert_eq!(w.at(1_500), 0.0);
        assert!(w.is_empty());
    }

    #[test]
    fn zero_words_are_not_kept() {
        let mut w = RollingWpm::new(1_000);
        w.add(5, 0);
        assert!(w.is_empty());
    }

    #[test]
    fn entry_is_due_exactly_when_the_run_has_lasted_sustain() {
        let mut f = FlowTracker::new(rules());
        f.start();
        f.add_words(0, 10);
        f.measure(0);
        assert_eq!(f.deadline(i64::MIN), Some(100));
        f.measure(99);
        assert!(!f.entry_due(99));
        f.measure(100);
        assert!(f.entry_due(100));
        assert_eq!(
            f.enter(100),
            FlowChange::Entered {
                wpm: 10.0,
                sustained_ms: 100
            }
        );
    }

    #[test]
    fn entry_waits_for_not_before() {
        let mut f = FlowTracker::new(rules());
        f.start();
        f.add_words(0, 10);
        f.measure(0);
        assert_eq!(f.deadline(250), Some(250));
    }

    #[test]
    fn a_dip_breaks_the_run() {
        let mut f = FlowTracker::new(FlowRules {
            window_ms: 50,
            ..rules()
        });
        f.start();
        f.add_words(0, 10);
        f.measure(0);
        f.measure(50); // the words left the window
        assert_eq!(f.deadline(i64::MIN), None);
        f.add_words(60, 10);
        f.measure(60);
        assert_eq!(f.deadline(i64::MIN), Some(160), "a new run from 60");
    }

    #[test]
    fn exit_after_the_below_run_and_on_stop() {
        let mut f = FlowTracker::new(FlowRules {
            window_ms: 200,
            ..rules()
        });
        f.start();
        f.add_words(0, 10);
        f.measure(0);
        f.measure(100);
        f.enter(100);
        f.measure(200); // left the window: below from 200
        assert_eq!(f.deadline(i64::MIN), Some(230));
        assert!(!f.exit_due(229));
        assert!(f.exit_due(230));
        assert_eq!(
            f.exit(230),
            Some(FlowChange::Exited {
                wpm: 0.0,
                duration_ms: 130
            })
        );
        assert_eq!(f.stop(231), None, "not in flow any more");
        assert!(f.is_idle());
    }

    #[test]
    fn stop_leaves_flow_and_forgets_runs() {
        let mut f = FlowTracker::new(rules());
        f.start();
        f.add_words(0, 10);
        f.measure(0);
        f.measure(100);
        f.enter(100);
        assert!(matches!(
            f.stop(150),
            Some(FlowChange::Exited {
                duration_ms: 50,
                ..
            })
        ));
        assert_eq!(f.deadline(i64::MIN), None);
        f.measure(160);
        assert!(!f.entry_due(1_000), "not tracking while paused");
    }
}
