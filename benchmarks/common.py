"""What every scenario shares: the wine data, timing, percentiles and the report's rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.demo.wine import wine_data_dir


@dataclass
class Row:
    """One line of the report: a measurement, its baseline from the same run, and the target."""

    scenario: str
    metric: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    met: bool | None = None
    details: dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: the full run, or the CI smoke run that checks counts only."""

    embedded_records: int
    kafka_records: int
    baseline_records: int
    latency_seconds: float
    swap_rate: int
    model_counts: tuple[int, ...]
    records_per_key: int
    # scenario 5 under the 2 GiB RSS budget: keys, live-model budget, working set of keys
    budget_keys: int = 0
    budget_live: int = 0
    working_set: int = 0


FULL = Sizes(400_000, 1_000_000, 20_000, 10.0, 20_000, (1_000, 10_000), 10, 100_000, 15_000, 10_000)
SMOKE = Sizes(5_000, 5_000, 300, 2.0, 2_000, (50,), 4, 300, 60, 40)


@dataclass(frozen=True)
class WineData:
    directory: Path
    rows: np.ndarray  # 1,599 x 11 features

    def cycled(self, count: int) -> np.ndarray:
        return self.rows[np.arange(count) % len(self.rows)]

    def json_records(self, count: int, key: str = "wine") -> list[bytes]:
        """JSON records with named fields, as a typical publisher writes them."""
        return [
            orjson.dumps({"dataType": key, **dict(zip(WINE_FEATURES, row.tolist(), strict=True))})
            for row in self.cycled(count)
        ]


@contextmanager
def wine_data() -> Iterator[WineData]:
    with wine_data_dir() as directory:
        matrix = np.loadtxt(directory / "winequality_red.csv", delimiter=";")
        yield WineData(directory, matrix[:, :11])


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def percentiles(values_ms: Sequence[float] | np.ndarray) -> tuple[float, float]:
    if len(values_ms) == 0:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(values_ms, dtype=float), [50, 99])
    return float(p50), float(p99)
