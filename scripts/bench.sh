#!/usr/bin/env bash
# The benchmarks: installs what they need into .venv, then runs every scenario side by side with
# its baseline (python -m benchmarks --help for options; --smoke for a quick check).
# `bash scripts/bench.sh soak --minutes N` runs the soak instead (docs/benchmarks.md, "Soak").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all,dev
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/python -m benchmarks "$@"
