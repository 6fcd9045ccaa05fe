//! `inkstream generate`: a deterministic, realistic event file for replays,
//! golden tests and benchmarks.
//!
//! Users write in sessions: bursts of keystroke batches every 1–4 s, short
//! pauses (10–90 s), breaks (5–20 min) and session gaps (30–120 min); some
//! users co-edit the same document (cursor moves and edits on nearby
//! paragraphs). Arrival order is shuffled within `disorder_ms` of event time,
//! the bound the dataflow tolerates.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub events: u64,
    pub users: u32,
    pub seed: u64,
    /// Largest difference between arrival order and event-time order, ms.
    pub disorder_ms: i64,
    /// Event time of the first event (ms since the epoch).
    pub start_ts: i64,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            events: 1_000_000,
            users: 1_000,
            seed: 42,
            disorder_ms: 1_500,
            start_ts: 1_767_600_000_000,
        }
    }
}

/// A small, fast, seeded PRNG (xorshift64*), so files are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1).max(1) as u64)) as i64
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

struct UserState {
    next_ts: i64,
    /// Events left in the current burst before a pause, break or gap.
    burst_left: u32,
    paragraph: i64,
}

/// Writes `config.events` NDJSON lines to `out`.
pub fn generate(config: &GenerateConfig, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = Rng::new(config.seed);
    let users = config.users.max(1);
    let mut state: Vec<UserState> = (0..users)
        .map(|_| UserState {
            next_ts: config.start_ts + rng.range(0, 600_000),
            burst_left: rng.range(5, 200) as u32,
            paragraph: rng.range(0, 40),
        })
        .collect();
    // Next event per user, earliest first.
    let mut due: BinaryHeap<Reverse<(i64, u32)>> = state
        .iter()
        .enumerate()
        .map(|(i, s)| Reverse((s.next_ts, i as u32)))
        .collect();
    // Arrival shuffle: (arrival time, line), released once no earlier arrival can come.
    let mut arrivals: BinaryHeap<Reverse<(i64, u64, String)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut written = 0u64;
    while written + (arrivals.len() as u64) < config.events {
        let Some(Reverse((ts, u))) = due.pop() else {
            break;
        };
        let s = &mut state[u as usize];
        let user = format!("u{u:05}");
        let project = format!("p{:04}", u / 4);
        // Four users per project share one document: co-editing.
        let document = format!("d{:04}-1", u / 4);
        let id = format!("e{seq:010}");
        seq += 1;
        let roll = rng.range(0, 99);
        let line = if roll < 80 {
            let words = rng.range(0, 4);
            let source = if rng.chance(2) { "paste" } else { "typed" };
            format!(
                r#"{{"id":"{id}","type":"writing.keystroke","ts":{ts},"user_id":"{user}","project_id":"{project}","document_id":"{document}","data":{{"keystrokes":{},"words":{words},"chars":{},"source":"{source}"}}}}"#,
                words * 6 + rng.range(0, 5),
                words * 6
            )
        } else if roll < 85 {
            format!(
                r#"{{"id":"{id}","type":"writing.word_added","ts":{ts},"user_id":"{user}","project_id":"{project}","document_id":"{document}","data":{{"words":1}}}}"#
            )
        } else if roll < 95 {
            s.paragraph = (s.paragraph + rng.range(-1, 1)).max(0);
            format!(
                r#"{{"id":"{id}","type":"collaboration.cursor_moved","ts":{ts},"user_id":"{user}","project_id":"{project}","document_id":"{document}","data":{{"paragraph":{},"offset":{},"mode":"edit"}}}}"#,
                s.paragraph,
                rng.range(0, 400)
            )
        } else {
            format!(
                r#"{{"id":"{id}","type":"collaboration.edit_applied","ts":{ts},"user_id":"{user}","project_id":"{project}","document_id":"{document}","data":{{"paragraph":{},"offset":{},"inserted":{},"deleted":{}}}}}"#,
                s.paragraph,
                rng.range(0, 400),
                rng.range(0, 40),
                rng.range(0, 5)
            )
        };
        let arrival = ts + rng.range(0, config.disorder_ms.max(0));
        arrivals.push(Reverse((arrival, seq, line)));
        // Release lines that can no longer be overtaken (every later event has ts ≥ this ts).
        while let Some(Reverse((a, _, _))) = arrivals.peek() {
            if *a > ts {
                break;
            }
            if let Some(Reverse((_, _, l))) = arrivals.pop() {
                out.write_all(l.as_bytes())?;
                out.write_all(b"\n")?;
                written += 1;
            }
        }
        // Schedule the user's next event.
        s.burst_left = s.burst_left.saturating_sub(1);
        let gap = if s.burst_left > 0 {
            rng.range(1_000, 4_000)
        } else {
            s.burst_left = rng.range(5, 300) as u32;
            match rng.range(0, 99) {
                0..=59 => rng.range(10_000, 90_000),      // a pause
                60..=89 => rng.range(300_000, 1_200_000), // a break
                _ => rng.range(1_800_000, 7_200_000),     // the session ends
            }
        };
        s.next_ts = ts + gap;
        due.push(Reverse((s.next_ts, u)));
    }
    while let Some(Reverse((_, _, l))) = arrivals.pop() {
        out.write_all(l.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_exactly_n_valid_events_within_the_disorder_bound() {
        let config = GenerateConfig {
            events: 5_000,
            users: 20,
            ..GenerateConfig::default()
        };
        let mut buf = Vec::new();
        generate(&config, &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let mut max_ts = i64::MIN;
        let mut n = 0;
        for line in text.lines() {
            let e = schemas::decode_event(line.as_bytes(), &schemas::Limits::default()).unwrap();
            assert!(
                e.ts >= max_ts.saturating_sub(config.disorder_ms),
                "disorder bound exceeded"
            );
            max_ts = max_ts.max(e.ts);
            n += 1;
        }
        assert_eq!(n, 5_000);
        let mut again = Vec::new();
        generate(&config, &mut again).unwrap();
        assert_eq!(text.as_bytes(), &again[..], "deterministic for a seed");
    }
}
