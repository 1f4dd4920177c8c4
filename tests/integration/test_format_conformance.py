"""One conformance suite that every model format passes.

A new format is one module in ``streamserve/formats`` plus one :class:`FormatCase` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from format_models import TRAINERS
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.tree import DecisionTreeRegressor

from streamserve.descriptor import ModelType, OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.artifact import InlineArtifact, pack_directory
from streamserve.formats.base import FactoryContext, InputSpec, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry


@dataclass(frozen=True)
class FormatCase:
    model_type: int
    make_model: Callable[[Path, np.ndarray], bytes]  # (wine_dir, wine matrix) -> model bytes
    corrupt: Callable[[bytes], bytes]
    width: int = 11


def _onnx_tree(wine_dir: Path, matrix: np.ndarray) -> bytes:
    tree = DecisionTreeRegressor(max_depth=5, random_state=0).fit(matrix[:, :11], matrix[:, 11])
    onnx_model = convert_sklearn(tree, initial_types=[("input", FloatTensorType([None, 11]))])
    return onnx_model.SerializeToString()


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 3]


CASES = {
    "onnx": FormatCase(ModelType.ONNX, _onnx_tree, lambda data: data[: len(data) // 2]),
    "pmml": FormatCase(
        ModelType.PMML,
        lambda d, m: (d / "winequalityMultilayerPerceptron.pmml").read_bytes(),
        lambda data: data.replace(b"<DataDictionary", b"<DataDictionaryBroken", 1),
    ),
    "tensorflow": FormatCase(
        ModelType.TENSORFLOW,
        lambda d, m: (d / "optimized_WineQuality.pb").read_bytes(),
        lambda data: b"\x0a\xff\xff" + data[3:60],
    ),
    "tensorflowsaved": FormatCase(
        ModelType.TENSORFLOWSAVED,
        lambda d, m: pack_directory(d / "saved" / "1"),
        lambda data: data[:200],
    ),
    **{
        name: FormatCase(model_type, lambda d, m, name=name: TRAINERS[name](m).data, _truncate)
        for name, model_type in [
            ("torch-export", ModelType.PYTORCH),
            ("torch-script", ModelType.PYTORCH),
            ("sklearn-forest", ModelType.SKLEARN),
            ("xgboost-regressor-json", ModelType.XGBOOST),
            ("xgboost-softprob-ubj", ModelType.XGBOOST),
            ("lightgbm-regressor", ModelType.LIGHTGBM),
        ]
    },
}


@pytest.fixture(scope="module")
def registry() -> FactoryRegistry:
    return FactoryRegistry(FactoryContext())


@pytest.fixture(params=list(CASES), scope="module")
def case(request: pytest.FixtureRequest) -> FormatCase:
    return CASES[request.param]


@pytest.fixture(scope="module")
def model_bytes(case: FormatCase, wine_dir: Path, wine_matrix: np.ndarray) -> bytes:
    return case.make_model(wine_dir, wine_matrix)


@pytest.fixture(scope="module")
def model(case: FormatCase, model_bytes: bytes, registry: FactoryRegistry) -> Iterator[Model]:
    loaded = _load(registry, case, model_bytes)
    yield loaded
    loaded.close()


def _load(registry: FactoryRegistry, case: FormatCase, data: bytes, name: str = "m") -> Model:
    request = LoadRequest(name, InlineArtifact(data), {}, OutputRule.AUTO, registry.context)
    return registry.factory_for(case.model_type).load(request)


def _features(matrix: np.ndarray, model: Model, rows: int) -> np.ndarray:
    return (
        matrix[:rows, : model.inputs.width]
        if model.inputs.names is None
        else np.zeros((rows, model.inputs.width)) + matrix[:rows, :1]
    )


def test_loads_into_a_model_that_describes_its_inputs(model: Model, case: FormatCase) -> None:
    assert isinstance(model, Model)
    assert isinstance(model.inputs, InputSpec)
    assert model.inputs.width == case.width or model.inputs.names is not None
    assert model.inputs.width > 0


@pytest.mark.parametrize("rows", [1, 7, 256])
def test_scores_one_output_per_row(model: Model, wine_matrix: np.ndarray, rows: int) -> None:
    output = model.score_batch(_features(wine_matrix, model, rows))
    assert len(output) == rows
    assert np.asarray(output).ndim == 1


def test_is_deterministic_and_batching_does_not_change_results(
    model: Model, wine_matrix: np.ndarray
) -> None:
    features = _features(wine_matrix, model, 64)
    batched = model.score_batch(features)
    assert np.array_equal(batched, model.score_batch(features))
    one_by_one = np.concatenate([model.score_batch(features[i : i + 1]) for i in range(64)])
    if batched.dtype.kind == "f":
        np.testing.assert_allclose(one_by_one, batched, rtol=1e-6)
    else:
        assert one_by_one.tolist() == batched.tolist()


def test_rejects_corrupt_content_with_a_reason_naming_the_model(
    case: FormatCase, model_bytes: bytes, registry: FactoryRegistry
) -> None:
    with pytest.raises(ModelLoadError, match="'corrupt-model'"):
        _load(registry, case, case.corrupt(model_bytes), name="corrupt-model")


def test_two_instances_score_alike_and_close_independently(
    case: FormatCase, model_bytes: bytes, registry: FactoryRegistry, wine_matrix: np.ndarray
) -> None:
    first, second = _load(registry, case, model_bytes), _load(registry, case, model_bytes)
    features = _features(wine_matrix, first, 16)
    expected = first.score_batch(features)
    first.close()
    assert np.array_equal(second.score_batch(features), expected)
    second.close()
