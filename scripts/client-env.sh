#!/usr/bin/env bash
# Creates .venv-clients (Python 3.11): the stock inference clients the tests drive (tritonclient
# over HTTP and gRPC), at the exact versions in tests/clients/constraints.txt. They live apart
# from .venv because their pins (protobuf < 7) conflict with streamserve's, as a client
# application's would. Re-runs pip only when the two files change.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv-clients/bin/python ]; then
  "$python_bin" -m venv .venv-clients
fi
stamp=".venv-clients/.installed"
digest="$(cat tests/clients/requirements.txt tests/clients/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  .venv-clients/bin/python -m pip install --quiet --upgrade pip
  .venv-clients/bin/python -m pip install --quiet -c tests/clients/constraints.txt -r tests/clients/requirements.txt
  echo "$digest" > "$stamp"
fi
