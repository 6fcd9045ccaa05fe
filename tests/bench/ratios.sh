#!/usr/bin/env bash
# Every speed ratio of issue 17 in one run, on fresh services, side by side
# (docs/BENCHMARKS.md, "Ratios"). Not part of the test command.
#
#   cargo build --release -p inkstream && cargo build --release -p inkstream-tests --examples
#   tests/bench/ratios.sh            # N=500000 events per throughput row by default
#
# Prints, on one machine in one run:
#   1. the XADD ceiling of a fresh redis-server (`redis-benchmark -P 64`, a
#      67-byte payload like an Avro keystroke event) and inkstream's durable
#      HTTP NDJSON batch ingest into the same Redis (idempotency on, the
#      dataflow running), with the ratio, and Redis's own time per event from
#      `INFO commandstats`; `/ws/ingest` into the same Redis, compared with
#      HTTP runs before and after it (each run finds more in Redis); peak RSS;
#   2. embedded HTTP batch ingest (fresh process, then warm) and `/ws/ingest`;
#   3. the broker's producer ceiling (the mirror's backlog producer, every
#      record in flight; on the warm broker, as many records as the backlog)
#      and the mirror's throughput on the Redis backlog left by 1., with the
#      ratio: first in serial rounds (the shape before the pipelining;
#      NO_SERIAL=1 skips it), then with the defaults (transactional rounds:
#      the broker's first, then warm), then without transactions, each over
#      the whole backlog (the group is reset in between). The server's
#      dataflow reads the mirrored records back from Kafka meanwhile, as it
#      does in a deployment with Kafka; last, the mirror alone (an instance
#      with `dataflow.enabled = false`);
#   4. ingest → live WPM message latency at 10 K events/s (`load --mode e2e`,
#      10,000 writers) three times each embedded, via Redis and via
#      Redis + Kafka, every run on a fresh server (and fresh Redis/Kafka)
#      that has never seen those writers; the fresh broker is warmed up by a
#      throwaway server first and emptied (warm_kafka; COLD_BROKER=1 skips it).
# Ingest runs as an app (API key with a rate limit above the load), so the
# dedup namespace is `app:bench` as in production.
# Needs: redis-server + redis-benchmark, Java + Maven (tests/kafka/broker.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${INKSTREAM_BIN:-./target/release/inkstream}"
PERF=./target/release/examples/produce_perf
N="${N:-500000}"
E2E_RUNS="${E2E_RUNS:-3}"
# Concurrent ingest connections of every throughput row. Four: with two, each
# connection's request waits for its own append before the next is parsed,
# so Redis and the server take turns instead of working at once (2 vs 4 on
# fresh servers, alternated: docs/BENCHMARKS.md "Sets for the dedup buckets, four connections").
CONNS="${CONNS:-4}"
# The broker runs with the JVM settings Apache Kafka ships (G1, 1 GiB), not
# the suite's small serial-GC heap (tests/kafka/broker.sh; KAFKA_JVM=suite
# for that one): docs/BENCHMARKS.md "The broker's collector".
export KAFKA_JVM="${KAFKA_JVM:-shipped}"
E2E_SECONDS="${E2E_SECONDS:-10}"
SECTIONS="${SECTIONS:-1 2 3 4}"   # a subset for quick loops, e.g. SECTIONS=1 (the record is all four)
on() { [[ " $SECTIONS " == *" $1 "* ]]; }
[ -x "$B" ] && [ -x "$PERF" ] || { echo "build first: cargo build --release -p inkstream && cargo build --release -p inkstream-tests --examples" >&2; exit 1; }
source tests/bench/lib.sh

bench_config

start_redis() { # sets RP (a fresh, empty redis-server)
  local p; p=$(free_port)
  mkdir -p "$work/redis-$p"
  redis-server --port "$p" --save "" --appendonly no --daemonize yes --dir "$work/redis-$p" \
    --logfile "$work/redis-$p/redis.log" >/dev/null
  REDIS_PORTS+=("$p")
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
  RP=$p
}
stop_redis() { redis-cli -p "$1" shutdown nosave >/dev/null 2>&1 || true; }

start_kafka() { # sets KP and KAFKA_PID (a fresh, empty broker)
  local p c d; p=$(free_port); c=$(free_port); d="$work/kafka-$p"
  mkdir -p "$d"
  tests/kafka/broker.sh run "$d" "$p" "$c" >"$d.log" 2>&1 &
  KAFKA_PID=$!; PIDS+=("$KAFKA_PID")
  until grep -q "Kafka Server started" "$d.log"; do
    kill -0 "$KAFKA_PID" 2>/dev/null || { cat "$d.log" >&2; exit 1; }; sleep 0.2
  done
  KP=$p
}
stop_kafka() { kill "$KAFKA_PID" 2>/dev/null || true; wait "$KAFKA_PID" 2>/dev/null || true; }

# warm_kafka: a deployed broker is warm; a fresh JVM compiles its hot paths
# for the first minute (its C2 compiler thread took half a core during an
# e2e run on a broker started 20 s before). So before a measured run the
# fresh broker serves a throwaway inkstream (its own Redis, Redis prefix,
# consumer group and transactional id) under the same e2e load for
# WARM_SECONDS (default 20; COLD_BROKER=1 skips this), then its topics are
# deleted: the measured server starts on an empty broker, with writers it
# has never seen.
warm_kafka() {
  [ -n "${COLD_BROKER:-}" ] && return
  local rp=$RP
  start_redis
  local warm_port; warm_port=$(free_port)
  "$B" --config "$work/bench.toml" serve --port "$warm_port" --redis-url "redis://127.0.0.1:$RP" \
    --kafka-brokers "127.0.0.1:$KP" --set redis.prefix=warmup --set kafka.dataflow_group=warmup-dataflow ${E2E_SERVE_ARGS:-} \
    >"$work/serve-warmup.log" 2>&1 &
  local wpid=$!; PIDS+=("$wpid")
  for _ in $(seq 300); do curl -sf "127.0.0.1:$warm_port/healthz" >/dev/null && break; sleep 0.1; done
  "$B" load --addr "127.0.0.1:$warm_port" --mode e2e --rate 10000 --seconds "${WARM_SECONDS:-20}" --users 10000 >/dev/null 2>&1 \
    || { echo "the broker's warm-up load failed" >&2; tail -20 "$work/serve-warmup.log" >&2; exit 1; }
  kill -TERM "$wpid"; wait "$wpid" 2>/dev/null || true
  stop_redis "$RP"; RP=$rp
  tests/kafka/broker.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KP" \
    --delete --topic 'inkstream\..*' >/dev/null
  for _ in $(seq 300); do
    [ -z "$(tests/kafka/broker.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KP" --list | grep '^inkstream\.')" ] && return
    sleep 0.2
  done
  echo "the warm-up's topics were not deleted within 60 s" >&2; exit 1
}

# start_serve NAME ARGS... → sets HP (port) and SPID; waits until the dataflow
# processed one warm-up event (of a writer the measured load never uses).
start_serve() {
  local name=$1; shift
  HP=$(free_port)
  "$B" --config "$work/bench.toml" serve --port "$HP" "$@" >"$work/serve-$name.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  for _ in $(seq 300); do curl -sf "127.0.0.1:$HP/healthz" >/dev/null && break; sleep 0.1; done
  [ -n "${NOWARM:-}" ] && return
  curl -sf -o /dev/null -H "Authorization: Bearer $INKSTREAM_LOAD_TOKEN" -H 'content-type: application/json' \
    --data "{\"type\":\"writing.keystroke\",\"ts\":$(date +%s%3N),\"user_id\":\"warmup\",\"data\":{\"keystrokes\":1,\"words\":1,\"chars\":1}}" \
    "127.0.0.1:$HP/v1/events" || { tail -20 "$work/serve-$name.log" >&2; exit 1; }
  for _ in $(seq 600); do
    [ "$(metric inkstream_dataflow_events_in_total)" != "0" ] && [ -n "$(metric inkstream_dataflow_events_in_total)" ] && return
    sleep 0.1
  done
  echo "serve $name: the dataflow did not process the warm-up event in 60 s" >&2; tail -20 "$work/serve-$name.log" >&2; exit 1
}
metric() { curl -s "127.0.0.1:$HP/metrics" | awk -v m="$1" '{n=$1; sub(/[{].*/, "", n)} n==m {s+=$2} END {printf "%d", s}'; }
peak_rss_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$SPID/status"; }
stop_serve() { kill -TERM "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
eps() { sed -n 's/.* s: \([0-9]*\) events\/s.*/\1/p'; }   # events/s out of a `load` line
ratio() { [ -n "$1" ] && [ -n "$2" ] || return 0; python3 -c "import sys; print(f'{100*float(sys.argv[1])/float(sys.argv[2]):.1f} %')" "$1" "$2"; }

# caught_up N: waits (up to 60 s) until the dataflow has taken in N events.
caught_up() {
  for _ in $(seq 600); do [ "$(metric inkstream_dataflow_events_in_total)" -ge "$1" ] && return; sleep 0.1; done
  echo "the dataflow did not take in $1 events in 60 s" >&2
}

declare -A R   # the summary

if on 1; then
echo "== 1. durable ingest into Redis vs the XADD ceiling (N=$N, $CONNS connections)"
start_redis
payload=$(head -c 67 /dev/zero | tr '\0' 'x')
ceiling_line=$(redis-benchmark -p "$RP" -n $(( N * 4 )) -P 64 -q XADD bench:s '*' type writing.keystroke id e-0000000001 event "$payload" | tr '\r' '\n' | grep 'requests per second' | tail -1)
echo "redis-benchmark -P 64 XADD: $ceiling_line"
R[xadd]=$(echo "$ceiling_line" | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | cut -d. -f1)
redis-cli -p "$RP" del bench:s >/dev/null
# SEED_PREVIOUS=K: the namespace's previous dedup bucket holds K ids, as in
# a deployment after its first window (on a fresh Redis the append has no
# previous bucket to look in). SEED_LAYOUT=hash seeds the bucket layout of
# the binaries before 2026-12-06 (hashes) instead of sets.
if [ -n "${SEED_PREVIOUS:-}" ]; then
  case "${SEED_LAYOUT:-set}" in
    hash) key=inkstream:idem:9:app:bench:; add=HSET; count=HLEN; two=1 ;;
    set) key=inkstream:ids:9:app:bench:; add=SADD; count=SCARD; two=0 ;;
    *) echo "SEED_LAYOUT must be set or hash" >&2; exit 1 ;;
  esac
  seeded=$(redis-cli -p "$RP" eval "local b = math.floor(tonumber(redis.call('TIME')[1]) / 86400) - 1
    for i = 1, tonumber(ARGV[1]), 1000 do local m = {}
      for j = i, math.min(i + 999, tonumber(ARGV[1])) do
        m[#m + 1] = 'seed-' .. j; if ARGV[2] == '1' then m[#m + 1] = '1' end end
      redis.call('$add', KEYS[1] .. b, unpack(m)) end
    return redis.call('$count', KEYS[1] .. b)" 1 "$key" "$SEED_PREVIOUS" "$two")
  echo "the previous dedup bucket of app:bench holds $seeded ids (layout: ${SEED_LAYOUT:-set})"
fi
start_serve redis --redis-url "redis://127.0.0.1:$RP"
redis-cli -p "$RP" config resetstat >/dev/null
# Redis's CPU instructions over the load and the dataflow's reading of it:
# unlike commandstats' µs, not inflated when the shared cores preempt Redis.
rpid=$(redis-cli -p "$RP" info server | tr -d '\r' | sed -n 's/^process_id://p')
perf stat -e task-clock -x, -p "$rpid" -o "$work/redis.perf" & PERFPID=$!
line=$("$B" load --addr "127.0.0.1:$HP" --mode batch --events "$N" --batch 1000 --connections "$CONNS")
echo "HTTP batch: $line"; R[redis_batch]=$(echo "$line" | eps)
# Let the dataflow read and acknowledge what was ingested, then Redis's time per event.
caught_up "$N"
kill -INT "$PERFPID"; wait "$PERFPID" || true
awk -F, -v n="$N" '$3 ~ /task-clock/ {printf "Redis CPU per ingested event (perf stat task-clock, ingest + read + ack + views): %.2f µs\n", $1*1000/n}' "$work/redis.perf"
echo "Redis time per ingested event (INFO commandstats / $N, ingest + dataflow read + ack + view writes):"
redis-cli -p "$RP" info commandstats | tr -d '\r' | awk -F'[:=,]' -v n="$N" '
  /^cmdstat_/ { name=substr($1,9); usec=$5; calls=$3; total+=usec;
                if (usec/n >= 0.01) printf "  %-12s %8.2f µs/event  (%d calls)\n", name, usec/n, calls }
  END { printf "  (wall µs, inflated when Redis is preempted; commands a script runs count in evalsha and again under their own name)\n" }'
line=$("$B" load --addr "127.0.0.1:$HP" --mode ws --events "$N" --batch 1000 --connections "$CONNS")
echo "/ws/ingest: $line"; R[redis_ws]=$(echo "$line" | eps)
caught_up $(( 2 * N ))
# A run into an empty Redis is faster than any run after it (four HTTP runs
# in a row: 145 K, then 111-116 K events/s; the stream and the dedup buckets
# hold the earlier runs' events), so /ws/ingest, which runs second, is
# compared with HTTP runs on either side of it: the mean of the first (an
# empty Redis) and this one (twice the entries /ws/ingest found).
line=$("$B" load --addr "127.0.0.1:$HP" --mode batch --events "$N" --batch 1000 --connections "$CONNS")
echo "HTTP batch again, after /ws/ingest: $line"; R[redis_batch2]=$(echo "$line" | eps)
R[redis_bracket]=$(( (R[redis_batch] + R[redis_batch2]) / 2 ))
R[rss_redis]=$(peak_rss_mb)
stop_serve
fi

if on 1 && on 3; then
echo "== 3. Kafka: the broker's producer ceiling vs the mirror on the backlog of 1. ($(( 3 * N + 1 )) entries)"
start_kafka
backlog=$(( 3 * N + 1 ))   # the three loads and the warm-up event
# The ceiling on a warm broker, over as many records as the mirror's
# backlog: a fresh JVM's first 200 K records go at a third of its pace (the
# producer's connect and a cold broker weigh on a 1.5 s run), so the first
# run only warms it up. Until 2026-12-05 the record used that first run
# (N records, cold): 137 K/s against 420-500 K/s warm.
line=$("$PERF" "127.0.0.1:$KP" "$N" | tail -1)
echo "producer, first run on the fresh broker (warm-up, not the ceiling): $line"
line=$("$PERF" "127.0.0.1:$KP" "$backlog" | tail -1)
echo "producer ceiling (warm broker): $line"
R[producer]=$(echo "$line" | sed -n 's/.* = \([0-9]*\) records\/s.*/\1/p')
# mirror_run LABEL SET-ARGS... → R[LABEL]: the mirror's rate on the whole
# backlog, from the server answering /healthz (the mirror starting: its
# producers connect within the span) to lag 0. Not from the first mirrored
# entry: the counter moves when a round commits, and a backlog's round can
# hold most of it (a page is `kafka.mirror_batch` entries *per stream*).
mirror_run() {
  local label=$1 t0 t1 m0 m1; shift
  NOWARM=1 start_serve "$label" --redis-url "redis://127.0.0.1:$RP" --kafka-brokers "127.0.0.1:$KP" "$@"
  t0=$(date +%s.%N); m0=0
  for _ in $(seq 6000); do [ "$(metric inkstream_mirror_events_total)" -ge "$backlog" ] && break; sleep 0.1; done
  t1=$(date +%s.%N); m1=$(metric inkstream_mirror_events_total)
  R[$label]=$(python3 -c "import sys; print(int((int(sys.argv[3])-int(sys.argv[4]))/(float(sys.argv[2])-float(sys.argv[1]))))" "$t0" "$t1" "$m1" "$m0")
  echo "$label ($*): $(( m1 - m0 )) events in $(python3 -c "print(f'{$t1-$t0:.2f}')") s = ${R[$label]} events/s"
  stop_serve
  # Hand the same backlog to the next run: the group starts over.
  redis-cli -p "$RP" --scan --pattern 'inkstream:events:*' | while read -r s; do
    redis-cli -p "$RP" xgroup setid "$s" mirror 0 >/dev/null
  done
}
# The shape before the pipelining (2026-12-03), same binary: one page at a
# time (read → produce → wait for every report → XACK), linger 5 ms.
if [ -z "${NO_SERIAL:-}" ]; then
  mirror_run mirror_serial --set kafka.mirror_in_flight=1 --set kafka.mirror_live_linger=5ms \
    --set kafka.mirror_bulk_linger=5ms --set kafka.mirror_bulk_batch_bytes=1000000
fi
# The broker's first transactions (its transaction coordinator and the
# marker group's offsets topic start cold: ~2 s before the first commit)
# are reported apart; every run after it is on a warm broker.
mirror_run mirror_first
mirror_run mirror
# MIRROR_ROUND_PAGES="4 8": the same with other round sizes (pages per
# transactional round of a backlog), side by side with the default (32);
# MIRROR_IN_FLIGHT="8 16": other numbers of pages awaiting reports.
for v in ${MIRROR_ROUND_PAGES:-}; do
  mirror_run "mirror_rp$v" --set "kafka.mirror_round_pages=$v"
done
for v in ${MIRROR_IN_FLIGHT:-}; do
  mirror_run "mirror_if$v" --set "kafka.mirror_in_flight=$v"
done
# The same, without transactions (idempotent only): the cost of rounds that
# commit before their entries are acknowledged.
mirror_run mirror_idem --set kafka.mirror_transactional=false
# The mirror alone: an instance without the dataflow (`dataflow.enabled =
# false`, as when another instance holds the dataflow's lease), so the
# server's dataflow does not read the mirrored records back meanwhile.
mirror_run mirror_solo --set dataflow.enabled=false
stop_serve; stop_kafka; stop_redis "$RP"
fi

if on 2; then
echo "== 2. embedded ingest ($CONNS connections)"
start_serve embedded
line=$("$B" load --addr "127.0.0.1:$HP" --mode batch --events "$N" --batch 1000 --connections "$CONNS")
echo "HTTP batch, fresh process: $line"; R[emb_fresh]=$(echo "$line" | eps)
line=$("$B" load --addr "127.0.0.1:$HP" --mode batch --events "$N" --batch 1000 --connections "$CONNS")
echo "HTTP batch, warm: $line"; R[emb_warm]=$(echo "$line" | eps)
line=$("$B" load --addr "127.0.0.1:$HP" --mode ws --events "$N" --batch 1000 --connections "$CONNS")
echo "/ws/ingest: $line"; R[emb_ws]=$(echo "$line" | eps)
R[rss_emb]=$(peak_rss_mb)
stop_serve
fi

echo "== 4. e2e at 10 K events/s, 10,000 writers new to a fresh server ($E2E_RUNS runs each)"
e2e() { # label → appends "p50/p99" to R[e2e_label]
  local line p50 p99
  # E2E_ALIGN=56: start the load at that second of a minute, so that every
  # run crosses a minute of event time (team metrics' windows close for
  # all 10,000 writers at once); by default a 10 s run does in 1 of 6.
  if [ -n "${E2E_ALIGN:-}" ]; then
    while [ "$(date +%-S)" != "$E2E_ALIGN" ]; do sleep 0.2; done
  fi
  local before; before=$(cpu_ticks)
  line=$("$B" load --addr "127.0.0.1:$HP" --mode e2e --rate 10000 --seconds "$E2E_SECONDS" --users 10000)
  echo "$1: $line"
  # Where the time goes: CPU of each process during the load, and the share
  # of batches whose oldest event was at most 10 / 25 ms old when the mirror
  # committed its round and when the dataflow took it.
  echo "  CPU s during the load (serve, redis-server, broker): $(cpu_ticks | python3 -c 'import sys; a=sys.argv[1].split(); b=sys.stdin.read().split(); print(", ".join(f"{(int(y)-int(x))/100:.1f}" for x, y in zip(a, b)))' "$before")"
  local h
  for h in inkstream_mirror_event_delay_seconds inkstream_dataflow_input_delay_seconds; do
    curl -s "127.0.0.1:$HP/metrics" | awk -v h="$h" '
      index($1, h "_bucket{le=\"0.01\"}") == 1 { a = $2 } index($1, h "_bucket{le=\"0.025\"}") == 1 { b = $2 }
      $1 == h "_count" { n = $2 }
      END { if (n > 0) printf "  %s: %d batches, %.0f %% within 10 ms, %.0f %% within 25 ms\n", h, n, 100 * a / n, 100 * b / n }'
  done
  # The mirror's rounds (read, produce, reports, commit, XACK) and commits.
  for h in inkstream_mirror_round_duration_seconds inkstream_mirror_commit_duration_seconds; do
    curl -s "127.0.0.1:$HP/metrics" | awk -v h="$h" '$1 == h "_sum" { s = $2 } $1 == h "_count" { n = $2 }
      END { if (n > 0) printf "  %s: %d, mean %.1f ms\n", h, n, 1000 * s / n }'
  done
  p50=$(echo "$line" | sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p'); p99=$(echo "$line" | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
  R[e2e_$1]="${R[e2e_$1]:-}${R[e2e_$1]:+, }$p50/$p99"
}
# cpu_ticks: CPU clock ticks (1/100 s) so far of the server, Redis and the broker.
cpu_ticks() {
  local p t out=""
  for p in "${SPID:-}" "$(redis-cli -p "${RP:-0}" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" "${KAFKA_PID:-}"; do
    t=0; [ -n "$p" ] && [ -r "/proc/$p/stat" ] && t=$(awk '{print $14 + $15}' "/proc/$p/stat")
    out="$out $t"
  done
  echo "$out"
}
# E2E_PATHS="embedded redis" leaves out the Kafka runs (quick loops).
path_on() { case " ${E2E_PATHS:-embedded redis kafka} " in *" $1 "*) return 0;; *) return 1;; esac; }
if on 4; then
# E2E_SERVE_ARGS="--set fanout.paced_rate=0": more settings for every e2e server.
# shellcheck disable=SC2086
path_on embedded && for _ in $(seq "$E2E_RUNS"); do start_serve e2e-emb ${E2E_SERVE_ARGS:-}; e2e embedded; stop_serve; done
path_on redis && for _ in $(seq "$E2E_RUNS"); do
  # shellcheck disable=SC2086
  start_redis; start_serve e2e-redis --redis-url "redis://127.0.0.1:$RP" ${E2E_SERVE_ARGS:-}; e2e redis; stop_serve; stop_redis "$RP"
done
path_on kafka && for _ in $(seq "$E2E_RUNS"); do
  start_redis; start_kafka; warm_kafka
  # shellcheck disable=SC2086
  start_serve e2e-kafka --redis-url "redis://127.0.0.1:$RP" --kafka-brokers "127.0.0.1:$KP" ${E2E_SERVE_ARGS:-}; e2e kafka
  stop_serve; stop_kafka; stop_redis "$RP"
  start_redis; start_kafka; warm_kafka
  start_serve e2e-kafka-idem --redis-url "redis://127.0.0.1:$RP" --kafka-brokers "127.0.0.1:$KP" \
    --set kafka.mirror_transactional=false ${E2E_SERVE_ARGS:-}; e2e kafka_idem
  stop_serve; stop_kafka; stop_redis "$RP"
done
fi

echo
echo "== summary ($(date -u +%F), $(nproc) cores, N=$N)"
printf '%-52s %12s %10s\n' "what" "events/s" "ratio"
printf '%-52s %12s %10s\n' "redis-benchmark -P 64 XADD (the ceiling)" "${R[xadd]:-}" "100 %"
printf '%-52s %12s %10s\n' "durable HTTP batch ingest into the same Redis" "${R[redis_batch]:-}" "$(ratio "${R[redis_batch]:-}" "${R[xadd]:-}")"
printf '%-52s %12s %10s\n' "durable /ws/ingest into the same Redis" "${R[redis_ws]:-}" "$(ratio "${R[redis_ws]:-}" "${R[xadd]:-}")"
printf '%-52s %12s %10s\n' "durable HTTP batch ingest again, after /ws/ingest" "${R[redis_batch2]:-}" "$(ratio "${R[redis_batch2]:-}" "${R[xadd]:-}")"
printf '%-52s %12s %10s\n' "/ws/ingest vs the mean of the HTTP runs around it" "${R[redis_bracket]:-}" "$(ratio "${R[redis_ws]:-}" "${R[redis_bracket]:-}")"
printf '%-52s %12s %10s\n' "embedded HTTP batch ingest, fresh process" "${R[emb_fresh]:-}" ""
printf '%-52s %12s %10s\n' "embedded HTTP batch ingest, warm" "${R[emb_warm]:-}" "$(ratio "${R[emb_warm]:-}" 1000000) of 1 M"
printf '%-52s %12s %10s\n' "embedded /ws/ingest" "${R[emb_ws]:-}" ""
printf '%-52s %12s %10s\n' "broker producer ceiling (mirror settings, warm)" "${R[producer]:-}" "100 %"
printf '%-52s %12s %10s\n' "mirror, first on the broker (cold coordinator)" "${R[mirror_first]:-}" "$(ratio "${R[mirror_first]:-}" "${R[producer]:-}")"
printf '%-52s %12s %10s\n' "mirror, Redis backlog → Kafka (pipelined, defaults)" "${R[mirror]:-}" "$(ratio "${R[mirror]:-}" "${R[producer]:-}")"
printf '%-52s %12s %10s\n' "mirror, same backlog, serial rounds (in_flight 1)" "${R[mirror_serial]:-}" "$(ratio "${R[mirror_serial]:-}" "${R[producer]:-}")"
for v in ${MIRROR_ROUND_PAGES:-}; do
  printf '%-52s %12s %10s\n' "mirror, same backlog, kafka.mirror_round_pages=$v" "${R[mirror_rp$v]:-}" "$(ratio "${R[mirror_rp$v]:-}" "${R[producer]:-}")"
done
for v in ${MIRROR_IN_FLIGHT:-}; do
  printf '%-52s %12s %10s\n' "mirror, same backlog, kafka.mirror_in_flight=$v" "${R[mirror_if$v]:-}" "$(ratio "${R[mirror_if$v]:-}" "${R[producer]:-}")"
done
printf '%-52s %12s %10s\n' "mirror, same backlog, not transactional" "${R[mirror_idem]:-}" "$(ratio "${R[mirror_idem]:-}" "${R[producer]:-}")"
printf '%-52s %12s %10s\n' "mirror alone (no dataflow in that instance)" "${R[mirror_solo]:-}" "$(ratio "${R[mirror_solo]:-}" "${R[producer]:-}")"
echo "e2e ingest → WPM message at 10 K ev/s, p50/p99 ms per run:"
echo "  embedded:      ${R[e2e_embedded]:-}"
echo "  via Redis:     ${R[e2e_redis]:-}"
echo "  Redis + Kafka: ${R[e2e_kafka]:-}"
echo "  Redis + Kafka, mirror not transactional: ${R[e2e_kafka_idem]:-}"
echo "peak RSS of the server: ${R[rss_redis]:-} MB (Redis ingest, 3×N events), ${R[rss_emb]:-} MB (embedded, 3×N events)"
