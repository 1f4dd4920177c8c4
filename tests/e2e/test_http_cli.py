"""``streamserve serve --http-port`` answers while it streams; ``streamserve status`` reads it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from server_lines import wait_for_line

from builders import onnx_constant

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_status_and_metrics_of_a_running_server(tmp_path: Path) -> None:
    (tmp_path / "models" / "wine").mkdir(parents=True)
    (tmp_path / "models" / "wine" / "constant.onnx").write_bytes(onnx_constant(11, 4.0))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamserve",
            "serve",
            "--models",
            str(tmp_path / "models"),
            "--codec",
            "json",
            "--http-port",
            "0",
            "--results",
            str(tmp_path / "results.jsonl"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        assert server.stderr is not None
        assert server.stdin is not None
        match = wait_for_line(server.stderr, r"HTTP API on (http://\S+)")
        url = match.group(1)
        record = orjson.dumps({"dataType": "wine", "features": [1.0] * 11}) + b"\n"
        server.stdin.write(record * 25)
        server.stdin.flush()
        with httpx.Client(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 60
            while http.get("/keys").json()["counts"].get("results") != 25:
                assert time.monotonic() < deadline, "the records never came through"
                time.sleep(0.05)
            metrics = http.get("/metrics").text
        assert 'streamserve_model_results_total{key="wine",model="constant"' in metrics

        status = subprocess.run(
            [sys.executable, "-m", "streamserve", "status", "--url", url],
            capture_output=True,
            env=ENV,
            timeout=60,
            check=False,
        )
        output = status.stdout.decode()
        assert status.returncode == 0, status.stderr.decode()
        assert re.search(r"wine\s+.*constant\s+.*current\s+.*\b25\b", output), output
        assert "25 records, 25 results, 0 errors" in output
    finally:
        if server.stdin is not None:
            server.stdin.close()
        assert server.wait(timeout=60) == 0
        if server.stderr is not None:
            server.stderr.close()


def test_status_of_no_server_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamserve", "status", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"cannot read the serving state" in done.stdout
