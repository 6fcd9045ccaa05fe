//! [`PrimaryConnection`]: redis-rs's `ConnectionManager`, made to follow a
//! failover.
//!
//! A managed or Sentinel-run Redis fails over by promoting a replica and
//! pointing its address (DNS) at it; the old primary often stays up as a
//! replica. A connection opened before the failover is still healthy and
//! answers reads, but every write gets `READONLY You can't write against a
//! read only replica`. redis-rs does not count that as a reason to reconnect
//! (it reconnects on I/O errors only), so until a restart ingest answered
//! 503, the readers could not acknowledge and the lease could not be taken.
//! Here a `READONLY` reply replaces the connection with a new one (a new
//! address lookup), shared by every clone, and the command's error is
//! returned as it was: callers already retry (ingest answers 503 with
//! `Retry-After`, readers and the lease retry), and their next try reaches
//! the new primary. A server that reports itself a replica on `ROLE`
//! ([`PrimaryConnection::is_primary`], asked by `/readyz`) is replaced the
//! same way.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, ServerErrorKind, Value};
use std::sync::{Arc, Mutex};

/// A `ConnectionManager` that reconnects when its server turns out to be a
/// replica. Clones share the connection.
#[derive(Clone)]
pub struct PrimaryConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    config: ConnectionManagerConfig,
    /// The connection in use and its generation (how many replaced it).
    current: Mutex<(u64, ConnectionManager)>,
}

/// Whether `e` is a replica refusing a write.
fn is_readonly(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// Whether a reply is a replica refusing a write: redis-rs hands a server's
/// error reply back as a value (`Value::ServerError`), made an error only
/// when the caller converts it. Only the reply itself is looked at (not
/// inside arrays: a stream read's reply is large, and a replica refuses a
/// write, a script or a transaction's commands with a top-level error).
fn refused_by_replica(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::ReadOnly))
}

impl PrimaryConnection {
    /// Connects now (as `ConnectionManager::new_with_config`).
    pub async fn new_with_config(
        client: Client,
        config: ConnectionManagerConfig,
    ) -> RedisResult<PrimaryConnection> {
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(PrimaryConnection::around(client, config, conn))
    }

    /// Connects on first use (as `ConnectionManager::new_lazy_with_config`).
    pub fn new_lazy_with_config(
        client: Client,
        config: ConnectionManagerConfig,
    ) -> RedisResult<PrimaryConnection> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(PrimaryConnection::around(client, config, conn))
    }

    fn around(
        client: Client,
        config: ConnectionManagerConfig,
        conn: ConnectionManager,
    ) -> PrimaryConnection {
        PrimaryConnection {
            shared: Arc::new(Shared {
                client,
                config,
                current: Mutex::new((0, conn)),
            }),
        }
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let guard = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Replaces the connection of generation `seen` (once, however many
    /// commands saw it fail) with a new one, made on its first use.
    fn replace(&self, seen: u64, why: &str) {
        let mut guard = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.0 != seen {
            return;
        }
        match ConnectionManager::new_lazy_with_config(
            self.shared.client.clone(),
            self.shared.config.clone(),
        ) {
            Ok(conn) => {
                *guard = (seen + 1, conn);
                tracing::warn!(
                    reason = why,
                    "redis: the server reached is a replica (a failover?): reconnecting"
                );
            }
            Err(e) => tracing::warn!(error = %e, "redis: could not make a new connection"),
        }
    }

    /// Whether the server reached is a primary (`ROLE`). A replica's
    /// connection is replaced, so the next command looks the address up
    /// again.
    pub async fn is_primary(&self) -> RedisResult<bool> {
        let (generation, mut conn) = self.current();
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        let primary = matches!(role.first(), Some(Value::BulkString(r)) if r == b"master");
        if !primary {
            self.replace(generation, "ROLE");
        }
        Ok(primary)
    }
}

impl ConnectionLike for PrimaryConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (generation, mut conn) = self.current();
        Box::pin(async move {
            let result = conn.req_packed_command(cmd).await;
            let readonly = match &result {
                Ok(reply) => refused_by_replica(reply),
                Err(e) => is_readonly(e),
            };
            if readonly {
                self.replace(generation, "READONLY");
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let (generation, mut conn) = self.current();
        Box::pin(async move {
            let result = conn.req_packed_commands(cmd, offset, count).await;
            let readonly = match &result {
                Ok(replies) => replies.iter().any(refused_by_replica),
                Err(e) => is_readonly(e),
            };
            if readonly {
                self.replace(generation, "READONLY");
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

/// How many replicas must hold a write (Redis `WAIT`) before inkstream
/// relies on it, and how long to wait for them: `redis.min_replica_acks`
/// and `redis.replica_ack_timeout`. A write only the primary holds is lost
/// if the primary fails over before replicating it (replication is
/// asynchronous). `needed = 0` (the default): the primary's reply is enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    pub needed: u32,
    pub timeout: std::time::Duration,
}

impl Default for ReplicaAcks {
    fn default() -> ReplicaAcks {
        ReplicaAcks {
            needed: 0,
            timeout: std::time::Duration::from_secs(1),
        }
    }
}

/// Fewer replicas confirmed a write than [`ReplicaAcks`] asks for, or
/// `WAIT` itself failed. The write is on the primary: retrying is safe.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaShortfall {
    #[error(
        "{acked} of the {needed} replicas redis.min_replica_acks asks for confirmed the write \
         within {timeout_ms} ms"
    )]
    Short {
        acked: u32,
        needed: u32,
        timeout_ms: u64,
    },
    #[error("waiting for replicas (redis.min_replica_acks): {0}")]
    Redis(#[from] redis::RedisError),
}

impl ReplicaAcks {
    fn wait_cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.needed).arg(self.timeout_ms());
        cmd
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout.as_millis().clamp(1, u128::from(u64::MAX)) as u64
    }

    fn judge(&self, acked: u32) -> Result<(), ReplicaShortfall> {
        if acked < self.needed {
            return Err(ReplicaShortfall::Short {
                acked,
                needed: self.needed,
                timeout_ms: self.timeout_ms(),
            });
        }
        Ok(())
    }

    /// Waits until `needed` replicas hold every write made so far on `conn`
    /// (the connection that wrote: `WAIT` counts from its last write).
    pub async fn wait(&self, conn: &mut PrimaryConnection) -> Result<(), ReplicaShortfall> {
        if self.needed == 0 {
            return Ok(());
        }
        let acked: u32 = self.wait_cmd().query_async(conn).await?;
        self.judge(acked)
    }

    /// [`ReplicaAcks::wait`] on a blocking connection.
    pub fn wait_blocking(&self, conn: &mut redis::Connection) -> Result<(), ReplicaShortfall> {
        if self.needed == 0 {
            return Ok(());
        }
        let acked: u32 = self.wait_cmd().query(conn)?;
        self.judge(acked)
    }
}
