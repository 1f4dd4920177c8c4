"""What the peers share: the WineRecord message, the model as its own library runs it, the
result document. It imports neither streamserve nor the benchmarks: each peer runs in its own
environment (scripts/peers-env.sh), where only its own packages and the model libraries are.

The result is the document streamserve publishes for the same record (key, model, version,
value, position, scoring_us), so every system writes the same bytes per result, give or take the
timing figure.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

WINE_FEATURES = (
    "fixed_acidity",
    "volatile_acidity",
    "citric_acid",
    "residual_sugar",
    "chlorides",
    "free_sulfur_dioxide",
    "total_sulfur_dioxide",
    "density",
    "pH",
    "sulphates",
    "alcohol",
)


def wine_record_class() -> Any:
    """The WineRecord message class (src/streamserve/descriptor/winerecord.proto), built from
    its descriptor at run time, in a pool of its own: generated code is tied to the protobuf
    release that generated it, and the peers run protobuf 5 and 6 where streamserve runs 7."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    double = descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE
    fields = [(name, number, double) for number, name in enumerate(WINE_FEATURES, start=1)]
    fields += [
        ("dataType", 12, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
        ("ts", 13, descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ]
    proto = descriptor_pb2.FileDescriptorProto(
        name="winerecord.proto", package="streamserve.descriptor", syntax="proto3"
    )
    message = proto.message_type.add(name="WineRecord")
    for name, number, kind in fields:
        message.field.add(
            name=name,
            number=number,
            type=kind,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("streamserve.descriptor.WineRecord")
    )


@dataclass
class Scorer:
    """One model, loaded as its library's docs show: a batch of feature rows in, the index of
    each row's largest class score out (the wine MLP's nine sigmoid outputs; streamserve's
    default output rule for a multi-column output)."""

    name: str
    version: str
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, features: np.ndarray) -> list[int]:
        raw = np.asarray(self.run(features.astype(np.float32, copy=False)))
        return np.argmax(raw.reshape(raw.shape[0], -1), axis=1).tolist()  # type: ignore[no-any-return]


def load_scorer(kind: str, path: Path, name: str) -> Scorer:
    """``onnx``: an onnxruntime session; ``tf-frozen-graph``: the TF1 frozen graph wrapped and
    pruned into a TF2 function, the migration guide's way to run one."""
    data = path.read_bytes()
    version = f"sha256:{hashlib.sha256(data).hexdigest()[:12]}"  # as streamserve labels it
    if kind == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run_onnx(features: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: features})[0]  # type: ignore[no-any-return]

        return Scorer(name, version, run_onnx)
    if kind == "tf-frozen-graph":
        import tensorflow as tf

        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(data)
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
        )
        placeholder = next(node.name for node in graph_def.node if node.op == "Placeholder")
        function = wrapped.prune(
            wrapped.graph.get_tensor_by_name(f"{placeholder}:0"),
            wrapped.graph.get_tensor_by_name(f"{graph_def.node[-1].name}:0"),
        )

        def run_tf(features: np.ndarray) -> np.ndarray:
            return function(tf.constant(features)).numpy()  # type: ignore[no-any-return]

        return Scorer(name, version, run_tf)
    raise ValueError(f"unknown model kind {kind!r}")


def result_document(
    scorer: Scorer, key: str, value: int, position: str, scoring_us: float
) -> dict[str, object]:
    """The result streamserve publishes for one record, field for field."""
    return {
        "key": key,
        "model": scorer.name,
        "version": scorer.version,
        "value": value,
        "position": position,
        "scoring_us": round(scoring_us, 3),
    }


def encode_result(scorer: Scorer, key: str, value: int, position: str, scoring_us: float) -> bytes:
    return orjson.dumps(result_document(scorer, key, value, position, scoring_us))


def peer_arguments(description: str | None) -> argparse.ArgumentParser:
    """The command line every peer takes from the benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--output-topic", required=True)
    parser.add_argument("--group", required=True, help="the consumer group")
    parser.add_argument("--model-kind", choices=("onnx", "tf-frozen-graph"), required=True)
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--ready-file", type=Path, help="written once the model is loaded and the job starts"
    )
    return parser
