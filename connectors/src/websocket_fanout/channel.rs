//! The hub's table of live channels (one with local subscribers or history,
//! or both): per channel its numbering (offset, epoch), subscribers and
//! history, and the eviction order that bounds how many keep history.

use super::client::ClientQueue;
use super::history::History;
use super::routing::WsPath;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub(crate) type ChannelKey = (WsPath, String);

pub(crate) struct Channel {
    /// Offset of the newest publication (0: none yet in this epoch).
    pub(crate) offset: u64,
    /// Names this incarnation of the channel; offsets only compare within one.
    pub(crate) epoch: String,
    pub(crate) subscribers: HashMap<u64, ClientQueue>,
    pub(crate) history: History,
    /// This channel's key in `Table::by_publish`; `Some` exactly when the
    /// history is non-empty.
    pub(crate) publish_seq: Option<u64>,
}

/// Every live channel: one with subscribers or history (or both).
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) channels: HashMap<ChannelKey, Channel>,
    /// Channels with history by last publication, oldest first: the eviction
    /// order for `history_max_channels`, and for age expiry (a channel whose
    /// newest entry is too old has nothing left, and so have all before it).
    pub(crate) by_publish: BTreeMap<u64, ChannelKey>,
    pub(crate) next_seq: u64,
    /// Channels created so far; with the hub's incarnation id, the epoch.
    pub(crate) created: u64,
    /// Channels with at least one subscriber (the `inkstream_ws_channels` gauge).
    pub(crate) subscribed_channels: usize,
    /// Subscriptions over all channels (the `inkstream_ws_subscribers` gauge).
    pub(crate) subscriptions: usize,
}

impl Table {
    pub(crate) fn new_channel(&mut self, incarnation: &str) -> Channel {
        self.created += 1;
        Channel {
            offset: 0,
            epoch: format!("{incarnation}-{}", self.created),
            subscribers: HashMap::new(),
            history: History::default(),
            publish_seq: None,
        }
    }

    /// Forgets `key`'s history, and the channel itself when nobody is
    /// subscribed (its offsets and epoch go with it).
    pub(crate) fn drop_history(&mut self, key: &ChannelKey) {
        let Some(ch) = self.channels.get_mut(key) else {
            return;
        };
        if let Some(seq) = ch.publish_seq.take() {
            self.by_publish.remove(&seq);
        }
        ch.history.clear();
        if ch.subscribers.is_empty() {
            self.channels.remove(key);
        }
    }

    /// Drops the histories whose newest entry is older than `max_age`.
    pub(crate) fn expire(&mut self, now: Instant, max_age: Duration) {
        while let Some((_, key)) = self.by_publish.first_key_value() {
            let expired = self
                .channels
                .get(key)
                .and_then(|ch| ch.history.newest_at())
                .is_none_or(|at| now.saturating_duration_since(at) > max_age);
            if !expired {
                break;
            }
            let key = key.clone();
            self.drop_history(&key);
        }
    }
}
