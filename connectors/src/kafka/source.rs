//! Kafka as the dataflow's source: a consumer group on the event topics.
//!
//! Records become [`LogEntry`]s whose [`EntryRef`] is `"<topic>#<partition>"`
//! and the offset, so the dataflow bridge treats them like log entries.
//! Offsets are committed only once the dataflow reports the records
//! processed (its output frontier passed them), and only as a contiguous
//! prefix per partition: a restart resumes after the last record whose every
//! predecessor was processed — at-least-once, never a gap.
//!
//! The source tells the dataflow when it has read everything
//! ([`CaughtUp`]), which lets the idle watermark follow the wall clock.
//! Silence alone does not count: a consumer still waiting for the group to
//! hand it partitions (after a kill -9 the dead member's session must expire
//! first), or cut off from the broker, delivers nothing either. So an idle
//! source asks: is it a member with its assignment, and has every assigned
//! partition's position reached the high watermark the broker reports now?

use super::security::Observed;
use super::{client_config, ensure_topics_until_made, events_topic};
use crate::event_log::reader::CaughtUp;
use crate::event_log::{EntryRef, IdForm, LogEntry, Undecodable};
use crate::metrics::Metrics;
use futures_util::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The longest a fetch waits on the broker for records (`fetch.wait.max.ms`).
const FETCH_WAIT_MS: &str = "100";

/// How long the consumer must have delivered nothing before the source asks
/// whether it has read everything ([`CaughtUp`]; the answer compares each
/// assigned partition's position with the broker's high watermark, so it
/// does not depend on this being longer than the fetch wait).
const QUIET: Duration = Duration::from_millis(100);

/// How often, at most, an idle source asks the broker whether it has read
/// everything (one offsets request per assigned partition).
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The longest one of those requests may take (an unreachable broker: the
/// check fails, and the source is not caught up).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the source's last offset commit may hold a shutdown.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub brokers: super::Brokers,
    /// Consumer group (default `inkstream-dataflow`).
    pub group: String,
    /// Most records per batch handed to the dataflow.
    pub batch: usize,
    /// The consumer's static group membership (`group.instance.id`): the
    /// same for the same reader of the same dataflow process index, so a
    /// standby that takes over after a kill -9 takes the dead consumer's
    /// partitions at once instead of after its session times out (meanwhile
    /// the survivor's watermark would pass what those partitions hold).
    pub instance: String,
    /// How this source creates an event topic (if missing) before it
    /// subscribes, as the mirror does: a subscription to a topic that does
    /// not exist yet would find it only at librdkafka's next metadata
    /// refresh.
    pub new_topics: super::NewTopics,
}

/// The source consumer's context: the shared error accounting, plus whether
/// the group coordinator has handed this consumer its partitions.
struct SourceContext {
    observed: Observed,
    /// True from an assignment to the next revocation.
    member: AtomicBool,
    /// Assignments received so far.
    assignments: AtomicU64,
}

impl ClientContext for SourceContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        self.observed.observe(&error, reason);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.member.store(false, Ordering::Release);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.member.store(true, Ordering::Release);
            self.assignments.fetch_add(1, Ordering::AcqRel);
        }
    }
}

type Source = StreamConsumer<SourceContext>;

/// Whether the consumer has handed out every record its partitions held
/// when this call began (blocking: broker round trips). True for a member
/// with no partitions (more consumers than partitions); false while the
/// group has not assigned it any yet, and when the broker does not answer.
fn read_everything(consumer: &Source) -> Result<bool, RdKafkaError> {
    if !consumer.context().member.load(Ordering::Acquire) {
        return Ok(false);
    }
    Ok(unread(consumer)?.is_empty())
}

/// The assigned partitions whose position (the next offset the application
/// gets) is below the broker's latest offset: records still to read
/// (blocking: broker round trips).
fn unread(consumer: &Source) -> Result<Vec<(String, i32)>, RdKafkaError> {
    let positions = consumer.position()?;
    // A partition nothing was read from since the assignment has no
    // position yet: it starts at its committed offset.
    let mut at: HashMap<(String, i32), i64> = HashMap::new();
    let mut unstarted = TopicPartitionList::new();
    for tp in positions.elements() {
        match tp.offset() {
            Offset::Offset(o) => {
                at.insert((tp.topic().to_owned(), tp.partition()), o);
            }
            _ => {
                unstarted.add_partition(tp.topic(), tp.partition());
            }
        }
    }
    if unstarted.count() > 0 {
        for tp in consumer
            .committed_offsets(unstarted, CHECK_TIMEOUT)?
            .elements()
        {
            if let Offset::Offset(o) = tp.offset() {
                at.insert((tp.topic().to_owned(), tp.partition()), o);
            }
        }
    }
    let mut behind = Vec::new();
    for tp in positions.elements() {
        let (low, high) = consumer.fetch_watermarks(tp.topic(), tp.partition(), CHECK_TIMEOUT)?;
        // No commit: `auto.offset.reset = earliest`; a commit below the
        // low watermark (retention) resets there too.
        let key = (tp.topic().to_owned(), tp.partition());
        let from = at.get(&key).copied().unwrap_or(low).max(low);
        if from < high {
            behind.push(key);
        }
    }
    Ok(behind)
}

/// The partitions of a new assignment that have records still to read
/// (blocking). The broker answers fetches while this runs (a batch is in
/// hand), so a failed check is retried; if it keeps failing nothing is
/// held — holding every partition would stop the watermark at the empty
/// ones until they go idle.
fn backlog(consumer: &Source) -> Vec<(String, i32)> {
    let mut last = None;
    for _ in 0..20 {
        match unread(consumer) {
            Ok(behind) => return behind,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if let Some(error) = last {
        tracing::warn!(%error, "kafka source: cannot tell which new partitions have a backlog; holding none");
    }
    Vec::new()
}

fn part_name(names: &mut HashMap<(String, i32), Arc<str>>, key: (String, i32)) -> &Arc<str> {
    names
        .entry(key)
        .or_insert_with_key(|(topic, partition)| Arc::from(format!("{topic}#{partition}")))
}

/// Received offsets of one partition, in order, with whether each is done.
#[derive(Default)]
struct PartitionProgress {
    received: VecDeque<(i64, bool)>,
    /// The offset this consumer last committed.
    committed: Option<i64>,
}

impl PartitionProgress {
    /// Marks a received record done. Records arrive in offset order, so the
    /// offsets are sorted and a binary search finds it: a linear scan made
    /// a backlog quadratic (a dataflow behind by 100 K records per
    /// partition spent 40 % of the process's CPU here). A re-delivery after
    /// a rebalance can break the order and repeat offsets; then a scan finds
    /// the first copy not yet done (each report marks one copy).
    fn mark(&mut self, offset: i64) {
        let at = match self.received.binary_search_by_key(&offset, |&(o, _)| o) {
            Ok(i) if !self.received[i].1 => Some(i),
            _ => self
                .received
                .iter()
                .position(|&(o, done)| o == offset && !done),
        };
        if let Some(slot) = at.and_then(|i| self.received.get_mut(i)) {
            slot.1 = true;
        }
    }

    /// Drops the done prefix; returns the offset to commit (the first not done).
    fn advance(&mut self) -> Option<i64> {
        let mut last = None;
        while let Some(&(o, true)) = self.received.front() {
            last = Some(o + 1);
            self.received.pop_front();
        }
        last
    }
}

fn split_ref(r: &EntryRef) -> Option<(String, i32, i64)> {
    let (topic, partition) = r.stream.rsplit_once('#')?;
    Some((
        topic.to_owned(),
        partition.parse().ok()?,
        r.id.parse().ok()?,
    ))
}

/// The dataflow would read nothing: the instance stops
/// ([`super::fatal`]).
fn cannot_read(config: &KafkaSourceConfig, metrics: &Metrics, what: &str, e: &RdKafkaError) {
    config.brokers.fatal.raise(
        metrics,
        super::FatalError {
            client: "source",
            code: e.rdkafka_error_code(),
            reason: format!("{what}: {e}"),
        },
    );
}

/// Runs until `shutdown` flips; then stops consuming, drops `entries` (ending
/// the dataflow's input) and commits what the bridge reports processed.
pub async fn run(
    config: KafkaSourceConfig,
    entries: mpsc::Sender<Vec<LogEntry>>,
    mut processed: mpsc::UnboundedReceiver<Vec<EntryRef>>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Metrics,
    caught_up: CaughtUp,
) {
    let context = SourceContext {
        observed: Observed {
            metrics: metrics.clone(),
            client: "source",
            fatal: config.brokers.fatal.clone(),
        },
        member: AtomicBool::new(false),
        assignments: AtomicU64::new(0),
    };
    let topics: Vec<String> = schemas::Category::ALL
        .iter()
        .map(|c| events_topic(*c))
        .collect();
    let failed = |error: &super::KafkaError, retry_in: Duration| {
        metrics
            .log_errors
            .with_label_values(&["kafka", "topics"])
            .inc();
        tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "kafka source: creating the event topics failed");
    };
    let (brokers, new) = (&config.brokers, config.new_topics);
    if !ensure_topics_until_made(brokers, &topics, new, failed, Some(&mut shutdown)).await {
        return;
    }
    // Made once the topics exist, so once a broker answered: a consumer made
    // while its bootstrap broker was down joined the group when the broker
    // came up but fetched nothing for another ~40 s (a broker down at
    // startup: first record 67-70 s after the broker's start, 14-15 s now;
    // docs/BENCHMARKS.md "A broker down at startup").
    let consumer: Arc<Source> = match client_config(&config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("group.instance.id", &config.instance)
        .set("client.id", "inkstream-source")
        // Apache Kafka answers a waiting fetch as soon as records (or, for
        // `read_committed`, a commit marker) arrive, so the wait bounds only
        // idle polls. At 5 ms those polls (200/s) cost the broker the CPU
        // the live path needs: measured at 10 K events/s on 2 cores, ingest
        // → WPM frame p99 3.2 s with 5 ms, 0.6–0.8 s with 100–500 ms
        // (docs/BENCHMARKS.md "Ratios").
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        // New partitions of the event topics are found within 10 s
        // (librdkafka's default: 5 min).
        .set("topic.metadata.refresh.interval.ms", "10000")
        .create_with_context(context)
    {
        Ok(c) => Arc::new(c),
        Err(e) => return cannot_read(&config, &metrics, "cannot create the consumer", &e),
    };
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&topic_refs) {
        return cannot_read(
            &config,
            &metrics,
            "cannot subscribe to the event topics",
            &e,
        );
    }
    let mut progress: HashMap<(String, i32), PartitionProgress> = HashMap::new();
    let mut names: HashMap<(String, i32), Arc<str>> = HashMap::new();
    let mut stream = consumer.stream();
    let mut quiet_check = tokio::time::Instant::now() + QUIET;
    // The check in flight: when it began, and its answer.
    let mut check: Option<(Instant, tokio::task::JoinHandle<Result<bool, RdKafkaError>>)> = None;
    let mut next_check = tokio::time::Instant::now();
    // The assignment whose backlog is held (see below).
    let mut held_for = 0u64;
    // Receive errors come once per poll while the brokers are away (five a
    // second): one warning, then one a minute with the count.
    let mut receive_errors = ErrorThrottle::default();
    // A fatal error ended reading (reported; the instance stops).
    let mut fatal = false;
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = processed.recv() => {
                commit_with(&consumer, &mut progress, &done, CommitMode::Async);
                continue;
            }
            answer = async { (&mut check.as_mut().expect("a check in flight").1).await }, if check.is_some() => {
                let (began, _) = check.take().expect("a check in flight");
                // Every record handed out before the answer was sent on in
                // an earlier turn of this loop.
                let outcome = match answer {
                    Ok(Ok(true)) => {
                        caught_up.mark(began);
                        "caught_up"
                    }
                    Ok(Ok(false)) => "behind",
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "kafka source: cannot tell whether it has read everything");
                        "failed"
                    }
                    Err(error) => {
                        tracing::warn!(%error, "kafka source: the read check failed");
                        "failed"
                    }
                };
                metrics.dataflow_source_checks.with_label_values(&[outcome]).inc();
                continue;
            }
            _ = tokio::time::sleep_until(quiet_check) => {
                // Nothing for QUIET: ask whether that is because there is
                // nothing more to read; commit past a transaction's marker.
                commit_with(&consumer, &mut progress, &[], CommitMode::Async);
                let now = tokio::time::Instant::now();
                if check.is_none() && now >= next_check {
                    let c = consumer.clone();
                    check = Some((Instant::now(), tokio::task::spawn_blocking(move || read_everything(&c))));
                    next_check = now + CHECK_EVERY;
                }
                quiet_check = now + QUIET;
                continue;
            }
            msg = stream.next() => msg,
        };
        quiet_check = tokio::time::Instant::now() + QUIET;
        let mut batch: Vec<LogEntry> = Vec::new();
        let mut next = first;
        loop {
            match next {
                Some(Ok(m)) => {
                    receive_errors.succeeded();
                    let key = (m.topic().to_owned(), m.partition());
                    let name = part_name(&mut names, key.clone()).clone();
                    progress
                        .entry(key)
                        .or_default()
                        .received
                        .push_back((m.offset(), false));
                    let event = match m.payload() {
                        Some(bytes) => schemas::confluent::decode_with(bytes, |id| {
                            config.brokers.schema_ids.knows(id)
                        })
                        .map_err(|e| Undecodable(e.to_string())),
                        None => Err(Undecodable("record without a value".to_owned())),
                    };
                    batch.push(LogEntry {
                        entry: EntryRef {
                            stream: name,
                            id: m.offset().to_string().into(),
                        },
                        event: event.map(Arc::new),
                        id_form: IdForm::Caller,
                        namespace: super::header_str(&m, super::NAMESPACE_HEADER).map(Arc::from),
                        part: None,
                    });
                }
                Some(Err(RdKafkaError::MessageConsumptionFatal(code))) => {
                    // Fenced by a member with this one's static id: nothing
                    // more can be read, and a new consumer would fence
                    // that one back. The instance stops.
                    let error = super::FatalError {
                        client: "source",
                        code: Some(code),
                        reason: format!("Message consumption error: {code}"),
                    };
                    config.brokers.fatal.raise(&metrics, error);
                    fatal = true;
                    break;
                }
                Some(Err(e)) => {
                    metrics
                        .log_errors
                        .with_label_values(&["kafka", "read"])
                        .inc();
                    if let Some(since) = receive_errors.failed(Instant::now()) {
                        tracing::warn!(error = %e, failures_since_last_warning = since, "kafka source: receive failed");
                    } else {
                        tracing::debug!(error = %e, "kafka source: receive failed");
                    }
                    break;
                }
                None => break,
            }
            if batch.len() >= config.batch {
                break;
            }
            // Take what is already buffered, without waiting: large batches
            // under load, no added latency when idle.
            match stream.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        if batch.is_empty() {
            if fatal {
                // Waits for the stop the report brings.
                let _ = shutdown.wait_for(|s| *s).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // A new assignment: its partitions with a backlog (other than
        // those this batch starts) hold the watermark until they deliver.
        // Registered before the batch goes out, so the dataflow applies it
        // first.
        let assignment = consumer.context().assignments.load(Ordering::Acquire);
        if assignment != held_for {
            let c = consumer.clone();
            let behind = tokio::task::spawn_blocking(move || backlog(&c))
                .await
                .unwrap_or_default();
            tracing::info!(
                assignment,
                with_backlog = behind.len(),
                "kafka source: new assignment; its partitions with a backlog hold the watermark until they deliver"
            );
            caught_up.hold(
                behind
                    .into_iter()
                    .map(|key| part_name(&mut names, key).clone()),
            );
            held_for = assignment;
        }
        metrics.dataflow_source_records.inc_by(batch.len() as u64);
        if entries.send(batch).await.is_err() {
            break;
        }
    }
    drop(stream);
    drop(entries);
    if let Some((_, pending)) = check.take() {
        let _ = pending.await;
    }
    // The dataflow drains; commit what it reports in one synchronous
    // commit at the end, so the offsets are on the broker before the process
    // exits. librdkafka's synchronous commit has no deadline (with the
    // broker gone it waits for ever), so it runs off the runtime's workers
    // and the drain waits for it at most FINAL_COMMIT_TIMEOUT: after that
    // the records since the last commit are read again at the next start
    // (at-least-once; consumers deduplicate by event id).
    let mut done_all = Vec::new();
    while let Some(done) = processed.recv().await {
        done_all.extend(done);
    }
    let c = consumer.clone();
    let commit = tokio::task::spawn_blocking(move || {
        commit_with(&c, &mut progress, &done_all, CommitMode::Sync)
    });
    if tokio::time::timeout(FINAL_COMMIT_TIMEOUT, commit)
        .await
        .is_err()
    {
        metrics
            .log_errors
            .with_label_values(&["kafka", "commit"])
            .inc();
        tracing::warn!(
            timeout_ms = FINAL_COMMIT_TIMEOUT.as_millis() as u64,
            "kafka source: the last offsets were not committed in time (broker unreachable?); \
             records since the previous commit are read again at the next start"
        );
    }
}

fn commit_with(
    consumer: &Source,
    progress: &mut HashMap<(String, i32), PartitionProgress>,
    done: &[EntryRef],
    mode: CommitMode,
) {
    let mut touched = Vec::new();
    for r in done {
        if let Some((topic, partition, offset)) = split_ref(r) {
            let key = (topic, partition);
            if let Some(p) = progress.get_mut(&key) {
                p.mark(offset);
                touched.push(key);
            }
        }
    }
    touched.sort();
    touched.dedup();
    // Where the consumer stands on its assigned partitions (local, no
    // round trip). On a transactional topic (the mirror's) a partition ends
    // with a commit marker, and aborted records may sit between committed
    // ones: neither is ever handed out, only the position steps over them.
    // Committing the last record + 1 would leave the group's lag at 1 per
    // transaction.
    let positions = consumer.position().ok();
    let position = |key: &(String, i32)| {
        positions
            .as_ref()?
            .find_partition(&key.0, key.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
    };
    let mut tpl = TopicPartitionList::new();
    for (key, p) in progress.iter_mut() {
        let mut next = if touched.binary_search(key).is_ok() {
            p.advance()
        } else {
            None
        };
        // Every record received from it is done: whatever lies before the
        // position was either done or never handed out.
        if p.received.is_empty()
            && let Some(at) = position(key)
            && Some(at) > next.or(p.committed)
        {
            next = Some(at);
        }
        if let Some(next) = next
            && Some(next) > p.committed
        {
            let _ = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(next));
            p.committed = Some(next);
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.commit(&tpl, mode)
    {
        tracing::warn!(error = %e, "kafka source: commit failed (will commit later offsets)");
    }
}

/// A warning for the first failure after a success, then at most one per
/// [`ErrorThrottle::EVERY`] while failures go on (the others at debug).
#[derive(Default)]
struct ErrorThrottle {
    last_warning: Option<Instant>,
    since: u64,
}

impl ErrorThrottle {
    const EVERY: Duration = Duration::from_secs(60);

    /// A failure at `now`: `Some(failures since the last warning)` when it
    /// is to be warned about.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        match self.last_warning {
            Some(at) if now.duration_since(at) < Self::EVERY => None,
            _ => {
                self.last_warning = Some(now);
                Some(std::mem::take(&mut self.since))
            }
        }
    }

    fn succeeded(&mut self) {
        self.last_warning = None;
        self.since = 0;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn receive_failures_are_warned_once_then_once_a_minute() {
        let t0 = std::time::Instant::now();
        let mut t = super::ErrorThrottle::default();
        assert_eq!(t.failed(t0), Some(1));
        for i in 1..300u64 {
            assert_eq!(
                t.failed(t0 + std::time::Duration::from_millis(200 * i)),
                None
            );
        }
        assert_eq!(t.failed(t0 + std::time::Duration::from_secs(60)), Some(300));
        t.succeeded();
        assert_eq!(t.failed(t0 + std::time::Duration::from_secs(61)), Some(1));
    }

    use super::*;

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut p = PartitionProgress::default();
        for o in [10, 11, 12, 15] {
            p.received.push_back((o, false));
        }
        p.mark(11);
        assert_eq!(p.advance(), None, "10 is not done: nothing to commit");
        p.mark(10);
        assert_eq!(p.advance(), Some(12));
        p.mark(15);
        assert_eq!(p.advance(), None);
        p.mark(12);
        assert_eq!(p.advance(), Some(16), "gaps in offsets are fine");
    }

    #[test]
    fn marks_records_received_out_of_order_too() {
        // A re-delivery after a rebalance: 7 and 8 again behind 9.
        let mut p = PartitionProgress::default();
        for o in [7, 8, 9, 7, 8] {
            p.received.push_back((o, false));
        }
        for o in [9, 7, 8] {
            p.mark(o);
        }
        let done = p.received.iter().filter(|(_, d)| *d).count();
        assert_eq!(done, 3, "each report marks one copy: {:?}", p.received);
        p.mark(7);
        p.mark(8);
        assert!(p.received.iter().all(|(_, d)| *d), "{:?}", p.received);
        assert_eq!(p.advance(), Some(9));
        assert!(p.received.is_empty());
    }
}
