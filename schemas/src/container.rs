//! Avro object container files of events (the Avro specification's
//! "Object Container Files"): a header naming the schema — the standalone
//! envelope schema a registry serves ([`crate::confluent::published_schema`])
//! — then blocks of [`crate::binary`]-encoded events, each followed by the
//! file's 16-byte sync marker. Any Avro reader (apache-avro, fastavro,
//! avro-tools, Spark, DuckDB) reads them without inkstream.
//!
//! Pure: the bytes are built and checked here, the files are written by
//! whoever holds them (`replay --format avro`, `derived.format = "avro"`).
//!
//! The sync marker is derived from the file's name (e.g. the event type), not
//! drawn at random: the same events give the same bytes, so two runs' files
//! compare with `cmp`. A marker only has to be unlikely to occur inside the
//! data, which 16 hashed bytes are.

use crate::binary::{self, BinaryError, write_long};
use crate::event::Event;

/// The first four bytes of every object container file.
pub const MAGIC: &[u8; 4] = b"Obj\x01";

/// Why a container's bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// Not an object container file, or one whose header this crate did not write.
    #[error("not an inkstream Avro container: {0}")]
    Header(String),
    /// A block ends early or does not end with the file's sync marker.
    #[error("Avro container block at byte {offset}: {reason}")]
    Block { offset: usize, reason: String },
    /// An event inside a block does not decode.
    #[error("Avro container block at byte {offset}: {source}")]
    Event {
        offset: usize,
        #[source]
        source: BinaryError,
    },
}

/// The file, not the reader, is at fault; reading it again will not help.
impl crate::fault::Classify for ContainerError {
    fn fault(&self) -> crate::fault::Fault {
        crate::fault::Fault::Caller
    }
}

/// The header and sync marker of one container file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    sync: [u8; 16],
    header: Vec<u8>,
}

impl Container {
    /// The container for the file called `name` (its sync marker is derived
    /// from the name).
    pub fn new(name: &str) -> Container {
        let mut sync = [0u8; 16];
        sync[..8].copy_from_slice(&crate::stable_hash(&(name, "avro sync", 0u8)).to_le_bytes());
        sync[8..].copy_from_slice(&crate::stable_hash(&(name, "avro sync", 1u8)).to_le_bytes());
        let mut header = Vec::with_capacity(crate::confluent::published_schema().len() + 64);
        header.extend_from_slice(MAGIC);
        // The metadata map: one block of two entries, then the empty block.
        write_long(&mut header, 2);
        write_bytes(&mut header, b"avro.schema");
        write_bytes(&mut header, crate::confluent::published_schema().as_bytes());
        write_bytes(&mut header, b"avro.codec");
        write_bytes(&mut header, b"null");
        write_long(&mut header, 0);
        header.extend_from_slice(&sync);
        Container { sync, header }
    }

    /// The bytes a file starts with.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The file's sync marker.
    pub fn sync(&self) -> &[u8; 16] {
        &self.sync
    }

    /// Appends one block of `count` events whose encodings are `data`
    /// (concatenated [`binary::encode_into`] outputs).
    pub fn append_block(&self, out: &mut Vec<u8>, count: u64, data: &[u8]) {
        out.extend_from_slice(&block_prefix(count, data.len()));
        out.extend_from_slice(data);
        out.extend_from_slice(&self.sync);
    }

    /// How many leading bytes of `bytes` (a file's start up to its end) are
    /// this container's header and whole blocks: what to keep of a file a
    /// crash may have left with half a block at its end. `Err` when the file
    /// does not start with this container's header (another schema, another
    /// name, not a container); 0 when it holds only part of the header.
    pub fn complete_prefix(&self, bytes: &[u8]) -> Result<usize, ContainerError> {
        if bytes.len() < self.header.len() && self.header.starts_with(bytes) {
            return Ok(0);
        }
        if !bytes.starts_with(&self.header) {
            return Err(ContainerError::Header(if bytes.starts_with(MAGIC) {
                "its schema or sync marker differs (written by another version or for another type)"
                    .into()
            } else {
                "it does not start with the Avro container magic".into()
            }));
        }
        let mut at = self.header.len();
        while let Ok(Some(end)) = self.block_at(bytes, at) {
            at = end.1;
        }
        Ok(at)
    }

    /// The block starting at `at`: (its events' bytes, where the next block
    /// starts). `Ok(None)` at the end of the bytes.
    fn block_at<'a>(
        &self,
        bytes: &'a [u8],
        at: usize,
    ) -> Result<Option<Block<'a>>, ContainerError> {
        if at == bytes.len() {
            return Ok(None);
        }
        let fail = |reason: &str| ContainerError::Block {
            offset: at,
            reason: reason.into(),
        };
        let mut r = &bytes[at..];
        let count = read_long(&mut r).ok_or_else(|| fail("truncated block count"))?;
        let size = read_long(&mut r).ok_or_else(|| fail("truncated block size"))?;
        let (Ok(count), Ok(size)) = (u64::try_from(count), usize::try_from(size)) else {
            return Err(fail("negative block count or size"));
        };
        if r.len() < size.saturating_add(16) {
            return Err(fail("the block ends before its size"));
        }
        let (data, rest) = r.split_at(size);
        if rest[..16] != self.sync {
            return Err(fail("the block does not end with the file's sync marker"));
        }
        let end = bytes.len() - rest.len() + 16;
        Ok(Some(((count, data), end)))
    }

    /// Every event of a whole container file, in order.
    pub fn read(&self, bytes: &[u8]) -> Result<Vec<Event>, ContainerError> {
        if !bytes.starts_with(&self.header) {
            return Err(self.complete_prefix(bytes).err().unwrap_or_else(|| {
                ContainerError::Header("it does not start with this container's header".into())
            }));
        }
        let mut events = Vec::new();
        let mut at = self.header.len();
        while let Some(((count, mut data), end)) = self.block_at(bytes, at)? {
            for _ in 0..count {
                let (event, used) = binary::decode_prefix(data)
                    .map_err(|source| ContainerError::Event { offset: at, source })?;
                events.push(event);
                data = &data[used..];
            }
            if !data.is_empty() {
                return Err(ContainerError::Block {
                    offset: at,
                    reason: format!("{} bytes after its {count} events", data.len()),
                });
            }
            at = end;
        }
        Ok(events)
    }
}

/// What precedes a block's `len` bytes of `count` events (a writer that
/// does not copy them into one buffer writes this, the events, then
/// [`Container::sync`]).
pub fn block_prefix(count: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    write_long(&mut out, count as i64);
    write_long(&mut out, len as i64);
    out
}

/// A block: (its event count, its events' bytes), and where the next starts.
type Block<'a> = ((u64, &'a [u8]), usize);

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn read_long(r: &mut &[u8]) -> Option<i64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = r.split_first()?;
        *r = rest;
        z |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples::examples;

    fn events() -> Vec<Event> {
        examples()
            .into_iter()
            .enumerate()
            .map(|(i, (ty, data, _))| {
                crate::decode_value(
                    serde_json::json!({
                        "id": format!("e{i}"), "type": ty, "ts": 1_767_600_000_000i64 + i as i64,
                        "user_id": "u1", "project_id": "p1", "document_id": "d1", "data": data,
                    }),
                    &crate::Limits::default(),
                )
                .expect("example decodes")
            })
            .collect()
    }

    fn file(c: &Container, blocks: &[&[Event]]) -> Vec<u8> {
        let mut out = c.header().to_vec();
        for block in blocks {
            let mut data = Vec::new();
            for e in *block {
                binary::encode_into(e, &mut data).expect("encodes");
            }
            c.append_block(&mut out, block.len() as u64, &data);
        }
        out
    }

    #[test]
    fn what_is_written_reads_back_in_order() {
        let c = Container::new("writing.session_ended");
        let all = events();
        let (a, b) = all.split_at(all.len() / 2);
        let bytes = file(&c, &[a, b, &[]]);
        assert_eq!(c.read(&bytes).expect("reads"), all);
        assert_eq!(c.complete_prefix(&bytes), Ok(bytes.len()));
    }

    /// apache-avro, an independent reader, reads the file with the schema in
    /// its header, and finds the same events.
    #[test]
    fn apache_avro_reads_it() {
        let c = Container::new("t");
        let all = events();
        let bytes = file(&c, &[&all[..3], &all[3..]]);
        let reader = apache_avro::Reader::new(&bytes[..]).expect("a container apache-avro reads");
        let schemas = crate::AvroSchemas::shared().expect("schemas");
        let read: Vec<Event> = reader
            .map(|v| {
                crate::avro::from_avro_value(schemas, &v.expect("a record")).expect("an event")
            })
            .collect();
        assert_eq!(read, all);
    }

    #[test]
    fn half_a_block_at_the_end_is_cut_and_nothing_before_it() {
        let c = Container::new("t");
        let all = events();
        let whole = file(&c, &[&all[..2], &all[2..4]]);
        let keep = file(&c, &[&all[..2]]).len();
        for cut in keep..whole.len() {
            assert_eq!(c.complete_prefix(&whole[..cut]), Ok(keep), "cut at {cut}");
        }
        assert_eq!(c.complete_prefix(c.header()), Ok(c.header().len()));
        for cut in 0..c.header().len() {
            assert_eq!(
                c.complete_prefix(&c.header()[..cut]),
                Ok(0),
                "header cut at {cut}"
            );
        }
    }

    #[test]
    fn another_file_or_schema_is_refused_not_appended_to() {
        let all = events();
        let other = file(&Container::new("other"), &[&all[..1]]);
        let c = Container::new("t");
        assert!(matches!(
            c.complete_prefix(&other),
            Err(ContainerError::Header(m)) if m.contains("differs")
        ));
        assert!(matches!(
            c.complete_prefix(b"{\"id\":1}\n"),
            Err(ContainerError::Header(m)) if m.contains("magic")
        ));
        let mut bad = file(&c, &[&all[..2]]);
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(matches!(c.read(&bad), Err(ContainerError::Block { .. })));
    }
}
