//! What Redis promises about the entries it holds: whether it logs writes
//! (AOF), how often it syncs that log to disk, and whether it may evict keys
//! when full. An event is acknowledged once Redis has it, so this decides
//! what the 202 is worth when the Redis process or its host goes down, or
//! when Redis runs out of memory (docs/OPERATIONS.md, "The Redis log").

use super::{RedisLog, unavailable};
use crate::event_log::error::LogError;

/// Redis's persistence, as `INFO persistence`, `INFO memory` and `CONFIG
/// GET appendfsync` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly yes`: every write is logged to the append-only file.
    pub aof: bool,
    /// `appendfsync` (`always`, `everysec`, `no`); `None` when `CONFIG` is
    /// not allowed (managed services often rename or forbid it).
    pub appendfsync: Option<String>,
    /// `maxmemory_policy` when `maxmemory` is set (`None`: no limit, so
    /// nothing is ever evicted).
    pub eviction: Option<String>,
}

/// What Redis may evict when it reaches `maxmemory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// No limit, or `noeviction`: a full Redis refuses writes (ingest answers
    /// 503) and keeps what it has.
    Never,
    /// `volatile-*`: keys with a TTL: the dedup sets (a retried event may
    /// then be stored twice), views, fanout history; never the streams.
    KeysWithTtl,
    /// `allkeys-*`: any key, the log's streams too: acknowledged events lost.
    AnyKey,
}

/// What an acknowledged event survives, from [`Persistence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// AOF with `appendfsync always`: a crash of Redis or of its host.
    Fsynced,
    /// AOF with `appendfsync everysec`: a crash of Redis; its host's crash
    /// may lose about the last second.
    WithinASecond,
    /// AOF, synced when the operating system decides (`appendfsync no`), or
    /// a policy `CONFIG` would not tell: a crash of Redis; its host's crash
    /// may lose up to ~30 s.
    OsDecides,
    /// No AOF: a restart of Redis loses every event since its last snapshot.
    NotLogged,
}

impl Persistence {
    /// What Redis may evict when full.
    pub fn evicts(&self) -> Eviction {
        match self.eviction.as_deref() {
            None | Some("noeviction") => Eviction::Never,
            Some(p) if p.starts_with("volatile-") => Eviction::KeysWithTtl,
            Some(_) => Eviction::AnyKey,
        }
    }

    /// The `eviction` label of `inkstream_redis_persistence_info`: `off`
    /// (no `maxmemory`) or the policy.
    pub fn eviction_label(&self) -> &str {
        self.eviction.as_deref().unwrap_or("off")
    }

    /// What an acknowledged event survives.
    pub fn durability(&self) -> Durability {
        match (self.aof, self.appendfsync.as_deref()) {
            (false, _) => Durability::NotLogged,
            (true, Some("always")) => Durability::Fsynced,
            (true, Some("everysec")) => Durability::WithinASecond,
            (true, _) => Durability::OsDecides,
        }
    }

    /// The `appendonly` label of `inkstream_redis_persistence_info`.
    pub fn appendonly_label(&self) -> &'static str {
        if self.aof { "yes" } else { "no" }
    }

    /// The `appendfsync` label of `inkstream_redis_persistence_info`
    /// (`unknown` when `CONFIG` is not allowed).
    pub fn appendfsync_label(&self) -> &str {
        self.appendfsync.as_deref().unwrap_or("unknown")
    }
}

impl Durability {
    /// One sentence for the startup log: what a 202 is worth.
    pub fn describe(self) -> &'static str {
        match self {
            Durability::Fsynced => {
                "Redis logs and fsyncs every write (appendfsync always): an acknowledged event \
                 survives a crash of Redis or of its host"
            }
            Durability::WithinASecond => {
                "Redis fsyncs its log every second (appendfsync everysec): an acknowledged event \
                 survives a crash of Redis; a crash of its host may lose about the last second"
            }
            Durability::OsDecides => {
                "Redis logs writes but leaves syncing to the operating system (appendfsync no, \
                 or not readable): a crash of its host may lose the last ~30 s of acknowledged \
                 events; set appendfsync always (or everysec)"
            }
            Durability::NotLogged => {
                "REDIS DOES NOT LOG WRITES (appendonly no): a restart of Redis loses every \
                 acknowledged event since its last snapshot; run it with appendonly yes and \
                 appendfsync always (or everysec)"
            }
        }
    }

    /// Whether an operator should be warned.
    pub fn weak(self) -> bool {
        matches!(self, Durability::OsDecides | Durability::NotLogged)
    }
}

impl Eviction {
    /// One sentence for the startup log (`None`: nothing to say).
    pub fn describe(self) -> Option<&'static str> {
        match self {
            Eviction::Never => None,
            Eviction::KeysWithTtl => Some(
                "Redis may evict keys with a TTL when full (maxmemory-policy volatile-*): the \
                 dedup sets among them, so a retried event may be stored twice; set \
                 maxmemory-policy noeviction",
            ),
            Eviction::AnyKey => Some(
                "REDIS MAY EVICT THE LOG when full (maxmemory-policy allkeys-*): acknowledged \
                 events would be lost; set maxmemory-policy noeviction (a full Redis then \
                 refuses writes and ingest answers 503)",
            ),
        }
    }
}

/// The value of `field` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
}

impl RedisLog {
    /// Redis's persistence now (one `INFO persistence`, one `INFO memory`,
    /// one `CONFIG GET`).
    pub async fn persistence(&self) -> Result<Persistence, LogError> {
        let mut conn = self.writer.clone();
        let info = |section: &'static str| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("INFO")
                    .arg(section)
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(unavailable)
            }
        };
        let persistence = info("persistence").await?;
        let memory = info("memory").await?;
        let aof = info_field(&persistence, "aof_enabled") == Some("1");
        let limited = info_field(&memory, "maxmemory").is_some_and(|m| m != "0");
        let eviction = info_field(&memory, "maxmemory_policy")
            .filter(|_| limited)
            .map(str::to_owned);
        // `CONFIG` may be renamed or refused (managed Redis): not known then.
        let appendfsync = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async::<Vec<String>>(&mut conn)
            .await
            .ok()
            .and_then(|kv| kv.into_iter().nth(1));
        Ok(Persistence {
            aof,
            appendfsync,
            eviction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(aof: bool, fsync: Option<&str>) -> Persistence {
        Persistence {
            aof,
            appendfsync: fsync.map(str::to_owned),
            eviction: None,
        }
    }

    #[test]
    fn durability_follows_the_log_and_its_fsync_policy() {
        assert_eq!(p(true, Some("always")).durability(), Durability::Fsynced);
        assert_eq!(
            p(true, Some("everysec")).durability(),
            Durability::WithinASecond
        );
        assert_eq!(p(true, Some("no")).durability(), Durability::OsDecides);
        assert_eq!(p(true, None).durability(), Durability::OsDecides);
        assert_eq!(p(false, Some("always")).durability(), Durability::NotLogged);
        assert!(!Durability::Fsynced.weak() && !Durability::WithinASecond.weak());
        assert!(Durability::OsDecides.weak() && Durability::NotLogged.weak());
        assert_eq!(p(true, None).appendfsync_label(), "unknown");
        assert_eq!(p(false, None).appendonly_label(), "no");
    }

    #[test]
    fn only_a_limit_with_an_evicting_policy_evicts() {
        let with = |policy: Option<&str>| Persistence {
            eviction: policy.map(str::to_owned),
            ..p(true, Some("always"))
        };
        assert_eq!(with(None).evicts(), Eviction::Never);
        assert_eq!(with(None).eviction_label(), "off");
        assert_eq!(with(Some("noeviction")).evicts(), Eviction::Never);
        assert_eq!(with(Some("volatile-lru")).evicts(), Eviction::KeysWithTtl);
        assert_eq!(with(Some("volatile-ttl")).evicts(), Eviction::KeysWithTtl);
        assert_eq!(with(Some("allkeys-lru")).evicts(), Eviction::AnyKey);
        assert_eq!(with(Some("allkeys-random")).evicts(), Eviction::AnyKey);
        assert!(Eviction::Never.describe().is_none());
        assert!(
            Eviction::AnyKey
                .describe()
                .unwrap()
                .contains("EVICT THE LOG")
        );
    }

    #[test]
    fn info_fields_are_read_by_their_whole_name() {
        let info =
            "# Memory\r\nmaxmemory_human:0B\r\nmaxmemory:1024\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "maxmemory"), Some("1024"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "aof_enabled"), None);
    }
}
