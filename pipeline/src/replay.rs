//! `inkstream replay`: the dataflow over an NDJSON file, in pure event time.
//!
//! The file is streamed (never held in memory): worker 0 reads and decodes
//! lines in batches, feeds them at their event time, and waits for the
//! dataflow to catch up every few batches, so memory is bounded by the
//! in-flight window, not by the file. At end of input every pending window and
//! timer is flushed. Derived events are written as one NDJSON file per type
//! (`OUT/<type>.ndjson`); invalid lines and late events go to
//! `OUT/system.dead_letter.ndjson`.

use crate::config::Config;
use crate::dataflow::{self, DerivedSink, dead_letter, late_event};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dataflow failed: {0}")]
    Dataflow(String),
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub events: u64,
    pub invalid: u64,
    pub late: u64,
    pub bytes: u64,
    pub derived: BTreeMap<&'static str, u64>,
    pub elapsed: Duration,
}

impl ReplayReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Writes derived events as NDJSON, one file per type.
struct FileSink {
    dir: PathBuf,
    /// `""`, or `.p<i>` in process i of a cluster (each process writes what
    /// its own workers derived; the union is the output).
    suffix: String,
    files: Mutex<HashMap<&'static str, BufWriter<File>>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    error: Mutex<Option<ReplayError>>,
}

impl FileSink {
    fn write(&self, events: &mut Vec<schemas::Event>) -> Result<(), ReplayError> {
        // Serialize outside the lock (workers do it in parallel), one buffer
        // per type; then one locked write per type.
        let mut buffers: BTreeMap<&'static str, (Vec<u8>, u64)> = BTreeMap::new();
        for e in events.drain(..) {
            let (buf, n) = buffers.entry(e.event_type()).or_default();
            serde_json::to_writer(&mut *buf, &e).map_err(|err| ReplayError::Output {
                path: self.dir.clone(),
                source: err.into(),
            })?;
            buf.push(b'\n');
            *n += 1;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (ty, (buf, n)) in buffers {
            let path = || self.dir.join(format!("{ty}{}.ndjson", self.suffix));
            if !files.contains_key(ty) {
                let f = File::create(path()).map_err(|source| ReplayError::Output {
                    path: path(),
                    source,
                })?;
                files.insert(ty, BufWriter::with_capacity(1 << 20, f));
            }
            if let Some(w) = files.get_mut(ty) {
                w.write_all(&buf).map_err(|source| ReplayError::Output {
                    path: path(),
                    source,
                })?;
            }
            *counts.entry(ty).or_default() += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ReplayError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for (ty, w) in files.iter_mut() {
            w.flush().map_err(|source| ReplayError::Output {
                path: self.dir.join(format!("{ty}{}.ndjson", self.suffix)),
                source,
            })?;
        }
        Ok(())
    }
}

impl DerivedSink for FileSink {
    fn emit(&self, events: &mut Vec<schemas::Event>) {
        if let Err(e) = self.write(events) {
            let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
    }
}

/// Events decoded per batch handed to the dataflow.
const BATCH: usize = 4096;
/// Batches fed before waiting for the dataflow to catch up (bounds memory).
const BATCHES_IN_FLIGHT: usize = 8;

/// Replays `input` through the dataflow, writing derived streams into `out`.
pub fn run(input: &Path, out: &Path, config: &Config) -> Result<ReplayReport, ReplayError> {
    let file = File::open(input).map_err(|source| ReplayError::Input {
        path: input.into(),
        source,
    })?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::create_dir_all(out).map_err(|source| ReplayError::Output {
        path: out.into(),
        source,
    })?;
    let sink = Arc::new(FileSink {
        dir: out.into(),
        suffix: if config.dataflow.processes() > 1 {
            format!(".p{}", config.dataflow.process_index)
        } else {
            String::new()
        },
        files: Mutex::new(HashMap::new()),
        counts: Mutex::new(BTreeMap::new()),
        error: Mutex::new(None),
    });
    let reader = Arc::new(Mutex::new(Some(BufReader::with_capacity(1 << 20, file))));
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal();

    let timely_config = config.dataflow.timely_config();
    let mut cfg = config.clone();
    // Pure event time: at the end of the file every session and window ends.
    cfg.dataflow.flush_at_end = true;
    let (sink2, stats2) = (sink.clone(), stats.clone());
    let guards = timely::execute(timely_config, move |worker| {
        // Worker 0 reads the file (one arrival order, so live figures match a
        // single-worker run exactly); the others compute.
        let reads = worker.index() == 0;
        let (driver, probe) = dataflow::install(worker, &cfg, sink2.clone(), reads, None);
        let Some(mut driver) = driver else {
            return Ok(());
        };
        let taken = reader.lock().ok().and_then(|mut r| r.take());
        let Some(mut reader) = taken else {
            return Ok(());
        };
        let limits = schemas::Limits::default();
        let mut line = String::new();
        let mut line_no = 0u64;
        let mut batch = Vec::with_capacity(BATCH);
        let mut dead = Vec::new();
        let mut batches = 0usize;
        let mut last_progress = Instant::now();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n > 0 {
                line_no += 1;
                stats2.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let text = line.trim_end();
                if !text.is_empty() {
                    match schemas::decode_event(text.as_bytes(), &limits) {
                        Ok(e) => batch.push(e),
                        Err(err) => {
                            stats2.invalid.fetch_add(1, Ordering::Relaxed);
                            dead.push(dead_letter(
                                "invalid",
                                &format!("line-{line_no}"),
                                0,
                                serde_json::json!({
                                    "line": line_no,
                                    "code": err.code,
                                    "field": err.field,
                                    "message": err.message,
                                }),
                            ));
                        }
                    }
                }
            }
            if batch.len() >= BATCH || (n == 0 && !batch.is_empty()) {
                stats2
                    .events
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let watermark = driver.watermark();
                for e in driver.push(batch.drain(..)) {
                    stats2.late.fetch_add(1, Ordering::Relaxed);
                    dead.push(late_event(e, watermark));
                }
                worker.step();
                batches += 1;
                if batches.is_multiple_of(BATCHES_IN_FLIGHT)
                    && let Some(t) = driver.time()
                {
                    while probe.less_than(&t) {
                        worker.step();
                    }
                }
                if progress && last_progress.elapsed() >= Duration::from_millis(250) {
                    last_progress = Instant::now();
                    stats2.print_progress(total_bytes, start);
                }
            }
            if !dead.is_empty() {
                sink2.emit(&mut dead);
            }
            if n == 0 {
                break;
            }
        }
        driver.close();
        while !probe.done() {
            worker.step();
        }
        if progress {
            stats2.print_progress(total_bytes, start);
            eprintln!();
        }
        Ok::<(), std::io::Error>(())
    })
    .map_err(ReplayError::Dataflow)?;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ReplayError::Input {
                    path: input.into(),
                    source,
                });
            }
            Err(e) => return Err(ReplayError::Dataflow(e)),
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = sink.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    sink.flush()?;
    let derived = sink
        .counts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(ReplayReport {
        events: stats.events.load(Ordering::Relaxed),
        invalid: stats.invalid.load(Ordering::Relaxed),
        late: stats.late.load(Ordering::Relaxed),
        bytes: stats.bytes.load(Ordering::Relaxed),
        derived,
        elapsed,
    })
}

#[derive(Default)]
struct Stats {
    events: AtomicU64,
    invalid: AtomicU64,
    late: AtomicU64,
    bytes: AtomicU64,
}

impl Stats {
    fn print_progress(&self, total: u64, start: Instant) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let events = self.events.load(Ordering::Relaxed);
        let pct = if total > 0 {
            bytes as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let rate = events as f64 / start.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "\r{pct:5.1}%  {:.1}/{:.1} MB  {events} events  {rate:.0} events/s   ",
            bytes as f64 / 1e6,
            total as f64 / 1e6
        );
    }
}
