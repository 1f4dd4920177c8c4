"""``/metrics`` with many keys: a bounded number of series (totals, aggregates per model type, and
per-key series only for configured keys and the top N by records and by errors), aggregates
that equal the sum of the core's own per-model statistics and never go down, on a real server.

Every key has a cheap model (``FunctionFactory``) registered under two model types, so the
aggregates per model type have two label values.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.stats import LATENCY_BUCKETS_S
from streamserve.settings import ApiSettings, MetricsSettings, ServingSettings, load_settings
from streamserve.testing import FunctionFactory, records_from

KEYS = 5_000
BUSY = [f"k{n:04}" for n in range(100, 125)]  # 30 + i records each: distinct, above the rest
FAILING = [f"k{n:04}" for n in range(200, 230)]  # i + 1 error records each
CONFIGURED = "k4321"
SERIES_PER_KEY = 22  # results, errors, load, swap, rejections, quarantines; 16 of the histogram


def _double(features: FloatMatrix) -> np.ndarray:
    return features[:, 0] * 2


def _core() -> ServingCore:
    registry = FactoryRegistry(FactoryContext(), discover_plugins=False)
    for model_type in (ModelType.ONNX, ModelType.PMML):
        registry.register(model_type, FunctionFactory(_double, width=2))
    return ServingCore(ServingSettings(), registry)


def _publish(core: ServingCore, key: str, name: str, model_type: int = ModelType.ONNX) -> None:
    core.submit_model(ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"x"))


def _stream(core: ServingCore, keys: list[str], errors: list[str] | None = None) -> None:
    """One record per entry of ``keys``; one record per entry of ``errors`` that lacks the
    model's features (a ``missing_features`` error counted on the key's model)."""
    payloads = [orjson.dumps({"dataType": key, "features": [1.0, 2.0]}) for key in keys]
    payloads += [orjson.dumps({"dataType": key, "other": 1.0}) for key in errors or []]
    for start in range(0, len(payloads), 2048):
        core.score(JsonCodec().decode(records_from(payloads[start : start + 2048])))


@contextmanager
def _serving(core: ServingCore, metrics: MetricsSettings) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, metrics=metrics), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120) as http:
            yield http
    finally:
        server.stop()


def _scrape(http: httpx.Client) -> list[Sample]:
    reply = http.get("/metrics")
    assert reply.status_code == 200
    return [
        sample for family in text_string_to_metric_families(reply.text) for sample in family.samples
    ]


def _values(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in samples
        if sample.name == name
    }


def _keys_with_series(samples: list[Sample]) -> set[str]:
    return {sample.labels["key"] for sample in samples if "key" in sample.labels}


@pytest.fixture(scope="module")
def many_keys() -> Iterator[ServingCore]:
    core = _core()
    keys = [f"k{n:04}" for n in range(KEYS)]
    for n, key in enumerate(keys):
        _publish(core, key, f"m-{key}", ModelType.ONNX if n % 2 == 0 else ModelType.PMML)
    assert core.wait_for_models(300)
    busy = [key for i, key in enumerate(BUSY) for _ in range(30 + i)]
    failing = [key for i, key in enumerate(FAILING) for _ in range(i + 1)]
    _stream(core, keys + busy, failing)
    yield core
    core.close()


def test_a_scrape_of_5000_keys_carries_per_key_series_for_the_chosen_keys_only(
    many_keys: ServingCore,
) -> None:
    settings = MetricsSettings(keys=[CONFIGURED, "no-such-key"], top_keys=20, top_error_keys=5)
    with _serving(many_keys, settings) as http:
        samples = _scrape(http)
    top_by_records = set(BUSY[-20:])  # the 20 with the most records
    top_by_errors = set(FAILING[-5:])  # the 5 with the most error records
    expected = top_by_records | top_by_errors | {CONFIGURED}
    assert _keys_with_series(samples) == expected, (
        "per-key series should be those of the configured key and the top keys by records and "
        "by errors, and no other"
    )
    chosen = len(expected)
    assert _values(samples, "streamserve_metrics_keys") == {(): chosen}
    assert _values(samples, "streamserve_keys") == {(): KEYS}
    per_key = [sample for sample in samples if "key" in sample.labels]
    assert len(per_key) == chosen * SERIES_PER_KEY
    assert len(samples) < 1_000, (
        f"{len(samples)} series for {KEYS} keys: a scrape must stay bounded "
        f"(every key's series would be {KEYS * SERIES_PER_KEY})"
    )


def test_aggregates_per_model_type_equal_the_sum_of_the_cores_own_statistics(
    many_keys: ServingCore,
) -> None:
    with _serving(many_keys, MetricsSettings()) as http:
        samples = _scrape(http)
    expected: dict[str, Counter[str]] = defaultdict(Counter)
    latency: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(14, dtype=np.int64))
    durations: dict[str, float] = defaultdict(float)
    for slot in many_keys.slots():
        for _, served in slot.models():
            stats = served.stats.snapshot()
            expected[stats.model_type].update(
                results=stats.invocations, errors=stats.errors, current=1
            )
            latency[stats.model_type] += stats.batch_latency_counts
            durations[stats.model_type] += stats.total_duration_s
    assert set(expected) == {"ONNX", "PMML"}
    for model_type, totals in expected.items():
        labels = (("model_type", model_type),)
        assert _values(samples, "streamserve_format_results_total")[labels] == totals["results"]
        assert _values(samples, "streamserve_format_errors_total")[labels] == totals["errors"]
        assert _values(samples, "streamserve_format_swaps_total")[labels] == KEYS // 2
        current = (("model_type", model_type), ("role", "current"))
        assert _values(samples, "streamserve_models")[current] == KEYS // 2
        buckets = _values(samples, "streamserve_format_scoring_batch_seconds_bucket")
        cumulative = list(accumulate(latency[model_type].tolist()))
        assert [
            buckets[(("le", bound), ("model_type", model_type))]
            for bound in [*(repr(bound) for bound in LATENCY_BUCKETS_S), "+Inf"]
        ] == cumulative
        histogram_sum = _values(samples, "streamserve_format_scoring_batch_seconds_sum")
        assert histogram_sum[labels] == pytest.approx(durations[model_type])
    results_by_type = _values(samples, "streamserve_format_results_total")
    errors_by_type = _values(samples, "streamserve_format_errors_total")
    assert sum(results_by_type.values()) == _values(samples, "streamserve_results_total")[()]
    assert sum(errors_by_type.values()) == sum(range(1, len(FAILING) + 1))


def test_the_aggregates_never_go_down_when_models_and_keys_go() -> None:
    """A model's statistics leave its slot when it is replaced twice, or its key unloaded: the
    per-type counters keep them (a counter that went down would read as a reset)."""
    with _core() as core, _serving(core, MetricsSettings()) as http:
        _publish(core, "a", "v1")
        _publish(core, "b", "only")
        assert core.wait_for_models(60)
        _stream(core, ["a"] * 5 + ["b"] * 4)
        _scrape(http)  # the scrape that sees v1
        for name, records in (("v2", 3), ("v3", 2)):
            _publish(core, "a", name)
            assert core.wait_for_models(60)
            _stream(core, ["a"] * records)
        slot = core.find_slot("a")
        assert slot is not None
        assert {served.identity.name for _, served in slot.models()} == {"v2", "v3"}
        onnx = (("model_type", "ONNX"),)
        samples = _scrape(http)
        assert _values(samples, "streamserve_format_results_total")[onnx] == 5 + 4 + 3 + 2
        assert _values(samples, "streamserve_format_swaps_total")[onnx] == 4
        assert core.unload("b")
        samples = _scrape(http)
        assert _values(samples, "streamserve_format_results_total")[onnx] == 5 + 4 + 3 + 2
        assert _values(samples, "streamserve_format_scoring_batch_seconds_count")[onnx] == 4
        assert _values(samples, "streamserve_keys") == {(): 1}
        assert _values(samples, "streamserve_models")[(*onnx, ("role", "current"))] == 1


def test_every_key_is_an_explicit_choice_and_none_is_one_too() -> None:
    keys = [f"key-{n}" for n in range(30)]
    with _core() as core:
        for key in keys:
            _publish(core, key, f"m-{key}")
        assert core.wait_for_models(60)
        _stream(core, keys)
        with _serving(core, MetricsSettings(top_keys="all", top_error_keys=0)) as http:
            every = _scrape(http)
        with _serving(core, MetricsSettings(top_keys=0, top_error_keys=0)) as http:
            none = _scrape(http)
    assert _keys_with_series(every) == set(keys)
    assert _values(every, "streamserve_metrics_keys") == {(): len(keys)}
    assert _keys_with_series(none) == set()
    assert _values(none, "streamserve_format_results_total") == {(("model_type", "ONNX"),): 30}


def test_the_metrics_settings_read_from_a_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "streamserve.toml"
    toml.write_text('[api.metrics]\nkeys = ["wine"]\ntop_keys = "all"\n')
    assert load_settings(toml).api.metrics == MetricsSettings(keys=["wine"], top_keys="all")
    monkeypatch.setenv("STREAMSERVE_API__METRICS__TOP_KEYS", "5")
    monkeypatch.setenv("STREAMSERVE_API__METRICS__TOP_ERROR_KEYS", "0")
    assert load_settings().api.metrics == MetricsSettings(top_keys=5, top_error_keys=0)
    assert load_settings().api.metrics.top_keys == 5
    assert MetricsSettings().model_dump() == {"keys": [], "top_keys": 20, "top_error_keys": 20}
