"""The soak's models: two variants of each format, made here from the original wine models and
the real libraries (no downloads). Key ``i`` is served by format ``i % 4``; its ``n``-th model is
that format's variant ``n % 2``, so every swap replaces a model by another of its format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.common import WineData
from benchmarks.models import lightgbm_regressor_text, tiny_linear_onnx, wine_mlp_onnx
from streamserve.codecs.protobuf import encode_wine_record
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

FORMATS = ("onnx", "tensorflow", "pmml", "lightgbm")
ROWS_PER_KEY = 64  # distinct records per key, cycled


@dataclass(frozen=True)
class Variant:
    """One model of the fleet: its type, bytes and what it is."""

    label: str
    model_type: int
    data: bytes


@dataclass(frozen=True)
class Fleet:
    """Every key's models and records."""

    keys: tuple[str, ...]
    variants: dict[str, tuple[Variant, Variant]]
    records: tuple[tuple[bytes, ...], ...]  # per key: WineRecord payloads naming the key
    rows: np.ndarray  # their features, in WineRecord order (V2 requests take some)

    def format_of(self, key_index: int) -> str:
        return FORMATS[key_index % len(FORMATS)]

    def model_message(self, key_index: int, generation: int) -> tuple[bytes, bytes]:
        """The (message key, ModelDescriptor) of the key's ``generation``-th model."""
        key = self.keys[key_index]
        variant = self.variants[self.format_of(key_index)][generation % 2]
        descriptor = ModelDescriptor(
            name=f"{key}-{variant.label}",
            data_type=key,
            model_type=variant.model_type,
            data=variant.data,
            version=f"g{generation}",
            description=f"soak model {generation} of key {key}",
        )
        return key.encode(), encode_descriptor(descriptor)


def build_fleet(wine: WineData, keys: int) -> Fleet:
    """``keys`` keys (``k000``, ...) over the four formats, two variants each."""
    names = tuple(f"k{index:03d}" for index in range(keys))
    matrix = np.loadtxt(wine.directory / "winequality_red.csv", delimiter=";")
    features, labels = matrix[:, :11], matrix[:, 11]
    frozen_graph = wine.directory / "optimized_WineQuality.pb"
    frozen = frozen_graph.read_bytes()
    pmml = wine.directory / "winequalityDecisionTreeClassification.pmml"
    pmml_regression = wine.directory / "winequalityDesisionTreeRegression.pmml"
    rng = np.random.default_rng(7)
    variants = {
        "onnx": (
            Variant("onnx-mlp", ModelType.ONNX, wine_mlp_onnx(frozen_graph)),
            Variant("onnx-linear", ModelType.ONNX, tiny_linear_onnx(rng.normal(size=11), 5.0)),
        ),
        # The original frozen graph both times: a swap still builds a new TF graph and function.
        "tensorflow": (
            Variant("tf-frozen-graph", ModelType.TENSORFLOW, frozen),
            Variant("tf-frozen-graph-again", ModelType.TENSORFLOW, frozen),
        ),
        "pmml": (
            Variant("pmml-tree-classification", ModelType.PMML, pmml.read_bytes()),
            Variant("pmml-tree-regression", ModelType.PMML, pmml_regression.read_bytes()),
        ),
        "lightgbm": (
            Variant(
                "lightgbm-a", ModelType.LIGHTGBM, lightgbm_regressor_text(features, labels, seed=1)
            ),
            Variant(
                "lightgbm-b", ModelType.LIGHTGBM, lightgbm_regressor_text(features, labels, seed=2)
            ),
        ),
    }
    rows = wine.rows[:ROWS_PER_KEY]
    records = tuple(tuple(encode_wine_record(row, data_type=key) for row in rows) for key in names)
    return Fleet(names, variants, records, rows)
