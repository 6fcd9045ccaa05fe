//! `inkstream replay`: the dataflow over an NDJSON file, in pure event time.
//!
//! The file is streamed (never held in memory): the workers of the reading
//! process decode it in blocks split at line boundaries ([`blocks`]), worker
//! 0 feeds the blocks in file order at their event time, and waits for the
//! dataflow to catch up every few blocks, so memory is bounded by the
//! in-flight window, not by the file. At end of input every pending window and
//! timer is flushed. Derived events are written as one NDJSON file per type
//! (`OUT/<type>.ndjson`); invalid lines and late events go to
//! `OUT/system.dead_letter.ndjson`.

mod blocks;

use super::{ClusterArgs, toml_string};
use crate::config::Config;
use crate::config::OutputFormat as Format;
use crate::dataflow::{self, DerivedSink, SinkError, WorkerError, dead_letter, late_event};
use crate::file_sink::FileSink;
use crate::runtime::checkpoint::{CheckpointError, Checkpoints};
use blocks::{Blocks, Take};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The flags of `inkstream replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The events, one JSON object per line.
    file: PathBuf,
    /// Output directory: one `<type>.ndjson` (or `<type>.avro`) per
    /// derived event type.
    #[arg(long)]
    out: PathBuf,
    /// How outputs are written (config `derived.format`; default ndjson):
    /// `ndjson`, or `avro` (Avro object container files with the envelope
    /// schema in their header, readable by any Avro tool).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Dataflow worker threads.
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Checkpoint into DIR (config `checkpoint.dir`), and resume from its
    /// latest complete checkpoint if a previous run was killed.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Run only these operators (config `dataflow.operators`; default all):
    /// wpm, sessions, presence, conflicts, team, alerts. `team` also runs
    /// `conflicts` and `alerts` also run `sessions` (they read their
    /// outputs); only what runs derives outputs.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    operators: Vec<String>,
    /// Write only these derived event types (e.g. `writing.session_ended`;
    /// `system.dead_letter` for invalid and late lines). Default: every
    /// type the chosen operators derive, and the dead letters. The report
    /// still counts invalid and late lines.
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    outputs: Vec<String>,
    /// Bytes per block of the file: the workers of the reading process
    /// decode blocks in parallel (split at line boundaries); worker 0 feeds
    /// them to the dataflow in file order, so outputs do not depend on it.
    #[arg(long, default_value_t = BLOCK_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    block_bytes: u64,
    /// How many workers of the reading process decode blocks (default: all
    /// of them; 1: worker 0 alone decodes, as before parallel input).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    decoders: Option<u64>,
}

impl ReplayArgs {
    /// The flags as `--set` overrides of their config keys.
    pub fn overrides(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.cluster.overrides(&mut out);
        if let Some(d) = &self.checkpoint_dir {
            out.push(format!(
                "checkpoint.dir={}",
                toml_string(&d.to_string_lossy())
            ));
        }
        if let Some(f) = self.format {
            out.push(format!("derived.format={}", toml_string(f.extension())));
        }
        if let Some(w) = self.workers {
            out.push(format!("dataflow.workers={w}"));
        }
        if !self.operators.is_empty() {
            let list: Vec<String> = self.operators.iter().map(|o| toml_string(o)).collect();
            out.push(format!("dataflow.operators=[{}]", list.join(",")));
        }
        out
    }

    /// The `--outputs` types, checked against the catalogue (`None`: all).
    pub fn output_types(&self) -> Result<Option<Vec<&'static str>>, ReplayError> {
        if self.outputs.is_empty() {
            return Ok(None);
        }
        self.outputs
            .iter()
            .map(|t| {
                schemas::payload::TYPES
                    .iter()
                    .find(|k| **k == t.as_str())
                    .copied()
                    .ok_or_else(|| ReplayError::UnknownOutput(t.clone()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// `inkstream replay`: [`run`], then the report on stdout.
pub fn main(args: &ReplayArgs, config: &Config) -> Result<(), ReplayError> {
    let only = args.output_types()?;
    if !config.dataflow.operators.is_all() {
        eprintln!("operators: {}", config.dataflow.operators.describe());
    }
    let read = Reading {
        block_bytes: args.block_bytes,
        decoders: args.decoders.map_or(usize::MAX, |d| d as usize),
    };
    let report = run_selected(&args.file, &args.out, config, only, read)?;
    println!(
        "replayed {} events ({:.1} MB) in {:.3} s: {:.0} events/s; {} invalid, {} late, {} duplicates",
        report.events,
        report.bytes as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        report.events_per_second(),
        report.invalid,
        report.late,
        report.duplicates
    );
    let [p50, p99, max] = report.epoch_delay;
    println!(
        "  epoch delay p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; peak RSS {:.1} MB",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        report.peak_rss_bytes as f64 / 1e6
    );
    for (ty, n) in &report.derived {
        println!("  {ty}: {n}");
    }
    Ok(())
}

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
    #[error(
        "--outputs: unknown event type {0:?} (one of `inkstream schemas`' types, e.g. writing.session_ended)"
    )]
    UnknownOutput(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("dataflow failed: {0}")]
    Checkpoint(CheckpointError),
    #[error("dataflow failed: {0}")]
    Dataflow(WorkerError),
}

impl schemas::Classify for ReplayError {
    fn fault(&self) -> schemas::Fault {
        use schemas::Fault;
        match self {
            // The file named on the command line, or the output directory.
            ReplayError::Input { .. }
            | ReplayError::Output { .. }
            | ReplayError::UnknownOutput(_) => Fault::Caller,
            ReplayError::Sink(e) => e.fault(),
            ReplayError::Checkpoint(e) => e.fault(),
            ReplayError::Dataflow(e) => e.fault(),
        }
    }
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
    /// Epoch processing delay: from the input's watermark passing an epoch
    /// (its work is due) to the output frontier passing it (its results
    /// are out), over every epoch the input crossed: p50, p99, max.
    pub epoch_delay: [Duration; 3],
    /// Duplicated event ids the input dropped.
    pub duplicates: u64,
    /// Peak resident set size of the process (VmHWM), bytes.
    pub peak_rss_bytes: u64,
}

impl ReplayReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The reader's part of a checkpoint: where in the file the cut is, and the
/// input driver's state there.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReaderPart {
    /// Lines consumed before the cut.
    line: u64,
    driver: dataflow::DriverState,
}

/// [`ReaderPart`] as written before 2026-12-06 (no dedup key).
#[derive(serde::Deserialize)]
struct ReaderPartV1 {
    line: u64,
    driver: dataflow::DriverBase,
}

impl From<ReaderPartV1> for ReaderPart {
    fn from(p: ReaderPartV1) -> ReaderPart {
        ReaderPart {
            line: p.line,
            driver: p.driver.into(),
        }
    }
}

/// Completes the newest checkpoint the output probe has passed, once this
/// process's sink has made everything before it durable.
fn complete_passed(
    probe: &timely::dataflow::ProbeHandle<u64>,
    checkpoints: &Checkpoints,
    sink: &FileSink,
    last: &mut u64,
    process: usize,
    processes: usize,
) {
    let Some(f) = probe.with_frontier(|f| f.first().copied()) else {
        return;
    };
    if f == 0 {
        return;
    }
    let b = checkpoints.barrier_at_or_before(f - 1);
    if b <= *last || checkpoints.restored().is_some_and(|r| b <= r) {
        return;
    }
    *last = b;
    complete_barrier(checkpoints, sink, b, process, processes);
}

/// Completes this process's part of barrier `b` once `sink` has made
/// everything before it durable; rotates the outputs' journal only when `b`
/// became a checkpoint in every process.
fn complete_barrier(
    checkpoints: &Checkpoints,
    sink: &FileSink,
    b: u64,
    process: usize,
    processes: usize,
) {
    if let Err(error) = sink.sync(b) {
        tracing::error!(%error, "outputs not made durable; checkpoint skipped");
        return;
    }
    match checkpoints.complete(b, process, processes) {
        Ok(true) => tracing::debug!(barrier = b, "checkpoint complete"),
        // A part missing (an operator's frontier jumped past `b` to a later
        // barrier): `b` is no checkpoint. A resume goes back to the one
        // before, so the outputs' journal must keep what it would cut: it
        // was rotated here all the same (with one process
        // `complete_everywhere` is true at once), and a resume kept
        // outputs it derived again (replay_cli's kill test, now and then).
        Ok(false) => return,
        Err(error) => {
            tracing::error!(%error, "checkpoint not completed");
            return;
        }
    }
    // Once every process completed it, no resume goes back before it: the
    // outputs' journal forgets what it can no longer have to cut.
    if let Ok(true) = checkpoints.complete_everywhere(b, processes)
        && let Err(error) = sink.commit(b)
    {
        tracing::warn!(%error, "the outputs' journal not rotated");
    }
}

/// Bytes per block of the file that one worker decodes (`--block-bytes`).
pub const BLOCK_BYTES: u64 = 1 << 20;
/// Decoded blocks per worker that may wait to be fed (bounds memory).
const BLOCKS_AHEAD_PER_WORKER: usize = 2;
/// Blocks fed before waiting for the dataflow to catch up (bounds memory).
const BATCHES_IN_FLIGHT: usize = 8;

/// Replays `input` through the dataflow, writing derived streams into `out`.
pub fn run(input: &Path, out: &Path, config: &Config) -> Result<ReplayReport, ReplayError> {
    run_selected(input, out, config, None, Reading::default())
}

/// How the file is read: blocks of `block_bytes`, decoded by the first
/// `decoders` workers of the reading process.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub block_bytes: u64,
    pub decoders: usize,
}

impl Default for Reading {
    fn default() -> Reading {
        Reading {
            block_bytes: BLOCK_BYTES,
            decoders: usize::MAX,
        }
    }
}

/// [`run`], writing only the derived types in `only` (`None`: all), the
/// file read as `read` says.
pub fn run_selected(
    input: &Path,
    out: &Path,
    config: &Config,
    only: Option<Vec<&'static str>>,
    read: Reading,
) -> Result<ReplayReport, ReplayError> {
    let file = File::open(input).map_err(|source| ReplayError::Input {
        path: input.into(),
        source,
    })?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::create_dir_all(out).map_err(|source| ReplayError::Output {
        path: out.into(),
        source,
    })?;
    let epoch_ms = config.dataflow.epoch.as_millis().max(1) as u64;
    let checkpoints = Checkpoints::open(&config.checkpoint, epoch_ms, config.dataflow.layout())
        .map_err(ReplayError::Checkpoint)?
        .map(Arc::new);
    let resume = checkpoints.as_ref().and_then(|c| c.restored());
    if let Some(b) = resume {
        tracing::info!(barrier = b, "resuming from checkpoint");
    }
    let suffix = if config.dataflow.processes() > 1 {
        format!(".p{}", config.dataflow.process_index)
    } else {
        String::new()
    };
    let sink = FileSink::new(out, suffix, resume.is_some())?
        .only(only)
        .format(config.derived.format);
    // With checkpoints the outputs are exactly once: a resume first cuts
    // what it derives again.
    let sink = match &checkpoints {
        Some(_) => {
            let sink = sink.journaled()?;
            if resume.is_some() {
                sink.restore(resume, None)?;
            }
            sink
        }
        None => sink,
    };
    let sink = Arc::new(sink);
    let threads = config.dataflow.workers.max(1);
    let blocks = Arc::new(Blocks::new(
        file,
        total_bytes,
        read.block_bytes,
        BLOCKS_AHEAD_PER_WORKER * threads,
    ));
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal();

    let timely_config = config.dataflow.timely_config();
    let mut cfg = config.clone();
    // Pure event time: at the end of the file every session and window ends.
    cfg.dataflow.flush_at_end = true;
    let (sink2, stats2, blocks2) = (sink.clone(), stats.clone(), blocks.clone());
    let ckpt = checkpoints.clone();
    let (process, processes) = (config.dataflow.process_index, config.dataflow.processes());
    let guards = timely::execute(timely_config, move |worker| {
        // Worker 0 feeds the file to the dataflow (one arrival order, so
        // live figures match a single-worker run exactly); every worker of
        // its process decodes blocks of the file for it, and computes.
        let reads = worker.index() == 0;
        // The first worker of each process completes its process's checkpoints.
        let completes = worker.index() % threads == 0;
        let (driver, probe) =
            dataflow::install(worker, &cfg, sink2.clone(), reads, ckpt.clone(), None);
        let mut last_completed = 0u64;
        // Whether this worker decodes blocks for worker 0.
        let decodes = worker.index() < read.decoders;
        let Some(mut driver) = driver else {
            while !probe.done() {
                // Decode a block for worker 0 when one is due, and compute.
                if decodes && blocks2.decode_one() {
                    worker.step();
                } else {
                    worker.step_or_park(Some(Duration::from_millis(1)));
                }
                if let (true, Some(c)) = (completes, ckpt.as_ref()) {
                    complete_passed(&probe, c, &sink2, &mut last_completed, process, processes);
                }
            }
            return Ok(());
        };
        let mut line_no = 0u64;
        if let Some(c) = ckpt.as_ref() {
            c.expect("reader");
            match c.load_or_older::<ReaderPart, ReaderPartV1>("reader") {
                Ok(Some(part)) => {
                    // Skip what the checkpoint already covers.
                    line_no = part.line;
                    driver.restore(part.driver);
                    eprintln!("resuming from checkpoint at line {line_no}");
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        blocks2.start_after_lines(line_no)?;
        let mut dead = Vec::new();
        let mut batches = 0usize;
        let mut last_progress = Instant::now();
        // Input times the watermark reached, and when: for epoch delays.
        let mut due: std::collections::VecDeque<(u64, Instant)> = Default::default();
        let mut delays = Vec::new();
        loop {
            let block = match blocks2.take()? {
                Take::Block(block) => block,
                Take::End => break,
                Take::NotYet => {
                    // Decode a block (the next one, or one ahead) or, when
                    // the other workers have them all, compute.
                    if !blocks2.decode_one() {
                        worker.step();
                    }
                    continue;
                }
            };
            stats2.bytes.fetch_add(block.bytes, Ordering::Relaxed);
            let stamp = driver.last_crossed();
            for (at, err) in block.invalid {
                let line = line_no + at + 1;
                stats2.invalid.fetch_add(1, Ordering::Relaxed);
                dead.push(dead_letter(
                    "invalid",
                    &format!("line-{line}"),
                    0,
                    serde_json::json!({
                        "line": line,
                        "code": err.code,
                        "field": err.field,
                        "message": err.message,
                    }),
                ));
            }
            line_no += block.lines;
            if !block.events.is_empty() {
                stats2
                    .events
                    .fetch_add(block.events.len() as u64, Ordering::Relaxed);
                let watermark = driver.watermark();
                for e in driver.push_shared(block.events) {
                    stats2.late.fetch_add(1, Ordering::Relaxed);
                    dead.push(late_event(e, watermark));
                }
                if let Some(c) = ckpt.as_ref() {
                    for b in driver.take_crossed() {
                        let part = ReaderPart {
                            line: line_no,
                            driver: driver.state(),
                        };
                        c.save(b, "reader", &part);
                    }
                }
                if let Some(t) = driver.time()
                    && due.back().is_none_or(|(last, _)| *last < t)
                {
                    due.push_back((t, Instant::now()));
                }
                worker.step();
                if let Some(c) = ckpt.as_ref() {
                    complete_passed(&probe, c, &sink2, &mut last_completed, process, processes);
                }
                batches += 1;
                if batches.is_multiple_of(BATCHES_IN_FLIGHT)
                    && let Some(t) = driver.time()
                {
                    while probe.less_than(&t) {
                        // Waiting for the dataflow: decode ahead meanwhile.
                        if !blocks2.decode_one() {
                            worker.step();
                        }
                    }
                }
                // An input time is done once the output frontier reached it.
                while let Some((t, at)) = due.front().copied() {
                    if probe.less_than(&t) {
                        break;
                    }
                    delays.push(at.elapsed());
                    due.pop_front();
                }
                if progress && last_progress.elapsed() >= Duration::from_millis(250) {
                    last_progress = Instant::now();
                    stats2.print_progress(total_bytes, start);
                }
            }
            if !dead.is_empty() {
                sink2.emit_input(stamp, &mut dead);
            }
        }
        stats2
            .duplicates
            .store(driver.duplicates(), Ordering::Relaxed);
        driver.close();
        while !probe.done() {
            worker.step();
        }
        delays.extend(due.iter().map(|(_, at)| at.elapsed()));
        stats2
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut delays);
        if progress {
            stats2.print_progress(total_bytes, start);
            eprintln!();
        }
        Ok::<(), std::io::Error>(())
    })
    .map_err(|e| ReplayError::Dataflow(WorkerError(e)))?;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ReplayError::Input {
                    path: input.into(),
                    source,
                });
            }
            Err(e) => return Err(ReplayError::Dataflow(WorkerError(e))),
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = sink.take_error() {
        return Err(e.into());
    }
    sink.flush()?;
    // Finished: nothing to resume any more.
    if let Some(c) = checkpoints.as_ref()
        && process == 0
    {
        c.clear();
    }
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
        epoch_delay: {
            let mut d =
                std::mem::take(&mut *stats.delays.lock().unwrap_or_else(|p| p.into_inner()));
            d.sort_unstable();
            let at = |q: f64| {
                d.get(((d.len() as f64 * q) as usize).min(d.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or_default()
            };
            [at(0.5), at(0.99), d.last().copied().unwrap_or_default()]
        },
        duplicates: stats.duplicates.load(Ordering::Relaxed),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

#[derive(Default)]
struct Stats {
    events: AtomicU64,
    invalid: AtomicU64,
    late: AtomicU64,
    bytes: AtomicU64,
    duplicates: AtomicU64,
    /// Epoch processing delays (see [`ReplayReport::epoch_delay`]).
    delays: Mutex<Vec<Duration>>,
}

/// Peak resident set size (Linux `VmHWM`), or 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::checkpoint::{CheckpointConfig, Layout};

    fn ended(i: i64) -> schemas::Event {
        schemas::decode_value(
            serde_json::json!({
                "id": format!("d-{i}"), "type": "writing.session_ended", "ts": i,
                "user_id": "u1", "data": {
                    "session_id": format!("s-{i}"), "start_ts": 0, "end_ts": i, "events": 1,
                    "words": 1, "wpm": 1.0, "active_ms": 1, "paused_ms": 0, "flow_ms": 0,
                    "longest_flow_ms": 0, "pasted_words": 0, "reason": "gap"
                }
            }),
            &schemas::Limits::default(),
        )
        .expect("a valid event")
    }

    /// A barrier with a part missing (an operator's frontier jumped past it)
    /// is no checkpoint: a resume goes back to the one before, and must
    /// still be able to cut what was derived after that one. The journal
    /// was rotated at such a barrier all the same (with one process
    /// `complete_everywhere` is true at once), so a resume kept outputs it
    /// derived again: replay_cli's kill test found copies now and then.
    #[test]
    fn a_barrier_with_a_part_missing_leaves_the_outputs_journal_as_it_was() {
        let root = std::env::temp_dir().join(format!("inkstream-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = CheckpointConfig {
            dir: Some(root.join("ckpt")),
            interval: Duration::from_millis(1000),
            ..CheckpointConfig::default()
        };
        let layout = Layout {
            workers: 1,
            processes: 1,
        };
        let checkpoints = Checkpoints::open(&config, 1, layout)
            .expect("checkpoints open")
            .expect("a checkpoint directory");
        checkpoints.expect("reader");
        checkpoints.expect("operator");
        let out = root.join("out");
        let sink = FileSink::new(&out, String::new(), false)
            .and_then(FileSink::journaled)
            .expect("sink");
        // Barrier 1000 is a checkpoint: what came before it stays for good.
        sink.emit_at(500, &mut vec![ended(500)]);
        checkpoints.save(1000, "reader", &1u64);
        checkpoints.save(1000, "operator", &1u64);
        complete_barrier(&checkpoints, &sink, 1000, 0, 1);
        // After it, an output; then barrier 2000 misses the operator's part.
        sink.emit_at(1500, &mut vec![ended(1500)]);
        checkpoints.save(2000, "reader", &2u64);
        complete_barrier(&checkpoints, &sink, 2000, 0, 1);
        assert!(sink.take_error().is_none(), "{:?}", sink.take_error());
        // A resume goes back to 1000 and derives 1500 again: it is cut.
        sink.restore(Some(1000), None).expect("restored");
        let kept: Vec<i64> = std::fs::read_to_string(out.join("writing.session_ended.ndjson"))
            .expect("the outputs")
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["ts"]
                    .as_i64()
                    .expect("ts")
            })
            .collect();
        assert_eq!(
            kept,
            [500],
            "a resume from the checkpoint before a barrier that is none kept what it derives again"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
