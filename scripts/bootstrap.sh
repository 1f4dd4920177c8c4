#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs streamserve with the extras named in $1 (e.g. "all"
# or "all,dev"), at the exact versions in constraints.txt (the ones CI tests; regenerate them
# with scripts/lock.sh). Re-runs pip only when pyproject.toml, constraints.txt or the extras
# change. With the dev extra it also resolves the test broker's jars (Apache Kafka, by Maven:
# scripts/kafka-broker.sh, which needs Java 17 and Maven and otherwise says so), the stock
# inference clients' own environment (scripts/client-env.sh) and Debian's Chromium
# (scripts/chromium.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="$1"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "constraints.txt is resolved for Python 3.11 (found $("$python_bin" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.streamserve-installed-$extras"
digest="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[$extras]"
  echo "$digest" > "$stamp"
fi
if [[ ",$extras," == *,dev,* ]]; then
  bash scripts/kafka-broker.sh >/dev/null  # Maven once; then only its own stamp check
  bash scripts/client-env.sh  # the stock inference clients, in .venv-clients
  bash scripts/chromium.sh  # Debian's Chromium, for the dashboard's browser tests
fi
