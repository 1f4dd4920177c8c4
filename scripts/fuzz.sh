#!/usr/bin/env bash
# Coverage-guided fuzzing (atheris) of one target for a while, or every hypothesis target at scale.
#   bash scripts/fuzz.sh TARGET [seconds]     TARGET: descriptor, codecs, framing, runtime,
#                                             model-onnx-linear, model-xgboost-softprob-ubj, ...
#   bash scripts/fuzz.sh hypothesis [scale]   tests/fuzz with every case count times scale
# The corpus grows in fuzz-corpus/TARGET/; a failing input is written to fuzz-artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: bash scripts/fuzz.sh TARGET [seconds] (or: hypothesis [scale])}"
bash scripts/bootstrap.sh all,dev
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ "$target" = hypothesis ]; then
  STREAMSERVE_FUZZ_SCALE="${2:-20}" exec .venv/bin/pytest -p no:cacheprovider tests/fuzz \
    -o timeout=0 --hypothesis-show-statistics
fi
seconds="${2:-3600}"
mkdir -p "fuzz-corpus/$target" "fuzz-artifacts/$target"
exec .venv/bin/python tests/fuzz/atheris_targets.py "$target" "fuzz-corpus/$target" \
  -max_total_time="$seconds" -artifact_prefix="fuzz-artifacts/$target/" -rss_limit_mb=4096 \
  -timeout=60 -print_final_stats=1
