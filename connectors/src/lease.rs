//! A lease in Redis: at most one holder at a time, kept alive by renewal.
//!
//! Several `inkstream serve` instances may share one Redis (several
//! gateways), but only one dataflow may read the log's consumer group: keyed
//! state (sessions, windows) lives in one place. Every instance tries to take
//! the lease `<prefix>:lease:<name>`; the holder runs the dataflow and renews
//! it every `ttl / 3`; the others serve HTTP and WebSocket as gateways and try
//! again every `ttl / 3`, so one of them takes over within about `ttl` of the
//! holder's death (its pending entries are then claimed as usual).
//!
//! A holder that finds the lease gone or taken at renewal has been fenced off
//! (it stalled past the TTL, or Redis lost the key): it must stop its
//! dataflow at once — that is what [`Lease::lost`] is for.
//!
//! **Identity and fencing.** A holder is `<host>:<port>#<random>`: unique per
//! process start, so two processes never both renew one lease. An instance
//! restarted in place (same `<host>:<port>`, its *place*) takes the lease
//! back at once instead of waiting for the TTL. Every take increments a
//! counter, the [`Fence`] token; writes that must come from the current
//! holder only (checkpoints) check it in the same Redis script that writes,
//! so a process that lost the lease (stalled, or replaced in place) can no
//! longer write even before its own renewal notices.
//!
//! **Failover.** Redis replicates asynchronously: a take the primary
//! answered can be lost when a replica is promoted, and the next take would
//! hand out the same fence token again, so two holders would pass each
//! other's fence. With `redis.min_replica_acks` a take counts only once that
//! many replicas hold it (`WAIT`); until then the lease is not used, and the
//! take is tried again.

use crate::redis_conn::PrimaryConnection as ConnectionManager;
use crate::redis_conn::ReplicaAcks;
use std::time::Duration;
use tokio::sync::watch;

/// Takes the lease when free, already the caller's, or held by a process at
/// the caller's place (`ARGV[3]`, `<host>:<port>`; empty: no place) — the
/// same instance restarted before its lease expired. Returns the new fence
/// token (`KEYS[2]` incremented), 0 when not taken.
const TAKE: &str = r#"
local cur = redis.call('GET', KEYS[1])
local place = ARGV[3]
if not cur or cur == ARGV[1]
   or (place ~= '' and string.sub(cur, 1, #place + 1) == place .. '#') then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return redis.call('INCR', KEYS[2])
end
return 0
"#;

/// The fence of a lease: writes guarded by it succeed only while the
/// Redis key `key` still holds `token` (no later take happened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub token: i64,
}

/// A holder name unique to this process start, at `place` (`<host>:<port>`;
/// `None`: no stable place, never reclaimed by place).
pub fn holder_at(place: Option<&str>) -> (String, String) {
    let random = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
    let place = place.unwrap_or("").to_owned();
    let at = if place.is_empty() { "-" } else { &place };
    (
        format!("{at}#{:x}-{random:016x}", std::process::id()),
        place,
    )
}

/// Renews only the caller's own lease; returns 1 when renewed.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Deletes only the caller's own lease.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A lease this process holds.
pub struct Lease {
    conn: ConnectionManager,
    key: String,
    holder: String,
    fence: Fence,
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Waits until the lease `name` is ours (or `stop` turns true: `None`).
    /// `holder` names this process start, `place` where it runs (see
    /// [`holder_at`]): an instance restarted at the same place takes its
    /// lease back at once instead of waiting for it to expire. A take
    /// counts once `replicas` hold it (see the module doc).
    pub async fn acquire(
        conn: ConnectionManager,
        prefix: &str,
        name: &str,
        (holder, place): (&str, &str),
        (ttl, replicas): (Duration, ReplicaAcks),
        mut stop: watch::Receiver<bool>,
    ) -> Option<Lease> {
        let key = format!("{prefix}:lease:{name}");
        let fence_key = format!("{key}:fence");
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let every = (ttl / 3).max(Duration::from_millis(10));
        let mut waiting_logged = false;
        let mut sent;
        let token = loop {
            if *stop.borrow() {
                return None;
            }
            // The lease runs from when it was asked for, not answered.
            sent = tokio::time::Instant::now();
            let taken: Result<i64, _> = redis::Script::new(TAKE)
                .key(&key)
                .key(&fence_key)
                .arg(holder)
                .arg(ttl_ms)
                .arg(place)
                .invoke_async(&mut conn.clone())
                .await;
            match taken {
                // `WAIT` on the connection that took it (clones share it).
                Ok(token) if token > 0 => match replicas.wait(&mut conn.clone()).await {
                    Ok(()) => break token,
                    Err(error) => tracing::warn!(
                        %error,
                        lease = %key,
                        "lease taken on the primary only; not used until a replica holds it"
                    ),
                },
                Ok(_) => {
                    if !waiting_logged {
                        let owner: Option<String> = redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut conn.clone())
                            .await
                            .unwrap_or(None);
                        tracing::info!(
                            lease = %key,
                            owner = owner.as_deref().unwrap_or("?"),
                            "another instance holds the lease; standing by"
                        );
                        waiting_logged = true;
                    }
                }
                Err(error) => tracing::warn!(%error, lease = %key, "taking the lease failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
        };
        tracing::info!(lease = %key, %holder, token, "lease taken");
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            conn.clone(),
            key.clone(),
            holder.to_owned(),
            ttl,
            sent,
            lost_tx,
        ));
        Some(Lease {
            conn,
            key,
            holder: holder.to_owned(),
            fence: Fence {
                key: fence_key,
                token,
            },
            lost,
            renewer,
        })
    }

    /// The fence token of this take (writes that check it fail once another
    /// process took the lease).
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Turns true when the lease was lost (gone or taken at a renewal).
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Gives the lease up now, so a standby takes over without waiting for
    /// the TTL.
    pub async fn release(self) {
        self.renewer.abort();
        let released: Result<i64, _> = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.holder)
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, lease = %self.key, "releasing the lease failed; it expires");
        }
    }
}

async fn renew(
    mut conn: ConnectionManager,
    key: String,
    holder: String,
    ttl: Duration,
    acquired: tokio::time::Instant,
    lost: watch::Sender<bool>,
) {
    let script = redis::Script::new(RENEW);
    let every = (ttl / 3).max(Duration::from_millis(10));
    // Valid until `last_ok + ttl` at the latest (measured from when the
    // renewal was sent). Give up at two thirds of that, so this holder stops
    // before a standby can take the lease, not after.
    let mut last_ok = acquired;
    loop {
        tokio::time::sleep(every).await;
        let sent = tokio::time::Instant::now();
        let renewed = tokio::time::timeout(
            every,
            script
                .key(&key)
                .arg(&holder)
                .arg(ttl.as_millis().max(1) as u64)
                .invoke_async::<i64>(&mut conn),
        )
        .await;
        match renewed {
            Ok(Ok(1)) => last_ok = sent,
            Ok(Ok(_)) => {
                tracing::error!(lease = %key, "lease lost: another instance holds it");
                let _ = lost.send(true);
                return;
            }
            // Unreachable or slow Redis: the lease may expire meanwhile.
            _ if last_ok.elapsed() >= ttl * 2 / 3 => {
                tracing::error!(lease = %key, "lease not renewed in time; giving it up");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(error)) => tracing::warn!(%error, lease = %key, "renewing the lease failed"),
            Err(_) => tracing::warn!(lease = %key, "renewing the lease timed out"),
        }
    }
}
