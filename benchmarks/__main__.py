"""``python -m benchmarks``: every scenario side by side with its baseline from the same run.

Prints a markdown table and writes JSON (``--json``). ``--smoke`` runs tiny sizes: CI uses it to
check that every scenario runs and counts correctly; its timings mean nothing.

``python -m benchmarks soak --minutes N`` runs the soak instead (:mod:`benchmarks.soak`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.broker import BROKERS
from benchmarks.common import FULL, SMOKE, Row, Sizes, WineData, wine_data

SCENARIOS = ("embedded", "kafka", "swap", "many", "metrics", "peers", "cold-start")
KAFKA_SCENARIOS = ("kafka", "swap", "peers", "cold-start")
# peers installs two environments of its own (scripts/peers-env.sh) and starts a JVM: --smoke
# leaves it out unless named (--smoke --only peers)
NOT_IN_SMOKE = ("peers",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:
        from benchmarks.soak import main as soak

        return soak(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: counts, not speed (every scenario but peers, unless named with --only)",
    )
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run these only")
    parser.add_argument(
        "--broker",
        choices=BROKERS,
        action="append",
        help="the broker of the Kafka scenarios (repeatable): kafka (Apache Kafka, the default) "
        "or tansu; both run side by side in one run",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    parser.epilog = "python -m benchmarks soak --help: the soak (hours of model churn)"
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sizes = SMOKE if args.smoke else FULL
    chosen = args.only or [s for s in SCENARIOS if not (args.smoke and s in NOT_IN_SMOKE)]
    rows: list[Row] = []
    started = time.monotonic()
    with wine_data() as wine:
        from benchmarks.models import wine_mlp_onnx

        mlp_onnx = wine_mlp_onnx(wine.directory / "optimized_WineQuality.pb")
        for scenario in chosen:
            if scenario not in KAFKA_SCENARIOS:
                print(f"running {scenario} ...", file=sys.stderr, flush=True)
                rows += _runner(scenario)(wine, mlp_onnx, sizes)
                continue
            for broker in args.broker or ["kafka"]:
                print(f"running {scenario} on {broker} ...", file=sys.stderr, flush=True)
                rows += _kafka_runner(scenario)(wine, mlp_onnx, sizes, broker)
    report = {
        "smoke": args.smoke,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "seconds": round(time.monotonic() - started, 1),
        "rows": [row.as_json() for row in rows],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(markdown_table(rows))
    print(f"\nJSON: {args.json}")
    return 0


def _runner(scenario: str) -> Callable[[WineData, bytes, Sizes], list[Row]]:
    if scenario == "embedded":
        from benchmarks import embedded

        return embedded.run
    if scenario == "metrics":
        from benchmarks import metrics_scrape

        return metrics_scrape.run
    from benchmarks import many_models

    return many_models.run


def _kafka_runner(scenario: str) -> Callable[[WineData, bytes, Sizes, str], list[Row]]:
    if scenario == "kafka":
        from benchmarks import kafka

        return kafka.run
    if scenario == "peers":
        from benchmarks.peers import scenario as peers

        return peers.run
    if scenario == "cold-start":
        from benchmarks import cold_start

        return cold_start.run
    from benchmarks import swap

    return swap.run


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| scenario | metric | value | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = (
            f"{row.baseline}: {_number(row.baseline_value)}"
            if row.baseline_value is not None
            else ""
        )
        ratio = f"{row.ratio:.3g}x" if row.ratio is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        p50 = row.details.get("p50_ms")
        value = f"{_number(row.value)} {row.unit}"
        if isinstance(p50, float):  # a latency row: the value is its p99
            value = f"{_number(p50)} / {value}"
        cells = (row.scenario, row.metric, value, baseline, ratio, row.target, met)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
