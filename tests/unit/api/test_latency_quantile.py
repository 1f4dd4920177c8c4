"""The dashboard's p50/p99 from a latency histogram: interpolated within its bucket, as
Prometheus' histogram_quantile does."""

from __future__ import annotations

import pytest

from streamserve.api.history import latency_quantile_s
from streamserve.serving.stats import LATENCY_BUCKETS_S

BINS = len(LATENCY_BUCKETS_S) + 1


def _counts(**by_bin: int) -> list[int]:
    counts = [0] * BINS
    for name, count in by_bin.items():
        counts[int(name.removeprefix("b"))] = count
    return counts


def test_an_empty_histogram_has_no_quantile() -> None:
    assert latency_quantile_s([0] * BINS, 0.5) is None


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    # 10 batches up to 100 µs, 10 from 100 to 250 µs: the median is the first bucket's end
    counts = _counts(b0=10, b1=10)
    assert latency_quantile_s(counts, 0.5) == pytest.approx(0.0001)
    assert latency_quantile_s(counts, 0.75) == pytest.approx(0.0001 + 0.5 * 0.00015)
    assert latency_quantile_s(counts, 0.99) == pytest.approx(0.0001 + 0.98 * 0.00015)


def test_a_quantile_beyond_the_last_bound_is_the_last_bound() -> None:
    counts = _counts(b3=1, **{f"b{BINS - 1}": 99})
    assert latency_quantile_s(counts, 0.99) == LATENCY_BUCKETS_S[-1]
    assert latency_quantile_s(counts, 0.005) == pytest.approx(0.0005 + 0.5 * 0.0005)
