"""``python -m benchmarks soak``: hours of model churn on the Kafka runtime, with flat memory and
latency expected.

A fleet of keys (ONNX, TensorFlow frozen graph, PMML and LightGBM models, the real libraries'),
records at half of the server's maximum throughput, a model swap every second, an admin rollback
every 10 s and a KServe V2 request every second, against ``streamserve serve --runtime kafka``
in its own process. Every 10 s a CSV row (RSS, open descriptors, threads, JVM heap, p50/p99
latency, throughput, consumer lag); at the end a PNG of them and the verdict (see
:mod:`benchmarks.soak.verdict`): exit status 1 when, after the warm-up, RSS or p99 latency grew
by more than 10 %, the server stalled or fell behind the paced rate, its results show that it
did not swap the models published, or any record is unaccounted for. ``--judge DIR`` judges a
recorded run again.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.broker import BROKERS

if TYPE_CHECKING:
    from benchmarks.soak.verdict import Verdict


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.judge is not None:
        from benchmarks.soak.rejudge import rejudge

        verdict = rejudge(args.judge)
        _print(verdict)
        if verdict.passed:
            print(f"passed: {args.judge} under the current rules")
        return 0 if verdict.passed else 1
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from benchmarks.soak.run import SoakOptions, run_soak
    from benchmarks.soak.traffic import ChurnPlan
    from benchmarks.soak.verdict import Limits

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options = SoakOptions(
        minutes=args.minutes,
        keys=args.keys,
        rate=args.rate,
        calibration_records=args.calibration_records,
        sample_every_s=args.sample_every_s,
        plan=ChurnPlan(args.swap_every_s, args.rollback_every_s, args.v2_every_s),
        limits=Limits(
            max_drift=args.max_drift,
            p99_slack_ms=args.p99_slack_ms,
            max_wait_s=args.max_wait_s,
            min_throughput=args.min_throughput,
        ),
        jvm_heap_mib=args.jvm_heap_mib,
        out=args.out,
        broker=args.broker,
    )
    outcome = run_soak(options)
    verdict = outcome.verdict
    print(f"CSV: {options.out / 'soak.csv'}\nPNG: {options.out / 'soak.png'}")
    if verdict is None:
        print("FAILED: the run did not finish")
        return 1
    _print(verdict)
    if not verdict.passed:
        return 1
    print(f"passed: {outcome.samples[-1]['answered']:,.0f} records, each answered once")
    return 0


def _print(verdict: Verdict) -> None:
    for metric, drift in verdict.drifts.items():
        print(f"{metric}: {drift.first:.1f} -> {drift.last:.1f} ({drift.growth:+.1%})")
    for figure, value in verdict.figures.items():
        print(f"{figure}: {value:,.4g}")
    for failure in verdict.failures:
        print(f"FAILED: {failure}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="the run's length")
    parser.add_argument("--keys", type=int, default=100, help="keys, formats in turn")
    parser.add_argument(
        "--rate", type=float, help="records/s (default: half of the maximum, measured first)"
    )
    parser.add_argument(
        "--calibration-records",
        type=int,
        default=60_000,
        help="records sent at once to measure the maximum throughput",
    )
    parser.add_argument("--sample-every-s", type=float, default=10.0)
    parser.add_argument("--swap-every-s", type=float, default=1.0)
    parser.add_argument("--rollback-every-s", type=float, default=10.0)
    parser.add_argument("--v2-every-s", type=float, default=1.0)
    parser.add_argument(
        "--max-drift", type=float, default=0.10, help="growth of RSS or p99 that fails the run"
    )
    parser.add_argument(
        "--p99-slack-ms",
        type=float,
        default=2.0,
        help="p99 growth below this never fails the run (scheduler noise)",
    )
    parser.add_argument(
        "--jvm-heap-mib",
        type=int,
        default=256,
        help="the server's JVM heap (PMML), fixed and touched at its start; 0: the JVM's sizing",
    )
    parser.add_argument(
        "--max-wait-s",
        type=float,
        default=10.0,
        help="a record waiting longer than this for its output fails the run (a stall)",
    )
    parser.add_argument(
        "--min-throughput",
        type=float,
        default=0.9,
        help="the end's outputs per second, as a fraction of the paced rate, that passes",
    )
    parser.add_argument("--broker", choices=BROKERS, default="kafka")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/soak"), help="CSV, PNG, JSON, log"
    )
    parser.add_argument(
        "--judge",
        type=Path,
        metavar="DIR",
        help="run nothing: judge the run recorded in DIR (its soak.csv, soak.json) again",
    )
    return parser
