//! Checkpoints in Redis, shared by every instance of a dataflow group: the
//! standby that takes the dataflow lease restores what the last holder
//! completed (a directory on the holder's disk would be out of its reach).
//!
//! The runtime decides what a checkpoint is (`pipeline::runtime::checkpoint`);
//! this stores its bytes. Keys, under `<prefix>:ckpt:<group>`:
//! - `:<barrier>` — a hash of the parts written at a barrier:
//!   `<part>:n` (chunk count) and `<part>:<i>` (chunks of at most
//!   [`CHUNK`] bytes, so no single command moves a huge value);
//! - `:<barrier>:done` — a hash, one field `p<i>` per process that completed
//!   its share (value: the layout `<processes> <workers per process>`);
//! - `:latest` — the pointer, `<barrier> <processes> <workers>`, set in the
//!   same script that records the last process's completion: a checkpoint is
//!   read only once every part of it was written, never half of one;
//! - `:barriers` — a sorted set of the barriers written, to delete the ones
//!   older than the pointer (the last complete one is kept).
//!
//! Every write checks the writer's lease [`Fence`] in the script that
//! writes: an instance that lost the lease cannot touch the checkpoint the
//! new holder writes. Calls are blocking (the timely workers write their
//! parts from their own threads) over one connection, reopened after an
//! error; each has a timeout.
//!
//! With `redis.min_replica_acks` ([`RedisCheckpointStore::with_replicas`]),
//! a completion counts only once that many replicas hold it and every part
//! before it (`WAIT`): the log's entries a checkpoint covers are
//! acknowledged after it completes, so a checkpoint a failover loses must
//! never have been reported complete.

use crate::lease::Fence;
use crate::redis_conn::{ReplicaAcks, ReplicaShortfall};
use std::sync::Mutex;
use std::time::Duration;

/// Largest chunk of a part in one command (4 MiB).
pub const CHUNK: usize = 4 << 20;

/// Writes one chunk, and the chunk count with the first one, if the fence
/// holds. Returns 1 when written, -1 when fenced off.
const PUT: &str = r#"
if ARGV[1] ~= '' and redis.call('GET', ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], ARGV[5], ARGV[6]) end
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[7])
return 1
"#;

/// Records process `ARGV[3]`'s completion of barrier `ARGV[6]`; when every
/// process has, moves the pointer to it (never backwards). Returns 1 when
/// the pointer moved, 0 when processes are missing, 2 when the pointer is
/// already there or later, -1 when fenced off.
const COMPLETE: &str = r#"
if ARGV[1] ~= '' and redis.call('GET', ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[5]) then return 0 end
local cur = redis.call('GET', KEYS[2])
if cur then
  local b = tonumber(string.match(cur, '^%d+'))
  if b and b >= tonumber(ARGV[6]) then return 2 end
end
redis.call('SET', KEYS[2], ARGV[6] .. ' ' .. ARGV[4])
return 1
"#;

/// Why the checkpoint store failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointStoreError {
    #[error("checkpoint store in Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(
        "checkpoint store in Redis: this instance no longer holds the dataflow lease \
         (fence token {token} of {key} is stale); nothing written"
    )]
    Fenced { key: String, token: i64 },
    #[error("checkpoint store in Redis: part {part} of checkpoint {barrier} is incomplete")]
    Torn { barrier: u64, part: String },
    #[error(
        "checkpoint store in Redis: checkpoint {barrier} is written on the primary only: {source}"
    )]
    NotReplicated {
        barrier: u64,
        source: ReplicaShortfall,
    },
}

impl schemas::Classify for CheckpointStoreError {
    fn fault(&self) -> schemas::Fault {
        match self {
            CheckpointStoreError::Redis(_) | CheckpointStoreError::NotReplicated { .. } => {
                schemas::Fault::External
            }
            CheckpointStoreError::Fenced { .. } | CheckpointStoreError::Torn { .. } => {
                schemas::Fault::Internal
            }
        }
    }
    fn retryable(&self) -> bool {
        matches!(
            self,
            CheckpointStoreError::Redis(_) | CheckpointStoreError::NotReplicated { .. }
        )
    }
}

/// The latest complete checkpoint: its barrier and the layout it was taken
/// with (`<processes> <workers per process>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub barrier: u64,
    pub processes: usize,
    pub workers: usize,
}

/// The checkpoints of one dataflow group in Redis.
pub struct RedisCheckpointStore {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    base: String,
    fence: Option<Fence>,
    timeout: Duration,
    /// Replicas that must hold a completion before it counts.
    replicas: ReplicaAcks,
}

impl std::fmt::Debug for RedisCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCheckpointStore")
            .field("base", &self.base)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl RedisCheckpointStore {
    /// The store of `group` under `prefix`; writes are guarded by `fence`
    /// (`None`: no lease, an instance alone).
    pub fn new(
        client: redis::Client,
        prefix: &str,
        group: &str,
        fence: Option<Fence>,
    ) -> RedisCheckpointStore {
        RedisCheckpointStore {
            client,
            conn: Mutex::new(None),
            base: format!("{prefix}:ckpt:{group}"),
            fence,
            timeout: Duration::from_secs(30),
            replicas: ReplicaAcks::default(),
        }
    }

    /// Completions count only once `replicas` hold them (see the module doc).
    pub fn with_replicas(mut self, replicas: ReplicaAcks) -> RedisCheckpointStore {
        self.replicas = replicas;
        self
    }

    /// Waits until the replicas hold every write up to now (this call
    /// writes first, so that `WAIT` covers what other processes wrote
    /// before it too: the pointer to `barrier` one of them moved).
    pub fn replicated(&self, barrier: u64) -> Result<(), CheckpointStoreError> {
        if self.replicas.needed == 0 {
            return Ok(());
        }
        let waited = self.with(|c| {
            redis::cmd("INCR")
                .arg(format!("{}:confirmations", self.base))
                .query::<()>(c)?;
            match self.replicas.wait_blocking(c) {
                // `WAIT` failed: the connection is dropped like any other's.
                Err(ReplicaShortfall::Redis(e)) => Err(e),
                short => Ok(short),
            }
        })?;
        waited.map_err(|source| CheckpointStoreError::NotReplicated { barrier, source })
    }

    /// Runs `f` on the connection (opened if needed; dropped after an
    /// error, so the next call reconnects).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, CheckpointStoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let conn = self.client.get_connection_with_timeout(self.timeout)?;
            conn.set_read_timeout(Some(self.timeout))?;
            conn.set_write_timeout(Some(self.timeout))?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else {
            unreachable!("connection set above")
        };
        let out = f(conn);
        if out.is_err() {
            *guard = None;
        }
        Ok(out?)
    }

    fn fence_args(&self) -> (String, String) {
        match &self.fence {
            Some(f) => (f.key.clone(), f.token.to_string()),
            None => (String::new(), String::new()),
        }
    }

    fn fenced(&self) -> CheckpointStoreError {
        let (key, token) = self
            .fence
            .as_ref()
            .map(|f| (f.key.clone(), f.token))
            .unwrap_or_default();
        CheckpointStoreError::Fenced { key, token }
    }

    /// The keys' common prefix, `<prefix>:ckpt:<group>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The latest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<Latest>, CheckpointStoreError> {
        let text: Option<String> = self.with(|c| {
            redis::cmd("GET")
                .arg(format!("{}:latest", self.base))
                .query(c)
        })?;
        Ok(text.and_then(|t| {
            let mut f = t.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some(Latest {
                barrier: f.next()??,
                processes: f.next()?? as usize,
                workers: f.next()?? as usize,
            })
        }))
    }

    /// Writes part `name` of checkpoint `barrier`, chunked.
    pub fn put(&self, barrier: u64, name: &str, bytes: &[u8]) -> Result<(), CheckpointStoreError> {
        let (fence_key, token) = self.fence_args();
        let key = format!("{}:{barrier}", self.base);
        let index = format!("{}:barriers", self.base);
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK).collect()
        };
        let script = redis::Script::new(PUT);
        for (i, chunk) in chunks.iter().enumerate() {
            // The count goes with the first chunk; a reader checks every
            // chunk is there (a later put of the same part overwrites all).
            let (count_field, count) = if i == 0 {
                (format!("{name}:n"), chunks.len().to_string())
            } else {
                (String::new(), String::new())
            };
            let written: i64 = self.with(|c| {
                script
                    .key(&key)
                    .key(&index)
                    .arg(&fence_key)
                    .arg(&token)
                    .arg(format!("{name}:{i}"))
                    .arg(*chunk)
                    .arg(count_field)
                    .arg(count)
                    .arg(barrier)
                    .invoke(c)
            })?;
            if written < 0 {
                return Err(self.fenced());
            }
        }
        Ok(())
    }

    /// Reads part `name` of checkpoint `barrier` (`None`: not written).
    pub fn get(&self, barrier: u64, name: &str) -> Result<Option<Vec<u8>>, CheckpointStoreError> {
        let key = format!("{}:{barrier}", self.base);
        let n: Option<usize> = self.with(|c| {
            redis::cmd("HGET")
                .arg(&key)
                .arg(format!("{name}:n"))
                .query(c)
        })?;
        let Some(n) = n else { return Ok(None) };
        let mut out = Vec::new();
        for i in 0..n {
            let chunk: Option<Vec<u8>> = self.with(|c| {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(format!("{name}:{i}"))
                    .query(c)
            })?;
            let chunk = chunk.ok_or_else(|| CheckpointStoreError::Torn {
                barrier,
                part: name.to_owned(),
            })?;
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// Records that `process` (of `processes`, `workers` each) completed its
    /// share of `barrier`; returns whether the checkpoint is now the latest
    /// complete one. Then deletes the checkpoints older than the latest.
    pub fn complete(
        &self,
        barrier: u64,
        process: usize,
        processes: usize,
        workers: usize,
    ) -> Result<bool, CheckpointStoreError> {
        let (fence_key, token) = self.fence_args();
        let moved: i64 = self.with(|c| {
            redis::Script::new(COMPLETE)
                .key(format!("{}:{barrier}:done", self.base))
                .key(format!("{}:latest", self.base))
                .arg(&fence_key)
                .arg(&token)
                .arg(format!("p{process}"))
                .arg(format!("{processes} {workers}"))
                .arg(processes)
                .arg(barrier)
                .invoke(c)
        })?;
        if moved < 0 {
            return Err(self.fenced());
        }
        self.replicated(barrier)?;
        if moved == 1 {
            self.delete_before(barrier)?;
        }
        Ok(moved == 1)
    }

    /// Deletes every checkpoint older than `barrier`.
    fn delete_before(&self, barrier: u64) -> Result<(), CheckpointStoreError> {
        let index = format!("{}:barriers", self.base);
        let old: Vec<u64> = self.with(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(format!("({barrier}"))
                .query(c)
        })?;
        for b in old {
            self.with(|c| {
                redis::pipe()
                    .cmd("UNLINK")
                    .arg(format!("{}:{b}", self.base))
                    .arg(format!("{}:{b}:done", self.base))
                    .ignore()
                    .cmd("ZREM")
                    .arg(&index)
                    .arg(b)
                    .ignore()
                    .query::<()>(c)
            })?;
        }
        Ok(())
    }

    /// At start: forgets this process's completions of checkpoints newer
    /// than the latest complete one (a run that died before they completed
    /// wrote them; with the other processes' they could complete a
    /// checkpoint whose parts of this process are not this run's).
    pub fn forget_unfinished(&self, process: usize) -> Result<(), CheckpointStoreError> {
        let after = self.latest()?.map_or(0, |l| l.barrier);
        let index = format!("{}:barriers", self.base);
        let newer: Vec<u64> = self.with(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&index)
                .arg(format!("({after}"))
                .arg("+inf")
                .query(c)
        })?;
        for b in newer {
            self.with(|c| {
                redis::cmd("HDEL")
                    .arg(format!("{}:{b}:done", self.base))
                    .arg(format!("p{process}"))
                    .query::<()>(c)
            })?;
        }
        Ok(())
    }

    /// Deletes every checkpoint of the group (a run that finished).
    pub fn clear(&self) -> Result<(), CheckpointStoreError> {
        self.delete_before(u64::MAX)?;
        self.with(|c| {
            redis::cmd("UNLINK")
                .arg(format!("{}:latest", self.base))
                .arg(format!("{}:confirmations", self.base))
                .query::<()>(c)
        })
    }
}
