//! Appending a batch: one Lua script call that stores each event once per
//! caller namespace and dedup window, in packed entries (see the module docs
//! of [`super`], "Appends").

use super::{RedisLog, dedup_prefix, hash_dedup_prefix, legacy_marker, unavailable};
use crate::event_log::entry::{Appended, EntryRef, PACK_EVENTS};
use crate::event_log::error::LogError;
use schemas::Event;
use std::collections::HashSet;
use std::sync::Arc;

/// Appends one batch of one caller namespace, each event once per namespace
/// within the dedup window.
///
/// KEYS: 1 the namespace's dedup key prefix (`<prefix>:ids:<len>:<ns>:`, the
/// bucket number is appended here: a set of ids), 2 the legacy-until
/// marker, 3 the prefix of the namespace's buckets of the layout before
/// (`<prefix>:idem:<len>:<ns>:`, hashes: looked up while they exist), 4..
/// the streams the batch touches (one *slot* each).
/// ARGV: window_ms, ns, the namespace's legacy key prefix
/// (`<prefix>:dedup:<ns>:`), n, the most events per entry, the number of
/// slots, then the number of events of each slot; then per event its id,
/// grouped by slot in batch order; then per event, in the same order, its
/// Avro body framed as Avro `bytes`. The ids of one batch are distinct (the
/// caller drops a batch's later copies).
///
/// The new events of each slot are packed, in order, into entries of up to
/// ARGV[5] events (fields `ns` and `events`, the framed bodies one after
/// another): one XADD per entry. When no event of the batch is a duplicate
/// (the usual case) the script hands ranges of its arguments to Redis as
/// they are (`table.concat` for an entry's bodies, `unpack` for SMISMEMBER
/// and SADD) instead of building tables event by event: Lua's cost per
/// event, not Redis's, was most of an append (docs/BENCHMARKS.md "Packed
/// entries"), and a set costs Redis less per id than a hash field
/// ("Sets for the dedup buckets").
///
/// Returns `{duplicates, entries}`: the positions (from 1, in the order
/// sent) of the events already stored, and the new entry ids, slot by slot
/// and in order within a slot.
///
/// Redis's clock (TIME) picks the bucket, so every instance agrees on it.
/// The dedup keys are derived here from KEYS[1] and KEYS[3]: like the
/// streams of one batch, they must live on one Redis (no cluster).
const APPEND_SCRIPT: &str = r#"
local window = tonumber(ARGV[1])
local ns = ARGV[2]
local n = tonumber(ARGV[4])
local pack = tonumber(ARGV[5])
local nslots = tonumber(ARGV[6])
local P = 6 + nslots
local B = P + n
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = math.floor(now / window)
local cur = KEYS[1] .. bucket
local look = {{'SMISMEMBER', cur}}
local function also(command, key)
  if redis.call('EXISTS', key) == 1 then look[#look + 1] = {command, key} end
end
also('SMISMEMBER', KEYS[1] .. (bucket - 1))
also('HMGET', KEYS[3] .. bucket)
also('HMGET', KEYS[3] .. (bucket - 1))
local dup, ndup = {}, 0
for from = 1, n, 1000 do
  local to = math.min(from + 999, n)
  for _, l in ipairs(look) do
    local found = redis.call(l[1], l[2], unpack(ARGV, P + from, P + to))
    for j = 1, to - from + 1 do
      local f = found[j]
      if f and f ~= 0 and not dup[from + j - 1] then
        dup[from + j - 1] = true
        ndup = ndup + 1
      end
    end
  end
end
if tonumber(redis.call('GET', KEYS[2]) or '0') > now then
  for i = 1, n do
    if not dup[i] and redis.call('EXISTS', ARGV[3] .. ARGV[P + i]) == 1 then
      dup[i] = true
      ndup = ndup + 1
    end
  end
end
local entries = {}
local function add(key, events)
  entries[#entries + 1] = redis.call('XADD', key, '*', 'ns', ns, 'events', events)
end
local first = 1
for s = 1, nslots do
  local last = first + tonumber(ARGV[6 + s]) - 1
  local key = KEYS[3 + s]
  local clean = true
  if ndup > 0 then
    for i = first, last do
      if dup[i] then
        clean = false
        break
      end
    end
  end
  if clean then
    for from = first, last, pack do
      add(key, table.concat(ARGV, '', B + from, B + math.min(from + pack - 1, last)))
    end
  else
    local b = {}
    for i = first, last do
      if not dup[i] then
        b[#b + 1] = ARGV[B + i]
        if #b == pack then
          add(key, table.concat(b))
          b = {}
        end
      end
    end
    if #b > 0 then add(key, table.concat(b)) end
  end
  first = last + 1
end
if ndup == 0 then
  for from = 1, n, 1000 do
    redis.call('SADD', cur, unpack(ARGV, P + from, P + math.min(from + 999, n)))
  end
elseif ndup < n then
  local fresh = {}
  for i = 1, n do
    if not dup[i] then fresh[#fresh + 1] = ARGV[P + i] end
  end
  for from = 1, #fresh, 1000 do
    redis.call('SADD', cur, unpack(fresh, from, math.min(from + 999, #fresh)))
  end
end
if ndup < n then
  redis.call('PEXPIREAT', cur, (bucket + 2) * window)
end
local dups = {}
if ndup > 0 then
  for i = 1, n do
    if dup[i] then dups[#dups + 1] = i end
  end
end
return {dups, entries}
"#;

/// The script, hashed once (EVALSHA; loaded again after a Redis restart).
static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(APPEND_SCRIPT));

impl RedisLog {
    /// Appends `events` for `app` in one round trip; events whose id `app`
    /// already stored within the dedup window, or that repeat an earlier
    /// id of the batch, are not stored again.
    pub async fn append(&self, app: &str, events: &[Event]) -> Result<Vec<Appended>, LogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // The streams this batch touches (slots, in order of first use),
        // each one's events in batch order, and the batch's own copies.
        let mut used: Vec<usize> = Vec::new();
        let mut slot_of = vec![usize::MAX; self.streams.len()];
        let mut by_slot: Vec<Vec<usize>> = Vec::new();
        let mut slots = Vec::with_capacity(events.len());
        let mut ids: HashSet<&str> = HashSet::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let s = self.stream_index(e);
            if slot_of[s] == usize::MAX {
                slot_of[s] = used.len();
                used.push(s);
                by_slot.push(Vec::new());
            }
            slots.push(slot_of[s]);
            if ids.insert(&e.id) {
                by_slot[slot_of[s]].push(i);
            }
        }
        let sent: usize = by_slot.iter().map(Vec::len).sum();
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(dedup_prefix(&self.prefix, app))
            .key(legacy_marker(&self.prefix))
            .key(hash_dedup_prefix(&self.prefix, app));
        for &s in &used {
            invocation.key(&*self.streams[s]);
        }
        invocation
            .arg(self.dedup_window_ms)
            .arg(app)
            .arg(format!("{}:dedup:{app}:", self.prefix))
            .arg(sent)
            .arg(PACK_EVENTS)
            .arg(used.len());
        for events in &by_slot {
            invocation.arg(events.len());
        }
        for &i in by_slot.iter().flatten() {
            invocation.arg(events[i].id.as_str());
        }
        let mut body = Vec::with_capacity(256);
        for &i in by_slot.iter().flatten() {
            body.clear();
            let e = &events[i];
            schemas::binary::encode_framed_into(e, &mut body)
                .map_err(|err| LogError::Protocol(format!("encode event {}: {err}", e.id)))?;
            invocation.arg(&body[..]);
        }
        let mut conn = self.writer.clone();
        let reply: (Vec<usize>, Vec<String>) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.wait_for_replicas(&mut conn).await?;
        let streams: Vec<_> = used.iter().map(|&s| self.streams[s].clone()).collect();
        place(events.len(), &slots, &by_slot, reply, &streams)
    }
}

/// Where each event of the batch went, from the script's answer: `sent`
/// events (`by_slot`, in the order sent) minus the `duplicates` (positions
/// from 1) were packed slot by slot into the `entries`, up to
/// [`PACK_EVENTS`] each; an event not sent repeated an earlier id of the
/// batch.
fn place(
    n: usize,
    slots: &[usize],
    by_slot: &[Vec<usize>],
    (duplicates, entries): (Vec<usize>, Vec<String>),
    streams: &[Arc<str>],
) -> Result<Vec<Appended>, LogError> {
    let bad = |what: &str| LogError::Protocol(format!("append reply: {what}"));
    let sent: usize = by_slot.iter().map(Vec::len).sum();
    let mut duplicate = vec![false; sent];
    for d in duplicates {
        *duplicate
            .get_mut(d.wrapping_sub(1))
            .ok_or_else(|| bad("a duplicate's position out of range"))? = true;
    }
    // Every event a duplicate until placed: those not sent stay one.
    let none: Arc<str> = Arc::from("");
    let mut out: Vec<Appended> = (0..n)
        .map(|i| Appended {
            entry: EntryRef {
                stream: streams[slots[i]].clone(),
                id: none.clone(),
            },
            duplicate: true,
        })
        .collect();
    let mut entries = entries.into_iter();
    let mut position = 0;
    for events in by_slot {
        let mut in_entry = PACK_EVENTS;
        let mut id = none.clone();
        for &i in events {
            position += 1;
            if duplicate[position - 1] {
                continue;
            }
            if in_entry == PACK_EVENTS {
                id = entries
                    .next()
                    .ok_or_else(|| bad("fewer entries than events"))?
                    .into();
                in_entry = 0;
            }
            in_entry += 1;
            out[i].entry.id = id.clone();
            out[i].duplicate = false;
        }
    }
    if entries.next().is_some() {
        return Err(bad("more entries than events"));
    }
    Ok(out)
}

impl RedisLog {
    /// With `min_replica_acks`: waits (`WAIT`, on the connection that wrote)
    /// until that many replicas hold every write made so far, or fails as
    /// unavailable: the events are on the primary, not yet safe from its
    /// failover, so the caller hears 503 and retries, and the retry is
    /// deduplicated (and waits again). Runs after duplicates-only batches
    /// too: their first copy may be the one not yet replicated.
    async fn wait_for_replicas(
        &self,
        conn: &mut crate::redis_conn::PrimaryConnection,
    ) -> Result<(), LogError> {
        self.replicas.wait(conn).await.map_err(|e| {
            LogError::Unavailable(format!(
                "{e} (the append is stored on the primary; a retry is deduplicated)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two slots; a batch copy (event 3 repeats an id, not sent), a stored
    /// duplicate inside slot 0 (sent position 2): slot 0's other 18 fresh
    /// events fill two entries (16 + 2), slot 1's one event a third.
    #[test]
    fn events_are_placed_in_their_slots_entries_sixteen_at_a_time() {
        let streams: Vec<Arc<str>> = vec!["s0".into(), "s1".into()];
        let n = 21;
        let mut slots = vec![0; n];
        slots[1] = 1;
        let slot0: Vec<usize> = (0..n).filter(|&i| i != 1 && i != 3).collect();
        let by_slot = vec![slot0.clone(), vec![1]];
        let reply = (vec![2], vec!["e1".into(), "e2".into(), "e3".into()]);
        let out = place(n, &slots, &by_slot, reply, &streams).unwrap();
        assert!(
            out[3].duplicate && out[3].entry.id.is_empty(),
            "the batch's copy"
        );
        assert!(out[slot0[1]].duplicate, "stored before");
        assert_eq!(&*out[1].entry.id, "e3");
        assert_eq!(&*out[1].entry.stream, "s1");
        let fresh: Vec<&str> = slot0
            .iter()
            .filter(|&&i| !out[i].duplicate)
            .map(|&i| &*out[i].entry.id)
            .collect();
        assert_eq!(fresh.len(), 18);
        assert!(fresh[..16].iter().all(|id| *id == "e1"));
        assert_eq!(fresh[16..], ["e2", "e2"]);
        // An answer that does not fit the batch is a protocol error.
        let short = (vec![], vec!["e1".into()]);
        assert!(place(n, &slots, &by_slot, short, &streams).is_err());
        let long = (
            vec![2],
            vec!["e1".into(), "e2".into(), "e3".into(), "e4".into()],
        );
        assert!(place(n, &slots, &by_slot, long, &streams).is_err());
        let outside = (vec![99], vec!["e1".into(), "e2".into(), "e3".into()]);
        assert!(place(n, &slots, &by_slot, outside, &streams).is_err());
    }
}
