//! `inkstream demo`: the server plus a built-in simulator posting live
//! traffic through the public HTTP API, so the console at `/` shows the
//! product working without writing a client.
//!
//! The server is `serve` itself (embedded by default; the configured Redis
//! and Kafka when given). The simulator ([`Scenario`], pure: explicit `now`,
//! seeded) plays writers in projects of three sharing one document, on the
//! wall clock: warming up, writing, entering flow (250+ WPM for minutes),
//! pausing (past the 60 s pause threshold) and taking breaks (past 5 min,
//! leaving and rejoining); co-editors' cursors drift into the lead's
//! paragraph (MEDIUM, then HIGH conflicts with suggestions); comments
//! mention a co-author; sales cross the milestones; a service reports an
//! error now and then (a CRITICAL alert). Every event is timestamped now.
//! `--rate` is the events per second posted; words per keystroke batch
//! follow each writer's target WPM over the real time elapsed, so the WPM
//! shown does not depend on the rate.

use super::generate::Rng;
use super::load::LoadError;
use super::load::fanout::EventPoster;
use super::serve::{self, ServeArgs, ServeError};
use crate::config::Config;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

// The flags of `inkstream demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Events per second the simulator posts.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Projects, three writers each sharing one document.
    #[arg(long, default_value_t = 4)]
    projects: u32,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of the simulator.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// API key or bearer token with the `ingest` scope, when auth is on.
    #[arg(long, env = "INKSTREAM_DEMO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's flags (port, Redis, Kafka, workers, auth).
    #[command(flatten)]
    serve: ServeArgs,
}

impl DemoArgs {
    /// The server flags as config overrides.
    pub fn overrides(&self) -> Vec<String> {
        self.serve.overrides()
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The simulator's requests failed (the server refused them or went away).
    #[error("simulator: {0}")]
    Simulator(#[from] LoadError),
    #[error("the server stopped before it listened")]
    NotListening,
    #[error("--rate and --projects must be at least 1")]
    Args,
}

impl schemas::Classify for DemoError {
    fn fault(&self) -> schemas::Fault {
        match self {
            DemoError::Serve(e) => e.fault(),
            DemoError::Simulator(e) => e.fault(),
            DemoError::NotListening => schemas::Fault::External,
            DemoError::Args => schemas::Fault::Caller,
        }
    }
}

/// `inkstream demo`: serves, simulates, prints the console URL and a
/// progress line, until Ctrl-C or `--seconds`.
pub fn main(args: &DemoArgs, config: Config) -> Result<(), DemoError> {
    if args.rate == 0 || args.projects == 0 {
        return Err(DemoError::Args);
    }
    let runtime = super::async_runtime().map_err(ServeError::from)?;
    runtime.block_on(async {
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            tokio::select! {
                _ = serve::shutdown_signal() => {},
                _ = stop_rx => {},
            }
        };
        let mut server = tokio::spawn(serve::run(config, shutdown, move |addr| {
            let _ = bound_tx.send(addr);
        }));
        let Ok(addr) = bound_rx.await else {
            return match server.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(DemoError::NotListening),
            };
        };
        let target = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        // A closed stdout (a pipe nobody reads) must not stop the demo.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "inkstream demo: console at http://localhost:{}/\n  {} writers in {} projects, \
             about {} events/s; Ctrl-C stops",
            addr.port(),
            args.projects * 3,
            args.projects,
            args.rate
        );
        let _ = stdout.flush();
        drop(stdout);
        let simulated = tokio::select! {
            r = simulate(target, args) => r,
            // The server stopped by itself (Ctrl-C, or a fatal error).
            r = &mut server => {
                return match r {
                    Ok(r) => r.map_err(DemoError::from),
                    Err(_) => Err(DemoError::NotListening),
                };
            }
        };
        let _ = stop_tx.send(());
        let served = server.await.map_err(|_| DemoError::NotListening)?;
        simulated?;
        served.map_err(DemoError::from)
    })
}

/// Posts the scenario to `addr` at `--rate` until `--seconds` (or forever).
async fn simulate(addr: SocketAddr, args: &DemoArgs) -> Result<(), DemoError> {
    let mut poster = EventPoster::connect(&addr.to_string(), args.token.as_deref()).await?;
    let started = Instant::now();
    let mut scenario = Scenario::new(args.projects, args.seed, wall_ms());
    // Five posts a second; the fraction of an event carries over.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut owed = 0.0f64;
    let mut posted = 0u64;
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    loop {
        tick.tick().await;
        if args
            .seconds
            .is_some_and(|s| started.elapsed().as_secs() >= s)
        {
            break;
        }
        owed += f64::from(args.rate) / 5.0;
        let n = owed.floor() as usize;
        owed -= n as f64;
        let lines = scenario.next(wall_ms(), n);
        if lines.is_empty() {
            continue;
        }
        poster.post(&lines.join("\n")).await?;
        posted += lines.len() as u64;
        if tty || last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            let line = format!(
                "[demo {:>4}s] {posted} events posted; {}",
                started.elapsed().as_secs(),
                scenario.summary()
            );
            let mut err = std::io::stderr().lock();
            let _ = if tty {
                write!(err, "\r{line}\x1b[K")
            } else {
                writeln!(err, "{line}")
            };
        }
    }
    eprintln!();
    Ok(())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a writer is doing, on the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Typing at their usual pace.
    Writing,
    /// Typing at 250+ WPM (the pipeline calls it flow after 2 min).
    Flow,
    /// No keystrokes for 65–100 s (PAUSED after 60 s).
    Pause,
    /// Gone for 5.5–7 min (BREAK after 5 min; they leave and rejoin).
    Break,
}

#[derive(Debug)]
struct Writer {
    user: String,
    project: u32,
    paragraph: i64,
    phase: Phase,
    phase_until: i64,
    /// Words per minute in the current phase.
    wpm: f64,
    last_keystroke_ms: i64,
    /// Words typed but not sent yet (fractions of a word).
    words_owed: f64,
    /// Online (joined and not left for a break).
    joined: bool,
    /// When the first cursor move after joining is due (presence shows
    /// cursors sent at least `presence.cursor_interval`, 1 s, after a join).
    cursor_due: Option<i64>,
}

/// The simulated traffic: pure, seeded, driven by an explicit `now`.
pub struct Scenario {
    rng: Rng,
    writers: Vec<Writer>,
    /// Round robin over writers for the next event slot.
    cursor: usize,
    /// Book units sold so far, per project.
    units: Vec<i64>,
    /// When the next comment, sales update and service error are due.
    next_comment_ms: i64,
    next_sales_ms: i64,
    next_error_ms: i64,
    seq: u64,
    run: String,
}

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;

impl Scenario {
    /// `projects` × 3 writers, starting at `now`: the first writer of each
    /// project is the lead; the others start one and three paragraphs away
    /// and drift towards the lead's paragraph.
    pub fn new(projects: u32, seed: u64, now: i64) -> Scenario {
        let mut rng = Rng::new(seed);
        let mut writers = Vec::new();
        for p in 0..projects {
            let lead_paragraph = rng.range(2, 20);
            for k in 0..3u32 {
                // One writer in three starts in flow: the console shows a
                // FLOW_STATE within minutes.
                let (phase, wpm) = if k == 0 && p % 2 == 0 {
                    (Phase::Flow, rng.range(260, 320) as f64)
                } else {
                    (Phase::Writing, rng.range(35, 90) as f64)
                };
                writers.push(Writer {
                    user: format!("u{:03}", p * 3 + k + 1),
                    project: p + 1,
                    paragraph: lead_paragraph + [0, 1, 3][k as usize],
                    phase,
                    phase_until: now + rng.range(3 * MINUTE, 5 * MINUTE),
                    wpm,
                    last_keystroke_ms: now,
                    words_owed: 0.0,
                    joined: false,
                    cursor_due: None,
                });
            }
        }
        Scenario {
            rng,
            writers,
            cursor: 0,
            units: vec![0; projects as usize],
            next_comment_ms: now + 3 * SECOND,
            next_sales_ms: now + 5 * SECOND,
            next_error_ms: now + 6 * SECOND,
            seq: 0,
            run: format!("{now:x}"),
        }
    }

    /// About `n` events (NDJSON lines) timestamped `now`, plus what is due
    /// (comments, sales, errors, joins and leaves).
    pub fn next(&mut self, now: i64, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n + 4);
        for i in 0..self.writers.len() {
            self.advance_phase(i, now, &mut out);
        }
        self.scheduled(now, &mut out);
        let mut slots = n;
        let mut idle_seen = 0;
        while slots > 0 && idle_seen < self.writers.len() {
            let i = self.cursor % self.writers.len();
            self.cursor += 1;
            if matches!(self.writers[i].phase, Phase::Pause | Phase::Break) {
                idle_seen += 1;
                continue;
            }
            idle_seen = 0;
            slots -= 1;
            let line = self.writer_event(i, now);
            out.push(line);
        }
        out
    }

    /// "7 writing, 2 in flow, 2 paused, 1 on break".
    pub fn summary(&self) -> String {
        let count = |p: Phase| self.writers.iter().filter(|w| w.phase == p).count();
        format!(
            "{} writing, {} in flow, {} paused, {} on break",
            count(Phase::Writing),
            count(Phase::Flow),
            count(Phase::Pause),
            count(Phase::Break)
        )
    }

    fn head(&mut self, w: usize, now: i64, kind: &str) -> String {
        self.seq += 1;
        let wr = &self.writers[w];
        format!(
            r#""id":"demo-{}-{}","type":"{kind}","ts":{now},"user_id":"{}","project_id":"p{:03}","document_id":"d{:03}-1""#,
            self.run, self.seq, wr.user, wr.project, wr.project
        )
    }

    /// Moves a writer to its next phase when the current one is over.
    fn advance_phase(&mut self, w: usize, now: i64, out: &mut Vec<String>) {
        if !self.writers[w].joined && self.writers[w].phase != Phase::Break {
            self.join(w, now, out);
        }
        if now < self.writers[w].phase_until {
            return;
        }
        let roll = self.rng.range(0, 99);
        let (phase, until, wpm) = match self.writers[w].phase {
            Phase::Writing | Phase::Flow if roll < 60 => {
                (Phase::Pause, self.rng.range(65 * SECOND, 100 * SECOND), 0.0)
            }
            Phase::Writing | Phase::Flow => (
                Phase::Break,
                self.rng.range(330 * SECOND, 420 * SECOND),
                0.0,
            ),
            Phase::Pause | Phase::Break if roll < 30 => (
                Phase::Flow,
                self.rng.range(3 * MINUTE, 5 * MINUTE),
                self.rng.range(240, 320) as f64,
            ),
            Phase::Pause | Phase::Break => (
                Phase::Writing,
                self.rng.range(2 * MINUTE, 4 * MINUTE),
                self.rng.range(35, 90) as f64,
            ),
        };
        let was = self.writers[w].phase;
        if phase == Phase::Break {
            let h = self.head(w, now, "collaboration.user_left");
            out.push(format!(r#"{{{h},"data":{{"reason":"break"}}}}"#));
            self.writers[w].joined = false;
        }
        let wr = &mut self.writers[w];
        wr.phase = phase;
        wr.phase_until = now + until;
        wr.wpm = wpm;
        if matches!(was, Phase::Pause | Phase::Break) {
            // Back at the keyboard: what was "typed" while away is not owed.
            wr.last_keystroke_ms = now;
            wr.words_owed = 0.0;
        }
        if was == Phase::Break {
            self.join(w, now, out);
        }
    }

    fn join(&mut self, w: usize, now: i64, out: &mut Vec<String>) {
        self.writers[w].joined = true;
        self.writers[w].cursor_due = Some(now + 1_100);
        let h = self.head(w, now, "collaboration.user_joined");
        out.push(format!(r#"{{{h},"data":{{"client":"web"}}}}"#));
    }

    /// One event of an active writer: mostly keystrokes, some cursor moves
    /// (drifting towards the lead's paragraph) and edits.
    fn writer_event(&mut self, w: usize, now: i64) -> String {
        let mut roll = self.rng.range(0, 99);
        if self.writers[w].cursor_due.is_some_and(|t| now >= t) {
            self.writers[w].cursor_due = None;
            roll = 80; // a cursor move
        }
        if roll < 70 {
            let wr = &mut self.writers[w];
            wr.words_owed += wr.wpm * (now - wr.last_keystroke_ms).max(0) as f64 / MINUTE as f64;
            wr.last_keystroke_ms = now;
            let words = wr.words_owed.floor() as i64;
            wr.words_owed -= words as f64;
            let keystrokes = words * 6 + self.rng.range(1, 5);
            let h = self.head(w, now, "writing.keystroke");
            return format!(
                r#"{{{h},"data":{{"keystrokes":{keystrokes},"words":{words},"chars":{}}}}}"#,
                words * 6
            );
        }
        if roll < 92 {
            let lead = self.writers[w - w % 3].paragraph;
            let here = self.writers[w].paragraph;
            let step = if self.rng.chance(60) {
                (lead - here).signum()
            } else {
                self.rng.range(-1, 1)
            };
            let paragraph = (here + step).max(0);
            self.writers[w].paragraph = paragraph;
            let offset = self.rng.range(0, 400);
            let h = self.head(w, now, "collaboration.cursor_moved");
            return format!(
                r#"{{{h},"data":{{"paragraph":{paragraph},"offset":{offset},"mode":"edit","selection":[{offset},{}]}}}}"#,
                offset + self.rng.range(1, 40)
            );
        }
        let paragraph = self.writers[w].paragraph;
        let (offset, inserted) = (self.rng.range(0, 400), self.rng.range(1, 40));
        let h = self.head(w, now, "collaboration.edit_applied");
        format!(
            r#"{{{h},"data":{{"paragraph":{paragraph},"offset":{offset},"inserted":{inserted},"deleted":0}}}}"#
        )
    }

    /// Comments with a mention, sales updates and service errors when due.
    fn scheduled(&mut self, now: i64, out: &mut Vec<String>) {
        let projects = self.units.len();
        if now >= self.next_comment_ms {
            self.next_comment_ms = now + self.rng.range(15 * SECOND, 40 * SECOND);
            let w = self.rng.range(0, self.writers.len() as i64 - 1) as usize;
            let other = &self.writers[w - w % 3 + (w + 1) % 3].user.clone();
            let paragraph = self.writers[w].paragraph;
            let h = self.head(w, now, "collaboration.comment_added");
            out.push(format!(
                r#"{{{h},"data":{{"comment_id":"c-{}-{}","paragraph":{paragraph},"mentions":["{other}"]}}}}"#,
                self.run, self.seq
            ));
        }
        if now >= self.next_sales_ms {
            self.next_sales_ms = now + self.rng.range(20 * SECOND, 45 * SECOND);
            let p = self.rng.range(0, projects as i64 - 1) as usize;
            // The first report of a project crosses 100 (a HIGH milestone);
            // later ones climb towards 1,000 and 10,000.
            let units = if self.units[p] == 0 {
                120
            } else {
                self.rng.range(30, 400)
            };
            self.units[p] += units;
            let h = self.head(p * 3, now, "publishing.sales_updated");
            out.push(format!(
                r#"{{{h},"data":{{"book_id":"b{:03}","units":{units},"revenue_cents":{},"currency":"EUR","total_units":{}}}}}"#,
                p + 1,
                units * 999,
                self.units[p]
            ));
        }
        if now >= self.next_error_ms {
            self.next_error_ms = now + self.rng.range(60 * SECOND, 120 * SECOND);
            self.seq += 1;
            out.push(format!(
                r#"{{"id":"demo-{}-{}","type":"system.error","ts":{now},"data":{{"service":"export","message":"PDF export timed out","severity":"critical","code":"E504"}}}}"#,
                self.run, self.seq
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_valid_now_and_the_first_ten_seconds_show_every_kind() {
        let start = 1_800_000_000_000;
        let mut s = Scenario::new(4, 7, start);
        let mut kinds = std::collections::BTreeSet::new();
        let limits = schemas::Limits::default();
        let mut n = 0;
        for tick in 0..50 {
            let now = start + tick * 200;
            for line in s.next(now, 4) {
                let e = schemas::decode_event(line.as_bytes(), &limits)
                    .unwrap_or_else(|err| panic!("{line}: {err:?}"));
                assert_eq!(e.ts, now);
                kinds.insert(e.event_type().to_owned());
                n += 1;
            }
        }
        assert!(n >= 200, "{n} events in 10 s at 20/s");
        for k in [
            "writing.keystroke",
            "collaboration.cursor_moved",
            "collaboration.user_joined",
            "collaboration.comment_added",
            "publishing.sales_updated",
            "system.error",
        ] {
            assert!(kinds.contains(k), "no {k} in the first 10 s: {kinds:?}");
        }
    }

    #[test]
    fn wpm_follows_the_writer_not_the_rate() {
        let start = 1_800_000_000_000;
        for rate in [1, 40] {
            let mut s = Scenario::new(1, 7, start);
            let mut words = 0;
            // One minute of the lead (in flow at 260–320 WPM).
            for tick in 1..=300 {
                for line in s.next(start + tick * 200, rate) {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    if v["user_id"] == "u001" && v["type"] == "writing.keystroke" {
                        words += v["data"]["words"].as_i64().unwrap();
                    }
                }
            }
            assert!(
                (240..=330).contains(&words),
                "rate {rate}: {words} words in a minute"
            );
        }
    }
}
