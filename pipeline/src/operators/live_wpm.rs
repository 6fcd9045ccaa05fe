//! Live words per minute per user, over a rolling event-time window.
//!
//! Emitted as `analytics.metric_updated` (`data: {"metric":"wpm","value",
//! "window_ms"}`) as each writing event arrives: live figures do not wait for
//! the watermark. The watermark only drops what can no longer be inside any
//! future window, so state is bounded by the users active within one window.
//!
//! Counted: `writing.keystroke` words whose `source` is typed (or absent) and
//! `writing.word_added` (`words`, default 1). Pasted, imported and AI text is
//! not writing.

use crate::operators::{derived_id, stable_hash, written_words};
use crate::runtime::Record;
use crate::runtime::{Core, Order};
use foldhash::HashMap;
use schemas::Event;
use schemas::payload::{MetricUpdated, Payload};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// Settings of the WPM operator (`[wpm]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveWpmConfig {
    /// Length of the rolling window (default 60 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub window: Duration,
    /// Least event time between two updates of one user (default 1 s): an
    /// event closer than this to the user's last emitted update is counted
    /// but emits nothing, so a fast typist is not a firehose.
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub min_interval: Duration,
}

impl Default for LiveWpmConfig {
    fn default() -> Self {
        LiveWpmConfig {
            window: Duration::from_secs(60),
            min_interval: Duration::from_secs(1),
        }
    }
}

/// One user's recent writing: (event time, arrival seq, words), ordered by
/// time.
///
/// Each event reaches the operator once: the input driver drops a copy of an
/// id it has taken (within `dataflow.dedup_retention`; an older copy is late),
/// before any operator sees it, so no id set is kept here.
#[derive(Default, Serialize, Deserialize)]
struct UserWindow {
    entries: VecDeque<(i64, u64, u64)>,
    /// Where builds before 2026-12-07 saved the ids of `entries`: written
    /// empty and dropped when read, so a checkpoint of either build restores
    /// in the other (bincode has no optional fields).
    ids: DroppedIds,
    /// Event time of the last update emitted.
    last_emitted: Option<i64>,
}

/// A saved sequence of (time, hashed id) pairs that is read and dropped, and
/// written empty (see [`UserWindow::ids`]).
#[derive(Default)]
struct DroppedIds;

impl Serialize for DroppedIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(std::iter::empty::<(i64, u64)>())
    }
}

impl<'de> Deserialize<'de> for DroppedIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        VecDeque::<(i64, u64)>::deserialize(d).map(|_| DroppedIds)
    }
}

/// The pure core.
#[derive(Serialize, Deserialize)]
pub struct LiveWpm {
    window_ms: i64,
    interval_ms: i64,
    users: HashMap<String, UserWindow>,
    /// Watermark of the last pruning pass. A pass visits every user, so it
    /// runs once per [`LiveWpm::prune_every`] of event time (a tenth of the
    /// window, at least a second), not at every epoch (at 10 000 writers the
    /// per-epoch pass was 40 % of the worker's time, and a pass per second
    /// 2.3 % of a whole replay's: a visit of each writer for every second of
    /// event time, more visits than events). Entries outlive the window by
    /// at most that much. Outputs do not depend on it: `observe` counts only
    /// entries inside the window, and late events never reach the operator.
    /// Not saved: after a restore the next advance prunes.
    #[serde(skip)]
    pruned_at: Option<i64>,
}

impl LiveWpm {
    pub fn new(config: &LiveWpmConfig) -> LiveWpm {
        LiveWpm {
            window_ms: config.window.as_millis().max(1) as i64,
            interval_ms: config.min_interval.as_millis() as i64,
            users: HashMap::default(),
            pruned_at: None,
        }
    }

    /// Records a writing event (the `seq`-th to arrive) and returns the
    /// user's live WPM at its event time, counting the events that had arrived
    /// by then — unless the user's last update is less than `min_interval`
    /// of event time before it.
    pub fn observe(&mut self, seq: u64, e: &Event) -> Option<Event> {
        let words = written_words(e)?;
        let user = e.user_id.as_deref()?;
        // Look up before inserting: most events are from users already known,
        // and `entry` would allocate the key every time.
        let w = if let Some(w) = self.users.get_mut(user) {
            w
        } else {
            self.users.entry(user.to_owned()).or_default()
        };
        // Insert in time order; arrivals are mostly in order, so search from the back.
        let pos = w.entries.len()
            - w.entries
                .iter()
                .rev()
                .take_while(|(t, _, _)| *t > e.ts)
                .count();
        if pos == w.entries.len() {
            w.entries.push_back((e.ts, seq, words));
        } else {
            w.entries.insert(pos, (e.ts, seq, words));
        }
        // Rate limit in event time, per user, in arrival order (the operator
        // is live and per-user arrival order is the log's order).
        if self.interval_ms > 0
            && w.last_emitted
                .is_some_and(|last| e.ts < last + self.interval_ms)
        {
            return None;
        }
        w.last_emitted = Some(e.ts);
        let from = e.ts - self.window_ms;
        // Entries up to `pos` are at or before e.ts; walk back to the window start.
        let in_window: u64 = w
            .entries
            .range(..=pos)
            .rev()
            .take_while(|(t, _, _)| *t > from)
            .filter(|(_, s, _)| *s <= seq)
            .map(|(_, _, n)| *n)
            .sum();
        let value = in_window as f64 * 60_000.0 / self.window_ms as f64;
        Some(Event {
            id: derived_id("wpm", &[user, &e.id]),
            ts: e.ts,
            user_id: e.user_id.clone(),
            project_id: e.project_id.clone(),
            document_id: e.document_id.clone(),
            data: Payload::AnalyticsMetricUpdated(MetricUpdated {
                metric: "wpm".into(),
                value,
                window_ms: Some(self.window_ms),
                dimensions: Vec::new(),
            }),
        })
    }

    /// No event at or before `watermark` will arrive any more: forget what
    /// cannot fall into a window ending at or after it.
    pub fn advance_to(&mut self, watermark: i64) {
        let every = self.prune_every();
        if self
            .pruned_at
            .is_some_and(|at| watermark < at.saturating_add(every))
        {
            return;
        }
        self.pruned_at = Some(watermark);
        let horizon = watermark - self.window_ms;
        self.users.retain(|_, w| {
            while w.entries.front().is_some_and(|(t, _, _)| *t <= horizon) {
                w.entries.pop_front();
            }
            !w.entries.is_empty()
        });
    }

    /// Event time between two pruning passes: a tenth of the window, at
    /// least a second.
    fn prune_every(&self) -> i64 {
        (self.window_ms / 10).max(1_000)
    }

    /// Users with state (for memory bounds and metrics).
    pub fn active_users(&self) -> usize {
        self.users.len()
    }
}

/// Live (arrival order) and keyed by user, in the operator runtime.
impl Core for LiveWpm {
    type Item = Record;
    const NAME: &'static str = "LiveWpm";
    const ORDER: Order = Order::Arrival;

    fn wants(r: &Record) -> bool {
        r.event.user_id.is_some() && written_words(&r.event).is_some()
    }

    fn key(r: &Record) -> u64 {
        stable_hash(r.event.user_id.as_deref().unwrap_or(""))
    }

    fn observe(&mut self, r: &Record, out: &mut Vec<Event>) {
        out.extend(LiveWpm::observe(self, r.seq, &r.event));
    }

    fn advance_to(&mut self, watermark: i64, _out: &mut Vec<Event>) {
        LiveWpm::advance_to(self, watermark);
    }

    fn flush(&mut self, _out: &mut Vec<Event>) {}

    fn state_size(&self) -> usize {
        self.active_users()
    }

    fn sort_epoch(_records: &mut [Record]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(id: &str, user: &str, ts: i64, words: u64, source: Option<&str>) -> Event {
        let mut data =
            serde_json::json!({"keystrokes": words * 5, "words": words, "chars": words * 5});
        if let Some(s) = source {
            data["source"] = s.into();
        }
        Event {
            id: id.into(),
            ts,
            user_id: Some(user.into()),
            project_id: Some("p1".into()),
            document_id: None,
            data: Payload::from_json_value("writing.keystroke", data)
                .unwrap()
                .unwrap(),
        }
    }

    /// Every event emits: these tests are about the window.
    fn unlimited() -> LiveWpmConfig {
        LiveWpmConfig {
            min_interval: Duration::ZERO,
            ..LiveWpmConfig::default()
        }
    }

    #[test]
    fn updates_are_at_most_one_per_interval_of_event_time_per_user() {
        let mut t = LiveWpm::new(&LiveWpmConfig::default());
        assert!(t.observe(1, &ks("a", "u1", 10_000, 1, None)).is_some());
        assert!(t.observe(2, &ks("b", "u1", 10_999, 1, None)).is_none());
        assert!(t.observe(3, &ks("c", "u2", 10_500, 1, None)).is_some());
        // Exactly one interval later emits, and counts what was suppressed.
        assert_eq!(
            wpm(&t.observe(4, &ks("d", "u1", 11_000, 1, None)).unwrap()),
            3.0
        );
        // An out-of-order event behind the last update emits nothing.
        assert!(t.observe(5, &ks("e", "u1", 10_200, 1, None)).is_none());
    }

    fn wpm(e: &Event) -> f64 {
        match &e.data {
            Payload::AnalyticsMetricUpdated(m) => m.value,
            other => panic!("not a metric: {other:?}"),
        }
    }

    #[test]
    fn sums_words_in_the_last_minute() {
        let mut t = LiveWpm::new(&unlimited());
        assert_eq!(
            wpm(&t.observe(1, &ks("a", "u1", 1_000, 10, None)).unwrap()),
            10.0
        );
        assert_eq!(
            wpm(&t.observe(2, &ks("b", "u1", 30_000, 5, None)).unwrap()),
            15.0
        );
        // 61 s: the event at 1 s has left the window (window is (1 000, 61 000]).
        assert_eq!(
            wpm(&t.observe(3, &ks("c", "u1", 61_000, 1, None)).unwrap()),
            6.0
        );
    }

    #[test]
    fn window_boundary_is_exclusive_at_the_start() {
        let mut t = LiveWpm::new(&unlimited());
        t.observe(4, &ks("a", "u1", 0, 10, None));
        // exactly one window later: the first event is out.
        assert_eq!(
            wpm(&t.observe(5, &ks("b", "u1", 60_000, 1, None)).unwrap()),
            1.0
        );
    }

    #[test]
    fn out_of_order_event_counts_for_its_own_time() {
        let mut t = LiveWpm::new(&unlimited());
        t.observe(6, &ks("a", "u1", 10_000, 10, None));
        // Arrives late but within the window: its WPM covers only events up to 5 s.
        assert_eq!(
            wpm(&t.observe(7, &ks("b", "u1", 5_000, 3, None)).unwrap()),
            3.0
        );
        assert_eq!(
            wpm(&t.observe(8, &ks("c", "u1", 11_000, 0, None)).unwrap()),
            13.0
        );
    }

    #[test]
    fn value_is_as_of_arrival_whatever_the_processing_order() {
        // A (ts 10 s) arrived before B (ts 9 s), but B is processed first.
        let mut t = LiveWpm::new(&unlimited());
        assert_eq!(
            wpm(&t.observe(2, &ks("b", "u1", 9_000, 3, None)).unwrap()),
            3.0
        );
        // A does not count B: B had not arrived when A did.
        assert_eq!(
            wpm(&t.observe(1, &ks("a", "u1", 10_000, 10, None)).unwrap()),
            10.0
        );
    }

    /// The operator keeps no ids: a copy of an event (a redelivery, a
    /// client's retry) is the input driver's to drop, before any operator.
    /// Through the dataflow, 1 and 2 workers, batches of 1 and 3, the copies
    /// (one right after its original, one after the next event) change no
    /// figure.
    #[test]
    fn a_copy_of_an_event_changes_no_figure_through_the_dataflow() {
        use crate::runtime::{EventTime, Keyed, OperatorCtx};
        let events = [("a", 1_000, 4), ("b", 1_001, 1), ("c", 1_002, 2)]
            .map(|(id, ts, n)| ks(id, "u1", ts, n, None));
        let copied = vec![
            events[0].clone(),
            events[0].clone(),
            events[1].clone(),
            events[0].clone(),
            events[2].clone(),
        ];
        for (workers, batch) in [(1, 1), (2, 1), (2, 3)] {
            let (out, late) = crate::dataflow::run_for_test(
                copied.clone(),
                workers,
                batch,
                &crate::config::Config::default(),
                |s, c| {
                    let time = EventTime {
                        epoch_ms: c.dataflow.epoch.as_millis() as u64,
                        flush_at_end: c.dataflow.flush_at_end,
                    };
                    s.keyed(LiveWpm::new(&unlimited()), &OperatorCtx::plain(time))
                },
            );
            assert!(late.is_empty(), "{late:?}");
            let figures: Vec<f64> = out.iter().map(wpm).collect();
            assert_eq!(figures, [4.0, 5.0, 7.0], "{workers} workers, batch {batch}");
        }
    }

    /// A checkpoint keeps its format: one written by a build that saved the
    /// ids (`ids` non-empty) restores and goes on as the uninterrupted
    /// operator does, and one written now reads back as that build's shape
    /// with no ids.
    #[test]
    fn a_checkpoint_with_the_ids_older_builds_saved_restores() {
        #[derive(Serialize, Deserialize)]
        struct Before {
            entries: VecDeque<(i64, u64, u64)>,
            ids: VecDeque<(i64, u64)>,
            last_emitted: Option<i64>,
        }
        #[derive(Serialize, Deserialize)]
        struct BeforeCore {
            window_ms: i64,
            interval_ms: i64,
            users: std::collections::HashMap<String, Before>,
        }
        let mut live = LiveWpm::new(&unlimited());
        live.observe(1, &ks("a", "u1", 1_000, 4, None));
        live.observe(2, &ks("b", "u1", 2_000, 3, None));
        let now = bincode::serialize(&live).unwrap();
        let mut read: BeforeCore = bincode::deserialize(&now).unwrap();
        let user = read.users.get_mut("u1").unwrap();
        assert_eq!(user.entries.len(), 2);
        assert!(user.ids.is_empty(), "written empty");
        user.ids = [(1_000, 11), (2_000, 22)].into();
        let before = bincode::serialize(&read).unwrap();
        let mut restored: LiveWpm = bincode::deserialize(&before).unwrap();
        let next = ks("c", "u1", 3_000, 2, None);
        assert_eq!(
            wpm(&restored.observe(3, &next).unwrap()),
            wpm(&live.observe(3, &next).unwrap())
        );
        assert_eq!(
            bincode::serialize(&restored).unwrap(),
            bincode::serialize(&live).unwrap()
        );
    }

    #[test]
    fn pasted_text_is_not_writing() {
        let mut t = LiveWpm::new(&unlimited());
        assert_eq!(
            wpm(&t.observe(9, &ks("a", "u1", 1, 500, Some("paste"))).unwrap()),
            0.0
        );
    }

    #[test]
    fn users_are_independent_and_ids_deterministic() {
        let mut t = LiveWpm::new(&unlimited());
        let a = t.observe(10, &ks("a", "u1", 1, 4, None)).unwrap();
        let b = t.observe(11, &ks("b", "u2", 1, 7, None)).unwrap();
        assert_eq!((wpm(&a), wpm(&b)), (4.0, 7.0));
        let mut t2 = LiveWpm::new(&unlimited());
        // Same input, same id, whatever the arrival position.
        assert_eq!(t2.observe(12, &ks("a", "u1", 1, 4, None)).unwrap().id, a.id);
    }

    #[test]
    fn state_is_dropped_within_a_tenth_of_the_window_after_the_watermark_passes_it() {
        let mut t = LiveWpm::new(&unlimited());
        assert_eq!(t.prune_every(), 6_000, "a tenth of the 60 s window");
        for i in 0..100 {
            t.observe(13, &ks(&format!("e{i}"), &format!("u{i}"), 1_000, 1, None));
        }
        assert_eq!(t.active_users(), 100);
        t.advance_to(60_999);
        assert_eq!(t.active_users(), 100);
        // Pruning passes run once per tenth of the window of event time.
        t.advance_to(61_000);
        assert_eq!(t.active_users(), 100);
        t.advance_to(66_998);
        assert_eq!(t.active_users(), 100);
        t.advance_to(66_999);
        assert_eq!(t.active_users(), 0);
        // An event for a pruned user's old window counts only what is inside.
        let e = t.observe(14, &ks("late", "u1", 62_000, 2, None)).unwrap();
        assert_eq!(wpm(&e), 2.0);
    }

    #[test]
    fn non_writing_events_are_ignored() {
        let mut t = LiveWpm::new(&unlimited());
        let mut e = ks("a", "u1", 1, 4, None);
        e.data = Payload::from_json_value(
            "collaboration.cursor_moved",
            serde_json::json!({"paragraph": 1, "offset": 2}),
        )
        .unwrap()
        .unwrap();
        assert!(t.observe(14, &e).is_none());
    }
}
