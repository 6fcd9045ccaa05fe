#!/usr/bin/env bash
# Mirror benchmark (docs/BENCHMARKS.md): Redis → Kafka throughput on a 1M-event
# backlog with a kill -9 of inkstream in the middle, exactly-once by event_id
# checked by an independent Python consumer, ingest → topic latency, and the
# broker's producer ceiling (tests/examples/produce_perf.rs, the mirror's own
# producer settings) in the same run, against Apache Kafka (tests/kafka/broker.sh).
# Needs: a release build, redis-server, Java + Maven and the test venv (tests/run.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=./target/release/inkstream
PY="${INKSTREAM_CACHE:-$HOME/.cache/inkstream}/venv/bin/python"
N="${N:-1000000}"
RP=$(( 21000 + RANDOM % 9000 )); KP=$(( 31000 + RANDOM % 9000 )); HP=$(( 41000 + RANDOM % 9000 ))
work=$(mktemp -d)
cleanup() { pkill -f "serve --port $HP" || true; redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true; kill $TPID 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
redis-server --port $RP --save "" --appendonly no --daemonize yes --dir "$work" --logfile "$work/redis.log"
tests/kafka/broker.sh run "$work/kafka" $KP $(( KP + 1 )) >"$work/kafka.log" 2>&1 &
TPID=$!
until grep -q "Kafka Server started" "$work/kafka.log"; do kill -0 $TPID || { cat "$work/kafka.log"; exit 1; }; sleep 0.2; done
# The load comes from one anonymous address: lift its per-peer rate (default
# 200 events/s, which answers 429 past the burst).
ANON="--set ingest.anonymous_rate_per_sec=1e9 --set ingest.anonymous_burst=1e9"
metric() { curl -s "127.0.0.1:$HP/metrics" | awk -v m="$1" '$1==m {print $2}'; }
wait_http() { for _ in $(seq 100); do curl -sf "127.0.0.1:$HP/healthz" >/dev/null && return; sleep 0.1; done; }

echo "== backlog: $N events into Redis (no Kafka)"
$B serve --port $HP --redis-url redis://127.0.0.1:$RP $ANON >"$work/serve1.log" 2>&1 &
wait_http
$B load --addr 127.0.0.1:$HP --mode batch --events "$N" --batch 1000 --connections 2
pkill -TERM -f "serve --port $HP"; sleep 2

echo "== mirror catches up (kill -9 half way, restart)"
$B serve --port $HP --redis-url redis://127.0.0.1:$RP $ANON --kafka-brokers 127.0.0.1:$KP >"$work/serve2.log" 2>&1 &
wait_http
start=$(date +%s.%N)
while :; do
  m=$(metric inkstream_mirror_events_total); m=${m:-0}
  if [ "${m%.*}" -ge $(( N / 2 )) ]; then break; fi
  sleep 0.2
done
half=$(date +%s.%N)
first_half=${m%.*}
pkill -KILL -f "serve --port $HP"; sleep 1
$B serve --port $HP --redis-url redis://127.0.0.1:$RP $ANON --kafka-brokers 127.0.0.1:$KP >"$work/serve3.log" 2>&1 &
wait_http
restart=$(date +%s.%N)
while :; do
  lag=$(metric inkstream_mirror_lag_events); m=$(metric inkstream_mirror_events_total)
  if [ "${lag:-1}" = "0" ] && [ "${m%.*}" -gt 0 ]; then break; fi
  sleep 0.2
done
done_at=$(date +%s.%N)
second=${m%.*}
python3 - "$start" "$half" "$restart" "$done_at" "$first_half" "$second" <<'PY'
import sys
s, h, r, d, a, b = map(float, sys.argv[1:])
print(f"mirror: {a:.0f} events in {h-s:.2f} s = {a/(h-s):,.0f} events/s; after kill -9: {b:.0f} events in {d-r:.2f} s = {b/(d-r):,.0f} events/s")
PY

echo "== distinct event ids on the topics (every record decoded)"
cargo run -q --release -p inkstream-tests --example count_topics -- 127.0.0.1:$KP load- "$N"
echo "== an independent consumer (Python confluent-kafka + AvroDeserializer via the registry endpoint), first 20,000"
"$PY" tests/python/consume_avro.py 127.0.0.1:$KP "http://127.0.0.1:$HP" load- 20000 120 >"$work/ids.ndjson" || true
python3 - "$work/ids.ndjson" <<'PY'
import json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
print(f"python decoded {len(ids)} records, {len(set(ids))} distinct ids")
PY

echo "== ingest → readable on the topic latency"
"$PY" - 127.0.0.1:$KP "127.0.0.1:$HP" <<'PY'
import json, sys, time, urllib.request
from confluent_kafka import Consumer
brokers, http = sys.argv[1], sys.argv[2]
# fetch.wait.max.ms: the consumer's long-poll would otherwise add up to 500 ms.
c = Consumer({"bootstrap.servers": brokers, "group.id": f"lat-{time.time()}", "auto.offset.reset": "latest",
              "fetch.wait.max.ms": 5})
c.subscribe(["inkstream.events.writing"])
while not c.assignment():
    c.poll(0.2)
time.sleep(1)
lat = []
for i in range(200):
    eid = f"lat-{time.time_ns()}-{i}"
    body = json.dumps({"id": eid, "type": "writing.keystroke", "ts": int(time.time()*1000), "user_id": f"u{i%50}",
                       "data": {"keystrokes": 1, "words": 1, "chars": 1}}).encode()
    t = time.perf_counter()
    urllib.request.urlopen(urllib.request.Request(f"http://{http}/v1/events", body, {"content-type": "application/json"})).read()
    while True:
        m = c.poll(1.0)
        if m is not None and not m.error() and dict(m.headers() or [])["event_id"].decode() == eid:
            break
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"ingest → record on topic: p50 {lat[len(lat)//2]:.1f} ms, p99 {lat[int(len(lat)*0.99)-1]:.1f} ms, max {lat[-1]:.1f} ms ({len(lat)} events)")
PY

echo "== the broker's own producer ceiling (same settings as the mirror)"
cargo run -q --release -p inkstream-tests --example produce_perf -- 127.0.0.1:$KP "$N"
