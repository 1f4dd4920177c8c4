"""The dashboard's history: the serving state sampled on a thread of the HTTP API, bounded.

Each sample reads the core's totals (records, results, errors by kind), the consumer lag and
every model's statistics (:mod:`streamserve.api.activity`): the rates and latency quantiles since
the previous sample, and the swaps and rejections since then. Scoring does nothing for it.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from streamserve.api.activity import KeyActivity, TimelineEvent
from streamserve.serving.core import ServingCore
from streamserve.serving.stats import LATENCY_BUCKETS_S

# A sample takes at most this share of one core: after a sample that took d seconds the next
# waits at least 9 d (a sample reads every model's statistics: ~6 µs a key on a slow core).
MAX_SAMPLE_SHARE = 0.1
STOP_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistorySample:
    """The serving state over the time since the previous sample. Rates are per second; the
    latency quantiles are of the time to score one key's part of a batch (``None``: no batch)."""

    seq: int
    at: float  # epoch seconds
    elapsed_s: float  # since the previous sample
    records_per_s: float
    results_per_s: float
    errors_per_s: float
    errors_per_s_by_kind: Mapping[str, float]
    p50_s: float | None
    p99_s: float | None
    consumer_lag: int | None
    keys: int


@dataclass(frozen=True)
class _Reading:
    """What the previous sample read, to take differences from."""

    monotonic_s: float
    counts: Mapping[str, int]
    keyless_rejections: int


Sequenced = TypeVar("Sequenced", HistorySample, TimelineEvent)


class ServingHistory:
    """The last ``history_s`` of samples taken every ``interval_s``, the latest ``max_events``
    timeline events, and each key's totals (:attr:`activity`).

    :meth:`start` samples on a daemon thread until :meth:`stop`. Without the thread (an app
    served without its lifespan, or without the dashboard), :meth:`refresh` samples on the
    reader's call instead.
    Samples and events share one sequence: :meth:`since` pages both with one cursor, which
    starts from the clock (:func:`first_sequence`) so that it outlasts a restart.
    """

    def __init__(
        self,
        core: ServingCore,
        consumer_lag: Callable[[], int | None] | None = None,
        *,
        interval_s: float = 1.0,
        history_s: float = 600.0,
        max_events: int = 200,
    ) -> None:
        self._core = core
        self._consumer_lag = consumer_lag
        self.interval_s = interval_s
        self.history_s = history_s
        first = first_sequence()
        self._sequence = itertools.count(first)
        self.activity = KeyActivity(lambda: next(self._sequence))
        self._samples: deque[HistorySample] = deque(
            maxlen=max(2, math.ceil(history_s / interval_s))
        )
        self._events: deque[TimelineEvent] = deque(maxlen=max_events)
        self._next_seq = first
        self._previous: _Reading | None = None
        self._sampling = threading.Lock()  # one sample at a time
        self._lock = threading.Lock()  # the published samples and events
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- sampling ------------------------------------------------------------------------------
    def sample(self) -> None:
        """Reads the serving state once: a sample (from the second call on) and the events
        found since the previous call."""
        with self._sampling:
            now_s, at = time.monotonic(), time.time()
            counts = self._core.counts
            keyless = self._core.footprint()["keyless_rejections"]
            lag = self.consumer_lag()
            previous = self._previous
            elapsed_s = 0.0 if previous is None else now_s - previous.monotonic_s
            latency, events = self.activity.advance(self._core.slots(), at, elapsed_s)
            sample = None
            if previous is not None:
                events += self._keyless_events(previous, counts, keyless, at)
                sample = self._sample_of(previous, counts, elapsed_s, latency, lag, at)
            self._previous = _Reading(now_s, counts, keyless)
            with self._lock:
                self._events.extend(events)
                if sample is not None:
                    self._samples.append(sample)
                self._next_seq = next(self._sequence)

    def _sample_of(
        self,
        previous: _Reading,
        counts: Mapping[str, int],
        elapsed_s: float,
        latency: Sequence[int],
        lag: int | None,
        at: float,
    ) -> HistorySample:
        def rate(name: str) -> float:
            grown = counts.get(name, 0) - previous.counts.get(name, 0)
            return max(grown, 0) / elapsed_s if elapsed_s > 0 else 0.0

        by_kind = {
            name.removeprefix("errors."): rate(name)
            for name in counts
            if name.startswith("errors.") and rate(name) > 0
        }
        return HistorySample(
            seq=next(self._sequence),
            at=at,
            elapsed_s=elapsed_s,
            records_per_s=rate("records"),
            results_per_s=rate("results"),
            errors_per_s=rate("errors"),
            errors_per_s_by_kind=by_kind,
            p50_s=latency_quantile_s(latency, 0.5),
            p99_s=latency_quantile_s(latency, 0.99),
            consumer_lag=lag,
            keys=self.activity.key_count,
        )

    def _keyless_events(
        self, previous: _Reading, counts: Mapping[str, int], keyless: int, at: float
    ) -> list[TimelineEvent]:
        """Rejections that no slot records: model messages refused before they named a key,
        and models of keys that never had one (the core keeps those apart, bounded)."""
        events = []
        refused = counts.get("model_messages_rejected", 0) - previous.counts.get(
            "model_messages_rejected", 0
        )
        if refused > 0:
            what = "model messages refused or undecodable"
            events.append(self.activity.keyless_rejections(at, refused, what))
        if keyless > previous.keyless_rejections:
            what = "models rejected for keys that have no model"
            count = keyless - previous.keyless_rejections
            events.append(self.activity.keyless_rejections(at, count, what))
        return events

    def start(self) -> None:
        """Samples every ``interval_s`` on a daemon thread (slower if a sample takes long)."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="dashboard-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None

    def _run(self) -> None:
        wait_s = 0.0
        while not self._stopping.wait(wait_s):
            started = time.perf_counter()
            try:
                self.sample()
            except Exception:  # a defect must not end the history for good
                log.exception("sampling the serving state for the dashboard failed")
            took_s = time.perf_counter() - started
            wait_s = max(self.interval_s, took_s / MAX_SAMPLE_SHARE - took_s)

    def refresh(self) -> None:
        """Samples now unless the thread samples: a reader of an app served without its
        lifespan (or without the dashboard) sees the state as it is."""
        if self._thread is None or not self._thread.is_alive():
            self.sample()

    # --- readers -------------------------------------------------------------------------------
    def consumer_lag(self) -> int | None:
        """Records behind the data partitions' ends now (Kafka), else ``None``."""
        return None if self._consumer_lag is None else self._consumer_lag()

    def since(self, seq: int) -> tuple[list[HistorySample], list[TimelineEvent], int]:
        """The samples and events numbered ``seq`` or later (oldest first), and the cursor
        that asks for what comes after them."""
        with self._lock:
            samples = _tail(self._samples, seq)
            events = _tail(self._events, seq)
            return samples, events, self._next_seq


def first_sequence() -> int:
    """Where a history starts numbering: the wall clock in microseconds. A page that kept the
    cursor of an earlier run of the server (across a restart) then asks for less than anything
    this run numbers and misses none of it (an earlier run would have had to number a million
    samples and events a second to overlap). It stays an exact JSON number (below 2**53) until
    the year 2255."""
    return time.time_ns() // 1000


def _tail(items: deque[Sequenced], seq: int) -> list[Sequenced]:
    """The items numbered ``seq`` or later: the newest, so read from the right end."""
    found: list[Sequenced] = []
    for item in reversed(items):
        if item.seq < seq:
            break
        found.append(item)
    found.reverse()
    return found


def latency_quantile_s(counts: Sequence[int], quantile: float) -> float | None:
    """The ``quantile`` of a latency histogram with :data:`LATENCY_BUCKETS_S` bounds, linearly
    interpolated within its bucket (as Prometheus' ``histogram_quantile``); ``None`` if empty.
    A quantile in the last, unbounded bucket is given as the highest bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = quantile * total
    below = 0
    for index, count in enumerate(counts):
        if count > 0 and below + count >= rank:
            if index >= len(LATENCY_BUCKETS_S):
                break
            lower = LATENCY_BUCKETS_S[index - 1] if index else 0.0
            upper = LATENCY_BUCKETS_S[index]
            return lower + (upper - lower) * (rank - below) / count
        below += count
    return LATENCY_BUCKETS_S[-1]
