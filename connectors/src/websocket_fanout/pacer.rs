//! Window results to the fanout at a steady rate ([`Pacer`]).
//!
//! A tumbling window closes for every key at once: team metrics' one-minute
//! window with 10,000 writers is ~40 K derived events in one instant, ~100 K
//! publications over their channels. Published as they come, they fill the
//! hub's queues (or the Redis broker's lanes) ahead of the live updates
//! emitted after them — a WPM figure on `category:analytics` then waits
//! behind tens of thousands of team figures on the same channel, and the
//! whole live path stalls for half a second (measured: docs/BENCHMARKS.md,
//! "e2e on a quiet machine"). Such results are minutes of event time old
//! already; spreading them over a second or two costs nothing anyone sees.
//!
//! So the dataflow hands them here instead of to the hub: they wait in a
//! bounded queue, in order, and one thread publishes them at most
//! `rate` per second, in small slices, so a live publication never queues
//! behind more than a slice. Everything else goes to the hub at once.
//! Within a channel a paced result may thus take a later offset than a live
//! event emitted after it; results keep their own order. Past `capacity`
//! waiting results new ones are dropped from the fanout and counted (the
//! derived streams, topics and views get every one: only the live fanout is
//! paced).

use super::broker::Priority;
use super::hub::Hub;
use crate::metrics::Metrics;
use schemas::Event;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the pacing thread publishes a slice: a live publication waits
/// behind at most `rate × SLICE` results.
const SLICE: Duration = Duration::from_millis(2);

struct Queue {
    events: VecDeque<Event>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The paced queue in front of a [`Hub`]; dropping it publishes what is
/// left without pacing and ends its thread.
pub struct Pacer {
    shared: Arc<Shared>,
    capacity: usize,
    metrics: Metrics,
}

impl Pacer {
    /// Starts the pacing thread: at most `rate` events per second (at least
    /// 1) to `hub`, at most `capacity` waiting.
    pub fn start(
        hub: Arc<Hub>,
        rate: u32,
        capacity: usize,
        metrics: &Metrics,
    ) -> std::io::Result<Pacer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let run = Run {
            shared: Arc::clone(&shared),
            hub,
            rate: f64::from(rate.max(1)),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("fanout-pacer".into())
            .spawn(move || run.run())?;
        Ok(Pacer {
            shared,
            capacity,
            metrics: metrics.clone(),
        })
    }

    /// Queues a result for the fanout; past the capacity it is dropped and
    /// counted.
    pub fn offer(&self, event: Event) {
        let mut q = self.shared.lock();
        if q.events.len() >= self.capacity {
            drop(q);
            self.metrics
                .ws_paced_events
                .with_label_values(&["dropped"])
                .inc();
            return;
        }
        q.events.push_back(event);
        let n = q.events.len();
        // Under the lock, like the pacing thread's: the gauge never ends
        // on a stale length.
        self.metrics.ws_paced_queue.set(n as i64);
        drop(q);
        if n == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }
}

/// The pacing thread.
struct Run {
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    rate: f64,
    metrics: Metrics,
}

impl Run {
    fn run(self) {
        // A token bucket holding one slice: after a quiet spell the first
        // slice leaves at once, then one per `SLICE`, whatever the sleeps'
        // overshoot (tokens follow the clock, not the number of wake-ups).
        let burst = (self.rate * SLICE.as_secs_f64()).max(1.0);
        let mut tokens = burst;
        let mut last = Instant::now();
        let mut slice = Vec::new();
        loop {
            let mut q = self.shared.lock();
            while q.events.is_empty() && !q.closed {
                q = self.shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.events.is_empty() {
                return;
            }
            let now = Instant::now();
            tokens = (tokens + self.rate * now.duration_since(last).as_secs_f64()).min(burst);
            last = now;
            // Closing: the rest leaves at once (the process is draining).
            let n = if q.closed {
                q.events.len()
            } else {
                (tokens as usize).min(q.events.len())
            };
            slice.extend(q.events.drain(..n));
            let left = q.events.len();
            self.metrics.ws_paced_queue.set(left as i64);
            drop(q);
            tokens -= n as f64;
            for e in slice.drain(..) {
                self.hub.publish_with(&e, Priority::Background);
            }
            self.metrics
                .ws_paced_events
                .with_label_values(&["published"])
                .inc_by(n as u64);
            if left > 0 {
                // Pacing, not waiting for a condition: the next slice's
                // tokens accrue meanwhile.
                std::thread::sleep(SLICE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket_fanout::HubConfig;
    use schemas::payload::{MetricUpdated, Payload};

    fn figure(i: u64) -> Event {
        Event {
            id: format!("team-{i}").into(),
            ts: 1_000,
            user_id: Some(format!("u{i}").into()),
            project_id: Some("p1".into()),
            document_id: None,
            data: Payload::AnalyticsMetricUpdated(MetricUpdated {
                metric: "team.words".into(),
                value: i as f64,
                window_ms: Some(60_000),
                dimensions: Vec::new(),
            }),
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn counted(m: &Metrics, outcome: &str) -> u64 {
        m.ws_paced_events.with_label_values(&[outcome]).get()
    }

    /// Every queued result is published, in order, and the rate holds: 500
    /// results at 10,000/s cannot all be out in less than ~50 ms.
    #[test]
    fn results_leave_in_order_and_no_faster_than_the_rate() {
        let metrics = Metrics::standalone();
        let hub = Arc::new(Hub::new(HubConfig::default(), metrics.clone()));
        let pacer = Pacer::start(Arc::clone(&hub), 10_000, 1_000, &metrics).unwrap();
        let started = Instant::now();
        for i in 0..500 {
            pacer.offer(figure(i));
        }
        wait_for("publishing 500 paced results", || {
            counted(&metrics, "published") == 500
        });
        let took = started.elapsed();
        // 500 at 10,000/s with a 20-result burst: at least 48 ms of tokens.
        assert!(
            took >= Duration::from_millis(45),
            "500 results left in {took:?}: faster than 10,000/s"
        );
        // In order: the project channel's history numbers them 1.. in the
        // order they were offered (the history keeps its last 100).
        let kept = hub.history_bodies("project:p1");
        assert_eq!(kept.len(), 100);
        for (k, body) in kept.iter().enumerate() {
            let want = format!("\"id\":\"team-{}\"", 400 + k);
            assert!(body.contains(&want), "history[{k}] = {body}, want {want}");
        }
        assert_eq!(counted(&metrics, "dropped"), 0);
        assert_eq!(metrics.ws_paced_queue.get(), 0);
    }

    /// Past the capacity results are dropped and counted, never queued
    /// without bound; dropping the pacer publishes the rest at once.
    #[test]
    fn a_full_queue_drops_and_counts_and_closing_flushes() {
        let metrics = Metrics::standalone();
        let hub = Arc::new(Hub::new(HubConfig::default(), metrics.clone()));
        // 1 per second: the queue stays full while we offer.
        let pacer = Pacer::start(Arc::clone(&hub), 1, 10, &metrics).unwrap();
        for i in 0..25 {
            pacer.offer(figure(i));
        }
        // One token a second: a result or two may have left meanwhile; the
        // queue never held more than 10, and the rest was refused.
        let (dropped, queued) = (counted(&metrics, "dropped"), metrics.ws_paced_queue.get());
        assert!(queued <= 10, "{queued} queued past a capacity of 10");
        assert!(
            dropped >= 5,
            "only {dropped} of 25 refused with room for 10"
        );
        drop(pacer);
        // Every result is published or counted as dropped.
        wait_for("the closing flush", || {
            counted(&metrics, "published") + dropped == 25
        });
    }
}
