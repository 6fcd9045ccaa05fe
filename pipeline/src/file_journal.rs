//! The journal that makes `derived.dir` (and `replay --out` with
//! checkpoints) exactly once across a crash: which byte ranges of each
//! output file hold the outputs of which dataflow time.
//!
//! A restore from the checkpoint at barrier `b` derives again every output
//! stamped at or after `b`. Those outputs may already be in the files:
//! workers write what they derive as they go, and a time past `b` can be
//! written before the checkpoint at `b` is even taken. So the sink notes,
//! for every write, the file, the range and the time (`None`: the input's
//! dead letters, which carry no time and are kept), and at the restore
//! [`Journal::restore`] cuts exactly the ranges stamped at or after `b`,
//! and whatever follows the last range the journal knows (written after it
//! was last made durable, so stamped after `b` too) — Flink's file sink
//! truncates to the checkpoint's valid length the same way; here the ranges
//! can interleave, so a file is rewritten when a kept range follows a cut
//! one.
//!
//! Bytes before a file's *floor* are kept whatever happens: the Avro
//! header, outputs older than every checkpoint a restore can go back to
//! (moved under the floor when a checkpoint completes, [`Journal::rotate`]),
//! and files written before the journal existed.
//!
//! The journal is a text file, `<dir>/.inkstream-journal<suffix>` (hidden,
//! like Hadoop's and Spark's own files next to their outputs), one line
//! per record: `r <type> <offset> <len> <time or ->` or `f <type> <offset>`.
//! It is made durable after the files, at every checkpoint.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The journal of a sink writing into `dir` with `suffix`.
pub(crate) fn path(dir: &Path, suffix: &str) -> PathBuf {
    dir.join(format!(".inkstream-journal{suffix}"))
}

/// One write: `len` bytes at `offset` of type `ty`'s file, stamped `time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub ty: String,
    pub offset: u64,
    pub len: u64,
    pub time: Option<u64>,
}

/// See the module doc.
pub(crate) struct Journal {
    path: PathBuf,
    w: BufWriter<File>,
    floors: BTreeMap<String, u64>,
    /// Every range at or past its type's floor, in write order.
    ranges: Vec<Range>,
}

impl Journal {
    /// The journal of a sink writing into `dir` with `suffix` (read as it
    /// is; appended to).
    pub fn open(dir: &Path, suffix: &str) -> std::io::Result<Journal> {
        let path = path(dir, suffix);
        let (floors, ranges) = match File::open(&path) {
            Ok(f) => parse(BufReader::new(f))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e),
        };
        let w = BufWriter::new(append(&path)?);
        Ok(Journal {
            path,
            w,
            floors,
            ranges,
        })
    }

    /// Notes a write (buffered; durable at the next [`Journal::sync`]).
    pub fn record(&mut self, r: Range) -> std::io::Result<()> {
        write_range(&mut self.w, &r)?;
        self.ranges.push(r);
        Ok(())
    }

    /// Makes what was noted durable (after the files it describes).
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.w.flush()?;
        self.w.get_ref().sync_data()
    }

    /// The checkpoint at `b` is complete everywhere: no restore goes back
    /// before it, so a type's ranges before its first one stamped at or
    /// after `b` can never be cut. They go under its floor (`len(ty)`, the
    /// file's length, when no range is at or after `b`), and the journal is
    /// rewritten with what is left (bounded by one checkpoint's outputs).
    pub fn rotate(&mut self, b: u64, len: impl Fn(&str) -> Option<u64>) -> std::io::Result<()> {
        let mut types: Vec<String> = self.ranges.iter().map(|r| r.ty.clone()).collect();
        types.sort();
        types.dedup();
        for ty in types {
            let first_late = self
                .ranges
                .iter()
                .filter(|r| r.ty == ty && r.time.is_some_and(|t| t >= b))
                .map(|r| r.offset)
                .min();
            let floor = match first_late.or_else(|| len(&ty)) {
                Some(f) => f,
                None => continue,
            };
            self.ranges.retain(|r| r.ty != ty || r.offset >= floor);
            self.floors.insert(ty, floor);
        }
        self.rewrite()
    }

    /// Before a dataflow restored from the checkpoint at `barrier` (`None`:
    /// it starts afresh, so everything written so far stays) writes
    /// anything: cuts from each file what it will derive again (see the
    /// module doc). `path(ty)` is the file of type `ty`. Afterwards every
    /// byte left is under its file's floor.
    pub fn restore(
        &mut self,
        barrier: Option<u64>,
        path: impl Fn(&str) -> PathBuf,
    ) -> std::io::Result<()> {
        let mut types: Vec<String> = self
            .floors
            .keys()
            .cloned()
            .chain(self.ranges.iter().map(|r| r.ty.clone()))
            .collect();
        types.sort();
        types.dedup();
        // A restore a crash interrupted left the lengths it was cutting the
        // files to: a file already at its length is done (a cut is one
        // rename or truncation: a file is either cut or as it was, and as
        // it was, the journal still describes it).
        let next = self.path.with_file_name(format!(
            "{}.next",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let done = match File::open(&next) {
            Ok(f) => parse(BufReader::new(f))?.0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let mut floors = BTreeMap::new();
        let mut cuts = Vec::new();
        for ty in types {
            let p = path(&ty);
            let Ok(len) = std::fs::metadata(&p).map(|m| m.len()) else {
                continue; // no file: nothing to keep or cut
            };
            let mut ranges: Vec<&Range> = self.ranges.iter().filter(|r| r.ty == ty).collect();
            ranges.sort_by_key(|r| r.offset);
            let keep = match barrier {
                Some(b) if done.get(&ty) != Some(&len) => {
                    let floor = self
                        .floors
                        .get(&ty)
                        .copied()
                        .or_else(|| ranges.first().map(|r| r.offset))
                        .unwrap_or(len)
                        .min(len);
                    plan(len, floor, &ranges, b)
                }
                _ => vec![(0, len)],
            };
            floors.insert(ty, keep.iter().map(|(_, l)| l).sum::<u64>());
            cuts.push((p, len, keep));
        }
        // First what the files become, then the cuts, then the journal.
        write_journal(&next, &floors, &[])?;
        for (p, len, keep) in cuts {
            cut(&p, len, &keep)?;
        }
        self.floors = floors;
        self.ranges.clear();
        self.rewrite()?;
        std::fs::remove_file(&next)
    }

    /// Writes the journal anew (floors and ranges) and appends from there.
    fn rewrite(&mut self) -> std::io::Result<()> {
        write_journal(&self.path, &self.floors, &self.ranges)?;
        self.w = BufWriter::new(append(&self.path)?);
        Ok(())
    }
}

/// Writes a journal at `path` atomically (a temporary file renamed).
fn write_journal(
    path: &Path,
    floors: &BTreeMap<String, u64>,
    ranges: &[Range],
) -> std::io::Result<()> {
    let tmp = hidden_tmp(path);
    let mut w = BufWriter::new(File::create(&tmp)?);
    for (ty, floor) in floors {
        writeln!(w, "f {ty} {floor}")?;
    }
    for r in ranges {
        write_range(&mut w, r)?;
    }
    w.flush()?;
    w.get_ref().sync_data()?;
    std::fs::rename(&tmp, path)
}

/// What to keep of a file of `len` bytes: `[0, floor)` and, after it, the
/// ranges stamped before `b` (or not stamped), in order; not the others,
/// nor whatever no range covers from the first gap on (written after the
/// journal was last made durable).
fn plan(len: u64, floor: u64, ranges: &[&Range], b: u64) -> Vec<(u64, u64)> {
    let mut keep: Vec<(u64, u64)> = vec![(0, floor)];
    let mut at = floor;
    for r in ranges.iter().filter(|r| r.offset >= floor) {
        if r.offset != at || r.offset + r.len > len {
            break; // not written whole, or not noted
        }
        if r.time.is_none_or(|t| t < b) {
            match keep.last_mut() {
                Some((s, l)) if *s + *l == r.offset => *l += r.len,
                _ => keep.push((r.offset, r.len)),
            }
        }
        at = r.offset + r.len;
    }
    keep
}

/// Keeps only the `keep` ranges of the file at `p` (`len` bytes): a
/// truncation when they are a prefix, else a copy renamed over it.
fn cut(p: &Path, len: u64, keep: &[(u64, u64)]) -> std::io::Result<()> {
    if let [(0, new_len)] = keep {
        if *new_len < len {
            let f = std::fs::OpenOptions::new().write(true).open(p)?;
            f.set_len(*new_len)?;
            f.sync_data()?;
        }
        return Ok(());
    }
    let tmp = hidden_tmp(p);
    {
        let mut src = File::open(p)?;
        let mut w = BufWriter::new(File::create(&tmp)?);
        for (start, l) in keep {
            src.seek(SeekFrom::Start(*start))?;
            std::io::copy(&mut (&mut src).take(*l), &mut w)?;
        }
        w.flush()?;
        w.get_ref().sync_data()?;
    }
    std::fs::rename(&tmp, p)?;
    if let Some(dir) = p.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `<dir>/.<name>.tmp`: hidden from readers of the directory.
fn hidden_tmp(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let name = name.trim_start_matches('.');
    p.with_file_name(format!(".{name}.tmp"))
}

fn append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn write_range(w: &mut impl Write, r: &Range) -> std::io::Result<()> {
    match r.time {
        Some(t) => writeln!(w, "r {} {} {} {t}", r.ty, r.offset, r.len),
        None => writeln!(w, "r {} {} {} -", r.ty, r.offset, r.len),
    }
}

type Parsed = (BTreeMap<String, u64>, Vec<Range>);

/// Reads a journal; a line a crash cut short (the last, without its
/// newline) is ignored, and so is what follows a line that does not read
/// (nothing after it is trusted). A cut line may still read: `r a 9 1 17`
/// cut to `r a 9 1 1` is a range stamped 1, which a restore would keep
/// (its outputs then twice in the file, once more when derived again).
/// The journal's writer flushes its buffer wherever it fills, so a kill
/// can leave any prefix of a line.
fn parse(mut r: impl BufRead) -> std::io::Result<Parsed> {
    let mut floors = BTreeMap::new();
    let mut ranges = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf)? == 0 || buf.pop() != Some(b'\n') {
            break; // the end, or a line cut short
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            break;
        };
        let words: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match words.as_slice() {
            ["f", ty, _] => match number(2) {
                Some(f) => {
                    floors.insert((*ty).to_owned(), f);
                }
                None => break,
            },
            ["r", ty, _, _, time] => match (number(2), number(3)) {
                (Some(offset), Some(len)) => ranges.push(Range {
                    ty: (*ty).to_owned(),
                    offset,
                    len,
                    time: match *time {
                        "-" => None,
                        t => match t.parse() {
                            Ok(t) => Some(t),
                            Err(_) => break,
                        },
                    },
                }),
                _ => break,
            },
            _ => break,
        }
    }
    Ok((floors, ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ty: &str, offset: u64, len: u64, time: Option<u64>) -> Range {
        Range {
            ty: ty.into(),
            offset,
            len,
            time,
        }
    }

    #[test]
    fn a_line_cut_short_and_what_follows_a_bad_line_are_ignored() {
        let text = "f a 3\nr a 3 4 17\nr a 7 2 -\nr b 0 5 9\nr a 9 1";
        let (floors, ranges) = parse(text.as_bytes()).unwrap();
        assert_eq!(floors, BTreeMap::from([("a".to_owned(), 3)]));
        assert_eq!(
            ranges,
            vec![
                r("a", 3, 4, Some(17)),
                r("a", 7, 2, None),
                r("b", 0, 5, Some(9))
            ]
        );
        let (_, ranges) = parse("r a 0 1 5\nr a x 1 5\nr a 1 1 5\n".as_bytes()).unwrap();
        assert_eq!(ranges, vec![r("a", 0, 1, Some(5))]);
    }

    /// A last line cut inside its time still reads as a range, with an
    /// earlier time: `r a 9 1 17` cut to `r a 9 1 1`. Taken, a restore from
    /// barrier 10 kept that range and derived its outputs again (the kill
    /// tests of `replay_cli` once found a replay's outputs there twice).
    #[test]
    fn a_last_line_cut_inside_its_time_is_ignored() {
        let (_, ranges) = parse("r a 0 9 5\nr a 9 1 1".as_bytes()).unwrap();
        assert_eq!(ranges, vec![r("a", 0, 9, Some(5))]);
        let (_, ranges) = parse("r a 0 9 5\nr a 9 1 17\n".as_bytes()).unwrap();
        assert_eq!(ranges, vec![r("a", 0, 9, Some(5)), r("a", 9, 1, Some(17))]);
    }
}
