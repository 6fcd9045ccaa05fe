//! The mirror group's lag, published for operators.

use super::sleep_or_stop;
use crate::event_log::EventLog;
use crate::metrics::Metrics;
use std::time::Duration;
use tokio::sync::watch;

/// Publishes the mirror group's lag (entries not yet in Kafka and the age of
/// the oldest) every `every`, until `shutdown` flips.
pub async fn report_lag(
    log: EventLog,
    group: String,
    metrics: Metrics,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match log.group_lag(&group).await {
            Ok((entries, oldest_ms)) => {
                metrics.mirror_lag_events.set(entries as i64);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let age = oldest_ms.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
                metrics.mirror_lag_seconds.set(age);
            }
            Err(e) => tracing::debug!(error = %e, "mirror lag unavailable"),
        }
        if sleep_or_stop(&mut shutdown, every.as_millis() as u64).await {
            return;
        }
    }
}
