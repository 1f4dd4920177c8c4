#!/usr/bin/env bash
# Makes docs/images/dashboard.png, the README's screenshot of the dashboard: a live
# `streamserve serve` streams wine records of several keys while models are published (PMML, the
# frozen graph, ONNX, one corrupt file), and Debian's Chromium photographs the page after a
# minute of it (tests/dashboard_support.py). bootstrap.sh installs the all and dev extras and
# Chromium; PMML models need Java 17.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh all,dev
mkdir -p docs/images
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
PYTHONPATH=tests exec .venv/bin/python -m dashboard_support "${1:-docs/images/dashboard.png}"
