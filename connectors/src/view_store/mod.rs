//! The view store: the dataflow's current state, materialised so that any
//! instance answers the query endpoints (`http_api/views.rs`).
//!
//! ```text
//! FanoutSink::emit ──offer()──▶ bounded queue ──▶ writer task ──▶ ViewState (in-process)
//!   (timely worker: clones the         (drop + count      │
//!    few types the views read,          on overflow)       └─▶ Redis (pipelined), when redis.url is set
//!    never waits)
//! ```
//!
//! - **Embedded** (no `redis.url`): queries read the writer's [`ViewState`].
//! - **Redis**: the writer keeps its [`ViewState`] as a cache to assemble
//!   records and writes what each batch changed — strings, hashes and a
//!   sorted set under `<prefix>:view:`, with TTLs — so every instance answers
//!   from Redis. Writing totals are HINCRBY deltas, so a restarted writer
//!   adds to them instead of overwriting.
//!
//! **Freshness.** Each batch carries the dataflow watermark read when it was
//! emitted ([`Metrics::dataflow_watermark_seconds`]); when the queue is empty the
//! writer follows the watermark every 500 ms (no derived event means nothing
//! changed up to it). That is `as_of`; answers add `lag_ms = now − as_of`.

mod config;
mod error;
mod redis_views;
pub mod state;

pub use config::ViewStoreConfig;
pub use error::{Fresh, ViewError};
pub use state::{ActiveScope, ViewState};

use crate::lease::Fence;
use crate::metrics::Metrics;
use prometheus::IntCounter;
use redis_views::RedisViews;
use schemas::Event;
use state::{Collaborator, ConflictView, SessionView, TeamFigure, WritingTotals};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// Metrics of the view store, registered in the shared registry.
#[derive(Clone)]
struct ViewMetrics {
    applied: IntCounter,
    /// `inkstream_limit_hits_total{limit="view_keys"}`.
    key_limit_hits: IntCounter,
    dropped: IntCounter,
    write_errors: IntCounter,
    fenced: IntCounter,
}

impl ViewMetrics {
    fn register(metrics: &Metrics) -> ViewMetrics {
        let counter = |name: &str, help: &str| {
            // Invariant: fixed, valid names and help strings.
            #[allow(clippy::expect_used)]
            let c = IntCounter::new(name, help).expect("valid metric");
            // Already registered (a second store in one process, in tests):
            // this one then goes unreported, which is harmless.
            let _ = metrics.registry().register(Box::new(c.clone()));
            c
        };
        ViewMetrics {
            key_limit_hits: metrics.limit_hits.with_label_values(&["view_keys"]),
            applied: counter(
                "inkstream_view_events_total",
                "Derived events applied to the view store.",
            ),
            dropped: counter(
                "inkstream_view_dropped_events_total",
                "Derived events dropped by the view store: its queue was full, or Redis was unavailable too long.",
            ),
            write_errors: counter(
                "inkstream_view_write_errors_total",
                "Batches the view store failed to write to Redis.",
            ),
            fenced: counter(
                "inkstream_view_fenced_writes_total",
                "View writes Redis refused because this instance no longer holds the dataflow lease (another instance writes the views).",
            ),
        }
    }
}

struct Batch {
    events: Vec<Event>,
    watermark: i64,
}

/// The dataflow's side: offers derived events, never waits.
#[derive(Clone)]
pub struct ViewFeed {
    tx: mpsc::Sender<Batch>,
    watermark: prometheus::Gauge,
    metrics: ViewMetrics,
    /// The dataflow lease's fence the writer's Redis writes carry.
    fence: Arc<Mutex<Option<Fence>>>,
}

impl ViewFeed {
    /// From now on the writer's Redis writes run only while `fence` is the
    /// dataflow lease's current one (`None`: no lease). Set when this
    /// instance starts its dataflow under the lease, before it derives
    /// anything: a holder that lost the lease (paused past its TTL, cut
    /// off) writes no view over the new holder's.
    pub fn fenced(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Queues the events the views read (a clone of those only). When the
    /// queue is full they are dropped and counted: the timely worker must
    /// never wait on the view store.
    pub fn offer(&self, events: &[Event]) {
        let events: Vec<Event> = events
            .iter()
            .filter(|e| state::wanted(e.event_type()))
            .cloned()
            .collect();
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let batch = Batch {
            events,
            watermark: watermark_ms(&self.watermark),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(batch) {
            let before = self.metrics.dropped.get();
            self.metrics.dropped.inc_by(n);
            // One line per 10 000 dropped, not one per batch.
            if before / 10_000 != (before + n) / 10_000 || before == 0 {
                tracing::warn!(
                    dropped_total = before + n,
                    "view store queue full: events dropped"
                );
            }
        }
    }
}

#[derive(Clone)]
enum Backend {
    Memory,
    Redis(RedisViews),
}

/// The query side; clones share the store.
#[derive(Clone)]
pub struct ViewStore {
    backend: Backend,
    state: Arc<Mutex<ViewState>>,
    /// The watermark the in-process state reflects (ms).
    as_of: Arc<AtomicI64>,
}

impl ViewStore {
    /// Starts the writer task (on the current tokio runtime) and returns the
    /// query side and the feed for the dataflow's sink.
    pub async fn start(
        config: ViewStoreConfig,
        metrics: &Metrics,
    ) -> Result<(ViewStore, ViewFeed), ViewError> {
        let backend = match &config.redis_url {
            Some(url) => Backend::Redis(RedisViews::connect(url, &config).await?),
            None => Backend::Memory,
        };
        let vm = ViewMetrics::register(metrics);
        let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
        let store = ViewStore {
            backend,
            state: Arc::new(Mutex::new(ViewState {
                max_keys: Some(config.max_keys.max(1)),
                ..ViewState::default()
            })),
            as_of: Arc::new(AtomicI64::new(0)),
        };
        let fence: Arc<Mutex<Option<Fence>>> = Arc::default();
        let feed = ViewFeed {
            tx,
            watermark: metrics.dataflow_watermark_seconds.clone(),
            metrics: vm.clone(),
            fence: fence.clone(),
        };
        tokio::spawn(writer(
            store.clone(),
            rx,
            metrics.dataflow_watermark_seconds.clone(),
            config,
            (vm, fence),
        ));
        Ok((store, feed))
    }

    fn lock(&self) -> MutexGuard<'_, ViewState> {
        // Every mutation is a whole apply of one event: a panic mid-way
        // leaves at worst one event half-applied, which the next overwrites.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn local_as_of(&self) -> i64 {
        self.as_of.load(Ordering::Relaxed)
    }

    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Memory => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// One session by id.
    pub async fn session(&self, id: &str) -> Result<Fresh<Option<SessionView>>, ViewError> {
        match &self.backend {
            Backend::Memory => Ok((self.lock().sessions.get(id).cloned(), self.local_as_of())),
            Backend::Redis(r) => r.session(id).await,
        }
    }

    /// The open sessions of any of `scopes`, most recently updated first
    /// (at most 1000 in all). A caller who may read only some sessions
    /// names the scopes it may read, so that the 1000 are chosen among
    /// those: cut before filtering, the newest 1000 of everyone's could
    /// hold none of theirs.
    pub async fn active(
        &self,
        scopes: &[ActiveScope],
    ) -> Result<Fresh<Vec<SessionView>>, ViewError> {
        match &self.backend {
            Backend::Memory => {
                let st = self.lock();
                let mut v: Vec<SessionView> = st
                    .sessions
                    .values()
                    .filter(|s| !s.ended && scopes.iter().any(|scope| scope.holds(s)))
                    .cloned()
                    .collect();
                v.sort_by(|a, b| {
                    b.updated_at
                        .cmp(&a.updated_at)
                        .then_with(|| a.session_id.cmp(&b.session_id))
                });
                v.truncate(1000);
                Ok((v, self.local_as_of()))
            }
            Backend::Redis(r) => r.active(scopes).await,
        }
    }

    /// The collaborators present in a document (online or away).
    pub async fn collaborators(&self, doc: &str) -> Result<Fresh<Vec<Collaborator>>, ViewError> {
        match &self.backend {
            Backend::Memory => Ok((
                self.lock()
                    .presence
                    .get(doc)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
                self.local_as_of(),
            )),
            Backend::Redis(r) => r.collaborators(doc).await,
        }
    }

    /// Open and recently resolved conflicts of a document.
    pub async fn conflicts(&self, doc: &str) -> Result<Fresh<Vec<ConflictView>>, ViewError> {
        match &self.backend {
            Backend::Memory => Ok((
                self.lock()
                    .conflicts
                    .get(doc)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
                self.local_as_of(),
            )),
            Backend::Redis(r) => r.conflicts(doc).await,
        }
    }

    /// The latest team metrics of a project's document (`None`: project-wide).
    pub async fn team(
        &self,
        project: &str,
        doc: Option<&str>,
    ) -> Result<Fresh<Vec<TeamFigure>>, ViewError> {
        match &self.backend {
            Backend::Memory => Ok((
                self.lock()
                    .team
                    .get(&(project.to_owned(), doc.map(str::to_owned)))
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default(),
                self.local_as_of(),
            )),
            Backend::Redis(r) => r.team(project, doc).await,
        }
    }

    /// A project's writing totals per (day, user).
    pub async fn writing(
        &self,
        project: &str,
    ) -> Result<Fresh<Vec<(String, String, WritingTotals)>>, ViewError> {
        match &self.backend {
            Backend::Memory => Ok((
                self.lock()
                    .writing
                    .get(project)
                    .map(|m| {
                        m.iter()
                            .map(|((d, u), t)| (d.clone(), u.clone(), t.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                self.local_as_of(),
            )),
            Backend::Redis(r) => r.writing(project).await,
        }
    }
}

/// The dataflow watermark in ms (the gauge is in seconds, as Prometheus
/// names units).
fn watermark_ms(g: &prometheus::Gauge) -> i64 {
    (g.get() * 1000.0).round() as i64
}

/// Applies queued batches, writes them through to Redis, and follows the
/// watermark while idle.
async fn writer(
    store: ViewStore,
    mut rx: mpsc::Receiver<Batch>,
    watermark: prometheus::Gauge,
    config: ViewStoreConfig,
    (metrics, fence): (ViewMetrics, Arc<Mutex<Option<Fence>>>),
) {
    let writes = Writes {
        metrics: &metrics,
        fence: &fence,
    };
    let ended_ms = config.ended_retention.as_millis() as i64;
    let writing_ms = config.writing_retention.as_millis() as i64;
    let stale_ms = config.ttl.as_millis() as i64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written_as_of = 0;
    let mut unwritten = Unwritten::default();
    // Pruning walks the whole state: once a second, not once per batch.
    let mut pruned = tokio::time::Instant::now();
    // In Redis, the open sessions a previous writer left are read before
    // the first batch (this instance just started its dataflow: a restart
    // or a takeover).
    let mut seeded = !matches!(store.backend, Backend::Redis(_));
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(first) = batch else { return };
                if !seeded && let Backend::Redis(r) = &store.backend {
                    match r.open_sessions().await {
                        Ok(open) => {
                            store.lock().seed_open(open);
                            seeded = true;
                        }
                        Err(error) => tracing::warn!(%error, "view store: cannot read the open sessions from redis; trying again before the next batch"),
                    }
                }
                let mut batches = vec![first];
                while batches.len() < 64 {
                    match rx.try_recv() {
                        Ok(b) => batches.push(b),
                        Err(_) => break,
                    }
                }
                seed_conflicts(&store, &batches).await;
                let wm = batches.iter().map(|b| b.watermark).max().unwrap_or(0);
                let n: usize = batches.iter().map(|b| b.events.len()).sum();
                let changes = {
                    let mut st = store.lock();
                    for b in &batches {
                        for e in &b.events {
                            st.apply(e);
                        }
                    }
                    if pruned.elapsed() >= Duration::from_secs(1) {
                        st.prune(wm, ended_ms, writing_ms, stale_ms);
                        pruned = tokio::time::Instant::now();
                    }
                    metrics
                        .key_limit_hits
                        .inc_by(std::mem::take(&mut st.refused_keys));
                    redis_views::Changes::take(&mut st)
                };
                metrics.applied.inc_by(n as u64);
                store.as_of.fetch_max(wm, Ordering::Relaxed);
                unwritten.changes.extend(changes);
                flush(&store, &mut unwritten, &mut written_as_of, wm, &writes).await;
            }
            _ = tick.tick() => {
                if !rx.is_empty() {
                    continue;
                }
                let wm = watermark_ms(&watermark).max(written_as_of);
                store.as_of.fetch_max(wm, Ordering::Relaxed);
                if wm > written_as_of || unwritten.changes.len() > 0 {
                    flush(&store, &mut unwritten, &mut written_as_of, wm, &writes).await;
                }
            }
        }
    }
}

/// In Redis: reads the conflicts that `batches` resolve and the state does
/// not hold (a previous writer saw them open), so that they are resolved
/// in Redis too instead of staying open there.
async fn seed_conflicts(store: &ViewStore, batches: &[Batch]) {
    let Backend::Redis(r) = &store.backend else {
        return;
    };
    let wanted: Vec<(String, String)> = {
        let st = store.lock();
        batches
            .iter()
            .flat_map(|b| &b.events)
            .filter_map(|e| st.unknown_conflict(e))
            .collect()
    };
    if wanted.is_empty() {
        return;
    }
    match r.conflicts_by_id(&wanted).await {
        Ok(found) => store.lock().seed_conflicts(found),
        Err(error) => {
            tracing::warn!(%error, conflicts = wanted.len(), "view store: cannot read conflicts a previous writer left in redis; their resolution is not shown")
        }
    }
}

/// Changes held for Redis while it fails, at most; past it they are dropped
/// (counted) and the views catch up as the records change again.
const MAX_UNWRITTEN: usize = 100_000;

/// What [`flush`] counts in and guards its writes with.
struct Writes<'a> {
    metrics: &'a ViewMetrics,
    fence: &'a Mutex<Option<Fence>>,
}

/// What Redis has not got yet, for certain.
#[derive(Default)]
struct Unwritten {
    changes: redis_views::Changes,
    /// The last write that failed: Redis may still have applied it (its
    /// reply lost). Its attempt number and the writing deltas it carried
    /// (the first ones of `changes`).
    in_doubt: Option<(u64, usize)>,
    /// Write attempts so far (numbers them).
    attempts: u64,
}

/// Writes what Redis has not got yet, with the watermark `wm`. On failure
/// the changes are kept for the next try (and `as_of` in Redis stays where
/// it was: it never claims what is not written). Before that try, a write
/// whose reply was lost is looked up: if Redis applied it, its writing
/// deltas are not added again.
async fn flush(
    store: &ViewStore,
    unwritten: &mut Unwritten,
    written_as_of: &mut i64,
    wm: i64,
    writes: &Writes<'_>,
) {
    let metrics = writes.metrics;
    let Backend::Redis(r) = &store.backend else {
        *unwritten = Unwritten::default();
        *written_as_of = wm;
        return;
    };
    if let Some((attempt, deltas)) = unwritten.in_doubt {
        match r.applied(attempt).await {
            Ok(applied) => {
                if applied {
                    unwritten.changes.forget_writing(deltas);
                }
                unwritten.in_doubt = None;
            }
            Err(error) => {
                metrics.write_errors.inc();
                tracing::warn!(%error, "view store: redis unreachable; retrying");
                return;
            }
        }
    }
    unwritten.attempts += 1;
    let attempt = unwritten.attempts;
    let fence = writes
        .fence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match r
        .write(&unwritten.changes, wm, attempt, fence.as_ref())
        .await
    {
        Ok(()) => {
            unwritten.changes = redis_views::Changes::default();
            *written_as_of = wm;
        }
        Err(error @ ViewError::Fenced { .. }) => {
            // Nothing of it ran, and nothing of this writer's will: the
            // holder of the lease writes the views (this instance stops).
            metrics.fenced.inc();
            let dropped = unwritten.changes.len();
            *unwritten = Unwritten {
                attempts: unwritten.attempts,
                ..Unwritten::default()
            };
            tracing::warn!(%error, dropped, "view store: write refused");
        }
        Err(error) => {
            metrics.write_errors.inc();
            unwritten.in_doubt = Some((attempt, unwritten.changes.writing_len()));
            let held = unwritten.changes.len();
            if held > MAX_UNWRITTEN {
                metrics.dropped.inc_by(held as u64);
                unwritten.changes = redis_views::Changes::default();
                unwritten.in_doubt = None;
            }
            tracing::warn!(%error, held, "view store: writing to redis failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str) -> Event {
        Event {
            id: "e".into(),
            ts: 1,
            user_id: Some("u".into()),
            project_id: Some("p".into()),
            document_id: Some("d".into()),
            data: schemas::Payload::example(ty).unwrap_or_else(|| panic!("{ty}")),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::standalone();
        let (tx, mut rx) = mpsc::channel(1);
        let feed = ViewFeed {
            tx,
            watermark: metrics.dataflow_watermark_seconds.clone(),
            metrics: ViewMetrics::register(&metrics),
            fence: Arc::default(),
        };
        metrics.dataflow_watermark_seconds.set(0.042);
        let wanted = event("collaboration.presence_updated");
        // Types the views do not read are not even queued.
        feed.offer(&[event("writing.keystroke")]);
        feed.offer(&[wanted.clone(), wanted.clone()]);
        feed.offer(&[wanted]);
        assert_eq!(feed.metrics.dropped.get(), 1);
        let queued = rx.try_recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((queued.events.len(), queued.watermark), (2, 42));
        assert!(rx.try_recv().is_err());
        assert!(
            metrics
                .render()
                .contains("inkstream_view_dropped_events_total 1")
        );
    }
}
