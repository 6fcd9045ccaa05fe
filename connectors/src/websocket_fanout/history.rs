//! One channel's recent publications, kept so that a reconnecting client can
//! recover what it missed (`subscribe` with `since`).
//!
//! Pure: no locks, no sockets, time passed in. The hub owns one `History` per
//! channel and decides, across channels, which ones may keep one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Entry {
    offset: u64,
    /// When it was published: entries older than the max age are dropped.
    at: Instant,
    /// The publication's JSON, shared by every channel the event went to;
    /// its `message` frame is built only when it is replayed (most
    /// channels keeping history have nobody subscribed).
    body: Arc<str>,
}

/// The last publications of one channel.
///
/// Invariant: offsets are contiguous and increasing (entries are only pushed
/// at the back with the channel's next offset and dropped at the front), so
/// "reaches back to `since + 1`" is a look at the front entry.
#[derive(Default)]
pub(crate) struct History {
    entries: VecDeque<Entry>,
}

impl History {
    /// Appends the publication with `offset`, then drops what exceeds `size`
    /// entries or `max_age`.
    pub(super) fn push(
        &mut self,
        offset: u64,
        at: Instant,
        body: Arc<str>,
        size: usize,
        max_age: Duration,
    ) {
        debug_assert!(self.entries.back().is_none_or(|e| e.offset + 1 == offset));
        self.entries.push_back(Entry { offset, at, body });
        while self.entries.len() > size {
            self.entries.pop_front();
        }
        self.prune(at, max_age);
    }

    /// Drops the entries older than `max_age` at `now`.
    pub(super) fn prune(&mut self, now: Instant, max_age: Duration) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > max_age)
        {
            self.entries.pop_front();
        }
    }

    /// When the newest entry was published (none when empty).
    pub(super) fn newest_at(&self) -> Option<Instant> {
        self.entries.back().map(|e| e.at)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every kept body, oldest first.
    #[cfg(test)]
    pub(super) fn bodies(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.iter().map(|e| &e.body)
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The publications (offset, body) after `since`, oldest first, when the history still
    /// holds every one of them up to `current` (the channel's newest offset);
    /// `None` when some were lost (or `since` is ahead of the channel, which
    /// means the client saw another incarnation of it).
    pub(super) fn missed_since(
        &self,
        since: u64,
        current: u64,
    ) -> Option<impl Iterator<Item = (u64, &Arc<str>)>> {
        if since > current {
            return None;
        }
        // Nothing missed: recoverable even when every entry has expired.
        let skip = match self.entries.front() {
            _ if since == current => self.entries.len(),
            Some(first) if first.offset <= since + 1 => (since + 1 - first.offset) as usize,
            _ => return None,
        };
        Some(self.entries.iter().skip(skip).map(|e| (e.offset, &e.body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Arc<str> {
        Arc::from(format!("m{n}"))
    }

    fn filled(n: u64, size: usize, t0: Instant) -> History {
        let mut h = History::default();
        for o in 1..=n {
            h.push(o, t0, frame(o), size, Duration::from_secs(60));
        }
        h
    }

    fn missed(h: &History, since: u64, current: u64) -> Option<Vec<String>> {
        h.missed_since(since, current)
            .map(|it| it.map(|(_, body)| body.to_string()).collect())
    }

    #[test]
    fn keeps_the_last_size_publications() {
        let h = filled(10, 3, Instant::now());
        assert_eq!(h.len(), 3);
        assert_eq!(
            missed(&h, 7, 10),
            Some(vec!["m8".into(), "m9".into(), "m10".into()])
        );
        assert_eq!(missed(&h, 6, 10), None, "m7 was dropped");
    }

    #[test]
    fn drops_publications_older_than_the_max_age() {
        let t0 = Instant::now();
        let age = Duration::from_secs(60);
        let mut h = History::default();
        h.push(1, t0, frame(1), 100, age);
        h.push(2, t0 + Duration::from_secs(30), frame(2), 100, age);
        h.push(3, t0 + Duration::from_secs(61), frame(3), 100, age);
        assert_eq!(missed(&h, 1, 3), Some(vec!["m2".into(), "m3".into()]));
        assert_eq!(missed(&h, 0, 3), None);
        h.prune(t0 + Duration::from_secs(200), age);
        assert!(h.is_empty());
        assert_eq!(missed(&h, 3, 3), Some(vec![]), "nothing missed");
        assert_eq!(missed(&h, 2, 3), None);
    }

    #[test]
    fn a_since_ahead_of_the_channel_is_not_recoverable() {
        let h = filled(2, 10, Instant::now());
        assert_eq!(missed(&h, 3, 2), None);
        assert_eq!(missed(&h, 0, 2), Some(vec!["m1".into(), "m2".into()]));
    }
}
