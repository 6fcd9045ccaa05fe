//! Parallel input for `inkstream replay`: the file is cut into blocks of
//! about `block` bytes, split at line boundaries (a line belongs to the block
//! holding its first byte, as Hadoop splits text), and every worker of the
//! reading process decodes whichever block is next (JSON decode + validate,
//! the bulk of the input's work). Worker 0 takes the decoded blocks in file
//! order and feeds them to the input driver, so the arrival order — hence
//! the watermark, lateness, duplicates, arrival sequence numbers and every
//! live output — is exactly that of one worker reading the file alone.
//!
//! At most `ahead` decoded blocks wait for worker 0, so memory stays bounded
//! by a few blocks whatever the file size.

use schemas::{DecodeError, Event, Limits};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// One decoded block, in file order.
pub struct Decoded {
    /// The valid events, in file order, shared already (the allocation and
    /// the copy happen on the decoding worker, not on worker 0).
    pub events: Vec<Arc<Event>>,
    /// Invalid lines: (line number within the block, from 0, the error).
    pub invalid: Vec<(u64, DecodeError)>,
    /// Lines in the block (blank ones included, as `read_until` counts).
    pub lines: u64,
    /// Bytes of the lines in the block.
    pub bytes: u64,
}

/// The shared work list of one process's workers.
pub struct Blocks {
    file: File,
    /// File size when the replay started.
    len: u64,
    block: u64,
    ahead: u64,
    limits: Limits,
    state: Mutex<State>,
    /// Read buffers for reuse, instead of a fresh zeroed megabyte per block
    /// (−10 MB peak RSS with sessions only; no time measured on a warm page
    /// cache).
    buffers: Mutex<Vec<Vec<u8>>>,
}

#[derive(Default)]
struct State {
    /// Byte offset the blocks start at (after what a checkpoint covers);
    /// `None` until worker 0 has set it.
    base: Option<u64>,
    /// The next block nobody has claimed yet.
    next_claim: u64,
    /// The next block worker 0 takes.
    next_take: u64,
    ready: BTreeMap<u64, Decoded>,
    /// The first read error, reported by worker 0.
    error: Option<std::io::Error>,
}

/// What [`Blocks::take`] found.
pub enum Take {
    /// The next block, in file order.
    Block(Decoded),
    /// The next block is not decoded yet.
    NotYet,
    /// Every block was taken.
    End,
}

impl Blocks {
    /// `block`: target bytes per block (≥ 1); `ahead`: decoded blocks that
    /// may wait for worker 0.
    pub fn new(file: File, len: u64, block: u64, ahead: usize) -> Blocks {
        Blocks {
            file,
            len,
            block: block.max(1),
            ahead: ahead.max(1) as u64,
            limits: Limits::default(),
            state: Mutex::new(State::default()),
            buffers: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the blocks after the first `lines` lines (what a checkpoint
    /// covers; 0 without one). Called once, by worker 0.
    pub fn start_after_lines(&self, lines: u64) -> std::io::Result<()> {
        let base = if lines == 0 {
            0
        } else {
            offset_of_line(&self.file, lines)?
        };
        self.lock().base = Some(base);
        Ok(())
    }

    /// Claims and decodes the next block if one is due; `false` when there
    /// is none to decode now (not started, far enough ahead, or the end).
    pub fn decode_one(&self) -> bool {
        let (b, start) = {
            let mut s = self.lock();
            let Some(base) = s.base else { return false };
            let b = s.next_claim;
            let start = base + b * self.block;
            if start >= self.len || b >= s.next_take + self.ahead || s.error.is_some() {
                return false;
            }
            s.next_claim += 1;
            (b, start)
        };
        let first = start == self.lock().base.unwrap_or(0);
        let end = (start + self.block).min(self.len);
        let mut buf = self.take_buffer();
        let result = read_block(&self.file, start, end, self.len, first, &mut buf)
            .map(|bytes| decode_block(bytes, &self.limits));
        self.return_buffer(buf);
        let mut s = self.lock();
        match result {
            Ok(decoded) => {
                s.ready.insert(b, decoded);
            }
            Err(e) => {
                s.error.get_or_insert(e);
            }
        }
        true
    }

    fn take_buffer(&self) -> Vec<u8> {
        let mut pool = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn return_buffer(&self, buf: Vec<u8>) {
        let mut pool = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        pool.push(buf);
    }

    /// The next block in file order, for worker 0.
    pub fn take(&self) -> std::io::Result<Take> {
        let mut s = self.lock();
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        let Some(base) = s.base else {
            return Ok(Take::NotYet);
        };
        let b = s.next_take;
        if let Some(d) = s.ready.remove(&b) {
            s.next_take += 1;
            return Ok(Take::Block(d));
        }
        if base + b * self.block >= self.len {
            return Ok(Take::End);
        }
        Ok(Take::NotYet)
    }
}

/// The bytes of the lines that start in `[start, end)`: from the first line
/// start at or after `start` (`start` itself when `first`) to the end of the
/// last line starting before `end`, read past `end` to its newline. Read
/// into `buf` (its previous contents are dropped, its allocation reused).
pub fn read_block<'b>(
    file: &File,
    start: u64,
    end: u64,
    len: u64,
    first: bool,
    buf: &'b mut Vec<u8>,
) -> std::io::Result<&'b [u8]> {
    // One byte before the range tells whether a line starts at `start`.
    let from = if first { start } else { start - 1 };
    // Every byte is read over: no need to zero a reused buffer first.
    let want = (end - from) as usize;
    if buf.len() < want {
        buf.resize(want, 0);
    } else {
        buf.truncate(want);
    }
    file.read_exact_at(buf, from)?;
    let skip = if first {
        0
    } else {
        match memchr::memchr(b'\n', buf) {
            Some(i) => i + 1,
            // No line starts in this block: it is inside a long line.
            None => return Ok(&buf[..0]),
        }
    };
    if buf.len() > skip && buf.last() != Some(&b'\n') && end < len {
        // The last line goes on past the block: read to its newline, in
        // steps from 4 KiB (lines are short; a fixed 64 KiB read 6 % more
        // of the file than the blocks themselves) up to 64 KiB.
        let mut at = end;
        let mut step = 4096;
        while at < len {
            let n = ((len - at) as usize).min(step);
            let old = buf.len();
            buf.resize(old + n, 0);
            file.read_exact_at(&mut buf[old..], at)?;
            if let Some(i) = memchr::memchr(b'\n', &buf[old..]) {
                buf.truncate(old + i + 1);
                break;
            }
            at += n as u64;
            step = (step * 2).min(64 * 1024);
        }
    }
    Ok(&buf[skip..])
}

/// Decodes the lines of a block (see [`read_block`]).
pub fn decode_block(bytes: &[u8], limits: &Limits) -> Decoded {
    let mut decoded = Decoded {
        events: Vec::with_capacity(bytes.len() / 160 + 1),
        invalid: Vec::new(),
        lines: 0,
        bytes: bytes.len() as u64,
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        let line_no = decoded.lines;
        decoded.lines += 1;
        rest = next;
        let text = line.trim_ascii_end();
        if text.is_empty() {
            continue;
        }
        match schemas::decode_event(text, limits) {
            Ok(e) => decoded.events.push(Arc::new(e)),
            Err(err) => decoded.invalid.push((line_no, err)),
        }
    }
    decoded
}

/// The byte offset where line `lines` (counted from 0) starts: the end of
/// the first `lines` lines (the file's end if it has fewer).
fn offset_of_line(file: &File, lines: u64) -> std::io::Result<u64> {
    // `read_at`: independent of (and not moving) the file's cursor.
    let mut buf = vec![0u8; 1 << 20];
    let (mut offset, mut left) = (0u64, lines);
    while left > 0 {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        let mut used = n;
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            left -= 1;
            if left == 0 {
                used = i + 1;
                break;
            }
        }
        offset += used as u64;
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn file_with(name: &str, text: &[u8]) -> (File, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("inkstream-blocks-{name}-{}", std::process::id()));
        File::create(&path).unwrap().write_all(text).unwrap();
        (File::open(&path).unwrap(), path)
    }

    /// Every line lands in exactly one block, whole, in order, whatever the
    /// block size (mid-line splits, blocks inside one long line, no final
    /// newline, blank lines).
    #[test]
    fn blocks_split_at_line_boundaries_cover_every_line_once() {
        let lines = [
            "a",
            "bb",
            "",
            "a much longer line than the blocks",
            "c",
            "dd",
        ];
        for final_newline in [true, false] {
            let mut text = lines.join("\n");
            if final_newline {
                text.push('\n');
            }
            let (file, path) = file_with(&format!("split{final_newline}"), text.as_bytes());
            let len = text.len() as u64;
            for block in 1..=len + 1 {
                let mut joined: Vec<u8> = Vec::new();
                // One buffer for every block, as the replay reuses them.
                let mut buf = Vec::new();
                let mut start = 0;
                while start < len {
                    let end = (start + block).min(len);
                    joined
                        .extend(read_block(&file, start, end, len, start == 0, &mut buf).unwrap());
                    start += block;
                }
                assert_eq!(joined, text.as_bytes(), "block {block}");
            }
            let _ = std::fs::remove_file(path);
        }
    }

    /// A line far longer than the tail's first read (4 KiB, doubling up
    /// to 64 KiB) is read to its newline, whatever the block size.
    #[test]
    fn a_line_longer_than_every_tail_read_is_read_whole() {
        let long = "x".repeat(150_000);
        let text = format!("a\n{long}\nbb\n{}\nc", "y".repeat(5_000));
        let (file, path) = file_with("long-tail", text.as_bytes());
        let len = text.len() as u64;
        for block in [1, 3, 1_000, 4_096, 4_097, 70_000, 200_000] {
            let mut joined: Vec<u8> = Vec::new();
            let mut buf = Vec::new();
            let mut start = 0;
            while start < len {
                let end = (start + block).min(len);
                joined.extend(read_block(&file, start, end, len, start == 0, &mut buf).unwrap());
                start += block;
            }
            assert_eq!(joined, text.as_bytes(), "block {block}");
        }
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_line_offset_is_found_after_that_many_newlines() {
        let (file, path) = file_with("offset", b"a\nbb\n\nccc\nd");
        assert_eq!(offset_of_line(&file, 0).unwrap(), 0);
        assert_eq!(offset_of_line(&file, 1).unwrap(), 2);
        assert_eq!(offset_of_line(&file, 3).unwrap(), 6);
        assert_eq!(offset_of_line(&file, 4).unwrap(), 10);
        assert_eq!(offset_of_line(&file, 9).unwrap(), 11);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn decoded_blocks_count_lines_like_read_until() {
        let d = decode_block(b"\n{not json}\n\n", &Limits::default());
        assert_eq!((d.lines, d.events.len(), d.invalid.len()), (3, 0, 1));
        assert_eq!(d.invalid[0].0, 1);
        let d = decode_block(b"x", &Limits::default());
        assert_eq!((d.lines, d.invalid.len()), (1, 1));
    }
}
