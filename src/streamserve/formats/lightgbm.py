"""LightGBM Boosters (model type LIGHTGBM): the native text model.

Inputs are named by the model's feature names unless LightGBM generated them
(``Column_0``, ``Column_1``, ...), which means the model was trained on unnamed columns:
positional then. A multi-class model gives class scores (AUTO: the class index).

LightGBM (4.7) aborts the whole process on some malformed models (``std::terminate`` while
parsing trees), which no exception handler can catch. So a model's text is first parsed by a
short-lived child process, and loaded here only if that succeeds: a corrupt model is rejected,
never a crash. This costs about a second per load, off the scoring path; with an artifact cache,
a model that passed once (in any process sharing the cache) is not checked again.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    RuledModel,
    import_optional,
)

_GENERATED_NAME = re.compile(r"Column_\d+")


def _lightgbm() -> Any:
    return import_optional("lightgbm", "for LightGBM models", "lightgbm")


class LightGBMModel(RuledModel):
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
    format_name = "lightgbm"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context

    def load(self, request: LoadRequest) -> Model:
        lightgbm = _lightgbm()
        where = f"LightGBM model {request.name!r}"
        data = request.artifact.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelLoadError(f"{where}: not a LightGBM text model (not UTF-8)") from err
        cache = self._context.cache
        if cache is None or not cache.has_passed(PARSE_CHECK, data):
            _check_in_child_process(text, where)
            if cache is not None:
                cache.record_pass(PARSE_CHECK, data)
        try:
            booster = lightgbm.Booster(model_str=text)
        except Exception as err:
            raise ModelLoadError(
                f"{where} from {request.artifact.describe()} cannot be loaded: {err}"
            ) from err
        return LightGBMModel(booster, self._context.threads_per_model, request.output, request.name)


PARSE_CHECK = "lightgbm-parse"
_CHECK = "import sys, lightgbm; lightgbm.Booster(model_str=sys.stdin.read())"
CHECK_TIMEOUT_S = 300.0


def _check_in_child_process(text: str, where: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHECK],
            input=text.encode(),
            capture_output=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelLoadError(
            f"{where}: checking the model in a child process failed: {err}"
        ) from err
    if done.returncode != 0:
        errors = done.stderr.decode("utf-8", "replace")
        fatal = [line for line in errors.splitlines() if "[Fatal]" in line]
        detail = fatal[-1].strip() if fatal else (errors.strip().splitlines() or ["no output"])[-1]
        how = "crashed" if done.returncode < 0 else "failed"
        raise ModelLoadError(f"{where}: LightGBM cannot parse it (the check {how}: {detail})")
