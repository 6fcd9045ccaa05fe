#!/usr/bin/env bash
# Apicurio Registry (3.x, in-memory storage) for the test suite: a real
# Schema Registry with Confluent's REST API at /apis/ccompat/v7, run from
# the distribution Apicurio publishes on Maven Central
# (io.apicurio:apicurio-registry-app:VERSION:tar.gz:all, a built Quarkus
# fast-jar: quarkus-run.jar + lib/), on a loopback port the caller chooses.
#
#   registry.sh fetch            the unpacked distribution (downloads once
#                                with Maven into the local repository,
#                                unpacked under $INKSTREAM_CACHE)
#   registry.sh java             the java (21 or later) it runs on
#   registry.sh run PORT MPORT   runs it in the foreground (exec: the caller's
#                                child pid is the JVM): the API on PORT, the
#                                management interface (health) on MPORT, both
#                                on 127.0.0.1; data in memory only
#
# Environment: REGISTRY_HEAP (default 384m), INKSTREAM_CACHE
# (~/.cache/inkstream), MAVEN_REPO (Maven's local repository, default
# ~/.m2/repository), INKSTREAM_JAVA21 (a java binary, 21+, when the
# default java is older).
set -euo pipefail

version="3.3.3"
artifact="io.apicurio:apicurio-registry-app:$version:tar.gz:all"
cache="${INKSTREAM_CACHE:-$HOME/.cache/inkstream}"
dir="$cache/apicurio-registry-$version"

fetch() {
  if [ ! -f "$dir/.complete" ]; then
    command -v mvn >/dev/null 2>&1 || { echo "registry.sh: mvn (Maven) is needed to fetch Apicurio Registry" >&2; exit 1; }
    # Maven's own default is the home directory of the passwd entry (Java's
    # user.home), not $HOME: name the local repository so we look where it
    # downloads.
    local repo="${MAVEN_REPO:-$HOME/.m2/repository}"
    mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$repo" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:get \
      -Dartifact="$artifact" -Dtransitive=false >&2
    local tgz
    tgz="$repo/io/apicurio/apicurio-registry-app/$version/apicurio-registry-app-$version-all.tar.gz"
    [ -s "$tgz" ] || { echo "registry.sh: $artifact was not downloaded to $tgz" >&2; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -xzf "$tgz" -C "$dir"
    [ -f "$dir/quarkus-run.jar" ] || { echo "registry.sh: no quarkus-run.jar in $tgz" >&2; exit 1; }
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# Apicurio Registry 3.3 is built for Java 21: the default java if it is
# recent enough, else INKSTREAM_JAVA21, else a JDK 21+ under /usr/lib/jvm.
java_major() { "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}'; }
find_java() {
  local candidates=()
  [ -n "${INKSTREAM_JAVA21:-}" ] && candidates+=("$INKSTREAM_JAVA21")
  command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
  local j
  for j in /usr/lib/jvm/*/bin/java; do [ -x "$j" ] && candidates+=("$j"); done
  for j in "${candidates[@]}"; do
    local major
    major=$(java_major "$j")
    if [ -n "$major" ] && [ "${major%%.*}" -ge 21 ]; then echo "$j"; return 0; fi
  done
  echo "registry.sh: Apicurio Registry $version needs Java 21 or later; found none (set INKSTREAM_JAVA21)" >&2
  return 1
}

run() { # port mport
  local d java
  d=$(fetch)
  java=$(find_java)
  cd "$d"
  exec "$java" -Xms64m -Xmx"${REGISTRY_HEAP:-384m}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$1" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$2" \
    -Dquarkus.log.console.json=false \
    -jar quarkus-run.jar
}

case "${1:-}" in
  fetch) fetch ;;
  java) find_java ;;
  run) run "$2" "$3" ;;
  *) echo "usage: registry.sh fetch | java | run PORT MANAGEMENT_PORT" >&2; exit 2 ;;
esac
