#!/usr/bin/env bash
# Resolve Apache Kafka's jars for the test broker (kafka-broker/pom.xml) into a cache folder and
# print that folder. Maven runs only the first time, or when the pom changes (a stamp holds the
# pom's sha256); after that this only checks the stamp. The tests' fixture (tests/apache_kafka.py)
# runs it, so a fresh clone resolves on its first broker start.
# STREAMSERVE_KAFKA_LIBS overrides the folder (default: ~/.cache/streamserve/kafka-VERSION/libs).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pom="$repo/kafka-broker/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
libs="${STREAMSERVE_KAFKA_LIBS:-${XDG_CACHE_HOME:-$HOME/.cache}/streamserve/kafka-$version/libs}"
digest="$(sha256sum "$pom" | cut -d' ' -f1)"
stamp="$libs/.pom-sha256"

fail() {
  echo "kafka-broker.sh: $*" >&2
  exit 1
}

resolved() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]
}

check_tools() {
  command -v java >/dev/null || fail "'java' not found: install Java 17 and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
  command -v mvn >/dev/null || fail "'mvn' not found: install Java 17 and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
  local major
  major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
  [[ "${major:-0}" -ge 17 ]] || fail "Apache Kafka $version needs Java 17 or newer, found '${major:-?}': install Java 17 and Maven"
}

resolve() {
  local partial="$libs.partial.$$"
  rm -rf "$partial"
  echo "kafka-broker.sh: resolving Apache Kafka $version with Maven into $libs" >&2
  # Maven prints its errors on stdout: send them to stderr (without colour codes), as stdout is
  # the folder only.
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$partial" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 ||
    { rm -rf "$partial"; fail "Maven could not resolve $pom"; }
  echo "$digest" >"$partial/.pom-sha256"
  rm -rf "$libs"
  mv "$partial" "$libs"
}

command -v java >/dev/null || fail "'java' not found: install Java 17 and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
if ! resolved; then
  mkdir -p "$(dirname "$libs")"
  # One resolution at a time (two test sessions may start together); the second finds it done.
  exec 9>"$libs.lock"
  flock 9
  if ! resolved; then
    check_tools
    resolve
  fi
fi
echo "$libs"
