"""The ``feature_names`` option: names a model's input columns, for every format.

A positional model (a tensor of ``width`` columns) takes its columns by position; records that
name their fields then need a fixed order (the key's positional order, from its records). The
publisher can name the columns instead, in the model's input order, as a comma-separated
``feature_names`` option: records are then mapped by name, whatever their field order, and
validation checks the names against the key's records.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streamserve.errors import ModelLoadError
from streamserve.formats.base import FloatMatrix, InputSpec, Model

FEATURE_NAMES_OPTION = "feature_names"


class RenamedInputs:
    """A model whose input columns carry the names its publisher gave them."""

    def __init__(self, model: Model, inputs: InputSpec) -> None:
        self._model = model
        self._inputs = inputs

    @property
    def inputs(self) -> InputSpec:
        return self._inputs

    def score_batch(self, features: FloatMatrix) -> np.ndarray:
        return self._model.score_batch(features)

    def close(self) -> None:
        self._model.close()


def with_feature_names(model: Model, options: Mapping[str, str], name: str) -> Model:
    """``model`` with its inputs named by option ``feature_names``, when the option is given."""
    listed = options.get(FEATURE_NAMES_OPTION)
    if listed is None:
        return model
    names = tuple(part.strip() for part in listed.split(","))
    width = model.inputs.width
    if len(names) != width or not all(names) or len(set(names)) != len(names):
        model.close()
        raise ModelLoadError(
            f"model {name!r}: option {FEATURE_NAMES_OPTION} must name each of its {width} "
            f"input columns once, in order; it names {len(names)}: {listed!r}"
        )
    return RenamedInputs(model, InputSpec(width, names))
