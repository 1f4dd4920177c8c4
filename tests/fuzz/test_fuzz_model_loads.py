"""Fuzz target: every model factory's ``load`` on mutated real models.

Real models (the original wine models, and models trained here with the real libraries) are
truncated, bit-flipped, and get bytes inserted, deleted, duplicated or swapped. Invariant: the
load returns a Model with a positive input width whose ``score_batch`` on a probe batch gives
one output per row or raises an Exception (which validation turns into a rejection), or it
raises RejectedInput with a reason; no other exception, no crash of the process, no hang.

Loads cost from 0.3 ms (ONNX) to a second (LightGBM checks a model in a child process), so
each model runs its own number of cases (``CASES``; ``STREAMSERVE_FUZZ_SCALE`` multiplies it).
Run with ``--hypothesis-show-statistics`` to see how many mutants loaded, scored or were
rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from format_models import TRAINERS
from hypothesis import event, given
from mutations import fuzz_settings, mutated

from builders import onnx_linear
from streamserve.descriptor import ModelType, OutputRule
from streamserve.errors import ModelLoadError, RejectedInput
from streamserve.formats.artifact import InlineArtifact
from streamserve.formats.base import FactoryContext, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry

ModelSource = Callable[[Path, np.ndarray], tuple[int, bytes, dict[str, str]]]


def _wine_file(name: str, model_type: int) -> ModelSource:
    return lambda wine_dir, matrix: (model_type, (wine_dir / name).read_bytes(), {})


def _trained(name: str) -> ModelSource:
    def train(wine_dir: Path, matrix: np.ndarray) -> tuple[int, bytes, dict[str, str]]:
        model = TRAINERS[name](matrix)
        return model.model_type, model.data, model.options

    return train


# (model source, cases): torch first, before PMML starts the JVM in this process.
MODELS: dict[str, tuple[ModelSource, int]] = {
    "onnx-linear": (
        lambda d, m: (ModelType.ONNX, onnx_linear(np.arange(11.0), 1.0), {}),
        1_000,
    ),
    "torch-export": (_trained("torch-export"), 150),
    "torch-script": (_trained("torch-script"), 300),
    "tensorflow-frozen-graph": (_wine_file("optimized_WineQuality.pb", ModelType.TENSORFLOW), 300),
    "sklearn-forest": (_trained("sklearn-forest"), 150),
    "xgboost-softprob-ubj": (_trained("xgboost-softprob-ubj"), 12),
    "xgboost-regressor-json": (_trained("xgboost-regressor-json"), 12),
    "lightgbm-regressor": (_trained("lightgbm-regressor"), 12),
    "pmml-tree": (_wine_file("winequalityDesisionTreeRegression.pmml", ModelType.PMML), 100),
    "pmml-linear": (_wine_file("winequalityLinearRegression.pmml", ModelType.PMML), 100),
}


@pytest.fixture(scope="module")
def registry() -> FactoryRegistry:
    return FactoryRegistry(FactoryContext())


def probe_batch(matrix: np.ndarray, width: int) -> np.ndarray:
    """Zeros, then real wine rows, as wide as the model (features repeated if it is wider)."""
    rows = np.resize(matrix[:6, :11], (6, width)) if width <= 11 else np.tile(matrix[:6], 2)
    return np.vstack([np.zeros((2, width)), rows[:, :width]])


def load_scores_or_rejects(
    registry: FactoryRegistry,
    model_type: int,
    data: bytes,
    options: dict[str, str],
    matrix: np.ndarray,
) -> str:
    """The outcome of one load; fails the test on anything the invariant does not allow."""
    request = LoadRequest(
        "fuzzed", InlineArtifact(data), options, OutputRule.AUTO, registry.context
    )
    factory = registry.factory_for(model_type)
    try:
        model = factory.load(request)
    except RejectedInput as err:
        reason = str(err)
    else:
        return _scores(model, matrix)
    assert reason.strip(), "a rejected model must say why"
    return "rejected"


def _scores(model: Model, matrix: np.ndarray) -> str:
    assert isinstance(model, Model)
    assert model.inputs.width > 0
    probe = probe_batch(matrix, model.inputs.width)
    try:
        output = np.asarray(model.score_batch(probe))
    except Exception:  # noqa: BLE001 - validation rejects a model whose probe raises anything
        outcome = "loaded, probe raised"
    else:
        assert len(output) == len(probe)
        outcome = "loaded and scored"
    model.close()
    return outcome


@pytest.fixture(scope="module", params=list(MODELS))
def original(
    request: pytest.FixtureRequest, wine_dir: Path, wine_matrix: np.ndarray
) -> tuple[str, int, bytes, dict[str, str]]:
    source, _ = MODELS[request.param]
    return (request.param, *source(wine_dir, wine_matrix))


@pytest.mark.timeout(300)
def test_mutated_models_load_and_score_or_are_rejected(
    original: tuple[str, int, bytes, dict[str, str]],
    registry: FactoryRegistry,
    wine_matrix: np.ndarray,
) -> None:
    name, model_type, data, options = original
    assert load_scores_or_rejects(registry, model_type, data, options, wine_matrix) == (
        "loaded and scored"
    ), "the unmutated model must load and score"

    @fuzz_settings(MODELS[name][1])
    @given(mutated(data))
    def fuzz(mutant: bytes) -> None:
        event(load_scores_or_rejects(registry, model_type, mutant, options, wine_matrix))

    fuzz()


@pytest.mark.parametrize("parent", [b"-805306365", b"4000000000", b"99999"])
def test_xgboost_tree_pointing_out_of_range_is_rejected_not_a_crash(
    registry: FactoryRegistry, wine_matrix: np.ndarray, parent: bytes
) -> None:
    """Regression (found by the fuzzer): XGBoost 3.2 segfaults loading a model whose tree
    ``parents`` point out of range (UBJSON: one int32 of ``parents`` with its high byte 0xd0).
    The factory checks models in a child process first, so the load is rejected instead."""
    data = TRAINERS["xgboost-regressor-json"](wine_matrix).data
    start = data.index(b'"parents":[')
    first = data.index(b",", start) + 1  # parents[0] is the root's sentinel; replace parents[1]
    corrupt = data[:first] + parent + data[data.index(b",", first) :]
    request = LoadRequest(
        "bad-parents", InlineArtifact(corrupt), {}, OutputRule.AUTO, registry.context
    )
    with pytest.raises(ModelLoadError, match="'bad-parents': XGBoost cannot load it"):
        registry.factory_for(ModelType.XGBOOST).load(request)


def _pmml_tree(wine_dir: Path) -> bytes:
    return (wine_dir / "winequalityDesisionTreeRegression.pmml").read_bytes()


@pytest.mark.parametrize(
    ("original", "replacement"),
    [
        (b'<DataField name="chlorides"', b'<DataField name="bhlorides"'),  # an undefined field
        (b'name="quality" optype=', b'name="quality" nptype='),  # a required attribute lost
        (  # no dataType: jpmml_evaluator's ModelField raises AttributeError on None.value()
            b'name="fixed acidity" optype="continuous" dataType="double"',
            b'name="fixed acidity" optype="continuous"',
        ),
    ],
)
def test_pmml_with_a_field_the_schema_misses_is_rejected(
    registry: FactoryRegistry, wine_dir: Path, original: bytes, replacement: bytes
) -> None:
    """Found by the fuzzer: one flipped letter in the original wine decision tree."""
    data = _pmml_tree(wine_dir)
    assert original in data
    request = LoadRequest(
        "bad-pmml",
        InlineArtifact(data.replace(original, replacement, 1)),
        {},
        OutputRule.AUTO,
        registry.context,
    )
    with pytest.raises(ModelLoadError):
        registry.factory_for(ModelType.PMML).load(request)


def test_onnx_model_without_outputs_is_rejected(registry: FactoryRegistry) -> None:
    """Regression (found by atheris on the mutated linear model): a graph whose output list is
    empty loads in onnxruntime, and ``outputs[0]`` raised IndexError."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "no-outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 11])],
        [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    request = LoadRequest(
        "mute", InlineArtifact(model.SerializeToString()), {}, OutputRule.AUTO, registry.context
    )
    with pytest.raises(ModelLoadError, match="'mute' declares no outputs"):
        registry.factory_for(ModelType.ONNX).load(request)
