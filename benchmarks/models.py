"""The models the benchmarks serve, made here from the original wine model and the onnx library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def wine_mlp_onnx(frozen_graph: Path) -> bytes:
    """The original wine MLP (TF frozen graph: 11-12-8-9, ReLU, ReLU, sigmoid) as ONNX.

    Its weights are read from the graph, so both formats compute the same function.
    """
    layers = _dense_layers(frozen_graph)
    nodes, initializers = [], []
    current = "dense_1_input"
    for index, (kernel, bias, activation) in enumerate(layers):
        weight, shift = f"w{index}", f"b{index}"
        initializers += [
            numpy_helper.from_array(kernel.astype(np.float32), weight),
            numpy_helper.from_array(bias.astype(np.float32), shift),
        ]
        nodes += [
            helper.make_node("MatMul", [current, weight], [f"mm{index}"]),
            helper.make_node("Add", [f"mm{index}", shift], [f"add{index}"]),
            helper.make_node(activation, [f"add{index}"], [f"act{index}"]),
        ]
        current = f"act{index}"
    graph = helper.make_graph(
        nodes,
        "wine_mlp",
        [helper.make_tensor_value_info("dense_1_input", TensorProto.FLOAT, [None, 11])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, layers[-1][1].size])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _dense_layers(frozen_graph: Path) -> list[tuple[np.ndarray, np.ndarray, str]]:
    import tensorflow as tf
    from tensorflow.python.framework import tensor_util

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(frozen_graph.read_bytes())
    constants = {
        node.name: tensor_util.MakeNdarray(node.attr["value"].tensor)
        for node in graph.node
        if node.op == "Const"
    }
    activations = {
        node.name.split("/")[0]: node.op for node in graph.node if node.op in ("Relu", "Sigmoid")
    }
    return [
        (constants[f"{layer}/kernel"], constants[f"{layer}/bias"], activations[layer])
        for layer in sorted(activations)
    ]


def tiny_linear_onnx(weights: np.ndarray, bias: float) -> bytes:
    """A one-layer model (features x weights + bias): one of thousands of per-key models."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["value"]),
        ],
        "tiny_linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, weights.size])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(weights.astype(np.float32).reshape(-1, 1), "w"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def lightgbm_regressor_text(
    features: np.ndarray, labels: np.ndarray, *, seed: int, rounds: int = 20
) -> bytes:
    """A small LightGBM regressor of the labels (its native text model), trained here."""
    import lightgbm

    params = {
        "objective": "regression",
        "num_leaves": 15,
        "learning_rate": 0.1,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(features, labels), num_boost_round=rounds)
    return str(booster.model_to_string()).encode()
