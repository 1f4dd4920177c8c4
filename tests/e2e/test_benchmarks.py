"""The benchmarks' smoke run: every scenario runs and counts correctly. Timings from a smoke run
mean nothing and are not asserted; the scenarios themselves raise when a record is lost, fails
or is left unscored, and when a key is not served."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_runs_and_counts_correctly(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            *[sys.executable, "-m", "benchmarks", "--smoke", "--json", str(report_path)],
            *["--broker", "kafka", "--broker", "tansu"],
        ],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(report_path.read_text())
    rows = report["rows"]
    assert report["smoke"] is True
    scenarios = {row["scenario"].split()[0] for row in rows}
    assert scenarios == {"1", "2", "3", "4", "5", "6", "8"}  # 7, the peers, only when named
    on_kafka = {row["scenario"] for row in rows if row["scenario"].endswith(", Apache Kafka")}
    on_tansu = {row["scenario"] for row in rows if row["scenario"].endswith(", tansu")}
    assert {label.rsplit(",", 1)[0] for label in on_kafka} == {
        label.rsplit(",", 1)[0] for label in on_tansu
    }, "every Kafka scenario runs on both brokers"
    assert len(on_kafka) == 4, on_kafka
    for row in rows:
        assert isinstance(row["value"], float), row
        assert math.isfinite(row["value"]), row
        if row["baseline"]:
            assert math.isfinite(row["baseline_value"]), row
        if row["baseline_value"]:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline_value"]), row
    many = [row for row in rows if row["scenario"].startswith("5") and "RSS" in row["metric"]]
    assert [row["details"]["keys_served"] for row in many] == [50, 50, 300]
    assert any(row["details"]["reloads"] > 0 for row in many), "the budget never evicted"
    table = done.stdout.decode()
    assert table.count("\n| ") == len(rows), "the table has a line per row"
