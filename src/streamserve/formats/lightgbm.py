"""LightGBM Boosters (model type LIGHTGBM): the native text model.

Inputs are named by the model's feature names unless LightGBM generated them
(``Column_0``, ``Column_1``, ...), which means the model was trained on unnamed columns:
positional then. A multi-class model gives class scores (AUTO: the class index).

LightGBM (4.7) aborts the whole process on some malformed models (``std::terminate`` while
parsing trees), which no exception handler can catch. So a model's text is first parsed by a
short-lived child process, and loaded here only if that succeeds: a corrupt model is rejected,
never a crash. This costs about a second per load, off the scoring path, so a text that passed
is not checked again: the factory remembers the digests of the last texts that passed (an evicted
model is re-made from the same bytes), and with an artifact cache so does every process sharing it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import OrderedDict
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
from streamserve.formats.cache import bytes_digest

_GENERATED_NAME = re.compile(r"Column_\d+")
REMEMBERED_PASSES = 10_000  # hex digests: about 1.8 MB when full


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
    """Loads LightGBM text models, each checked once in a child process before it is parsed here."""

    format_name = "lightgbm"

    def __init__(
        self, context: FactoryContext, *, remembered_passes: int = REMEMBERED_PASSES
    ) -> None:
        self._context = context
        self._passed = _RecentDigests(remembered_passes)

    def load(self, request: LoadRequest) -> Model:
        lightgbm = _lightgbm()
        where = f"LightGBM model {request.name!r}"
        data = request.artifact.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ModelLoadError(f"{where}: not a LightGBM text model (not UTF-8)") from err
        self._check_once(data, text, where)
        try:
            booster = lightgbm.Booster(model_str=text)
        except Exception as err:
            raise ModelLoadError(
                f"{where} from {request.artifact.describe()} cannot be loaded: {err}"
            ) from err
        return LightGBMModel(booster, self._context.threads_per_model, request.output, request.name)

    def _check_once(self, data: bytes, text: str, where: str) -> None:
        """Checks ``text`` in a child process unless it passed before, here or in the cache."""
        digest = bytes_digest(data)
        if self._passed.remembers(digest):
            return
        cache = self._context.cache
        if cache is None or not cache.has_passed(PARSE_CHECK, data):
            _check_in_child_process(text, where)
            if cache is not None:
                cache.record_pass(PARSE_CHECK, data)
        self._passed.add(digest)


class _RecentDigests:
    """The last ``capacity`` digests added, safe to share between loader threads."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._digests: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def remembers(self, digest: str) -> bool:
        with self._lock:
            if digest not in self._digests:
                return False
            self._digests.move_to_end(digest)  # the models in use stay remembered
            return True

    def add(self, digest: str) -> None:
        with self._lock:
            self._digests[digest] = None
            self._digests.move_to_end(digest)
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)


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
