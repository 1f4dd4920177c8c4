#!/usr/bin/env bash
# The environments of the benchmarks' peers (docs/benchmarks.md, "Peers"): .venv-peers-quix (Quix
# Streams) and .venv-peers-flink (PyFlink), each from benchmarks/peers/requirements-NAME.txt at
# the exact versions in constraints-NAME.txt, and the Flink Kafka connector jar, resolved with
# Maven (benchmarks/peers/pom.xml) into a cache folder. They live apart from .venv: their pins
# (protobuf 5 and 6, Beam's numpy < 2.2) conflict with streamserve's. pip runs only when a
# requirements or constraints file changed, Maven only when the pom did. Prints the jar's path.
# `python -m benchmarks --only peers` runs it; STREAMSERVE_FLINK_CONNECTOR overrides the folder
# of the jar (default: ~/.cache/streamserve/flink-connector-VERSION).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"

fail() {
  echo "peers-env.sh: $*" >&2
  exit 1
}

environment() {
  local name="$1" venv=".venv-peers-$1"
  local requirements="benchmarks/peers/requirements-$name.txt"
  local constraints="benchmarks/peers/constraints-$name.txt"
  local stamp="$venv/.installed" digest
  digest="$(cat "$requirements" "$constraints" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" == "$digest" ]; then
    return
  fi
  echo "peers-env.sh: installing $venv (the first time: about 1 GB of downloads)" >&2
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -c "$constraints" -r "$requirements" >&2
  echo "$digest" >"$stamp"
}

connector() {
  local pom="benchmarks/peers/pom.xml" version folder digest stamp partial
  version="$(sed -n 's:.*<connector.version>\(.*\)</connector.version>.*:\1:p' "$pom")"
  folder="${STREAMSERVE_FLINK_CONNECTOR:-${XDG_CACHE_HOME:-$HOME/.cache}/streamserve/flink-connector-$version}"
  digest="$(sha256sum "$pom" | cut -d' ' -f1)"
  stamp="$folder/.pom-sha256"
  if ! [ -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    command -v mvn >/dev/null || fail "'mvn' not found: install Java 17 and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)"
    mkdir -p "$(dirname "$folder")"
    partial="$folder.partial.$$"
    rm -rf "$partial"
    echo "peers-env.sh: resolving flink-sql-connector-kafka $version with Maven into $folder" >&2
    # Maven prints its errors on stdout: stdout is the jar's path only.
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DexcludeTransitive=true -DoutputDirectory="$partial" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 ||
      { rm -rf "$partial"; fail "Maven could not resolve $pom"; }
    echo "$digest" >"$partial/.pom-sha256"
    rm -rf "$folder"
    mv "$partial" "$folder"
  fi
  echo "$folder/flink-sql-connector-kafka-$version.jar"
}

command -v java >/dev/null || fail "'java' not found: PyFlink needs Java 11 or 17 (Debian: apt-get install openjdk-17-jdk-headless maven)"
# One installation at a time: two benchmark runs may start together.
exec 9>"$repo/.venv-peers.lock"
flock 9
environment quix
environment flink
connector
