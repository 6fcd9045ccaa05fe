#!/usr/bin/env bash
# A broker down when `serve` starts (pods starting together), then up: how
# long from the broker's start until the mirror has delivered an event and
# until the dataflow's Kafka source has read one (docs/BENCHMARKS.md "A
# broker down at startup"). While the broker is up, one keystroke is
# ingested every second; the server's metrics are read each second.
# Prints both delays, RUNS times (default 1).
#
#   cargo build --release -p inkstream && tests/bench/late_broker.sh
#
# Needs redis-server, Java + Maven (tests/run.sh installs them). DOWN: seconds
# `serve` runs before the broker starts (default 20).
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${INKSTREAM_BIN:-./target/release/inkstream}"
RUNS="${RUNS:-1}"; DOWN="${DOWN:-20}"
[ -x "$B" ] || { echo "build first: cargo build --release -p inkstream" >&2; exit 1; }
source tests/bench/lib.sh
metric() { curl -s "127.0.0.1:$HP/metrics" | awk -v m="$1" '$1==m {print $2}'; }
for run in $(seq 1 "$RUNS"); do
  RP=$(free_port); KP=$(free_port); CP=$(free_port); HP=$(free_port)
  mkdir -p "$work/redis-$run" "$work/kafka-$run"
  redis-server --port "$RP" --save "" --appendonly no --daemonize yes --dir "$work/redis-$run" >/dev/null
  REDIS_PORTS+=("$RP")
  "$B" serve --port "$HP" --set "redis.url=redis://127.0.0.1:$RP" \
    --set "kafka.brokers=127.0.0.1:$KP" >"$work/serve-$run.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  sleep "$DOWN"
  tests/kafka/broker.sh run "$work/kafka-$run" "$KP" "$CP" >"$work/kafka-$run.log" 2>&1 &
  KPID=$!; PIDS+=("$KPID")
  started=$(date +%s.%N)
  mirrored=""; read_at=""
  for i in $(seq 1 300); do
    ts=$(date +%s%3N)
    curl -s -X POST "127.0.0.1:$HP/v1/events" -H 'content-type: application/json' \
      -d "{\"id\":\"late-$run-$i\",\"type\":\"writing.keystroke\",\"ts\":$ts,\"user_id\":\"u1\",\"data\":{\"keystrokes\":5,\"words\":1,\"chars\":5}}" >/dev/null || true
    now=$(date +%s.%N)
    if [ -z "$mirrored" ] && [ "$(metric inkstream_mirror_events_total)" != "0" ] && [ -n "$(metric inkstream_mirror_events_total)" ]; then
      mirrored=$(awk -v a="$now" -v b="$started" 'BEGIN {print a - b}')
    fi
    if [ -n "$(metric inkstream_dataflow_source_records_total)" ] && [ "$(metric inkstream_dataflow_source_records_total)" != "0" ]; then
      read_at=$(awk -v a="$now" -v b="$started" 'BEGIN {print a - b}'); break
    fi
    sleep 1
  done
  printf 'run %d: broker started; first event mirrored after %.1f s, first read by the dataflow after %.1f s\n' \
    "$run" "${mirrored:-nan}" "${read_at:-nan}"
  kill "$SPID" "$KPID" 2>/dev/null || true
  wait "$SPID" "$KPID" 2>/dev/null || true
done
