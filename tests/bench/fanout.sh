#!/usr/bin/env bash
# Issue 18's fanout figures in one run, side by side (docs/BENCHMARKS.md,
# "Fanout batching"). Not part of the test command.
#
#   cargo build --release -p inkstream
#   tests/bench/fanout.sh                      # every row below
#   BEFORE=/path/to/old/inkstream tests/bench/fanout.sh   # adds the old server's rows first
#
# Each row: a fresh `inkstream serve`, `load --mode fanout` with CONNS
# subscribers of one channel and EVENTS broadcasts (sent back to back by one
# publisher, one in flight, or by PUBLISHERS at once), the client of this
# build (a raw WebSocket reader), and the server's CPU time and peak RSS
# from /proc. Rows:
#   1. in process (`fanout.broker = memory`), `fanout.write_delay` 0s, 5ms,
#      10ms, 20ms; then the default 0s with PUBLISHERS (default 4);
#   2. through Redis (`fanout.broker = redis`, a fresh redis-server), 0s and
#      20ms; then 0s with PUBLISHERS;
#   3. 19,000 subscribers x 40 broadcasts (the open-file limit here is 20,000),
#      0s and 20ms, RSS.
# One publisher waits for each broadcast's reply before the next, so those
# rows also measure an HTTP round trip per broadcast; the dataflow publishes
# without waiting, which the PUBLISHERS rows come closer to.
# Needs: redis-server.
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${INKSTREAM_BIN:-./target/release/inkstream}"
CONNS="${CONNS:-1000}"
EVENTS="${EVENTS:-5000}"
DELAYS="${DELAYS:-0s 5ms 10ms 20ms}"
PUBLISHERS="${PUBLISHERS:-4}"
[ -x "$B" ] || { echo "build first: cargo build --release -p inkstream" >&2; exit 1; }
source tests/bench/lib.sh
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# row LABEL SERVER_BIN CONNS EVENTS PUBLISHERS [serve args...]
row() {
  local label=$1 bin=$2 conns=$3 events=$4 pubs=$5
  shift 5
  local port
  port=$(free_port)
  "$bin" serve --port "$port" "$@" >"$work/serve-$port.log" 2>&1 &
  local s=$!
  PIDS+=("$s")
  local deadline=$((SECONDS + 60))
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "$label: server did not start; log:" >&2; tail -20 "$work/serve-$port.log" >&2; exit 1; }
    sleep 0.1
  done
  local t0 t1 out
  t0=$(ticks "$s")
  out=$("$B" load --addr "127.0.0.1:$port" --mode fanout --connections "$conns" --events "$events" --publishers "$pubs" 2>&1 | grep '^fanout:')
  t1=$(ticks "$s")
  local rss
  rss=$(awk '/VmHWM/{print $2}' "/proc/$s/status")
  kill "$s"
  wait "$s" 2>/dev/null || true
  local delivered
  delivered=$(echo "$out" | awk '{print $2}')
  printf '%-44s %s | server CPU %.2f s = %.2f us/delivery, peak RSS %d MB\n' \
    "$label" "${out#fanout: }" "$(echo "($t1 - $t0) / 100" | bc -l)" \
    "$(echo "($t1 - $t0) * 10000 / $delivered" | bc -l)" $((rss / 1024))
}

echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
for d in $DELAYS; do
  [ -n "${BEFORE:-}" ] && row "before, memory, write_delay $d" "$BEFORE" "$CONNS" "$EVENTS" 1 --set fanout.broker=memory --set "fanout.write_delay=$d"
  row "memory, write_delay $d" "$B" "$CONNS" "$EVENTS" 1 --set fanout.broker=memory --set "fanout.write_delay=$d"
done
[ -n "${BEFORE:-}" ] && row "before, memory, 0s, $PUBLISHERS publishers" "$BEFORE" "$CONNS" "$EVENTS" "$PUBLISHERS" --set fanout.broker=memory
row "memory, write_delay 0s, $PUBLISHERS publishers" "$B" "$CONNS" "$EVENTS" "$PUBLISHERS" --set fanout.broker=memory
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
PIDS+=("$!")
REDIS_PORTS+=("$rport")
until redis-cli -p "$rport" ping >/dev/null 2>&1; do sleep 0.1; done
for d in 0s 20ms; do
  row "redis, write_delay $d" "$B" "$CONNS" "$EVENTS" 1 --redis-url "redis://127.0.0.1:$rport" --set fanout.broker=redis --set "fanout.write_delay=$d"
done
row "redis, write_delay 0s, $PUBLISHERS publishers" "$B" "$CONNS" "$EVENTS" "$PUBLISHERS" --redis-url "redis://127.0.0.1:$rport" --set fanout.broker=redis
row "memory, 19000 subscribers, write_delay 0s" "$B" 19000 40 1 --set fanout.broker=memory
row "memory, 19000 subscribers, write_delay 20ms" "$B" 19000 40 1 --set fanout.broker=memory --set fanout.write_delay=20ms
