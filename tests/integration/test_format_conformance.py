"""Every built-in model format passes the conformance suite, :func:`check_factory`.

The suite lives in the package (``streamserve.testing``) so that outside format packages run the
same checks. A new format is one module in ``streamserve/formats`` plus one :class:`FormatCase`
here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from format_models import TRAINERS
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.tree import DecisionTreeRegressor

from streamserve.descriptor import ModelType
from streamserve.formats.artifact import pack_directory
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.testing import CONFORMANCE_CHECKS, check_factory


@dataclass(frozen=True)
class FormatCase:
    model_type: int
    make_model: Callable[[Path, np.ndarray], bytes]  # (wine_dir, wine matrix) -> model bytes
    corrupt: Callable[[bytes], bytes]
    width: int = 11  # the model's inputs: the first columns of the wine rows


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


@pytest.mark.parametrize("name", list(CASES))
def test_the_format_passes_the_conformance_suite(
    name: str, registry: FactoryRegistry, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    case = CASES[name]
    data = case.make_model(wine_dir, wine_matrix)
    factory = registry.factory_for(case.model_type)

    report = check_factory(factory, data, case.corrupt(data), wine_matrix[:256, : case.width])

    assert report.format_name == factory.format_name
    assert report.passed == CONFORMANCE_CHECKS
