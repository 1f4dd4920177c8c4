"""Scenario 6: ``/metrics`` with many keys: bytes, series and seconds of one scrape over HTTP
with 2,000, 10,000 and 100,000 keys, by default (totals, aggregates per model type, per-key
series for the top 20 keys by records and by errors) and, where it stays affordable, with every
key's series (``api.metrics.top_keys = "all"``: what every scrape carried before). The baseline
is every key's series at 2,000 keys, measured in the same run.

The scrape reads statistics, not models: each key gets a cheap model from the core's own test
factory (:class:`~streamserve.testing.FunctionFactory`, under two model types) and scores a
record, one key in a hundred also an error record. Each size runs in its own process, with the
dashboard off (its history sampler would add its own reads of every key to the scrapes'). Beside
the wall time of a scrape over loopback HTTP, the CPU time the process spent on it: on a shared
machine the wall time also counts other processes' turns.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import orjson

from benchmarks.common import SMOKE, Row, Sizes, WineData

if TYPE_CHECKING:
    from streamserve.serving.core import ServingCore
    from streamserve.settings import MetricsSettings

SCENARIO = "6 /metrics"
KEY_COUNTS = (2_000, 10_000, 100_000)
SMOKE_KEY_COUNTS = (200,)
EVERY_KEY_UP_TO = 10_000  # beyond, every key's series (~2 KB a key) is no scrape to run
BASELINE_KEYS = 2_000
SCRAPES = 5
MAX_BYTES = 1_000_000
MAX_SECONDS = 1.0


def run(wine: WineData, mlp_onnx: bytes, sizes: Sizes) -> list[Row]:
    counts = SMOKE_KEY_COUNTS if sizes == SMOKE else KEY_COUNTS
    measured = {keys: _in_child(keys) for keys in counts}
    smallest = measured[min(counts)]["all"]
    baseline = measured[BASELINE_KEYS]["all"] if BASELINE_KEYS in measured else smallest
    assert baseline is not None
    baseline_label = f"every key's series, {min(BASELINE_KEYS, min(counts)):,} keys"
    rows: list[Row] = []
    for keys, scrapes in measured.items():
        for mode in ("default", "all"):
            scrape = scrapes[mode]
            if scrape is None:
                continue
            rows += _rows(keys, mode, scrape, baseline, baseline_label)
    return rows


def _rows(
    keys: int, mode: str, scrape: dict[str, float], baseline: dict[str, float], label: str
) -> list[Row]:
    what = "default series" if mode == "default" else "every key's series"
    bounded = mode == "default"
    details: dict[str, object] = {
        "series": scrape["series"],
        "keys_with_series": scrape["keys_with_series"],
        "first_scrape_s": scrape["first_s"],
        "slowest_s": scrape["max_s"],
        "cpu_s": scrape["cpu_s"],
        "collect_s": scrape["collect_s"],
    }
    cpu = Row(
        SCENARIO,
        f"{keys:,} keys, {what}: CPU seconds a scrape (median of {SCRAPES})",
        scrape["cpu_s"],
        "s",
        label,
        baseline["cpu_s"],
        "< 1 s" if bounded else "",
        scrape["cpu_s"] < MAX_SECONDS if bounded else None,
        details,
    )
    return [
        Row(
            SCENARIO,
            f"{keys:,} keys, {what}: bytes a scrape ({scrape['series']:,.0f} series)",
            scrape["bytes"] / 1e6,
            "MB",
            label,
            baseline["bytes"] / 1e6,
            "< 1 MB" if bounded else "",
            scrape["bytes"] < MAX_BYTES if bounded else None,
            details,
        ),
        Row(
            SCENARIO,
            f"{keys:,} keys, {what}: seconds a scrape (median of {SCRAPES})",
            scrape["median_s"],
            "s",
            label,
            baseline["median_s"],
            "< 1 s" if bounded else "",
            scrape["median_s"] < MAX_SECONDS if bounded else None,
            details,
        ),
        cpu,
    ]


def _in_child(keys: int) -> dict[str, dict[str, float] | None]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.metrics_scrape", str(keys)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"metrics child failed: {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(keys: int) -> dict[str, dict[str, float] | None]:
    """Builds a core of ``keys`` keys with statistics, then scrapes it over HTTP."""
    from streamserve.settings import MetricsSettings

    core = _core_with_statistics(keys)
    try:
        every = MetricsSettings(top_keys="all") if keys <= EVERY_KEY_UP_TO else None
        return {
            "default": _scrapes(core, MetricsSettings()),
            "all": None if every is None else _scrapes(core, every),
        }
    finally:
        core.close()


def _core_with_statistics(keys: int) -> ServingCore:
    from streamserve.codecs.json import JsonCodec
    from streamserve.descriptor import ModelDescriptor, ModelType
    from streamserve.formats.base import FactoryContext
    from streamserve.formats.registry import FactoryRegistry
    from streamserve.serving.core import ServingCore
    from streamserve.settings import ServingSettings
    from streamserve.testing import FunctionFactory, records_from

    registry = FactoryRegistry(FactoryContext(), discover_plugins=False)
    model_types = (ModelType.ONNX, ModelType.PMML)
    for model_type in model_types:
        registry.register(model_type, FunctionFactory(_first_column, width=2))
    core = ServingCore(ServingSettings(), registry)
    for n in range(keys):
        core.submit_model(
            ModelDescriptor(
                name=f"m{n}", data_type=f"k{n}", model_type=model_types[n % 2], data=b"x"
            )
        )
    if not core.wait_for_models(3600):
        raise RuntimeError("models did not load")
    rng = np.random.default_rng(6)
    payloads = [
        orjson.dumps({"dataType": f"k{n}", "features": [float(v), 1.0]})
        for n, v in zip(range(keys), rng.integers(0, 100, keys).tolist(), strict=True)
    ]
    payloads += [orjson.dumps({"dataType": f"k{n}", "other": 1.0}) for n in range(0, keys, 100)]
    codec = JsonCodec()
    for start in range(0, len(payloads), 4096):
        core.score(codec.decode(records_from(payloads[start : start + 4096])))
    return core


def _first_column(features: np.ndarray) -> np.ndarray:
    return features[:, 0]


def _scrapes(core: ServingCore, settings: MetricsSettings) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from streamserve.api.metrics import metrics_registry
    from streamserve.api.server import ApiServer
    from streamserve.settings import ApiSettings

    api = ApiSettings(port=0, metrics=settings, dashboard=False)
    server = ApiServer(core, api, lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=600) as http:
            seconds, cpu_seconds, body = [], [], b""
            for _ in range(SCRAPES):
                started, cpu_started = time.perf_counter(), time.process_time()
                body = http.get("/metrics").raise_for_status().content
                seconds.append(time.perf_counter() - started)
                cpu_seconds.append(time.process_time() - cpu_started)
    finally:
        server.stop()
    samples = [
        sample
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    ]
    registry = metrics_registry(core, settings=settings)
    started = time.perf_counter()
    list(registry.collect())  # the collection alone, without the text and HTTP
    return {
        "bytes": len(body),
        "series": len(samples),
        "keys_with_series": len({s.labels["key"] for s in samples if "key" in s.labels}),
        "first_s": seconds[0],
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "cpu_s": statistics.median(cpu_seconds),
        "collect_s": time.perf_counter() - started,
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]))))
