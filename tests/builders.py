"""Real model files for tests, made here with the real libraries (nothing is downloaded)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.descriptor import ModelDescriptor, ModelType

ONNX_OPSET = 17


def _onnx_bytes(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_linear(weights: np.ndarray, bias: float) -> bytes:
    """``y = x @ weights + bias``: input ``x`` float [N, len(weights)], output ``y`` [N, 1]."""
    width = len(weights)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.asarray(weights, np.float32).reshape(width, 1), "w"),
            numpy_helper.from_array(np.asarray([bias], np.float32), "b"),
        ],
    )
    return _onnx_bytes(graph)


def onnx_constant(width: int, value: float) -> bytes:
    """A model that scores every record ``value``: tells which model scored a record."""
    return onnx_linear(np.zeros(width), value)


def onnx_always_raising(width: int) -> bytes:
    """Loads fine, raises when scoring: reshapes N x width values into [7, 13, -1]."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "raising",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 13, None])],
        initializer=[numpy_helper.from_array(np.asarray([7, 13, -1], np.int64), "shape")],
    )
    return _onnx_bytes(graph)


def onnx_descriptor(name: str, data: bytes, key: str = "wine", **extra: object) -> ModelDescriptor:
    return ModelDescriptor(name=name, data_type=key, model_type=ModelType.ONNX, data=data, **extra)  # type: ignore[arg-type]


def wine_rows(wine_dir: Path) -> np.ndarray:
    """The 1,599 x 12 wine matrix: 11 features, then the quality label."""
    return np.loadtxt(wine_dir / "winequality_red.csv", delimiter=";")


def wine_json_lines(rows: np.ndarray, key: str = "wine") -> list[bytes]:
    import orjson

    return [
        orjson.dumps(
            {"dataType": key, **dict(zip(WINE_FEATURES, map(float, row[:11]), strict=True))}
        )
        for row in rows
    ]


def onnx_named_linear(names: list[str], weights: np.ndarray, bias: float) -> bytes:
    """``y = concat(inputs) @ weights + bias`` with one [N, 1] input per feature name."""
    graph = helper.make_graph(
        [
            helper.make_node("Concat", names, ["x"], axis=1),
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "named_linear",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 1]) for name in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.asarray(weights, np.float32).reshape(-1, 1), "w"),
            numpy_helper.from_array(np.asarray([bias], np.float32), "b"),
        ],
    )
    return _onnx_bytes(graph)


def archive_with_gnu_tar(folder: Path, out: Path) -> bytes:
    """``folder`` archived from inside it, as ``tar -czf model.tar.gz -C folder .`` does (a first
    member named ``.``)."""
    archive = out / "model.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(folder), "."], check=True)
    return archive.read_bytes()


def archive_with_shutil(folder: Path, out: Path) -> bytes:
    """``folder`` archived by ``shutil.make_archive(root_dir=folder)`` (members ``./...``)."""
    return Path(shutil.make_archive(str(out / "model"), "gztar", root_dir=folder)).read_bytes()


FOLDER_ARCHIVERS = {"tar-C": archive_with_gnu_tar, "shutil": archive_with_shutil}
