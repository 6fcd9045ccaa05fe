//! The notifier's metrics, registered from here into the shared registry
//! (`Metrics::registry()`); every label combination is initialised at 0.

use super::policy::Channel;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

pub const PRIORITIES: [&str; 4] = ["critical", "high", "medium", "low"];
pub const CHANNELS: [&str; 5] = ["in_app", "email", "sms", "webhook", "digest"];
pub const OUTCOMES: [&str; 8] = [
    "delivered",
    "retried",
    "dead_lettered",
    "suppressed_muted",
    "held_quiet_hours",
    "held_flow",
    "digested",
    "failed",
];

/// Handles to the notifier's metrics.
#[derive(Clone)]
pub struct NotifierMetrics {
    /// `inkstream_notifications_total{priority,channel,outcome}`.
    pub total: IntCounterVec,
    /// `inkstream_notification_delivery_seconds{channel}`: one provider request.
    pub delivery_seconds: HistogramVec,
    /// `inkstream_notification_pending`: retries + held + digest queues.
    pub pending: IntGauge,
    /// `inkstream_notification_destinations_refused_total{channel}`:
    /// deliveries refused because the destination is a loopback, private,
    /// link-local or metadata address (`notifications.allow_private_destinations`).
    pub refused: IntCounterVec,
}

impl NotifierMetrics {
    /// Registers the metrics into `registry` (fails if they already are).
    pub fn register(registry: &Registry) -> Result<NotifierMetrics, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                "inkstream_notifications_total",
                "Notifications by priority, channel and outcome.",
            ),
            &["priority", "channel", "outcome"],
        )?;
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new(
                "inkstream_notification_delivery_seconds",
                "Latency of one delivery request, by channel.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["channel"],
        )?;
        let pending = IntGauge::new(
            "inkstream_notification_pending",
            "Notifications waiting: deliveries to retry, held items and digest queues.",
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(delivery_seconds.clone()))?;
        let refused = IntCounterVec::new(
            Opts::new(
                "inkstream_notification_destinations_refused_total",
                "Deliveries refused because the destination resolves to a loopback, private, \
                 link-local or metadata address, by channel.",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        for c in ["email", "sms", "webhook"] {
            refused.with_label_values(&[c]);
        }
        for p in PRIORITIES {
            for c in CHANNELS {
                for o in OUTCOMES {
                    total.with_label_values(&[p, c, o]);
                }
            }
        }
        for c in Channel::ALL {
            delivery_seconds.with_label_values(&[c.as_str()]);
        }
        Ok(NotifierMetrics {
            total,
            delivery_seconds,
            pending,
            refused,
        })
    }

    /// Metrics in a private registry (tests, or when registering failed).
    pub fn standalone() -> NotifierMetrics {
        // Invariant: a fresh registry accepts these three distinct names.
        #[allow(clippy::expect_used)]
        NotifierMetrics::register(&Registry::new()).expect("fresh registry")
    }

    pub fn count(&self, priority: &str, channel: &str, outcome: &str) {
        self.total
            .with_label_values(&[priority, channel, outcome])
            .inc();
    }
}
