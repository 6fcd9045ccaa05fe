//! Team metrics per project and per document, over tumbling event-time windows.
//!
//! **Windows.** For each length `L` of `team.windows` (default 1 min and 1 h),
//! windows are `[k·L, (k+1)·L)` in ms since the Unix epoch: the start is
//! inclusive, the end exclusive (an event at exactly `(k+1)·L` belongs to the
//! next window). Every event is counted in two *scopes*: its project
//! (`project_id`, document dimension absent) and, when it has a `document_id`,
//! that document. Events without `project_id` are ignored.
//!
//! **Input.** One stream: the input records (activity and comments) and,
//! concatenated to them, the conflict events of the conflicts operator as
//! derived records ([`Record::is_derived`]). Activity = `writing.keystroke`,
//! `writing.word_added`, `collaboration.edit_applied`. Conflict events that
//! are *not* derived (sent by clients) are ignored: the conflicts operator's
//! stream is the only source of conflicts.
//!
//! **Metrics**, one `analytics.metric_updated` per figure (`MetricUpdated
//! {metric, value, window_ms: Some(L), dimensions}`):
//! - `team.words` (per user): words written in the window ([`written_words`]:
//!   typed keystroke words and `word_added`; pasted/imported/AI text is 0).
//! - `team.edits` (per user): `collaboration.edit_applied` events.
//!   Both are emitted for every user with at least one activity event in the
//!   window (values may be 0); activity without `user_id` counts only in the
//!   scope-wide figures below.
//! - `team.edit_velocity_per_min`: all edits of the scope / (L in minutes).
//! - `team.conflicts`: conflicts *detected* in the window. A conflict is
//!   reported once per user of the pair: it is counted once, by
//!   `conflict_id` within its document, in the window of its first report.
//! - `team.conflict_resolution_ms_mean`: mean `duration_ms` of the conflicts
//!   whose first `conflict_resolved` report falls in the window (emitted only
//!   when there is one).
//! - `team.comment_response_ms_mean`: mean of `resolved.ts − added.ts` over
//!   the comments whose `comment_resolved` falls in the window, matched by
//!   (project, document, `comment_id`) with the first `comment_added`.
//!   A response longer than `comment_max_open` is not counted: the comment
//!   is dropped and counted in [`TeamMetrics::comments_expired`] (so open
//!   comments never pile up). A resolution without a known `comment_added`
//!   is ignored. Emitted only when at least one response is counted.
//! - `team.collaboration_efficiency`: active time without an open conflict
//!   / active time, in [0, 1]. Active time is counted in *document-seconds*:
//!   a pair (document, second `⌊ts / 1000⌋`) is active when the document has
//!   an activity event in that second (events without a document form their
//!   own "no document" group). It is *conflicted* when a conflict of that
//!   document is open at any instant of that second inside the window; a
//!   conflict is open from its first `conflict_detected` report to its first
//!   `conflict_resolved` report, both inclusive, and at most
//!   `conflict_max_open` (a conflict never resolved stops counting then).
//!   A resolution with no detection seen counts as open over
//!   `[ts − duration_ms, ts]`, in the windows holding `ts` only (earlier
//!   windows have closed by then).
//!   The project scope sums its documents' document-seconds. Emitted only
//!   when the window has active time.
//!
//! **Dimensions**, in this order: `project_id`; `document_id` (document
//! scope only); `user_id` (per-user figures only); `window` (a label of `L`:
//! `"1m"`, `"1h"`, `"90s"`, `"1d"`, `"250ms"`).
//!
//! **When.** A window *exists* for a scope once something is counted in it
//! (an activity event, a conflict's first detection or resolution report, a
//! counted comment response); windows where nothing was counted emit nothing.
//! An existing window emits `team.conflicts` and `team.edit_velocity_per_min`
//! (possibly 0), the per-user figures, and the means/efficiency when defined.
//! It closes when the watermark (the frontier) reaches its end — once no event
//! with `ts < end` can come — and not before.
//!
//! **Envelope.** `ts = end − 1` (the last millisecond of the window, so the
//! figure lies inside the window it describes; it is never before the
//! frontier at which the window was still open, so outputs are stamped at
//! their own epoch); `project_id`, `document_id` (document scope), `user_id`
//! (per-user figures) set; `id = derived_id("team", [metric, level, project,
//! document, user, L, start])`.
//!
//! **Determinism.** Frontier-driven ([`Order::EventTime`] in the operator
//! runtime, [`crate::runtime::keyed`]): records and conflict events are
//! parked by their own epoch and observed once the frontier passes it (the
//! conflicts are derived from the records, so the frontier of the
//! concatenation is the later of both), in [`observation_order`]: (ts,
//! comment_added and conflict_detected first, resolutions last, id), then
//! records before conflict events. The output is then a function of the
//! events alone, whatever their arrival order within the disorder bound,
//! batching or number of workers (exchange by `project_id`). Every expiry is
//! a function of event times (checked against the event being observed), so
//! when pruning runs never changes a figure.
//!
//! **State.** Open windows; per document the conflicts seen within the last
//! `conflict_max_open` + longest window and the comments open at most
//! `comment_max_open`; the latest closed figures per scope for
//! `latest_retention` ([`TeamMetrics::latest`], for the view store). All of
//! it is serializable: checkpoints snapshot the whole tracker.
//!
//! **Roll-up.** When every length is a multiple of the shortest (the
//! default: 1 min and 1 h), an event is counted in the shortest window of
//! each scope only, and a shortest window, when it closes, is added into
//! the longer windows holding it (which close after it). Every figure is a
//! sum (counts, totals, per-user counts, sets of active seconds), so the
//! longer windows' figures are the same as counting each event in each of
//! them, with two window updates per event instead of four (at the
//! default lengths). A checkpoint holds every longer window complete (the
//! open shortest windows added in), as before the roll-up; a restored
//! tracker counts events directly in the longer windows open at the
//! restore, and rolls up the windows opened after them.

use crate::operators::{OperatorConfigError, derived_id, stable_hash, written_words};
use crate::runtime::Record;
use crate::runtime::{Core, Order};
use foldhash::HashMap;
use schemas::Event;
use schemas::payload::{Dimension, MetricUpdated, Payload};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const WORDS: &str = "team.words";
pub const EDITS: &str = "team.edits";
pub const EDIT_VELOCITY: &str = "team.edit_velocity_per_min";
pub const CONFLICTS: &str = "team.conflicts";
pub const CONFLICT_RESOLUTION: &str = "team.conflict_resolution_ms_mean";
pub const COMMENT_RESPONSE: &str = "team.comment_response_ms_mean";
pub const EFFICIENCY: &str = "team.collaboration_efficiency";

/// Every metric this operator emits.
const METRICS: [&str; 7] = [
    WORDS,
    EDITS,
    EDIT_VELOCITY,
    CONFLICTS,
    CONFLICT_RESOLUTION,
    COMMENT_RESPONSE,
    EFFICIENCY,
];

/// `[team]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamMetricsConfig {
    /// Lengths of the tumbling windows, e.g. `["1m", "1h"]` (default 1 min
    /// and 1 h). Zero lengths and repeats are ignored.
    #[serde(deserialize_with = "durations")]
    pub windows: Vec<Duration>,
    /// A comment still unresolved this long after it was added is dropped
    /// (counted); a later resolution is not a response (default 7 days).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub comment_max_open: Duration,
    /// A conflict counts as open for efficiency at most this long after its
    /// detection, in case its resolution never comes (default 1 h).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub conflict_max_open: Duration,
    /// How long the latest closed figures of a scope stay queryable after
    /// their window ended, in event time (default 24 h).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub latest_retention: Duration,
}

impl Default for TeamMetricsConfig {
    fn default() -> Self {
        TeamMetricsConfig {
            windows: vec![Duration::from_secs(60), Duration::from_secs(3600)],
            comment_max_open: Duration::from_secs(7 * 24 * 3600),
            conflict_max_open: Duration::from_secs(3600),
            latest_retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl TeamMetricsConfig {
    /// Checks what serde cannot; the message starts with the key path.
    pub fn validate(&self) -> Result<(), OperatorConfigError> {
        if self.windows.iter().all(Duration::is_zero) {
            return Err(OperatorConfigError {
                path: "team.windows".into(),
                message: "needs at least one positive duration".into(),
            });
        }
        Ok(())
    }
}

/// A list of durations, each as [`crate::runtime::duration::deserialize`] reads it.
fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct One(#[serde(deserialize_with = "crate::runtime::duration::deserialize")] Duration);
    Ok(Vec::<One>::deserialize(d)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

/// The label of a window length in the `window` dimension.
pub fn window_label(ms: i64) -> String {
    for (unit, len) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= len && ms % len == 0 {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// The order in which events of one epoch must be observed, so that results
/// never depend on arrival order: event time, then openings (comment added,
/// conflict detected) before activity before resolutions, then id.
pub fn observation_order(e: &Event) -> (i64, u8, &str) {
    let rank = match &e.data {
        Payload::CollaborationCommentAdded(_) | Payload::CollaborationConflictDetected(_) => 0,
        Payload::CollaborationCommentResolved(_) | Payload::CollaborationConflictResolved(_) => 2,
        _ => 1,
    };
    (e.ts, rank, e.id.as_str())
}

/// One figure of a closed window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub metric: &'static str,
    /// Set for per-user figures (`team.words`, `team.edits`).
    pub user_id: Option<schemas::Text>,
    pub value: f64,
}

/// A [`Figure`] as a checkpoint stores it: the metric by name.
#[derive(Deserialize)]
struct StoredFigure {
    metric: String,
    user_id: Option<schemas::Text>,
    value: f64,
}

/// By hand: a derive would require `'de: 'static` for the `&'static str`;
/// the name is mapped back to one of [`METRICS`] instead.
impl<'de> Deserialize<'de> for Figure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Figure, D::Error> {
        let f = StoredFigure::deserialize(d)?;
        let metric = METRICS
            .into_iter()
            .find(|m| *m == f.metric)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("unknown team metric {:?}", f.metric))
            })?;
        Ok(Figure {
            metric,
            user_id: f.user_id,
            value: f.value,
        })
    }
}

/// Every figure of one closed window of one scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowFigures {
    pub window_ms: i64,
    /// Inclusive start and exclusive end (ms).
    pub start: i64,
    pub end: i64,
    pub figures: Vec<Figure>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct UserCounts {
    words: u64,
    edits: u64,
}

/// What one window of one scope has counted so far.
#[derive(Default, Clone, Serialize, Deserialize)]
struct Agg {
    /// Per user: a hash map, as every event of a window touches it (a
    /// B-tree compared user names at each level); sorted at the close.
    users: HashMap<schemas::Text, UserCounts>,
    edits: u64,
    conflicts: u64,
    resolved: u64,
    resolved_ms: i64,
    responses: u64,
    response_ms: i64,
    /// Active seconds per document (`None`: events without a document).
    active: BTreeMap<Option<schemas::Text>, Seconds>,
}

/// Distinct seconds, ascending. They mostly come in order (events are
/// observed in event-time order within an epoch, and epochs in order), so
/// adding one is a comparison with the last; a sorted `Vec` serializes as
/// the `BTreeSet<i64>` it replaced did (a sequence), so checkpoints keep
/// their format.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct Seconds(Vec<i64>);

impl Seconds {
    fn insert(&mut self, second: i64) {
        match self.0.last() {
            Some(&last) if last == second => {}
            Some(&last) if last > second => {
                if let Err(at) = self.0.binary_search(&second) {
                    self.0.insert(at, second);
                }
            }
            _ => self.0.push(second),
        }
    }

    /// Adds every second of `other` (both ascending and distinct).
    fn union(&mut self, other: &Seconds) {
        match (self.0.last(), other.0.first()) {
            (_, None) => {}
            // The usual case: a later shortest window's seconds.
            (None, Some(_)) => self.0.extend_from_slice(&other.0),
            (Some(&last), Some(&first)) if last < first => self.0.extend_from_slice(&other.0),
            _ => {
                for &second in &other.0 {
                    self.insert(second);
                }
            }
        }
    }
}

impl Agg {
    /// Adds what `other` counted (a shortest window rolled up into a longer
    /// one).
    fn add(&mut self, other: &Agg) {
        for (user, c) in &other.users {
            if let Some(mine) = self.users.get_mut(user) {
                mine.words += c.words;
                mine.edits += c.edits;
            } else {
                self.users.insert(user.clone(), c.clone());
            }
        }
        self.edits += other.edits;
        self.conflicts += other.conflicts;
        self.resolved += other.resolved;
        self.resolved_ms += other.resolved_ms;
        self.responses += other.responses;
        self.response_ms += other.response_ms;
        for (document, seconds) in &other.active {
            if let Some(mine) = self.active.get_mut(document) {
                mine.union(seconds);
            } else {
                self.active.insert(document.clone(), seconds.clone());
            }
        }
    }
}

/// A conflict as seen by one document: first detection, first resolution.
#[derive(Clone, Serialize, Deserialize)]
struct Span {
    detected: i64,
    resolved: Option<i64>,
}

impl Span {
    /// Last instant the conflict counts as open (inclusive).
    fn end(&self, max_open: i64) -> i64 {
        let cap = self.detected.saturating_add(max_open);
        self.resolved.map_or(cap, |r| r.min(cap))
    }
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct DocState {
    conflicts: HashMap<String, Span>,
    /// Open comments: id → time added.
    comments: HashMap<String, i64>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct ProjectState {
    /// Open windows per scope (`None`: the project), keyed by (end, length).
    windows: HashMap<Option<schemas::Text>, BTreeMap<(i64, i64), Agg>>,
    /// Conflicts and comments per document (`None`: events without one).
    docs: HashMap<Option<schemas::Text>, DocState>,
}

/// The pure core. Feed events in [`observation_order`]: records with
/// [`TeamMetrics::observe`], the conflicts operator's events with
/// [`TeamMetrics::observe_conflict`]; tell it the watermark with
/// [`TeamMetrics::advance_to`]. In the dataflow it runs as a [`Core`].
///
/// The config is kept as plain ms (not [`TeamMetricsConfig`]) so that a checkpoint
/// restores a complete tracker. Serialized by hand (see the `Serialize`
/// impl): a checkpoint holds the longer windows complete.
#[derive(Deserialize)]
pub struct TeamMetrics {
    /// Window lengths (ms), ascending, distinct, positive.
    lengths: Vec<i64>,
    longest: i64,
    comment_max_open: i64,
    conflict_max_open: i64,
    latest_retention: i64,
    projects: HashMap<String, ProjectState>,
    /// Every open window, in the order they close: (end, project, scope, length).
    closing: BTreeSet<(i64, String, Option<schemas::Text>, i64)>,
    /// At or before the first end in `closing` (`i64::MAX`: none), so
    /// that most events skip the search (`close_until` runs per event).
    /// Not stored: a restored tracker starts at `i64::MIN` (search once).
    #[serde(skip, default = "i64_min")]
    next_close: i64,
    /// Latest closed figures per project and scope, one per window length.
    latest: HashMap<String, HashMap<Option<schemas::Text>, Vec<WindowFigures>>>,
    comments_expired: u64,
    /// Watermark of the last pruning: pruning walks all state, so it runs
    /// once per [`PRUNE_EVERY_MS`] of event time, not per epoch (when it
    /// runs never changes a figure: expiry is checked against each event).
    last_prune: i64,
    /// With the roll-up: the longer windows ending at or before this count
    /// their events directly and take no shortest window in (those open
    /// when a checkpoint was restored, which hold their events so far).
    /// `None`: restored, not computed yet ([`TeamMetrics::direct_until`]).
    #[serde(skip)]
    direct_until: Option<i64>,
}

/// Field by field as the derived `Deserialize` reads them (the skipped ones
/// left out), with the open shortest windows added into the longer windows
/// holding them: what a tracker counting every event in every window holds,
/// so checkpoints keep their format and meaning.
impl Serialize for TeamMetrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let folded = self.folded();
        let projects = folded.as_ref().unwrap_or(&self.projects);
        let mut s = serializer.serialize_struct("TeamMetrics", 10)?;
        s.serialize_field("lengths", &self.lengths)?;
        s.serialize_field("longest", &self.longest)?;
        s.serialize_field("comment_max_open", &self.comment_max_open)?;
        s.serialize_field("conflict_max_open", &self.conflict_max_open)?;
        s.serialize_field("latest_retention", &self.latest_retention)?;
        s.serialize_field("projects", projects)?;
        s.serialize_field("closing", &self.closing)?;
        s.serialize_field("latest", &self.latest)?;
        s.serialize_field("comments_expired", &self.comments_expired)?;
        s.serialize_field("last_prune", &self.last_prune)?;
        s.end()
    }
}

/// Event time between two prunings of the team state.
const PRUNE_EVERY_MS: i64 = 60_000;

fn i64_min() -> i64 {
    i64::MIN
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl TeamMetrics {
    pub fn new(config: &TeamMetricsConfig) -> TeamMetrics {
        let mut lengths: Vec<i64> = config
            .windows
            .iter()
            .map(|d| ms(*d))
            .filter(|l| *l > 0)
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        TeamMetrics {
            longest: lengths.last().copied().unwrap_or(0),
            lengths,
            comment_max_open: ms(config.comment_max_open),
            conflict_max_open: ms(config.conflict_max_open),
            latest_retention: ms(config.latest_retention),
            projects: HashMap::default(),
            closing: BTreeSet::new(),
            next_close: i64::MAX,
            latest: HashMap::default(),
            comments_expired: 0,
            last_prune: i64::MIN,
            direct_until: Some(i64::MIN),
        }
    }

    /// Whether events are counted in the shortest windows only, and those
    /// added into the longer ones at their close: every length a multiple
    /// of the shortest, so that each shortest window lies in exactly one
    /// window of every length.
    fn rolls_up(&self) -> bool {
        match self.lengths.split_first() {
            Some((&shortest, longer)) => {
                !longer.is_empty() && longer.iter().all(|l| l % shortest == 0)
            }
            None => false,
        }
    }

    /// The longer windows ending at or before this count their events
    /// directly (`i64::MAX`: all, without the roll-up). After a restore:
    /// the latest end of the longer windows open then.
    fn direct_until(&mut self) -> i64 {
        if !self.rolls_up() {
            return i64::MAX;
        }
        let shortest = self.lengths[0];
        *self.direct_until.get_or_insert_with(|| {
            (self.closing.iter())
                .filter(|k| k.3 > shortest)
                .map(|k| k.0)
                .max()
                .unwrap_or(i64::MIN)
        })
    }

    /// The open windows with every open shortest window added into the
    /// longer windows it rolls up into (`None`: nothing to add).
    fn folded(&self) -> Option<HashMap<String, ProjectState>> {
        let direct_until = self.direct_until?;
        if !self.rolls_up() {
            return None;
        }
        let (&shortest, longer) = self.lengths.split_first()?;
        let mut projects = self.projects.clone();
        for p in projects.values_mut() {
            for windows in p.windows.values_mut() {
                let open: Vec<((i64, i64), Agg)> = (windows.iter())
                    .filter(|((_, len), _)| *len == shortest)
                    .map(|(k, agg)| (*k, agg.clone()))
                    .collect();
                for ((end, _), agg) in open {
                    roll_up(
                        windows,
                        longer,
                        end.saturating_sub(shortest),
                        direct_until,
                        &agg,
                    );
                }
            }
        }
        Some(projects)
    }

    /// Whether the records input carries anything for this operator.
    pub fn wants_record(e: &Event) -> bool {
        e.project_id.is_some()
            && matches!(
                e.data,
                Payload::WritingKeystroke(_)
                    | Payload::WritingWordAdded(_)
                    | Payload::CollaborationEditApplied(_)
                    | Payload::CollaborationCommentAdded(_)
                    | Payload::CollaborationCommentResolved(_)
            )
    }

    /// Whether the conflicts input carries anything for this operator.
    pub fn wants_conflict(e: &Event) -> bool {
        e.project_id.is_some()
            && matches!(
                e.data,
                Payload::CollaborationConflictDetected(_)
                    | Payload::CollaborationConflictResolved(_)
            )
    }

    /// Entries held: open windows, tracked conflicts and comments, latest
    /// figures. Bounded by what is active within the retention periods.
    pub fn state_size(&self) -> usize {
        let docs: usize = self
            .projects
            .values()
            .flat_map(|p| p.docs.values())
            .map(|d| d.conflicts.len() + d.comments.len())
            .sum();
        let latest: usize = self
            .latest
            .values()
            .flat_map(|p| p.values())
            .map(Vec::len)
            .sum();
        self.closing.len() + docs + latest
    }

    /// Comments dropped because they stayed open longer than `comment_max_open`.
    pub fn comments_expired(&self) -> u64 {
        self.comments_expired
    }

    /// The latest closed-window figures of a project (`document` = `None`)
    /// or one of its documents, one per window length (shortest first).
    pub fn latest(&self, project: &str, document: Option<&str>) -> Vec<&WindowFigures> {
        let Some(scopes) = self.latest.get(project) else {
            return Vec::new();
        };
        let key = document.map(schemas::Text::from);
        let mut v: Vec<&WindowFigures> = scopes.get(&key).into_iter().flatten().collect();
        v.sort_by_key(|w| w.window_ms);
        v
    }

    /// An input record (activity or comment); other types are ignored.
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Event>) {
        let Some(project) = e.project_id.as_deref() else {
            return;
        };
        self.close_until(e.ts, out, usize::MAX);
        match &e.data {
            Payload::WritingKeystroke(_)
            | Payload::WritingWordAdded(_)
            | Payload::CollaborationEditApplied(_) => {
                let words = written_words(e).unwrap_or(0);
                let edit = u64::from(matches!(e.data, Payload::CollaborationEditApplied(_)));
                let second = e.ts.div_euclid(1000);
                let user = e.user_id.as_deref();
                let document = &e.document_id;
                self.touch(project, document, e.ts, |agg| {
                    agg.edits += edit;
                    if let Some(u) = user {
                        // One search when the user is known (most events);
                        // `entry` would allocate the key every time.
                        if let Some(c) = agg.users.get_mut(u) {
                            c.words += words;
                            c.edits += edit;
                        } else {
                            agg.users
                                .insert(u.into(), UserCounts { words, edits: edit });
                        }
                    }
                    if let Some(s) = agg.active.get_mut(document) {
                        s.insert(second);
                    } else {
                        agg.active.insert(document.clone(), Seconds(vec![second]));
                    }
                });
            }
            Payload::CollaborationCommentAdded(c) => {
                let max_open = self.comment_max_open;
                let Some(doc) = self.doc(project, &e.document_id) else {
                    return;
                };
                let expired = match doc.comments.get(&c.comment_id) {
                    // Another report of a comment still open: the first counts.
                    Some(&added) if e.ts.saturating_sub(added) <= max_open => return,
                    Some(_) => 1,
                    None => 0,
                };
                doc.comments.insert(c.comment_id.clone(), e.ts);
                self.comments_expired += expired;
            }
            Payload::CollaborationCommentResolved(c) => {
                let max_open = self.comment_max_open;
                let Some(doc) = self.doc(project, &e.document_id) else {
                    return;
                };
                match doc.comments.remove(&c.comment_id) {
                    Some(added) if e.ts.saturating_sub(added) <= max_open => {
                        let response = e.ts.saturating_sub(added);
                        self.touch(project, &e.document_id, e.ts, |agg| {
                            agg.responses += 1;
                            agg.response_ms += response;
                        });
                    }
                    Some(_) => self.comments_expired += 1,
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// A conflict event from the conflicts operator; other types are ignored.
    pub fn observe_conflict(&mut self, e: &Event, out: &mut Vec<Event>) {
        let Some(project) = e.project_id.as_deref() else {
            return;
        };
        self.close_until(e.ts, out, usize::MAX);
        let (max_open, longest) = (self.conflict_max_open, self.longest);
        // A span still retained (see `prune`) is the same conflict; an older
        // one can no longer touch any open window and is forgotten.
        let live = |s: &Span| s.end(max_open) >= e.ts.saturating_sub(longest);
        match &e.data {
            Payload::CollaborationConflictDetected(c) => {
                let Some(doc) = self.doc(project, &e.document_id) else {
                    return;
                };
                if doc.conflicts.get(&c.conflict_id).is_some_and(live) {
                    return;
                }
                let span = Span {
                    detected: e.ts,
                    resolved: None,
                };
                doc.conflicts.insert(c.conflict_id.clone(), span);
                self.touch(project, &e.document_id, e.ts, |agg| agg.conflicts += 1);
            }
            Payload::CollaborationConflictResolved(c) => {
                let duration = c.duration_ms.max(0);
                let Some(doc) = self.doc(project, &e.document_id) else {
                    return;
                };
                match doc.conflicts.get_mut(&c.conflict_id) {
                    Some(s) if live(s) => {
                        if s.resolved.is_some() {
                            return;
                        }
                        s.resolved = Some(e.ts);
                    }
                    _ => {
                        let span = Span {
                            detected: e.ts.saturating_sub(duration),
                            resolved: Some(e.ts),
                        };
                        doc.conflicts.insert(c.conflict_id.clone(), span);
                    }
                }
                self.touch(project, &e.document_id, e.ts, |agg| {
                    agg.resolved += 1;
                    agg.resolved_ms += duration;
                });
            }
            _ => {}
        }
    }

    /// No event with `ts < watermark` will come: closes the windows ending
    /// at or before it and forgets what no open window can need.
    pub fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        self.advance_some(watermark, out, usize::MAX);
    }

    /// [`TeamMetrics::advance_to`], closing windows until about `budget`
    /// figures were emitted (at least one window); whether every window
    /// due by `watermark` is closed. Windows close in the same order either
    /// way.
    pub fn advance_some(&mut self, watermark: i64, out: &mut Vec<Event>, budget: usize) -> bool {
        let limit = out.len().saturating_add(budget);
        if !self.close_until(watermark, out, limit) {
            return false;
        }
        if watermark.saturating_sub(self.last_prune) >= PRUNE_EVERY_MS {
            self.last_prune = watermark;
            self.prune(watermark);
        }
        true
    }

    /// End of input (replay): closes every open window.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        self.close_until(i64::MAX, out, usize::MAX);
    }

    fn doc(&mut self, project: &str, document: &Option<schemas::Text>) -> Option<&mut DocState> {
        // Look up before inserting: `entry` would allocate the keys every time.
        if !self.projects.contains_key(project) {
            self.projects
                .insert(project.to_owned(), ProjectState::default());
        }
        let p = self.projects.get_mut(project)?;
        if !p.docs.contains_key(document) {
            p.docs.insert(document.clone(), DocState::default());
        }
        p.docs.get_mut(document)
    }

    /// Applies `f` to the window containing `ts` of every length, in the
    /// project's scope and (if any) the document's. With the roll-up, `f`
    /// applies to the shortest window only (and to longer windows counted
    /// directly, see [`TeamMetrics::direct_until`]); the longer windows
    /// holding it are opened with it, to take it in when it closes.
    fn touch(
        &mut self,
        project: &str,
        document: &Option<schemas::Text>,
        ts: i64,
        f: impl Fn(&mut Agg),
    ) {
        let direct_until = self.direct_until();
        let shortest = self.lengths.first().copied().unwrap_or(0);
        let p = if let Some(p) = self.projects.get_mut(project) {
            p
        } else {
            self.projects.entry(project.to_owned()).or_default()
        };
        let doc_scope = document.is_some().then_some(document);
        for scope in [Some(&None), doc_scope].into_iter().flatten() {
            let windows = if let Some(w) = p.windows.get_mut(scope) {
                w
            } else {
                p.windows.entry(scope.clone()).or_default()
            };
            let mut opened = false;
            for &len in &self.lengths {
                let start = ts.div_euclid(len) * len;
                let end = start.saturating_add(len);
                let direct = len == shortest || end <= direct_until;
                if !direct && !opened {
                    // Rolled up: its shortest window is open, so is it.
                    continue;
                }
                let agg = windows.entry((end, len)).or_insert_with(|| {
                    opened = true;
                    self.closing
                        .insert((end, project.to_owned(), scope.clone(), len));
                    self.next_close = self.next_close.min(end);
                    Agg::default()
                });
                if direct {
                    f(agg);
                }
            }
        }
    }

    /// Closes the windows ending by `watermark`, oldest first, until `out`
    /// holds `limit` events; whether none is left to close.
    fn close_until(&mut self, watermark: i64, out: &mut Vec<Event>, limit: usize) -> bool {
        if self.next_close > watermark {
            return true;
        }
        let done = self.close_some(watermark, out, limit);
        self.next_close = self.closing.first().map_or(i64::MAX, |k| k.0);
        done
    }

    /// [`TeamMetrics::close_until`] without the shortcut.
    fn close_some(&mut self, watermark: i64, out: &mut Vec<Event>, limit: usize) -> bool {
        let direct_until = self.direct_until();
        let shortest = self.lengths.first().copied().unwrap_or(0);
        while self.closing.first().is_some_and(|k| k.0 <= watermark) {
            if out.len() >= limit {
                return false;
            }
            let Some((end, project, scope, len)) = self.closing.pop_first() else {
                break;
            };
            let Some(p) = self.projects.get_mut(&project) else {
                continue;
            };
            let Some(windows) = p.windows.get_mut(&scope) else {
                continue;
            };
            let Some(agg) = windows.remove(&(end, len)) else {
                continue;
            };
            let start = end.saturating_sub(len);
            if len == shortest && direct_until < i64::MAX {
                // Rolled up into the longer windows holding it, which close
                // after it (same end: the shorter length sorts first).
                roll_up(windows, &self.lengths[1..], start, direct_until, &agg);
            }
            if windows.is_empty() {
                p.windows.remove(&scope);
            }
            let figures = WindowFigures {
                window_ms: len,
                start,
                end,
                figures: figures(&p.docs, self.conflict_max_open, start, end, len, agg),
            };
            emit(&project, &scope, &figures, out);
            let latest = self
                .latest
                .entry(project)
                .or_default()
                .entry(scope)
                .or_default();
            latest.retain(|w| w.window_ms != len);
            latest.push(figures);
        }
        true
    }

    fn prune(&mut self, watermark: i64) {
        let (conflict_max, longest, comment_max) =
            (self.conflict_max_open, self.longest, self.comment_max_open);
        let conflict_horizon = watermark.saturating_sub(longest);
        let mut expired = 0;
        self.projects.retain(|_, p| {
            p.docs.retain(|_, d| {
                d.conflicts
                    .retain(|_, s| s.end(conflict_max) >= conflict_horizon);
                d.comments.retain(|_, added| {
                    let keep = watermark.saturating_sub(*added) <= comment_max;
                    expired += u64::from(!keep);
                    keep
                });
                !d.conflicts.is_empty() || !d.comments.is_empty()
            });
            !p.docs.is_empty() || !p.windows.is_empty()
        });
        self.comments_expired += expired;
        let horizon = watermark.saturating_sub(self.latest_retention);
        self.latest.retain(|_, scopes| {
            scopes.retain(|_, figures| {
                figures.retain(|w| w.end >= horizon);
                !figures.is_empty()
            });
            !scopes.is_empty()
        });
    }
}

/// Adds `agg`, the shortest window starting at `start`, into the window of
/// each `longer` length holding it, unless that one counts its events
/// directly (it ends at or before `direct_until`).
fn roll_up(
    windows: &mut BTreeMap<(i64, i64), Agg>,
    longer: &[i64],
    start: i64,
    direct_until: i64,
    agg: &Agg,
) {
    for &len in longer {
        let end = (start.div_euclid(len) * len).saturating_add(len);
        if end > direct_until
            && let Some(w) = windows.get_mut(&(end, len))
        {
            w.add(agg);
        }
    }
}

/// The figures of a closed window (see the module doc for each definition).
fn figures(
    docs: &HashMap<Option<schemas::Text>, DocState>,
    conflict_max_open: i64,
    start: i64,
    end: i64,
    len: i64,
    agg: Agg,
) -> Vec<Figure> {
    let mut v = Vec::new();
    let figure = |metric, user_id, value| Figure {
        metric,
        user_id,
        value,
    };
    let mut users: Vec<(schemas::Text, UserCounts)> = agg.users.into_iter().collect();
    users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (user, c) in users {
        v.push(figure(WORDS, Some(user.clone()), c.words as f64));
        v.push(figure(EDITS, Some(user), c.edits as f64));
    }
    v.push(figure(
        EDIT_VELOCITY,
        None,
        agg.edits as f64 * 60_000.0 / len as f64,
    ));
    v.push(figure(CONFLICTS, None, agg.conflicts as f64));
    if agg.resolved > 0 {
        let mean = agg.resolved_ms as f64 / agg.resolved as f64;
        v.push(figure(CONFLICT_RESOLUTION, None, mean));
    }
    if agg.responses > 0 {
        let mean = agg.response_ms as f64 / agg.responses as f64;
        v.push(figure(COMMENT_RESPONSE, None, mean));
    }
    let (mut active, mut clean) = (0u64, 0u64);
    for (document, seconds) in &agg.active {
        // The conflicts of this document that overlap the window.
        let spans: Vec<(i64, i64)> = docs
            .get(document)
            .into_iter()
            .flat_map(|d| d.conflicts.values())
            .map(|s| (s.detected, s.end(conflict_max_open)))
            .filter(|&(from, to)| from < end && to >= start)
            .collect();
        for &sec in &seconds.0 {
            let lo = sec.saturating_mul(1000).max(start);
            let hi = sec.saturating_mul(1000).saturating_add(999).min(end - 1);
            active += 1;
            if !spans.iter().any(|&(from, to)| from <= hi && to >= lo) {
                clean += 1;
            }
        }
    }
    if active > 0 {
        v.push(figure(EFFICIENCY, None, clean as f64 / active as f64));
    }
    v
}

/// Whether `e` is one of this operator's window figures: emitted for every
/// scope and user at once when a window closes (the fanout paces them).
pub fn is_window_figure(e: &Event) -> bool {
    matches!(&e.data, Payload::AnalyticsMetricUpdated(m) if m.metric.starts_with("team."))
}

/// The `analytics.metric_updated` events of one closed window.
fn emit(project: &str, scope: &Option<schemas::Text>, w: &WindowFigures, out: &mut Vec<Event>) {
    let window = window_label(w.window_ms);
    let (len, start) = (w.window_ms.to_string(), w.start.to_string());
    let level = if scope.is_some() {
        "document"
    } else {
        "project"
    };
    let document = scope.as_deref().unwrap_or("");
    for f in &w.figures {
        let user = f.user_id.as_deref().unwrap_or("");
        // Room for all four at once (`vec![..]` held one, then grew).
        let mut dimensions = Vec::with_capacity(4);
        dimensions.push(dimension("project_id", project));
        if let Some(d) = scope {
            dimensions.push(dimension("document_id", d));
        }
        if let Some(u) = &f.user_id {
            dimensions.push(dimension("user_id", u));
        }
        dimensions.push(dimension("window", &window));
        out.push(Event {
            id: derived_id(
                "team",
                &[f.metric, level, project, document, user, &len, &start],
            ),
            ts: w.end - 1,
            user_id: f.user_id.clone(),
            project_id: Some(project.into()),
            document_id: scope.clone(),
            data: Payload::AnalyticsMetricUpdated(MetricUpdated {
                metric: f.metric.into(),
                value: f.value,
                window_ms: Some(w.window_ms),
                dimensions,
            }),
        });
    }
}

fn dimension(name: &str, value: &str) -> Dimension {
    Dimension {
        name: name.into(),
        value: value.into(),
    }
}

/// Frontier-driven and keyed by project, in the operator runtime. Its one
/// input is the records concatenated with the conflicts operator's events as
/// derived records (`events.concat(conflicts)`).
impl Core for TeamMetrics {
    type Item = Record;
    const NAME: &'static str = "TeamMetrics";
    const ORDER: Order = Order::EventTime;

    fn wants(r: &Record) -> bool {
        // A conflict event a client sent is not a conflict: only derived ones.
        if r.is_derived() {
            TeamMetrics::wants_conflict(&r.event)
        } else {
            TeamMetrics::wants_record(&r.event)
        }
    }

    fn key(r: &Record) -> u64 {
        stable_hash(r.event.project_id.as_deref().unwrap_or(""))
    }

    fn observe(&mut self, r: &Record, out: &mut Vec<Event>) {
        if r.is_derived() {
            TeamMetrics::observe_conflict(self, &r.event, out);
        } else {
            TeamMetrics::observe(self, &r.event, out);
        }
    }

    fn advance_to(&mut self, watermark: i64, out: &mut Vec<Event>) {
        TeamMetrics::advance_to(self, watermark, out);
    }

    fn advance_some(&mut self, watermark: i64, out: &mut Vec<Event>, budget: usize) -> bool {
        TeamMetrics::advance_some(self, watermark, out, budget)
    }

    fn flush(&mut self, out: &mut Vec<Event>) {
        TeamMetrics::flush(self, out);
    }

    fn state_size(&self) -> usize {
        TeamMetrics::state_size(self)
    }

    /// [`observation_order`], then records before conflict events (a
    /// derived event and a record never share an id, but this keeps the
    /// order total whatever the ids).
    fn sort_epoch(records: &mut [Record]) {
        records.sort_by(|a, b| {
            (observation_order(&a.event), a.is_derived())
                .cmp(&(observation_order(&b.event), b.is_derived()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::payload::{
        CommentAdded, CommentResolved, ConflictDetected, ConflictKind, ConflictResolved,
        ConflictSeverity, EditApplied, Keystroke, TextSource, WordAdded,
    };

    const P: &str = "p1";

    fn ev(id: &str, ts: i64, user: &str, doc: Option<&str>, data: Payload) -> Event {
        Event {
            id: id.into(),
            ts,
            user_id: Some(user.into()),
            project_id: Some(P.into()),
            document_id: doc.map(Into::into),
            data,
        }
    }

    fn words(id: &str, ts: i64, user: &str, doc: Option<&str>, words: i64) -> Event {
        ev(
            id,
            ts,
            user,
            doc,
            Payload::WritingWordAdded(WordAdded { words }),
        )
    }

    fn edit(id: &str, ts: i64, user: &str, doc: Option<&str>) -> Event {
        let e = EditApplied {
            paragraph: 1,
            offset: 0,
            inserted: 3,
            deleted: 0,
        };
        ev(id, ts, user, doc, Payload::CollaborationEditApplied(e))
    }

    fn keystroke(
        id: &str,
        ts: i64,
        user: &str,
        doc: Option<&str>,
        words: i64,
        paste: bool,
    ) -> Event {
        let k = Keystroke {
            keystrokes: 5,
            words,
            chars: 5,
            deleted_chars: None,
            source: if paste {
                TextSource::Paste
            } else {
                TextSource::Typed
            },
        };
        ev(id, ts, user, doc, Payload::WritingKeystroke(k))
    }

    fn comment_added(id: &str, ts: i64, doc: Option<&str>, comment: &str) -> Event {
        let c = CommentAdded {
            comment_id: comment.into(),
            paragraph: 0,
            mentions: Vec::new(),
            thread_id: None,
        };
        ev(id, ts, "u1", doc, Payload::CollaborationCommentAdded(c))
    }

    fn comment_resolved(id: &str, ts: i64, doc: Option<&str>, comment: &str) -> Event {
        let c = CommentResolved {
            comment_id: comment.into(),
            resolved_by: None,
        };
        ev(id, ts, "u2", doc, Payload::CollaborationCommentResolved(c))
    }

    fn detected(id: &str, ts: i64, user: &str, doc: &str, conflict: &str) -> Event {
        let c = ConflictDetected {
            conflict_id: conflict.into(),
            other_user_id: "other".into(),
            paragraph: 1,
            severity: ConflictSeverity::High,
            kind: ConflictKind::SameParagraph,
            suggestion: "someone is editing this paragraph".into(),
        };
        ev(
            id,
            ts,
            user,
            Some(doc),
            Payload::CollaborationConflictDetected(Box::new(c)),
        )
    }

    fn resolved(
        id: &str,
        ts: i64,
        user: &str,
        doc: &str,
        conflict: &str,
        duration_ms: i64,
    ) -> Event {
        let c = ConflictResolved {
            conflict_id: conflict.into(),
            other_user_id: "other".into(),
            paragraph: 1,
            duration_ms,
            resolution: None,
        };
        ev(
            id,
            ts,
            user,
            Some(doc),
            Payload::CollaborationConflictResolved(Box::new(c)),
        )
    }

    fn is_conflict(e: &Event) -> bool {
        matches!(
            e.data,
            Payload::CollaborationConflictDetected(_) | Payload::CollaborationConflictResolved(_)
        )
    }

    fn cfg(windows_ms: &[u64]) -> TeamMetricsConfig {
        TeamMetricsConfig {
            windows: windows_ms
                .iter()
                .map(|m| Duration::from_millis(*m))
                .collect(),
            ..TeamMetricsConfig::default()
        }
    }

    /// Feeds `events` (conflict events to the conflicts input) in
    /// observation order, then flushes.
    fn run(t: &mut TeamMetrics, mut events: Vec<Event>) -> Vec<Event> {
        events.sort_by(|a, b| observation_order(a).cmp(&observation_order(b)));
        let mut out = Vec::new();
        for e in &events {
            if is_conflict(e) {
                t.observe_conflict(e, &mut out);
            } else {
                t.observe(e, &mut out);
            }
        }
        t.flush(&mut out);
        out
    }

    /// (metric, project, document, user, window_ms, ts, value).
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        i64,
        i64,
        f64,
    );

    fn rows(out: &[Event]) -> Vec<Row> {
        let mut v: Vec<Row> = out
            .iter()
            .map(|e| match &e.data {
                Payload::AnalyticsMetricUpdated(m) => (
                    m.metric.to_string(),
                    e.project_id
                        .as_deref()
                        .map(String::from)
                        .unwrap_or_default(),
                    e.document_id.as_deref().map(String::from),
                    e.user_id.as_deref().map(String::from),
                    m.window_ms.unwrap_or_default(),
                    e.ts,
                    m.value,
                ),
                other => panic!("not a metric: {other:?}"),
            })
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }

    /// Values of `metric` for a scope/user and window length, by window end.
    fn values(
        out: &[Event],
        metric: &str,
        doc: Option<&str>,
        user: Option<&str>,
        len: i64,
    ) -> Vec<(i64, f64)> {
        rows(out)
            .into_iter()
            .filter(|r| {
                r.0 == metric && r.2.as_deref() == doc && r.3.as_deref() == user && r.4 == len
            })
            .map(|r| (r.5 + 1, r.6))
            .collect()
    }

    #[test]
    fn an_event_exactly_at_the_window_end_belongs_to_the_next_window() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(
            &mut t,
            vec![
                words("a", 0, "u1", None, 3),
                words("b", 59_999, "u1", None, 4),
                words("c", 60_000, "u1", None, 5),
            ],
        );
        assert_eq!(
            values(&out, WORDS, None, Some("u1"), 60_000),
            [(60_000, 7.0), (120_000, 5.0)]
        );
    }

    #[test]
    fn a_window_closes_only_when_the_watermark_reaches_its_end() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let mut out = Vec::new();
        t.observe(&words("a", 1_000, "u1", Some("d1"), 2), &mut out);
        t.advance_to(59_999, &mut out);
        assert!(out.is_empty(), "an event at 59 999 could still come");
        t.advance_to(60_000, &mut out);
        assert!(!out.is_empty());
        assert!(out.iter().all(|e| e.ts == 59_999), "stamped at end - 1");
        // Only the latest figures (project and document scope) remain.
        assert_eq!(t.state_size(), 2);
        t.advance_to(60_000 + 24 * 3_600_000 + 1, &mut out);
        assert_eq!(
            t.state_size(),
            0,
            "latest figures expire after the retention"
        );
    }

    #[test]
    fn empty_windows_emit_nothing() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(
            &mut t,
            vec![
                edit("a", 10_000, "u1", Some("d1")),
                edit("b", 200_000, "u1", Some("d1")),
            ],
        );
        let ends: BTreeSet<i64> = out.iter().map(|e| e.ts + 1).collect();
        assert_eq!(ends, BTreeSet::from([60_000, 240_000]));
    }

    #[test]
    fn the_hour_window_sums_the_minute_windows() {
        let mut t = TeamMetrics::new(&TeamMetricsConfig::default());
        let mut events = Vec::new();
        for i in 0..200i64 {
            let ts = (i * 7_919) % 3_600_000;
            let user = ["u1", "u2", "u3"][(i % 3) as usize];
            let doc = ["d1", "d2"][(i % 2) as usize];
            events.push(words(&format!("w{i}"), ts, user, Some(doc), i % 5));
            if i % 4 == 0 {
                events.push(edit(&format!("e{i}"), ts + 1, user, Some(doc)));
            }
            if i % 10 == 0 {
                events.push(detected(&format!("k{i}"), ts, user, doc, &format!("c{i}")));
            }
        }
        let out = run(&mut t, events);
        let sum = |metric: &str, doc: Option<&str>, user: Option<&str>| -> f64 {
            values(&out, metric, doc, user, 60_000)
                .iter()
                .map(|v| v.1)
                .sum()
        };
        for user in ["u1", "u2", "u3"] {
            for doc in [None, Some("d1"), Some("d2")] {
                for metric in [WORDS, EDITS] {
                    let hour = values(&out, metric, doc, Some(user), 3_600_000);
                    assert_eq!(hour.len(), 1);
                    assert_eq!(
                        hour[0].1,
                        sum(metric, doc, Some(user)),
                        "{metric} {user} {doc:?}"
                    );
                }
            }
        }
        let hour = values(&out, CONFLICTS, None, None, 3_600_000);
        assert_eq!(hour, [(3_600_000, 20.0)]);
        assert_eq!(sum(CONFLICTS, None, None), 20.0);
        assert_eq!(
            values(&out, EDIT_VELOCITY, None, None, 3_600_000),
            [(3_600_000, 50.0 / 60.0)]
        );
    }

    #[test]
    fn words_count_typed_text_only_and_edits_count_edit_events() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(
            &mut t,
            vec![
                keystroke("a", 0, "u1", Some("d1"), 4, false),
                keystroke("b", 1, "u1", Some("d1"), 40, true),
                edit("c", 2, "u1", Some("d1")),
                edit("d", 3, "u2", Some("d1")),
            ],
        );
        assert_eq!(
            values(&out, WORDS, Some("d1"), Some("u1"), 60_000),
            [(60_000, 4.0)]
        );
        assert_eq!(
            values(&out, EDITS, Some("d1"), Some("u1"), 60_000),
            [(60_000, 1.0)]
        );
        assert_eq!(
            values(&out, WORDS, Some("d1"), Some("u2"), 60_000),
            [(60_000, 0.0)]
        );
        assert_eq!(
            values(&out, EDIT_VELOCITY, Some("d1"), None, 60_000),
            [(60_000, 2.0)]
        );
    }

    #[test]
    fn a_windows_per_user_figures_come_out_in_user_order() {
        // Users counted in reverse order; the counts live in a hash map,
        // and the figures must still come out sorted by user (outputs are
        // files and topics that replays reproduce byte for byte).
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let events: Vec<Event> = (0..64)
            .rev()
            .map(|i| {
                keystroke(
                    &format!("k{i}"),
                    63 - i,
                    &format!("u{i:02}"),
                    None,
                    1,
                    false,
                )
            })
            .collect();
        let out = run(&mut t, events);
        let users: Vec<&str> = out
            .iter()
            .filter(|e| matches!(&e.data, Payload::AnalyticsMetricUpdated(m) if m.metric == WORDS))
            .filter_map(|e| e.user_id.as_deref())
            .collect();
        let mut sorted = users.clone();
        sorted.sort_unstable();
        assert_eq!(users.len(), 64);
        assert_eq!(users, sorted);
    }

    #[test]
    fn comment_response_time_is_resolution_minus_addition() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(
            &mut t,
            vec![
                comment_added("a1", 10_000, Some("d1"), "c1"),
                comment_added("a2", 20_000, Some("d1"), "c2"),
                comment_added("a3", 30_000, Some("d1"), "c3"),
                comment_resolved("r1", 40_000, Some("d1"), "c1"),
                comment_resolved("r3", 50_000, Some("d1"), "c3"),
                comment_resolved("r2", 70_000, Some("d1"), "c2"),
                // Resolved without a known addition: ignored.
                comment_resolved("r9", 75_000, Some("d1"), "c9"),
            ],
        );
        for doc in [None, Some("d1")] {
            assert_eq!(
                values(&out, COMMENT_RESPONSE, doc, None, 60_000),
                [(60_000, 25_000.0), (120_000, 50_000.0)]
            );
        }
        assert_eq!(t.state_size(), 2, "only the latest figures remain");
    }

    #[test]
    fn a_comment_open_longer_than_the_bound_is_dropped_and_counted() {
        let config = TeamMetricsConfig {
            comment_max_open: Duration::from_secs(60),
            ..cfg(&[60_000])
        };
        let mut t = TeamMetrics::new(&config);
        let mut out = Vec::new();
        let events = [
            comment_added("a1", 0, Some("d1"), "c1"),
            comment_added("a2", 0, Some("d1"), "c2"),
            comment_added("a3", 0, Some("d1"), "c3"),
            comment_resolved("r1", 60_000, Some("d1"), "c1"),
            comment_resolved("r2", 60_001, Some("d1"), "c2"),
        ];
        for e in &events {
            t.observe(e, &mut out);
        }
        t.advance_to(60_002, &mut out);
        assert_eq!(t.comments_expired(), 2, "c2 resolved too late, c3 never");
        t.advance_to(120_000, &mut out);
        assert_eq!(
            values(&out, COMMENT_RESPONSE, Some("d1"), None, 60_000),
            [(120_000, 60_000.0)],
            "exactly the bound still counts"
        );
        // State is pruned once per minute of event time.
        t.advance_to(120_002 + PRUNE_EVERY_MS, &mut out);
        assert!(t.projects.is_empty(), "no comment left open");
    }

    #[test]
    fn conflict_resolution_mean_counts_each_conflict_once() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(
            &mut t,
            vec![
                // c1 reported by both users of the pair.
                detected("k1", 1_000, "u1", "d1", "c1"),
                detected("k2", 1_000, "u2", "d1", "c1"),
                detected("k3", 2_000, "u1", "d1", "c2"),
                resolved("r1", 5_000, "u1", "d1", "c1", 4_000),
                resolved("r2", 5_000, "u2", "d1", "c1", 4_000),
                resolved("r3", 12_000, "u1", "d1", "c2", 10_000),
            ],
        );
        for doc in [None, Some("d1")] {
            assert_eq!(values(&out, CONFLICTS, doc, None, 60_000), [(60_000, 2.0)]);
            assert_eq!(
                values(&out, CONFLICT_RESOLUTION, doc, None, 60_000),
                [(60_000, 7_000.0)]
            );
        }
        assert!(
            values(&out, EFFICIENCY, None, None, 60_000).is_empty(),
            "no activity, no efficiency"
        );
    }

    #[test]
    fn efficiency_is_one_without_conflicts() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(
            &mut t,
            (0..10)
                .map(|i| edit(&format!("e{i}"), i * 3_000, "u1", Some("d1")))
                .collect(),
        );
        assert_eq!(
            values(&out, EFFICIENCY, Some("d1"), None, 60_000),
            [(60_000, 1.0)]
        );
        assert_eq!(
            values(&out, EFFICIENCY, None, None, 60_000),
            [(60_000, 1.0)]
        );
    }

    #[test]
    fn efficiency_counts_active_seconds_while_a_conflict_is_open() {
        let mut t = TeamMetrics::new(&cfg(&[10_000]));
        let mut events: Vec<Event> = (0..20)
            .map(|s| edit(&format!("e{s}"), s * 1_000 + 500, "u1", Some("d1")))
            .collect();
        // Open over seconds 3..=5.
        events.push(detected("k1", 3_200, "u1", "d1", "c1"));
        events.push(resolved("r1", 5_100, "u1", "d1", "c1", 1_900));
        // Open from second 8 across the window end, until second 12.
        events.push(detected("k2", 8_999, "u2", "d1", "c2"));
        events.push(resolved("r2", 12_000, "u2", "d1", "c2", 3_001));
        // Another document's conflict does not touch d1.
        events.push(detected("k3", 0, "u3", "d2", "c3"));
        events.push(resolved("r3", 19_000, "u3", "d2", "c3", 19_000));
        let out = run(&mut t, events);
        assert_eq!(
            values(&out, EFFICIENCY, Some("d1"), None, 10_000),
            [(10_000, 0.5), (20_000, 0.7)]
        );
    }

    #[test]
    fn an_unresolved_conflict_stops_counting_after_its_bound() {
        let config = TeamMetricsConfig {
            conflict_max_open: Duration::from_millis(2_000),
            ..cfg(&[10_000])
        };
        let mut t = TeamMetrics::new(&config);
        let mut events: Vec<Event> = (0..5)
            .map(|s| edit(&format!("e{s}"), s * 1_000, "u1", Some("d1")))
            .collect();
        events.push(detected("k1", 0, "u1", "d1", "c1"));
        let out = run(&mut t, events);
        // Seconds 0, 1, 2 conflicted (open through 2 000 inclusive).
        assert_eq!(
            values(&out, EFFICIENCY, Some("d1"), None, 10_000),
            [(10_000, 0.4)]
        );
    }

    #[test]
    fn records_without_project_and_client_sent_conflicts_are_ignored() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let mut out = Vec::new();
        let mut e = words("a", 0, "u1", None, 3);
        e.project_id = None;
        t.observe(&e, &mut out);
        // A conflict on the records input is not the conflicts operator's.
        t.observe(&detected("k", 0, "u1", "d1", "c1"), &mut out);
        t.flush(&mut out);
        assert!(out.is_empty());
        assert_eq!(t.state_size(), 0);
        assert!(!TeamMetrics::wants_record(&e));
        assert!(!TeamMetrics::wants_record(&detected(
            "k", 0, "u1", "d1", "c1"
        )));
    }

    #[test]
    fn outputs_carry_envelope_and_dimensions() {
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let out = run(&mut t, vec![words("a", 61_000, "u1", Some("d1"), 3)]);
        let e = out
            .iter()
            .find(|e| e.document_id.is_some() && e.user_id.is_some())
            .unwrap();
        let Payload::AnalyticsMetricUpdated(m) = &e.data else {
            panic!()
        };
        let dims: Vec<(&str, &str)> = m
            .dimensions
            .iter()
            .map(|d| (d.name.as_str(), d.value.as_str()))
            .collect();
        assert_eq!(
            dims,
            [
                ("project_id", "p1"),
                ("document_id", "d1"),
                ("user_id", "u1"),
                ("window", "1m")
            ]
        );
        assert_eq!((e.ts, m.window_ms), (119_999, Some(60_000)));
        assert_eq!(e.event_type(), "analytics.metric_updated");
        let ids: BTreeSet<&str> = out.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), out.len(), "ids are distinct");
    }

    #[test]
    fn latest_exposes_the_last_closed_window_of_each_length() {
        let mut t = TeamMetrics::new(&cfg(&[60_000, 120_000]));
        let mut out = Vec::new();
        t.observe(&words("a", 0, "u1", Some("d1"), 3), &mut out);
        t.observe(&words("b", 60_000, "u1", Some("d1"), 5), &mut out);
        t.advance_to(120_000, &mut out);
        let latest = t.latest(P, Some("d1"));
        assert_eq!(
            latest
                .iter()
                .map(|w| (w.window_ms, w.start, w.end))
                .collect::<Vec<_>>(),
            [(60_000, 60_000, 120_000), (120_000, 0, 120_000)]
        );
        let words_of = |w: &WindowFigures| {
            w.figures
                .iter()
                .find(|f| f.metric == WORDS)
                .map(|f| f.value)
        };
        assert_eq!(words_of(latest[0]), Some(5.0));
        assert_eq!(words_of(latest[1]), Some(8.0));
        assert_eq!(t.latest(P, None).len(), 2);
        assert!(t.latest(P, Some("d9")).is_empty());
        assert!(t.latest("p9", None).is_empty());
    }

    #[test]
    fn config_reads_duration_lists_from_toml() {
        let c: TeamMetricsConfig =
            toml::from_str("windows = [\"1m\", \"1h\", 90000]\ncomment_max_open = \"2d\"").unwrap();
        assert_eq!(
            c.windows,
            [
                Duration::from_secs(60),
                Duration::from_secs(3600),
                Duration::from_secs(90)
            ]
        );
        assert_eq!(c.comment_max_open, Duration::from_secs(2 * 86_400));
        assert_eq!(c.conflict_max_open, Duration::from_secs(3600));
        assert!(toml::from_str::<TeamMetricsConfig>("windows = [\"1x\"]").is_err());
        assert!(toml::from_str::<TeamMetricsConfig>("window = [\"1m\"]").is_err());
        assert!(cfg(&[0]).validate().is_err());
        assert!(TeamMetricsConfig::default().validate().is_ok());
    }

    #[test]
    fn window_labels_use_the_largest_exact_unit() {
        assert_eq!(window_label(60_000), "1m");
        assert_eq!(window_label(3_600_000), "1h");
        assert_eq!(window_label(90_000), "90s");
        assert_eq!(window_label(86_400_000), "1d");
        assert_eq!(window_label(250), "250ms");
    }

    // ---- reference: a naive implementation on seeded random streams --------

    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    fn reference_config() -> TeamMetricsConfig {
        TeamMetricsConfig {
            windows: vec![
                Duration::from_secs(60),
                Duration::from_secs(90),
                Duration::from_secs(300),
            ],
            comment_max_open: Duration::from_secs(120),
            conflict_max_open: Duration::from_secs(45),
            latest_retention: Duration::from_secs(3600),
        }
    }

    /// Lengths that are multiples of the shortest: the longer windows are
    /// rolled up from the shortest (`reference_config`'s 90 s is not a
    /// multiple of 60 s, so there every event counts in every window).
    fn rollup_config() -> TeamMetricsConfig {
        TeamMetricsConfig {
            windows: [30, 60, 300].map(Duration::from_secs).to_vec(),
            ..reference_config()
        }
    }

    #[test]
    fn windows_roll_up_only_when_every_length_is_a_multiple_of_the_shortest() {
        assert!(TeamMetrics::new(&rollup_config()).rolls_up());
        assert!(TeamMetrics::new(&TeamMetricsConfig::default()).rolls_up());
        assert!(!TeamMetrics::new(&reference_config()).rolls_up());
        assert!(!TeamMetrics::new(&cfg(&[60_000])).rolls_up());
    }

    /// A random stream within the conflicts operator's habits: each conflict
    /// has one id, reported by one or both users at its detection and (maybe)
    /// its resolution, resolved within `conflict_max_open`.
    fn random_stream(seed: u64, n: usize) -> Vec<Event> {
        let cfg = reference_config();
        let mut g = SplitMix(seed);
        let span = 10 * 60_000;
        let projects = ["p1", "p2"];
        let docs = [None, Some("d1"), Some("d2")];
        let users = ["u1", "u2", "u3"];
        let mut out = Vec::new();
        for i in 0..n {
            let ts = g.below(span) as i64;
            let project = *g.pick(&projects);
            let doc = *g.pick(&docs);
            let user = *g.pick(&users);
            let id = |j: usize| format!("e{i}-{j}");
            let mut batch = match g.below(10) {
                0..=1 => vec![words(&id(0), ts, user, doc, g.below(6) as i64)],
                2 => vec![keystroke(
                    &id(0),
                    ts,
                    user,
                    doc,
                    g.below(6) as i64,
                    g.below(4) == 0,
                )],
                3..=5 => vec![edit(&id(0), ts, user, doc)],
                6 => {
                    let c = format!("c{i}");
                    let mut v = vec![comment_added(&id(0), ts, doc, &c)];
                    let r = match g.below(5) {
                        0 => None,
                        1 => Some(ts - g.below(2_000) as i64),
                        2 => Some(ts),
                        _ => Some(ts + g.below(3 * ms(cfg.comment_max_open) as u64) as i64),
                    };
                    if let Some(r) = r {
                        v.push(comment_resolved(&id(1), r, doc, &c));
                    }
                    v
                }
                _ => {
                    let doc = doc.unwrap_or("d1");
                    let c = format!("k{i}");
                    let other = *g.pick(&users);
                    let both = g.below(2) == 0;
                    let mut v = vec![detected(&id(0), ts, user, doc, &c)];
                    if both {
                        v.push(detected(&id(1), ts, other, doc, &c));
                    }
                    if g.below(5) > 0 {
                        let d = g.below(ms(cfg.conflict_max_open) as u64 + 1) as i64;
                        v.push(resolved(&id(2), ts + d, user, doc, &c, d));
                        if both {
                            v.push(resolved(&id(3), ts + d, other, doc, &c, d));
                        }
                    }
                    v
                }
            };
            for e in &mut batch {
                e.project_id = Some(project.into());
                if g.below(40) == 0 {
                    e.project_id = None;
                }
                if g.below(30) == 0 {
                    e.user_id = None;
                }
            }
            out.extend(batch);
        }
        out
    }

    #[derive(Default)]
    struct RefWindow {
        users: BTreeMap<String, (u64, u64)>,
        edits: u64,
        conflicts: u64,
        resolutions: Vec<i64>,
        responses: Vec<i64>,
        active: BTreeSet<(Option<String>, i64)>,
    }

    /// The definitions of the module doc, applied to the whole stream at once.
    fn reference(events: &[Event], cfg: &TeamMetricsConfig) -> Vec<Row> {
        let lengths: Vec<i64> = cfg.windows.iter().map(|d| ms(*d)).collect();
        let comment_max = ms(cfg.comment_max_open);
        let conflict_max = ms(cfg.conflict_max_open);
        type Key = (String, Option<String>, String);
        // (project, document, conflict id) -> first detection, first resolution (ts, duration)
        /// First detection, first resolution (ts, duration).
        type RefConflict = (Option<i64>, Option<(i64, i64)>);
        let mut conflicts: BTreeMap<Key, RefConflict> = BTreeMap::new();
        // (project, document, comment id) -> first addition, resolutions
        let mut comments: BTreeMap<Key, (Option<i64>, Vec<i64>)> = BTreeMap::new();
        let mut windows: BTreeMap<(String, Option<String>, i64, i64), RefWindow> = BTreeMap::new();
        let mut each_window =
            |project: &str, doc: &Option<String>, ts: i64, f: &dyn Fn(&mut RefWindow)| {
                for &len in &lengths {
                    let start = ts.div_euclid(len) * len;
                    let mut scopes = vec![None];
                    if doc.is_some() {
                        scopes.push(doc.clone());
                    }
                    for scope in scopes {
                        f(windows
                            .entry((project.into(), scope, len, start))
                            .or_default());
                    }
                }
            };
        for e in events {
            let Some(project) = e.project_id.as_deref().map(String::from) else {
                continue;
            };
            let doc = e.document_id.as_deref().map(String::from);
            match &e.data {
                Payload::WritingKeystroke(_)
                | Payload::WritingWordAdded(_)
                | Payload::CollaborationEditApplied(_) => {
                    let w = written_words(e).unwrap_or(0);
                    let edit = u64::from(matches!(e.data, Payload::CollaborationEditApplied(_)));
                    let user = e.user_id.as_deref().map(String::from);
                    let sec = e.ts.div_euclid(1000);
                    each_window(&project, &doc, e.ts, &|rw| {
                        rw.edits += edit;
                        if let Some(u) = &user {
                            let c = rw.users.entry(u.clone()).or_default();
                            c.0 += w;
                            c.1 += edit;
                        }
                        rw.active.insert((doc.clone(), sec));
                    });
                }
                Payload::CollaborationConflictDetected(c) => {
                    let k = (project, doc, c.conflict_id.clone());
                    let d = &mut conflicts.entry(k).or_default().0;
                    *d = Some(d.map_or(e.ts, |d| d.min(e.ts)));
                }
                Payload::CollaborationConflictResolved(c) => {
                    let k = (project, doc, c.conflict_id.clone());
                    let r = &mut conflicts.entry(k).or_default().1;
                    if r.is_none_or(|(t, _)| e.ts < t) {
                        *r = Some((e.ts, c.duration_ms));
                    }
                }
                Payload::CollaborationCommentAdded(c) => {
                    let k = (project, doc, c.comment_id.clone());
                    let a = &mut comments.entry(k).or_default().0;
                    *a = Some(a.map_or(e.ts, |a| a.min(e.ts)));
                }
                Payload::CollaborationCommentResolved(c) => {
                    let k = (project, doc, c.comment_id.clone());
                    comments.entry(k).or_default().1.push(e.ts);
                }
                _ => {}
            }
        }
        for ((project, doc, _), (d, r)) in &conflicts {
            if let Some(d) = d {
                each_window(project, doc, *d, &|rw| rw.conflicts += 1);
            }
            if let Some((r, duration)) = r {
                each_window(project, doc, *r, &|rw| rw.resolutions.push(*duration));
            }
        }
        for ((project, doc, _), (a, rs)) in &comments {
            let Some(a) = a else { continue };
            if let Some(r) = rs.iter().filter(|r| **r >= *a).min()
                && r - a <= comment_max
            {
                each_window(project, doc, *r, &|rw| rw.responses.push(r - a));
            }
        }
        let mut rows = Vec::new();
        for ((project, scope, len, start), w) in windows {
            let end = start + len;
            let row = |metric: &str, user: Option<String>, value: f64| -> Row {
                (
                    metric.into(),
                    project.clone(),
                    scope.clone(),
                    user,
                    len,
                    end - 1,
                    value,
                )
            };
            for (u, (words, edits)) in &w.users {
                rows.push(row(WORDS, Some(u.clone()), *words as f64));
                rows.push(row(EDITS, Some(u.clone()), *edits as f64));
            }
            rows.push(row(
                EDIT_VELOCITY,
                None,
                w.edits as f64 * 60_000.0 / len as f64,
            ));
            rows.push(row(CONFLICTS, None, w.conflicts as f64));
            if !w.resolutions.is_empty() {
                let mean = w.resolutions.iter().sum::<i64>() as f64 / w.resolutions.len() as f64;
                rows.push(row(CONFLICT_RESOLUTION, None, mean));
            }
            if !w.responses.is_empty() {
                let mean = w.responses.iter().sum::<i64>() as f64 / w.responses.len() as f64;
                rows.push(row(COMMENT_RESPONSE, None, mean));
            }
            if !w.active.is_empty() {
                let clean = w
                    .active
                    .iter()
                    .filter(|(doc, sec)| {
                        let lo = (sec * 1000).max(start);
                        let hi = (sec * 1000 + 999).min(end - 1);
                        !conflicts.iter().any(|((p, d, _), (det, res))| {
                            let (from, until) = match (det, res) {
                                (Some(det), None) => (*det, det + conflict_max),
                                (Some(det), Some((r, _))) => (*det, (*r).min(det + conflict_max)),
                                // Known only from its resolution: in the windows holding it.
                                (None, Some((r, duration))) if start <= *r && *r < end => {
                                    (r - duration, *r)
                                }
                                _ => return false,
                            };
                            p == &project && d == doc && from <= hi && until >= lo
                        })
                    })
                    .count();
                rows.push(row(EFFICIENCY, None, clean as f64 / w.active.len() as f64));
            }
        }
        rows.sort_by(|a, b| a.partial_cmp(b).unwrap());
        rows
    }

    #[test]
    fn the_core_matches_a_naive_reference_on_random_streams() {
        for (cfg, seed) in [reference_config(), rollup_config()]
            .into_iter()
            .flat_map(|cfg| (1..=12).map(move |seed| (cfg.clone(), seed)))
        {
            let events = random_stream(seed, 400);
            let expected = reference(&events, &cfg);
            // The core, with the watermark advancing at random points.
            let mut g = SplitMix(seed ^ 0xABCD);
            let mut sorted = events.clone();
            sorted.sort_by(|a, b| observation_order(a).cmp(&observation_order(b)));
            let mut t = TeamMetrics::new(&cfg);
            let mut out = Vec::new();
            let mut watermark = i64::MIN;
            let mut peak = 0;
            for e in &sorted {
                if g.below(8) == 0 && e.ts > watermark.max(0) {
                    watermark =
                        watermark.max(0) + g.below((e.ts - watermark.max(0)) as u64 + 1) as i64;
                    t.advance_to(watermark, &mut out);
                }
                if is_conflict(e) {
                    t.observe_conflict(e, &mut out);
                } else {
                    t.observe(e, &mut out);
                }
                peak = peak.max(t.state_size());
            }
            t.flush(&mut out);
            let got = rows(&out);
            assert!(!expected.is_empty());
            assert_eq!(got.len(), expected.len(), "seed {seed}");
            for (g, x) in got.iter().zip(&expected) {
                assert_eq!(
                    (&g.0, &g.1, &g.2, &g.3, g.4, g.5),
                    (&x.0, &x.1, &x.2, &x.3, x.4, x.5),
                    "seed {seed}"
                );
                assert!((g.6 - x.6).abs() < 1e-9, "seed {seed}: {g:?} vs {x:?}");
            }
            let ids: BTreeSet<&str> = out.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids.len(), out.len(), "seed {seed}: ids are distinct");
            assert!(peak > 0);
        }
    }

    // ---- the operator runtime ----------------------------------------------

    /// A record as the runtime's one input carries it: conflict events as
    /// the conflicts operator's (derived), the others as input records.
    fn record(seq: u64, e: &Event) -> Record {
        if is_conflict(e) {
            Record::derived(e.clone())
        } else {
            Record {
                seq,
                event: std::sync::Arc::new(e.clone()),
            }
        }
    }

    #[test]
    fn client_sent_conflicts_are_not_wanted_and_derived_ones_take_the_conflict_path() {
        let client = Record {
            seq: 1,
            event: std::sync::Arc::new(detected("k", 1_000, "u1", "d1", "c1")),
        };
        assert!(!<TeamMetrics as Core>::wants(&client));
        let derived = Record::derived(detected("k", 1_000, "u1", "d1", "c1"));
        assert!(<TeamMetrics as Core>::wants(&derived));
        let activity = record(2, &words("a", 1_000, "u1", Some("d1"), 3));
        assert!(<TeamMetrics as Core>::wants(&activity));
        // A derived record that is not a conflict is not for this operator.
        assert!(!<TeamMetrics as Core>::wants(&Record::derived(words(
            "w", 1_000, "u1", None, 1
        ))));
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let mut out = Vec::new();
        // Even if one got through, a client conflict is not counted.
        Core::observe(&mut t, &client, &mut out);
        Core::observe(&mut t, &activity, &mut out);
        Core::flush(&mut t, &mut out);
        assert_eq!(
            values(&out, CONFLICTS, Some("d1"), None, 60_000),
            [(60_000, 0.0)]
        );
        let mut t = TeamMetrics::new(&cfg(&[60_000]));
        let mut out = Vec::new();
        Core::observe(&mut t, &derived, &mut out);
        Core::observe(&mut t, &activity, &mut out);
        Core::flush(&mut t, &mut out);
        assert_eq!(
            values(&out, CONFLICTS, Some("d1"), None, 60_000),
            [(60_000, 1.0)]
        );
        assert_eq!(
            values(&out, EFFICIENCY, Some("d1"), None, 60_000),
            [(60_000, 0.0)]
        );
    }

    #[test]
    fn an_epoch_is_observed_in_observation_order_then_records_before_conflicts() {
        let mut items = vec![
            record(1, &resolved("r", 5, "u1", "d1", "c1", 5)),
            record(2, &words("b", 5, "u1", Some("d1"), 1)),
            record(3, &comment_added("a", 5, Some("d1"), "m1")),
            record(4, &detected("z", 5, "u1", "d1", "c2")),
            record(5, &words("a", 4, "u1", Some("d1"), 1)),
        ];
        <TeamMetrics as Core>::sort_epoch(&mut items);
        let ids: Vec<&str> = items.iter().map(|r| r.event.id.as_str()).collect();
        assert_eq!(ids, ["a", "a", "z", "b", "r"]);
        // ts 4 first; then at ts 5 the openings, the record before the conflict.
        assert!(!items[1].is_derived() && items[2].is_derived());
    }

    /// A random stream's records for the core, in observation order.
    fn seeded_records(seed: u64) -> Vec<Record> {
        let mut events = random_stream(seed, 400);
        events.sort_by(|a, b| observation_order(a).cmp(&observation_order(b)));
        events
            .iter()
            .enumerate()
            .map(|(i, e)| record(i as u64, e))
            .filter(<TeamMetrics as Core>::wants)
            .collect()
    }

    /// Feeds records, moving the watermark to each record's time now and then.
    fn feed(t: &mut TeamMetrics, rs: &[Record], g: &mut SplitMix) -> Vec<Event> {
        let mut out = Vec::new();
        for r in rs {
            if g.below(10) == 0 {
                Core::advance_to(t, r.event.ts, &mut out);
            }
            Core::observe(t, r, &mut out);
        }
        out
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        for (cfg, seed) in [reference_config(), rollup_config()]
            .into_iter()
            .flat_map(|cfg| [2, 5, 9].map(move |seed| (cfg.clone(), seed)))
        {
            let records = seeded_records(seed);
            let (first, second) = records.split_at(records.len() / 2);
            let mut g = SplitMix(seed);
            let mut original = TeamMetrics::new(&cfg);
            let before = feed(&mut original, first, &mut g);
            assert!(!before.is_empty());
            let bytes = bincode::serialize(&original).unwrap();
            let mut restored: TeamMetrics = bincode::deserialize(&bytes).unwrap();
            assert!(Core::state_size(&restored) > 0, "seed {seed}");
            assert_eq!(Core::state_size(&restored), Core::state_size(&original));
            let (mut g1, mut g2) = (SplitMix(seed ^ 7), SplitMix(seed ^ 7));
            let mut a = feed(&mut original, second, &mut g1);
            let mut b = feed(&mut restored, second, &mut g2);
            Core::flush(&mut original, &mut a);
            Core::flush(&mut restored, &mut b);
            assert!(!a.is_empty());
            assert_eq!(a, b, "seed {seed}");
            assert_eq!(Core::state_size(&restored), Core::state_size(&original));
            assert_eq!(restored.comments_expired(), original.comments_expired());
            assert!(!original.latest("p1", None).is_empty());
            for doc in [None, Some("d1"), Some("d2")] {
                assert_eq!(restored.latest("p1", doc), original.latest("p1", doc));
            }
        }
    }

    /// Every open window's counts, in a canonical order.
    fn open_windows(t: &TeamMetrics) -> Vec<String> {
        let mut v = Vec::new();
        for (project, p) in &t.projects {
            for (scope, windows) in &p.windows {
                for ((end, len), a) in windows {
                    let mut users: Vec<(String, u64, u64)> = (a.users.iter())
                        .map(|(u, c)| (u.to_string(), c.words, c.edits))
                        .collect();
                    users.sort();
                    let active: Vec<(Option<String>, Vec<i64>)> = (a.active.iter())
                        .map(|(d, s)| (d.as_ref().map(|d| d.to_string()), s.0.clone()))
                        .collect();
                    v.push(format!(
                        "{project} {scope:?} {end} {len} {users:?} {} {} {} {} {} {} {active:?}",
                        a.edits, a.conflicts, a.resolved, a.resolved_ms, a.responses, a.response_ms
                    ));
                }
            }
        }
        v.sort();
        v
    }

    /// A checkpoint of a rolling-up tracker holds what one counting every
    /// event in every window (the tracker before the roll-up) holds, so
    /// checkpoints written before restore into it, and its own restore into
    /// either; all three go on to the same outputs.
    #[test]
    fn a_checkpoint_holds_the_longer_windows_complete_as_before_the_roll_up() {
        let cfg = rollup_config();
        let mut folded_any = false;
        for seed in [2, 5, 9, 11] {
            let records = seeded_records(seed);
            let (first, second) = records.split_at(records.len() / 2);
            let mut rolling = TeamMetrics::new(&cfg);
            let mut direct = TeamMetrics::new(&cfg);
            // Every longer window counted directly, none rolled up.
            direct.direct_until = Some(i64::MAX);
            let (mut g1, mut g2) = (SplitMix(seed), SplitMix(seed));
            let before = feed(&mut rolling, first, &mut g1);
            assert!(!before.is_empty());
            assert_eq!(before, feed(&mut direct, first, &mut g2), "seed {seed}");
            let rolling_bytes = bincode::serialize(&rolling).unwrap();
            let direct_bytes = bincode::serialize(&direct).unwrap();
            let mut from_rolling: TeamMetrics = bincode::deserialize(&rolling_bytes).unwrap();
            let mut from_direct: TeamMetrics = bincode::deserialize(&direct_bytes).unwrap();
            assert_eq!(
                open_windows(&from_rolling),
                open_windows(&from_direct),
                "seed {seed}"
            );
            assert_eq!(open_windows(&direct), open_windows(&from_direct));
            folded_any |= open_windows(&rolling) != open_windows(&from_rolling);
            let mut outs = Vec::new();
            for t in [&mut rolling, &mut from_rolling, &mut from_direct] {
                let mut g = SplitMix(seed ^ 7);
                let mut out = feed(t, second, &mut g);
                Core::flush(t, &mut out);
                outs.push(out);
            }
            assert!(!outs[0].is_empty());
            assert_eq!(
                outs[0], outs[1],
                "seed {seed}: restored from a rolling tracker"
            );
            assert_eq!(
                outs[0], outs[2],
                "seed {seed}: restored from a direct tracker"
            );
        }
        assert!(
            folded_any,
            "no checkpoint had an open shortest window to add in"
        );
    }

    fn run_dataflow(events: Vec<Event>, workers: usize, batch: usize) -> Vec<Event> {
        let config = crate::config::Config::default();
        let team = reference_config();
        let (out, late) =
            crate::dataflow::run_for_test(events, workers, batch, &config, move |s, cfg| {
                use crate::runtime::EventTime;
                use crate::runtime::{Keyed, OperatorCtx};
                use timely::dataflow::operators::Concat;
                use timely::dataflow::operators::vec::{Filter, Map};
                let time = EventTime {
                    epoch_ms: cfg.dataflow.epoch.as_millis().max(1) as u64,
                    flush_at_end: cfg.dataflow.flush_at_end,
                };
                let ctx = OperatorCtx::plain(time);
                // Tests put synthetic conflict events in the input; as the
                // conflicts operator's they are derived records (the copies
                // left in the input are client-sent, hence ignored).
                let conflicts = s
                    .clone()
                    .filter(|r| is_conflict(&r.event))
                    .map(|r| Record::derived((*r.event).clone()));
                s.concat(conflicts).keyed(TeamMetrics::new(&team), &ctx)
            });
        assert!(late.is_empty(), "{} late", late.len());
        out
    }

    #[test]
    fn the_dataflow_output_is_independent_of_workers_batching_and_disorder() {
        let disorder = crate::config::Config::default()
            .dataflow
            .allowed_disorder
            .as_millis() as u64;
        for seed in [3, 8] {
            let mut events = random_stream(seed, 300);
            events.sort_by_key(|e| e.ts);
            // The core on the events in order is the expected output.
            let mut t = TeamMetrics::new(&reference_config());
            let expected = run(&mut t, events.clone());
            assert!(!expected.is_empty());
            let mut expected_sorted = expected.clone();
            expected_sorted.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
            // Shuffled within the disorder bound: each event moves by less than it.
            let mut g = SplitMix(seed);
            let mut keyed: Vec<(i64, Event)> = events
                .iter()
                .map(|e| (e.ts + g.below(disorder) as i64, e.clone()))
                .collect();
            keyed.sort_by_key(|(k, _)| *k);
            let shuffled: Vec<Event> = keyed.into_iter().map(|(_, e)| e).collect();
            assert_ne!(shuffled, events);
            for (input, name) in [(&events, "ordered"), (&shuffled, "shuffled")] {
                for workers in [1, 2] {
                    for batch in [1, 7, 1000] {
                        let out = run_dataflow(input.clone(), workers, batch);
                        assert_eq!(
                            out, expected_sorted,
                            "seed {seed} {name} workers {workers} batch {batch}"
                        );
                    }
                }
            }
        }
    }

    /// Seconds stay distinct and ascending whatever order they come in, and
    /// are stored as the `BTreeSet<i64>` they replaced was (checkpoints
    /// written before still restore).
    #[test]
    fn active_seconds_are_a_sorted_set_stored_as_before() {
        let mut s = Seconds::default();
        for sec in [5, 5, 7, 3, 7, 6, 3, 9, -1] {
            s.insert(sec);
        }
        assert_eq!(s.0, [-1, 3, 5, 6, 7, 9]);
        let set: BTreeSet<i64> = s.0.iter().copied().collect();
        assert_eq!(
            bincode::serialize(&s).unwrap(),
            bincode::serialize(&set).unwrap()
        );
        let back: Seconds = bincode::deserialize(&bincode::serialize(&set).unwrap()).unwrap();
        assert_eq!(back.0, s.0);
    }
}
