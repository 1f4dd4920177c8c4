"""The soak (``python -m benchmarks soak``): its CI-sized run on Apache Kafka, a run whose server
swaps nothing, and the JVM's heap read from its performance counters. The ledger and the
verdict's rules are tested without a broker in test_soak_verdict.py."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks are run from the repository's root, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks.soak.probe import jvm_heap_mib, sample_process  # noqa: E402
from benchmarks.soak.run import COLUMNS  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_two_minute_soak_passes_with_every_record_answered_once(tmp_path: Path) -> None:
    """The CI run: 20 keys (five of each format), two minutes. Memory, descriptors, threads and
    the accounting are judged as in the long run; latency only against a wide slack: on a 2-core
    runner that also hosts the broker and the driver, a 10-second window's p99 moves by tens of
    milliseconds with no cause in the server, and two minutes cannot average that out."""
    done = subprocess.run(
        [
            *[sys.executable, "-m", "benchmarks", "soak", "--minutes", "2", "--keys", "20"],
            *["--calibration-records", "20000", "--p99-slack-ms", "250", "--out", str(tmp_path)],
        ],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=1700,
        check=False,
    )
    output = done.stdout.decode()
    assert done.returncode == 0, output + done.stderr.decode()[-4000:]
    assert "passed:" in output
    with (tmp_path / "soak.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 12  # one every 10 s
    assert all(math.isfinite(float(row["rss_mib"])) for row in rows)
    assert all(float(row["jvm_heap_mib"]) > 0 for row in rows), "PMML keys run a JVM"
    assert float(rows[-1]["swaps_published"]) >= 60
    assert float(rows[-1]["swaps_served"]) >= float(rows[-1]["swaps_published"]) / 2
    assert float(rows[-1]["rollbacks"]) >= 3
    assert float(rows[-1]["v2_requests"]) >= 60
    assert all(float(row["oldest_wait_ms"]) < 10_000 for row in rows)
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "soak.json").read_text())
    accounts = report["accounts"]
    assert report["passed"] is True
    assert report["server_exit"] == 0
    assert accounts["sent"] == accounts["results"] > 0
    assert accounts["missing"] == accounts["duplicates"] == accounts["unknown"] == 0
    assert report["drain"]["outputs"] > 0, "the drain is judged as a final window"
    assert report["figures"]["throughput_ratio"] >= 0.9


# --- a server that swaps nothing ----------------------------------------------------------------
KEYS = [f"k{index:03d}" for index in range(4)]


class Operator:
    """Pins every key through the admin API (with the token and address the soak writes to its
    --out folder) once every key's first model is current, then reads the server's /keys."""

    def __init__(self, out: Path) -> None:
        self._out = out
        self.pinned: list[str] = []
        self.keys: list[dict[str, Any]] = []  # the last /keys answer
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            url, token = self._server()
            with httpx.Client(base_url=url, timeout=10) as api:
                while not self._all_current(api):
                    self._stopping.wait(0.01)
                admin = {"Authorization": f"Bearer {token}"}
                for key in KEYS:
                    api.post(f"/admin/keys/{key}/pin", headers=admin).raise_for_status()
                    self.pinned.append(key)
                while not self._stopping.wait(2):
                    try:
                        self.keys = api.get("/keys").json()["keys"]
                    except httpx.HTTPError:
                        return  # the server stopped
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err

    @staticmethod
    def _all_current(api: httpx.Client) -> bool:
        if api.get("/v2/health/ready").status_code != 200:
            return False
        models = api.get("/models").json()["models"]
        return {m["key"] for m in models if m["role"] == "current"} == set(KEYS)

    def _server(self) -> tuple[str, str]:
        log, config = self._out / "server.log", self._out / "streamserve.toml"
        while not self._stopping.is_set():
            announced = (
                re.search(r"HTTP API on (http://\S+)", log.read_text()) if log.exists() else None
            )
            if announced and config.exists():
                token = tomllib.loads(config.read_text())["api"]["admin_token"]
                return announced.group(1), token
            time.sleep(0.1)
        raise RuntimeError("the soak's server never announced its API")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_soak_whose_server_swaps_no_model_fails(tmp_path: Path) -> None:
    """Every key pinned (docs/operations.md: while pinned, new models load and wait staged, the
    current model keeps serving): the driver publishes a model a second, the server swaps none.
    The verdict counts the swaps the results show, and the rollbacks refused."""
    operator = Operator(tmp_path)
    operator.start()
    try:
        done = subprocess.run(
            [
                *[sys.executable, "-m", "benchmarks", "soak", "--minutes", "1"],
                *["--keys", str(len(KEYS)), "--calibration-records", "2000"],
                *["--rate", "200", "--p99-slack-ms", "250", "--out", str(tmp_path)],
            ],
            cwd=ROOT,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            timeout=1400,
            check=False,
        )
    finally:
        operator.stop()
    assert operator.error is None, operator.error
    assert operator.pinned == KEYS, "setup: every key pinned"
    report = json.loads((tmp_path / "soak.json").read_text())
    published = report["churn"]["swaps"]
    server_swaps = {key["key"]: len(key["served_before"]) for key in operator.keys}
    assert set(server_swaps) == set(KEYS), f"setup: the server's /keys: {operator.keys}"
    assert published >= 10 * max(1, sum(server_swaps.values())), (
        f"setup: the server swapped (almost) none of the {published} models: {server_swaps}"
    )
    assert done.returncode == 1
    assert report["passed"] is False
    assert [failure.split(" (")[0] for failure in report["failures"]] == [
        f"only {report['figures']['swaps_served']} of the {published} models published during "
        "the run scored a record",
        f"only 0 of {report['churn']['rollbacks_refused']} rollbacks succeeded",
    ], report["failures"]
    with (tmp_path / "soak.csv").open() as stream:
        last = list(csv.DictReader(stream))[-1]
    assert float(last["swaps_published"]) > 10 * max(1, float(last["swaps_served"]))


# --- the JVM's heap -----------------------------------------------------------------------------
def test_the_heap_of_a_jvm_inside_a_python_process_is_read_from_its_counters() -> None:
    child = textwrap.dedent("""
        import sys, jpype
        jpype.startJVM("-Xms64m", "-Xmx64m")
        hold = jpype.JArray(jpype.JByte)(8 * 1024 * 1024)  # 8 MiB on the heap
        print("started", flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"started\n"
        used, old = jvm_heap_mib(process.pid)
        assert 8 <= used <= 64
        assert 0 <= old <= used
        assert sample_process(process.pid).threads > 10, "the JVM's own threads"
    finally:
        process.communicate(b"", timeout=60)


def test_a_process_without_a_jvm_has_no_heap_figures() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert all(math.isnan(figure) for figure in jvm_heap_mib(process.pid))
        assert math.isnan(sample_process(process.pid).jvm_heap_mib)
    finally:
        process.communicate(b"", timeout=60)
