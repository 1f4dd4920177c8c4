"""The soak's verdict: after the warm-up, nothing may grow, and every record is accounted for.

Growth is judged on robust figures: the median of the first ``k`` samples after the warm-up
against the median of the last ``k`` (``k`` = a tenth of those samples, at least 3, at most
half). One sample is one 10-second window, so a single collector pause, a slow swap or a
neighbour's burst on a shared machine moves one window, never a median of three or more; a
leak moves every window after it, and so the median. Only growth fails: memory or latency
that falls after the warm-up is no leak.

- RSS and p99 latency fail when they grow by more than ``max_drift`` (10 %). A p99 must also
  grow by more than ``p99_slack_ms``: on a 2-core machine the scheduler alone moves a p99 of
  10 ms by a millisecond or two, while a real drift (a history walked per batch, collector
  pauses growing with retained objects) keeps growing past any fixed slack.
- Open descriptors and threads fail when they grow by more than ``max_drift`` and by more than
  ``count_slack``: thread pools (the HTTP API's, librdkafka's) start and retire a few.
- Every record sent has exactly one output, a result: none missing, none twice, none for a
  record never sent, no error record (the soak sends only good records and good models), no
  model rejected, no failed swap, rollback or V2 request.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks.soak.ledger import Accounts

Sample = Mapping[str, float]


@dataclass(frozen=True)
class Limits:
    max_drift: float = 0.10
    p99_slack_ms: float = 2.0
    count_slack: int = 4


@dataclass(frozen=True)
class Drift:
    """A figure's robust value at the start and at the end of the judged part of the run."""

    metric: str
    first: float
    last: float

    @property
    def growth(self) -> float:
        return self.last / self.first - 1 if self.first > 0 else math.nan

    def as_json(self) -> dict[str, float]:
        return {"first": self.first, "last": self.last, "growth": self.growth}


@dataclass(frozen=True)
class Verdict:
    failures: list[str]
    drifts: dict[str, Drift] = field(default_factory=dict)
    samples_judged: int = 0
    window: int = 0  # samples in each median

    @property
    def passed(self) -> bool:
        return not self.failures


def judge(
    samples: Sequence[Sample],
    accounts: Accounts,
    churn: Mapping[str, int],
    warmup_s: float,
    limits: Limits = Limits(),
) -> Verdict:
    """The verdict on a run's samples (after ``warmup_s``), its accounts and its churn."""
    failures = accounting_failures(accounts, churn)
    judged = [sample for sample in samples if sample["elapsed_s"] > warmup_s]
    if len(judged) < 2:
        failures.append(
            f"only {len(judged)} samples after the {warmup_s:.0f} s warm-up: nothing to judge "
            "(run longer)"
        )
        return Verdict(failures, samples_judged=len(judged))
    window = max(1, min(max(3, len(judged) // 10), len(judged) // 2))
    drifts = {
        metric: Drift(metric, _median(judged[:window], metric), _median(judged[-window:], metric))
        for metric in ("rss_mib", "p99_ms", "fds", "threads")
    }
    failures += growth_failures(drifts, limits)
    return Verdict(failures, drifts, len(judged), window)


def growth_failures(drifts: Mapping[str, Drift], limits: Limits) -> list[str]:
    slack = {
        "p99_ms": limits.p99_slack_ms,
        "fds": limits.count_slack,
        "threads": limits.count_slack,
    }
    unit = {"rss_mib": " MiB", "p99_ms": " ms"}
    failures = []
    for metric, drift in drifts.items():
        if math.isnan(drift.first) or math.isnan(drift.last):
            failures.append(f"{metric}: no figure at the start or the end of the judged run")
            continue
        grown = drift.last - drift.first
        if drift.growth > limits.max_drift and grown > slack.get(metric, 0):
            failures.append(
                f"{metric} grew by {drift.growth:.1%} after the warm-up: "
                f"{drift.first:.1f}{unit.get(metric, '')} -> {drift.last:.1f}"
                f"{unit.get(metric, '')} (limit {limits.max_drift:.0%})"
            )
    return failures


def accounting_failures(accounts: Accounts, churn: Mapping[str, int]) -> list[str]:
    failures = []
    if accounts.unaccounted:
        failures.append(
            f"{accounts.unaccounted} records unaccounted for, of {accounts.sent} sent: "
            f"{accounts.missing} without an output, {accounts.duplicates} with two or more, "
            f"{accounts.unknown} outputs for records never sent, {accounts.send_failures} "
            "never acknowledged by the broker"
        )
    if accounts.errors:
        failures.append(f"{accounts.errors} error records: {accounts.error_kinds}")
    if accounts.model_events:
        failures.append(f"models refused or quarantined: {accounts.model_events}")
    failed = {what: count for what, count in churn.items() if what.endswith("_failures")}
    if any(failed.values()):
        failures.append(f"churn failed: {failed}")
    if not churn.get("swaps"):
        failures.append("no model was swapped")
    return failures


def _median(samples: Sequence[Sample], metric: str) -> float:
    values = [sample[metric] for sample in samples if not math.isnan(sample[metric])]
    return statistics.median(values) if values else math.nan
