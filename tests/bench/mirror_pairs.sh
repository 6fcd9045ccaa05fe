#!/usr/bin/env bash
# Alternated pairs of the Kafka mirror (not part of the test command): one
# Redis backlog of N events, mirrored again and again by each binary of
# BINS in turn (the mirror group reset in between) on one warm broker,
# after the producer ceilings (PERFS) on that broker. Prints, per run,
# events/s and CPU per record of the server, the broker's JVM and
# redis-server (from /proc/<pid>/stat).
#
#   BINS="old/inkstream new/inkstream" N=1500000 RUNS="1 2 3" tests/bench/mirror_pairs.sh
#
# SOLO=1 (default): the mirror alone (`dataflow.enabled = false`); SOLO=0:
# with the dataflow reading the topics back. CONFIGS="a;b": per-run extra
# serve arguments, alternated too. PROF=1: `perf record` of each run's
# server into $PERF_DATA (default ./perf.data).
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${INKSTREAM_BIN:-./target/release/inkstream}"
N="${N:-1000000}"
source tests/bench/lib.sh
export KAFKA_JVM=shipped
bench_config
p=$(free_port); mkdir -p "$work/r"
redis-server --port "$p" --save "" --appendonly no --daemonize yes --dir "$work/r" --logfile "$work/r/redis.log" >/dev/null
REDIS_PORTS+=("$p"); RP=$p
until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
HP=$(free_port)
"$B" --config "$work/bench.toml" serve --port "$HP" --redis-url "redis://127.0.0.1:$RP" >"$work/serve.log" 2>&1 &
SPID=$!; PIDS+=("$SPID")
for _ in $(seq 300); do curl -sf "127.0.0.1:$HP/healthz" >/dev/null && break; sleep 0.1; done
"$B" load --addr "127.0.0.1:$HP" --mode batch --events "$N" --batch 1000 --connections 4
kill -TERM $SPID; wait $SPID || true
kp=$(free_port); kc=$(free_port); d="$work/kafka"; mkdir -p "$d"
tests/kafka/broker.sh run "$d" "$kp" "$kc" >"$d.log" 2>&1 &
KAFKA_PID=$!; PIDS+=("$KAFKA_PID")
until grep -q "Kafka Server started" "$d.log"; do sleep 0.2; done
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
jpid=$(pgrep -f "java.*$d" | head -1); rpid=$(redis-cli -p "$RP" info server | tr -d '\r' | sed -n 's/^process_id://p')
for PERF in ${PERFS:-./target/release/examples/produce_perf}; do
echo "$PERF: $($PERF "127.0.0.1:$kp" "$N" | tail -1)"
done
for PERF in ${PERFS:-./target/release/examples/produce_perf}; do
j0=$(ticks $jpid)
out=$( { /usr/bin/time -f "CPU %U %S" $PERF "127.0.0.1:$kp" "$N"; } 2>&1 )
j1=$(ticks $jpid)
echo "$PERF: $(echo "$out" | grep broker)"
echo "$out" | awk -v n=$N -v j=$((j1-j0)) '/^CPU/ {printf "  µs/record: producer %.2f  broker %.2f\n", ($2+$3)*1e6/n, j*1e4/n}'
done
metric() { curl -s "127.0.0.1:$HP/metrics" | awk -v m="$1" '{n=$1; sub(/[{].*/, "", n)} n==m {s+=$2} END {printf "%d", s}'; }
for run in ${RUNS:-1 2}; do
IFS=";" read -ra CONFS <<< "${CONFIGS:-}"; [ ${#CONFS[@]} -eq 0 ] && CONFS=("")
for conf in "${CONFS[@]}"; do
for bin in ${BINS:-$B}; do
HP=$(free_port)
extra=(); [ "${SOLO:-1}" = 1 ] && extra=(--set dataflow.enabled=false)
"$bin" --config "$work/bench.toml" serve --port "$HP" --redis-url "redis://127.0.0.1:$RP" --kafka-brokers "127.0.0.1:$kp" "${extra[@]}" ${ARGS:-} $conf >"$work/serve2.log" 2>&1 &
SPID=$!; PIDS+=("$SPID")
for _ in $(seq 300); do curl -sf "127.0.0.1:$HP/healthz" >/dev/null && break; sleep 0.1; done
t0=$(date +%s.%N); j0=$(ticks $jpid); r0=$(ticks $rpid)
if [ -n "${PROF:-}" ]; then perf record -F 1999 -g --call-graph dwarf,16384 -p $SPID -o "${PERF_DATA:-./perf.data}" 2>/dev/null & PP=$!; fi
for _ in $(seq 6000); do [ "$(metric inkstream_mirror_events_total)" -ge "$N" ] && break; sleep 0.1; done
t1=$(date +%s.%N)
[ -n "${PROF:-}" ] && { kill -INT $PP; wait $PP || true; }
cpu=$(awk '{print $14+$15}' /proc/$SPID/stat); j1=$(ticks $jpid); r1=$(ticks $rpid)
echo "  µs/record: server (whole life) $(python3 -c "print(f'{$cpu*1e4/$N:.2f}')")  broker $(python3 -c "print(f'{($j1-$j0)*1e4/$N:.2f}')")  redis $(python3 -c "print(f'{($r1-$r0)*1e4/$N:.2f}')")"
echo "$(basename $bin) [$conf] run $run: $N in $(python3 -c "print(f'{$t1-$t0:.2f}')") s = $(python3 -c "print(int($N/($t1-$t0)))")/s, server cpu ticks $cpu"
kill -TERM $SPID; wait $SPID || true
redis-cli -p "$RP" --scan --pattern 'inkstream:events:*' | while read -r s; do redis-cli -p "$RP" xgroup setid "$s" mirror 0 >/dev/null; done
done; done; done
