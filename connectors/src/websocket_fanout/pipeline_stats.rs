//! The server's own throughput and watermark lag, published once a second on
//! `/ws/analytics`, channel `category:stats`, for the console's chart.
//!
//! The figures are read from the Prometheus series ([`Metrics::pipeline_totals`]),
//! so the chart and `/metrics` agree: rates are the difference of
//! `inkstream_ingest_events_accepted_total` and
//! `inkstream_dataflow_derived_events_total` between two samples over the
//! time between them; the lag is the largest
//! `inkstream_dataflow_watermark_lag_seconds` of any operator.
//!
//! Who may subscribe is the `category:` rule (admins, analysts, apps with the
//! `read` scope; everyone when auth is off), as for the channels that carry
//! every derived event. Publications are kept in the channel's history like
//! any other, so a console opened now starts with the last
//! `fanout.history_size` seconds of the chart. With several gateways on one
//! Redis, each publishes its own figures, tagged with its `instance`.

use super::Hub;
use super::routing::WsPath;
use crate::Metrics;
use crate::metrics::PipelineTotals;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The channel the figures go to (on `/ws/analytics`).
pub const STATS_CHANNEL: &str = "category:stats";
/// How often the figures are published.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// The `type` of a publication.
pub const STATS_TYPE: &str = "system.pipeline_stats";

/// One publication's `data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineStats {
    /// Time between the two samples the rates come from, ms.
    pub interval_ms: u64,
    /// Events accepted into the log per second, over the interval.
    pub ingest_events_per_sec: f64,
    /// Derived events emitted by the dataflow per second, over the interval.
    pub derived_events_per_sec: f64,
    /// Wall clock minus the slowest operator's input frontier, ms (0 before
    /// the dataflow has seen an event, or on an instance not running it).
    pub watermark_lag_ms: u64,
    /// The counters' values at the second sample.
    pub ingest_events_total: u64,
    pub derived_events_total: u64,
}

/// Turns successive samples of the counters into rates (the pure core).
#[derive(Debug, Default)]
pub struct StatsSampler {
    prev: Option<(Instant, PipelineTotals)>,
}

impl StatsSampler {
    /// Takes a sample at `at`; returns the figures over the time since the
    /// previous one (`None` for the first sample, or when no time passed).
    /// A counter that went backwards (it cannot, within one process) counts
    /// as 0.
    pub fn observe(&mut self, totals: PipelineTotals, at: Instant) -> Option<PipelineStats> {
        let prev = self.prev.replace((at, totals));
        let (then, before) = prev?;
        let elapsed = at.checked_duration_since(then)?;
        if elapsed.is_zero() {
            return None;
        }
        let secs = elapsed.as_secs_f64();
        let rate = |now: u64, was: u64| round2(now.saturating_sub(was) as f64 / secs);
        Some(PipelineStats {
            interval_ms: elapsed.as_millis() as u64,
            ingest_events_per_sec: rate(totals.ingest_events, before.ingest_events),
            derived_events_per_sec: rate(totals.derived_events, before.derived_events),
            watermark_lag_ms: (totals.watermark_lag_seconds.max(0.0) * 1000.0).round() as u64,
            ingest_events_total: totals.ingest_events,
            derived_events_total: totals.derived_events,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The JSON published: shaped like an event envelope (`id`, `type`, `ts`,
/// `data`) so clients handle it like the channel's other messages, plus the
/// publishing gateway's `instance`. It is not an event of the catalogue:
/// it is never ingested, logged or sent to Kafka.
pub fn message(stats: &PipelineStats, ts_ms: i64, instance: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("stats-{instance}-{ts_ms}"),
        "type": STATS_TYPE,
        "ts": ts_ms,
        "instance": instance,
        "data": stats,
    })
}

/// Publishes the figures every [`STATS_INTERVAL`] until `stop` turns true.
pub fn spawn(
    hub: &Arc<Hub>,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let hub = Arc::clone(hub);
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let mut sampler = StatsSampler::default();
        let mut tick = tokio::time::interval(STATS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(stats) = sampler.observe(metrics.pipeline_totals(), Instant::now()) else {
                continue;
            };
            let msg = message(&stats, now_ms(), hub.instance());
            if let Err(error) = hub
                .publish_raw(WsPath::Analytics, STATS_CHANNEL, &msg)
                .await
            {
                // Through Redis: the figures of this second are lost; the
                // next second's are complete by themselves.
                tracing::debug!(error = %error, "publishing the pipeline stats failed");
            }
        }
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn totals(ingest: u64, derived: u64, lag: f64) -> PipelineTotals {
        PipelineTotals {
            ingest_events: ingest,
            derived_events: derived,
            watermark_lag_seconds: lag,
        }
    }

    #[test]
    fn rates_are_the_counters_difference_over_the_time_between_samples() {
        let t0 = Instant::now();
        let mut s = StatsSampler::default();
        assert_eq!(s.observe(totals(100, 10, 0.0), t0), None);
        let got = s
            .observe(totals(150, 40, 2.1404), t0 + Duration::from_millis(500))
            .unwrap();
        assert_eq!(
            got,
            PipelineStats {
                interval_ms: 500,
                ingest_events_per_sec: 100.0,
                derived_events_per_sec: 60.0,
                watermark_lag_ms: 2140,
                ingest_events_total: 150,
                derived_events_total: 40,
            }
        );
        // No time passed: nothing to say.
        assert_eq!(
            s.observe(totals(150, 40, 0.0), t0 + Duration::from_millis(500)),
            None
        );
    }

    #[test]
    fn the_figures_agree_with_the_prometheus_series() {
        let m = Metrics::standalone();
        m.ingest_events_accepted
            .with_label_values(&["writing.keystroke"])
            .inc_by(7);
        m.ingest_events_accepted
            .with_label_values(&["collaboration.cursor_moved"])
            .inc_by(3);
        m.dataflow_derived
            .with_label_values(&["analytics.metric_updated"])
            .inc_by(5);
        m.dataflow_watermark_lag_seconds
            .with_label_values(&["sessions"])
            .set(1.5);
        m.dataflow_watermark_lag_seconds
            .with_label_values(&["presence"])
            .set(2.25);
        assert_eq!(m.pipeline_totals(), totals(10, 5, 2.25));
        let text = m.render();
        assert!(
            text.contains("inkstream_ingest_events_accepted_total{type=\"writing.keystroke\"} 7")
        );
        assert!(
            text.contains("inkstream_dataflow_watermark_lag_seconds{operator=\"presence\"} 2.25")
        );
    }

    #[test]
    fn the_message_is_an_envelope_with_the_figures_in_data() {
        let stats = PipelineStats {
            interval_ms: 1000,
            ingest_events_per_sec: 20.0,
            derived_events_per_sec: 61.5,
            watermark_lag_ms: 2000,
            ingest_events_total: 400,
            derived_events_total: 1200,
        };
        let m = message(&stats, 1_764_522_000_000, "abc");
        assert_eq!(
            m,
            serde_json::json!({
                "id": "stats-abc-1764522000000", "type": "system.pipeline_stats",
                "ts": 1_764_522_000_000_i64, "instance": "abc",
                "data": {"interval_ms": 1000, "ingest_events_per_sec": 20.0,
                         "derived_events_per_sec": 61.5, "watermark_lag_ms": 2000,
                         "ingest_events_total": 400, "derived_events_total": 1200}
            })
        );
    }
}
