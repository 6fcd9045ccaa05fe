#!/usr/bin/env bash
# The chaos run (issue 16 item 6; docs/BENCHMARKS.md "Chaos run"): EVENTS
# generated events (default 1,000,000; `inkstream generate --start now`) are
# ingested over HTTP by a client that retries every batch with the same ids
# until it is acknowledged (503, timeouts, connection errors), first into an
# undisturbed stack, then into the chaos stack: Redis with AOF
# `appendfsync always`, Apache Kafka (tests/kafka/broker.sh, data kept
# across a restart), two `inkstream serve` sharing Redis (one holds the
# dataflow lease, the other stands by), mirror and derived topics on. While
# the client posts, the run
#   (a) kill -9s the lease holder (the standby takes over) and restarts it,
#   (b) kill -9s Redis and starts it again after DOWN seconds,
#   (c) kill -9s the broker and starts it again after DOWN seconds.
# Then it prints acknowledged ids, ids in the log (each exactly once), ids on
# the event topics (at least once, copies identical), the derived events of
# both instances against the undisturbed run's (deduplicated by id, equal
# event for event), dead letters and late events (0), and the recovery time
# of each fault. Exits 1 on any loss, duplicate in the log or difference.
#
#   CARGO_INCREMENTAL=0 cargo build --release -p inkstream && tests/bench/chaos.sh
#
# Environment: EVENTS, USERS (1000), SEED (42), BATCH (1000 lines per POST),
# DOWN (10 s), DEADLINE (600 s per awaited condition), BIN (the inkstream
# binary, default target/release/inkstream). Needs redis-server, Java +
# Maven (tests/run.sh installs them). The driver is tests/src/chaos.rs; the
# small version, in the test command as tests/tests/chaos.rs: EVENTS=12000
# USERS=24 BATCH=200 DOWN=3 SEED=7.
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${BIN:-./target/release/inkstream}"
PROFILE=release; case "$B" in *debug*) PROFILE=dev ;; esac
[ -x "$B" ] || { echo "chaos.sh: $B not built (cargo build --release -p inkstream)" >&2; exit 1; }
INKSTREAM_BIN="$(realpath "$B")"
INKSTREAM_TEST_REDIS_SERVER="$(command -v redis-server)"
INKSTREAM_TEST_KAFKA_SH="$PWD/tests/kafka/broker.sh"
export INKSTREAM_BIN INKSTREAM_TEST_REDIS_SERVER INKSTREAM_TEST_KAFKA_SH
tests/kafka/broker.sh fetch >/dev/null
cargo build -q --profile "$PROFILE" -p inkstream-tests --example chaos
dir=release; [ "$PROFILE" = dev ] && dir=debug
echo "== chaos run: ${EVENTS:-1000000} events, $(date -u +%FT%TZ), $("$B" --version 2>/dev/null || echo inkstream)"
log=$(mktemp -t chaos-serve.XXXXXX.log)
echo "== the instances' and brokers' logs: $log"
"./target/$dir/examples/chaos" 2>"$log"
