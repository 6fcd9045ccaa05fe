//! Fanout through Redis: several gateways, one numbering, history in Redis.
//! The hub reaches it through [`super`]'s seam.
//!
//! With `fanout.broker = redis` (the default when Redis is configured) the hub
//! no longer numbers or keeps publications itself. The shape is Centrifugo's
//! Redis engine:
//!
//! - **Publishing** (the process running the dataflow, or an admin
//!   broadcast on any gateway) runs one Lua call per batch. For every
//!   publication it increments the channel's offset in a meta hash (creating
//!   the channel's epoch on first use), appends the publication to the
//!   channel's history stream with the offset as its entry id (`<offset>-0`,
//!   capped at `history_size` entries, expiring after `history_max_age`
//!   without publications), and `PUBLISH`es `<epoch> <offset> <body>` on the
//!   channel's Pub/Sub channel. Numbering and history are therefore shared by
//!   every gateway, and a client may reconnect to any of them with `since`.
//! - **Subscribing**: each gateway holds one Pub/Sub connection and
//!   subscribes to a channel lazily, when its first local client joins, and
//!   unsubscribes after the last one leaves. One task owns that connection and
//!   does everything in order: it subscribes, then reads the channel's
//!   current offset (so every later publication arrives by Pub/Sub), replays
//!   the history a client asked for, and only then adds the client; live
//!   publications at or below what a client was given are skipped.
//! - **Gaps**: Pub/Sub is at-most-once (a lost connection loses messages). The
//!   task tracks the last offset it delivered per channel; a publication that
//!   skips offsets makes it read the missing ones from the history stream
//!   first, and after a reconnect it reads everything published while it was
//!   away. Only what the history no longer holds is lost, and the client
//!   sees the jump in offsets.
//! - **Bounds**: publications wait in a bounded queue (overflow is dropped and
//!   counted: the live fanout must never hold back the dataflow); the history
//!   is bounded per channel; meta hashes expire a day after their channel's
//!   last publication.

use super::{Command, LocalHub, Priority, Queued, RemoteJoin};
use crate::lease::Fence;
use crate::metrics::Metrics;
use crate::redis_conn::PrimaryConnection as ConnectionManager;
use crate::websocket_fanout::channel::ChannelKey;
use crate::websocket_fanout::client::ClientQueue;
use crate::websocket_fanout::config::HubConfig;
use crate::websocket_fanout::frames::{Recovery, message_frame};
use crate::websocket_fanout::routing::WsPath;
use futures_util::StreamExt;
use prometheus::{IntCounter, IntCounterVec, Opts};
use schemas::{Classify, Fault};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Settings of the Redis fanout broker.
#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    /// `redis://…` of the shared Redis.
    pub url: String,
    /// Key prefix (`redis.prefix`); keys are `<prefix>:ws:{<path>|<channel>}:…`.
    pub prefix: String,
    /// Publications waiting to be written to Redis before new ones are dropped.
    pub publish_queue: usize,
    /// `redis.tls` (used with `rediss://`).
    pub tls: crate::tls::TlsFiles,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Classify for BrokerError {
    fn fault(&self) -> Fault {
        match self {
            BrokerError::Redis(e) if e.kind() == redis::ErrorKind::InvalidClientConfig => {
                Fault::Config
            }
            BrokerError::Redis(_) => Fault::External,
            BrokerError::Tls(e) => e.fault(),
            // The metric names are constants: registering them cannot fail
            // unless the code is wrong.
            BrokerError::Metrics(_) => Fault::Internal,
        }
    }
}

/// Why a publication that waits for its answer (an admin broadcast) was not
/// published. The reason is Redis's error text: the same failure answers
/// every caller waiting on the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Redis refused the batch itself (a script error, OOM): retrying the
    /// same batch fails the same way.
    #[error("{0}")]
    Refused(String),
    /// Redis did not answer or the connection failed; the batch is retried.
    #[error("{0}")]
    Failed(String),
    /// The broker's task is gone (shutdown).
    #[error("the fanout broker stopped")]
    Stopped,
}

impl Classify for PublishError {
    fn fault(&self) -> Fault {
        match self {
            PublishError::Refused(_) | PublishError::Failed(_) => Fault::External,
            PublishError::Stopped => Fault::Internal,
        }
    }
    fn retryable(&self) -> bool {
        matches!(self, PublishError::Failed(_))
    }
}

/// One call per batch. ARGV[1] history size (0: no history), ARGV[2]
/// history ttl ms, ARGV[3] meta ttl ms, ARGV[4] now ms, ARGV[5] epoch seed
/// (random per call), ARGV[6] the publisher's marker key and ARGV[7] the
/// batch's number (the same on every try of one batch, and rising: a try
/// whose reply was lost after Redis ran it is not run again by the next,
/// nor is a try that arrives after a later batch ran; either returns
/// nothing), ARGV[8] the dataflow lease's fence key and ARGV[9] this
/// instance's token (empty: not fenced; sent when the batch holds
/// publications of the dataflow or the notifier): a batch whose fence is
/// no longer this instance's runs nothing and returns `{-1}` (another
/// instance took the dataflow over, and publishes its outputs now), then
/// per publication the channel's tag (its Pub/Sub
/// name, [`Keys::tag`]) and the body. The meta, history and interest keys
/// are the tag with `:m`, `:h` and `:i` ([`Keys::names`]), derived here: two
/// arguments per publication instead of five, the cost that bounds a burst
/// of publications (most on channels nobody subscribes to). Like the log's
/// append script, the keys of one batch must live on one Redis (no cluster).
///
/// A channel nobody subscribed to within the history's max age (no interest
/// key) is skipped: no client can hold an offset of it, so nothing needs
/// numbering or keeping. Work is per channel where it can be: the meta is
/// read and written, TTLs set, and one `PUBLISH` sent once per channel per
/// batch, carrying `<epoch> <first offset>` and the bodies, one per line
/// (compact JSON has no raw newline). Returns, per publication, its offset
/// (0 when skipped) and the gateways that received its channel's message.
const PUBLISH_SCRIPT: &str = r#"
local ran = tonumber(redis.call('GET', ARGV[6]) or '0')
if ran and ran >= tonumber(ARGV[7]) then
  return {}
end
if ARGV[8] ~= '' and redis.call('GET', ARGV[8]) ~= ARGV[9] then
  return {-1}
end
local size = tonumber(ARGV[1])
local n = (#ARGV - 9) / 2
local state, order, metas = {}, {}, {}
for i = 1, n do
  local tag = ARGV[8 + 2 * i]
  local meta, hist = tag .. ':m', tag .. ':h'
  local st = state[meta]
  if st == nil then
    st = false
    if redis.call('EXISTS', tag .. ':i') == 0 then
      -- Nobody can hold an offset of it any more: forget its numbering, so
      -- a client coming back with an old offset learns it is not recovered
      -- (the history goes with its meta, see META_SCRIPT).
      if redis.call('EXISTS', meta) == 1 then
        redis.call('DEL', meta, hist)
      end
    else
      local epoch = redis.call('HGET', meta, 'epoch')
      local offset = 0
      if not epoch then
        epoch = ARGV[5] .. '-' .. i
        redis.call('DEL', hist)
      else
        offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
      end
      st = {epoch = epoch, first = offset + 1, offset = offset, hist = hist,
            chan = tag, bodies = {}}
    end
    state[meta] = st
    order[#order + 1] = meta
  end
  metas[i] = meta
  if st then
    st.offset = st.offset + 1
    local body = ARGV[9 + 2 * i]
    if size > 0 then
      redis.call('XADD', hist, 'MAXLEN', size, st.offset .. '-0', 't', ARGV[4], 'd', body)
    end
    st.bodies[#st.bodies + 1] = body
  end
end
local received = {}
for _, meta in ipairs(order) do
  local st = state[meta]
  if st then
    redis.call('HSET', meta, 'epoch', st.epoch, 'offset', st.offset)
    redis.call('PEXPIRE', meta, ARGV[3])
    if size > 0 then
      redis.call('PEXPIRE', st.hist, ARGV[2])
    end
    received[meta] = redis.call('PUBLISH', st.chan,
      st.epoch .. ' ' .. st.first .. '\n' .. table.concat(st.bodies, '\n'))
  end
end
local out = {}
local seen = {}
for i = 1, n do
  local st = state[metas[i]]
  if st then
    seen[metas[i]] = (seen[metas[i]] or (st.first - 1)) + 1
    out[2 * i - 1] = seen[metas[i]]
    out[2 * i] = received[metas[i]]
  else
    out[2 * i - 1] = 0
    out[2 * i] = 0
  end
end
redis.call('SET', ARGV[6], ARGV[7], 'PX', ARGV[3])
return out
"#;

/// The channel's epoch and newest offset, creating the channel when new.
/// KEYS[1] meta, KEYS[2] history; ARGV[1] epoch candidate, ARGV[2] meta ttl
/// ms. A new epoch starts with an empty history (a stream left over from an
/// expired or evicted meta would refuse offsets from 1 again).
const META_SCRIPT: &str = r#"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
redis.call('HSETNX', KEYS[1], 'offset', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'epoch', 'offset')
"#;

/// Meta hashes outlive their history by far: offsets (and so clients'
/// positions) survive a quiet day; the history itself is bounded by age.
const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// Publishing lanes: batches of different channels in flight at once (one
/// lane's round trip was the fanout's throughput limit, about 76 K
/// publications/s with 2 ms per batch of 160).
const PUBLISH_LANES: usize = 4;

/// Most publications in one batch (one script call).
const BATCH: usize = 256;

/// Most [`Priority::Background`] publications in one batch: what a live
/// publication may wait behind per lane while a burst of results drains
/// (at ~5 µs of Redis each, ~0.3 ms).
const BACKGROUND_BATCH: usize = 64;

/// One publishing lane: a queue per priority, drained by one task.
struct Lane {
    live: mpsc::Sender<Publication>,
    background: mpsc::Sender<Publication>,
}

impl Lane {
    fn queue(&self, priority: Priority) -> &mpsc::Sender<Publication> {
        match priority {
            Priority::Live => &self.live,
            Priority::Background => &self.background,
        }
    }
}

/// Longest the dataflow's thread waits for room in a full publish queue
/// (Redis slow or away) before publications are dropped.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// Fixed hasher: a channel's lane must not change within a process.
const LANE_HASH: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

/// Longest wait for a Pub/Sub (un)subscribe confirmation: a half-open
/// connection must not freeze the gateway's one subscriber task.
const PUBSUB_TIMEOUT: Duration = Duration::from_secs(5);

/// The meta TTL for a history max age: never shorter than the history.
fn meta_ttl(history_max_age: Duration) -> Duration {
    META_TTL.max(history_max_age * 2)
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

/// Connection trouble, or a server that will answer shortly (retry), rather
/// than a reply Redis refused (a retry would fail the same way). A Redis
/// that just restarted answers `LOADING` while it reads its AOF back: a
/// publication batch refused then must wait, not be dropped.
fn transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            redis::RetryMethod::WaitAndRetry | redis::RetryMethod::RefreshSlotsAndRetry
        )
}

/// One publication on its way to Redis.
struct Publication {
    key: ChannelKey,
    body: String,
    /// Admin broadcasts wait for the offset and receiver count.
    reply: Option<oneshot::Sender<Result<(u64, u64), PublishError>>>,
    /// An output of the dataflow or the notifier (not an admin broadcast):
    /// published only while this instance holds the dataflow lease's fence.
    fenced: bool,
}

/// Key names of one deployment.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    /// `<prefix>:ws:{<path>|<kind>:<id>}`: the channel's id escaped by
    /// [`crate::redis_key::part`], so no id can end the hash tag early (and
    /// move a channel's keys to different cluster slots) or name another
    /// channel's keys.
    fn tag(&self, key: &ChannelKey) -> String {
        let (kind, id) = key.1.split_once(':').unwrap_or(("", key.1.as_str()));
        format!(
            "{}:ws:{{{}|{kind}:{}}}",
            self.prefix,
            key.0.as_str(),
            crate::redis_key::part(id)
        )
    }
    /// Meta, history and interest keys and the Pub/Sub name of a channel:
    /// the tag and the suffixes `PUBLISH_SCRIPT` appends to it (the test
    /// below holds them to the single-key helpers).
    #[cfg(test)]
    fn names(&self, key: &ChannelKey) -> [String; 4] {
        let tag = self.tag(key);
        [
            format!("{tag}:m"),
            format!("{tag}:h"),
            format!("{tag}:i"),
            tag,
        ]
    }
    fn meta(&self, key: &ChannelKey) -> String {
        format!("{}:m", self.tag(key))
    }
    /// `<prefix>:ws:applied:<publisher>`: the number of the last batch a
    /// publisher's script ran.
    fn applied(&self, publisher: u64) -> String {
        format!("{}:ws:applied:{publisher:016x}", self.prefix)
    }
    fn history(&self, key: &ChannelKey) -> String {
        format!("{}:h", self.tag(key))
    }
    /// Exists while some gateway had a subscriber within the history's max
    /// age: only then is the channel numbered and kept.
    fn interest(&self, key: &ChannelKey) -> String {
        format!("{}:i", self.tag(key))
    }
    fn pubsub(&self, key: &ChannelKey) -> String {
        self.tag(key)
    }
    fn parse_pubsub(&self, name: &str) -> Option<ChannelKey> {
        let inner = name
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ws:{")?
            .strip_suffix('}')?;
        let (path, channel) = inner.split_once('|')?;
        let path = WsPath::ALL.into_iter().find(|p| p.as_str() == path)?;
        let (kind, id) = channel.split_once(':')?;
        Some((path, format!("{kind}:{}", crate::redis_key::unescape(id)?)))
    }
}

/// Counters of the broker.
#[derive(Clone)]
struct BrokerMetrics {
    /// Publications by outcome: published, dropped (queue full), failed,
    /// fenced (this instance no longer holds the dataflow lease).
    publications: IntCounterVec,
    /// Publications read back from the history after a Pub/Sub gap.
    gap_fills: IntCounter,
    /// Pub/Sub reconnects.
    reconnects: IntCounter,
    /// One batch's Lua call, from send to reply.
    batch_seconds: prometheus::Histogram,
    /// Publications per batch.
    batch_size: prometheus::Histogram,
    /// Time the dataflow's thread waited for room in a full publish lane.
    publish_wait_seconds: prometheus::Counter,
}

impl BrokerMetrics {
    fn new(metrics: &Metrics) -> Result<BrokerMetrics, prometheus::Error> {
        let m = BrokerMetrics {
            publications: IntCounterVec::new(
                Opts::new(
                    "inkstream_ws_broker_publications_total",
                    "Fanout publications through Redis, by outcome (published, dropped, failed, fenced).",
                ),
                &["outcome"],
            )?,
            gap_fills: IntCounter::new(
                "inkstream_ws_broker_gap_fills_total",
                "Publications a gateway read from the Redis history because Pub/Sub skipped them.",
            )?,
            reconnects: IntCounter::new(
                "inkstream_ws_broker_reconnects_total",
                "Reconnects of a gateway's Redis Pub/Sub connection.",
            )?,
            batch_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "inkstream_ws_broker_batch_seconds",
                    "Time of one publish batch's Lua call through Redis, send to reply.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
            batch_size: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "inkstream_ws_broker_batch_publications",
                    "Publications per publish batch.",
                )
                .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0]),
            )?,
            publish_wait_seconds: prometheus::Counter::new(
                "inkstream_ws_broker_publish_wait_seconds_total",
                "Time the dataflow waited for room in a full fanout publish lane (Redis slower than a burst of publications: the dataflow's outputs, live ones included, are held back meanwhile).",
            )?,
        };
        for o in ["published", "dropped", "failed", "fenced"] {
            m.publications.with_label_values(&[o]);
        }
        let r = metrics.registry();
        r.register(Box::new(m.publications.clone()))?;
        r.register(Box::new(m.gap_fills.clone()))?;
        r.register(Box::new(m.reconnects.clone()))?;
        r.register(Box::new(m.publish_wait_seconds.clone()))?;
        r.register(Box::new(m.batch_seconds.clone()))?;
        r.register(Box::new(m.batch_size.clone()))?;
        Ok(m)
    }
}

/// The hub's handle on Redis.
pub(crate) struct Broker {
    /// The publishing lanes; a channel always uses the same lane, so its
    /// publications of one priority keep their order, while lanes overlap
    /// their round trips to Redis.
    lanes: Vec<Lane>,
    /// Subscribes/unsubscribes for the one subscriber task, bounded
    /// (`fanout.command_queue`); each holds its connection's permit.
    cmd_tx: mpsc::Sender<Queued>,
    metrics: BrokerMetrics,
    /// `inkstream_ws_broker_command_waits_total`.
    command_waits: prometheus::IntCounterVec,
    /// Set when a wait for room gave up (Redis is not draining the lanes:
    /// away, or far slower than the dataflow); cleared by the next
    /// publication that finds room. While set, a full lane drops at once.
    gave_up: std::sync::atomic::AtomicBool,
    /// The dataflow lease's fence the queued publications (the outputs of
    /// the dataflow and the notifier) carry: see [`Broker::fenced`].
    fence: Arc<std::sync::Mutex<Option<Fence>>>,
}

impl Broker {
    /// Connects and starts the publisher and subscriber tasks for `hub`.
    pub(crate) async fn start<H: LocalHub>(
        hub: &Arc<H>,
        hub_config: &HubConfig,
        hub_metrics: &Metrics,
        config: &RedisBrokerConfig,
    ) -> Result<Broker, BrokerError> {
        let client = crate::tls::redis_client(&config.url, &config.tls)?;
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
        let keys = Keys {
            prefix: config.prefix.clone(),
        };
        let metrics = BrokerMetrics::new(hub_metrics)?;
        let fence: Arc<std::sync::Mutex<Option<Fence>>> = Arc::default();
        let mut lanes = Vec::with_capacity(PUBLISH_LANES);
        for _ in 0..PUBLISH_LANES {
            let room = (config.publish_queue / PUBLISH_LANES).max(1);
            let (live, live_rx) = mpsc::channel(room);
            let (background, background_rx) = mpsc::channel(room);
            lanes.push(Lane { live, background });
            tokio::spawn(publisher(
                conn.clone(),
                keys.clone(),
                (live_rx, background_rx),
                hub_config.history_size,
                hub_config.history_max_age,
                metrics.clone(),
                fence.clone(),
            ));
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(hub_config.command_queue.max(1));
        let history = Arc::new(HistoryReader {
            conn: conn.clone(),
            keys: keys.clone(),
            max_age: hub_config.history_max_age,
        });
        tokio::spawn(
            Subscriber::new(Arc::downgrade(hub), client, keys, history, metrics.clone())
                .run(cmd_rx),
        );
        Ok(Broker {
            lanes,
            cmd_tx,
            metrics,
            command_waits: hub_metrics.ws_broker_command_waits.clone(),
            gave_up: std::sync::atomic::AtomicBool::new(false),
            fence,
        })
    }

    /// From now on the queued publications (the dataflow's and the
    /// notifier's outputs) are published only while `fence` is the dataflow
    /// lease's: an instance that lost the lease (paused past its TTL, cut
    /// off) publishes none of what its dataflow still derives before it
    /// stops, so clients see the new holder's outputs only. Admin
    /// broadcasts are not fenced. `None`: no lease.
    pub(crate) fn fenced(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Queues a publication. A full queue holds back the caller when it is
    /// the dataflow's thread (backpressure: a burst, such as ten thousand
    /// writers starting at once, waits instead of being lost), for at most
    /// `PUBLISH_WAIT`; inside the async runtime (or past that wait) the
    /// publication is dropped and counted. The wait is bounded per outage,
    /// not per publication: once one wait gave up, full lanes drop at once
    /// until a publication finds room again. Otherwise every derived event
    /// would hold the dataflow for `PUBLISH_WAIT` while Redis is away (and a
    /// shutdown's drain would never end).
    pub(crate) fn publish(&self, key: ChannelKey, body: String, priority: Priority) {
        use std::sync::atomic::Ordering;
        let lane = self.lane(&key).queue(priority);
        let mut p = Publication {
            key,
            body,
            reply: None,
            fenced: true,
        };
        let may_wait =
            tokio::runtime::Handle::try_current().is_err() && !self.gave_up.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let deadline = started + PUBLISH_WAIT;
        let mut waited = false;
        let waited_for = |waited: bool| {
            if waited {
                self.metrics
                    .publish_wait_seconds
                    .inc_by(started.elapsed().as_secs_f64());
            }
        };
        loop {
            match lane.try_send(p) {
                Ok(()) => {
                    self.gave_up.store(false, Ordering::Relaxed);
                    return waited_for(waited);
                }
                Err(mpsc::error::TrySendError::Full(back))
                    if may_wait && std::time::Instant::now() < deadline =>
                {
                    p = back;
                    waited = true;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    if may_wait && matches!(e, mpsc::error::TrySendError::Full(_)) {
                        self.gave_up.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            waited_ms = PUBLISH_WAIT.as_millis() as u64,
                            "fanout: redis is not taking publications; dropping them (counted) until it does"
                        );
                    }
                    waited_for(waited);
                    self.metrics
                        .publications
                        .with_label_values(&["dropped"])
                        .inc();
                    return;
                }
            }
        }
    }

    /// Publishes and waits: the channel offset and the gateways that got it.
    pub(crate) async fn publish_and_wait(
        &self,
        key: ChannelKey,
        body: String,
    ) -> Result<(u64, u64), PublishError> {
        let (tx, rx) = oneshot::channel();
        let p = Publication {
            key,
            body,
            reply: Some(tx),
            fenced: false,
        };
        self.lane(&p.key)
            .live
            .send(p)
            .await
            .map_err(|_| PublishError::Stopped)?;
        rx.await.map_err(|_| PublishError::Stopped)?
    }

    fn lane(&self, key: &ChannelKey) -> &Lane {
        let h = std::hash::BuildHasher::hash_one(&LANE_HASH, key);
        &self.lanes[(h % self.lanes.len() as u64) as usize]
    }

    /// Queues a command for the subscriber task, taking one of the sending
    /// connection's `budget` permits first. Either wait (a permit, room in
    /// the queue) holds up only the caller: the connection's own read loop.
    pub(crate) async fn command(&self, cmd: Command, budget: &Arc<tokio::sync::Semaphore>) {
        let permit = match Arc::clone(budget).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.command_waits
                    .with_label_values(&["connection_budget"])
                    .inc();
                match Arc::clone(budget).acquire_owned().await {
                    Ok(p) => p,
                    // Never closed: the connection owns it.
                    Err(_) => return,
                }
            }
        };
        match self.cmd_tx.try_send(Queued { cmd, permit }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(q)) => {
                self.command_waits.with_label_values(&["queue_full"]).inc();
                let _ = self.cmd_tx.send(q).await;
            }
            // The subscriber task is gone (shutdown).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Writes queued publications in batches, one Lua call per batch, in order.
/// A failed batch is retried (with backoff) before anything after it, so
/// offsets follow publication order; meanwhile the queue bound applies.
async fn publisher(
    mut conn: ConnectionManager,
    keys: Keys,
    mut queues: (mpsc::Receiver<Publication>, mpsc::Receiver<Publication>),
    history_size: usize,
    history_max_age: Duration,
    metrics: BrokerMetrics,
    fence: Arc<std::sync::Mutex<Option<Fence>>>,
) {
    let script = redis::Script::new(PUBLISH_SCRIPT);
    let mut warned_fenced = false;
    let mut batch: Vec<Publication> = Vec::new();
    let mut seed: u64 =
        std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), std::process::id());
    // This publisher's last batch Redis ran (see `PUBLISH_SCRIPT`).
    let marker = keys.applied(seed);
    let mut batch_no: u64 = 0;
    loop {
        if !next_batch(&mut queues, &mut batch).await {
            return;
        }
        batch_no += 1;
        let mut backoff = Duration::from_millis(50);
        loop {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut inv = script.prepare_invoke();
            inv.arg(history_size)
                .arg(history_max_age.as_millis().max(1) as u64)
                .arg(meta_ttl(history_max_age).as_millis() as u64)
                .arg(now_ms)
                .arg(format!("{seed:016x}"))
                .arg(&marker)
                .arg(batch_no);
            let fence = batch
                .iter()
                .any(|p| p.fenced)
                .then(|| fence.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .flatten();
            match &fence {
                Some(f) => inv.arg(&f.key).arg(f.token),
                None => inv.arg("").arg(""),
            };
            for p in &batch {
                inv.arg(keys.tag(&p.key)).arg(&p.body);
            }
            let started = std::time::Instant::now();
            let result = inv.invoke_async::<Vec<i64>>(&mut conn).await;
            metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.batch_size.observe(batch.len() as f64);
            match result {
                Ok(replies) if replies.first() == Some(&-1) => {
                    // Fenced: drop the dataflow's and the notifier's
                    // publications, try the broadcasts again without them.
                    let before = batch.len();
                    batch.retain(|p| !p.fenced);
                    metrics
                        .publications
                        .with_label_values(&["fenced"])
                        .inc_by((before - batch.len()) as u64);
                    if !std::mem::replace(&mut warned_fenced, true) {
                        tracing::warn!(
                            fence = fence.as_ref().map(|f| f.key.as_str()).unwrap_or(""),
                            "fanout: this instance no longer holds the dataflow lease; its outputs are not published (counted as fenced)"
                        );
                    }
                    if batch.is_empty() {
                        break;
                    }
                }
                Ok(replies) => {
                    let replies: Vec<u64> = replies.into_iter().map(|r| r.max(0) as u64).collect();
                    metrics
                        .publications
                        .with_label_values(&["published"])
                        .inc_by(batch.len() as u64);
                    for (i, p) in batch.drain(..).enumerate() {
                        if let Some(reply) = p.reply {
                            let offset = replies.get(2 * i).copied().unwrap_or(0);
                            let n = replies.get(2 * i + 1).copied().unwrap_or(0);
                            let _ = reply.send(Ok((offset, n)));
                        }
                    }
                    break;
                }
                Err(error) if !transient(&error) => {
                    // Refused by Redis itself (a script error, OOM): the same
                    // batch would fail forever and hold up all fanout.
                    metrics
                        .publications
                        .with_label_values(&["failed"])
                        .inc_by(batch.len() as u64);
                    tracing::error!(%error, publications = batch.len(), "fanout publish refused by redis; batch dropped");
                    for p in batch.drain(..) {
                        if let Some(reply) = p.reply {
                            let _ = reply.send(Err(PublishError::Refused(error.to_string())));
                        }
                    }
                    break;
                }
                Err(error) => {
                    metrics
                        .publications
                        .with_label_values(&["failed"])
                        .inc_by(batch.len() as u64);
                    tracing::warn!(%error, publications = batch.len(), "fanout publish to redis failed; retrying");
                    // Waiting callers get the error; the batch is retried
                    // for everyone else.
                    for p in &mut batch {
                        if let Some(reply) = p.reply.take() {
                            let _ = reply.send(Err(PublishError::Failed(error.to_string())));
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Waits for publications and takes the next batch: every live one
/// waiting (up to [`BATCH`]), then at most [`BACKGROUND_BATCH`] background
/// ones. False once both queues are closed and empty.
async fn next_batch(
    (live, background): &mut (mpsc::Receiver<Publication>, mpsc::Receiver<Publication>),
    batch: &mut Vec<Publication>,
) -> bool {
    loop {
        while batch.len() < BATCH {
            match live.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut taken = 0;
        while taken < BACKGROUND_BATCH && batch.len() < BATCH {
            match background.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
            taken += 1;
        }
        if !batch.is_empty() {
            return true;
        }
        let (live_open, background_open) = (!live.is_closed(), !background.is_closed());
        tokio::select! {
            biased;
            Some(p) = live.recv(), if live_open => batch.push(p),
            Some(p) = background.recv(), if background_open => batch.push(p),
            else => return false,
        }
    }
}

/// Reads a channel's meta and history.
struct HistoryReader {
    conn: ConnectionManager,
    keys: Keys,
    max_age: Duration,
}

impl HistoryReader {
    /// The channel's epoch and newest offset (the channel is created if new).
    async fn meta(&self, key: &ChannelKey) -> Result<(String, u64), redis::RedisError> {
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), key);
        let (epoch, offset): (Option<String>, Option<u64>) = redis::Script::new(META_SCRIPT)
            .key(self.keys.meta(key))
            .key(self.keys.history(key))
            .arg(format!("{seed:016x}"))
            .arg(meta_ttl(self.max_age).as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((epoch.unwrap_or_default(), offset.unwrap_or(0)))
    }

    /// The publications with offsets `from..=to`, as bodies, when the history
    /// still holds every one of them (and none is older than the max age).
    async fn range(
        &self,
        key: &ChannelKey,
        from: u64,
        to: u64,
    ) -> Result<Option<Vec<(u64, String)>>, redis::RedisError> {
        if from > to {
            return Ok(Some(Vec::new()));
        }
        let oldest_ok = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(self.max_age.as_millis() as u64);
        let entries = self.entries(key, from, to).await?;
        let mut out = Vec::with_capacity(entries.len());
        for (i, (offset, at, body)) in entries.into_iter().enumerate() {
            match body {
                Some(body) if offset == from + i as u64 && at >= oldest_ok => {
                    out.push((offset, body))
                }
                _ => return Ok(None),
            }
        }
        Ok((out.len() as u64 == to - from + 1).then_some(out))
    }

    /// The history entries with offsets `from..=to` the stream still holds:
    /// (offset, publish time ms, body).
    async fn entries(
        &self,
        key: &ChannelKey,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, u64, Option<String>)>, redis::RedisError> {
        if from > to {
            return Ok(Vec::new());
        }
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.history(key))
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .ids
            .iter()
            .map(|e| {
                let offset =
                    e.id.split_once('-')
                        .and_then(|(o, _)| o.parse::<u64>().ok())
                        .unwrap_or(0);
                (offset, e.get("t").unwrap_or(0), e.get("d"))
            })
            .collect())
    }
}

async fn subscribe(
    sink: &mut redis::aio::PubSubSink,
    name: String,
) -> Result<(), redis::RedisError> {
    tokio::time::timeout(PUBSUB_TIMEOUT, sink.subscribe(name))
        .await
        .map_err(|_| timed_out("subscribe"))?
}

async fn unsubscribe(
    sink: &mut redis::aio::PubSubSink,
    name: String,
) -> Result<(), redis::RedisError> {
    tokio::time::timeout(PUBSUB_TIMEOUT, sink.unsubscribe(name))
        .await
        .map_err(|_| timed_out("unsubscribe"))?
}

/// What the gateway last delivered on a channel it is subscribed to.
struct ChannelState {
    epoch: String,
    offset: u64,
}

/// The one task that owns the gateway's Pub/Sub connection.
struct Subscriber<H> {
    hub: Weak<H>,
    client: redis::Client,
    keys: Keys,
    history: Arc<HistoryReader>,
    metrics: BrokerMetrics,
    channels: HashMap<ChannelKey, ChannelState>,
}

impl<H: LocalHub> Subscriber<H> {
    fn new(
        hub: Weak<H>,
        client: redis::Client,
        keys: Keys,
        history: Arc<HistoryReader>,
        metrics: BrokerMetrics,
    ) -> Subscriber<H> {
        Subscriber {
            hub,
            client,
            keys,
            history,
            metrics,
            channels: HashMap::new(),
        }
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Queued>) {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            if self.hub.strong_count() == 0 {
                return;
            }
            let pubsub = match self.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(error) => {
                    tracing::warn!(%error, "fanout: redis pub/sub connection failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if !first {
                self.metrics.reconnects.inc();
            }
            first = false;
            let (mut sink, mut stream) = pubsub.split();
            // Back after an outage: resubscribe, then deliver what was
            // published meanwhile (from the history) before anything live.
            let names: Vec<ChannelKey> = self.channels.keys().cloned().collect();
            // Interest first (Redis may have restarted empty): publications
            // are numbered and kept again before anything is read back.
            let mut ok = match self.show_interest(&names).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "fanout: renewing channel interest failed");
                    false
                }
            };
            for key in &names {
                if !ok {
                    break;
                }
                if let Err(error) = subscribe(&mut sink, self.keys.pubsub(key)).await {
                    tracing::warn!(%error, "fanout: resubscribing failed");
                    ok = false;
                }
            }
            if ok {
                for key in &names {
                    if let Err(error) = self.catch_up(key).await {
                        tracing::warn!(%error, "fanout: reading missed publications failed");
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = Duration::from_millis(50);
            let mut refresh =
                tokio::time::interval((self.history.max_age / 3).max(Duration::from_millis(100)));
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = refresh.tick() => {
                        let keys: Vec<ChannelKey> = self.channels.keys().cloned().collect();
                        if let Err(error) = self.show_interest(&keys).await {
                            tracing::warn!(%error, "fanout: renewing channel interest failed");
                        }
                    }
                    cmd = cmds.recv() => match cmd.map(|Queued { cmd, permit }| (cmd, permit)) {
                        None => return,
                        // The permit returns to the connection when the arm ends.
                        Some((Command::Join { conn, q, channel, since, epoch }, _permit)) => {
                            let (q2, ch2) = (q.clone(), channel.clone());
                            if let Err(error) = self.join(&mut sink, conn, q, channel, since, epoch).await {
                                tracing::warn!(%error, "fanout: subscribing through redis failed");
                                // The client is told (it may subscribe again);
                                // the connection to Redis is renewed.
                                if let Some(hub) = self.hub.upgrade() {
                                    hub.fail_join(&q2, &ch2);
                                }
                                break;
                            }
                        }
                        Some((Command::Unsubscribe { conn, key }, _permit)) => {
                            let empty = self.hub.upgrade().is_none_or(|h| h.remove_subscriber(conn, &key));
                            if empty
                                && self.channels.remove(&key).is_some()
                                && unsubscribe(&mut sink, self.keys.pubsub(&key)).await.is_err()
                            {
                                break;
                            }
                        }
                    },
                    msg = stream.next() => match msg {
                        None => {
                            tracing::warn!("fanout: redis pub/sub connection lost; reconnecting");
                            break;
                        }
                        Some(msg) => {
                            if let Err(error) = self.on_message(&msg).await {
                                tracing::warn!(%error, "fanout: reading missed publications failed");
                                break;
                            }
                        }
                    },
                }
            }
        }
    }

    /// Subscribes (when new), replays what the client missed, then adds it.
    async fn join(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        conn: u64,
        q: ClientQueue,
        channel: String,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), redis::RedisError> {
        let key: ChannelKey = (q.path, channel);
        if !self.channels.contains_key(&key) {
            // Interest first: from here on publishers number and keep the
            // channel, so the offset read below stays meaningful.
            self.show_interest(std::slice::from_ref(&key)).await?;
            subscribe(sink, self.keys.pubsub(&key)).await?;
            // Subscribed first: every publication after this offset arrives
            // by Pub/Sub (or is found by the gap check).
            let (epoch, offset) = self.history.meta(&key).await?;
            self.channels
                .insert(key.clone(), ChannelState { epoch, offset });
        }
        // A client coming from another gateway may be ahead of this one
        // (its publication still in this gateway's Pub/Sub buffer): catch up
        // from the history first rather than answer "not recovered".
        if let (Some(since), Some(state)) = (since, self.channels.get(&key))
            && since > state.offset
            && epoch.as_ref().is_none_or(|e| *e == state.epoch)
        {
            let (known, delivered) = (state.epoch.clone(), state.offset);
            let (e, newest) = self.history.meta(&key).await?;
            if e == known && newest > delivered {
                self.fill(&key, newest).await?;
            }
        }
        let Some(state) = self.channels.get(&key) else {
            return Ok(());
        };
        let (current_epoch, current) = (state.epoch.clone(), state.offset);
        let mut replay = Vec::new();
        let recovery = match since {
            None => Recovery::NotAsked,
            Some(since)
                if since > current || epoch.as_ref().is_some_and(|e| *e != current_epoch) =>
            {
                Recovery::NotRecovered
            }
            Some(since) => match self.history.range(&key, since + 1, current).await? {
                Some(entries) => {
                    replay = entries
                        .into_iter()
                        .map(|(o, body)| message_frame(&key.1, o, &body))
                        .collect();
                    Recovery::Recovered
                }
                None => Recovery::NotRecovered,
            },
        };
        let hub = self.hub.upgrade();
        let added = hub.as_ref().is_some_and(|h| {
            h.join_remote(RemoteJoin {
                conn,
                q: &q,
                key: key.clone(),
                epoch: &current_epoch,
                offset: current,
                replay,
                recovery,
            })
        });
        // The client went away meanwhile: stop listening if nobody else is.
        if !added
            && !hub.is_some_and(|h| h.has_local_subscribers(&key))
            && self.channels.remove(&key).is_some()
        {
            unsubscribe(sink, self.keys.pubsub(&key)).await?;
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: &redis::Msg) -> Result<(), redis::RedisError> {
        let Some(key) = self.keys.parse_pubsub(msg.get_channel_name()) else {
            return Ok(());
        };
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            return Ok(());
        };
        // `<epoch> <first offset>` then one body per line.
        let mut lines = payload.split('\n');
        let Some((epoch, Ok(first))) = lines
            .next()
            .and_then(|h| h.split_once(' '))
            .map(|(e, o)| (e, o.parse::<u64>()))
        else {
            return Ok(());
        };
        for (offset, body) in (first..).zip(lines) {
            let Some(state) = self.channels.get_mut(&key) else {
                return Ok(()); // unsubscribed meanwhile
            };
            if state.epoch != epoch {
                // The channel was forgotten and created anew: a new
                // numbering, which the clients are told about.
                state.epoch = epoch.to_owned();
                state.offset = 0;
                if let Some(hub) = self.hub.upgrade() {
                    hub.reset_remote(&key, epoch);
                }
            }
            if offset <= state.offset {
                continue; // already delivered (replayed or gap-filled)
            }
            if offset > state.offset + 1 {
                self.fill(&key, offset - 1).await?;
            }
            self.deliver(&key, epoch, offset, body);
        }
        Ok(())
    }

    /// Marks the channels this gateway serves as wanted (numbered and kept
    /// by publishers) for another history max age.
    async fn show_interest(&self, keys: &[ChannelKey]) -> Result<(), redis::RedisError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(self.keys.interest(key))
                .arg(1)
                .arg("PX")
                .arg(self.history.max_age.as_millis().max(1) as u64)
                .ignore();
            // A subscribed but quiet channel keeps its numbering.
            pipe.cmd("PEXPIRE")
                .arg(self.keys.meta(key))
                .arg(meta_ttl(self.history.max_age).as_millis() as u64)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.history.conn.clone()).await
    }

    /// Delivers what the history holds between the last delivered offset and
    /// `to` (inclusive), in order.
    async fn fill(&mut self, key: &ChannelKey, to: u64) -> Result<(), redis::RedisError> {
        let Some(state) = self.channels.get(key) else {
            return Ok(());
        };
        let (epoch, from) = (state.epoch.clone(), state.offset + 1);
        for (offset, _, body) in self.history.entries(key, from, to).await? {
            if let Some(body) = body {
                self.metrics.gap_fills.inc();
                self.deliver(key, &epoch, offset, &body);
            }
        }
        Ok(())
    }

    /// After a reconnect: everything published on `key` since the last
    /// delivered offset.
    async fn catch_up(&mut self, key: &ChannelKey) -> Result<(), redis::RedisError> {
        let (epoch, newest) = self.history.meta(key).await?;
        let Some(state) = self.channels.get_mut(key) else {
            return Ok(());
        };
        if state.epoch != epoch {
            state.epoch = epoch.clone();
            state.offset = 0;
            if let Some(hub) = self.hub.upgrade() {
                hub.reset_remote(key, &epoch);
            }
        }
        self.fill(key, newest).await?;
        if let Some(state) = self.channels.get_mut(key) {
            // What the history no longer held is skipped: offsets jump.
            state.offset = state.offset.max(newest);
        }
        Ok(())
    }

    fn deliver(&mut self, key: &ChannelKey, epoch: &str, offset: u64, body: &str) {
        if let Some(state) = self.channels.get_mut(key) {
            state.offset = offset;
        }
        if let Some(hub) = self.hub.upgrade() {
            hub.deliver_remote(key, epoch, offset, body);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_redis_still_loading_or_failing_over_is_retried_a_refusal_is_not() {
        use redis::{ErrorKind, RedisError, ServerErrorKind};
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
        ] {
            let e = RedisError::from((ErrorKind::Server(kind), "server busy"));
            assert!(super::transient(&e), "{kind:?} must be retried");
        }
        for kind in [ServerErrorKind::ResponseError, ServerErrorKind::NoPerm] {
            let e = RedisError::from((ErrorKind::Server(kind), "refused"));
            assert!(!super::transient(&e), "{kind:?} would fail again");
        }
    }

    use super::*;

    /// Redis away (nothing drains the lanes): the dataflow's thread waits for
    /// room once, then drops at once until a publication finds room again.
    /// Before, every publication waited `PUBLISH_WAIT`, so a drain at
    /// shutdown with Redis gone never ended.
    #[test]
    fn a_full_lane_holds_the_dataflow_once_per_outage_not_per_publication() {
        use std::sync::atomic::Ordering;
        let metrics = Metrics::standalone();
        let (live, mut rx) = mpsc::channel(1);
        let (background, _background_rx) = mpsc::channel(1);
        let (cmd_tx, _cmd_rx) = mpsc::channel(1);
        let broker = Broker {
            lanes: vec![Lane { live, background }],
            cmd_tx,
            metrics: BrokerMetrics::new(&metrics).expect("metrics"),
            command_waits: metrics.ws_broker_command_waits.clone(),
            gave_up: std::sync::atomic::AtomicBool::new(false),
            fence: Arc::default(),
        };
        let key: ChannelKey = (WsPath::Analytics, "user:u".to_owned());
        let dropped = || {
            broker
                .metrics
                .publications
                .with_label_values(&["dropped"])
                .get()
        };
        // Not inside a runtime, like the dataflow's thread: it may wait.
        broker.publish(key.clone(), "first".into(), Priority::Live);
        let started = std::time::Instant::now();
        broker.publish(key.clone(), "waits, then dropped".into(), Priority::Live);
        assert!(
            started.elapsed() >= PUBLISH_WAIT,
            "the first full lane waits"
        );
        assert!(broker.gave_up.load(Ordering::Relaxed));
        let waited = broker.metrics.publish_wait_seconds.get();
        assert!(
            waited >= PUBLISH_WAIT.as_secs_f64(),
            "the wait is counted: {waited}"
        );
        for i in 0..100 {
            broker.publish(key.clone(), format!("dropped {i}"), Priority::Live);
        }
        assert_eq!(
            dropped(),
            101,
            "every publication past the wait is dropped and counted"
        );
        assert_eq!(
            broker.metrics.publish_wait_seconds.get(),
            waited,
            "no publication after the first gave up waited again"
        );
        // Redis drains again: the next publication is queued and waiting is
        // allowed again.
        assert_eq!(rx.try_recv().expect("the first publication").body, "first");
        broker.publish(key.clone(), "after".into(), Priority::Live);
        assert!(!broker.gave_up.load(Ordering::Relaxed));
        assert_eq!(rx.try_recv().expect("queued after room").body, "after");
        assert_eq!(dropped(), 101);
    }

    /// A burst of background publications waiting: each batch takes every
    /// live one first and at most `BACKGROUND_BATCH` of the burst, so a
    /// live publication never queues behind the burst; each priority keeps
    /// its order; the task ends once both queues are closed and empty.
    #[tokio::test]
    async fn live_publications_go_first_and_a_burst_drains_a_few_per_batch() {
        let (live, live_rx) = mpsc::channel(1000);
        let (background, background_rx) = mpsc::channel(1000);
        let p = |body: String| Publication {
            key: (WsPath::Analytics, "user:u".to_owned()),
            body,
            reply: None,
            fenced: true,
        };
        for i in 0..300 {
            background.try_send(p(format!("b{i}"))).expect("room");
        }
        for i in 0..3 {
            live.try_send(p(format!("l{i}"))).expect("room");
        }
        let mut queues = (live_rx, background_rx);
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut round = 0;
        while next_batch(&mut queues, &mut batch).await {
            batches.push(batch.drain(..).map(|p| p.body).collect::<Vec<_>>());
            round += 1;
            if round == 2 {
                live.try_send(p("late live".into())).expect("room");
            }
            if batches.iter().map(Vec::len).sum::<usize>() == 304 {
                break;
            }
        }
        assert_eq!(batches[0][..3], ["l0", "l1", "l2"]);
        assert_eq!(batches[0].len(), 3 + BACKGROUND_BATCH);
        assert_eq!(
            batches[2][0], "late live",
            "a live publication waits one batch at most"
        );
        assert!(batches.iter().all(|b| b.len() <= BACKGROUND_BATCH + 3));
        let background_order: Vec<&String> = batches
            .iter()
            .flatten()
            .filter(|b| b.starts_with('b'))
            .collect();
        let expected: Vec<String> = (0..300).map(|i| format!("b{i}")).collect();
        assert_eq!(background_order, expected.iter().collect::<Vec<_>>());
        drop((live, background));
        assert!(
            !next_batch(&mut queues, &mut batch).await,
            "both closed and empty"
        );
    }

    #[test]
    fn pubsub_names_round_trip() {
        let keys = Keys {
            prefix: "inkstream".into(),
        };
        let key = (WsPath::Analytics, "user:a|b:c}".to_owned());
        // Channel ids may hold any character; escaped, they hold none of
        // the tag's separators.
        assert_eq!(
            keys.pubsub(&key),
            "inkstream:ws:{/ws/analytics|user:a%7Cb%3Ac%7D}"
        );
        assert_eq!(keys.parse_pubsub(&keys.pubsub(&key)), Some(key.clone()));
        // An ordinary id keeps the key it always had.
        assert_eq!(
            keys.meta(&(WsPath::Presence, "document:d1".to_owned())),
            "inkstream:ws:{/ws/presence|document:d1}:m"
        );
        assert_eq!(keys.parse_pubsub("other:ws:{/ws/analytics|user:u}"), None);
        // The publisher's names are the same as the single-key helpers'.
        assert_eq!(
            keys.names(&key),
            [
                keys.meta(&key),
                keys.history(&key),
                keys.interest(&key),
                keys.pubsub(&key)
            ]
        );
    }
}
