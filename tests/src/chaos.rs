//! The chaos run (issue 16, "Trust II" item 6): a generated stream ingested
//! over HTTP by a client that retries with the same ids until acknowledged,
//! while the dataflow's lease holder is killed with SIGKILL (the standby takes
//! over) and restarted, Redis is killed and restarted (AOF `always`), and the
//! Kafka broker is killed and restarted. Then every acknowledged id is looked
//! up in the log (exactly once), on the Kafka event topics (at least once,
//! copies identical), and the derived events of both instances are compared
//! with those of an undisturbed run of the same input.
//!
//! Driven by `tests/examples/chaos.rs`
//! (`tests/bench/chaos.sh`, 1 M events). Needs what [`PrivateRedis`] and
//! [`PrivateKafka`] need (`INKSTREAM_TEST_REDIS_SERVER`,
//! `INKSTREAM_TEST_KAFKA_SH`) and the `inkstream` binary ([`inkstream_bin`]).
//!
//! **What "identical" means.** Derived events carry ids made from what they
//! are about (a session's end: the user and the session's start), so a copy
//! written twice (before a crash and again after the restore from the last
//! checkpoint) has the same id. Both runs use event time only
//! (`dataflow.idle_advance_after = 1h`: the wall clock never moves the
//! watermark, so pauses of a fault cannot close windows early), presence
//! in event-time order (`presence.order = event_time`: in arrival order it
//! follows how a pair's writing and collaboration partitions interleave when
//! fetched, which differs between any two runs), and the client posts the
//! file in order, one batch at a time. The chaos run's
//! outputs (both instances' `derived.dir`, every restart appended) are
//! deduplicated by id; a second copy must be byte-identical (JSON), and the
//! set must equal the undisturbed run's, event for event. Both runs end the
//! same way: when the input is in and the watermark stands still, the
//! instances are stopped with SIGTERM.

use crate::{PrivateKafka, PrivateRedis, Server, free_port_list, inkstream_bin};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The size of a chaos run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Lines of the generated file (`inkstream generate --events`).
    pub events: usize,
    pub users: usize,
    pub seed: u64,
    /// Lines per POST.
    pub batch: usize,
    /// How long Redis and the broker stay down.
    pub down: Duration,
    /// Longest wait for any one condition.
    pub deadline: Duration,
    /// Progress lines on stdout.
    pub verbose: bool,
}

/// The generated input.
struct Input {
    /// NDJSON bodies, one per POST, in file order.
    batches: Vec<(String, Vec<String>)>,
    lines: usize,
    distinct: HashSet<String>,
}

fn generate(cfg: &Config) -> Input {
    let out = std::process::Command::new(inkstream_bin())
        .args(["generate", "--start", "now"])
        .args(["--events", &cfg.events.to_string()])
        .args(["--users", &cfg.users.to_string()])
        .args(["--seed", &cfg.seed.to_string()])
        .output()
        .expect("run inkstream generate");
    assert!(out.status.success(), "inkstream generate failed");
    let text = String::from_utf8(out.stdout).expect("generate writes UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let mut distinct = HashSet::new();
    let mut batches = Vec::new();
    for chunk in lines.chunks(cfg.batch) {
        let mut ids = Vec::with_capacity(chunk.len());
        for l in chunk {
            let v: serde_json::Value = serde_json::from_str(l).expect("generated JSON");
            let id = v["id"].as_str().expect("generated id").to_owned();
            distinct.insert(id.clone());
            ids.push(id);
        }
        batches.push((chunk.join("\n"), ids));
    }
    Input {
        batches,
        lines: lines.len(),
        distinct,
    }
}

/// What the client did.
#[derive(Default)]
struct ClientState {
    /// Batches acknowledged (202), in order.
    acked_batches: AtomicUsize,
    /// Distinct ids of acknowledged batches (filled as they are acked).
    acked_ids: std::sync::Mutex<HashSet<String>>,
    /// Attempts that were not acknowledged (503, timeout, connection error).
    retries: AtomicU64,
    /// `duplicates` reported by the 202s (the file repeats some ids, and a
    /// retried batch that had been stored reports its events as duplicates).
    duplicates: AtomicU64,
}

/// POSTs the batches in order to the servers (round robin), each until it is
/// acknowledged, with the same ids; batch `k` only once `k < *gate`.
async fn client(
    urls: Vec<String>,
    input: Arc<Input>,
    state: Arc<ClientState>,
    mut gate: tokio::sync::watch::Receiver<usize>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let mut target = 0usize;
    for (k, (body, ids)) in input.batches.iter().enumerate() {
        while k >= *gate.borrow_and_update() {
            gate.changed().await.expect("gate open");
        }
        loop {
            let url = format!("{}/v1/events", urls[target % urls.len()]);
            target += 1;
            match http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status() == 202 => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    state
                        .duplicates
                        .fetch_add(v["duplicates"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    state
                        .acked_ids
                        .lock()
                        .expect("acked ids")
                        .extend(ids.iter().cloned());
                    state.acked_batches.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(r) if r.status().is_server_error() || r.status() == 429 => {}
                Ok(r) => {
                    let status = r.status();
                    panic!(
                        "batch {k} refused with {status}: {}",
                        r.text().await.unwrap_or_default()
                    )
                }
                Err(_) => {}
            }
            state.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The sum of every sample of `name` on a server's `/metrics`; `None` when
/// the server does not answer.
async fn try_metric(port: u16, name: &str) -> Option<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// The barrier of the newest complete checkpoint in Redis (`None` when there
/// is none or Redis does not answer).
async fn latest_checkpoint(url: &str, prefix: &str) -> Option<String> {
    let fut = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("GET")
            .arg(format!("{prefix}:ckpt:dataflow:latest"))
            .query_async::<Option<String>>(&mut conn)
            .await
            .ok()?
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

/// Waits until `cond` holds (polled every 100 ms); panics after `deadline`
/// naming `what`. Returns the time it took.
async fn until<F, Fut>(what: &str, deadline: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < deadline,
            "chaos run: {what} did not happen within {} s",
            deadline.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// The settings of both runs and both instances.
fn serve_args(redis: &str, kafka: &str, derived: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--redis-url".into(),
        redis.into(),
        "--kafka-brokers".into(),
        kafka.into(),
    ];
    for set in [
        "redis.prefix=chaos".to_owned(),
        // Event time only: a fault's pause must not close windows early.
        "dataflow.idle_advance_after=1h".into(),
        // Presence in event-time order: live (arrival) presence follows how
        // a pair's writing and collaboration partitions happen to be
        // fetched, which no run reproduces (operators/presence.rs, "Order").
        "presence.order=event_time".into(),
        "dataflow.lease_ttl=3s".into(),
        "redis.claim_idle_after=3s".into(),
        "checkpoint.store=redis".into(),
        "checkpoint.interval=1m".into(),
        format!("derived.dir='{}'", derived.display()),
    ] {
        args.push("--set".into());
        args.push(set);
    }
    args
}

async fn start(port: u16, args: &[String]) -> Server {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_on(port, &refs).await
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique(name));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Derived events of `dirs` by id (first copy), how many copies of an id
/// differed from the first, and the count by type.
#[derive(Default)]
struct Derived {
    by_id: BTreeMap<String, String>,
    differing: usize,
    copies: usize,
    /// A few copies that differed from the first of their id (both shown).
    examples: Vec<String>,
}

fn read_derived(dirs: &[&Path]) -> Derived {
    let mut d = Derived::default();
    for dir in dirs {
        for entry in std::fs::read_dir(dir).expect("derived dir") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue; // not an output: derived.dir's journal
            }
            let text = std::fs::read_to_string(path).expect("read");
            // A last line without its newline (a process killed while
            // writing it) is not an event.
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let v: serde_json::Value = serde_json::from_str(line).expect("derived JSON");
                let id = v["id"].as_str().expect("derived id").to_owned();
                let json = v.to_string();
                d.copies += 1;
                match d.by_id.get(&id) {
                    Some(first) if *first != json => {
                        d.differing += 1;
                        if d.examples.len() < 3 {
                            d.examples.push(format!("copies differ: {first} vs {json}"));
                        }
                    }
                    Some(_) => {}
                    None => {
                        d.by_id.insert(id, json);
                    }
                }
            }
        }
    }
    d
}

fn count_type(d: &Derived, ty: &str) -> usize {
    let needle = format!("\"type\":\"{ty}\"");
    d.by_id.values().filter(|j| j.contains(&needle)).count()
}

/// The id of every event in the log's streams: id → copies.
async fn log_ids(url: &str, prefix: &str) -> HashMap<String, usize> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:events:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut ids: HashMap<String, usize> = HashMap::new();
    for key in keys {
        let mut from = "-".to_owned();
        loop {
            let page: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await
                .expect("XRANGE");
            let Some((last, _)) = page.last() else { break };
            from = format!("({last}");
            for (_, fields) in &page {
                for event in connectors::event_log::redis::events_of_fields(fields) {
                    let id = event.expect("every stored event decodes").id.to_string();
                    *ids.entry(id).or_default() += 1;
                }
            }
        }
    }
    ids
}

/// Every record on the event topics: id → (copies, whether a copy differed).
async fn topic_ids(brokers: &str, expected: usize) -> HashMap<String, (usize, bool)> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = crate::checking_consumer(brokers, "chaos-verify")
        .create()
        .expect("consumer");
    let topics: Vec<String> = schemas::Category::ALL
        .iter()
        .map(|c| connectors::kafka::events_topic(*c))
        .collect();
    consumer
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("subscribe");
    let mut seen: HashMap<String, (usize, u64, bool)> = HashMap::new();
    let mut idle = Instant::now();
    while seen.len() < expected && idle.elapsed() < Duration::from_secs(20) {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
            continue;
        };
        idle = Instant::now();
        let Some(id) = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "event_id").and_then(|h| h.value))
        else {
            continue;
        };
        let hash = schemas::stable_hash(m.payload().unwrap_or_default());
        let e = seen
            .entry(String::from_utf8_lossy(id).into_owned())
            .or_insert((0, hash, false));
        e.0 += 1;
        e.2 |= e.1 != hash;
    }
    seen.into_iter()
        .map(|(id, (n, _, differs))| (id, (n, differs)))
        .collect()
}

/// Recovery figures of one fault, from the moment it was injected.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub fault: String,
    /// The service was back (restarted process healthy, Redis accepting
    /// connections, the broker started).
    pub restored: Duration,
    /// The client had a batch acknowledged again.
    pub ingest: Duration,
    /// An instance runs the dataflow (holds the lease).
    pub dataflow: Duration,
    /// A newer checkpoint than the one before the fault is complete: state,
    /// offsets and derived sinks all durable again.
    /// `None`: none was due — checkpoints follow event time, and the whole
    /// input was acknowledged and read up to the undisturbed run's last
    /// watermark without crossing another barrier.
    pub checkpoint: Option<Duration>,
}

/// What the run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: usize,
    pub distinct_ids: usize,
    pub acked_ids: usize,
    pub retries: u64,
    pub reported_duplicates: u64,
    pub log_ids: usize,
    pub log_missing: usize,
    pub log_extra: usize,
    pub log_duplicated: usize,
    pub topic_records: usize,
    pub topic_ids: usize,
    pub topic_missing: usize,
    pub topic_differing: usize,
    pub derived_calm: usize,
    pub derived_chaos: usize,
    pub derived_chaos_copies: usize,
    pub derived_missing: usize,
    pub derived_extra: usize,
    pub derived_differing: usize,
    /// Examples of what differs (for the failure message).
    pub derived_examples: Vec<String>,
    /// By derived type: missing, extra, differing.
    pub derived_by_type: BTreeMap<String, [usize; 3]>,
    pub sessions_calm: usize,
    pub sessions_chaos: usize,
    pub dead_letters_calm: usize,
    pub dead_letters_chaos: usize,
    pub late_metric: f64,
    pub recoveries: Vec<Recovery>,
    /// Instances that exited on their own and were started again, as a
    /// supervisor would (a holder that cannot renew its lease in time, e.g.
    /// through a Redis outage longer than `lease_ttl`, stops with an error
    /// by design: docs/OPERATIONS.md "Failover").
    pub supervisor_restarts: Vec<String>,
    pub calm_wall: Duration,
    pub chaos_wall: Duration,
    /// Conditions the end of a run waited for in vain (the mirror's lag).
    pub settle_problems: Vec<String>,
}

impl Report {
    /// Everything that contradicts "nothing acknowledged is lost or
    /// duplicated, outputs as undisturbed"; empty when the run is clean.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.settle_problems.clone();
        let mut check = |ok: bool, what: String| {
            if !ok {
                p.push(what);
            }
        };
        check(
            self.acked_ids == self.distinct_ids,
            format!(
                "{} of {} ids acknowledged",
                self.acked_ids, self.distinct_ids
            ),
        );
        check(
            self.log_missing == 0 && self.log_extra == 0 && self.log_duplicated == 0,
            format!(
                "log: {} missing, {} not acknowledged, {} more than once",
                self.log_missing, self.log_extra, self.log_duplicated
            ),
        );
        check(
            self.topic_missing == 0
                && self.topic_differing == 0
                && self.topic_ids == self.acked_ids,
            format!(
                "topics: {} distinct ids for {} acknowledged, {} missing, {} with differing copies",
                self.topic_ids, self.acked_ids, self.topic_missing, self.topic_differing
            ),
        );
        check(
            self.derived_missing == 0 && self.derived_extra == 0 && self.derived_differing == 0,
            format!(
                "derived: {} missing, {} extra, {} differing (of {} undisturbed), e.g. {:?}",
                self.derived_missing,
                self.derived_extra,
                self.derived_differing,
                self.derived_calm,
                self.derived_examples
            ),
        );
        check(
            self.dead_letters_calm == 0 && self.dead_letters_chaos == 0 && self.late_metric == 0.0,
            format!(
                "dead letters: {} undisturbed, {} chaos; late (metric) {}",
                self.dead_letters_calm, self.dead_letters_chaos, self.late_metric
            ),
        );
        p
    }

    /// The figures, one per line.
    pub fn print(&self) {
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        println!("input lines                     {}", self.lines);
        println!("distinct ids                    {}", self.distinct_ids);
        println!(
            "acknowledged ids                {} (retried attempts {}, duplicates reported {})",
            self.acked_ids, self.retries, self.reported_duplicates
        );
        println!(
            "ids in the log                  {} (missing {}, not acknowledged {}, more than once {})",
            self.log_ids, self.log_missing, self.log_extra, self.log_duplicated
        );
        println!(
            "ids on the event topics         {} distinct in {} records (missing {}, differing copies {})",
            self.topic_ids, self.topic_records, self.topic_missing, self.topic_differing
        );
        println!(
            "derived events                  undisturbed {}, chaos {} distinct ({} copies written)",
            self.derived_calm, self.derived_chaos, self.derived_chaos_copies
        );
        println!(
            "derived vs undisturbed          missing {}, extra {}, differing {}",
            self.derived_missing, self.derived_extra, self.derived_differing
        );
        for (ty, [m, e, d]) in &self.derived_by_type {
            println!("  {ty:<30} missing {m}, extra {e}, differing {d}");
        }
        println!(
            "writing.session_ended           undisturbed {}, chaos {}",
            self.sessions_calm, self.sessions_chaos
        );
        println!(
            "dead letters (late)             undisturbed {}, chaos {}; late metric {}",
            self.dead_letters_calm, self.dead_letters_chaos, self.late_metric
        );
        println!(
            "restarted by the supervisor     {} {:?}",
            self.supervisor_restarts.len(),
            self.supervisor_restarts
        );
        for r in &self.recoveries {
            println!(
                "recovery {:<22} restored {}, ingest acknowledged {}, dataflow running {}, checkpoint complete {}",
                r.fault,
                s(r.restored),
                s(r.ingest),
                s(r.dataflow),
                r.checkpoint.map_or_else(
                    || "none due (input processed to the undisturbed watermark)".into(),
                    s
                )
            );
        }
        println!(
            "wall time                       undisturbed {}, chaos {}",
            s(self.calm_wall),
            s(self.chaos_wall)
        );
    }
}

/// One run's services and instances.
struct Stack {
    redis: PrivateRedis,
    kafka: PrivateKafka,
    ports: Vec<u16>,
    servers: Vec<Option<Server>>,
    args: Vec<Vec<String>>,
    derived: Vec<PathBuf>,
}

impl Stack {
    async fn start(redis: PrivateRedis, kafka: PrivateKafka, instances: usize) -> Stack {
        let mut s = Stack {
            ports: free_port_list(instances),
            derived: (0..instances)
                .map(|i| scratch(&format!("chaos-derived-{i}")))
                .collect(),
            servers: Vec::new(),
            args: Vec::new(),
            redis,
            kafka,
        };
        s.args = s
            .derived
            .iter()
            .map(|d| serve_args(&s.redis.url(), &s.kafka.brokers(), d))
            .collect();
        for i in 0..instances {
            let server = start(s.ports[i], &s.args[i]).await;
            s.servers.push(Some(server));
            if i == 0 {
                // The first instance takes the lease; the others stand by.
                until("the first instance taking the lease", Duration::from_secs(60), || {
                    let port = s.ports[0];
                    async move { try_metric(port, "inkstream_dataflow_active").await == Some(1.0) }
                })
                .await;
            }
        }
        s
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// Acts as the supervisor the docs ask for: an instance whose process
    /// exited on its own is started again on its port. Returns what exited.
    async fn supervise(&mut self) -> Vec<String> {
        let mut restarted = Vec::new();
        for i in 0..self.servers.len() {
            let exited = match self.servers[i].as_mut() {
                Some(s) => s.child.try_wait().expect("try_wait"),
                None => None,
            };
            if let Some(status) = exited {
                restarted.push(format!("instance {i}: {status}"));
                self.servers[i] = Some(start(self.ports[i], &self.args[i]).await);
            }
        }
        restarted
    }

    /// Each instance's figures (for the run's log while it waits).
    async fn status(&self) -> String {
        let mut out = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let mut figures = Vec::new();
            for (short, name) in [
                ("active", "inkstream_dataflow_active"),
                ("watermark", "inkstream_dataflow_watermark_seconds"),
                ("read", "inkstream_dataflow_source_records_total"),
                (
                    "caught_up",
                    "inkstream_dataflow_source_checks_total{outcome=\"caught_up\"",
                ),
                ("mirror_lag", "inkstream_mirror_lag_events"),
                ("late", "inkstream_dataflow_late_events_total"),
            ] {
                if let Some(v) = try_metric(*p, name).await {
                    figures.push(format!("{short} {v}"));
                }
            }
            out.push(format!("instance {i}: {}", figures.join(", ")));
        }
        out.join("; ")
    }

    /// The instance running the dataflow, if one does.
    async fn holder(&self) -> Option<usize> {
        for (i, p) in self.ports.iter().enumerate() {
            if self.servers[i].is_some()
                && try_metric(*p, "inkstream_dataflow_active").await == Some(1.0)
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until the input is in and processed: the mirror has no lag on
    /// any instance; the holder read at least `records` records from the
    /// event topics (the undisturbed run: every id) or its watermark reached
    /// `watermark` (the chaos run: the undisturbed run's last watermark; the
    /// watermark is the minimum over the topics' partitions, so it ends
    /// below the last event); then its watermark and derived count stand
    /// still.
    async fn settle(
        &self,
        records: Option<f64>,
        watermark: Option<f64>,
        deadline: Duration,
        problems: &mut Vec<String>,
    ) {
        // The mirror's lag (pending + unread in its group) as each instance
        // last published it; not reaching 0 is reported, not fatal, so the
        // verdict still says which ids (if any) are missing on the topics.
        let started = Instant::now();
        let mut lags = Vec::new();
        while started.elapsed() < deadline {
            lags.clear();
            for p in &self.ports {
                lags.push(try_metric(*p, "inkstream_mirror_lag_events").await);
            }
            if lags.contains(&Some(0.0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !lags.contains(&Some(0.0)) {
            problems.push(format!(
                "the mirror's lag did not reach 0 within {} s: {lags:?} by instance",
                deadline.as_secs()
            ));
        }
        // The holder has read every record the topics hold: two of its read
        // checks (the Kafka source compares each assigned partition's
        // position with the broker's latest offset; the second began after
        // this point) answered `caught_up` after the mirror's lag reached 0.
        // The watermark alone does not say so: after the broker's restart a
        // partition can be fetched seconds after the others, and its records
        // (an arrival-order operator's input) would miss the stop.
        const CAUGHT_UP: &str = "inkstream_dataflow_source_checks_total{outcome=\"caught_up\"}";
        // The count each holder showed first (the holder may change).
        let base: std::cell::RefCell<HashMap<u16, f64>> = Default::default();
        until(
            "the holder confirming it has read every record on the topics",
            deadline,
            || async {
                let Some(h) = self.holder().await else {
                    return false;
                };
                let port = self.ports[h];
                let Some(n) = try_metric(port, CAUGHT_UP).await else {
                    return false;
                };
                let first = *base.borrow_mut().entry(port).or_insert(n);
                n >= first + 2.0
            },
        )
        .await;
        until("the dataflow reading its input", deadline, || async {
            let Some(h) = self.holder().await else {
                return false;
            };
            let port = self.ports[h];
            let read = try_metric(port, "inkstream_dataflow_source_records_total").await;
            let wm = try_metric(port, "inkstream_dataflow_watermark_seconds").await;
            records.is_none_or(|r| read.is_some_and(|n| n >= r))
                && watermark.is_none_or(|w| wm.is_some_and(|x| x >= w))
        })
        .await;
        // Then the holder's derived count and watermark stand still for a
        // second (its input is all read: nothing more can come).
        let started = Instant::now();
        let mut last = (-1.0, -1.0);
        loop {
            let port = self.ports[self.holder().await.unwrap_or(0)];
            let now = (
                try_metric(port, "inkstream_dataflow_derived_events_total")
                    .await
                    .unwrap_or(-2.0),
                try_metric(port, "inkstream_dataflow_watermark_seconds")
                    .await
                    .unwrap_or(-2.0),
            );
            if now == last {
                break;
            }
            last = now;
            assert!(
                started.elapsed() < deadline,
                "chaos run: the derived events did not settle"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// SIGTERM to every standby, then to the holder (which drains), each
    /// given `within` to exit. Returns the holder's late events (metric) and
    /// watermark. The holder's drain processes what it has read but not yet
    /// processed, and its fanout publications wait for room in the Redis
    /// broker's queue (backpressure): at the end of a 1 M backlog that took
    /// longer than 60 s in 3 of 5 runs.
    async fn stop(&mut self, within: Duration) -> (f64, f64) {
        let holder = self.holder().await;
        let (late, wm) = match holder {
            Some(h) => (
                try_metric(self.ports[h], "inkstream_dataflow_late_events_total")
                    .await
                    .unwrap_or(0.0),
                try_metric(self.ports[h], "inkstream_dataflow_watermark_seconds")
                    .await
                    .unwrap_or(0.0),
            ),
            None => (0.0, 0.0),
        };
        let mut order: Vec<usize> = (0..self.servers.len())
            .filter(|i| Some(*i) != holder)
            .collect();
        order.extend(holder);
        for i in order {
            if let Some(mut s) = self.servers[i].take() {
                let status = tokio::task::spawn_blocking(move || s.terminate(within))
                    .await
                    .expect("join");
                assert!(
                    status.is_some_and(|s| s.success()),
                    "instance {i} did not stop cleanly within {} s: {status:?}",
                    within.as_secs()
                );
            }
        }
        (late, wm)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.servers.clear();
        // CHAOS_KEEP=1 keeps the derived files to look into.
        if std::env::var_os("CHAOS_KEEP").is_some() {
            eprintln!("chaos: derived files kept in {:?}", self.derived);
            return;
        }
        for d in &self.derived {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Ingests the whole input with the client; returns when every batch is
/// acknowledged.
async fn ingest_all(stack: &Stack, input: &Arc<Input>, deadline: Duration) -> Arc<ClientState> {
    let state = Arc::new(ClientState::default());
    let (_gate, gate_rx) = tokio::sync::watch::channel(usize::MAX);
    tokio::time::timeout(
        deadline,
        client(stack.urls(), input.clone(), state.clone(), gate_rx),
    )
    .await
    .expect("chaos run: the undisturbed ingest did not finish");
    state
}

/// Runs the undisturbed run, then the chaos run, and compares them.
pub async fn run(cfg: &Config) -> Report {
    let t = Instant::now();
    let say = |m: &str| {
        if cfg.verbose {
            println!("[chaos {:>7.1} s] {m}", t.elapsed().as_secs_f64());
        }
    };
    let input = Arc::new(generate(cfg));
    say(&format!(
        "{} lines, {} distinct ids, {} batches",
        input.lines,
        input.distinct.len(),
        input.batches.len()
    ));
    // Both brokers start together: a JVM's start is the slowest step.
    let (k_calm, k_chaos) = tokio::task::spawn_blocking(|| {
        std::thread::scope(|s| {
            let a = s.spawn(PrivateKafka::start);
            let b = s.spawn(PrivateKafka::start);
            (
                a.join().expect("the first broker started"),
                b.join().expect("the second broker started"),
            )
        })
    })
    .await
    .expect("join");
    say("brokers up");

    // 1. The undisturbed run: one instance, no fault.
    let calm_start = Instant::now();
    let mut calm = Stack::start(PrivateRedis::start("chaos-calm"), k_calm, 1).await;
    ingest_all(&calm, &input, cfg.deadline * 4).await;
    say("undisturbed: ingested");
    let mut settle_problems = Vec::new();
    calm.settle(
        Some(input.distinct.len() as f64),
        None,
        cfg.deadline,
        &mut settle_problems,
    )
    .await;
    let (calm_late, calm_watermark) = calm.stop(cfg.deadline).await;
    let calm_derived = read_derived(&[&calm.derived[0]]);
    let calm_wall = calm_start.elapsed();
    drop(calm);
    say(&format!(
        "undisturbed: {} derived events, watermark {calm_watermark}",
        calm_derived.by_id.len()
    ));

    // 2. The chaos run: two instances, three faults while the client posts.
    let chaos_start = Instant::now();
    let mut chaos = Stack::start(PrivateRedis::start("chaos"), k_chaos, 2).await;
    let state = Arc::new(ClientState::default());
    let n = input.batches.len();
    let points = [n / 5, n * 9 / 20, n * 7 / 10];
    let (gate, gate_rx) = tokio::sync::watch::channel(points[0]);
    let poster = tokio::spawn(client(chaos.urls(), input.clone(), state.clone(), gate_rx));
    let redis_url = chaos.redis.url();
    let acked = |s: &Arc<ClientState>| s.acked_batches.load(Ordering::SeqCst);
    let mut recoveries = Vec::new();
    let mut supervisor_restarts = Vec::new();
    for (k, point) in points.iter().enumerate() {
        until("the client reaching the next fault", cfg.deadline, || {
            let s = state.clone();
            async move { acked(&s) >= *point }
        })
        .await;
        let next = points.get(k + 1).copied().unwrap_or(usize::MAX);
        let before = latest_checkpoint(&redis_url, "chaos").await;
        let acked_before = acked(&state);
        let t0 = Instant::now();
        let mut r = Recovery::default();
        match k {
            0 => {
                let h = chaos.holder().await.expect("an instance holds the lease");
                r.fault = format!("kill -9 holder ({h})");
                say(&format!("killing the holder, instance {h}"));
                let mut dead = chaos.servers[h].take().expect("holder running");
                dead.child.kill().expect("SIGKILL");
                let _ = dead.child.wait();
                drop(dead);
                gate.send_replace(next);
                until("the standby taking the lease", cfg.deadline, || async {
                    chaos.holder().await.is_some()
                })
                .await;
                r.dataflow = t0.elapsed();
                say("standby took over; restarting the killed instance");
                let server = start(chaos.ports[h], &chaos.args[h]).await;
                chaos.servers[h] = Some(server);
                r.restored = t0.elapsed();
            }
            1 => {
                r.fault = "Redis kill -9 + restart".into();
                say("stopping Redis");
                chaos.redis.stop();
                gate.send_replace(next);
                tokio::time::sleep(cfg.down).await; // the outage's length, not a wait for a condition
                tokio::task::block_in_place(|| chaos.redis.restart());
                r.restored = t0.elapsed();
                say("Redis back");
            }
            _ => {
                r.fault = "Kafka kill -9 + restart".into();
                say("stopping the broker");
                chaos.kafka.stop();
                gate.send_replace(next);
                tokio::time::sleep(cfg.down).await; // the outage's length
                tokio::task::block_in_place(|| chaos.kafka.restart());
                r.restored = t0.elapsed();
                say("broker back");
            }
        }
        until("a batch acknowledged after the fault", cfg.deadline, || {
            let s = state.clone();
            async move { acked(&s) > acked_before || acked(&s) == n }
        })
        .await;
        r.ingest = t0.elapsed();
        if k > 0 {
            until("an instance running the dataflow", cfg.deadline, || async {
                chaos.holder().await.is_some()
            })
            .await;
            r.dataflow = t0.elapsed();
        }
        let mut told = Instant::now();
        let checkpointed = std::sync::atomic::AtomicBool::new(false);
        until(
            "a checkpoint completing after the fault",
            cfg.deadline,
            || {
                let (url, before) = (redis_url.clone(), before.clone());
                let tell = told.elapsed() >= Duration::from_secs(10);
                if tell {
                    told = Instant::now();
                }
                let (chaos, state, checkpointed) = (&chaos, &state, &checkpointed);
                async move {
                    if tell {
                        say(&format!(
                            "waiting for a checkpoint: {}",
                            chaos.status().await
                        ));
                    }
                    let now = latest_checkpoint(&url, "chaos").await;
                    if now.is_some() && now != before {
                        checkpointed.store(true, Ordering::SeqCst);
                        return true;
                    }
                    // No barrier left to cross: everything acknowledged and
                    // read to where the undisturbed run ended.
                    if acked(state) == n
                        && let Some(h) = chaos.holder().await
                    {
                        let wm = try_metric(chaos.ports[h], "inkstream_dataflow_watermark_seconds")
                            .await;
                        return wm.is_some_and(|w| w >= calm_watermark);
                    }
                    false
                }
            },
        )
        .await;
        r.checkpoint = checkpointed.load(Ordering::SeqCst).then(|| t0.elapsed());
        say(&format!("{r:?}"));
        recoveries.push(r);
        for exited in chaos.supervise().await {
            say(&format!("supervisor: {exited}; started again"));
            supervisor_restarts.push(exited);
        }
    }
    tokio::time::timeout(cfg.deadline * 4, poster)
        .await
        .expect("chaos run: the client did not finish")
        .expect("the client panicked");
    say("chaos: ingested");
    supervisor_restarts.extend(chaos.supervise().await);
    chaos
        .settle(
            None,
            Some(calm_watermark),
            cfg.deadline,
            &mut settle_problems,
        )
        .await;
    let (chaos_late, chaos_watermark) = chaos.stop(cfg.deadline).await;
    let chaos_wall = chaos_start.elapsed();
    say(&format!(
        "chaos: stopped at watermark {chaos_watermark}; verifying"
    ));

    // 3. The verdict.
    let acked_ids = state.acked_ids.lock().expect("acked ids").clone();
    let log = log_ids(&redis_url, "chaos").await;
    let topics = topic_ids(&chaos.kafka.brokers(), acked_ids.len()).await;
    let derived = read_derived(&[&chaos.derived[0], &chaos.derived[1]]);
    let mut examples = Vec::new();
    let mut missing = 0;
    let mut differing = 0;
    let mut by_type: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let type_of = |json: &str| {
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    for (id, json) in &calm_derived.by_id {
        match derived.by_id.get(id) {
            None => {
                missing += 1;
                by_type.entry(type_of(json)).or_default()[0] += 1;
                if examples.len() < 3 {
                    examples.push(format!("missing {json}"));
                }
            }
            Some(got) if got != json => {
                differing += 1;
                by_type.entry(type_of(json)).or_default()[2] += 1;
                if examples.len() < 6 {
                    examples.push(format!("differs: {json} vs {got}"));
                }
            }
            Some(_) => {}
        }
    }
    let extra: Vec<&String> = derived
        .by_id
        .iter()
        .filter(|(id, _)| !calm_derived.by_id.contains_key(*id))
        .map(|(_, j)| j)
        .collect();
    for j in &extra {
        by_type.entry(type_of(j)).or_default()[1] += 1;
    }
    examples.extend(extra.iter().take(3).map(|j| format!("extra {j}")));
    examples.extend(
        calm_derived
            .examples
            .iter()
            .map(|e| format!("undisturbed: {e}")),
    );
    examples.extend(derived.examples.iter().map(|e| format!("chaos: {e}")));
    let report = Report {
        lines: input.lines,
        distinct_ids: input.distinct.len(),
        acked_ids: acked_ids.len(),
        retries: state.retries.load(Ordering::Relaxed),
        reported_duplicates: state.duplicates.load(Ordering::Relaxed),
        log_ids: log.len(),
        log_missing: acked_ids.iter().filter(|id| !log.contains_key(*id)).count(),
        log_extra: log.keys().filter(|id| !acked_ids.contains(*id)).count(),
        log_duplicated: log.values().filter(|n| **n > 1).count(),
        topic_records: topics.values().map(|(n, _)| n).sum(),
        topic_ids: topics.len(),
        topic_missing: acked_ids
            .iter()
            .filter(|id| !topics.contains_key(*id))
            .count(),
        topic_differing: topics.values().filter(|(_, d)| *d).count(),
        derived_calm: calm_derived.by_id.len(),
        derived_chaos: derived.by_id.len(),
        derived_chaos_copies: derived.copies,
        derived_missing: missing,
        derived_extra: extra.len(),
        derived_differing: differing + derived.differing + calm_derived.differing,
        derived_examples: examples,
        derived_by_type: by_type,
        sessions_calm: count_type(&calm_derived, "writing.session_ended"),
        sessions_chaos: count_type(&derived, "writing.session_ended"),
        dead_letters_calm: count_type(&calm_derived, "system.dead_letter"),
        dead_letters_chaos: count_type(&derived, "system.dead_letter"),
        late_metric: calm_late + chaos_late,
        recoveries,
        supervisor_restarts,
        calm_wall,
        chaos_wall,
        settle_problems,
    };
    drop(chaos);
    report
}
