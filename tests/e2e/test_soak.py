"""The soak (``python -m benchmarks soak``): its CI-sized run on Apache Kafka, and the parts its
verdict rests on: the ledger that accounts for every record, the drift rules, the JVM's heap
read from its performance counters."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks are run from the repository's root, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks.soak.ledger import Accounts, Ledger  # noqa: E402
from benchmarks.soak.probe import jvm_heap_mib, sample_process  # noqa: E402
from benchmarks.soak.run import COLUMNS  # noqa: E402
from benchmarks.soak.verdict import Limits, judge  # noqa: E402


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
    assert float(rows[-1]["swaps"]) >= 60
    assert float(rows[-1]["rollbacks"]) >= 3
    assert float(rows[-1]["v2_requests"]) >= 60
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "soak.json").read_text())
    accounts = report["accounts"]
    assert report["passed"] is True
    assert report["server_exit"] == 0
    assert accounts["sent"] == accounts["results"] > 0
    assert accounts["missing"] == accounts["duplicates"] == accounts["unknown"] == 0


# --- the ledger ---------------------------------------------------------------------------------
@dataclass
class Output:
    """A message of the results or errors topic, as the ledger reads it."""

    document: dict[str, object]
    at_ms: int

    def value(self) -> bytes:
        return orjson.dumps(self.document)

    def timestamp(self) -> tuple[int, int]:
        return 1, self.at_ms


def _result(position: str, at_ms: int) -> Output:
    return Output({"key": "k", "model": "m", "value": 1, "position": position}, at_ms)


def test_the_ledger_matches_each_record_with_its_one_output() -> None:
    ledger = Ledger("data")
    ledger.delivered(0, 0, sent_ms=1000)
    ledger.delivered(1, 0, sent_ms=1000)
    ledger.delivered(1, 1, sent_ms=1002)
    ledger.output(_result("data/0@0", 1010))
    ledger.output(_result("data/1@1", 1030))
    ledger.output(Output({"kind": "no_model", "reason": "r", "position": "data/1@0"}, 1020))
    window = ledger.take_window()
    assert sorted(window.latencies_ms) == [10, 20, 28]
    assert window.outputs == 3
    accounts = ledger.accounts()
    assert (accounts.sent, accounts.results, accounts.errors) == (3, 2, 1)
    assert accounts.error_kinds == {"no_model": 1}
    assert accounts.unaccounted == 0
    assert ledger.take_window().outputs == 0, "a window holds what came since the last"


def test_an_output_read_before_its_delivery_report_is_matched_when_the_report_comes() -> None:
    ledger = Ledger("data")
    ledger.output(_result("data/2@7", 1050))
    assert ledger.accounts().unknown == 1
    ledger.delivered(2, 7, sent_ms=1000)
    assert ledger.accounts().unaccounted == 0
    assert list(ledger.take_window().latencies_ms) == [50]


def test_the_ledger_counts_missing_repeated_and_unknown_outputs() -> None:
    ledger = Ledger("data")
    for offset in range(3):
        ledger.delivered(0, offset, sent_ms=0)
    ledger.output(_result("data/0@0", 5))
    ledger.output(_result("data/0@0", 6))  # twice
    ledger.output(_result("other/0@1", 7))  # another topic's record
    ledger.output(Output({"kind": "model_rejected", "key": "k", "reason": "r"}, 8))
    accounts = ledger.accounts()
    assert (accounts.missing, accounts.duplicates, accounts.unknown) == (2, 1, 1)
    assert accounts.unaccounted == 4
    assert accounts.model_events == {"model_rejected": 1}


# --- the verdict --------------------------------------------------------------------------------
BALANCED = Accounts(
    sent=100,
    send_failures=0,
    results=100,
    errors=0,
    missing=0,
    duplicates=0,
    unknown=0,
    error_kinds={},
    model_events={},
)
CHURN = {"swaps": 30, "rollbacks": 3, "v2_requests": 30}


def _samples(rss: list[float], p99: list[float]) -> list[dict[str, float]]:
    return [
        {"elapsed_s": 10.0 * (i + 1), "rss_mib": r, "p99_ms": p, "fds": 60, "threads": 40}
        for i, (r, p) in enumerate(zip(rss, p99, strict=True))
    ]


def test_a_flat_run_passes_and_one_slow_window_does_not_fail_it() -> None:
    p99 = [20.0] * 12
    p99[-1] = 400.0  # a collector pause, a neighbour's burst: one window
    verdict = judge(_samples([900.0] * 12, p99), BALANCED, CHURN, warmup_s=30)
    assert verdict.passed, verdict.failures
    assert verdict.samples_judged == 9
    assert verdict.window == 3
    assert verdict.drifts["p99_ms"].last == 20.0


def test_memory_that_keeps_growing_fails_the_run_naming_the_figures() -> None:
    rss = [900.0 + 30 * i for i in range(12)]  # +30 MiB every window
    verdict = judge(_samples(rss, [20.0] * 12), BALANCED, CHURN, warmup_s=30)
    assert verdict.failures == [
        "rss_mib grew by 17.6% after the warm-up: 1020.0 MiB -> 1200.0 MiB (limit 10%)"
    ]


def test_latency_growth_fails_past_ten_percent_and_the_slack() -> None:
    growing = [20.0] * 6 + [30.0] * 6
    failed = judge(_samples([900.0] * 12, growing), BALANCED, CHURN, warmup_s=30)
    assert [f.split(" grew")[0] for f in failed.failures] == ["p99_ms"]
    slack = Limits(p99_slack_ms=15.0)
    assert judge(_samples([900.0] * 12, growing), BALANCED, CHURN, 30, slack).passed


def test_a_record_unaccounted_for_or_a_failed_request_fails_the_run() -> None:
    flat = _samples([900.0] * 12, [20.0] * 12)
    lost = dataclasses.replace(BALANCED, results=99, missing=1)
    assert (
        "1 records unaccounted for, of 100 sent: 1 without an output"
        in judge(flat, lost, CHURN, 30).failures[0]
    )
    failed = judge(flat, BALANCED, {**CHURN, "v2_failures": 2}, 30)
    assert failed.failures == ["churn failed: {'v2_failures': 2}"]
    assert not judge(flat[:3], BALANCED, CHURN, 30).passed, "nothing judged is no pass"


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
