"""ONNX sessions: the graph optimization level (basic for small models, option
``graph_optimization``), and scoring through the session's native run gives onnxruntime's own
answers."""

from __future__ import annotations

from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import onnx_linear, onnx_named_linear
from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.artifact import InlineArtifact
from streamserve.formats.base import FactoryContext, InputSpec, LoadRequest, Model
from streamserve.formats.onnx import (
    SMALL_MODEL_BYTES,
    OnnxFactory,
    OnnxModel,
    optimization_level,
)

ROWS = np.random.default_rng(5).normal(size=(64, 11))


def _mlp(sizes: list[int], seed: int = 0) -> bytes:
    """Dense layers with ReLU: the fusions of the extended level apply to it."""
    rng = np.random.default_rng(seed)
    nodes, weights, current = [], [], "x"
    for index, (rows, columns) in enumerate(pairwise(sizes)):
        weights += [
            numpy_helper.from_array(
                rng.normal(size=(rows, columns)).astype(np.float32), f"w{index}"
            ),
            numpy_helper.from_array(rng.normal(size=columns).astype(np.float32), f"b{index}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"w{index}"], [f"m{index}"]),
            helper.make_node("Add", [f"m{index}", f"b{index}"], [f"a{index}"]),
            helper.make_node("Relu", [f"a{index}"], [f"r{index}"]),
        ]
        current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, sizes[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, sizes[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _load(data: bytes, rule: OutputRule = OutputRule.AUTO, **options: str) -> Model:
    request = LoadRequest("m", InlineArtifact(data), options, rule, FactoryContext())
    return OnnxFactory(FactoryContext()).load(request)


def _library_scores(data: bytes, rows: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: rows.astype(np.float32)}
    return np.asarray(session.run(None, feeds)[0])


def test_a_small_model_is_optimized_at_the_basic_level_and_others_at_all() -> None:
    assert optimization_level({}, 400, model="m") == "basic"
    assert optimization_level({}, SMALL_MODEL_BYTES, model="m") == "basic"
    assert optimization_level({}, SMALL_MODEL_BYTES + 1, model="m") == "all"
    assert optimization_level({"graph_optimization": "all"}, 400, model="m") == "all"
    big = {"graph_optimization": "disabled"}
    assert optimization_level(big, 10 * SMALL_MODEL_BYTES, model="m") == "disabled"


def test_an_unknown_optimization_level_is_rejected_with_the_levels_known() -> None:
    with pytest.raises(ModelLoadError, match=r"graph_optimization='fast' is not one of .*basic"):
        _load(onnx_linear(np.ones(11), 0.5), graph_optimization="fast")


@pytest.mark.parametrize("level", ["disabled", "basic", "extended", "all"])
def test_every_optimization_level_gives_the_librarys_answers(level: str) -> None:
    for data in (onnx_linear(np.linspace(-1, 1, 11), 0.5), _mlp([11, 16, 8, 1])):
        model = _load(data, graph_optimization=level)
        np.testing.assert_allclose(
            model.score_batch(ROWS), _library_scores(data, ROWS)[:, 0], rtol=1e-6
        )
        np.testing.assert_allclose(
            model.score_batch(ROWS[:1]), _library_scores(data, ROWS[:1])[:, 0], rtol=1e-6
        )


def test_output_rules_and_named_inputs_score_as_the_library_does() -> None:
    classes = _mlp([11, 5], seed=3)
    raw = _library_scores(classes, ROWS)
    np.testing.assert_array_equal(_load(classes).score_batch(ROWS), np.argmax(raw, axis=1))
    np.testing.assert_array_equal(_load(classes, OutputRule.VALUE).score_batch(ROWS), raw)
    names = ["alpha", "beta", "gamma"]
    named = _load(onnx_named_linear(names, np.array([1.0, -2.0, 0.5]), 3.0))
    assert named.inputs == InputSpec(3, tuple(names))
    np.testing.assert_allclose(
        named.score_batch(ROWS[:, :3]), ROWS[:, :3] @ np.array([1.0, -2.0, 0.5]) + 3.0, rtol=1e-5
    )


def test_a_session_without_a_native_run_scores_through_its_public_run() -> None:
    """Another onnxruntime build may not expose the native session the model calls directly."""
    data = onnx_linear(np.linspace(-1, 1, 11), 0.5)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    public_only = SimpleNamespace(get_inputs=session.get_inputs, run=session.run)
    model = OnnxModel(public_only, "y", InputSpec(11), OutputRule.AUTO, "m")
    np.testing.assert_array_equal(model.score_batch(ROWS), _library_scores(data, ROWS)[:, 0])
