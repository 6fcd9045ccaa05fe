//! Every Prometheus metric of the process, registered once into one registry.
//!
//! Names follow `inkstream_<area>_<name>_<unit>`; counters end in `_total`;
//! label values come from closed sets (route templates, categories, outcome
//! codes), never from user input such as user ids.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod process;
pub use process::ProcessCollector;

/// Codes of `inkstream_ingest_events_rejected_total` (schemas' decode errors
/// and the ingest edge's own).
const REJECT_CODES: [&str; 10] = [
    "missing_field",
    "invalid_field",
    "invalid_json",
    "unknown_type",
    "empty_body",
    "batch_too_large",
    "batch_over_burst",
    "rate_limited",
    "forbidden",
    "log_unavailable",
];

/// Labels of `inkstream_limit_hits_total`: every bound counted there.
pub const LIMITS: [&str; 2] = ["ws_channels_per_connection", "view_keys"];

/// All metrics; cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Events accepted into the log, by category.
    pub ingest_events_accepted: IntCounterVec,
    /// Events rejected at ingest, by error code.
    pub ingest_events_rejected: IntCounterVec,
    /// Events whose id was already stored (not stored again).
    pub ingest_duplicates: IntCounter,
    /// Idempotency ids the embedded log forgot before `ingest.dedup_window`
    /// ended, because it remembers at most `ingest.dedup_max_ids_embedded`.
    pub ingest_dedup_forgotten_early: IntCounter,
    /// Events per accepted ingest request or frame.
    pub ingest_batch_size: Histogram,
    /// Time to append one batch to the log, by backend.
    pub log_append_seconds: HistogramVec,
    /// Log operation failures, by backend and operation.
    pub log_errors: IntCounterVec,
    /// 1 for Redis's current persistence (`appendonly`, `appendfsync`,
    /// `eviction`),
    /// checked at startup and every minute; absent with the embedded log.
    pub redis_persistence: IntGaugeVec,
    /// 1 for the weakest durability of the Kafka event topics (`replicas`,
    /// `min_insync_replicas`, `unclean_leader_election`), checked at
    /// startup and every minute; absent without Kafka.
    pub kafka_durability: IntGaugeVec,
    /// Records read from Kafka for the dataflow.
    pub dataflow_source_records: IntCounter,
    /// The Kafka source's checks of whether it has read everything, by
    /// outcome (`caught_up`, `behind`, `failed`: the broker did not answer).
    pub dataflow_source_checks: IntCounterVec,
    /// Derived events produced to `inkstream.derived.*` topics, by outcome.
    pub derived_produced: IntCounterVec,
    /// Checkpoint syncs of the derived topics (flush or transaction commit),
    /// by outcome (`ok`, `failed`).
    pub derived_syncs: IntCounterVec,
    /// Events handed to the dataflow.
    pub dataflow_events_in: IntCounter,
    /// Derived events emitted by the dataflow, by type.
    pub dataflow_derived: IntCounterVec,
    /// Events behind the watermark, dead-lettered with reason `late`, by type.
    pub dataflow_late_events: IntCounterVec,
    /// Events whose id the dataflow had already taken (processed once).
    pub dataflow_duplicate_events: IntCounter,
    /// Current event-time watermark, seconds since the epoch (ms precision).
    pub dataflow_watermark_seconds: Gauge,
    /// Wall clock minus each operator's input frontier, by operator.
    pub dataflow_watermark_lag_seconds: GaugeVec,
    /// Keys or entries held by each operator (all workers), by operator.
    pub dataflow_state_keys: IntGaugeVec,
    /// From the input closing an epoch to the output frontier passing it.
    pub dataflow_epoch_delay_seconds: Histogram,
    /// Wall clock minus the event time of each input batch's oldest event,
    /// when the dataflow takes the batch: how far behind real time its input
    /// runs (Flink's fetch event-time lag).
    pub dataflow_input_delay_seconds: Histogram,
    /// Dead letters emitted by the dataflow's input, by reason.
    pub dataflow_dead_letters: IntCounterVec,
    /// Events delivered to Kafka by the mirror (acknowledged in the log).
    pub mirror_events: IntCounter,
    /// Mirror failures, by stage (topics, log, produce, ack, encode, undecodable).
    pub mirror_errors: IntCounterVec,
    /// Poison records: entries that failed to produce with a permanent error
    /// `kafka.mirror_max_attempts` times, sent to the mirror's dead-letter
    /// topic and acknowledged.
    pub mirror_dead_lettered: IntCounter,
    /// Entries not yet in Kafka (undelivered + pending) for the mirror group.
    pub mirror_lag_events: IntGauge,
    /// 1 while this process runs the mirror (holds its lease), else 0.
    pub mirror_active: IntGauge,
    /// Age of the oldest entry not yet in Kafka, seconds.
    pub mirror_lag_seconds: prometheus::Gauge,
    /// A mirror round: its first page produced → its entries acknowledged
    /// in the log (with transactions: after the commit).
    pub mirror_round_seconds: Histogram,
    /// Wall clock minus the event time of the oldest event of each mirror
    /// round when it commits (with transactions: then visible to
    /// `read_committed` readers), or without transactions of each page when
    /// it is acknowledged.
    pub mirror_event_delay_seconds: Histogram,
    /// The mirror's transaction commit (with the round marker).
    pub mirror_commit_seconds: Histogram,
    /// Kafka connections refused: SASL credentials (`sasl`) or the TLS
    /// handshake (`tls`), by client (`check`, `source`, `derived`).
    pub kafka_auth_failures: IntCounterVec,
    /// Fatal errors of a long-running Kafka client (`source`, `derived`,
    /// `mirror`), after which the instance stops (`kafka::fatal`).
    pub kafka_fatal_errors: IntCounterVec,
    /// Requests and upgrades refused by authentication, by error code.
    pub auth_failures: IntCounterVec,
    /// Fetches of `auth.jwks_url` by outcome (`ok`, `failed`, `rate_limited`).
    pub auth_jwks_fetches: IntCounterVec,
    /// Open `/ws/ingest` connections.
    pub ws_ingest_connections: IntGauge,
    /// Accepts that waited because the connection limit was reached.
    pub http_connection_limit_waits: IntCounter,
    /// Open WebSocket connections, by path.
    pub ws_connections: IntGaugeVec,
    /// Frames queued to WebSocket clients, by path.
    pub ws_messages_out: IntCounterVec,
    /// Clients disconnected because their queue overflowed, by path.
    pub ws_slow_disconnects: IntCounterVec,
    /// WebSocket connections the fanout closed, by reason (`control_flood`,
    /// `idle`, `token_expired`, `session_ended`, `too_big`).
    pub ws_closes: IntCounterVec,
    /// Presence frames that replaced an older one of the same channel in a
    /// full queue instead of disconnecting the client.
    pub ws_coalesced: IntCounterVec,
    /// Channels keeping publications for recovery.
    pub ws_history_channels: IntGauge,
    /// Window results handed to the fanout's pacer, by outcome (`published`,
    /// `dropped`: its queue was full).
    pub ws_paced_events: IntCounterVec,
    /// Window results waiting in the fanout's pacer.
    pub ws_paced_queue: IntGauge,
    /// Subscribes with `since`, by outcome (`recovered`, `not_recovered`).
    pub ws_recoveries: IntCounterVec,
    /// Subscribes/unsubscribes that waited before reaching the Redis
    /// broker's task, by reason: `connection_budget` (this connection had
    /// `fanout.max_pending_commands` waiting already) or `queue_full`
    /// (`fanout.command_queue` was full).
    pub ws_broker_command_waits: IntCounterVec,
    /// Requests or items refused because a bound was reached, by limit
    /// (`ws_channels_per_connection`, `view_keys`).
    pub limit_hits: IntCounterVec,
    /// HTTP requests by route template and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route template.
    pub http_request_seconds: HistogramVec,
}

/// Observes in `histogram` how long ago (wall clock) the event time
/// `event_ms` was, in seconds; an event time ahead of the clock counts 0.
pub fn observe_age(histogram: &Histogram, event_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    histogram.observe(now.saturating_sub(event_ms).max(0) as f64 / 1e3);
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        // Event time to now: a backlog's is minutes.
        let delay: Vec<f64> = latency
            .iter()
            .copied()
            .chain([5.0, 10.0, 30.0, 60.0, 300.0])
            .collect();
        let m = Metrics {
            ingest_events_accepted: IntCounterVec::new(
                Opts::new(
                    "inkstream_ingest_events_accepted_total",
                    "Events durably appended to the log and acknowledged, by type.",
                ),
                &["type"],
            )?,
            ingest_events_rejected: IntCounterVec::new(
                Opts::new(
                    "inkstream_ingest_events_rejected_total",
                    "Events rejected at ingest, by error code.",
                ),
                &["code"],
            )?,
            ingest_dedup_forgotten_early: IntCounter::new(
                "inkstream_ingest_dedup_ids_forgotten_early_total",
                "Idempotency ids the embedded log forgot before ingest.dedup_window ended \
                 (ingest.dedup_max_ids_embedded reached): a retry of one is stored again.",
            )?,
            ingest_duplicates: IntCounter::new(
                "inkstream_ingest_duplicates_total",
                "Events whose id the same app had already stored; acknowledged, not stored again.",
            )?,
            ingest_batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "inkstream_ingest_batch_size_events",
                    "Events per ingest request or WebSocket frame.",
                )
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0,
                ]),
            )?,
            log_append_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "inkstream_log_append_duration_seconds",
                    "Time to append one batch to the log.",
                )
                .buckets(latency.clone()),
                &["backend"],
            )?,
            log_errors: IntCounterVec::new(
                Opts::new(
                    "inkstream_log_errors_total",
                    "Failed log operations, by backend and operation.",
                ),
                &["backend", "op"],
            )?,
            redis_persistence: IntGaugeVec::new(
                Opts::new(
                    "inkstream_redis_persistence_info",
                    "1 for the persistence of the Redis holding the log: appendonly (yes, no), appendfsync (always, everysec, no; unknown when CONFIG is not allowed) and eviction (off without maxmemory, else maxmemory-policy). An acknowledged event survives a host crash only with appendonly yes and appendfsync always (everysec: all but about the last second), and a full Redis only with eviction off or noeviction.",
                ),
                &["appendonly", "appendfsync", "eviction"],
            )?,
            kafka_durability: IntGaugeVec::new(
                Opts::new(
                    "inkstream_kafka_durability_info",
                    "1 for the weakest durability of the Kafka event topics the mirror writes: the fewest replicas of a partition, the lowest min.insync.replicas, and whether any topic allows unclean leader election. A record the mirror had acknowledged (and the log then trimmed) survives the loss of a broker only with at least 2 replicas, min.insync.replicas >= 2 and no unclean leader election.",
                ),
                &["replicas", "min_insync_replicas", "unclean_leader_election"],
            )?,
            dataflow_source_records: IntCounter::new(
                "inkstream_dataflow_source_records_total",
                "Records read from the Kafka event topics for the dataflow.",
            )?,
            dataflow_source_checks: IntCounterVec::new(
                Opts::new(
                    "inkstream_dataflow_source_checks_total",
                    "The Kafka source's checks of whether it has read everything its partitions hold, by outcome (caught_up, behind, failed: the broker did not answer; no idle advance then).",
                ),
                &["outcome"],
            )?,
            derived_produced: IntCounterVec::new(
                Opts::new(
                    "inkstream_derived_produced_total",
                    "Derived events produced to inkstream.derived.* topics, by outcome.",
                ),
                &["outcome"],
            )?,
            derived_syncs: IntCounterVec::new(
                Opts::new(
                    "inkstream_derived_syncs_total",
                    "Checkpoint syncs of the derived topics (at-least-once: flush with every \
                     delivery successful; exactly-once: transaction commit), by outcome.",
                ),
                &["outcome"],
            )?,
            dataflow_events_in: IntCounter::new(
                "inkstream_dataflow_events_in_total",
                "Events handed to the dataflow.",
            )?,
            dataflow_derived: IntCounterVec::new(
                Opts::new(
                    "inkstream_dataflow_derived_events_total",
                    "Derived events emitted by the dataflow, by type.",
                ),
                &["type"],
            )?,
            dataflow_late_events: IntCounterVec::new(
                Opts::new(
                    "inkstream_dataflow_late_events_total",
                    "Events behind the watermark, dead-lettered with reason late, by event type.",
                ),
                &["type"],
            )?,
            dataflow_duplicate_events: IntCounter::new(
                "inkstream_dataflow_duplicate_events_total",
                "Events dropped by the dataflow's input as a second copy of an id it had taken.",
            )?,
            dataflow_watermark_seconds: Gauge::new(
                "inkstream_dataflow_watermark_seconds",
                "Current event-time watermark in seconds since the Unix epoch.",
            )?,
            dataflow_watermark_lag_seconds: GaugeVec::new(
                Opts::new(
                    "inkstream_dataflow_watermark_lag_seconds",
                    "Wall clock minus the operator's input frontier (0 before the first event).",
                ),
                &["operator"],
            )?,
            dataflow_state_keys: IntGaugeVec::new(
                Opts::new(
                    "inkstream_dataflow_state_keys",
                    "Keys or entries held in the operator's state, summed over workers.",
                ),
                &["operator"],
            )?,
            dataflow_epoch_delay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "inkstream_dataflow_epoch_delay_seconds",
                    "Time from the input closing an epoch to the dataflow's output passing it.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            dataflow_input_delay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "inkstream_dataflow_input_delay_seconds",
                    "Wall clock minus the event time of the oldest event of each batch the \
                     dataflow takes from its source (0 for event times ahead of the clock).",
                )
                .buckets(delay.clone()),
            )?,
            dataflow_dead_letters: IntCounterVec::new(
                Opts::new(
                    "inkstream_dataflow_dead_letters_total",
                    "Events dead-lettered at the dataflow's input, by reason (late, undecodable).",
                ),
                &["reason"],
            )?,
            mirror_events: IntCounter::new(
                "inkstream_mirror_events_total",
                "Events delivered to Kafka and acknowledged in the log by the mirror.",
            )?,
            mirror_errors: IntCounterVec::new(
                Opts::new(
                    "inkstream_mirror_errors_total",
                    "Mirror failures, by stage.",
                ),
                &["stage"],
            )?,
            mirror_dead_lettered: IntCounter::new(
                "inkstream_mirror_dead_lettered_total",
                "Log entries the mirror could not produce (a permanent error, e.g. larger than the \
                 topic's max.message.bytes, kafka.mirror_max_attempts times), dead-lettered to \
                 inkstream.mirror.dead_letter.",
            )?,
            mirror_lag_events: IntGauge::new(
                "inkstream_mirror_lag_events",
                "Log entries not yet delivered to Kafka (undelivered plus pending; a Redis entry holds up to 16 events of one append).",
            )?,
            mirror_active: IntGauge::new(
                "inkstream_mirror_active",
                "1 while this process runs the Kafka mirror (on a shared Redis log: holds the mirror lease), else 0.",
            )?,
            mirror_lag_seconds: prometheus::Gauge::new(
                "inkstream_mirror_lag_seconds",
                "Age of the oldest log entry not yet delivered to Kafka.",
            )?,
            mirror_round_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "inkstream_mirror_round_duration_seconds",
                    "A mirror round: its first page produced to its entries acknowledged in the \
                     log (transactional: after the commit).",
                )
                .buckets(latency.clone()),
            )?,
            mirror_event_delay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "inkstream_mirror_event_delay_seconds",
                    "Wall clock minus the event time of the oldest event of each mirror round when \
                     it commits (transactional) or of each page when it is acknowledged (not).",
                )
                .buckets(delay.clone()),
            )?,
            mirror_commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "inkstream_mirror_commit_duration_seconds",
                    "The mirror's Kafka transaction commit (with its round marker).",
                )
                .buckets(latency.clone()),
            )?,
            kafka_auth_failures: IntCounterVec::new(
                Opts::new(
                    "inkstream_kafka_auth_failures_total",
                    "Kafka connections refused: SASL authentication (kind sasl) or the TLS \
                     handshake (kind tls), by client (check: the startup access check; \
                     source: the dataflow's consumer; derived: the derived producer).",
                ),
                &["client", "kind"],
            )?,
            kafka_fatal_errors: IntCounterVec::new(
                Opts::new(
                    "inkstream_kafka_fatal_errors_total",
                    "Fatal errors of a long-running Kafka client (source, derived, mirror: a fence by another instance with the same id, a broken idempotent sequence), after which the instance stops.",
                ),
                &["client"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "inkstream_auth_failures_total",
                    "Requests and WebSocket upgrades refused by authentication, by error code.",
                ),
                &["code"],
            )?,
            auth_jwks_fetches: IntCounterVec::new(
                Opts::new(
                    "inkstream_auth_jwks_fetches_total",
                    "Fetches of the identity provider's key set (auth.jwks_url), by outcome \
                     (rate_limited: refused because the last one was too recent).",
                ),
                &["outcome"],
            )?,
            ws_ingest_connections: IntGauge::new(
                "inkstream_ws_ingest_connections",
                "Open /ws/ingest connections.",
            )?,
            http_connection_limit_waits: IntCounter::new(
                "inkstream_http_connection_limit_waits_total",
                "Accepts that waited because server.max_connections connections were open.",
            )?,
            ws_connections: IntGaugeVec::new(
                Opts::new(
                    "inkstream_ws_connections",
                    "Open WebSocket connections, by path.",
                ),
                &["path"],
            )?,
            ws_messages_out: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_messages_out_total",
                    "Frames queued to WebSocket clients, by path.",
                ),
                &["path"],
            )?,
            ws_closes: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_closes_total",
                    "WebSocket connections the fanout closed, by reason.",
                ),
                &["reason"],
            )?,
            ws_slow_disconnects: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_slow_disconnects_total",
                    "Clients disconnected (close code 4008) because their queue overflowed.",
                ),
                &["path"],
            )?,
            ws_coalesced: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_coalesced_total",
                    "Presence frames coalesced to the latest per channel because the client's queue was full.",
                ),
                &["path"],
            )?,
            ws_history_channels: IntGauge::new(
                "inkstream_ws_history_channels",
                "WebSocket channels keeping recent publications for recovery.",
            )?,
            ws_paced_events: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_paced_events_total",
                    "Window results (team metrics) published to the fanout at fanout.paced_rate, by outcome (published; dropped: fanout.paced_queue was full).",
                ),
                &["outcome"],
            )?,
            ws_paced_queue: IntGauge::new(
                "inkstream_ws_paced_queue_events",
                "Window results waiting to be published to the fanout at fanout.paced_rate.",
            )?,
            ws_recoveries: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_recoveries_total",
                    "Subscribes with since, by outcome (recovered, not_recovered).",
                ),
                &["outcome"],
            )?,
            ws_broker_command_waits: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_broker_command_waits_total",
                    "WebSocket subscribes/unsubscribes that waited before reaching the Redis broker, by reason (connection_budget, queue_full).",
                ),
                &["reason"],
            )?,
            limit_hits: IntCounterVec::new(
                Opts::new(
                    "inkstream_limit_hits_total",
                    "Requests or items refused because a configured bound was reached, by limit.",
                ),
                &["limit"],
            )?,
            http_requests: IntCounterVec::new(
                Opts::new(
                    "inkstream_http_requests_total",
                    "HTTP requests by route template and status code.",
                ),
                &["route", "status"],
            )?,
            http_request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "inkstream_http_request_duration_seconds",
                    "HTTP request latency by route template.",
                )
                .buckets(latency),
                &["route"],
            )?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.ingest_events_accepted.clone()))?;
        r.register(Box::new(m.ingest_events_rejected.clone()))?;
        r.register(Box::new(m.ingest_duplicates.clone()))?;
        r.register(Box::new(m.ingest_dedup_forgotten_early.clone()))?;
        r.register(Box::new(m.ingest_batch_size.clone()))?;
        r.register(Box::new(m.log_append_seconds.clone()))?;
        r.register(Box::new(m.log_errors.clone()))?;
        r.register(Box::new(m.kafka_fatal_errors.clone()))?;
        r.register(Box::new(m.redis_persistence.clone()))?;
        r.register(Box::new(m.kafka_durability.clone()))?;
        r.register(Box::new(m.dataflow_source_records.clone()))?;
        r.register(Box::new(m.dataflow_source_checks.clone()))?;
        r.register(Box::new(m.derived_produced.clone()))?;
        r.register(Box::new(m.derived_syncs.clone()))?;
        r.register(Box::new(m.dataflow_events_in.clone()))?;
        r.register(Box::new(m.dataflow_derived.clone()))?;
        r.register(Box::new(m.dataflow_late_events.clone()))?;
        r.register(Box::new(m.dataflow_duplicate_events.clone()))?;
        r.register(Box::new(m.dataflow_watermark_seconds.clone()))?;
        r.register(Box::new(m.dataflow_watermark_lag_seconds.clone()))?;
        r.register(Box::new(m.dataflow_state_keys.clone()))?;
        r.register(Box::new(m.dataflow_epoch_delay_seconds.clone()))?;
        r.register(Box::new(m.dataflow_input_delay_seconds.clone()))?;
        r.register(Box::new(m.dataflow_dead_letters.clone()))?;
        r.register(Box::new(m.mirror_events.clone()))?;
        r.register(Box::new(m.mirror_errors.clone()))?;
        r.register(Box::new(m.mirror_dead_lettered.clone()))?;
        r.register(Box::new(m.mirror_lag_events.clone()))?;
        r.register(Box::new(m.mirror_lag_seconds.clone()))?;
        r.register(Box::new(m.mirror_round_seconds.clone()))?;
        r.register(Box::new(m.mirror_event_delay_seconds.clone()))?;
        r.register(Box::new(m.mirror_commit_seconds.clone()))?;
        r.register(Box::new(m.mirror_active.clone()))?;
        r.register(Box::new(m.kafka_auth_failures.clone()))?;
        r.register(Box::new(m.auth_failures.clone()))?;
        r.register(Box::new(m.auth_jwks_fetches.clone()))?;
        r.register(Box::new(m.ws_ingest_connections.clone()))?;
        r.register(Box::new(m.http_connection_limit_waits.clone()))?;
        r.register(Box::new(m.ws_connections.clone()))?;
        r.register(Box::new(m.ws_messages_out.clone()))?;
        r.register(Box::new(m.ws_slow_disconnects.clone()))?;
        r.register(Box::new(m.ws_closes.clone()))?;
        r.register(Box::new(m.ws_coalesced.clone()))?;
        r.register(Box::new(m.ws_history_channels.clone()))?;
        r.register(Box::new(m.ws_paced_events.clone()))?;
        r.register(Box::new(m.ws_paced_queue.clone()))?;
        r.register(Box::new(m.ws_recoveries.clone()))?;
        r.register(Box::new(m.ws_broker_command_waits.clone()))?;
        r.register(Box::new(m.limit_hits.clone()))?;
        r.register(Box::new(m.http_requests.clone()))?;
        r.register(Box::new(m.http_request_seconds.clone()))?;
        r.register(Box::new(ProcessCollector::new()?))?;
        m.initialize_labels();
        Ok(m)
    }

    /// Creates the series of every closed label set at zero, so that each
    /// exists from the first scrape (a series that appears only on its first
    /// increment breaks `rate()` and "absent" alerts). Labels that depend on
    /// the router (`route`), the dataflow (`operator`) or the fanout hub
    /// (`path`) are initialized where those are known: this module imports
    /// no component.
    fn initialize_labels(&self) {
        for ty in schemas::payload::TYPES {
            self.ingest_events_accepted.with_label_values(&[ty]);
            self.dataflow_derived.with_label_values(&[ty]);
            self.dataflow_late_events.with_label_values(&[ty]);
        }
        for code in REJECT_CODES {
            self.ingest_events_rejected.with_label_values(&[code]);
        }
        for backend in ["embedded", "redis"] {
            self.log_append_seconds.with_label_values(&[backend]);
            for op in ["append", "read", "claim", "ack", "trim"] {
                self.log_errors.with_label_values(&[backend, op]);
            }
        }
        self.log_errors.with_label_values(&["kafka", "read"]);
        for outcome in ["delivered", "failed", "dropped"] {
            self.derived_produced.with_label_values(&[outcome]);
        }
        for reason in ["late", "undecodable"] {
            self.dataflow_dead_letters.with_label_values(&[reason]);
        }
        for stage in ["topics", "log", "produce", "ack", "encode", "undecodable"] {
            self.mirror_errors.with_label_values(&[stage]);
        }
        for client in ["check", "source", "derived"] {
            for kind in ["sasl", "tls"] {
                self.kafka_auth_failures.with_label_values(&[client, kind]);
            }
            self.kafka_fatal_errors.with_label_values(&[client]);
        }
        self.kafka_fatal_errors.with_label_values(&["mirror"]);
        self.log_errors
            .with_label_values(&["kafka", "derived_topics"]);
        // auth::AuthError::CODES (metrics imports no component) and the
        // Origin and anonymous Host checks' refusals.
        for code in [
            "unauthenticated",
            "invalid_credentials",
            "token_expired",
            "token_not_yet_valid",
            "token_algorithm_refused",
            "token_bad_signature",
            "token_unknown_key",
            "token_wrong_audience",
            "token_wrong_issuer",
            "session_store_unavailable",
            "jwks_unavailable",
            "origin_not_allowed",
            "host_not_allowed",
        ] {
            self.auth_failures.with_label_values(&[code]);
        }
        for outcome in ["ok", "failed", "rate_limited"] {
            self.auth_jwks_fetches.with_label_values(&[outcome]);
        }
        for reason in [
            "control_flood",
            "idle",
            "token_expired",
            "session_ended",
            "too_big",
        ] {
            self.ws_closes.with_label_values(&[reason]);
        }
        for outcome in ["published", "dropped"] {
            self.ws_paced_events.with_label_values(&[outcome]);
        }
        for outcome in ["recovered", "not_recovered"] {
            self.ws_recoveries.with_label_values(&[outcome]);
        }
        for reason in ["connection_budget", "queue_full"] {
            self.ws_broker_command_waits.with_label_values(&[reason]);
        }
        for limit in LIMITS {
            self.limit_hits.with_label_values(&[limit]);
        }
    }

    /// A fresh registry with every metric registered (tests, replay).
    pub fn standalone() -> Metrics {
        // Invariant: registering a fixed set of distinct names into an empty
        // registry cannot fail.
        #[allow(clippy::expect_used)]
        Metrics::new(Registry::new()).expect("fresh registry accepts every metric")
    }

    /// The registry, for components that register metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The figures the console charts (`/ws/analytics` channel
    /// `category:stats`), read from the very series `/metrics` exports so
    /// the two always agree: events accepted at ingest (every type), derived
    /// events emitted by the dataflow (every type), and the largest
    /// watermark lag of any operator.
    pub fn pipeline_totals(&self) -> PipelineTotals {
        PipelineTotals {
            ingest_events: sum_series(&self.ingest_events_accepted) as u64,
            derived_events: sum_series(&self.dataflow_derived) as u64,
            watermark_lag_seconds: max_series(&self.dataflow_watermark_lag_seconds),
        }
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// See [`Metrics::pipeline_totals`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PipelineTotals {
    /// `inkstream_ingest_events_accepted_total`, summed over `type`.
    pub ingest_events: u64,
    /// `inkstream_dataflow_derived_events_total`, summed over `type`.
    pub derived_events: u64,
    /// `inkstream_dataflow_watermark_lag_seconds`, the largest over
    /// `operator` (0 before the dataflow has seen an event, or when this
    /// instance does not run it).
    pub watermark_lag_seconds: f64,
}

/// The values of every series of a counter or gauge family.
fn series_values(c: &dyn prometheus::core::Collector) -> Vec<f64> {
    let mut out = Vec::new();
    for family in c.collect() {
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in family.get_metric() {
            out.push(if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            });
        }
    }
    out
}

fn sum_series(c: &dyn prometheus::core::Collector) -> f64 {
    series_values(c).into_iter().sum()
}

fn max_series(c: &dyn prometheus::core::Collector) -> f64 {
    series_values(c).into_iter().fold(0.0, f64::max)
}
