//! What Redis promises about the entries it holds: whether it logs writes
//! (AOF) and how often it syncs that log to disk. An event is acknowledged
//! once Redis has it, so this decides what the 202 is worth when the Redis
//! process or its host goes down (docs/OPERATIONS.md, "The Redis log").

use super::{RedisLog, unavailable};
use crate::event_log::error::LogError;

/// Redis's persistence, as `INFO persistence` and `CONFIG GET appendfsync`
/// report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly yes`: every write is logged to the append-only file.
    pub aof: bool,
    /// `appendfsync` (`always`, `everysec`, `no`); `None` when `CONFIG` is
    /// not allowed (managed services often rename or forbid it).
    pub appendfsync: Option<String>,
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

impl RedisLog {
    /// Redis's persistence now (one `INFO persistence`, one `CONFIG GET`).
    pub async fn persistence(&self) -> Result<Persistence, LogError> {
        let mut conn = self.writer.clone();
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let aof = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("aof_enabled:"))
            .is_some_and(|v| v == "1");
        // `CONFIG` may be renamed or refused (managed Redis): not known then.
        let appendfsync = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async::<Vec<String>>(&mut conn)
            .await
            .ok()
            .and_then(|kv| kv.into_iter().nth(1));
        Ok(Persistence { aof, appendfsync })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(aof: bool, fsync: Option<&str>) -> Persistence {
        Persistence {
            aof,
            appendfsync: fsync.map(str::to_owned),
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
}
