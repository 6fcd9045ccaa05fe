//! Checkpoints: consistent snapshots of every operator's state together
//! with the input position they correspond to, so that a killed dataflow
//! resumes where it was instead of starting over or losing open sessions.
//!
//! **The cut.** Checkpoint `B` is taken at the dataflow time `B` (a multiple
//! of `checkpoint.interval` of event time). Input records are stamped with
//! the watermark's epoch at arrival, so "stamp < B" splits the input in two
//! by arrival: the input driver notes its position when its capability first
//! moves to `B` or beyond (every record it sent before has a smaller stamp).
//! Each operator holds back containers stamped `B` or later, and once its
//! input frontier reaches `B` (every earlier record has arrived) it finishes
//! the work due before `B` and writes its state, including the records it
//! parked for later epochs (Chandy–Lamport: the channel state is in the
//! snapshot). Operators downstream of others see the same cut because every
//! derived event is stamped at or after the input that caused it.
//!
//! **Completion.** Once the output probe has passed `B`, every operator of
//! every worker has written its part and every derived event stamped before
//! `B` has reached the sink; the process then flushes its sink durably and
//! writes `COMPLETE.p<i>`. A checkpoint with the markers of all processes is
//! complete; the latest complete one is restored at start. Older ones are
//! deleted.
//!
//! **Restore.** Operators load their state, the input driver its watermark,
//! seen ids and position, and the input is re-read from that position. What
//! was derived between the checkpoint and the crash is derived again with the
//! same deterministic ids, so sinks deduplicate it (at-least-once output,
//! exactly-once state). A restore needs the same worker and process counts
//! (state is partitioned by worker): each completion marker records them,
//! and [`Checkpoints::open`] refuses a checkpoint taken with other counts,
//! naming both, instead of silently restoring only some of the parts.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// `[checkpoint]`: off unless a directory or a store is given
/// (`replay --checkpoint-dir`; in `serve`, `checkpoint.store` or `checkpoint.dir`).
///
/// Parts are bincode (any key type, compact); they are read back only by
/// the same build, which is the point of a checkpoint, not an archive.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Where checkpoints are kept: `"redis"` (shared by every instance of
    /// the dataflow group, so a standby that takes the lease resumes from
    /// them) or `"dir"` (this host's disk). Unset: Redis when the log is in
    /// Redis, else the directory. Setting it turns checkpoints on.
    pub store: Option<CheckpointStoreKind>,
    /// The directory of the `dir` store (setting it turns checkpoints on).
    pub dir: Option<PathBuf>,
    /// Event time between checkpoints (default 5 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub interval: Duration,
}

/// Where checkpoints are kept (see [`CheckpointConfig::store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointStoreKind {
    Redis,
    Dir,
}

impl CheckpointConfig {
    /// Whether checkpoints are on, and where (`redis_log`: the log is in
    /// Redis). `None`: off.
    pub fn resolved(&self, redis_log: bool) -> Option<CheckpointStoreKind> {
        match (self.store, &self.dir) {
            (Some(kind), _) => Some(kind),
            (None, None) => None,
            (None, Some(_)) if redis_log => Some(CheckpointStoreKind::Redis),
            (None, Some(_)) => Some(CheckpointStoreKind::Dir),
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            store: None,
            dir: None,
            interval: Duration::from_secs(300),
        }
    }
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {source}")]
    Format {
        path: PathBuf,
        source: bincode::Error,
    },
    #[error("checkpoint {barrier}: a part failed to write; not completed")]
    Incomplete { barrier: u64 },
    #[error(transparent)]
    Store(#[from] connectors::checkpoint_store::CheckpointStoreError),
    #[error(
        "checkpoint {barrier} in {place} was taken with {saved} but this run has {now}: its state \
         is partitioned by worker and cannot be restored with other counts (rescaling is not \
         supported); start with the same counts, or {remedy} to start empty"
    )]
    Rescale {
        /// The directory, or the Redis keys.
        place: String,
        barrier: u64,
        saved: Layout,
        now: Layout,
        /// How to start empty instead.
        remedy: String,
    },
}

/// How a dataflow is spread: timely workers per process and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub workers: usize,
    pub processes: usize,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} worker(s) ({} process(es) × {} worker(s))",
            self.workers * self.processes,
            self.processes,
            self.workers
        )
    }
}

impl schemas::Classify for CheckpointError {
    fn fault(&self) -> schemas::Fault {
        match self {
            // The disk under `checkpoint.dir`.
            CheckpointError::Io { .. } | CheckpointError::Incomplete { .. } => {
                schemas::Fault::External
            }
            // Written by another build (parts are only read by the same one).
            CheckpointError::Format { .. } => schemas::Fault::Internal,
            // The operator changed the worker or process count.
            CheckpointError::Rescale { .. } => schemas::Fault::Config,
            CheckpointError::Store(e) => e.fault(),
        }
    }
}

/// Where a run's checkpoints live.
#[derive(Debug)]
enum Backend {
    Dir(PathBuf),
    Redis(Box<connectors::checkpoint_store::RedisCheckpointStore>),
}

/// The checkpoints of a run (in a directory or in Redis).
#[derive(Debug)]
pub struct Checkpoints {
    backend: Backend,
    interval_ms: u64,
    /// The checkpoint restored at start, if any.
    restored: Option<u64>,
    /// Barriers a part of which failed to write (never completed).
    failed: Mutex<Vec<u64>>,
    /// The parts this process writes at every barrier (operator instances,
    /// input drivers): a checkpoint is complete only with all of them.
    parts: Mutex<std::collections::BTreeSet<String>>,
    /// Parts written by this process, per barrier not yet completed.
    written: Mutex<std::collections::BTreeMap<u64, std::collections::BTreeSet<String>>>,
    /// This run's layout, written into every completion marker.
    layout: Layout,
}

/// Event time between barriers, rounded up to whole epochs.
fn interval_ms(config: &CheckpointConfig, epoch_ms: u64) -> u64 {
    let ms = config.interval.as_millis() as u64;
    let epoch = epoch_ms.max(1);
    ms.div_ceil(epoch).max(1) * epoch
}

impl Checkpoints {
    /// Opens (creating) `dir` and finds the latest complete checkpoint;
    /// refuses one taken with another [`Layout`].
    pub fn open(
        config: &CheckpointConfig,
        epoch_ms: u64,
        layout: Layout,
    ) -> Result<Option<Checkpoints>, CheckpointError> {
        let Some(dir) = config.dir.clone() else {
            return Ok(None);
        };
        std::fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
            path: dir.clone(),
            source,
        })?;
        let interval_ms = interval_ms(config, epoch_ms);
        let restored = complete_barriers(&dir)?.into_iter().max();
        if let Some(barrier) = restored
            && let Some(saved) = saved_layout(&dir.join(format!("ckpt-{barrier:020}")))
            && saved != layout
        {
            return Err(CheckpointError::Rescale {
                place: dir.display().to_string(),
                barrier,
                saved,
                now: layout,
                remedy: "move the directory aside".to_owned(),
            });
        }
        Ok(Some(Checkpoints {
            backend: Backend::Dir(dir),
            interval_ms,
            restored,
            failed: Mutex::new(Vec::new()),
            parts: Mutex::new(Default::default()),
            written: Mutex::new(Default::default()),
            layout,
        }))
    }

    /// Opens the checkpoints of a dataflow group kept in Redis and finds the
    /// latest complete one; refuses one taken with another [`Layout`].
    /// `process` forgets its completions of unfinished newer checkpoints.
    pub fn open_redis(
        store: connectors::checkpoint_store::RedisCheckpointStore,
        config: &CheckpointConfig,
        epoch_ms: u64,
        layout: Layout,
        process: usize,
    ) -> Result<Checkpoints, CheckpointError> {
        let latest = store.latest()?;
        if let Some(l) = latest {
            let saved = Layout {
                workers: l.workers,
                processes: l.processes,
            };
            if saved != layout {
                return Err(CheckpointError::Rescale {
                    place: format!("Redis (keys {}:*)", store.base()),
                    barrier: l.barrier,
                    saved,
                    now: layout,
                    remedy: format!("delete the keys {}:*", store.base()),
                });
            }
        }
        store.forget_unfinished(process)?;
        Ok(Checkpoints {
            backend: Backend::Redis(Box::new(store)),
            interval_ms: interval_ms(config, epoch_ms),
            restored: latest.map(|l| l.barrier),
            failed: Mutex::new(Vec::new()),
            parts: Mutex::new(Default::default()),
            written: Mutex::new(Default::default()),
            layout,
        })
    }

    /// The checkpoint state was restored from.
    pub fn restored(&self) -> Option<u64> {
        self.restored
    }

    /// The first barrier strictly after `time`.
    pub fn next_barrier(&self, time: u64) -> u64 {
        (time / self.interval_ms + 1) * self.interval_ms
    }

    /// The latest barrier at or before `time`. When time jumps over several
    /// barriers at once (the first event, an idle gap), only this one is
    /// taken: everyone who sees the jump picks the same one.
    pub fn barrier_at_or_before(&self, time: u64) -> u64 {
        time / self.interval_ms * self.interval_ms
    }

    /// Registers a part this process writes at every barrier it sees.
    pub fn expect(&self, name: &str) {
        self.parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }

    fn barrier_dir(&self, dir: &Path, barrier: u64) -> PathBuf {
        dir.join(format!("ckpt-{barrier:020}"))
    }

    /// [`Checkpoints::load`] of a part whose shape changed: the current
    /// shape `T` first, then the older `O` (converted); when neither
    /// decodes, the error of the current shape.
    pub fn load_or_older<T, O>(&self, name: &str) -> Result<Option<T>, CheckpointError>
    where
        T: DeserializeOwned,
        O: DeserializeOwned + Into<T>,
    {
        match self.load::<T>(name) {
            Ok(part) => Ok(part),
            Err(now) => match self.load::<O>(name) {
                Ok(Some(older)) => Ok(Some(older.into())),
                _ => Err(now),
            },
        }
    }

    /// Reads part `name` of the restored checkpoint (`None`: nothing restored,
    /// or this part was not written).
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, CheckpointError> {
        let Some(b) = self.restored else {
            return Ok(None);
        };
        let (path, bytes) = match &self.backend {
            Backend::Dir(dir) => {
                let path = self.barrier_dir(dir, b).join(format!("{name}.bin"));
                match std::fs::read(&path) {
                    Ok(bytes) => (path, bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(CheckpointError::Io { path, source }),
                }
            }
            Backend::Redis(store) => match store.get(b, name)? {
                Some(bytes) => (PathBuf::from(format!("redis:{b}/{name}")), bytes),
                None => return Ok(None),
            },
        };
        bincode::deserialize(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Format { path, source })
    }

    /// Writes part `name` of checkpoint `barrier` (atomically: a crash
    /// leaves the old file or the new one, never half of one). A failure is
    /// remembered so that the checkpoint is never marked complete.
    pub fn save<T: Serialize>(&self, barrier: u64, name: &str, value: &T) {
        match self.try_save(barrier, name, value) {
            Ok(()) => {
                self.written
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(barrier)
                    .or_default()
                    .insert(name.to_owned());
            }
            Err(error) => {
                tracing::error!(%error, barrier, part = name, "checkpoint part not written");
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(barrier);
            }
        }
    }

    fn try_save<T: Serialize>(
        &self,
        barrier: u64,
        name: &str,
        value: &T,
    ) -> Result<(), CheckpointError> {
        let bytes = bincode::serialize(value).map_err(|source| CheckpointError::Format {
            path: PathBuf::from(name),
            source,
        })?;
        let dir = match &self.backend {
            Backend::Dir(dir) => self.barrier_dir(dir, barrier),
            Backend::Redis(store) => return Ok(store.put(barrier, name, &bytes)?),
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{name}.bin"));
        let tmp = dir.join(format!("{name}.bin.tmp"));
        write_synced(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Marks this process's part of checkpoint `barrier` done (call after the
    /// output probe passed it and the sink is flushed); deletes checkpoints
    /// older than the newest complete one. Returns whether the checkpoint
    /// was complete (every part of this process present).
    pub fn complete(
        &self,
        barrier: u64,
        process: usize,
        processes: usize,
    ) -> Result<bool, CheckpointError> {
        if self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&barrier)
        {
            return Err(CheckpointError::Incomplete { barrier });
        }
        // A part missing: some instance saw time jump past this barrier to a
        // later one. Not an error; this barrier just is no checkpoint.
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&barrier)
            .cloned()
            .unwrap_or_default();
        let missing = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|name| !written.contains(name));
        if missing {
            return Ok(false);
        }
        // Completions come in barrier order: older ones are settled.
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|b, _| *b >= barrier);
        let dir = match &self.backend {
            Backend::Dir(dir) => dir,
            Backend::Redis(store) => {
                store.complete(barrier, process, processes, self.layout.workers)?;
                return Ok(true);
            }
        };
        let path = self
            .barrier_dir(dir, barrier)
            .join(format!("COMPLETE.p{process}"));
        std::fs::create_dir_all(self.barrier_dir(dir, barrier)).map_err(|source| {
            CheckpointError::Io {
                path: dir.clone(),
                source,
            }
        })?;
        let marker = format!("{processes} {}", self.layout.workers);
        write_synced(&path, marker.as_bytes()).map_err(|source| CheckpointError::Io {
            path: path.clone(),
            source,
        })?;
        let complete = complete_barriers(dir)?;
        if let Some(newest) = complete.iter().max() {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let older = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("ckpt-"))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|b| b < *newest && Some(b) != self.restored);
                if older {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(true)
    }

    /// Whether checkpoint `barrier` is complete in every one of `processes`
    /// (this process completed its share): with one process, at once.
    pub fn complete_everywhere(
        &self,
        barrier: u64,
        processes: usize,
    ) -> Result<bool, CheckpointError> {
        if processes <= 1 {
            return Ok(true);
        }
        match &self.backend {
            Backend::Dir(dir) => Ok(complete_barriers(dir)?.contains(&barrier)),
            Backend::Redis(store) => {
                if store.latest()?.is_none_or(|l| l.barrier < barrier) {
                    return Ok(false);
                }
                // The pointer another process moved, held by the replicas
                // `redis.min_replica_acks` asks for before anything relies on it.
                store.replicated(barrier)?;
                Ok(true)
            }
        }
    }

    /// Deletes every checkpoint (the run finished: nothing to resume).
    pub fn clear(&self) {
        let dir = match &self.backend {
            Backend::Dir(dir) => dir,
            Backend::Redis(store) => {
                if let Err(error) = store.clear() {
                    tracing::warn!(%error, "checkpoints not cleared");
                }
                return;
            }
        };
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("ckpt-"))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A crash point for tests, in debug builds only: with
/// `INKSTREAM_CRASH_AT=<point>` in its environment the process aborts when
/// it reaches `point`, as a kill -9 at exactly the worst moment would. A
/// release build has none.
pub fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("INKSTREAM_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("INKSTREAM_CRASH_AT={point}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The layout a checkpoint was taken with: its completion marker holds
/// `<processes> <workers per process>`. Markers of older builds hold only
/// the process count; the worker count is then read off the operators'
/// parts (`<operator>-w<global worker index>.bin`, one per worker, all
/// present in a complete checkpoint). `None`: not known either way.
fn saved_layout(barrier_dir: &Path) -> Option<Layout> {
    let text = std::fs::read_to_string(barrier_dir.join("COMPLETE.p0")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<usize>().ok());
    let processes = fields.next()??.max(1);
    if let Some(workers) = fields.next().flatten() {
        return Some(Layout { workers, processes });
    }
    let total = std::fs::read_dir(barrier_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let (_, w) = name.strip_suffix(".bin")?.rsplit_once("-w")?;
            w.parse::<usize>().ok()
        })
        .max()?
        + 1;
    Some(Layout {
        workers: total.div_ceil(processes),
        processes,
    })
}

/// Barriers whose checkpoint has the completion marker of every process.
fn complete_barriers(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(barrier) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("ckpt-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let marker = |p: usize| entry.path().join(format!("COMPLETE.p{p}"));
        let Ok(text) = std::fs::read_to_string(marker(0)) else {
            continue;
        };
        let processes: usize = text
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(1);
        if (1..processes).all(|p| marker(p).exists()) {
            out.push(barrier);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_with(dir: &Path, layout: Layout) -> Result<Option<Checkpoints>, CheckpointError> {
        Checkpoints::open(
            &CheckpointConfig {
                dir: Some(dir.to_path_buf()),
                interval: Duration::from_millis(250),
                store: None,
            },
            100,
            layout,
        )
    }

    /// Two processes of one worker each.
    fn open(dir: &Path) -> Checkpoints {
        let two = Layout {
            workers: 1,
            processes: 2,
        };
        open_with(dir, two).unwrap().unwrap()
    }

    /// A part written in an older shape restores through its conversion;
    /// one that is neither shape is refused with the current shape's error.
    #[test]
    fn a_part_in_its_older_shape_is_read_through_the_older_type() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Now {
            a: u64,
            b: Option<u32>,
        }
        #[derive(Serialize, serde::Deserialize)]
        struct Before {
            a: u64,
        }
        impl From<Before> for Now {
            fn from(x: Before) -> Now {
                Now { a: x.a, b: None }
            }
        }
        let dir = std::env::temp_dir().join(format!("inkstream-older-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let one = Layout {
            workers: 1,
            processes: 1,
        };
        let c = open_with(&dir, one).unwrap().unwrap();
        for name in ["old", "new", "bad"] {
            c.expect(name);
        }
        c.save(300, "old", &Before { a: 7 });
        c.save(300, "new", &Now { a: 8, b: Some(1) });
        c.save(300, "bad", &1u8);
        assert!(c.complete(300, 0, 1).unwrap());
        let c = open_with(&dir, one).unwrap().unwrap();
        assert_eq!(c.restored(), Some(300));
        let old = c.load_or_older::<Now, Before>("old").unwrap();
        assert_eq!(old, Some(Now { a: 7, b: None }));
        let new = c.load_or_older::<Now, Before>("new").unwrap();
        assert_eq!(new, Some(Now { a: 8, b: Some(1) }));
        let bad = c.load_or_older::<Now, Before>("bad").unwrap_err();
        assert!(matches!(bad, CheckpointError::Format { .. }), "{bad}");
        assert_eq!(c.load_or_older::<Now, Before>("absent").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_checkpoint_taken_with_other_worker_counts_is_refused_naming_both() {
        let dir = std::env::temp_dir().join(format!("inkstream-rescale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let four = Layout {
            workers: 4,
            processes: 1,
        };
        let c = open_with(&dir, four).unwrap().unwrap();
        c.expect("part");
        c.save(300, "part", &1u8);
        assert!(c.complete(300, 0, 1).unwrap());
        assert_eq!(
            open_with(&dir, four).unwrap().unwrap().restored(),
            Some(300)
        );
        let two = Layout {
            workers: 2,
            processes: 1,
        };
        let error = open_with(&dir, two).unwrap_err().to_string();
        assert!(
            error.contains("taken with 4 worker(s)") && error.contains("this run has 2 worker(s)"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_marker_of_an_older_build_without_the_worker_count_is_checked_by_its_parts() {
        let dir =
            std::env::temp_dir().join(format!("inkstream-rescale-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ckpt = dir.join(format!("ckpt-{:020}", 300));
        std::fs::create_dir_all(&ckpt).unwrap();
        // Written by 2 workers in 1 process; the marker holds only "1".
        std::fs::write(ckpt.join("COMPLETE.p0"), "1").unwrap();
        for part in ["Sessions-w0.bin", "Sessions-w1.bin", "reader-0.bin"] {
            std::fs::write(ckpt.join(part), b"").unwrap();
        }
        let one = Layout {
            workers: 1,
            processes: 1,
        };
        let error = open_with(&dir, one).unwrap_err().to_string();
        assert!(
            error.contains("taken with 2 worker(s)") && error.contains("this run has 1 worker(s)"),
            "{error}"
        );
        let two = Layout {
            workers: 2,
            processes: 1,
        };
        assert_eq!(open_with(&dir, two).unwrap().unwrap().restored(), Some(300));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_checkpoint_marked_complete_by_every_process_is_restored() {
        let dir = std::env::temp_dir().join(format!("inkstream-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = open(&dir);
        assert_eq!(
            c.next_barrier(0),
            300,
            "interval rounded up to whole epochs"
        );
        assert_eq!(c.next_barrier(300), 600);
        c.expect("part");
        c.save(300, "part", &vec![1, 2, 3]);
        assert!(!c.complete(600, 0, 2).unwrap(), "no parts written at 600");
        assert!(c.complete(300, 0, 2).unwrap());
        assert_eq!(open(&dir).restored(), None, "process 1 has not completed");
        c.complete(300, 1, 2).unwrap();
        let again = open(&dir);
        assert_eq!(again.restored(), Some(300));
        assert_eq!(again.load::<Vec<i32>>("part").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(again.load::<Vec<i32>>("absent").unwrap(), None);
        // A newer one, half written, is ignored; a complete newer one replaces it.
        again.save(600, "part", &vec![4]);
        assert_eq!(open(&dir).restored(), Some(300));
        assert!(again.complete(600, 0, 2).unwrap());
        assert_eq!(open(&dir).restored(), Some(300));
        assert!(again.complete(600, 1, 2).unwrap());
        assert_eq!(open(&dir).restored(), Some(600));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
