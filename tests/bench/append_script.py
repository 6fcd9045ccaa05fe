#!/usr/bin/env python3
"""Redis's own time per event in the append script, alone (docs/BENCHMARKS.md,
"Packed entries" and "Sets for the dedup buckets"). Not part of the test
command.

Loads APPEND_SCRIPT from connectors/src/event_log/redis/append.rs into a
redis-server, calls it CALLS times with N fresh events (101-byte bodies) over
8 streams, laid out as the Rust client does, and prints INFO commandstats per
event. Needs redis-py (`pip install redis`) and a redis-server:

    redis-server --port 6399 --save '' --daemonize yes
    python3 tests/bench/append_script.py 6399
"""
import os
import re
import sys
import time

import redis

port = int(sys.argv[1]) if len(sys.argv) > 1 else 6379
N = int(os.environ.get("N", "1000"))
CALLS = int(os.environ.get("CALLS", "200"))
root = os.path.join(os.path.dirname(__file__), "..", "..")
source = open(os.path.join(root, "connectors/src/event_log/redis/append.rs")).read()
script = re.search(r'const APPEND_SCRIPT: &str = r#"(.*?)"#;', source, re.S).group(1)
r = redis.Redis(port=port)
sha = r.script_load(script)
prefix = f"bench-append-{os.getpid()}"
body = b"\xc8\x01" + os.urandom(100)  # an Avro `bytes` length (100), then 100 bytes
r.config_resetstat()
started = time.time()
for call in range(CALLS):
    keys = [f"{prefix}:ids:3:app:", f"{prefix}:idem:legacy-until", f"{prefix}:idem:3:app:"]
    keys += [f"{prefix}:events:writing:{s}" for s in range(8)]
    slots = [i % 8 for i in range(N)]
    order = sorted(range(N), key=lambda i: slots[i])
    counts = [slots.count(s) for s in range(8)]
    args = [86_400_000, "app", f"{prefix}:dedup:app:", N, 16, 8] + counts
    args += [f"c{call}-e{i:05d}" for i in order]
    args += [body] * N
    duplicates, entries = r.evalsha(sha, len(keys), *keys, *args)
    assert not duplicates and len(entries) == 8 * -(-N // 8 // 16), (len(duplicates), len(entries))
elapsed = time.time() - started
for name, stats in r.info("commandstats").items():
    per_event = stats["usec"] / (N * CALLS)
    if per_event >= 0.01:
        print(f"{name[len('cmdstat_'):]:10s} {per_event:6.2f} µs/event  ({stats['calls']} calls)")
print(f"{N * CALLS} events in {elapsed:.2f} s (client included)")
for key in r.scan_iter(f"{prefix}:*"):
    r.delete(key)
