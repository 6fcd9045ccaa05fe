//! Reads the log for the dataflow and acknowledges what it has processed.
//!
//! At start it re-reads this consumer's pending entries (delivered before a
//! restart, never acknowledged), then new ones. Entries are acknowledged only
//! when the bridge reports them fully processed. Log errors are counted and
//! retried with capped exponential backoff: the source never dies.
//!
//! The reader also tells the dataflow how far it has **caught up**
//! ([`CaughtUp`]): the start of its latest read that found nothing more to
//! read. The dataflow lets event time follow the wall clock through a quiet
//! input only up to that instant, so a reader that is merely slow (a starved
//! task, a slow Redis) never makes the events it has not read yet look late.

use super::EventLog;
use super::entry::{EntryRef, LogEntry};
use super::error::LogError;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How far a reader has caught up with its input: the start of its latest
/// read that returned less than a full page, i.e. everything appended before
/// that instant has been handed to the dataflow. Shared by a reader (which
/// marks it after sending that read's entries) and the dataflow worker it
/// feeds (which reads it before draining the channel).
#[derive(Debug, Clone)]
pub struct CaughtUp {
    base: Instant,
    /// Nanoseconds after `base`, plus one; 0: never caught up.
    at: Arc<AtomicU64>,
    /// Input partitions with records still to read that the reader has not
    /// delivered from yet (a Kafka source's new assignment): each holds the
    /// watermark where it is until its first record arrives.
    held: Arc<Mutex<Vec<Arc<str>>>>,
}

impl Default for CaughtUp {
    fn default() -> Self {
        CaughtUp {
            base: Instant::now(),
            at: Arc::new(AtomicU64::new(0)),
            held: Arc::default(),
        }
    }
}

impl CaughtUp {
    /// Everything appended before `read_started` has been sent (call it after
    /// the send). Never moves back.
    pub fn mark(&self, read_started: Instant) {
        let nanos = read_started.saturating_duration_since(self.base).as_nanos() as u64 + 1;
        self.at.fetch_max(nanos, Ordering::Release);
    }

    /// `parts` have records still to read: the dataflow holds its watermark
    /// for each until that partition delivers (call it before sending any
    /// of their records).
    pub fn hold(&self, parts: impl IntoIterator<Item = Arc<str>>) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(parts);
    }

    /// The partitions to hold since the last call (the dataflow's side).
    pub fn take_held(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The latest instant the reader was caught up at, if any.
    pub fn get(&self) -> Option<Instant> {
        match self.at.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }
}

pub struct SourceConfig {
    pub group: String,
    pub consumer: String,
    pub batch: usize,
    /// Entries pending this long with another (dead) consumer are claimed.
    pub claim_idle_after: Duration,
}

/// Runs until `shutdown` flips; then stops reading, drops `entries` (ending
/// the dataflow's input) and keeps acknowledging until the bridge has
/// reported everything.
pub async fn run(
    log: EventLog,
    config: SourceConfig,
    entries: mpsc::Sender<Vec<LogEntry>>,
    mut processed: mpsc::UnboundedReceiver<Vec<EntryRef>>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Metrics,
    caught_up: CaughtUp,
) {
    let backend = log.backend();
    let mut backoff = Backoff::default();
    let mut resumed = false;
    // Where the re-read of this consumer's pending entries is, per stream:
    // a backlog left by a crash is resumed page by page, not all at once.
    // New reads move it too: after a failed read, the entries Redis may
    // have delivered to this consumer without the reply arriving (a
    // timeout) are the pending ones past it (see below).
    let mut cursor: std::collections::HashMap<std::sync::Arc<str>, String> = Default::default();
    let mut group_ready = false;
    let mut last_claim = tokio::time::Instant::now();
    // Processed entries whose XACK failed (Redis away for the retries'
    // ~3 s): acknowledged with the next round's. Left pending they would
    // hold back trimming (which keeps what a group has pending) until a
    // restart.
    let mut unacked: Vec<EntryRef> = Vec::new();
    // Entries per stream per read (a packed Redis entry is up to 16 events).
    let count = log.entries_for(config.batch);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let reading_new = resumed;
        let started = Instant::now();
        let read = async {
            if !resumed {
                if !group_ready {
                    log.ensure_group(&config.group).await?;
                    group_ready = true;
                }
                let page = log
                    .read_pending_after(&config.group, &config.consumer, count, &cursor)
                    .await?;
                for e in &page {
                    cursor.insert(e.entry.stream.clone(), e.entry.id.to_string());
                }
                if !page.is_empty() {
                    tracing::info!(entries = page.len(), "resuming pending log entries");
                }
                // An empty page: the backlog is done; new entries from now on.
                let done = page.is_empty();
                return Ok::<_, LogError>((page, done));
            }
            let batch = log
                .read_new(
                    &config.group,
                    &config.consumer,
                    count,
                    Duration::from_millis(250),
                )
                .await?;
            Ok((batch, false))
        };
        // Acknowledge between reads rather than racing them: a cancelled
        // XREADGROUP would leave delivered entries pending until a restart.
        // Everything processed since the last round in one XACK per stream,
        // after what an earlier round could not acknowledge.
        let mut done = std::mem::take(&mut unacked);
        while let Ok(more) = processed.try_recv() {
            if done.is_empty() {
                done = more;
            } else {
                done.extend(more);
            }
        }
        if !done.is_empty() && !ack(&log, &config.group, &done, &metrics).await {
            unacked = done;
        }
        // Take over what a consumer that stopped left pending.
        if resumed && last_claim.elapsed() >= config.claim_idle_after / 2 {
            last_claim = tokio::time::Instant::now();
            match log
                .claim_idle(
                    &config.group,
                    &config.consumer,
                    config.claim_idle_after,
                    count,
                )
                .await
            {
                Ok(claimed) if !claimed.is_empty() => {
                    tracing::info!(
                        entries = claimed.len(),
                        "claimed entries of a stopped consumer"
                    );
                    if entries.send(claimed).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics
                        .log_errors
                        .with_label_values(&[backend, "claim"])
                        .inc();
                    tracing::warn!(error = %e, "claiming idle entries failed");
                }
            }
        }
        match read.await {
            Ok((batch, resume_done)) => {
                resumed |= resume_done;
                backoff.reset();
                if reading_new {
                    advance_cursor(&mut cursor, &batch);
                }
                // Less than a full page of new entries: nothing more was
                // there when this read began.
                let drained = reading_new && LogEntry::entries_in(&batch) < count;
                if !batch.is_empty() && entries.send(batch).await.is_err() {
                    break;
                }
                if drained {
                    caught_up.mark(started);
                }
            }
            Err(e) => {
                metrics
                    .log_errors
                    .with_label_values(&[backend, "read"])
                    .inc();
                // A read that failed may still have been served: a reply
                // lost to a timeout or a dropped connection leaves its
                // entries pending with this consumer, and `claim_idle` never
                // takes a consumer's own entries. So read this consumer's
                // pending entries past the cursor before new ones again;
                // otherwise they would wait for a restart.
                resumed = false;
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "log read failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    // Ending the input lets the dataflow drain; the bridge then reports the rest.
    drop(entries);
    if !unacked.is_empty() {
        ack(&log, &config.group, &unacked, &metrics).await;
    }
    while let Some(done) = processed.recv().await {
        ack(&log, &config.group, &done, &metrics).await;
    }
}

/// Moves the cursor to the last entry of each stream in `batch` (a read
/// returns each stream's entries together, in order).
fn advance_cursor(cursor: &mut std::collections::HashMap<Arc<str>, String>, batch: &[LogEntry]) {
    for (i, e) in batch.iter().enumerate() {
        let last_of_stream = batch
            .get(i + 1)
            .is_none_or(|next| next.entry.stream != e.entry.stream);
        if last_of_stream {
            cursor.insert(e.entry.stream.clone(), e.entry.id.to_string());
        }
    }
}

/// Acknowledges `done`, retrying a few times; false when it gave up.
async fn ack(log: &EventLog, group: &str, done: &[EntryRef], metrics: &Metrics) -> bool {
    let mut backoff = Backoff::default();
    for _ in 0..5 {
        match log.ack(group, done).await {
            Ok(()) => return true,
            Err(e) => {
                metrics
                    .log_errors
                    .with_label_values(&[log.backend(), "ack"])
                    .inc();
                tracing::warn!(error = %e, "log ack failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    // Still pending: tried again with the next round (and re-read after a
    // restart): at-least-once, never lost.
    tracing::error!(
        entries = done.len(),
        "acknowledging entries failed; trying again with the next round"
    );
    false
}

/// Capped exponential backoff: 50 ms, 100 ms, … 5 s.
#[derive(Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let ms = 50u64.saturating_mul(1 << self.attempt.min(7)).min(5_000);
        self.attempt += 1;
        Duration::from_millis(ms)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}
