"""A server serving PMML (its JVM running) stops cleanly on SIGTERM, as orchestrators stop it:
its own handler runs, so the last batch is written and the run summary printed, and it exits 0
(a JVM that takes SIGTERM over exits the process at once, status 143)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.slow


def test_a_pmml_server_stops_cleanly_on_sigterm(wine_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    shutil.copy(
        wine_dir / "winequalityDecisionTreeClassification.pmml", models / "wine" / "tree.pmml"
    )
    record = {"dataType": "wine", "fixed acidity": 7.4, "volatile acidity": 0.7,
              "citric acid": 0.0, "residual sugar": 1.9, "chlorides": 0.076,
              "free sulfur dioxide": 11.0, "total sulfur dioxide": 34.0, "density": 0.9978,
              "pH": 3.51, "sulphates": 0.56, "alcohol": 9.4}  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "streamserve", "serve", "--models", str(models), "--data", "-",
         "--codec", "json", "--errors", str(tmp_path / "errors.jsonl")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as server:  # fmt: skip
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            server.stdin.write(orjson.dumps(record) + b"\n")
            server.stdin.flush()
            first = orjson.loads(server.stdout.readline())  # the JVM runs: PMML scored it
            assert first["model"] == "tree"
            server.send_signal(signal.SIGTERM)
            _, stderr = server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
    assert server.returncode == 0, (
        f"SIGTERM did not reach streamserve's handler: {server.returncode}\n{stderr.decode()}"
    )
    assert "1 records, 1 results, 0 errors" in stderr.decode()
