//! The pure core of the views: derived events in, current state out. No
//! tokio, no Redis: [`ViewState::apply`] folds one derived event in and marks
//! what changed ([`Dirty`]), so the Redis backend writes only that.
//!
//! What each derived event does (fields as in `schemas/avro`):
//! - `writing.session_state_changed`: from `IDLE` (or with no open session
//!   for the user) opens a session — id = `session_id`, or `<user>@<ts>` for
//!   an implicit session; every transition sets `state`, `wpm`, `reason`;
//!   to `ENDED` closes it.
//! - `writing.flow_state_entered` / `exited`: `in_flow`, `flow_since`.
//! - `writing.session_ended` (the pipeline's summary): the summary is
//!   attached to the session, and added once to the project's per-day,
//!   per-user writing totals (words, sessions, active and flow time; the day
//!   is the UTC day of `start_ts`).
//! - `analytics.metric_updated` `wpm` (envelope user): the live WPM of the
//!   user's open session. `team.*` metrics: the latest value per (project,
//!   document, window, metric, user).
//! - `collaboration.presence_updated`: the collaborator's status and cursor
//!   (`paragraph`, `offset`, `selection`, `viewport`, `mode`, `typing_wpm`);
//!   `offline` removes them from the document.
//! - `collaboration.conflict_detected` / `conflict_resolved`: open
//!   conflicts by `conflict_id` (one per pair, reported once per user: the
//!   suggestions are kept per user), then resolved ones as *recent*.
//!
//! Bounds: ended sessions are kept `ended_retention_ms` of event time,
//! recent conflicts `RECENT_CONFLICTS` per document, writing totals
//! `writing_retention_ms`; everything else lives as long as the state it
//! mirrors (open sessions end by the gap, presence goes offline, conflicts
//! resolve by timeout).

use schemas::Event;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Resolved conflicts kept per document.
pub const RECENT_CONFLICTS: usize = 50;
/// Open conflicts kept per document (the operator resolves them by timeout;
/// this only bounds a misbehaving stream).
const MAX_OPEN_CONFLICTS: usize = 1000;
/// How long a live WPM figure is kept for a session about to open (the WPM
/// window), ms.
const LIVE_WPM_MS: i64 = 60_000;

/// Whose open sessions an [`super::ViewStore::active`] query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveScope {
    /// Everyone's.
    All,
    /// One user's.
    User(String),
    /// One project's.
    Project(String),
}

impl ActiveScope {
    pub(crate) fn holds(&self, s: &SessionView) -> bool {
        match self {
            ActiveScope::All => true,
            ActiveScope::User(u) => s.user_id == *u,
            ActiveScope::Project(p) => s.project_id.as_ref() == Some(p),
        }
    }
}

/// A writing session, as the view answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub user_id: String,
    pub project_id: Option<String>,
    pub document_id: Option<String>,
    /// IDLE, WARMING_UP, ACTIVE_WRITING, FLOW_STATE, PAUSED, BREAK or ENDED.
    pub state: String,
    /// Event time the session opened, ms.
    pub started_at: i64,
    /// Event time of the last derived event about it, ms.
    pub updated_at: i64,
    /// Live rolling words per minute.
    pub wpm: f64,
    pub in_flow: bool,
    /// When the current flow period started (event time, ms).
    pub flow_since: Option<i64>,
    /// Why the last transition happened (`activity`, `idle_timeout`, …).
    pub reason: Option<String>,
    /// State transitions so far.
    pub transitions: u64,
    pub ended: bool,
    /// The pipeline's `writing.session_ended` summary, once ended.
    #[schema(value_type = Option<Object>)]
    pub summary: Option<Value>,
}

/// One collaborator in a document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Collaborator {
    pub user_id: String,
    /// online or away (offline collaborators are not listed).
    pub status: String,
    pub paragraph: Option<i64>,
    pub offset: Option<i64>,
    pub selection: Option<Vec<i64>>,
    pub viewport: Option<Vec<i64>>,
    /// edit, review, comment or navigate.
    pub mode: Option<String>,
    pub typing_wpm: Option<f64>,
    /// Event time of the last update, ms.
    pub updated_at: i64,
}

/// A conflict between two collaborators of a document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ConflictView {
    pub conflict_id: String,
    /// The pair, sorted.
    pub users: Vec<String>,
    pub paragraph: i64,
    /// HIGH, MEDIUM or LOW.
    pub severity: String,
    pub kind: String,
    /// The suggestion shown to each user of the pair.
    pub suggestions: BTreeMap<String, String>,
    pub detected_at: i64,
    /// open or resolved.
    pub status: String,
    pub resolved_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub resolution: Option<String>,
}

/// The latest value of one team metric series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TeamFigure {
    pub metric: String,
    pub user_id: Option<String>,
    /// Window label (`1m`, `1h`).
    pub window: String,
    pub window_ms: Option<i64>,
    pub value: f64,
    /// Event time of the update, ms.
    pub ts: i64,
}

/// Totals one session summary adds to a user's day in a project.
#[derive(Debug, Clone, PartialEq)]
pub struct WritingDelta {
    /// The summary's id (derived: the same when a restore derives it
    /// again), so that the Redis writer adds it once.
    pub summary_id: String,
    pub project: String,
    pub day: String,
    pub user: String,
    pub totals: WritingTotals,
}

/// Writing totals of one user on one day.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WritingTotals {
    pub words: i64,
    pub sessions: i64,
    pub active_ms: i64,
    pub flow_ms: i64,
}

impl WritingTotals {
    pub fn add(&mut self, o: &WritingTotals) {
        self.words += o.words;
        self.sessions += o.sessions;
        self.active_ms += o.active_ms;
        self.flow_ms += o.flow_ms;
    }
}

/// What a batch changed, for the Redis writer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dirty {
    Session(String),
    Presence {
        document: String,
        user: String,
    },
    Conflict {
        document: String,
        id: String,
    },
    Team {
        project: String,
        document: Option<String>,
        field: String,
    },
}

/// The in-process views.
#[derive(Debug, Default)]
pub struct ViewState {
    pub sessions: HashMap<String, SessionView>,
    /// user → their open session.
    pub open: HashMap<String, String>,
    /// document → user → collaborator.
    pub presence: HashMap<String, BTreeMap<String, Collaborator>>,
    /// document → conflict id → conflict.
    pub conflicts: HashMap<String, BTreeMap<String, ConflictView>>,
    /// (project, document) → `window|metric|user` → figure.
    pub team: HashMap<(String, Option<String>), BTreeMap<String, TeamFigure>>,
    /// project → (day, user) → totals.
    pub writing: HashMap<String, BTreeMap<(String, String), WritingTotals>>,
    pub dirty: BTreeSet<Dirty>,
    /// user → (ts, value) of the latest live WPM: the WPM operator emits on
    /// arrival, before the session operator (event-time order) opens the
    /// session it belongs to.
    pub live_wpm: HashMap<String, (i64, f64)>,
    /// Writing totals added since the last take.
    pub writing_deltas: Vec<WritingDelta>,
    /// Writing totals pruned since the last take: (project, day, user), so
    /// that the Redis writer deletes them too.
    pub writing_dropped: Vec<(String, String, String)>,
    /// Most keys each view holds (sessions, open sessions, live WPM users,
    /// presence documents, conflict documents, team (project, document)
    /// pairs, writing projects): each is one Redis key, and all of them are
    /// named by clients. An update that would add a key past it is dropped
    /// and counted in `refused_keys`. `None`: unbounded (tests).
    pub max_keys: Option<usize>,
    /// Updates dropped by `max_keys` since the writer last took the count.
    pub refused_keys: u64,
}

/// Whether `map` may hold `key`: it does already, or it has room for one
/// more under `max`. Counts a refusal in `refused`.
fn room<K, Q, V>(map: &HashMap<K, V>, key: &Q, max: Option<usize>, refused: &mut u64) -> bool
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if max.is_none_or(|m| map.len() < m) || map.contains_key(key) {
        return true;
    }
    *refused += 1;
    false
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}
fn i(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}
fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}
fn ints(v: &Value, k: &str) -> Option<Vec<i64>> {
    v.get(k)?
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
}

/// `YYYY-MM-DD` (UTC) of `ms`.
pub fn day_of(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Midnight UTC of `YYYY-MM-DD`, in ms; `None` when it is not a date.
pub fn ms_of_day(day: &str) -> Option<i64> {
    let mut it = day.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let ms = (era * 146_097 + doe - 719_468) * 86_400_000;
    // Reject dates that do not exist (2026-02-30 would roll over).
    (day_of(ms) == day).then_some(ms)
}

/// Which derived events the views read (others are not even queued).
pub fn wanted(event_type: &str) -> bool {
    matches!(
        event_type,
        "writing.session_state_changed"
            | "writing.session_ended"
            | "writing.flow_state_entered"
            | "writing.flow_state_exited"
            | "analytics.metric_updated"
            | "collaboration.presence_updated"
            | "collaboration.conflict_detected"
            | "collaboration.conflict_resolved"
    )
}

impl ViewState {
    /// Folds one derived event in.
    pub fn apply(&mut self, e: &Event) {
        let data = e.data.to_json_value();
        match e.event_type() {
            "writing.session_state_changed" => self.state_changed(e, &data),
            "writing.session_ended" => self.session_ended(e, &data),
            "writing.flow_state_entered" | "writing.flow_state_exited" => {
                let entered = e.event_type() == "writing.flow_state_entered";
                if let Some(view) = self.open_session(e) {
                    view.in_flow = entered;
                    view.flow_since = entered.then_some(e.ts);
                    view.updated_at = view.updated_at.max(e.ts);
                    let id = view.session_id.clone();
                    self.dirty.insert(Dirty::Session(id));
                }
            }
            "analytics.metric_updated" => self.metric(e, &data),
            "collaboration.presence_updated" => self.presence(e, &data),
            "collaboration.conflict_detected" => self.conflict_detected(e, &data),
            "collaboration.conflict_resolved" => self.conflict_resolved(e, &data),
            _ => {}
        }
    }

    /// Adds open sessions a previous writer left in Redis, unless this
    /// state knows them already (it is newer). A user's latest one is
    /// their open session.
    pub fn seed_open(&mut self, mut sessions: Vec<SessionView>) {
        sessions.sort_by_key(|v| v.started_at);
        for v in sessions {
            if self.sessions.contains_key(&v.session_id)
                || self.open.contains_key(&v.user_id)
                || !room(&self.sessions, &v.session_id, self.max_keys, &mut 0)
            {
                continue;
            }
            self.open.insert(v.user_id.clone(), v.session_id.clone());
            self.sessions.insert(v.session_id.clone(), v);
        }
    }

    /// The (document, conflict id) that `e` resolves, when this state
    /// does not hold that conflict: a previous writer saw it open (before
    /// a restart or a takeover), and Redis may hold it.
    pub fn unknown_conflict(&self, e: &Event) -> Option<(String, String)> {
        if e.event_type() != "collaboration.conflict_resolved" {
            return None;
        }
        let doc = e.document_id.as_deref()?;
        let id = s(&e.data.to_json_value(), "conflict_id")?;
        let known = self
            .conflicts
            .get(doc)
            .is_some_and(|all| all.contains_key(&id));
        (!known).then(|| (doc.to_owned(), id))
    }

    /// Adds conflicts a previous writer left in Redis, unless this state
    /// knows them already.
    pub fn seed_conflicts(&mut self, found: Vec<(String, ConflictView)>) {
        for (doc, c) in found {
            if !room(&self.conflicts, &doc, self.max_keys, &mut 0) {
                continue;
            }
            let all = self.conflicts.entry(doc).or_default();
            all.entry(c.conflict_id.clone()).or_insert(c);
        }
    }

    fn open_session(&mut self, e: &Event) -> Option<&mut SessionView> {
        let id = self.open.get(e.user_id.as_deref()?)?;
        self.sessions.get_mut(id)
    }

    fn state_changed(&mut self, e: &Event, data: &Value) {
        let Some(user) = e.user_id.as_deref().map(String::from) else {
            return;
        };
        let to = s(data, "to").unwrap_or_default();
        let from = s(data, "from").unwrap_or_default();
        let open = self.open.get(&user).cloned();
        let id = match open {
            Some(id) if from != "IDLE" && self.sessions.contains_key(&id) => id,
            _ => {
                let id = s(data, "session_id").unwrap_or_else(|| format!("{user}@{}", e.ts));
                let (max, refused) = (self.max_keys, &mut self.refused_keys);
                if !room(&self.sessions, &id, max, refused)
                    || !room(&self.open, &user, max, refused)
                {
                    return;
                }
                self.sessions.insert(
                    id.clone(),
                    SessionView {
                        session_id: id.clone(),
                        user_id: user.clone(),
                        project_id: None,
                        document_id: None,
                        state: from,
                        started_at: e.ts,
                        updated_at: e.ts,
                        wpm: self
                            .live_wpm
                            .get(&user)
                            .filter(|(t, _)| (e.ts - t).abs() <= LIVE_WPM_MS)
                            .map_or(0.0, |(_, w)| *w),
                        in_flow: false,
                        flow_since: None,
                        reason: None,
                        transitions: 0,
                        ended: false,
                        summary: None,
                    },
                );
                self.open.insert(user.clone(), id.clone());
                id
            }
        };
        if let Some(view) = self.sessions.get_mut(&id) {
            view.state = to.clone();
            // The transition's WPM is measured at its instant; a live
            // figure that arrived earlier may be newer.
            if let Some(w) = f(data, "wpm").filter(|w| *w > 0.0) {
                view.wpm = w;
            }
            view.reason = s(data, "reason");
            view.transitions += 1;
            view.updated_at = view.updated_at.max(e.ts);
            if e.project_id.is_some() {
                view.project_id = e.project_id.as_deref().map(String::from);
            }
            if e.document_id.is_some() {
                view.document_id = e.document_id.as_deref().map(String::from);
            }
            view.in_flow = to == "FLOW_STATE";
            if to == "ENDED" {
                view.ended = true;
                self.open.remove(&user);
            }
        }
        self.dirty.insert(Dirty::Session(id));
    }

    fn session_ended(&mut self, e: &Event, data: &Value) {
        let Some(user) = e.user_id.as_deref().map(String::from) else {
            return;
        };
        // The summary follows the ENDED transition: the user's open session
        // is already closed, so match by session id, else the user's latest.
        let id = s(data, "session_id")
            .filter(|id| self.sessions.contains_key(id))
            .or_else(|| self.open.get(&user).cloned())
            .or_else(|| {
                self.sessions
                    .values()
                    .filter(|v| v.user_id == user)
                    .max_by_key(|v| v.started_at)
                    .map(|v| v.session_id.clone())
            });
        let first_report = match id.as_ref().and_then(|id| self.sessions.get_mut(id)) {
            Some(view) => {
                let first = view.summary.is_none();
                view.summary = Some(data.clone());
                view.ended = true;
                view.state = "ENDED".into();
                view.in_flow = false;
                view.updated_at = view.updated_at.max(e.ts);
                first
            }
            // A summary with no session seen (the view started mid-session):
            // still counted in the totals.
            None => true,
        };
        if let Some(id) = id {
            if self.open.get(&user) == Some(&id) {
                self.open.remove(&user);
            }
            self.dirty.insert(Dirty::Session(id));
        }
        let Some(project) = e.project_id.as_deref().map(String::from) else {
            return;
        };
        if !first_report
            || !room(
                &self.writing,
                &project,
                self.max_keys,
                &mut self.refused_keys,
            )
        {
            return;
        }
        let day = day_of(i(data, "start_ts").unwrap_or(e.ts));
        let add = WritingTotals {
            words: i(data, "words").unwrap_or(0),
            sessions: 1,
            active_ms: i(data, "active_ms").unwrap_or(0),
            flow_ms: i(data, "flow_ms").unwrap_or(0),
        };
        self.writing
            .entry(project.clone())
            .or_default()
            .entry((day.clone(), user.clone()))
            .or_default()
            .add(&add);
        self.writing_deltas.push(WritingDelta {
            summary_id: e.id.to_string(),
            project,
            day,
            user,
            totals: add,
        });
    }

    fn metric(&mut self, e: &Event, data: &Value) {
        let metric = s(data, "metric").unwrap_or_default();
        let value = f(data, "value").unwrap_or(0.0);
        if metric == "wpm" {
            if let Some(user) = e.user_id.as_deref()
                && room(&self.live_wpm, user, self.max_keys, &mut self.refused_keys)
            {
                self.live_wpm.insert(user.to_owned(), (e.ts, value));
            }
            if let Some(view) = self.open_session(e) {
                view.wpm = value;
                view.updated_at = view.updated_at.max(e.ts);
                let id = view.session_id.clone();
                self.dirty.insert(Dirty::Session(id));
            }
            return;
        }
        if !metric.starts_with("team.") {
            return;
        }
        let dims: HashMap<String, String> = data
            .get("dimensions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| Some((s(d, "name")?, s(d, "value")?)))
                    .collect()
            })
            .unwrap_or_default();
        let Some(project) = dims
            .get("project_id")
            .cloned()
            .or_else(|| e.project_id.as_deref().map(String::from))
        else {
            return;
        };
        let document = dims.get("document_id").cloned();
        let user = dims.get("user_id").cloned();
        let window = dims.get("window").cloned().unwrap_or_default();
        let field = format!("{window}|{metric}|{}", user.as_deref().unwrap_or(""));
        let key = (project.clone(), document.clone());
        if !room(&self.team, &key, self.max_keys, &mut self.refused_keys) {
            return;
        }
        let figures = self
            .team
            .entry((project.clone(), document.clone()))
            .or_default();
        if figures.get(&field).is_some_and(|old| old.ts > e.ts) {
            return; // an older window's late update
        }
        figures.insert(
            field.clone(),
            TeamFigure {
                metric,
                user_id: user,
                window,
                window_ms: i(data, "window_ms"),
                value,
                ts: e.ts,
            },
        );
        self.dirty.insert(Dirty::Team {
            project,
            document,
            field,
        });
    }

    fn presence(&mut self, e: &Event, data: &Value) {
        let (Some(user), Some(doc)) = (
            e.user_id.as_deref().map(String::from),
            e.document_id.as_deref().map(String::from),
        ) else {
            return;
        };
        let status = s(data, "status").unwrap_or_default();
        if !room(&self.presence, &doc, self.max_keys, &mut self.refused_keys) {
            return;
        }
        let users = self.presence.entry(doc.clone()).or_default();
        if status == "offline" {
            users.remove(&user);
            if users.is_empty() {
                self.presence.remove(&doc);
            }
        } else {
            let old = users.get(&user);
            // An update without cursor fields keeps the last known cursor.
            let keep = |new: Option<i64>, old: Option<i64>| new.or(old);
            let c = Collaborator {
                user_id: user.clone(),
                status,
                paragraph: keep(i(data, "paragraph"), old.and_then(|o| o.paragraph)),
                offset: keep(i(data, "offset"), old.and_then(|o| o.offset)),
                selection: ints(data, "selection"),
                viewport: ints(data, "viewport").or_else(|| old.and_then(|o| o.viewport.clone())),
                mode: s(data, "mode").or_else(|| old.and_then(|o| o.mode.clone())),
                typing_wpm: f(data, "typing_wpm"),
                updated_at: e.ts,
            };
            users.insert(user.clone(), c);
        }
        self.dirty.insert(Dirty::Presence {
            document: doc,
            user,
        });
    }

    fn conflict_detected(&mut self, e: &Event, data: &Value) {
        let (Some(user), Some(doc), Some(id)) = (
            e.user_id.as_deref().map(String::from),
            e.document_id.as_deref().map(String::from),
            s(data, "conflict_id"),
        ) else {
            return;
        };
        let other = s(data, "other_user_id").unwrap_or_default();
        if !room(&self.conflicts, &doc, self.max_keys, &mut self.refused_keys) {
            return;
        }
        let open = self.conflicts.entry(doc.clone()).or_default();
        let entry = open.entry(id.clone()).or_insert_with(|| {
            let mut users = vec![user.clone(), other.clone()];
            users.sort();
            ConflictView {
                conflict_id: id.clone(),
                users,
                paragraph: i(data, "paragraph").unwrap_or(0),
                severity: s(data, "severity").unwrap_or_default(),
                kind: s(data, "kind").unwrap_or_default(),
                suggestions: BTreeMap::new(),
                detected_at: e.ts,
                status: "open".into(),
                resolved_at: None,
                duration_ms: None,
                resolution: None,
            }
        });
        entry.detected_at = entry.detected_at.min(e.ts);
        if let Some(sugg) = s(data, "suggestion") {
            entry.suggestions.insert(user, sugg);
        }
        self.dirty.insert(Dirty::Conflict {
            document: doc.clone(),
            id,
        });
        self.bound_conflicts(&doc);
    }

    fn conflict_resolved(&mut self, e: &Event, data: &Value) {
        let (Some(doc), Some(id)) = (
            e.document_id.as_deref().map(String::from),
            s(data, "conflict_id"),
        ) else {
            return;
        };
        let Some(c) = self
            .conflicts
            .get_mut(&doc)
            .and_then(|all| all.get_mut(&id))
        else {
            return; // resolved before the view saw it open: nothing to show
        };
        if c.status == "open" {
            c.status = "resolved".into();
            c.resolved_at = Some(e.ts);
            c.duration_ms = i(data, "duration_ms");
            c.resolution = s(data, "resolution");
            self.dirty.insert(Dirty::Conflict {
                document: doc.clone(),
                id,
            });
        }
        self.bound_conflicts(&doc);
    }

    /// Keeps the newest `RECENT_CONFLICTS` resolved and `MAX_OPEN_CONFLICTS` open.
    fn bound_conflicts(&mut self, doc: &str) {
        let Some(all) = self.conflicts.get_mut(doc) else {
            return;
        };
        for (status, keep) in [("resolved", RECENT_CONFLICTS), ("open", MAX_OPEN_CONFLICTS)] {
            let mut of: Vec<(i64, String)> = all
                .values()
                .filter(|c| c.status == status)
                .map(|c| {
                    (
                        c.resolved_at.unwrap_or(c.detected_at),
                        c.conflict_id.clone(),
                    )
                })
                .collect();
            if of.len() <= keep {
                continue;
            }
            of.sort();
            for (_, id) in of.into_iter().rev().skip(keep) {
                all.remove(&id);
                self.dirty.insert(Dirty::Conflict {
                    document: doc.to_owned(),
                    id,
                });
            }
        }
    }

    /// Drops what is older than the retentions, by event time `now`: ended
    /// sessions and resolved conflicts after `ended_retention_ms`, writing
    /// days after `writing_retention_ms`, and anything not updated for
    /// `stale_ms` (an open session, a presence or a team figure whose closing
    /// event was dropped or never came).
    pub fn prune(
        &mut self,
        now: i64,
        ended_retention_ms: i64,
        writing_retention_ms: i64,
        stale_ms: i64,
    ) {
        self.live_wpm.retain(|_, (t, _)| *t >= now - LIVE_WPM_MS);
        let before = now - ended_retention_ms;
        let stale = now - stale_ms;
        self.sessions
            .retain(|_, v| !(v.ended && v.updated_at < before) && v.updated_at >= stale);
        let open = &mut self.open;
        let sessions = &self.sessions;
        open.retain(|_, id| sessions.contains_key(id));
        // What goes here is marked dirty too, so that the Redis writer
        // deletes its field (a hash's TTL is renewed by every write to it:
        // an active document kept a collaborator whose `offline` never came,
        // and an active project every day of its writing, for ever).
        let dirty = &mut self.dirty;
        for (document, all) in self.conflicts.iter_mut() {
            all.retain(|id, c| {
                let keep = c.resolved_at.is_none_or(|t| t >= before)
                    && c.detected_at.max(c.resolved_at.unwrap_or(0)) >= stale;
                if !keep {
                    dirty.insert(Dirty::Conflict {
                        document: document.clone(),
                        id: id.clone(),
                    });
                }
                keep
            });
        }
        self.conflicts.retain(|_, all| !all.is_empty());
        for (document, users) in self.presence.iter_mut() {
            users.retain(|user, c| {
                let keep = c.updated_at >= stale;
                if !keep {
                    dirty.insert(Dirty::Presence {
                        document: document.clone(),
                        user: user.clone(),
                    });
                }
                keep
            });
        }
        self.presence.retain(|_, users| !users.is_empty());
        for ((project, document), figures) in self.team.iter_mut() {
            figures.retain(|field, f| {
                let keep = f.ts >= stale;
                if !keep {
                    dirty.insert(Dirty::Team {
                        project: project.clone(),
                        document: document.clone(),
                        field: field.clone(),
                    });
                }
                keep
            });
        }
        self.team.retain(|_, f| !f.is_empty());
        let oldest_day = day_of(now - writing_retention_ms);
        let dropped = &mut self.writing_dropped;
        for (project, days) in self.writing.iter_mut() {
            days.retain(|(day, user), _| {
                let keep = *day >= oldest_day;
                if !keep {
                    dropped.push((project.clone(), day.clone(), user.clone()));
                }
                keep
            });
        }
        self.writing.retain(|_, d| !d.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(ty: &str, ts: i64, user: &str, doc: Option<&str>, data: Value) -> Event {
        let v = json!({"id": format!("{ty}-{ts}-{user}"), "type": ty, "ts": ts,
            "user_id": user, "project_id": "p1", "document_id": doc, "data": data});
        let mut v = v;
        if doc.is_none() {
            v.as_object_mut().map(|o| o.remove("document_id"));
        }
        serde_json::from_value(v).unwrap_or_else(|e| panic!("bad test event {ty}: {e}"))
    }

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_767_603_600_123), "2026-01-05");
        assert_eq!(day_of(-1), "1969-12-31");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(ms_of_day("2000-02-29"), Some(951_782_400_000));
        assert_eq!(ms_of_day("2026-02-30"), None);
    }

    #[test]
    fn a_session_opens_tracks_wpm_and_its_summary_counts_once_per_day_and_user() {
        let mut v = ViewState::default();
        v.apply(&ev("writing.session_state_changed", 1000, "u1", None,
            json!({"session_id": null, "from": "IDLE", "to": "WARMING_UP", "reason": "activity", "wpm": 0.0})));
        v.apply(&ev(
            "analytics.metric_updated",
            2000,
            "u1",
            None,
            json!({"metric": "wpm", "value": 42.0, "window_ms": 60000, "dimensions": []}),
        ));
        let s = &v.sessions["u1@1000"];
        assert_eq!(
            (s.state.as_str(), s.wpm, s.ended),
            ("WARMING_UP", 42.0, false)
        );
        v.apply(&ev("writing.session_state_changed", 3000, "u1", None,
            json!({"session_id": null, "from": "WARMING_UP", "to": "ENDED", "reason": "ended", "wpm": 40.0})));
        let summary = json!({"session_id": null, "reason": "ended", "start_ts": 1000, "end_ts": 3000,
            "events": 5, "words": 7, "wpm": 7.0, "active_ms": 2000, "flow_ms": 0, "paused_ms": 0,
            "longest_flow_ms": 0, "pasted_words": 0});
        v.apply(&ev(
            "writing.session_ended",
            3000,
            "u1",
            None,
            summary.clone(),
        ));
        v.apply(&ev("writing.session_ended", 3000, "u1", None, summary));
        assert!(v.sessions["u1@1000"].ended);
        assert!(v.open.is_empty());
        let t = &v.writing["p1"][&("1970-01-01".to_owned(), "u1".to_owned())];
        assert_eq!((t.words, t.sessions, t.active_ms), (7, 1, 2000));
    }

    #[test]
    fn a_view_at_its_key_bound_refuses_new_keys_counts_them_and_keeps_updating_old_ones() {
        let mut v = ViewState {
            max_keys: Some(2),
            ..ViewState::default()
        };
        let online = |ts, doc: &str| {
            ev(
                "collaboration.presence_updated",
                ts,
                "u1",
                Some(doc),
                json!({"status": "online", "paragraph": ts}),
            )
        };
        v.apply(&online(1, "d1"));
        v.apply(&online(2, "d2"));
        v.apply(&online(3, "d3"));
        assert_eq!(v.presence.len(), 2, "d3 refused");
        assert!(!v.presence.contains_key("d3"));
        assert_eq!(v.refused_keys, 1);
        // A document it holds still updates.
        v.apply(&online(4, "d1"));
        assert_eq!(v.presence["d1"]["u1"].paragraph, Some(4));
        assert_eq!(v.refused_keys, 1);
        // Every view is bounded on its own: sessions are not presence.
        for (ts, user) in [(5, "a"), (6, "b"), (7, "c")] {
            v.apply(&ev("writing.session_state_changed", ts, user, None,
                json!({"session_id": null, "from": "IDLE", "to": "WARMING_UP", "reason": "activity", "wpm": 0.0})));
        }
        assert_eq!(v.sessions.len(), 2);
        assert_eq!(v.refused_keys, 2);
    }

    #[test]
    fn offline_removes_a_collaborator_and_a_resolved_conflict_becomes_recent() {
        let mut v = ViewState::default();
        v.apply(&ev(
            "collaboration.presence_updated",
            1,
            "u1",
            Some("d1"),
            json!({"status": "online", "paragraph": 3, "offset": 7}),
        ));
        v.apply(&ev(
            "collaboration.presence_updated",
            2,
            "u1",
            Some("d1"),
            json!({"status": "away"}),
        ));
        assert_eq!(v.presence["d1"]["u1"].paragraph, Some(3));
        assert_eq!(v.presence["d1"]["u1"].status, "away");
        v.apply(&ev(
            "collaboration.presence_updated",
            3,
            "u1",
            Some("d1"),
            json!({"status": "offline"}),
        ));
        assert!(!v.presence.contains_key("d1"));
        for (u, o) in [("u1", "u2"), ("u2", "u1")] {
            v.apply(&ev("collaboration.conflict_detected", 5, u, Some("d1"),
                json!({"conflict_id": "c1", "other_user_id": o, "paragraph": 2,
                    "severity": "HIGH", "kind": "same_paragraph", "suggestion": format!("{o} is here")})));
        }
        let c = &v.conflicts["d1"]["c1"];
        assert_eq!((c.status.as_str(), c.suggestions.len()), ("open", 2));
        v.apply(&ev("collaboration.conflict_resolved", 9, "u1", Some("d1"),
            json!({"conflict_id": "c1", "other_user_id": "u2", "paragraph": 2, "duration_ms": 4, "resolution": "moved_apart"})));
        assert_eq!(v.conflicts["d1"]["c1"].status, "resolved");
        v.prune(9 + 3_600_001, 3_600_000, 1, 86_400_000);
        assert!(v.conflicts.is_empty());
    }
}
