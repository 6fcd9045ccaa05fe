//! The mirror's round marker: what a committed round held, recorded in its
//! own Kafka transaction, so that a new mirror knows which pending entries
//! its predecessor had already committed (docs/OPERATIONS.md, "A takeover
//! without duplicates"). Each round's transaction commits, as offset
//! metadata of the group named after the producer's transactional id, per
//! stream the first and last entry id of the round, on the partitions of
//! the mirror's dead-letter topic (the offset is the round's number).

use crate::event_log::{EntryRef, ForwardEntry};
use rdkafka::consumer::BaseConsumer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A log entry id as a comparable key (Redis `ms-seq`; the embedded log's
/// numbers as `(n, 0)`).
pub(super) type EntryKey = (u64, u64);

/// Per stream, the first and last entry id of a round.
pub(super) type Ranges = HashMap<String, (EntryKey, EntryKey)>;

pub(super) fn entry_key(id: &str) -> Option<EntryKey> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

/// Largest offset metadata per marker partition (Kafka's default
/// `offset.metadata.max.bytes` is 4,096).
pub(super) const MARK_CHUNK_BYTES: usize = 3_800;

/// A round's entry ranges (`stream<TAB>first<TAB>last` lines) in chunks for
/// the marker partitions.
pub(super) fn encode_ranges(entries: &[EntryRef]) -> Vec<String> {
    let mut ranges: HashMap<&str, (EntryKey, &str, EntryKey, &str)> = HashMap::new();
    for e in entries {
        let Some(k) = entry_key(&e.id) else {
            continue;
        };
        let r = ranges.entry(&e.stream).or_insert((k, &e.id, k, &e.id));
        if k < r.0 {
            (r.0, r.1) = (k, &e.id);
        }
        if k > r.2 {
            (r.2, r.3) = (k, &e.id);
        }
    }
    let mut lines: Vec<String> = ranges
        .into_iter()
        .map(|(stream, (_, first, _, last))| format!("{stream}\t{first}\t{last}"))
        .collect();
    lines.sort();
    let mut chunks: Vec<String> = Vec::new();
    for line in lines {
        match chunks.last_mut() {
            Some(c) if c.len() + 1 + line.len() <= MARK_CHUNK_BYTES => {
                c.push('\n');
                c.push_str(&line);
            }
            _ => chunks.push(line),
        }
    }
    chunks
}

/// The ranges of the chunks [`encode_ranges`] made.
pub(super) fn decode_ranges<'a>(chunks: impl IntoIterator<Item = &'a str>) -> Ranges {
    let mut ranges = HashMap::new();
    for line in chunks.into_iter().flat_map(str::lines) {
        let mut parts = line.split('\t');
        if let (Some(stream), Some(Some(first)), Some(Some(last))) = (
            parts.next(),
            parts.next().map(entry_key),
            parts.next().map(entry_key),
        ) {
            ranges.insert(stream.to_owned(), (first, last));
        }
    }
    ranges
}

/// The consumer whose group records the rounds of the producer with
/// `transactional_id` (no subscription: only its group metadata and
/// committed offsets are used).
pub(super) fn marker_consumer(
    brokers: &super::Brokers,
    transactional_id: &str,
) -> Result<Arc<BaseConsumer>, super::KafkaError> {
    Ok(Arc::new(
        super::client_config(brokers)
            .set("group.id", transactional_id)
            .set("enable.auto.commit", "false")
            .create()?,
    ))
}

/// The last round the previous holder committed (blocking): of both marker
/// groups, the chunks with the highest round number.
pub(super) fn last_committed_round(
    markers: &(Arc<BaseConsumer>, Arc<BaseConsumer>),
    topic: &str,
    partitions: i32,
) -> Result<(i64, Ranges), super::KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let mut best: (i64, Vec<String>) = (0, Vec::new());
    for consumer in [&markers.0, &markers.1] {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions.max(1) {
            tpl.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        for e in committed.elements() {
            let Offset::Offset(round) = e.offset() else {
                continue;
            };
            if round > best.0 {
                best = (round, Vec::new());
            }
            if round == best.0 && !e.metadata().is_empty() {
                best.1.push(e.metadata().to_owned());
            }
        }
    }
    Ok((best.0, decode_ranges(best.1.iter().map(String::as_str))))
}

/// Whether a read returned a full page: a backlog. On Redis `batch` bounds
/// each stream's entries (a read across 48 streams of live traffic may
/// return more than `batch` in all), on the embedded log the whole read.
pub(super) fn full_page(entries: &[ForwardEntry], batch: usize, per_stream: bool) -> bool {
    // Entries, not events: a packed entry's events count once, at its last.
    let mut entries = entries.iter().filter(|e| e.ends_entry());
    if !per_stream {
        return entries.count() >= batch;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    entries.any(|e| {
        let n = counts.entry(&e.entry().stream).or_default();
        *n += 1;
        *n >= batch
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_ranges_survive_the_marker_chunks() {
        let entry = |stream: &str, id: &str| EntryRef {
            stream: Arc::from(stream),
            id: id.into(),
        };
        let mut entries = vec![
            entry("inkstream:events:writing:3", "1796383861742-12"),
            entry("inkstream:events:writing:3", "1796383861742-2"),
            entry("inkstream:events:writing:3", "1796383900000-0"),
            entry("inkstream:events:system:0", "17"),
        ];
        // Enough streams to need several chunks.
        for s in 0..200 {
            entries.push(entry(&format!("inkstream:events:analytics:{s}"), "5-1"));
        }
        let chunks = encode_ranges(&entries);
        assert!(chunks.len() > 1, "200 streams do not fit one chunk");
        assert!(chunks.iter().all(|c| c.len() <= MARK_CHUNK_BYTES));
        let ranges = decode_ranges(chunks.iter().map(String::as_str));
        assert_eq!(ranges.len(), 202);
        // Numerically, not as strings: -2 is before -12.
        assert_eq!(
            ranges["inkstream:events:writing:3"],
            ((1796383861742, 2), (1796383900000, 0))
        );
        assert_eq!(ranges["inkstream:events:system:0"], ((17, 0), (17, 0)));
        assert_eq!(entry_key("x-1"), None);
    }
}
