//! The one place where tokio meets timely.
//!
//! The tokio side ([`crate::source`]) reads log entries and sends them over a
//! bounded channel; worker 0 drains that channel into the [`InputDriver`],
//! steps the dataflow, and reports back which entries are fully processed
//! (the output frontier has passed their epoch) so that the source can
//! acknowledge them in the log. A full channel blocks the source: that is the
//! backpressure from a slow dataflow to the log reader.

use crate::config::Config;
use crate::dataflow::{self, DerivedSink, late_event};
use connectors::{EntryRef, LogEntry, Metrics};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Handle to the running dataflow's worker threads.
pub struct Bridge {
    guards: timely::communication::initialize::WorkerGuards<()>,
}

/// The tokio-side ends of a started bridge.
pub struct BridgeEnds {
    /// Entries to process; dropping it ends the input and drains the dataflow.
    pub entries: mpsc::Sender<Vec<LogEntry>>,
    /// Entries fully processed, to acknowledge in the log.
    pub processed: mpsc::UnboundedReceiver<Vec<EntryRef>>,
}

impl Bridge {
    /// Starts `config.dataflow.workers` worker threads, the first `readers`
    /// of which each take one input (one [`BridgeEnds`] per reader: e.g. one
    /// Kafka consumer per worker, each with its share of the partitions).
    pub fn start<S: DerivedSink>(
        config: &Config,
        sink: Arc<S>,
        metrics: Metrics,
        readers: usize,
    ) -> Result<(Bridge, Vec<BridgeEnds>), String> {
        let readers = readers.clamp(1, config.dataflow.workers.max(1));
        let mut tokio_ends = Vec::with_capacity(readers);
        let mut worker_ends = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (tx, rx) = mpsc::channel::<Vec<LogEntry>>(64);
            let (done_tx, done_rx) = mpsc::unbounded_channel();
            tokio_ends.push(BridgeEnds {
                entries: tx,
                processed: done_rx,
            });
            worker_ends.push(Some((rx, done_tx)));
        }
        // Worker i takes reader i's channels; the closure is shared by all workers.
        let ends = Arc::new(Mutex::new(worker_ends));
        // The highest watermark of any reader: an idle reader (say, one whose
        // Kafka partitions get no traffic) follows it instead of holding the
        // frontier back forever — Flink's idle-source rule.
        let leading = Arc::new(AtomicI64::new(i64::MIN));
        let config = config.clone();
        let workers = config.dataflow.workers;
        let timely_config = config.dataflow.timely_config();
        let guards = timely::execute(timely_config, move |worker| {
            // Workers are numbered across a cluster; readers are this
            // process's first `readers` workers.
            let index = worker.index() - config.dataflow.process_index * workers.max(1);
            let (driver, probe) =
                dataflow::install(worker, &config, sink.clone(), index < readers, None);
            let Some(mut driver) = driver else {
                return;
            };
            let taken = ends
                .lock()
                .ok()
                .and_then(|mut e| e.get_mut(index).and_then(Option::take));
            let Some((mut rx, done_tx)) = taken else {
                return;
            };
            let idle_after = config.dataflow.idle_advance_after;
            let disorder = config.dataflow.allowed_disorder.as_millis() as i64;
            let mut last_arrival = Instant::now();
            // Entries waiting for the output frontier to pass their epoch.
            let mut in_flight: BTreeMap<u64, Vec<EntryRef>> = BTreeMap::new();
            loop {
                let mut closed = false;
                loop {
                    match rx.try_recv() {
                        Ok(batch) => {
                            last_arrival = Instant::now();
                            let done = feed(&mut driver, batch, &mut in_flight, &*sink, &metrics);
                            if !done.is_empty() {
                                let _ = done_tx.send(done);
                            }
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed {
                    driver.close();
                    while !probe.done() {
                        worker.step();
                    }
                    let rest: Vec<EntryRef> = std::mem::take(&mut in_flight)
                        .into_values()
                        .flatten()
                        .collect();
                    if !rest.is_empty() {
                        let _ = done_tx.send(rest);
                    }
                    return;
                }
                // Idle input: let the watermark follow the wall clock, so that
                // absence of events still moves time forward.
                let idle = last_arrival.elapsed();
                if idle >= idle_after {
                    if let Some(max) = driver.max_ts() {
                        driver.advance_to(max + idle.as_millis() as i64 - disorder);
                    }
                    driver.advance_to(leading.load(Ordering::Relaxed));
                }
                leading.fetch_max(driver.watermark(), Ordering::Relaxed);
                metrics.dataflow_watermark_ms.set(driver.watermark().max(0));
                worker.step_or_park(Some(Duration::from_millis(2)));
                // Report entries whose epoch the output frontier has passed.
                let mut done = Vec::new();
                while let Some(entry) = in_flight.first_entry() {
                    if probe.less_equal(entry.key()) {
                        break;
                    }
                    done.extend(entry.remove());
                }
                if !done.is_empty() {
                    let _ = done_tx.send(done);
                }
            }
        })?;
        Ok((Bridge { guards }, tokio_ends))
    }

    /// Waits for the workers to finish (after `entries` was dropped).
    pub fn join(self) {
        for r in self.guards.join() {
            if let Err(e) = r {
                tracing::error!(error = %e, "dataflow worker failed");
            }
        }
    }
}

/// Feeds one batch; returns entries that are done at once (late or invalid:
/// their dead letter has been emitted).
fn feed<S: DerivedSink>(
    driver: &mut dataflow::InputDriver,
    batch: Vec<LogEntry>,
    in_flight: &mut BTreeMap<u64, Vec<EntryRef>>,
    sink: &S,
    metrics: &Metrics,
) -> Vec<EntryRef> {
    let mut done = Vec::new();
    let mut dead = Vec::new();
    let mut events: Vec<(Option<u64>, schemas::Event)> = Vec::with_capacity(batch.len());
    for LogEntry { entry, event } in batch {
        match event {
            Ok(e) => {
                let at = position(&entry);
                let t = driver.epoch_of(e.ts);
                if e.ts >= driver.watermark() {
                    in_flight.entry(t).or_default().push(entry);
                } else {
                    done.push(entry);
                }
                events.push((at, e));
            }
            Err(reason) => {
                dead.push(dataflow::dead_letter(
                    "undecodable",
                    &format!("{}/{}", entry.stream, entry.id),
                    0,
                    serde_json::json!({ "stream": &*entry.stream, "entry": &entry.id, "error": reason }),
                ));
                done.push(entry);
            }
        }
    }
    metrics.dataflow_events_in.inc_by(events.len() as u64);
    let watermark = driver.watermark();
    let duplicates = driver.duplicates();
    let late = driver.push_positioned(events);
    metrics
        .dataflow_duplicate_events
        .inc_by(driver.duplicates() - duplicates);
    for e in late {
        metrics
            .dataflow_late_events
            .with_label_values(&[e.event_type()])
            .inc();
        dead.push(late_event(e, watermark));
    }
    if !dead.is_empty() {
        sink.emit(&mut dead);
    }
    done
}

/// An entry's position in its log as a number: a Kafka offset
/// (`topic#partition` streams), or a Redis/embedded stream id `ms-seq`
/// packed as `ms << 20 | seq`. Monotonic per stream, hence per key.
fn position(entry: &EntryRef) -> Option<u64> {
    if entry.stream.contains('#') {
        return entry.id.parse().ok();
    }
    let (ms, seq) = entry.id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some((ms << 20) | seq.min((1 << 20) - 1))
}
