//! Derived events as files, one per type: NDJSON (`DIR/<type>.ndjson`) or
//! Avro object container files (`DIR/<type>.avro`, [`Format::Avro`]). The
//! output of `replay`, and in `serve` an optional archive of every derived
//! event (`derived.dir`) that survives restarts (files are appended to,
//! made durable before a checkpoint completes, and a line or block a crash
//! left half written is cut). With checkpoints the files are exactly once:
//! a restore cuts what it derives again ([`crate::file_journal`]).

use crate::config::OutputFormat as Format;
use crate::dataflow::{DerivedSink, Pending, SinkError};
use crate::file_journal::{Journal, Range};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Serialized events of one batch per type, and how many, indexed by the
/// type's position in the catalogue (`Payload::type_index`, no name
/// comparisons per event): kept per thread between batches so that
/// serializing reuses their capacity.
type Buffers = Vec<(Vec<u8>, u64)>;

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// One type's open file.
pub(crate) struct Open {
    w: BufWriter<File>,
    /// The file's length, with what `w` holds.
    len: u64,
    /// Its header and sync marker ([`Format::Avro`]).
    container: Option<schemas::container::Container>,
}

/// Writes derived events, one file per type.
pub struct FileSink {
    pub(crate) dir: PathBuf,
    /// `""`, or `.p<i>` in process i of a cluster (each process writes what
    /// its own workers derived; the union is the output).
    pub(crate) suffix: String,
    /// Resuming from a checkpoint: append to the files (after cutting a line
    /// a crash left half written) instead of truncating them.
    pub(crate) resume: bool,
    pub(crate) files: Mutex<HashMap<&'static str, Open>>,
    pub(crate) counts: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) error: Mutex<Option<SinkError>>,
    /// With checkpoints: which ranges hold which time (locked after
    /// `files`).
    journal: Mutex<Option<Journal>>,
    /// Write only these types (`None`: every type), by catalogue index.
    only: Option<Vec<bool>>,
    pub(crate) format: Format,
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
            journal: Mutex::new(None),
            only: None,
            format: Format::Ndjson,
        })
    }

    /// Notes which ranges of the files hold which dataflow time, so that
    /// [`DerivedSink::restore`] from a checkpoint cuts what the restored
    /// dataflow derives again (with checkpoints only).
    pub fn journaled(self) -> Result<FileSink, SinkError> {
        if !self.resume {
            // The files start empty: so does what the journal knows.
            let old = crate::file_journal::path(&self.dir, &self.suffix);
            match std::fs::remove_file(&old) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SinkError::File {
                        path: old,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        let journal = Journal::open(&self.dir, &self.suffix).map_err(|source| SinkError::File {
            path: self.dir.clone(),
            source,
        })?;
        *lock(&self.journal) = Some(journal);
        Ok(self)
    }

    /// Writes `format` (default NDJSON).
    pub fn format(mut self, format: Format) -> FileSink {
        self.format = format;
        self
    }

    fn path(&self, ty: &str) -> PathBuf {
        self.dir
            .join(format!("{ty}{}.{}", self.suffix, self.format.extension()))
    }

    /// Writes only the types in `only` (`None`: every type); the others
    /// are neither serialized nor counted.
    pub fn only(mut self, only: Option<Vec<&'static str>>) -> FileSink {
        self.only = only.map(|o| {
            schemas::payload::TYPES
                .iter()
                .map(|t| o.contains(t))
                .collect()
        });
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

    fn write(&self, time: Option<u64>, events: &mut Vec<schemas::Event>) -> Result<(), SinkError> {
        BUFFERS.with_borrow_mut(|buffers| {
            // Reused from the last batch (their capacity, not their bytes).
            buffers.resize_with(schemas::payload::TYPES.len(), Default::default);
            for (buf, n) in buffers.iter_mut() {
                buf.clear();
                *n = 0;
            }
            self.write_with(time, events, buffers)
        })
    }

    fn write_with(
        &self,
        time: Option<u64>,
        events: &mut Vec<schemas::Event>,
        buffers: &mut Buffers,
    ) -> Result<(), SinkError> {
        // Serialize outside the lock (workers do it in parallel), one buffer
        // per type; then one locked write per type.
        for e in events.drain(..) {
            let index = e.data.type_index();
            if self.only.as_ref().is_some_and(|o| !o[index]) {
                continue;
            }
            let (buf, n) = &mut buffers[index];
            match self.format {
                Format::Ndjson => {
                    serde_json::to_writer(&mut *buf, &e).map_err(|err| SinkError::File {
                        path: self.dir.clone(),
                        source: err.into(),
                    })?;
                    buf.push(b'\n');
                }
                Format::Avro => {
                    schemas::binary::encode_into(&e, buf).map_err(|err| SinkError::File {
                        path: self.path(e.event_type()),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
                    })?;
                }
            }
            *n += 1;
        }
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut journal = lock(&self.journal);
        for (index, (buf, n)) in buffers.iter().enumerate() {
            let (ty, n) = (schemas::payload::TYPES[index], *n);
            if n == 0 {
                continue;
            }
            let path = || self.path(ty);
            let err = |source| SinkError::File {
                path: path(),
                source,
            };
            if !files.contains_key(ty) {
                let (f, fresh) = match (self.resume, self.format) {
                    (false, _) => File::create(path()).map(|f| (f, true)),
                    (true, Format::Ndjson) => open_for_resume(&path()).map(|f| (f, false)),
                    (true, Format::Avro) => open_avro_for_resume(&path(), ty),
                }
                .map_err(err)?;
                let mut len = f.metadata().map_err(err)?.len();
                let mut w = BufWriter::with_capacity(1 << 20, f);
                let container =
                    (self.format == Format::Avro).then(|| schemas::container::Container::new(ty));
                if let Some(c) = container.as_ref().filter(|_| fresh) {
                    w.write_all(c.header()).map_err(err)?;
                    len += c.header().len() as u64;
                }
                files.insert(ty, Open { w, len, container });
            }
            if let Some(Open { w, len, container }) = files.get_mut(ty) {
                let written = match container {
                    None => w.write_all(buf).map(|()| buf.len()),
                    Some(c) => {
                        let prefix = schemas::container::block_prefix(n, buf.len());
                        w.write_all(&prefix)
                            .and_then(|()| w.write_all(buf))
                            .and_then(|()| w.write_all(c.sync()))
                            .map(|()| prefix.len() + buf.len() + c.sync().len())
                    }
                }
                .map_err(err)? as u64;
                if let Some(j) = journal.as_mut() {
                    j.record(Range {
                        ty: ty.to_owned(),
                        offset: *len,
                        len: written,
                        time,
                    })
                    .map_err(|source| self.journal_error(source))?;
                }
                *len += written;
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
        for (ty, Open { w, .. }) in files.iter_mut() {
            let err = |source| SinkError::File {
                path: self.path(ty),
                source,
            };
            w.flush().map_err(err)?;
            if durable {
                w.get_ref().sync_data().map_err(err)?;
            }
        }
        if durable && let Some(j) = lock(&self.journal).as_mut() {
            j.sync().map_err(|source| self.journal_error(source))?;
        }
        Ok(())
    }

    fn journal_error(&self, source: std::io::Error) -> SinkError {
        SinkError::File {
            path: crate::file_journal::path(&self.dir, &self.suffix),
            source,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens (or creates) an output file to read and append to, as it is.
fn open_to_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)
}

/// Opens an output file to append to after a crash, first cutting what
/// follows its last complete line.
fn open_for_resume(path: &Path) -> std::io::Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_to_append(path)?;
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

impl FileSink {
    fn emit_stamped(&self, time: Option<u64>, events: &mut Vec<schemas::Event>) {
        if let Err(e) = self.write(time, events) {
            let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(e);
        }
    }
}

impl DerivedSink for FileSink {
    /// Not stamped: kept by every restore.
    fn emit(&self, events: &mut Vec<schemas::Event>) {
        self.emit_stamped(None, events);
    }

    fn emit_at(&self, time: u64, events: &mut Vec<schemas::Event>) {
        self.emit_stamped(Some(time), events);
    }

    /// Noted like outputs at `stamp`: a restore from it or an older
    /// barrier cuts them (it dead-letters them again).
    fn emit_input(&self, stamp: Option<u64>, events: &mut Vec<schemas::Event>) {
        self.emit_stamped(stamp, events);
    }

    fn sync(&self, _barrier: u64) -> Result<(), SinkError> {
        self.flush_files(true)
    }

    /// No restore goes back before `barrier` any more: the journal forgets
    /// what it can no longer have to cut.
    fn commit(&self, barrier: u64) -> Result<(), SinkError> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        match lock(&self.journal).as_mut() {
            Some(j) => j
                .rotate(barrier, |ty| files.get(ty).map(|o| o.len))
                .map_err(|source| self.journal_error(source)),
            None => Ok(()),
        }
    }

    /// Before the dataflow restored from `barrier` writes: cuts from the
    /// files what it derives again.
    fn restore(&self, barrier: Option<u64>, _pending: Option<Pending>) -> Result<(), SinkError> {
        // Files opened already are written out and closed: they are opened
        // again (at their new length) by the next write.
        self.flush_files(false)?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.clear();
        match lock(&self.journal).as_mut() {
            Some(j) => j
                .restore(barrier, |ty| self.path(ty))
                .map_err(|source| self.journal_error(source)),
            None => Ok(()),
        }
    }
}

/// Opens an Avro container file to append to after a crash: cuts what
/// follows its last whole block (the last sync marker: the header ends with
/// one, and so does every block written whole). Whether the file is new
/// (its header still to write). A file that is not this type's container
/// is refused, not appended to.
fn open_avro_for_resume(path: &Path, ty: &str) -> std::io::Result<(File, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = open_to_append(path)?;
    let container = schemas::container::Container::new(ty);
    let (header, sync) = (container.header(), container.sync());
    let len = f.metadata()?.len();
    let mut start = vec![0u8; len.min(header.len() as u64) as usize];
    f.read_exact(&mut start)?;
    let keep = if !header.starts_with(&start) {
        let refused = container.complete_prefix(&start).err();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refused.map_or_else(|| "not an Avro container".to_owned(), |e| e.to_string()),
        ));
    } else if start.len() < header.len() {
        0 // a crash while the header was written
    } else {
        let floor = header.len() as u64;
        let mut keep = floor;
        let mut end = len;
        let mut chunk = Vec::new();
        while end > floor {
            let from = end.saturating_sub(1 << 16).max(floor);
            // 15 bytes past the chunk: a marker across its end.
            let to = (end + 15).min(len);
            chunk.resize((to - from) as usize, 0);
            f.seek(SeekFrom::Start(from))?;
            f.read_exact(&mut chunk)?;
            if let Some(i) = chunk.windows(16).rposition(|w| w == sync) {
                keep = from + i as u64 + 16;
                break;
            }
            end = from;
        }
        keep
    };
    f.set_len(keep)?;
    f.seek(SeekFrom::End(0))?;
    Ok((f, keep == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::DerivedSink;
    use schemas::container::Container;

    fn ended(i: i64) -> schemas::Event {
        schemas::decode_value(
            serde_json::json!({
                "id": format!("d-{i}"), "type": "writing.session_ended", "ts": 1_767_600_000_000i64 + i,
                "user_id": "u1", "data": {
                    "session_id": format!("s-{i}"), "start_ts": 1_767_600_000_000i64,
                    "end_ts": 1_767_600_000_000i64 + i, "events": i, "words": 3, "wpm": 1.5,
                    "active_ms": 1, "paused_ms": 0, "flow_ms": 0, "longest_flow_ms": 0,
                    "pasted_words": 0, "reason": "gap"
                }
            }),
            &schemas::Limits::default(),
        )
        .expect("a valid event")
    }

    fn write(dir: &Path, resume: bool, events: std::ops::Range<i64>) {
        let sink = FileSink::new(dir, String::new(), resume)
            .expect("sink")
            .format(Format::Avro);
        // One block per event: a cut can fall in any of them.
        for i in events {
            sink.emit(&mut vec![ended(i)]);
        }
        assert!(sink.take_error().is_none(), "{:?}", sink.take_error());
        sink.flush().expect("flushed");
    }

    fn read(path: &Path) -> Vec<i64> {
        let c = Container::new("writing.session_ended");
        c.read(&std::fs::read(path).expect("file"))
            .expect("a whole container")
            .iter()
            .map(|e| e.ts - 1_767_600_000_000)
            .collect()
    }

    /// A file cut anywhere (in its header, in a block, between blocks), as a
    /// kill leaves it, is resumed after its last whole block.
    #[test]
    fn an_avro_file_cut_anywhere_resumes_after_its_last_whole_block() {
        let dir = std::env::temp_dir().join(format!("inkstream-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, false, 0..3);
        let path = dir.join("writing.session_ended.avro");
        let whole = std::fs::read(&path).expect("file");
        let c = Container::new("writing.session_ended");
        let header = c.header().len();
        // Where each block ends.
        let mut ends = vec![header];
        for n in 1..=3 {
            ends.push(
                whole[header..]
                    .windows(16)
                    .enumerate()
                    .filter(|(_, w)| *w == c.sync())
                    .nth(n - 1)
                    .map(|(i, _)| header + i + 16)
                    .expect("a block end"),
            );
        }
        assert_eq!(ends[3], whole.len());
        for cut in (0..whole.len())
            .step_by(7)
            .chain([header, ends[1], ends[2]])
        {
            std::fs::write(&path, &whole[..cut]).expect("cut");
            write(&dir, true, 10..12);
            let blocks = ends.iter().filter(|e| **e <= cut).count().saturating_sub(1);
            let mut expected: Vec<i64> = (0..blocks as i64).collect();
            expected.extend([10, 11]);
            assert_eq!(
                read(&path),
                expected,
                "cut at byte {cut} of {}",
                whole.len()
            );
        }
        // Not this type's container: refused, the file left as it was.
        std::fs::write(&path, b"{\"not\":\"avro\"}\n").expect("write");
        let sink = FileSink::new(&dir, String::new(), true)
            .expect("sink")
            .format(Format::Avro);
        sink.emit(&mut vec![ended(1)]);
        let error = sink.take_error().expect("refused").to_string();
        assert!(error.contains("magic"), "{error}");
        assert_eq!(std::fs::read(&path).expect("file"), b"{\"not\":\"avro\"}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The `ts` offsets of the events in an NDJSON file, in file order.
    fn read_ndjson(path: &Path) -> Vec<i64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a whole line");
                v["ts"].as_i64().expect("ts") - 1_767_600_000_000
            })
            .collect()
    }

    fn journaled(dir: &Path, resume: bool, format: Format) -> FileSink {
        FileSink::new(dir, String::new(), resume)
            .expect("sink")
            .format(format)
            .journaled()
            .expect("journal")
    }

    /// What a run writes before it is killed, with its times interleaved as
    /// the workers write them (a time past a barrier before the barrier's
    /// checkpoint is taken), then what a restore from barrier 10 leaves:
    /// the outputs stamped before 10 and the dead letters no restore reads
    /// again, in their order; written on from there, the file is what an
    /// uninterrupted run writes, each event once.
    fn restore_cuts_exactly_what_is_derived_again(format: Format) {
        let dir = std::env::temp_dir().join(format!(
            "inkstream-journal-{}-{}",
            std::process::id(),
            format.extension()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join(format!("writing.session_ended.{}", format.extension()));
        let read = |p: &Path| match format {
            Format::Ndjson => read_ndjson(p),
            Format::Avro => read(p),
        };
        {
            let sink = journaled(&dir, false, format);
            sink.emit_at(5, &mut vec![ended(1)]);
            sink.emit_at(12, &mut vec![ended(2)]); // past the barrier, early
            sink.emit(&mut vec![ended(3)]); // unstamped: always kept
            sink.emit_at(7, &mut vec![ended(4)]);
            sink.emit_input(Some(10), &mut vec![ended(5)]); // read after 10's cut
            sink.emit_input(Some(4), &mut vec![ended(6)]); // before 10's cut
            sink.sync(10).expect("synced");
            sink.emit_at(15, &mut vec![ended(7)]);
            sink.emit_at(11, &mut vec![ended(8)]);
            // Killed after a flush (the worst case: every byte on disk).
            sink.flush().expect("flushed");
            assert!(sink.take_error().is_none());
        }
        assert_eq!(read(&path), [1, 2, 3, 4, 5, 6, 7, 8]);
        let sink = journaled(&dir, true, format);
        sink.restore(Some(10), None).expect("restored");
        assert_eq!(
            read(&path),
            [1, 3, 4, 6],
            "cut exactly what is derived again"
        );
        sink.emit_at(12, &mut vec![ended(2)]);
        sink.emit_at(11, &mut vec![ended(8)]);
        sink.sync(20).expect("synced");
        // Rotated at a completed checkpoint, then killed again and restored
        // from 20: the ranges under the new floor stay.
        sink.commit(20).expect("rotated");
        sink.emit_at(25, &mut vec![ended(9)]);
        sink.flush().expect("flushed");
        drop(sink);
        let sink = journaled(&dir, true, format);
        sink.restore(Some(20), None).expect("restored");
        assert_eq!(read(&path), [1, 3, 4, 6, 2, 8]);
        // A fresh start (no checkpoint restored) keeps everything.
        sink.emit_at(30, &mut vec![ended(9)]);
        sink.flush().expect("flushed");
        drop(sink);
        let sink = journaled(&dir, true, format);
        sink.restore(None, None).expect("restored");
        assert_eq!(read(&path), [1, 3, 4, 6, 2, 8, 9]);
        drop(sink);
        let hidden: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert_eq!(hidden, [".inkstream-journal"], "no temporary file left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restore_cuts_exactly_what_is_derived_again_ndjson() {
        restore_cuts_exactly_what_is_derived_again(Format::Ndjson);
    }

    #[test]
    fn a_restore_cuts_exactly_what_is_derived_again_avro() {
        restore_cuts_exactly_what_is_derived_again(Format::Avro);
    }

    /// What follows the last range the journal knows (written after it was
    /// last made durable) is cut, a line or block cut short included.
    #[test]
    fn what_the_journal_does_not_know_past_its_last_range_is_cut() {
        let dir =
            std::env::temp_dir().join(format!("inkstream-journal-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("writing.session_ended.ndjson");
        {
            let sink = journaled(&dir, false, Format::Ndjson);
            sink.emit_at(5, &mut vec![ended(1)]);
            sink.sync(10).expect("synced");
        }
        // Written, but its journal line lost with the process; and half a line.
        let mut bytes = std::fs::read(&path).expect("file");
        let whole = bytes.clone();
        bytes.extend_from_slice(&whole);
        bytes.extend_from_slice(&whole[..9]);
        std::fs::write(&path, &bytes).expect("write");
        let sink = journaled(&dir, true, Format::Ndjson);
        sink.restore(Some(10), None).expect("restored");
        assert_eq!(std::fs::read(&path).expect("file"), whole);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A crash after a restore cut a file and before it wrote the journal
    /// anew: the next restore finds the file cut already (the lengths the
    /// restore was cutting to are noted before it cuts) and leaves it, where
    /// the old journal's ranges would have cut it again, at the wrong places.
    #[test]
    fn a_restore_a_crash_interrupted_is_not_cut_twice() {
        let dir =
            std::env::temp_dir().join(format!("inkstream-journal-twice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("writing.session_ended.ndjson");
        let journal = dir.join(".inkstream-journal");
        {
            let sink = journaled(&dir, false, Format::Ndjson);
            sink.emit_at(5, &mut vec![ended(1)]);
            sink.emit_at(12, &mut vec![ended(2)]);
            sink.emit_at(7, &mut vec![ended(3)]);
            sink.emit_at(14, &mut vec![ended(4)]);
            sink.emit_at(8, &mut vec![ended(5)]);
            sink.sync(10).expect("synced");
        }
        let old_journal = std::fs::read(&journal).expect("journal");
        let sink = journaled(&dir, true, Format::Ndjson);
        sink.restore(Some(10), None).expect("restored");
        drop(sink);
        assert_eq!(read_ndjson(&path), [1, 3, 5]);
        // The state such a crash leaves: the file cut, the old journal, and
        // the lengths being cut to (what the new journal says).
        let new_journal = std::fs::read(&journal).expect("journal");
        std::fs::write(dir.join(".inkstream-journal.next"), &new_journal).expect("next");
        std::fs::write(&journal, &old_journal).expect("old journal");
        let sink = journaled(&dir, true, Format::Ndjson);
        sink.restore(Some(10), None).expect("restored again");
        assert_eq!(read_ndjson(&path), [1, 3, 5], "cut twice");
        sink.emit_at(12, &mut vec![ended(2)]);
        sink.flush().expect("flushed");
        assert_eq!(read_ndjson(&path), [1, 3, 5, 2]);
        assert!(!dir.join(".inkstream-journal.next").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
