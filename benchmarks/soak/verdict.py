"""The soak's verdict: after the warm-up, nothing may grow, the server keeps answering at the
paced rate, its models really change, and every record is accounted for.

Growth is judged on robust figures: the median of the first ``k`` samples after the warm-up
against the median of the last ``k`` (``k`` = a tenth of those samples, at least 3, at most
half). One sample is one 10-second window, so a single collector pause, a slow swap or a
neighbour's burst on a shared machine moves one window, never a median of three or more; a
leak moves every window after it, and so the median. Only growth fails: memory or latency
that falls after the warm-up is no leak.

- RSS and latency fail when they grow by more than ``max_drift`` (10 %). Latency must also
  grow by more than ``p99_slack_ms``: on a 2-core machine the scheduler alone moves a p99 of
  10 ms by a millisecond or two, while a real drift (a history walked per batch, collector
  pauses growing with retained objects) keeps growing past any fixed slack. A window's latency
  is the p99 of the records answered in it; a window in which nothing was answered counts as
  the age of the oldest record still waiting, so a server that stops answering moves the
  median instead of leaving it.
- Open descriptors and threads fail when they grow by more than ``max_drift`` and by more than
  ``count_slack``: thread pools (the HTTP API's, librdkafka's) start and retire a few.
- Stalls fail on their own, whatever the medians say: a window after the warm-up with no output
  at all (the driver sends all the time, so the server stopped answering), and any record that
  waited longer than ``max_wait_s`` for its output: answered in a window, still waiting at a
  sample, or answered only in the drain after the run (the drain is judged as a final window).
- Throughput: the median of the last ``k`` windows' outputs per second must reach
  ``min_throughput`` (90 %) of the paced rate; a server that falls behind fails even while its
  backlog is still short.
- The server exits 0 on SIGTERM after the run.
- Every record sent has exactly one output, a result: none missing, none twice, none for a
  record never sent, no error record (the soak sends only good records and good models), no
  model rejected, no failed swap, rollback or V2 request.
- Swaps are confirmed by the server's results, not by the driver: each result names the model
  version that scored it, and at least ``min_swaps_served`` (half) of the models published
  during the run must have scored records. At least ``min_rollbacks`` (half) of the rollbacks
  tried must have succeeded: a refusal (409, nothing to roll back) means the key never swapped.
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
    """What fails a run (see the module's documentation)."""

    max_drift: float = 0.10
    p99_slack_ms: float = 2.0
    count_slack: int = 4
    max_wait_s: float = 10.0
    min_throughput: float = 0.9  # of the paced rate
    min_swaps_served: float = 0.5  # of the models published during the run
    min_rollbacks: float = 0.5  # of the rollbacks tried


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
    """The failures (none: passed), the drifts judged, and the figures the other rules judged:
    ``longest_wait_s``, ``throughput_ratio`` (of the paced rate), ``swaps_served``."""

    failures: list[str]
    drifts: dict[str, Drift] = field(default_factory=dict)
    samples_judged: int = 0
    window: int = 0  # samples in each median
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def judge(
    samples: Sequence[Sample],
    accounts: Accounts,
    churn: Mapping[str, int],
    warmup_s: float,
    limits: Limits = Limits(),
    *,
    rate: float | None = None,
    drain: Sample | None = None,
    server_exit: int | None = 0,
) -> Verdict:
    """The verdict on a run's samples (after ``warmup_s``), its accounts and its churn;
    ``rate`` is the paced rate (records/s), ``drain`` the final window's figures (the records
    answered after the last sample), ``server_exit`` the server's exit status on SIGTERM."""
    failures = accounting_failures(accounts, churn) + churn_failures(accounts, churn, limits)
    if server_exit != 0:
        failures.append(
            f"the server exited with {server_exit} on SIGTERM, not 0: it did not stop cleanly"
        )
    figures: dict[str, float] = {}
    if accounts.swaps_served is not None:
        figures["swaps_served"] = accounts.swaps_served
    judged = [sample for sample in samples if sample["elapsed_s"] > warmup_s]
    if len(judged) < 2:
        failures.append(
            f"only {len(judged)} samples after the {warmup_s:.0f} s warm-up: nothing to judge "
            "(run longer)"
        )
        return Verdict(failures, samples_judged=len(judged), figures=figures)
    window = max(1, min(max(3, len(judged) // 10), len(judged) // 2))
    drifts = {
        metric: Drift(
            metric,
            _median([_figure(s, metric) for s in judged[:window]]),
            _median([_figure(s, metric) for s in judged[-window:]]),
        )
        for metric in ("rss_mib", "p99_ms", "fds", "threads")
    }
    failures += growth_failures(drifts, limits)
    failures += stall_failures(judged, drain, limits, figures)
    if rate is not None:
        failures += throughput_failures(judged[-window:], rate, limits, figures)
    return Verdict(failures, drifts, len(judged), window, figures)


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


def stall_failures(
    judged: Sequence[Sample], drain: Sample | None, limits: Limits, figures: dict[str, float]
) -> list[str]:
    """Windows without any output, and the longest a record waited (in the judged windows and
    the drain) against ``max_wait_s``."""
    failures = []
    silent = [s for s in judged if _value(s, "throughput_rps") == 0]
    if silent:
        ends = ", ".join(f"{sample['elapsed_s']:.0f}" for sample in silent[:6])
        waited = _largest([_value(sample, "oldest_wait_ms") for sample in silent])
        failures.append(
            f"no output at all in {len(silent)} windows after the warm-up (ending at {ends} s): "
            "the server stopped answering"
            + (f"; the oldest record had waited {waited / 1000:.1f} s" if waited > 0 else "")
        )
    waits = [(_wait_ms(s), f"in the window ending at {s['elapsed_s']:.0f} s") for s in judged]
    if drain is not None:
        waits.append((_wait_ms(drain), "in the drain, after the last sample"))
    known = [(wait, where) for wait, where in waits if not math.isnan(wait)]
    if known:
        longest, where = max(known, key=lambda item: item[0])
        figures["longest_wait_s"] = longest / 1000
        if longest > limits.max_wait_s * 1000:
            failures.append(
                f"a record waited {longest / 1000:.1f} s for its output {where} "
                f"(limit {limits.max_wait_s:g} s)"
            )
    return failures


def throughput_failures(
    last: Sequence[Sample], rate: float, limits: Limits, figures: dict[str, float]
) -> list[str]:
    """The last windows' median outputs per second against the paced rate."""
    answered = _median([_value(s, "throughput_rps") for s in last])
    if rate <= 0:
        return []
    if math.isnan(answered):
        return ["throughput: no figure at the end of the judged run"]
    figures["throughput_ratio"] = answered / rate
    if answered < limits.min_throughput * rate:
        return [
            f"throughput fell behind the paced rate: the last {len(last)} windows' median "
            f"answered {answered:,.0f} records/s of the {rate:,.0f} sent "
            f"({answered / rate:.0%}, limit {limits.min_throughput:.0%})"
        ]
    return []


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
    return failures


def churn_failures(accounts: Accounts, churn: Mapping[str, int], limits: Limits) -> list[str]:
    """Swaps seen serving against those published; rollbacks done against those tried.

    ``churn['swaps']`` counts the models the driver published; the server's swaps are the
    models that scored records after their key's first (``accounts.swaps_served``)."""
    failures = []
    published, served = churn.get("swaps", 0), accounts.swaps_served
    if not published:
        failures.append("no model was published during the run: nothing was swapped")
    elif served is None:
        failures.append(
            "the run did not record which models scored its records: its swaps are unconfirmed"
        )
    elif served < limits.min_swaps_served * published:
        failures.append(
            f"only {served} of the {published} models published during the run scored a "
            f"record (limit {limits.min_swaps_served:.0%}): the server did not swap its models"
        )
    done, refused = churn.get("rollbacks", 0), churn.get("rollbacks_refused", 0)
    tried = done + refused + churn.get("rollback_failures", 0)
    if tried and done < limits.min_rollbacks * tried:
        failures.append(
            f"only {done} of {tried} rollbacks succeeded ({refused} refused with 409, nothing "
            f"to roll back: the key had not swapped; limit {limits.min_rollbacks:.0%})"
        )
    return failures


def _figure(sample: Sample, metric: str) -> float:
    """A window's figure for the drifts; its latency is its p99, or, when it answered nothing
    while records waited, the oldest waiting record's age."""
    if metric == "p99_ms" and math.isnan(_value(sample, "p99_ms")):
        waited = _value(sample, "oldest_wait_ms")
        return waited if waited > 0 else math.nan
    return _value(sample, metric)


def _wait_ms(sample: Sample) -> float:
    """The longest wait a window shows: its slowest answer or its oldest record still waiting."""
    return _largest([_value(sample, "max_ms"), _value(sample, "oldest_wait_ms")])


def _largest(values: Sequence[float]) -> float:
    known = [value for value in values if not math.isnan(value)]
    return max(known) if known else math.nan


def _value(sample: Sample, metric: str) -> float:
    """A column's value; NaN when the sample has none (a run recorded before the column)."""
    return float(sample.get(metric, math.nan))


def _median(values: Sequence[float]) -> float:
    known = [value for value in values if not math.isnan(value)]
    return statistics.median(known) if known else math.nan
