"""An outside format package, installed on the path, runs streamserve's conformance suite in its
own tests: the registry finds it through the entry-point group, :func:`check_factory` passes it
and fails its broken variants naming the check, and a record is served through it."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import orjson
import pytest

from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import (
    CONFORMANCE_CHECKS,
    ConformanceError,
    check_factory,
    records_from,
    serve_records,
)

LINEAR_TYPE = 1000
PACKAGE = "streamserve_linear_format"
WEIGHTS = orjson.dumps({"weights": [0.5, -1.0, 2.0], "bias": 0.25})

LINEAR_FORMAT = '''
"""A linear model format: the model bytes are a JSON object {"weights": [...], "bias": b}."""

from __future__ import annotations

import json

import numpy as np

from streamserve.errors import ModelLoadError
from streamserve.formats.base import FactoryContext, InputSpec, LoadRequest


class LinearModel:
    def __init__(self, weights: list[float], bias: float) -> None:
        self._weights = np.asarray(weights, dtype=np.float64)
        self._bias = bias
        self.inputs = InputSpec(len(weights))

    def score_batch(self, features: np.ndarray) -> np.ndarray:
        return features @ self._weights + self._bias

    def close(self) -> None:
        pass


def parse(data: bytes, name: str) -> tuple[list[float], float]:
    try:
        document = json.loads(data)
        weights = [float(weight) for weight in document["weights"]]
        bias = float(document.get("bias", 0.0))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ModelLoadError(f"linear model {name!r}: not a JSON object of weights: {err}") from err
    if not weights:
        raise ModelLoadError(f"linear model {name!r} has no weights")
    return weights, bias


class LinearFactory:
    format_name = "linear"

    def __init__(self, context: FactoryContext) -> None:
        self.context = context

    def load(self, request: LoadRequest) -> LinearModel:
        return LinearModel(*parse(request.artifact.read_bytes(), request.name))


class BatchCenteredModel(LinearModel):
    """Broken: centers features on its batch's mean, so a row's score depends on its batch."""

    def score_batch(self, features: np.ndarray) -> np.ndarray:
        return super().score_batch(features - features.mean(axis=0))


class BatchCenteredFactory(LinearFactory):
    format_name = "linear-batch-centered"

    def load(self, request: LoadRequest) -> LinearModel:
        return BatchCenteredModel(*parse(request.artifact.read_bytes(), request.name))


class LenientFactory(LinearFactory):
    """Broken: bytes it cannot parse become a model of zeros instead of a load error."""

    format_name = "linear-lenient"

    def load(self, request: LoadRequest) -> LinearModel:
        try:
            return super().load(request)
        except ModelLoadError:
            return LinearModel([0.0, 0.0, 0.0], 0.0)
'''


def install_linear_format(site: Path) -> None:
    """An installed distribution: the package plus a dist-info registering its factory."""
    package = site / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(LINEAR_FORMAT))
    info = site / f"{PACKAGE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: streamserve-linear-format\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        f"[streamserve.model_factories]\n{LINEAR_TYPE} = {PACKAGE}:LinearFactory\n"
    )


@pytest.fixture
def linear_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    install_linear_format(tmp_path / "site")
    monkeypatch.syspath_prepend(tmp_path / "site")
    yield importlib.import_module(PACKAGE)
    sys.modules.pop(PACKAGE, None)


def sample_rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, 3))


def test_the_registry_finds_the_format_through_the_entry_point_group(
    linear_format: ModuleType,
) -> None:
    registry = FactoryRegistry(FactoryContext())

    assert LINEAR_TYPE in registry.model_types
    assert isinstance(registry.factory_for(LINEAR_TYPE), linear_format.LinearFactory)


def test_the_format_passes_the_conformance_suite(linear_format: ModuleType) -> None:
    registered = FactoryRegistry(FactoryContext()).factory_for(LINEAR_TYPE)

    by_instance = check_factory(registered, WEIGHTS, b'{"weights": "heavy"}', sample_rows())
    by_class = check_factory(
        linear_format.LinearFactory, WEIGHTS, WEIGHTS[:7], sample_rows(), context=FactoryContext()
    )

    assert by_instance.passed == by_class.passed == CONFORMANCE_CHECKS
    assert by_instance.format_name == "linear"


@pytest.mark.parametrize(
    ("variant", "failed_check", "reason"),
    [
        (
            "BatchCenteredFactory",
            "batch_scores_equal_single_row_scores",
            "rows score differently in a batch than alone",
        ),
        ("LenientFactory", "rejects_corrupt_bytes", "loaded into a model instead of raising"),
    ],
)
def test_a_broken_variant_fails_naming_the_check(
    linear_format: ModuleType, variant: str, failed_check: str, reason: str
) -> None:
    with pytest.raises(ConformanceError) as failure:
        check_factory(getattr(linear_format, variant), WEIGHTS, WEIGHTS[:7], sample_rows())

    assert failure.value.check == failed_check
    assert failure.value.format_name == getattr(linear_format, variant).format_name
    assert reason in failure.value.reason
    assert repr(failed_check) in str(failure.value)


def test_a_record_is_served_through_the_format(linear_format: ModuleType) -> None:
    core = ServingCore(ServingSettings())
    model = ModelDescriptor(
        name="linear-model", data_type="points", model_type=LINEAR_TYPE, data=WEIGHTS
    )
    record = orjson.dumps({"dataType": "points", "features": [2.0, 1.0, 3.0]})
    try:
        run = serve_records(core, JsonCodec(), records_from([record]), models=[model])
    finally:
        core.close()

    assert run.errors == []
    assert [(r["model"], r["value"]) for r in run.results] == [("linear-model", 6.25)]
