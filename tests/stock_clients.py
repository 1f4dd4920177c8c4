"""Runs the stock Triton clients (tests/clients/*.py) in their own environment, .venv-clients.

tritonclient pins protobuf 6 and streamserve needs 7, so the clients cannot be imported here:
each call list runs in a child process of .venv-clients' interpreter (bash scripts/client-env.sh
makes it) and answers JSON.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "tests" / "clients"
CLIENT_PYTHON = ROOT / ".venv-clients" / "bin" / "python"


def call_clients(
    script: str, address: str, calls: list[dict[str, Any]], *options: str
) -> list[Any]:
    """The answers of ``tests/clients/<script>`` to ``calls``, against ``address`` (host:port);
    ``options``: the script's TLS options (``--ca FILE``...)."""
    assert CLIENT_PYTHON.exists(), "the stock clients are not installed: bash scripts/client-env.sh"
    done = subprocess.run(
        [str(CLIENT_PYTHON), str(CLIENTS / script), address, *options],
        input=json.dumps(calls).encode(),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    answers = json.loads(done.stdout)
    assert len(answers) == len(calls)
    return answers


def http(address: str, *calls: dict[str, Any], tls: tuple[str, ...] = ()) -> list[Any]:
    return call_clients("triton_http.py", address, list(calls), *tls)


def grpc(address: str, *calls: dict[str, Any], tls: tuple[str, ...] = ()) -> list[Any]:
    return call_clients("triton_grpc.py", address, list(calls), *tls)
