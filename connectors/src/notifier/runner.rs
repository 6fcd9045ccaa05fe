//! The notifier task: owns the [`Policy`], a [`Clock`], the [`Store`] and the
//! channels. Fed derived events (alerts, flow changes) and custom sends over
//! a bounded channel; ticks every second for batches, holds, digests and
//! retries.
//!
//! Delivery guarantees:
//! - An alert id is routed once: re-emitted derived events (same
//!   deterministic id after a checkpoint restore) are dropped by the `seen`
//!   mark, committed atomically with the policy state and the new pending
//!   deliveries (persist first, then send).
//! - A delivery id is sent until it succeeds, then marked `done`; a `done`
//!   id is never sent again (a restart re-loads only pending ones). The id
//!   travels as `Idempotency-Key` / `Message-ID`, so the only window — a
//!   crash after the provider accepted but before `done` was written — is
//!   deduplicated by the provider.
//! - Transient failures (5xx, 429, timeouts, connection errors) are retried
//!   with exponential backoff and jitter up to `retry.max_attempts`;
//!   permanent ones (4xx) are not. Then the delivery goes to the dead
//!   letters with its reason, and a CRITICAL email falls back to SMS.
//!
//! Several instances sharing Redis:
//! - The task runs only beside the dataflow (one instance, under its
//!   lease). It loads the users' state and the pending deliveries when it
//!   starts ([`Notifier::resume`]), not when its process did: a standby
//!   that takes the lease over hours later continues from what the last
//!   holder saved. Its writes are guarded by the lease's fence
//!   ([`Notifier::fenced`]).
//! - Every instance serves the preference routes; each looks every second
//!   for preferences changed through another one
//!   ([`Store::prefs_changed_since`]), so the holder routes with what a
//!   user set on any gateway.

use super::config::NotifierConfig;
use super::email_api::EmailApi;
use super::error::DeliveryError;
use super::in_app::InApp;
use super::metrics::NotifierMetrics;
use super::policy::{Alert, Channel, Delivery, Policy, Preferences, UserState, priority_label};
use super::sms::Sms;
use super::smtp::Smtp;
use super::store::{Pending, Store, StoreError};
use super::webhook::Webhook;
use crate::websocket_fanout::Hub;
use schemas::payload::SessionState;
use schemas::{Event, Payload};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Wall-clock time in ms since the epoch (a trait so tests control it).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(ms: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(ms)))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the notifier task is sent.
#[derive(Debug)]
pub enum Input {
    /// A derived event (alert or flow change).
    Event(Event),
    /// A custom notification (`POST /notifications/send`); `recipient` may
    /// be an address (`role:admin`, `project:<id>`).
    Send(Alert),
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("notifier store: {0}")]
    Store(#[from] StoreError),
    #[error("notifier config: {0}")]
    Config(String),
}

impl schemas::Classify for NotifierError {
    fn fault(&self) -> schemas::Fault {
        match self {
            NotifierError::Store(e) => schemas::Classify::fault(e),
            NotifierError::Config(_) => schemas::Fault::Config,
        }
    }
}

/// What the HTTP endpoints and the dataflow sink hold: the queue into the
/// task, the store, and the preferences.
#[derive(Clone)]
pub struct NotifierHandle {
    tx: mpsc::Sender<Input>,
    /// Wakes this instance's task (if it runs here) for custom sends
    /// queued in Redis.
    wake: Arc<tokio::sync::Notify>,
    /// Alerts offered by the dataflow that the task has not routed yet
    /// (its `seen` mark not saved), by id: a checkpoint saves them
    /// ([`NotifierHandle::persist_unrouted`]) before it counts them done.
    in_flight: Arc<Mutex<BTreeMap<String, Alert>>>,
    /// The runtime the store's client runs on, for
    /// [`NotifierHandle::persist_unrouted`] from a worker thread.
    runtime: tokio::runtime::Handle,
    pub store: Store,
    prefs: Arc<RwLock<HashMap<String, Preferences>>>,
    defaults: Arc<Preferences>,
    config: Arc<NotifierConfig>,
}

impl NotifierHandle {
    /// A user's effective preferences (their own, else the defaults).
    pub fn prefs(&self, user: &str) -> Preferences {
        self.prefs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned()
            .unwrap_or_else(|| (*self.defaults).clone())
    }

    /// Stores a user's preferences (store first, then the cache).
    pub async fn set_prefs(&self, user: &str, p: Preferences) -> Result<(), StoreError> {
        self.store.prefs_put(user, &p).await?;
        self.prefs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), p);
        Ok(())
    }

    pub fn config(&self) -> &NotifierConfig {
        &self.config
    }

    /// Queues a custom notification (`POST /notifications/send`);
    /// `Ok(false)` when `queue` are waiting already. With Redis it is
    /// durable once this returns, and the task routes it wherever it runs
    /// (this instance may be a gateway without one); in-process it goes to
    /// the local task's queue.
    pub async fn send(&self, alert: Alert) -> Result<bool, StoreError> {
        if matches!(self.store, Store::Memory(_)) {
            return Ok(self.tx.try_send(Input::Send(alert)).is_ok());
        }
        if !self.store.enqueue_send(&alert, self.config.queue).await? {
            return Ok(false);
        }
        self.wake.notify_one();
        Ok(true)
    }

    /// Before a checkpoint counts the alerts offered so far as done: queues
    /// those the task has not routed yet in the store's durable queue of
    /// sends (Redis), where the task (this one, or whoever resumes after a
    /// crash) routes them; routing one twice is harmless (its `seen`
    /// mark). Blocks: called from the dataflow's worker threads. In-process
    /// there is nothing durable to queue in, as with the embedded log.
    /// Returns how many were queued.
    pub fn persist_unrouted(&self) -> Result<usize, StoreError> {
        if matches!(self.store, Store::Memory(_)) {
            return Ok(0);
        }
        let alerts: Vec<Alert> = lock(&self.in_flight).values().cloned().collect();
        if alerts.is_empty() {
            return Ok(0);
        }
        let (store, runtime) = (self.store.clone(), self.runtime.clone());
        let queued = std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(store.enqueue_unrouted(&alerts)))
                .join()
                .unwrap_or_else(|_| Err(StoreError::Panicked))
        });
        queued?;
        let mut in_flight = lock(&self.in_flight);
        for a in &alerts {
            in_flight.remove(&a.id);
        }
        Ok(alerts.len())
    }

    /// The task routed (or found routed) these alert ids.
    fn routed<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut in_flight = lock(&self.in_flight);
        for id in ids {
            in_flight.remove(id);
        }
    }

    /// From the dataflow's sink (a worker thread): queues a derived event if
    /// the notifier wants it. Waits for room when called outside the
    /// runtime (backpressure on the dataflow, never a silent drop); inside
    /// it, a full queue drops the event and says so.
    pub fn offer(&self, e: &Event) {
        if !wants(e) {
            return;
        }
        if let Some(alert) = alert_of(e) {
            lock(&self.in_flight).insert(alert.id.clone(), alert);
        }
        match self.tx.try_send(Input::Event(e.clone())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(input)) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    let _ = self.tx.blocking_send(input);
                } else {
                    tracing::warn!(id = %e.id, "notifier queue full: event dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The delivery backends.
struct Channels {
    in_app: InApp,
    smtp: Option<Smtp>,
    email_api: Option<EmailApi>,
    sms: Option<Sms>,
    webhook: Webhook,
}

impl Channels {
    async fn deliver(
        &self,
        d: &Delivery,
        prefs: &Preferences,
        now_ms: i64,
    ) -> Result<(), DeliveryError> {
        match d.channel {
            Channel::InApp => self.in_app.send(d, now_ms).await,
            Channel::Email => {
                let to = prefs
                    .email
                    .as_deref()
                    .ok_or_else(|| DeliveryError::permanent("the user has no email address"))?;
                match (&self.smtp, &self.email_api) {
                    (Some(s), _) => s.send(d, to).await,
                    (None, Some(api)) => api.send(d, to).await,
                    (None, None) => Err(DeliveryError::permanent("email is not configured")),
                }
            }
            Channel::Sms => {
                let phone = prefs
                    .phone
                    .as_deref()
                    .ok_or_else(|| DeliveryError::permanent("the user has no phone number"))?;
                match &self.sms {
                    Some(s) => s.send(d, phone).await,
                    None => Err(DeliveryError::permanent("sms is not configured")),
                }
            }
            Channel::Webhook => self.webhook.send(d, prefs.webhook_url.as_deref()).await,
        }
    }
}

/// The notifier task's state.
pub struct Notifier<C: Clock> {
    config: Arc<NotifierConfig>,
    policy: Policy,
    store: Store,
    channels: Channels,
    clock: C,
    handle: NotifierHandle,
    metrics: NotifierMetrics,
    /// Deliveries waiting for their (next) attempt, by id (mirrors the store).
    pending: BTreeMap<String, Pending>,
    /// Routing steps the store refused (Redis unreachable): committed with
    /// the next step, their deliveries attempted once saved.
    unsaved: Unsaved,
    /// Alerts whose `seen` check the store could not answer: routed again
    /// at the next tick (at most `queue` of them).
    unchecked: VecDeque<Alert>,
    /// xorshift state for the jitter.
    rng: u64,
}

/// What routing steps changed and the store has not saved yet.
#[derive(Default)]
struct Unsaved {
    seen: Vec<String>,
    /// Each user's latest state (`None`: delete).
    users: BTreeMap<String, Option<UserState>>,
    pending: Vec<Pending>,
}

impl Unsaved {
    fn add(
        &mut self,
        seen: Vec<String>,
        users: Vec<(String, Option<UserState>)>,
        pending: Vec<Pending>,
    ) {
        self.seen.extend(seen);
        self.users.extend(users);
        for p in pending {
            if !self.pending.iter().any(|q| q.delivery.id == p.delivery.id) {
                self.pending.push(p);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.users.is_empty() && self.pending.is_empty()
    }
}

impl<C: Clock> Notifier<C> {
    /// Builds the notifier and loads the preferences (which every
    /// instance serves); the users' state and the pending deliveries are
    /// loaded when its task starts ([`Notifier::resume`]).
    pub async fn start(
        config: NotifierConfig,
        store: Store,
        hub: Option<Arc<Hub>>,
        metrics: NotifierMetrics,
        clock: C,
    ) -> Result<(Notifier<C>, mpsc::Receiver<Input>), NotifierError> {
        config
            .validate()
            .map_err(|(k, m)| NotifierError::Config(format!("{k}: {m}")))?;
        let config = Arc::new(config);
        let timeout = Duration::from_millis(config.retry.timeout_ms);
        let http = super::outbound::Outbound::new(
            timeout,
            &config.tls,
            config.allow_private_destinations,
            metrics.refused.clone(),
        )
        .map_err(|e| NotifierError::Config(e.to_string()))?;
        let smtp = match &config.smtp {
            Some(c) => Some(
                Smtp::new(c, &config.tls, timeout)
                    .map_err(|e| NotifierError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let channels = Channels {
            in_app: InApp {
                hub,
                store: store.clone(),
                keep: config.in_app_keep.max(1),
            },
            smtp,
            email_api: config.email_api.clone().map(|c| EmailApi {
                http: http.clone(),
                config: c,
            }),
            sms: config.sms.clone().map(|c| Sms {
                http: http.clone(),
                config: c,
            }),
            webhook: Webhook {
                http,
                config: config.webhook.clone(),
            },
        };
        let policy = Policy::new(config.policy());
        let (prefs, seq) = store.prefs_all().await?;
        let prefs: Arc<RwLock<HashMap<String, Preferences>>> =
            Arc::new(RwLock::new(prefs.into_iter().collect()));
        if matches!(store, Store::Redis { .. }) {
            tokio::spawn(refresh_prefs(store.clone(), Arc::downgrade(&prefs), seq));
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let handle = NotifierHandle {
            tx,
            wake: Arc::new(tokio::sync::Notify::new()),
            in_flight: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
            store: store.clone(),
            prefs,
            defaults: Arc::new(config.defaults.clone()),
            config: config.clone(),
        };
        let seed = clock.now_ms() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        let n = Notifier {
            config,
            policy,
            store,
            channels,
            clock,
            handle,
            metrics,
            pending: BTreeMap::new(),
            unsaved: Unsaved::default(),
            unchecked: VecDeque::new(),
            rng: seed | 1,
        };
        n.update_gauge();
        Ok((n, rx))
    }

    pub fn handle(&self) -> NotifierHandle {
        self.handle.clone()
    }

    /// Guards this task's writes by the dataflow lease's `fence` (`None`:
    /// no lease): once another process took the lease over, they are
    /// refused ([`StoreError::Fenced`]).
    pub fn fenced(mut self, fence: Option<crate::lease::Fence>) -> Self {
        self.store = self.store.fenced(fence);
        self
    }

    /// Loads the users' policy state and the pending deliveries from the
    /// store, replacing what this task held. [`Notifier::run`] does this
    /// first; a caller driving the notifier step by step calls it once.
    pub async fn resume(&mut self) -> Result<(), StoreError> {
        let users = self.store.load_users().await?;
        let pending = self.store.load_pending().await?;
        let mut policy = Policy::new(self.config.policy());
        for (u, s) in users {
            policy.restore(u, s);
        }
        self.policy = policy;
        self.pending = pending
            .into_iter()
            .map(|p| (p.delivery.id.clone(), p))
            .collect();
        self.update_gauge();
        Ok(())
    }

    /// Deliveries waiting for a retry.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Handles one derived event.
    pub async fn on_event(&mut self, e: &Event) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let user = e.user_id.as_deref();
        let flow = match &e.data {
            Payload::AnalyticsAlertTriggered(_) => match alert_of(e) {
                Some(alert) => return self.send(alert).await,
                None => return Ok(()),
            },
            // Held "until they pause": leaving FLOW_STATE for active writing
            // (flow_state_exited) keeps the hold; a pause, a break, the end
            // of the session (or `flow_hold_max_s`) releases it.
            Payload::WritingFlowStateEntered(_) => true,
            Payload::WritingSessionPaused(_) | Payload::WritingSessionEnded(_) => false,
            Payload::WritingSessionStateChanged(s) => match s.to {
                SessionState::FlowState => true,
                SessionState::Paused
                | SessionState::Break
                | SessionState::Ended
                | SessionState::Idle => false,
                SessionState::WarmingUp | SessionState::ActiveWriting => return Ok(()),
            },
            _ => return Ok(()),
        };
        let Some(user) = user else { return Ok(()) };
        let prefs = self.handle.prefs(user);
        let out = self.policy.on_flow(user, flow, &prefs, now);
        self.route(Vec::new(), out, now).await
    }

    /// Routes one alert (from the dataflow or a custom send), once per id.
    pub async fn send(&mut self, alert: Alert) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let seen = match self.store.is_seen(&alert.id).await {
            Ok(seen) => seen || self.unsaved.seen.contains(&alert.id),
            Err(error) => {
                // Routed again at the next tick, not lost.
                if self.unchecked.len() >= self.config.queue.max(1)
                    && let Some(dropped) = self.unchecked.pop_front()
                {
                    tracing::error!(id = %dropped.id, "notifier: the store has been unreachable for a whole queue of alerts; the oldest is dropped");
                }
                self.unchecked.push_back(alert);
                return Err(error);
            }
        };
        if seen {
            tracing::debug!(id = %alert.id, "alert already routed");
            if !self.unsaved.seen.contains(&alert.id) {
                self.handle.routed([&alert.id]);
            }
            return Ok(());
        }
        let users = self.config.resolve(&alert.recipient);
        if users.is_empty() {
            tracing::warn!(recipient = %alert.recipient, rule = ?alert.rule, "alert recipient resolves to nobody");
        }
        let single = users.len() == 1 && users[0] == alert.recipient;
        let mut out = Vec::new();
        for u in &users {
            let a = Alert {
                id: if single {
                    alert.id.clone()
                } else {
                    format!("{}:{u}", alert.id)
                },
                recipient: u.clone(),
                ..alert.clone()
            };
            let prefs = self.handle.prefs(u);
            out.extend(self.policy.on_alert(&a, &prefs, now));
        }
        self.route(vec![alert.id], out, now).await
    }

    /// Routes the custom notifications queued in Redis (by any instance),
    /// oldest first, deleting each once routed. Waits while earlier
    /// routing is unsaved or unchecked: an alert is deleted from the queue
    /// only once its routing step is saved.
    pub async fn route_sends(&mut self) -> Result<(), StoreError> {
        const PER_READ: usize = 256;
        loop {
            if !(self.unsaved.is_empty() && self.unchecked.is_empty()) {
                return Ok(());
            }
            let queued = self.store.queued_sends(PER_READ).await?;
            let more = queued.len() == PER_READ;
            let mut routed = Vec::new();
            let mut failed = None;
            for (entry, alert) in queued {
                let Some(alert) = alert else {
                    tracing::error!(%entry, "notifier: a queued custom notification does not read back as one; dropped");
                    routed.push(entry);
                    continue;
                };
                match self.send(alert).await {
                    Ok(()) if self.unsaved.is_empty() && self.unchecked.is_empty() => {
                        routed.push(entry)
                    }
                    Ok(()) => break,
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                }
            }
            self.store.sends_routed(&routed).await?;
            if let Some(error) = failed {
                return Err(error);
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Releases what is due (batches, holds, digests) and retries what is due.
    pub async fn tick(&mut self) -> Result<(), StoreError> {
        let mut waiting = std::mem::take(&mut self.unchecked);
        while let Some(alert) = waiting.pop_front() {
            if let Err(error) = self.send(alert).await {
                // `send` kept that one; the rest wait with it.
                self.unchecked.extend(waiting);
                return Err(error);
            }
        }
        let now = self.clock.now_ms();
        let handle = self.handle.clone();
        let out = self.policy.tick(now, &|u| handle.prefs(u));
        let mut result = self.route(Vec::new(), out, now).await;
        if result.is_ok() {
            // Sends queued while no task was woken (another instance
            // accepted them, or this task was not running yet).
            result = self.route_sends().await;
        }
        // Once per tick: counting the held items walks every user.
        self.update_gauge();
        result
    }

    /// Persists the step (seen ids, state, new deliveries), then sends.
    /// A step the store refuses is kept and committed with the next one
    /// (the next tick at the latest), and its deliveries wait until then:
    /// an alert routed while Redis is away is late, not lost (until
    /// 2026-12-07 it was dropped, with a warning).
    async fn route(
        &mut self,
        seen: Vec<String>,
        deliveries: Vec<Delivery>,
        now: i64,
    ) -> Result<(), StoreError> {
        let dirty = self.policy.take_dirty();
        let new: Vec<Pending> = deliveries
            .into_iter()
            .filter(|d| !self.pending.contains_key(&d.id))
            .map(|delivery| Pending {
                delivery,
                attempt: 0,
                next_at_ms: now,
                last_error: None,
            })
            .collect();
        for t in self.policy.take_tallies() {
            self.metrics
                .count(priority_label(t.priority), t.channel, t.outcome.as_str());
        }
        let mut step = std::mem::take(&mut self.unsaved);
        step.add(seen, dirty, new);
        if !step.is_empty() {
            let users: Vec<(String, Option<UserState>)> = step
                .users
                .iter()
                .map(|(u, s)| (u.clone(), s.clone()))
                .collect();
            let saved = self
                .store
                .commit(&step.seen, self.config.dedup_ttl_s, &users, &step.pending)
                .await;
            if let Err(error) = saved {
                self.unsaved = step;
                return Err(error);
            }
            self.handle.routed(&step.seen);
        }
        for p in step.pending {
            self.pending.insert(p.delivery.id.clone(), p);
        }
        self.attempt_due(now).await
    }

    /// Attempts every due delivery, `CONCURRENCY` at a time (a slow
    /// provider costs one timeout per batch, not one per delivery), then
    /// the fallbacks of those that failed for good.
    async fn attempt_due(&mut self, now: i64) -> Result<(), StoreError> {
        const CONCURRENCY: usize = 32;
        loop {
            let due: Vec<String> = self
                .pending
                .values()
                .filter(|p| p.next_at_ms <= now)
                .map(|p| p.delivery.id.clone())
                .collect();
            if due.is_empty() {
                return Ok(());
            }
            let mut fallbacks = Vec::new();
            for chunk in due.chunks(CONCURRENCY) {
                let mut batch = Vec::new();
                for id in chunk {
                    let Some(p) = self.pending.remove(id) else {
                        continue;
                    };
                    match self.store.is_done(id).await {
                        // Delivered before a restart, bookkeeping interrupted: never twice.
                        Ok(true) => {
                            if let Err(e) = self.store.finish(id, self.config.dedup_ttl_s).await {
                                self.pending.insert(id.clone(), p);
                                return Err(e);
                            }
                        }
                        Ok(false) => {
                            let prefs = self.handle.prefs(&p.delivery.recipient);
                            batch.push((p, prefs));
                        }
                        Err(e) => {
                            self.pending.insert(id.clone(), p);
                            return Err(e);
                        }
                    }
                }
                let channels = &self.channels;
                let results =
                    futures_util::future::join_all(batch.iter().map(|(p, prefs)| async move {
                        let started = Instant::now();
                        let r = channels.deliver(&p.delivery, prefs, now).await;
                        (r, started.elapsed())
                    }))
                    .await;
                let mut error = None;
                for ((p, _), (result, took)) in batch.into_iter().zip(results) {
                    self.metrics
                        .delivery_seconds
                        .with_label_values(&[p.delivery.channel.as_str()])
                        .observe(took.as_secs_f64());
                    if error.is_some() {
                        // The store failed: keep it for the next tick.
                        self.pending.insert(p.delivery.id.clone(), p);
                        continue;
                    }
                    match self.settle(p, result, now).await {
                        Ok(Some(fb)) => fallbacks.push(fb),
                        Ok(None) => {}
                        Err(e) => error = Some(e),
                    }
                }
                if let Some(e) = error {
                    return Err(e);
                }
            }
            if fallbacks.is_empty() {
                return Ok(());
            }
            let new: Vec<Pending> = fallbacks
                .into_iter()
                .map(|delivery| Pending {
                    delivery,
                    attempt: 0,
                    next_at_ms: now,
                    last_error: None,
                })
                .collect();
            self.store
                .commit(&[], self.config.dedup_ttl_s, &[], &new)
                .await?;
            for p in new {
                self.pending.insert(p.delivery.id.clone(), p);
            }
        }
    }

    /// Books the result of one attempt; returns a fallback delivery when it
    /// failed for good. On a store error the delivery stays pending.
    async fn settle(
        &mut self,
        mut p: Pending,
        result: Result<(), DeliveryError>,
        now: i64,
    ) -> Result<Option<Delivery>, StoreError> {
        let (prio, ch) = (
            priority_label(p.delivery.priority),
            p.delivery.channel.as_str(),
        );
        let id = p.delivery.id.clone();
        match result {
            Ok(()) => {
                if let Err(e) = self.store.finish(&id, self.config.dedup_ttl_s).await {
                    // Delivered but not booked: the retry carries the same key.
                    self.pending.insert(id, p);
                    return Err(e);
                }
                self.metrics.count(prio, ch, "delivered");
                tracing::debug!(id = %id, channel = ch, attempt = p.attempt + 1, "notification delivered");
                Ok(None)
            }
            Err(e) if e.transient && p.attempt + 1 < self.config.retry.max_attempts => {
                p.attempt += 1;
                p.next_at_ms = now + self.backoff_ms(p.attempt);
                p.last_error = Some(e.reason.clone());
                self.metrics.count(prio, ch, "retried");
                tracing::info!(id = %id, channel = ch, attempt = p.attempt, error = %e, "delivery failed, retrying");
                let saved = self.store.put_pending(&p).await;
                self.pending.insert(id, p);
                saved.map(|()| None)
            }
            Err(e) => {
                p.attempt += 1;
                tracing::warn!(id = %id, channel = ch, attempts = p.attempt, error = %e, "delivery dead-lettered");
                if let Err(err) = self.store.dead_letter(&p, &e.reason).await {
                    p.attempt -= 1;
                    self.pending.insert(id, p);
                    return Err(err);
                }
                self.metrics.count(prio, ch, "dead_lettered");
                Ok(self.policy.on_failed(&p.delivery))
            }
        }
    }

    /// `base · 2^(attempt-1)`, capped, spread by ±`jitter`.
    fn backoff_ms(&mut self, attempt: u32) -> i64 {
        let r = &self.config.retry;
        let exp = r
            .base_ms
            .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(30))
            .min(r.max_ms) as f64;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        (exp * (1.0 + r.jitter * (2.0 * unit - 1.0))).max(1.0) as i64
    }

    fn update_gauge(&self) {
        self.metrics
            .pending
            .set((self.pending.len() + self.policy.waiting()) as i64);
    }

    /// The task: events, custom sends and a 1 s tick, until `stop`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.handle.wake.clone();
        // What the last task saved (this process's earlier run, or another
        // instance's before it lost the lease). Until it is loaded nothing
        // is routed: the queue fills and holds the dataflow back.
        let mut failing = false;
        loop {
            match self.resume().await {
                Ok(()) => break,
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "notifier: cannot load its state from the store; trying again every second");
                        failing = true;
                    }
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait_for(|s| *s) => {
                            tracing::error!("notifier stopped before it could load its state: nothing was routed");
                            return;
                        }
                    }
                }
            }
        }
        tracing::info!(
            store = self.store.backend(),
            pending = self.pending.len(),
            "notifier started"
        );
        loop {
            if *stop.borrow() {
                break;
            }
            let result = tokio::select! {
                changed = stop.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                msg = rx.recv() => match msg {
                    Some(Input::Event(e)) => self.on_event(&e).await,
                    Some(Input::Send(a)) => self.send(a).await,
                    None => break,
                },
                _ = wake.notified() => self.route_sends().await,
                _ = tick.tick() => self.tick().await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, unsaved_deliveries = self.unsaved.pending.len(), "notifier: store error; what it refused is tried again at the next tick");
            }
        }
        // Drain what is queued, so alerts derived before shutdown are routed.
        while let Ok(msg) = rx.try_recv() {
            let _ = match msg {
                Input::Event(e) => self.on_event(&e).await,
                Input::Send(a) => self.send(a).await,
            };
        }
        // What the store refused so far gets one last try; what still
        // fails is said, not dropped silently.
        if !(self.unsaved.is_empty() && self.unchecked.is_empty())
            && let Err(error) = self.tick().await
        {
            tracing::error!(
                %error,
                unsaved_deliveries = self.unsaved.pending.len(),
                unchecked_alerts = self.unchecked.len(),
                "notifier stopped with routing the store refused: those alerts are not delivered \
                 unless the dataflow derives them again after a restore"
            );
        }
        tracing::info!("notifier stopped");
    }
}

/// How often every instance looks for preferences changed elsewhere.
const PREFS_REFRESH: Duration = Duration::from_secs(1);

/// Keeps an instance's preferences up to date with changes made through
/// the other instances sharing the store, until its handle is gone.
async fn refresh_prefs(
    store: Store,
    prefs: Weak<RwLock<HashMap<String, Preferences>>>,
    mut seq: u64,
) {
    let mut every = tokio::time::interval(PREFS_REFRESH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        every.tick().await;
        let Some(map) = prefs.upgrade() else { return };
        match store.prefs_changed_since(seq).await {
            Ok((changed, latest)) => {
                if failing {
                    tracing::info!("notifier: preferences changed elsewhere are read again");
                    failing = false;
                }
                seq = latest;
                if !changed.is_empty() {
                    let mut m = map.write().unwrap_or_else(|p| p.into_inner());
                    m.extend(changed);
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "notifier: cannot read preferences changed on other instances; using the ones known until it can");
                    failing = true;
                }
            }
        }
    }
}

/// The alert a derived `analytics.alert_triggered` event asks for.
fn alert_of(e: &Event) -> Option<Alert> {
    let Payload::AnalyticsAlertTriggered(a) = &e.data else {
        return None;
    };
    Some(Alert {
        id: e.id.to_string(),
        rule: Some(a.rule.clone()),
        priority: a.priority,
        recipient: a.recipient_id.clone(),
        dedup_key: a.dedup_key.clone(),
        title: a.title.clone(),
        body: a.body.clone(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the notifier wants this derived event (alerts and flow changes).
pub fn wants(e: &schemas::Event) -> bool {
    use schemas::Payload as P;
    matches!(
        e.data,
        P::AnalyticsAlertTriggered(_)
            | P::WritingFlowStateEntered(_)
            | P::WritingSessionStateChanged(_)
            | P::WritingSessionPaused(_)
            | P::WritingSessionEnded(_)
    )
}
