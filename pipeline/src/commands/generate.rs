//! `inkstream generate`: a deterministic, realistic event file for replays,
//! golden tests and benchmarks.
//!
//! Users write in sessions: bursts of keystroke batches every 1–4 s, short
//! pauses (10–90 s), breaks (5–20 min) and session gaps (30–120 min); one
//! burst in eight is a flow burst (a batch every second at 200–400 WPM for
//! minutes). Four users share each project and document and co-edit it:
//! cursor moves (some with selections, in every edit mode) and edits on
//! nearby paragraphs, comments that mention a co-author and are resolved
//! later, joins and leaves around sessions. Projects publish books and
//! report growing sales; services report the odd error. About one event in
//! 200 arrives twice (a client retry: same id). Arrival order is shuffled
//! within `disorder_ms` of event time, the bound the dataflow tolerates.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::PathBuf;

// The flags of `inkstream generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Number of events.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Number of users.
    #[arg(long, default_value_t = 1_000)]
    users: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Largest arrival-order disorder, in ms.
    #[arg(long, default_value_t = 1_500)]
    disorder_ms: i64,
    /// Event time of the first event: ms since the epoch, or `now`, which
    /// places the file so that its last event is now (a live `serve`
    /// accepts events up to 24 h old). Default: 2026-01-05T08:00:00Z.
    #[arg(long, default_value = "1767600000000")]
    start: String,
    /// Output file (`-` for stdout).
    #[arg(long, default_value = "-")]
    out: PathBuf,
}

/// Why the file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("creating {path}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] std::io::Error),
    #[error("--start {0:?}: expected `now` or ms since the Unix epoch")]
    Start(String),
    /// `--start now` asks for a file a live server accepts; this one cannot be.
    #[error(
        "--start now: the events span {span_h:.1} h, more than the 24 h a live server accepts; \
         generate fewer events or more users"
    )]
    TooLong { span_h: f64 },
}

impl schemas::Classify for GenerateError {
    /// The output path given on the command line, or its disk.
    fn fault(&self) -> schemas::Fault {
        match self {
            GenerateError::Create { .. }
            | GenerateError::Start(_)
            | GenerateError::TooLong { .. } => schemas::Fault::Caller,
            GenerateError::Write(_) => schemas::Fault::External,
        }
    }
}

/// `inkstream generate`: the events to `--out`, or stdout for `-`.
pub fn main(args: &GenerateArgs) -> Result<(), GenerateError> {
    let mut config = GenerateConfig {
        events: args.events,
        users: args.users,
        seed: args.seed,
        disorder_ms: args.disorder_ms,
        start_ts: 0,
    };
    config.start_ts = match args.start.as_str() {
        "now" => start_ending_now(&config, now_ms())?,
        ms => ms
            .parse()
            .map_err(|_| GenerateError::Start(args.start.clone()))?,
    };
    if args.out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        generate(&config, &mut w)?;
    } else {
        let f = std::fs::File::create(&args.out).map_err(|source| GenerateError::Create {
            path: args.out.display().to_string(),
            source,
        })?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        generate(&config, &mut w)?;
    }
    Ok(())
}

/// The start that makes the file's last event fall at `now` (a dry run
/// measures the span; generation is deterministic, so the real run matches).
fn start_ending_now(config: &GenerateConfig, now: i64) -> Result<i64, GenerateError> {
    // A day minus a margin for posting the file after it is written.
    const ACCEPTED_MS: i64 = 23 * 3_600_000;
    let span = generate(config, &mut std::io::sink())? - config.start_ts;
    if span > ACCEPTED_MS {
        return Err(GenerateError::TooLong {
            span_h: span as f64 / 3_600_000.0,
        });
    }
    Ok(now - span)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

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
    /// This burst is a flow burst (fast, steady writing).
    flowing: bool,
    /// The user's session has ended (a gap): the next event joins again.
    away: bool,
    /// The user's session is ending: the next event is their leaving.
    leaving: bool,
    /// An open comment of this user (resolved by a later event).
    open_comment: Option<u64>,
    /// Book units sold so far (the user's project's, reported by them).
    units: i64,
}

/// Writes `config.events` NDJSON lines to `out`; returns the latest event
/// time written.
pub fn generate(config: &GenerateConfig, out: &mut impl Write) -> std::io::Result<i64> {
    let mut rng = Rng::new(config.seed);
    let users = config.users.max(1);
    let mut state: Vec<UserState> = (0..users)
        .map(|_| UserState {
            next_ts: config.start_ts + rng.range(0, 600_000),
            burst_left: rng.range(5, 200) as u32,
            paragraph: rng.range(0, 40),
            flowing: false,
            away: true,
            leaving: false,
            open_comment: None,
            units: 0,
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
    let mut last_ts = config.start_ts;
    while written + (arrivals.len() as u64) < config.events {
        let Some(Reverse((ts, u))) = due.pop() else {
            break;
        };
        let s = &mut state[u as usize];
        last_ts = ts;
        let user = format!("u{u:05}");
        let project = format!("p{:04}", u / 4);
        // Four users per project share one document: co-editing.
        let document = format!("d{:04}-1", u / 4);
        let id = format!("e{seq:010}");
        seq += 1;
        let head = format!(
            r#""id":"{id}","ts":{ts},"user_id":"{user}","project_id":"{project}","document_id":"{document}""#
        );
        let roll = rng.range(0, 999);
        let line = if s.leaving {
            format!(r#"{{{head},"type":"collaboration.user_left","data":{{"reason":"closed"}}}}"#)
        } else if s.away {
            s.away = false;
            format!(r#"{{{head},"type":"collaboration.user_joined","data":{{"client":"web"}}}}"#)
        } else if s.flowing && roll < 900 {
            let words = rng.range(3, 7);
            format!(
                r#"{{{head},"type":"writing.keystroke","data":{{"keystrokes":{},"words":{words},"chars":{}}}}}"#,
                words * 6 + rng.range(0, 5),
                words * 6
            )
        } else if roll < 780 {
            let words = rng.range(0, 4);
            let source = if rng.chance(2) { "paste" } else { "typed" };
            format!(
                r#"{{{head},"type":"writing.keystroke","data":{{"keystrokes":{},"words":{words},"chars":{},"source":"{source}"}}}}"#,
                words * 6 + rng.range(0, 5),
                words * 6
            )
        } else if roll < 830 {
            format!(r#"{{{head},"type":"writing.word_added","data":{{"words":1}}}}"#)
        } else if roll < 840 {
            format!(
                r#"{{{head},"type":"writing.paragraph_completed","data":{{"paragraph":{},"words":{}}}}}"#,
                s.paragraph,
                rng.range(20, 200)
            )
        } else if roll < 930 {
            s.paragraph = (s.paragraph + rng.range(-1, 1)).max(0);
            let mode =
                ["edit", "edit", "edit", "review", "comment", "navigate"][rng.range(0, 5) as usize];
            let offset = rng.range(0, 400);
            let selection = if rng.chance(20) {
                format!(r#","selection":[{offset},{}]"#, offset + rng.range(1, 80))
            } else {
                String::new()
            };
            format!(
                r#"{{{head},"type":"collaboration.cursor_moved","data":{{"paragraph":{},"offset":{offset},"mode":"{mode}"{selection}}}}}"#,
                s.paragraph
            )
        } else if roll < 970 {
            format!(
                r#"{{{head},"type":"collaboration.edit_applied","data":{{"paragraph":{},"offset":{},"inserted":{},"deleted":{}}}}}"#,
                s.paragraph,
                rng.range(0, 400),
                rng.range(0, 40),
                rng.range(0, 5)
            )
        } else if roll < 980 {
            match s.open_comment.take() {
                Some(c) => format!(
                    r#"{{{head},"type":"collaboration.comment_resolved","data":{{"comment_id":"c{c:010}","resolved_by":"{user}"}}}}"#
                ),
                None => {
                    s.open_comment = Some(seq);
                    // Mention a co-author of the same project.
                    let other = (u / 4) * 4 + (u + 1 + rng.range(0, 2) as u32) % 4;
                    format!(
                        r#"{{{head},"type":"collaboration.comment_added","data":{{"comment_id":"c{seq:010}","paragraph":{},"mentions":["u{other:05}"]}}}}"#,
                        s.paragraph
                    )
                }
            }
        } else if roll < 990 {
            s.units += rng.range(1, 60);
            format!(
                r#"{{{head},"type":"publishing.sales_updated","data":{{"book_id":"b{project}","units":{},"revenue_cents":{},"currency":"EUR","total_units":{}}}}}"#,
                s.units.min(60),
                s.units.min(60) * 999,
                s.units
            )
        } else if roll < 993 {
            format!(
                r#"{{{head},"type":"publishing.book_published","data":{{"book_id":"b{project}","title":"Book of {project}","channels":["ebook"]}}}}"#
            )
        } else if roll < 995 {
            format!(
                r#"{{"id":"{id}","ts":{ts},"type":"system.error","data":{{"service":"export","message":"PDF export timed out","severity":"error"}}}}"#
            )
        } else {
            format!(
                r#"{{{head},"type":"collaboration.presence_updated","data":{{"status":"online","paragraph":{}}}}}"#,
                s.paragraph
            )
        };
        // A client retry now and then: the same event (same id) twice.
        if rng.chance(1) && rng.chance(50) {
            let again = ts + rng.range(0, config.disorder_ms.max(0));
            arrivals.push(Reverse((again, seq, line.clone())));
        }
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
        let gap = if s.leaving {
            s.leaving = false;
            s.away = true;
            rng.range(1_800_000, 7_200_000) // the session ends
        } else if s.burst_left > 0 && s.flowing {
            1_000
        } else if s.burst_left > 0 {
            rng.range(1_000, 4_000)
        } else {
            s.flowing = rng.chance(12);
            s.burst_left = if s.flowing {
                rng.range(150, 400) as u32
            } else {
                rng.range(5, 300) as u32
            };
            match rng.range(0, 99) {
                0..=59 => rng.range(10_000, 90_000),      // a pause
                60..=89 => rng.range(300_000, 1_200_000), // a break
                _ => {
                    s.leaving = true;
                    rng.range(1_000, 30_000) // then the user leaves
                }
            }
        };
        s.next_ts = ts + gap;
        due.push(Reverse((s.next_ts, u)));
    }
    // A retry copy can make one line too many: stop at exactly `events`.
    while written < config.events
        && let Some(Reverse((_, _, l))) = arrivals.pop()
    {
        out.write_all(l.as_bytes())?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(last_ts)
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

    #[test]
    fn start_now_ends_the_file_now_and_within_what_a_server_accepts() {
        let mut config = GenerateConfig {
            events: 2_000,
            users: 20,
            ..GenerateConfig::default()
        };
        let now = 1_800_000_000_000;
        config.start_ts = start_ending_now(&config, now).unwrap();
        let mut buf = Vec::new();
        generate(&config, &mut buf).unwrap();
        let limits = schemas::Limits::default();
        let max_ts = String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| schemas::decode_event(l.as_bytes(), &limits).unwrap().ts)
            .max()
            .unwrap();
        assert!(max_ts <= now && max_ts > now - 23 * 3_600_000, "{max_ts}");
        let long = GenerateConfig {
            events: 200_000,
            users: 2,
            ..GenerateConfig::default()
        };
        assert!(matches!(
            start_ending_now(&long, now),
            Err(GenerateError::TooLong { .. })
        ));
    }
}
