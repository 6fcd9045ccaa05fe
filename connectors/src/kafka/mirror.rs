//! The mirror: Redis Streams (or the embedded log) → Kafka topics.
//!
//! A consumer group on the log (`mirror`) reads entries and produces each
//! event to `inkstream.events.<category>`, keyed by its partition key, value
//! in the Confluent wire format, headers `event_type`, `event_id`,
//! `schema_id`, record timestamp = event time. A log entry is acknowledged
//! (XACK) only after Kafka's delivery report for it: at-least-once. After a
//! crash, or when a delivery fails (broker down), the unacknowledged entries
//! are produced again — consumers deduplicate by `event_id`. The producer is
//! idempotent, so its own retries never duplicate.
//!
//! **Pipelined.** New entries are read a page at a time; a page is produced
//! and the wait for its delivery reports goes in flight while the next page
//! is read and produced (up to `in_flight` pages). The reports are counted
//! per page by the producer's context (`reports.rs`), not a future per
//! record. In a backlog the next page of new entries is read while the
//! current one is produced; after a failure that read ahead is dropped (its
//! entries are pending, and are read again in order with the rest). Pages are settled in the
//! order they were produced — acknowledged with one XACK per stream as their
//! reports complete — so acknowledgements follow the log's order per stream.
//! A full page means a backlog: it goes to a producer tuned for throughput
//! ([`ProducerTuning::BULK`]); otherwise to one tuned for latency
//! ([`ProducerTuning::LIVE`]). The mirror switches producers only with
//! nothing in flight, so no record overtakes an earlier one of its
//! partition. Pending and claimed entries are read from the start of the
//! consumer's list, so those pages are settled before the next read.
//!
//! **Transactional rounds** (`transactional_id` set; `serve`'s default).
//! A round's pages are produced in one Kafka transaction; the round's
//! entries are acknowledged only after it commits. While the mirror keeps up
//! a round is one page, committed as soon as it is delivered (its records
//! become visible to `read_committed` readers without waiting for later
//! reads); a backlog's round takes up to `round_pages` pages (fewer
//! commits: each waits for the round's last delivery reports, with nothing
//! else in flight), still with at most `in_flight` pages awaiting reports.
//! A page is full — a backlog — when some stream filled its share of the
//! read (`batch` entries per stream on Redis). When any record of a round fails
//! (broker down longer than the delivery timeout, a broker restart, a
//! poison record) the whole transaction is aborted and the round is produced
//! again from its oldest entry. `read_committed` consumers (librdkafka's and
//! the dataflow's default) therefore see each partition's records in log
//! order whatever fails: without transactions a page that timed out during
//! an outage is produced again *behind* the later pages that were delivered,
//! and its events arrive late at an event-time reader. The transactional id
//! is shared by the group's mirrors under the lease, so a new holder's
//! `init_transactions` aborts its dead predecessor's open transaction at
//! once (and fences a holder that lost the lease) instead of holding every
//! `read_committed` reader at the last stable offset for
//! `transaction.timeout.ms`. A fenced mirror stops and reports it, which
//! stops its instance ([`super::fatal`]): new producers would fence the
//! new holder back, and the two would take turns. With `record_rounds` each round's transaction
//! also records, per stream, its first and last entry id (offset metadata of
//! the producer's marker group); the next holder reads the last committed
//! round and acknowledges the pending entries within it without producing
//! them again (its predecessor died between the commit and the XACK).
//! Cost: records are visible per round, a few ms
//! later than without (measured in docs/BENCHMARKS.md). Without a
//! transactional id the producer is only idempotent (brokers or services
//! without transactions) and the reordering above can happen.
//!
//! Broker outage: ingest keeps appending to Redis; the mirror backs off
//! (capped exponential), re-creates missing topics (an in-memory broker comes
//! back empty), re-reads its pending entries and catches up.
//!
//! **Several instances.** On a shared Redis log one instance at a time
//! mirrors: `serve` runs this loop only while it holds the lease
//! `<prefix>:lease:mirror` (two mirrors reading one stream would produce its
//! pages side by side, and a partition would no longer hold a key's events
//! in log order). Each instance has its own consumer name in the one group
//! (`mirror-<host>:<port>`: stable at a place, so a restart re-reads its own
//! pending entries). Every `claim_idle_after` the mirror also claims
//! (XAUTOCLAIM) entries pending with *any* consumer for that long — the
//! in-flight pages of a holder that died — and produces them. So no entry
//! waits for its dead reader's restart, and trimming (which waits for the
//! group) is never blocked by a dead consumer for longer than that. A claim
//! may re-produce an entry the dead holder had delivered but not
//! acknowledged: a duplicate with the same `event_id`, as after any crash.
//!
//! **Poison records.** A record that fails with a permanent error (larger
//! than the topic's `max.message.bytes`, invalid) `max_attempts` times is
//! produced instead to `inkstream.mirror.dead_letter` (JSON: stream, entry id,
//! event id and type, error, size; keyed by event id), counted in
//! `inkstream_mirror_dead_lettered_total`, and acknowledged, so the mirror
//! moves on instead of re-reading it forever. Transient errors (broker down,
//! timeouts) never dead-letter: those entries wait in the log. The dead
//! letter is produced in place of the record, in its round (and its
//! transaction), at the first try after the last failed attempt. The broker
//! refuses a partition's whole produce batch for one poison record, so every
//! record of it fails alike: a record that failed permanently is produced
//! alone on its next tries (the producer flushed before and after it), so
//! that only the poison one counts further attempts. Attempts are counted
//! per event (a packed entry's events each), and with transactions forgotten
//! only when a round that delivered the record commits.

mod produce;
mod reports;

use super::rounds::{
    Ranges, encode_ranges, entry_key, full_page, last_committed_round, marker_consumer,
};
use super::{ensure_topics, events_topic, sleep_or_stop};
use crate::event_log::{EntryRef, EventLog, ForwardEntry, LogError};
use crate::metrics::Metrics;
use produce::{Context, Failure, attempt_key, permanent, produce};
pub use produce::{DEAD_LETTER_TOPIC, partition_for};
use rdkafka::consumer::BaseConsumer;
pub use reports::{MirrorProducer, Page, Reports};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a producer batches records. The mirror keeps two producers: one tuned
/// for latency, used while it keeps up with live traffic, and one tuned for
/// throughput, used while it drains a backlog (a read returned a full page).
/// It switches only with nothing in flight, so records of one partition
/// never overtake each other across the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerTuning {
    /// librdkafka `linger.ms`: how long a partition's batch waits to fill.
    pub linger: Duration,
    /// librdkafka `batch.size`: the largest request batch in bytes.
    pub batch_bytes: usize,
}

impl ProducerTuning {
    /// Live traffic: send at once (`linger.ms` 1, batches up to 1 MB).
    pub const LIVE: ProducerTuning = ProducerTuning {
        linger: Duration::from_millis(1),
        batch_bytes: 1_000_000,
    };
    /// A backlog: wait 20 ms to fill batches of up to 4 MB.
    pub const BULK: ProducerTuning = ProducerTuning {
        linger: Duration::from_millis(20),
        batch_bytes: 4_000_000,
    };
}

/// The mirror's producer: idempotent (`acks=all`; retries never duplicate or
/// reorder within a partition) with `tuning`, and a local queue large
/// enough for every page in flight.
pub fn producer(
    brokers: impl Into<super::Brokers>,
    tuning: ProducerTuning,
) -> Result<MirrorProducer, super::KafkaError> {
    Ok(configured(brokers, tuning, DELIVERY_TIMEOUT).create_with_context(Reports::default())?)
}

/// The mirror's transactional producer (blocking: `init_transactions`
/// waits for the transaction coordinator, aborting the open transaction of
/// an earlier producer with the same `transactional_id` and fencing it).
pub fn transactional_producer(
    brokers: impl Into<super::Brokers>,
    tuning: ProducerTuning,
    delivery_timeout: Duration,
    transactional_id: &str,
) -> Result<MirrorProducer, super::KafkaError> {
    use rdkafka::producer::Producer;
    // The broker aborts a transaction open longer than this; a round lasts
    // at most about `MAX_ROUND_AGE` and the delivery timeout of its last
    // pages. Brokers refuse more than their `transaction.max.timeout.ms`
    // (15 min by default: `init_transactions` would fail, and the mirror
    // retry it for ever), so the delivery timeout is bounded at load.
    let transaction_timeout = transaction_timeout(delivery_timeout);
    let producer: MirrorProducer = configured(brokers, tuning, delivery_timeout)
        .set("transactional.id", transactional_id)
        .set(
            "transaction.timeout.ms",
            transaction_timeout.as_millis().to_string(),
        )
        .create_with_context(Reports::default())?;
    producer.init_transactions(TXN_TIMEOUT)?;
    Ok(producer)
}

fn configured(
    brokers: impl Into<super::Brokers>,
    tuning: ProducerTuning,
    delivery_timeout: Duration,
) -> rdkafka::ClientConfig {
    let mut config = super::client_config(brokers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("client.id", "inkstream-mirror")
        .set("linger.ms", tuning.linger.as_millis().to_string())
        .set("batch.size", tuning.batch_bytes.to_string())
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        );
    config
}

/// How long a record may wait for its delivery by default (librdkafka's
/// `message.timeout.ms`): then it fails, and its round is produced again.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound of a transaction call (init, commit, abort).
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// A backlog's round commits after this long even if it has fewer than
/// `round_pages` pages: on a slow broker 32 pages could otherwise outlast
/// the transaction timeout (the broker would abort the round, and the same
/// round would be produced again and again).
const MAX_ROUND_AGE: Duration = Duration::from_secs(5);

/// A transactional mirror's `transaction.timeout.ms`: twice the delivery
/// timeout, at least a minute, at most [`MAX_TRANSACTION_TIMEOUT`].
fn transaction_timeout(delivery_timeout: Duration) -> Duration {
    (delivery_timeout * 2).clamp(Duration::from_secs(60), MAX_TRANSACTION_TIMEOUT)
}

/// Apache Kafka's default `transaction.max.timeout.ms`: the longest
/// transaction timeout a broker accepts unless its operator raised it.
pub const MAX_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(900);

/// The longest delivery timeout of a transactional mirror: its transaction
/// timeout is twice it.
pub const MAX_TRANSACTIONAL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(450);

/// Settings of the mirror.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub brokers: super::Brokers,
    /// Consumer group on the log (default `mirror`).
    pub group: String,
    /// Consumer name, stable across restarts (default `mirror-0`).
    pub consumer: String,
    /// How it creates the topics it needs (default 8 partitions, the
    /// broker's replication factor).
    pub new_topics: super::NewTopics,
    /// Entries read per page (per stream with Redis; default 2,000).
    pub batch: usize,
    /// Pages produced whose delivery reports are still awaited (default 4):
    /// the next page is read and produced while earlier ones are delivered.
    /// 1 means read → produce → wait → acknowledge, serially.
    pub in_flight: usize,
    /// Transactional: pages per round while draining a backlog (default
    /// 32; a round open 5 s commits with fewer): one commit per round.
    /// While the mirror keeps up a round is one page.
    pub round_pages: usize,
    /// The producer while the mirror keeps up (latency).
    pub live: ProducerTuning,
    /// The producer while it drains a backlog (throughput).
    pub bulk: ProducerTuning,
    /// Entries pending with any consumer this long are claimed (default 30 s).
    pub claim_idle_after: Duration,
    /// Failures with a permanent error before a record is dead-lettered
    /// (default 5).
    pub max_attempts: u32,
    /// Take over at start (default false): before reading new entries,
    /// claim every entry pending with another consumer however briefly —
    /// set by the holder of the mirror lease, whose predecessor has stopped.
    /// Its pages then reach their partitions before anything newer (claimed
    /// `claim_idle_after` later, they would land behind newer entries).
    pub claim_at_start: bool,
    /// Produce in transactions with this id (`<id>.live` and `<id>.bulk`
    /// for the two producers); `None` (the default here): idempotent only.
    /// See the module doc.
    pub transactional_id: Option<String>,
    /// How long a record may wait for its delivery report (default 30 s).
    pub delivery_timeout: Duration,
    /// Record each committed round's entry ranges in its transaction, and
    /// at a takeover acknowledge without producing the entries the previous
    /// holder had committed but not acknowledged (default false; `serve`
    /// sets it for the lease holder, whose transactional id is shared).
    pub record_rounds: bool,
}

impl MirrorConfig {
    pub fn new(brokers: impl Into<super::Brokers>) -> MirrorConfig {
        MirrorConfig {
            brokers: brokers.into(),
            group: "mirror".into(),
            consumer: "mirror-0".into(),
            new_topics: super::NewTopics::default(),
            batch: 2_000,
            in_flight: 4,
            round_pages: 32,
            live: ProducerTuning::LIVE,
            bulk: ProducerTuning::BULK,
            claim_idle_after: Duration::from_secs(30),
            max_attempts: 5,
            claim_at_start: false,
            transactional_id: None,
            delivery_timeout: DELIVERY_TIMEOUT,
            record_rounds: false,
        }
    }
}

fn topics() -> Vec<String> {
    schemas::Category::ALL
        .iter()
        .map(|c| events_topic(*c))
        .chain([DEAD_LETTER_TOPIC.to_owned()])
        .collect()
}

/// A page whose delivery reports have all arrived.
struct Settled {
    /// Delivered (or with nothing to deliver): to acknowledge.
    /// An entry and the event's place in it, per record.
    delivered: Vec<(EntryRef, u32)>,
    /// Of `delivered`, those whose dead letter was delivered instead.
    dead_lettered: Vec<EntryRef>,
    failures: Vec<Failure>,
    /// The event time of the page's oldest event.
    oldest: Option<i64>,
}

/// Which producer a page goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Bulk,
}

/// The mirror's state between rounds.
struct Mirror {
    log: EventLog,
    config: MirrorConfig,
    metrics: Metrics,
    schema_ids: super::registry::SchemaIds,
    live: MirrorProducer,
    bulk: MirrorProducer,
    mode: Mode,
    /// Pages produced, oldest first; settled and acknowledged in this order.
    in_flight: VecDeque<JoinHandle<Settled>>,
    /// Permanent failures per entry (`stream/id`) and the last error, for
    /// poison records.
    attempts: HashMap<String, (u32, String)>,
    /// Partitions per event topic, as the broker last said.
    partitions: HashMap<String, i32>,
    /// Transactional: a transaction is open on the current mode's producer.
    open: bool,
    /// Pages produced in the open transaction.
    pages: usize,
    /// Entries delivered in the open transaction: acknowledged at its commit.
    uncommitted: Vec<EntryRef>,
    /// Dead letters delivered in the open transaction: counted at its commit.
    uncommitted_dead: u64,
    /// Poison-attempt keys of records delivered in the open transaction:
    /// cleared at its commit (an aborted round delivered nothing).
    uncommitted_clears: Vec<String>,
    /// In Kafka, but their XACK failed: acknowledged with the next ones.
    unacked: Vec<EntryRef>,
    /// An abort failed: the producers are re-created (whose
    /// `init_transactions` aborts what is left open) before the next round.
    broken: bool,
    /// With `record_rounds`: the marker groups of the live and the bulk
    /// producer (their transactional ids).
    markers: Option<(Arc<BaseConsumer>, Arc<BaseConsumer>)>,
    /// The last round's number, recorded with its ranges.
    round: i64,
    /// When the round's first page was produced (none produced since the
    /// last acknowledgement: `None`).
    round_began: Option<Instant>,
    /// With transactions: the event time of the oldest event of the round's
    /// settled pages (ms since the epoch), observed when the round commits
    /// (every page is settled first). Without, each page's is observed when
    /// the page is acknowledged.
    round_oldest: Option<i64>,
    /// Until the takeover is over: the previous holder's last committed
    /// round, per stream its first and last entry id. Entries within are in
    /// Kafka already: acknowledged without producing them again.
    committed_before: Ranges,
}

/// Partitions per event topic, from the broker's metadata (blocking).
fn partition_counts(producer: &MirrorProducer) -> Result<HashMap<String, i32>, super::KafkaError> {
    use rdkafka::producer::Producer;
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let wanted = topics();
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| wanted.iter().any(|w| w == t.name()) && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// The live and the bulk producer: transactional (`<id>.live`,
/// `<id>.bulk`) when the config has a transactional id.
async fn producers(
    config: &MirrorConfig,
) -> Result<(MirrorProducer, MirrorProducer), super::KafkaError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let make = |tuning, role: &str| match &config.transactional_id {
            Some(id) => transactional_producer(
                &config.brokers,
                tuning,
                config.delivery_timeout,
                &format!("{id}.{role}"),
            ),
            None => Ok(configured(&config.brokers, tuning, config.delivery_timeout)
                .create_with_context(Reports::default())?),
        };
        Ok((make(config.live, "live")?, make(config.bulk, "bulk")?))
    })
    .await
    .unwrap_or_else(|e| Err(super::KafkaError::Blocking(e.to_string())))
}

/// Runs the mirror until `shutdown` flips.
pub async fn run(
    log: EventLog,
    config: MirrorConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    /// `inkstream_mirror_active` is 1 while this runs, however it ends.
    struct Active(prometheus::IntGauge);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.set(0);
        }
    }
    metrics.mirror_active.set(1);
    let _active = Active(metrics.mirror_active.clone());
    let mut backoff_ms = 100u64;
    let mut need_topics = true;
    let mut reread_pending = true;
    let (live, bulk) = loop {
        match producers(&config).await {
            Ok(p) => break p,
            Err(e) => {
                metrics.mirror_errors.with_label_values(&["producer"]).inc();
                tracing::error!(error = %e, retry_in_ms = backoff_ms, "cannot create the Kafka producer; retrying");
                if sleep_or_stop(&mut shutdown, backoff_ms).await {
                    return;
                }
                backoff_ms = (backoff_ms * 2).min(5_000);
            }
        }
    };
    if config.transactional_id.is_some() {
        tracing::info!("mirror: transactional (records visible per committed round)");
    }
    let mut m = Mirror {
        log,
        schema_ids: config.brokers.schema_ids.clone(),
        config,
        metrics,
        live,
        bulk,
        mode: Mode::Live,
        in_flight: VecDeque::new(),
        attempts: HashMap::new(),
        partitions: HashMap::new(),
        open: false,
        pages: 0,
        uncommitted: Vec::new(),
        uncommitted_dead: 0,
        uncommitted_clears: Vec::new(),
        unacked: Vec::new(),
        broken: false,
        markers: None,
        round: 0,
        round_began: None,
        round_oldest: None,
        committed_before: HashMap::new(),
    };
    if m.config.record_rounds
        && let Some(id) = m.config.transactional_id.clone()
    {
        let brokers = &m.config.brokers;
        match marker_consumer(brokers, &format!("{id}.live"))
            .and_then(|l| Ok((l, marker_consumer(brokers, &format!("{id}.bulk"))?)))
        {
            Ok(markers) => m.markers = Some(markers),
            Err(e) => tracing::warn!(error = %e,
                "mirror: cannot record rounds; a takeover may produce the last round again"),
        }
    }
    let mut rounds_loaded = m.markers.is_none();
    let config = m.config.clone();
    // Entries per stream per page (a packed Redis entry is up to 16 events).
    let count = m.log.entries_for(config.batch);
    let transactional = config.transactional_id.is_some();
    let max_in_flight = config.in_flight.max(1);
    let mut last_claim = tokio::time::Instant::now();
    let mut takeover = config.claim_at_start;
    let mut failed: Option<String> = None;
    // The next page of new entries, read while this one is produced (a
    // backlog only): Redis's reply and its decoding overlap the producing.
    let mut ahead: Option<JoinHandle<Result<Vec<ForwardEntry>, LogError>>> = None;
    while !*shutdown.borrow() {
        if let Some(error) = failed.take() {
            // Settle what is still in flight first: without transactions
            // its delivered entries are acknowledged; with them the round is
            // aborted. The failures are read again with the rest.
            m.abort().await;
            m.metrics
                .mirror_errors
                .with_label_values(&["produce"])
                .inc();
            tracing::warn!(%error, retry_in_ms = backoff_ms, "mirror: delivery failed; will re-read pending entries");
            // A fatal error (an idempotent producer's broken sequence, a
            // fenced transactional id) makes every later send fail: new
            // producers take over instead of retrying for ever.
            if let Some((code, reason)) = m.fatal_error() {
                if super::fatal::is_fence(Some(code)) {
                    // Another mirror holds the transactional id now (this
                    // one lost its lease, or runs beside one with its id):
                    // new producers would fence it back ([`super::fatal`]).
                    let error = super::FatalError {
                        client: "mirror",
                        code: Some(code),
                        reason,
                    };
                    config.brokers.fatal.raise(&m.metrics, error);
                    return;
                }
                tracing::error!(?code, %reason, "mirror: the producer hit a fatal error; new producers take over");
                m.broken = true;
            }
            // Topics may have vanished (an in-memory broker restarted).
            need_topics = true;
            reread_pending = true;
            if sleep_or_stop(&mut shutdown, backoff_ms).await {
                return;
            }
            backoff_ms = (backoff_ms * 2).min(5_000);
            if m.broken {
                match producers(&config).await {
                    Ok((live, bulk)) => m.replace(live, bulk),
                    Err(e) => failed = Some(format!("re-creating the producers: {e}")),
                }
            }
            continue;
        }
        if need_topics {
            let counts = match ensure_topics(&config.brokers, &topics(), config.new_topics).await {
                Ok(()) => {
                    let producer = m.live.clone();
                    tokio::task::spawn_blocking(move || partition_counts(&producer))
                        .await
                        .unwrap_or_else(|e| Err(super::KafkaError::Blocking(e.to_string())))
                }
                Err(e) => Err(e),
            };
            match counts {
                Ok(counts) => {
                    m.partitions = counts;
                    need_topics = false;
                    if !rounds_loaded {
                        rounds_loaded = true;
                        m.load_last_round().await;
                    }
                }
                Err(e) => {
                    m.metrics.mirror_errors.with_label_values(&["topics"]).inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff_ms, "creating topics failed");
                    if sleep_or_stop(&mut shutdown, backoff_ms).await {
                        return;
                    }
                    backoff_ms = (backoff_ms * 2).min(5_000);
                    continue;
                }
            }
        }
        let claim_due = takeover || last_claim.elapsed() >= config.claim_idle_after;
        // Pending and claimed entries are read from the start of the
        // consumer's list: the previous page must be settled (and its
        // round committed) before the next read, or it would be read again.
        // New entries pipeline.
        if (reread_pending || claim_due) && m.busy() {
            failed = m.commit().await;
            continue;
        }
        // A live round is one page, visible once delivered; a backlog's
        // takes `round_pages` pages (fewer commits). See the module doc.
        let round_pages = match m.mode {
            Mode::Live => 1,
            Mode::Bulk => config.round_pages.max(1),
        };
        let round_old = m.round_began.is_some_and(|t| t.elapsed() >= MAX_ROUND_AGE);
        if transactional && (m.pages >= round_pages || round_old) {
            // A full round: commit it, then start the next.
            failed = m.commit().await;
            continue;
        }
        if m.in_flight.len() >= max_in_flight {
            // With transactions the page's entries wait for the commit.
            failed = m.settle(1).await;
            continue;
        }
        // A page read ahead comes first; but not before pending entries
        // are read again, which include its entries, in the log's order.
        let ahead_read = match ahead.take() {
            Some(h) if reread_pending => {
                let _ = h.await;
                None
            }
            Some(h) => Some(
                h.await
                    .unwrap_or_else(|e| Err(LogError::Unavailable(format!("reading ahead: {e}")))),
            ),
            None => None,
        };
        let from_new = ahead_read.is_some() || !(reread_pending || claim_due);
        let read = if let Some(r) = ahead_read {
            r
        } else if reread_pending {
            // What failed to be acknowledged is pending: read (and
            // acknowledged) again with the rest, not twice.
            m.unacked.clear();
            let r = async {
                m.log.ensure_group(&config.group).await?;
                m.log
                    .read_pending_forward(&config.group, &config.consumer, count)
                    .await
            }
            .await;
            if matches!(&r, Ok(v) if v.is_empty()) {
                reread_pending = false;
            }
            r
        } else if claim_due {
            // Entries a dead consumer read and never acknowledged.
            let r = m
                .log
                .claim_idle_forward(
                    &config.group,
                    &config.consumer,
                    if takeover {
                        Duration::ZERO
                    } else {
                        config.claim_idle_after
                    },
                    count,
                )
                .await;
            if matches!(&r, Ok(v) if ForwardEntry::entries_in(v) < count) {
                last_claim = tokio::time::Instant::now();
                takeover = false;
                // The previous holder's entries are all claimed: its last
                // round no longer says anything about what is pending.
                m.committed_before.clear();
            }
            if let Ok(v) = &r
                && !v.is_empty()
            {
                tracing::info!(
                    entries = v.len(),
                    "mirror: claimed entries a stopped consumer left pending"
                );
            }
            r
        } else {
            // With pages in flight (or a round open), do not wait for new
            // entries: settle the oldest page (or commit) when there are none.
            let block = if m.busy() {
                Duration::ZERO
            } else {
                Duration::from_millis(250)
            };
            m.log
                .read_new_forward(&config.group, &config.consumer, count, block)
                .await
        };
        let entries = match read {
            Ok(e) => e,
            Err(e) => {
                m.metrics.mirror_errors.with_label_values(&["log"]).inc();
                tracing::warn!(error = %e, "mirror: reading the log failed");
                // Served with its reply lost? Its entries are pending here.
                reread_pending = true;
                failed = m.commit().await;
                if sleep_or_stop(&mut shutdown, backoff_ms).await {
                    return;
                }
                backoff_ms = (backoff_ms * 2).min(5_000);
                continue;
            }
        };
        if entries.is_empty() {
            if transactional {
                // Caught up: what the round holds becomes visible now.
                failed = m.commit().await;
            } else if !m.in_flight.is_empty() {
                failed = m.settle(1).await;
            }
            if failed.is_none() && !m.busy() && !m.unacked.is_empty() {
                m.ack(Vec::new()).await; // XACKs that failed earlier
            }
            continue;
        }
        let per_stream = matches!(m.log, EventLog::Redis(_));
        let mode = if full_page(&entries, count, per_stream) {
            Mode::Bulk
        } else {
            Mode::Live
        };
        if mode != m.mode {
            // Nothing of the other producer in flight: no overtaking.
            failed = m.commit().await;
            if failed.is_some() {
                // These entries are pending: read again after the failure.
                continue;
            }
            m.mode = mode;
        }
        if from_new && !claim_due && mode == Mode::Bulk && !*shutdown.borrow() {
            let (log, group, consumer) =
                (m.log.clone(), config.group.clone(), config.consumer.clone());
            ahead = Some(tokio::spawn(async move {
                log.read_new_forward(&group, &consumer, count, Duration::ZERO)
                    .await
            }));
        }
        if let Some(e) = m.send(entries).await {
            failed = Some(e);
            continue;
        }
        // Settle pages whose reports have all arrived, without waiting
        // (with transactions: their failures surface before the commit).
        let ready = m.in_flight.iter().take_while(|h| h.is_finished()).count();
        if ready > 0 && failed.is_none() {
            failed = m.settle(ready).await;
        }
        if failed.is_none() {
            backoff_ms = 100;
        }
    }
    // A graceful stop: acknowledge what was delivered (and committed).
    if m.commit().await.is_some() {
        m.abort().await;
    }
}

impl Mirror {
    /// Reads the last round the previous holder committed, whose entries
    /// it may not have acknowledged.
    async fn load_last_round(&mut self) {
        let Some(markers) = self.markers.clone() else {
            return;
        };
        let partitions = self
            .partitions
            .get(DEAD_LETTER_TOPIC)
            .copied()
            .unwrap_or(self.config.new_topics.partitions);
        match tokio::task::spawn_blocking(move || {
            last_committed_round(&markers, DEAD_LETTER_TOPIC, partitions)
        })
        .await
        {
            Ok(Ok((round, ranges))) => {
                tracing::info!(
                    round,
                    streams = ranges.len(),
                    "mirror: the previous holder's last committed round"
                );
                self.round = round;
                self.committed_before = ranges;
            }
            Ok(Err(e)) => tracing::warn!(error = %e,
                "mirror: cannot read the last committed round; a takeover may produce it again"),
            Err(e) => tracing::warn!(error = %e, "mirror: reading the last committed round failed"),
        }
    }

    /// The offsets that record this round's entry ranges in its
    /// transaction (marker group of the current producer), if recorded.
    fn round_marker(&mut self) -> Option<(Arc<BaseConsumer>, rdkafka::TopicPartitionList)> {
        let markers = self.markers.as_ref()?;
        if self.uncommitted.is_empty() {
            return None;
        }
        let chunks = encode_ranges(&self.uncommitted);
        let partitions = self
            .partitions
            .get(DEAD_LETTER_TOPIC)
            .copied()
            .unwrap_or(self.config.new_topics.partitions);
        if chunks.len() > partitions.max(1) as usize {
            tracing::warn!(
                chunks = chunks.len(),
                partitions,
                "mirror: a round's ranges do not fit the marker partitions; not recorded"
            );
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.round = (self.round + 1).max(now);
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, chunk) in chunks.into_iter().enumerate() {
            let mut e = tpl.add_partition(DEAD_LETTER_TOPIC, p as i32);
            if e.set_offset(rdkafka::Offset::Offset(self.round)).is_ok() {
                e.set_metadata(chunk);
            }
        }
        let consumer = match self.mode {
            Mode::Live => markers.0.clone(),
            Mode::Bulk => markers.1.clone(),
        };
        Some((consumer, tpl))
    }

    /// A fatal error of either producer, if one has hit one.
    fn fatal_error(&self) -> Option<(rdkafka::types::RDKafkaErrorCode, String)> {
        use rdkafka::producer::Producer;
        (self.live.client().fatal_error()).or_else(|| self.bulk.client().fatal_error())
    }

    /// Pages in flight, or a transaction open.
    fn busy(&self) -> bool {
        !self.in_flight.is_empty() || self.open
    }

    fn transactional(&self) -> bool {
        self.config.transactional_id.is_some()
    }

    /// The producer of the current mode.
    fn current(&self) -> &MirrorProducer {
        match self.mode {
            Mode::Live => &self.live,
            Mode::Bulk => &self.bulk,
        }
    }

    /// Settles every page in flight.
    async fn drain(&mut self) -> Option<String> {
        let n = self.in_flight.len();
        self.settle(n).await
    }

    /// Settles every page in flight and commits the open transaction, then
    /// acknowledges its entries. Without transactions: [`Mirror::drain`].
    /// On a failure the transaction stays open, for [`Mirror::abort`].
    async fn commit(&mut self) -> Option<String> {
        if let Some(e) = self.drain().await {
            return Some(e);
        }
        if !self.open {
            return None;
        }
        use rdkafka::consumer::Consumer;
        use rdkafka::producer::Producer;
        let producer = self.current().clone();
        let marker = self.round_marker();
        let began = Instant::now();
        let patience = transaction_timeout(self.config.delivery_timeout);
        let committed = tokio::task::spawn_blocking(move || {
            if let Some((consumer, tpl)) = marker {
                let group = consumer.group_metadata().ok_or_else(|| {
                    super::KafkaError::NoGroupMetadata("the mirror's round marker".into())
                })?;
                super::settle_transactional("send_offsets_to_transaction", patience, || {
                    producer.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)
                })?;
            }
            super::settle_transactional("commit_transaction", patience, || {
                producer.commit_transaction(TXN_TIMEOUT)
            })?;
            Ok::<(), super::KafkaError>(())
        })
        .await
        .unwrap_or_else(|e| Err(super::KafkaError::Blocking(e.to_string())));
        if let Err(e) = committed {
            return Some(format!("committing the mirror's transaction failed: {e}"));
        }
        self.metrics
            .mirror_commit_seconds
            .observe(began.elapsed().as_secs_f64());
        self.open = false;
        self.pages = 0;
        self.metrics
            .mirror_dead_lettered
            .inc_by(std::mem::take(&mut self.uncommitted_dead));
        for key in std::mem::take(&mut self.uncommitted_clears) {
            self.attempts.remove(&key);
        }
        let delivered = std::mem::take(&mut self.uncommitted);
        self.ack(delivered).await;
        self.round_over();
        None
    }

    /// A round's entries are acknowledged: its duration is observed.
    fn round_over(&mut self) {
        if let Some(oldest) = self.round_oldest.take() {
            crate::metrics::observe_age(&self.metrics.mirror_event_delay_seconds, oldest);
        }
        if let Some(began) = self.round_began.take() {
            self.metrics
                .mirror_round_seconds
                .observe(began.elapsed().as_secs_f64());
        }
    }

    /// After a failure: settles what is in flight; with transactions aborts
    /// the open one (nothing of it is acknowledged: it is read again). An
    /// abort that fails marks the producers for re-creation and purges
    /// what they still hold.
    async fn abort(&mut self) {
        if !self.transactional() {
            let _ = self.drain().await;
            self.round_began = None;
            self.round_oldest = None;
            return;
        }
        if self.open {
            use rdkafka::producer::{Producer, PurgeConfig};
            let producer = self.current().clone();
            let aborted = tokio::task::spawn_blocking(move || {
                let r = producer.abort_transaction(TXN_TIMEOUT);
                if r.is_err() {
                    producer.purge(PurgeConfig::default().queue().inflight());
                }
                r
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            if let Err(e) = aborted {
                tracing::warn!(error = %e, "mirror: aborting the transaction failed; new producers take over");
                self.broken = true;
            }
            self.open = false;
            self.pages = 0;
        }
        // Every record of the round is now delivered, aborted or purged.
        let _ = self.drain().await;
        self.round_began = None;
        self.round_oldest = None;
        self.uncommitted.clear();
        self.uncommitted_dead = 0;
        self.uncommitted_clears.clear();
    }

    /// New producers after a failed abort; the old ones are dropped off the
    /// runtime (dropping purges and flushes, which blocks).
    fn replace(&mut self, live: MirrorProducer, bulk: MirrorProducer) {
        let old = (
            std::mem::replace(&mut self.live, live),
            std::mem::replace(&mut self.bulk, bulk),
        );
        tokio::task::spawn_blocking(move || drop(old));
        self.broken = false;
        self.open = false;
        self.pages = 0;
    }

    /// Waits for the oldest `n` pages' delivery reports and acknowledges
    /// the delivered entries in one call (pages in order, so per stream in
    /// order) — with transactions, keeps them for the commit. Counts poison
    /// records' attempts. Returns the first failure.
    async fn settle(&mut self, n: usize) -> Option<String> {
        let mut delivered = Vec::new();
        let mut oldest: Vec<i64> = Vec::new();
        let mut failed = None;
        for _ in 0..n.min(self.in_flight.len()) {
            let Some(handle) = self.in_flight.pop_front() else {
                break;
            };
            let page = match handle.await {
                Ok(p) => p,
                Err(e) => {
                    // The entries stay pending: they are read again.
                    failed.get_or_insert(format!("a delivery task failed: {e}"));
                    continue;
                }
            };
            if let Some(ts) = page.oldest.filter(|_| page.failures.is_empty()) {
                if self.transactional() {
                    // Observed when the round commits.
                    self.round_oldest = Some(self.round_oldest.map_or(ts, |o| o.min(ts)));
                } else {
                    oldest.push(ts);
                }
            }
            if let Some(e) = self.page_outcome(page, &mut delivered) {
                failed.get_or_insert(e);
            }
        }
        if self.transactional() {
            self.uncommitted.append(&mut delivered);
        } else {
            self.ack(delivered).await;
            for ts in oldest {
                crate::metrics::observe_age(&self.metrics.mirror_event_delay_seconds, ts);
            }
            if self.in_flight.is_empty() && failed.is_none() {
                self.round_over();
            }
        }
        failed
    }

    /// Acknowledges delivered entries in the log, after those whose XACK
    /// failed before. A failure keeps them for the next call: pending, they
    /// would hold back trimming until a restart.
    async fn ack(&mut self, mut delivered: Vec<EntryRef>) {
        if !self.unacked.is_empty() {
            let mut earlier = std::mem::take(&mut self.unacked);
            earlier.append(&mut delivered);
            delivered = earlier;
        }
        if delivered.is_empty() {
            return;
        }
        if let Err(e) = self.log.ack(&self.config.group, &delivered).await {
            self.metrics.mirror_errors.with_label_values(&["ack"]).inc();
            tracing::warn!(error = %e, entries = delivered.len(),
                "mirror: acknowledging in the log failed; trying again with the next ones");
            self.unacked = delivered;
            return;
        }
        self.metrics.mirror_events.inc_by(delivered.len() as u64);
    }

    /// Adds a settled page's delivered (and dead-lettered) entries to
    /// `delivered` and counts permanent failures; returns the first failure.
    ///
    /// An entry is acknowledged as a whole, so a packed entry with a failed
    /// event is not, even for its delivered events: it stays pending and is
    /// produced again (in a transaction the round is aborted anyway).
    fn page_outcome(&mut self, page: Settled, delivered: &mut Vec<EntryRef>) -> Option<String> {
        // Entries with a failed record stay pending, whole.
        let failed: std::collections::HashSet<EntryRef> =
            page.failures.iter().map(|f| f.entry.clone()).collect();
        if !self.attempts.is_empty() {
            for (e, index) in &page.delivered {
                let key = attempt_key(e, *index);
                if !self.attempts.contains_key(&key) {
                    continue;
                }
                if self.transactional() {
                    // Delivered in a transaction that may still abort.
                    self.uncommitted_clears.push(key);
                } else if !failed.contains(e) {
                    // Forgotten once its entry is acknowledged: a dead
                    // letter whose entry is read again is sent again, not
                    // produced as a record and counted from 1.
                    self.attempts.remove(&key);
                }
            }
        }
        for e in &page.dead_lettered {
            tracing::error!(stream = %e.stream, entry = %e.id,
                "mirror: poison record dead-lettered to {DEAD_LETTER_TOPIC}");
        }
        let dead = page.dead_lettered.len() as u64;
        if self.transactional() {
            self.uncommitted_dead += dead;
        } else {
            self.metrics.mirror_dead_lettered.inc_by(dead);
        }
        delivered.extend(
            page.delivered
                .into_iter()
                .map(|(e, _)| e)
                .filter(|e| !failed.contains(e)),
        );
        let mut failed = None;
        for f in page.failures {
            if f.permanent {
                let n = self
                    .attempts
                    .entry(attempt_key(&f.entry, f.index))
                    .or_default();
                n.0 += 1;
                n.1.clone_from(&f.error);
            }
            failed.get_or_insert(f.error);
        }
        failed
    }

    /// Produces a page with the current mode's producer (in the open
    /// transaction, begun here if none is) and puts the wait for its
    /// delivery reports in flight.
    async fn send(&mut self, entries: Vec<ForwardEntry>) -> Option<String> {
        if self.transactional() && !self.open {
            use rdkafka::producer::Producer;
            if let Err(e) = self.current().begin_transaction() {
                return Some(format!("beginning a transaction failed: {e}"));
            }
            self.open = true;
        }
        self.pages += 1;
        self.round_began.get_or_insert_with(Instant::now);
        // At a takeover: what the previous holder committed in its last
        // round is in Kafka already; acknowledged with this round.
        let mut already = Vec::new();
        let entries = if self.committed_before.is_empty() {
            entries
        } else {
            let (done, rest): (Vec<ForwardEntry>, Vec<ForwardEntry>) =
                entries.into_iter().partition(|e| {
                    matches!(
                        (self.committed_before.get(&*e.entry().stream), entry_key(&e.entry().id)),
                        (Some((first, last)), Some(k)) if *first <= k && k <= *last
                    )
                });
            if !done.is_empty() {
                tracing::info!(
                    entries = done.len(),
                    "mirror: entries the previous holder committed but did not acknowledge; acknowledged without producing them again"
                );
            }
            already.extend(done.into_iter().map(|e| (e.entry().clone(), 0)));
            rest
        };
        let (deliveries, mut delivered, failures) = produce(
            self.current(),
            &entries,
            &Context {
                schema_ids: &self.schema_ids,
                partitions: &self.partitions,
                default_partitions: self.config.new_topics.partitions,
                attempts: &self.attempts,
                max_attempts: self.config.max_attempts,
                delivery_timeout: self.config.delivery_timeout,
                metrics: &self.metrics,
            },
        )
        .await;
        let oldest = deliveries.oldest;
        delivered.append(&mut already);
        self.in_flight.push_back(tokio::spawn(async move {
            let mut page = Settled {
                delivered,
                dead_lettered: Vec::new(),
                failures,
                oldest,
            };
            let failures = deliveries.page.wait().await;
            let mut failures = failures.into_iter().peekable();
            for (place, (entry, index, letter)) in deliveries.records.into_iter().enumerate() {
                match failures.next_if(|(p, _)| *p as usize == place) {
                    None => {
                        if letter {
                            page.dead_lettered.push(entry.clone());
                        }
                        page.delivered.push((entry, index));
                    }
                    Some((_, e)) => page.failures.push(Failure {
                        entry,
                        index,
                        error: e.to_string(),
                        permanent: permanent(&e),
                    }),
                }
            }
            page
        }));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition takes the entries of one Redis shard only (the shard is
    /// `stable_hash(key) % shards`), so it keeps the shard's order: with as
    /// many partitions as shards, or a multiple.
    #[test]
    fn each_partition_takes_one_shard() {
        let shards = 8u64;
        for partitions in [8, 16, 24] {
            let mut shard_of = std::collections::HashMap::new();
            for i in 0..5_000 {
                let key = format!("u{i:05}");
                let shard = schemas::stable_hash(&key) % shards;
                let p = partition_for(&key, partitions);
                assert!((0..partitions).contains(&p));
                let first = *shard_of.entry(p).or_insert(shard);
                assert_eq!(
                    first, shard,
                    "partition {p} of {partitions} takes two shards"
                );
            }
            assert_eq!(shard_of.len(), partitions as usize, "every partition used");
        }
    }
}
