#!/usr/bin/env bash
# Apache Kafka for the test suite and the benchmark scripts: a single-node
# KRaft broker (broker and controller in one process) run from its Maven
# Central jars, on loopback ports the caller chooses.
#
#   broker.sh fetch                 the jars folder (downloads once with Maven,
#                                   cached per pom.xml under $INKSTREAM_CACHE)
#   broker.sh format DIR            a formatted, empty KRaft store in DIR
#   broker.sh run DIR PORT CPORT    runs the broker in the foreground (exec: the
#                                   caller's child pid is the JVM) with its data
#                                   in DIR (formatted first when empty), clients
#                                   on PORT and the controller on CPORT; the
#                                   data survives a stop and a run again
#   broker.sh tool CLASS ARGS...    runs one of Apache Kafka's command-line
#                                   tools from the same jars, e.g.
#                                   org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#                                   (kafka-consumer-groups.sh); warnings only
#
# Environment: KAFKA_HEAP (default 512m), INKSTREAM_CACHE (~/.cache/inkstream),
# KAFKA_JVM=shipped for the JVM settings Apache Kafka's own start scripts
# use (1 GiB heap, G1 with a 20 ms pause goal; KAFKA_HEAP is then not
# read). The benchmarks run those; the suite's default is a small
# serial-GC heap, whose full collections pause the broker ~100 ms
# (docs/BENCHMARKS.md "The broker's collector"), compiled by C1 only (as
# `tool` and tests/registry/registry.sh are): the suite's brokers live
# minutes, and with C1 only the Kafka test files took a third less CPU and
# 5-9 % less time on two cores (docs/BENCHMARKS.md "The test command").
# tests/bench/mirror.sh, mirror_restart.sh and chaos.sh run the suite's
# settings too (mirror.sh's ratio is of one broker, same run).
# KAFKA_JVM_EXTRA: more JVM options (e.g. a flight recording of the
# broker, see java_opts); KAFKA_PROPERTIES_EXTRA: more lines of
# server.properties (see write_properties).
#
# A second listener with SASL_SSL (SCRAM-SHA-512 over TLS), when
# KAFKA_SASL_SSL_PORT is set (for `run`; `format` adds the user):
#   KAFKA_SASL_SSL_PORT   its port (advertised as 127.0.0.1)
#   KAFKA_TLS_CERT        PEM certificate chain of the broker
#   KAFKA_TLS_KEY         its PEM (PKCS#8, unencrypted) private key; both go
#                         into a PEM keystore (ssl.keystore.type=PEM: no keytool)
#   KAFKA_SCRAM_USER      the SCRAM-SHA-512 user created when the store is
#   KAFKA_SCRAM_PASSWORD  formatted (kafka-storage format --add-scram)
# The PLAINTEXT listener stays (inter-broker traffic, admin tools).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${INKSTREAM_CACHE:-$HOME/.cache/inkstream}"
# Any 16 bytes in base64url: every test broker is a cluster of its own.
cluster_id="aW5rc3RyZWFtLXRlc3RzIQ"

libs_dir() {
  local key
  key=$(sha256sum "$here/pom.xml" | cut -c1-16)
  echo "$cache/kafka-$key/libs"
}

fetch() {
  local libs
  libs=$(libs_dir)
  if [ ! -f "$libs/.complete" ]; then
    command -v mvn >/dev/null 2>&1 || { echo "broker.sh: mvn (Maven) is needed to fetch Apache Kafka" >&2; exit 1; }
    command -v java >/dev/null 2>&1 || { echo "broker.sh: java (17+) is needed to run Apache Kafka" >&2; exit 1; }
    rm -rf "$libs"
    mkdir -p "$libs"
    mvn -q -B -f "$here/pom.xml" -Dmaven.repo.local="${MAVEN_REPO:-$HOME/.m2/repository}" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2
    touch "$libs/.complete"
  fi
  echo "$libs"
}

java_opts() {
  if [ "${KAFKA_JVM:-}" = shipped ]; then
    # kafka-server-start.sh's KAFKA_HEAP_OPTS and kafka-run-class.sh's
    # KAFKA_JVM_PERFORMANCE_OPTS.
    echo "-Xms1G -Xmx1G -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35" \
         "-XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15"
  else
    echo "-Xms128m -Xmx${KAFKA_HEAP:-512m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
  fi
  echo "-Djava.awt.headless=true -Dlog4j2.configurationFile=$here/log4j2.properties"
  # More JVM options, e.g. a flight recording of the broker under a benchmark:
  # KAFKA_JVM_EXTRA="-XX:StartFlightRecording=filename=/tmp/broker.jfr,settings=profile,dumponexit=true"
  echo "${KAFKA_JVM_EXTRA:-}"
}

write_properties() { # dir port cport
  local listeners="PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3"
  local advertised="PLAINTEXT://127.0.0.1:$2"
  local map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "${KAFKA_SASL_SSL_PORT:-}" ]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    advertised="$advertised,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    map="$map,SASL_SSL:SASL_SSL"
  fi
  cat >"$1/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$3
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$map
log.dirs=$1/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  # More broker settings, one `key=value` per line, for experiments (e.g.
  # KAFKA_PROPERTIES_EXTRA=transaction.partition.verification.enable=false).
  if [ -n "${KAFKA_PROPERTIES_EXTRA:-}" ]; then
    printf '%s\n' "$KAFKA_PROPERTIES_EXTRA" >>"$1/server.properties"
  fi
  if [ -n "${KAFKA_SASL_SSL_PORT:-}" ]; then
    : "${KAFKA_TLS_CERT:?KAFKA_TLS_CERT is needed with KAFKA_SASL_SSL_PORT}"
    : "${KAFKA_TLS_KEY:?KAFKA_TLS_KEY is needed with KAFKA_SASL_SSL_PORT}"
    cat "$KAFKA_TLS_KEY" "$KAFKA_TLS_CERT" >"$1/keystore.pem"
    cat >>"$1/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$1/keystore.pem
EOF
  fi
}

format() { # dir
  local libs
  libs=$(fetch)
  mkdir -p "$1"
  # Formatting needs a configuration; its ports are not recorded.
  write_properties "$1" 1 2
  local scram=()
  if [ -n "${KAFKA_SCRAM_USER:-}" ]; then
    : "${KAFKA_SCRAM_PASSWORD:?KAFKA_SCRAM_PASSWORD is needed with KAFKA_SCRAM_USER}"
    scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
  fi
  # shellcheck disable=SC2046
  java $(java_opts) -cp "$libs/*" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "$1/server.properties" --ignore-formatted "${scram[@]}" >/dev/null
}

run() { # dir port cport
  local libs
  libs=$(fetch)
  [ -f "$1/data/meta.properties" ] || format "$1"
  write_properties "$1" "$2" "$3"
  # shellcheck disable=SC2046
  exec java $(java_opts) -cp "$libs/*" kafka.Kafka "$1/server.properties"
}

tool() { # class args...
  local libs
  libs=$(fetch)
  # shellcheck disable=SC2046
  exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    "-Dlog4j2.configurationFile=$here/log4j2.properties" -cp "$libs/*" "$@"
}

case "${1:-}" in
  fetch) fetch ;;
  format) format "$2" ;;
  run) run "$2" "$3" "$4" ;;
  tool) shift; tool "$@" ;;
  *) echo "usage: broker.sh fetch | format DIR | run DIR PORT CONTROLLER_PORT | tool CLASS ARGS..." >&2; exit 2 ;;
esac
