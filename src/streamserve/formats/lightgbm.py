"""LightGBM Boosters (model type LIGHTGBM): the native text model.

Inputs are named by the model's feature names unless LightGBM generated them
(``Column_0``, ``Column_1``, ...), which means the model was trained on unnamed columns:
positional then. A multi-class model gives class scores (AUTO: the class index).

LightGBM (4.7) aborts the whole process on some malformed models (``std::terminate`` while
parsing trees), which no exception handler can catch. So a model's text is first parsed by a
short-lived child process, and loaded here only if that succeeds: a corrupt model is rejected,
never a crash. This costs a child process per load, off the scoring path, so a text that passed
is not checked again: the factory remembers the digests of the last texts that passed (an evicted
model is re-made from the same bytes), and with an artifact cache so does every process sharing it.
"""

from __future__ import annotations

import re
from typing import Any

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    RawOutputModel,
    import_optional,
)
from streamserve.formats.isolation import (
    FEATURE_INDEX_CHECK,
    REMEMBERED_PASSES,
    WITHOUT_OPTIONAL_IMPORTS,
    CheckedOnce,
    ChildCheck,
)

_GENERATED_NAME = re.compile(r"Column_\d+")


def _lightgbm() -> Any:
    return import_optional("lightgbm", "for LightGBM models", "lightgbm")


class LightGBMModel(RawOutputModel):
    def __init__(self, booster: Any, threads: int, output: OutputRule, name: str) -> None:
        names = [str(n) for n in booster.feature_name()]
        generated = all(_GENERATED_NAME.fullmatch(n) for n in names)
        super().__init__(InputSpec(len(names), None if generated else tuple(names)), output, name)
        self._booster = booster
        self._threads = threads

    def raw_output(self, features: FloatMatrix) -> Any:
        return self._booster.predict(features, num_threads=self._threads, validate_features=False)

    def close(self) -> None:
        self._booster = None


class LightGBMFactory:
    """Loads LightGBM text models, each checked once in a child process before it is parsed here."""

    format_name = "lightgbm"

    def __init__(
        self, context: FactoryContext, *, remembered_passes: int = REMEMBERED_PASSES
    ) -> None:
        self._context = context
        self._checked = CheckedOnce(PARSE_CHECK, context.cache, remembered_passes)

    def load(self, request: LoadRequest) -> Model:
        lightgbm = _lightgbm()
        where = f"LightGBM model {request.name!r}"
        data = request.artifact.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelLoadError(f"{where}: not a LightGBM text model (not UTF-8)") from err
        self._checked.ensure(data, where)
        try:
            booster = lightgbm.Booster(model_str=text)
        except Exception as err:
            raise ModelLoadError(
                f"{where} from {request.artifact.describe()} cannot be loaded: {err}"
            ) from err
        return LightGBMModel(booster, self._context.threads_per_model, request.output, request.name)


PARSE_CHECK = ChildCheck(
    name="lightgbm-parse",
    script=WITHOUT_OPTIONAL_IMPORTS
    + FEATURE_INDEX_CHECK
    + """
import lightgbm, numpy
booster = lightgbm.Booster(model_str=sys.stdin.read())
width = booster.num_feature()
check_feature_indices(booster.dump_model(), "split_feature", width)
for value in (0.0, 1.0, -1.0, 1e9, -1e9, float("nan")):
    booster.predict(numpy.full((2, max(width, 1)), value), num_threads=1)
""",
    library="LightGBM",
    verb="parse",
    marker="[Fatal]",
    module="lightgbm",
)
