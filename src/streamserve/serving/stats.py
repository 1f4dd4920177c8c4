"""FLIP-23's ModelServingInfo, extended with error counts and a latency histogram.

Durations are per record, amortized over the micro-batch the record was scored in: a batch of
1,000 records scored in 2 ms counts 1,000 invocations of 2 µs each.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

# Upper bounds (seconds) of the per-batch scoring latency histogram; the last bucket is +Inf.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


@dataclass(frozen=True)
class ServingInfoSnapshot:
    """A consistent copy of one model's statistics, safe to hand to other threads."""

    name: str
    description: str
    version: str
    model_type: str
    since: float
    invocations: int
    total_duration_s: float
    min_duration_s: float
    max_duration_s: float
    batches: int
    errors: int
    batch_latency_counts: tuple[int, ...]

    @property
    def average_duration_s(self) -> float:
        return self.total_duration_s / self.invocations if self.invocations else 0.0


class ModelServingInfo:
    """Statistics of one served model. Written by whichever threads score with it (the runtime's,
    the HTTP API's), read by anyone; every access holds its lock."""

    def __init__(self, name: str, description: str, version: str, model_type: str) -> None:
        self._lock = threading.Lock()
        self._name = name
        self._description = description
        self._version = version
        self._model_type = model_type
        self._since = 0.0
        self._invocations = 0
        self._total_s = 0.0
        self._min_s = 0.0
        self._max_s = 0.0
        self._batches = 0
        self._errors = 0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)

    def mark_current(self, at: float | None = None) -> None:
        """Records the wall-clock time (epoch seconds) the model started serving."""
        with self._lock:
            self._since = time.time() if at is None else at

    def record_batch(self, records: int, duration_s: float) -> None:
        if records <= 0:
            return
        per_record_s = duration_s / records
        with self._lock:
            first = self._invocations == 0
            self._invocations += records
            self._total_s += duration_s
            self._min_s = per_record_s if first else min(self._min_s, per_record_s)
            self._max_s = max(self._max_s, per_record_s)
            self._batches += 1
            self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, duration_s)] += 1

    def record_errors(self, records: int) -> None:
        with self._lock:
            self._errors += records

    def snapshot(self) -> ServingInfoSnapshot:
        with self._lock:
            return ServingInfoSnapshot(
                name=self._name,
                description=self._description,
                version=self._version,
                model_type=self._model_type,
                since=self._since,
                invocations=self._invocations,
                total_duration_s=self._total_s,
                min_duration_s=self._min_s,
                max_duration_s=self._max_s,
                batches=self._batches,
                errors=self._errors,
                batch_latency_counts=tuple(self._latency_counts),
            )
