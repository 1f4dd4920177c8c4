#!/usr/bin/env bash
# The wine demo, embedded: installs what it needs into .venv, then runs `streamserve demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all
exec .venv/bin/streamserve demo "$@"
