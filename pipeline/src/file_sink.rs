//! Derived events as NDJSON files, one per type (`DIR/<type>.ndjson`): the
//! output of `replay`, and in `serve` an optional archive of every derived
//! event (`derived.dir`) that survives restarts (files are appended to,
//! made durable before a checkpoint completes, and a line a crash left
//! half written is cut).

use crate::dataflow::{DerivedSink, SinkError};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Serialized events of one batch per type, and how many: kept per thread
/// between batches so that serializing reuses their capacity.
type Buffers = BTreeMap<&'static str, (Vec<u8>, u64)>;

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// Writes derived events as NDJSON, one file per type.
pub struct FileSink {
    pub(crate) dir: PathBuf,
    /// `""`, or `.p<i>` in process i of a cluster (each process writes what
    /// its own workers derived; the union is the output).
    pub(crate) suffix: String,
    /// Resuming from a checkpoint: append to the files (after cutting a line
    /// a crash left half written) instead of truncating them.
    pub(crate) resume: bool,
    pub(crate) files: Mutex<HashMap<&'static str, BufWriter<File>>>,
    pub(crate) counts: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) error: Mutex<Option<SinkError>>,
    /// Write only these types (`None`: every type).
    pub(crate) only: Option<Vec<&'static str>>,
}

impl FileSink {
    /// Writes into `dir` (created), appending to existing files when
    /// `resume`, with `suffix` before `.ndjson` (`.p<i>` in a cluster).
    pub fn new(dir: &Path, suffix: String, resume: bool) -> Result<FileSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(|source| SinkError::File {
            path: dir.into(),
            source,
        })?;
        Ok(FileSink {
            dir: dir.into(),
            suffix,
            resume,
            files: Mutex::new(HashMap::new()),
            counts: Mutex::new(BTreeMap::new()),
            error: Mutex::new(None),
            only: None,
        })
    }

    /// Writes only the types in `only` (`None`: every type); the others
    /// are neither serialized nor counted.
    pub fn only(mut self, only: Option<Vec<&'static str>>) -> FileSink {
        self.only = only;
        self
    }

    /// Events written, by type.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first write error, if any (emit cannot return one).
    pub fn take_error(&self) -> Option<SinkError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn write(&self, events: &mut Vec<schemas::Event>) -> Result<(), SinkError> {
        BUFFERS.with_borrow_mut(|buffers| {
            // Reused from the last batch (their capacity, not their bytes).
            for (buf, n) in buffers.values_mut() {
                buf.clear();
                *n = 0;
            }
            self.write_with(events, buffers)
        })
    }

    fn write_with(
        &self,
        events: &mut Vec<schemas::Event>,
        buffers: &mut Buffers,
    ) -> Result<(), SinkError> {
        // Serialize outside the lock (workers do it in parallel), one buffer
        // per type; then one locked write per type.
        for e in events.drain(..) {
            let ty = e.event_type();
            if self.only.as_ref().is_some_and(|o| !o.contains(&ty)) {
                continue;
            }
            let (buf, n) = buffers.entry(ty).or_default();
            serde_json::to_writer(&mut *buf, &e).map_err(|err| SinkError::File {
                path: self.dir.clone(),
                source: err.into(),
            })?;
            buf.push(b'\n');
            *n += 1;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (ty, (buf, n)) in buffers.iter() {
            let (ty, n) = (*ty, *n);
            if n == 0 {
                continue;
            }
            let path = || self.dir.join(format!("{ty}{}.ndjson", self.suffix));
            if !files.contains_key(ty) {
                let f = if self.resume {
                    open_for_resume(&path())
                } else {
                    File::create(path())
                }
                .map_err(|source| SinkError::File {
                    path: path(),
                    source,
                })?;
                files.insert(ty, BufWriter::with_capacity(1 << 20, f));
            }
            if let Some(w) = files.get_mut(ty) {
                w.write_all(buf).map_err(|source| SinkError::File {
                    path: path(),
                    source,
                })?;
            }
            *counts.entry(ty).or_default() += n;
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<(), SinkError> {
        self.flush_files(false)
    }

    fn flush_files(&self, durable: bool) -> Result<(), SinkError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for (ty, w) in files.iter_mut() {
            let err = |source| SinkError::File {
                path: self.dir.join(format!("{ty}{}.ndjson", self.suffix)),
                source,
            };
            w.flush().map_err(err)?;
            if durable {
                w.get_ref().sync_data().map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Opens an output file to append to after a crash, first cutting what
/// follows its last complete line.
fn open_for_resume(path: &Path) -> std::io::Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut keep = len;
    let mut buf = [0u8; 4096];
    while keep > 0 {
        let start = keep.saturating_sub(buf.len() as u64);
        f.seek(SeekFrom::Start(start))?;
        let chunk = &mut buf[..(keep - start) as usize];
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        keep = start;
    }
    f.set_len(keep)?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

impl DerivedSink for FileSink {
    fn emit(&self, events: &mut Vec<schemas::Event>) {
        if let Err(e) = self.write(events) {
            let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
    }

    fn sync(&self, _barrier: u64) -> Result<(), SinkError> {
        self.flush_files(true)
    }
}
