//! The dataflow operators: the computations, one file (or folder) each. Each
//! holds its config, a pure core (no timely, no tokio: plain
//! `observe`/`advance_to`) run by the operator runtime ([`crate::runtime`]),
//! and its tests.
//!
//! An operator has one name, used everywhere: its file, its core type, its
//! metric label and checkpoint file (the core's `NAME`), and its timely
//! extension method where it has one — `live_wpm.rs`/`LiveWpm`/`"LiveWpm"`,
//! `sessions/`/`Sessions`, `presence.rs`/`Presence`,
//! `conflict_windows.rs`/`ConflictWindows`, `team_metrics.rs`/`TeamMetrics`,
//! `alert_windows/`/`AlertWindows`/`.alert_windows()`. The label and file
//! names are behaviour (dashboards, checkpoints): the rest derives from them.

pub mod alert_windows;
pub mod conflict_windows;
pub mod live_wpm;
pub mod presence;
pub mod selection;
pub mod sessions;
pub mod team_metrics;

use schemas::Event;

pub use schemas::stable_hash;

/// Words an event adds to a user's writing, if it is writing at all: typed
/// keystroke words and `word_added`; pasted, imported and AI text counts 0.
pub fn written_words(e: &Event) -> Option<u64> {
    use schemas::payload::{Payload, TextSource};
    match &e.data {
        Payload::WritingKeystroke(k) if k.source == TextSource::Typed => {
            Some(k.words.max(0) as u64)
        }
        Payload::WritingKeystroke(_) => Some(0),
        Payload::WritingWordAdded(w) => Some(w.words.max(0) as u64),
        _ => None,
    }
}

/// A deterministic id for a derived event: a hash of what produced it, so
/// that replays and restarts produce the same id and sinks can deduplicate.
pub fn derived_id(operator: &str, parts: &[&str]) -> schemas::Text {
    // `d-` and 16 lowercase hex digits: 18 bytes, kept inline (no
    // allocation), written without the formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = stable_hash(&(operator, parts));
    let mut id = [0u8; 18];
    id[..2].copy_from_slice(b"d-");
    for (i, b) in id[2..].iter_mut().enumerate() {
        *b = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
    schemas::Text::from(std::str::from_utf8(&id).unwrap_or_default())
}

/// An invalid key in an operator's config section, with its path (e.g.
/// `alerts.rules[2].aggregate`); [`crate::config::Config::load`] reports it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct OperatorConfigError {
    pub path: String,
    pub message: String,
}

impl schemas::Classify for OperatorConfigError {
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::Config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hex written by hand is `format!`'s, so ids stay what every
    /// earlier output and checkpoint holds.
    #[test]
    fn a_derived_id_is_the_hash_in_sixteen_hex_digits() {
        for (op, parts) in [
            ("wpm", &["u1", "e1"][..]),
            (
                "team",
                &["team.words", "project", "p1", "", "u1", "1m", "0"][..],
            ),
            ("", &[][..]),
        ] {
            let expected = format!("d-{:016x}", stable_hash(&(op, parts)));
            assert_eq!(derived_id(op, parts), expected);
        }
        assert_eq!(derived_id("x", &[]).len(), 18);
    }
}
