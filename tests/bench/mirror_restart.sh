#!/usr/bin/env bash
# The 1 M check across a broker restart (docs/BENCHMARKS.md): N events
# (default 1,000,000) are ingested over HTTP while the mirror delivers them to
# Apache Kafka (tests/kafka/broker.sh, data kept on disk); once a third is on
# the topics the broker is stopped (SIGTERM, or STOP=KILL), kept down DOWN
# seconds (default 10) and started again on the same ports and data. Then
# every record on the event topics is counted (tests/examples/count_topics.rs):
# missing ids must be 0; duplicates are allowed only as identical copies
# (same id, same bytes). Prints events sent and acknowledged, records on the
# topics, distinct ids, missing, duplicates, the broker's downtime, the time
# from its restart to the mirror's lag 0 and the wall time.
#
#   cargo build --release -p inkstream && tests/bench/mirror_restart.sh
#
# BIN=target/debug/inkstream runs a debug build (its wall time is then no
# speed figure). Needs redis-server, Java + Maven (tests/run.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${BIN:-./target/release/inkstream}"
PROFILE=release; case "$B" in *debug*) PROFILE=dev ;; esac
N="${N:-1000000}"; DOWN="${DOWN:-10}"; STOP="${STOP:-TERM}"
RP=$(( 21000 + RANDOM % 9000 )); KP=$(( 31000 + RANDOM % 9000 )); HP=$(( 41000 + RANDOM % 9000 ))
work=$(mktemp -d)
SPID=""; KPID=""; LPID=""
cleanup() {
  for p in $LPID $SPID $KPID; do kill "$p" 2>/dev/null || true; done
  for p in $LPID $SPID $KPID; do wait "$p" 2>/dev/null || true; done
  redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
metric() { curl -s "127.0.0.1:$HP/metrics" | awk -v m="$1" '$1==m {print $2}'; }
start_kafka() {
  tests/kafka/broker.sh run "$work/kafka" $KP $(( KP + 1 )) >>"$work/kafka.log" 2>&1 &
  KPID=$!
  until [ "$(grep -c "Kafka Server started" "$work/kafka.log")" -ge "$1" ]; do
    kill -0 $KPID || { cat "$work/kafka.log"; exit 1; }; sleep 0.1
  done
}
cargo build -q --profile "$PROFILE" -p inkstream-tests --example count_topics
redis-server --port $RP --save "" --appendonly no --daemonize yes --dir "$work" --logfile "$work/redis.log"
start_kafka 1
$B serve --port $HP --redis-url redis://127.0.0.1:$RP --kafka-brokers 127.0.0.1:$KP \
  --set ingest.anonymous_rate_per_sec=1e9 --set ingest.anonymous_burst=1e9 >"$work/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 200); do curl -sf "127.0.0.1:$HP/healthz" >/dev/null && break; sleep 0.1; done

echo "== $N events ingested over HTTP while the mirror delivers them"
t0=$(now)
$B load --addr 127.0.0.1:$HP --mode batch --events "$N" --batch 1000 --connections 2 >"$work/load.log" 2>&1 &
LPID=$!
while m=$(metric inkstream_mirror_events_total); [ "${m%.*}" -lt $(( N / 3 )) ] 2>/dev/null || [ -z "$m" ]; do
  kill -0 $LPID 2>/dev/null || { wait $LPID || { echo "load failed:"; cat "$work/load.log"; exit 1; }; }
  sleep 0.2
done
echo "== broker stopped (SIG$STOP) with $(metric inkstream_mirror_events_total) events mirrored"
t_stop=$(now)
kill -"$STOP" $KPID; wait $KPID 2>/dev/null || true
sleep "$DOWN"
start_kafka 2
t_up=$(now)
wait $LPID || { echo "load failed:"; cat "$work/load.log"; exit 1; }; LPID=""
cat "$work/load.log"
while :; do
  lag=$(metric inkstream_mirror_lag_events); m=$(metric inkstream_mirror_events_total)
  [ "${lag:-1}" = "0" ] && [ "${m%.*}" -ge "$N" ] && break
  sleep 0.2
done
t_done=$(now)
echo "mirror errors by stage: $(curl -s 127.0.0.1:$HP/metrics | grep '^inkstream_mirror_errors_total' | awk '$2>0' | tr '\n' ' ')"

echo "== every record on the event topics"
out=$(cargo run -q --profile "$PROFILE" -p inkstream-tests --example count_topics -- 127.0.0.1:$KP load- "$N")
echo "$out"
python3 - "$N" "$t0" "$t_stop" "$t_up" "$t_done" "$out" "$(cat "$work/load.log")" <<'PY'
import re, sys
n = int(sys.argv[1]); t0, stop, up, done = map(float, sys.argv[2:6])
m = re.search(r"(\d+) records .*?, (\d+) distinct event ids.*?(\d+) differing", sys.argv[6])
records, distinct, differing = map(int, m.groups())
# The load generator stops at the first answer that is not 202: the events it
# reports are the acknowledged ones.
acked = int(re.search(r": (\d+) events in", sys.argv[7]).group(1))
print(f"events sent {n:,}; acknowledged (202) {acked:,}; records on the topics {records:,}; "
      f"distinct ids {distinct:,}; missing {acked - distinct}; duplicates {records - distinct} "
      f"(copies that differ {differing}); broker down {up - stop:.1f} s; "
      f"drained {done - up:.1f} s after the broker was back; wall time {done - t0:.1f} s "
      f"(ingest start to mirror lag 0)")
sys.exit(0 if distinct == acked == n and differing == 0 else 1)
PY
