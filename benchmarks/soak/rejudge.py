"""A recorded soak judged again (``python -m benchmarks soak --judge DIR``): its ``soak.csv``
and ``soak.json`` under today's rules, with the limits it ran with (defaults for limits added
since). A run recorded before the swaps served were counted fails for that; columns added
since (``max_ms``, ``oldest_wait_ms``) and the drain's window are left out of the rules that
read them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from benchmarks.soak.ledger import Accounts
from benchmarks.soak.verdict import Limits, Verdict, judge


def rejudge(out: Path) -> Verdict:
    """The verdict on the run recorded in ``out``."""
    report = json.loads((out / "soak.json").read_text())
    with (out / "soak.csv").open(newline="") as stream:
        samples = [
            {column: float(text) if text else math.nan for column, text in row.items()}
            for row in csv.DictReader(stream)
        ]
    options = report["options"]
    warmup_s = report.get("warmup_s") or max(
        options["min_warmup_s"], options["warmup_fraction"] * options["minutes"] * 60
    )
    return judge(
        samples,
        Accounts(**report["accounts"]),
        report["churn"],
        warmup_s,
        Limits(**options["limits"]),
        rate=report["rate_rps"],
        drain=report.get("drain"),
        server_exit=report["server_exit"],
    )
