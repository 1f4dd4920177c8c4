"""XGBoost Boosters (model type XGBOOST): the native JSON or UBJSON model file.

Inputs are named by the booster's feature names when it has them, else positional. Scoring uses
``inplace_predict`` (no DMatrix copy) with ``threads_per_model`` threads; a multi-class softprob
model gives class scores, which the AUTO output rule turns into the class index.

The content is checked to be one complete JSON or UBJSON document before XGBoost sees it: its
UBJSON reader (3.2) reads past the end of a truncated model and sometimes "loads" it. Then a
short-lived child process loads it and scores a probe: XGBoost 3.2 dereferences tree arrays
unchecked, so a model whose ``parents`` (say) point out of range kills the process that loads
it (SIGSEGV) — found by fuzzing. A model that passed is remembered (in the artifact cache, and
by this factory for the models it loaded last), so re-instantiation costs no new check.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

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


def _xgboost() -> Any:
    return import_optional("xgboost", "for XGBoost models", "xgboost")


class XGBoostModel(RawOutputModel):
    def __init__(self, booster: Any, output: OutputRule, name: str) -> None:
        names = booster.feature_names
        spec = InputSpec(len(names), tuple(names)) if names else InputSpec(booster.num_features())
        super().__init__(spec, output, name)
        self._booster = booster

    def raw_output(self, features: FloatMatrix) -> Any:
        return self._booster.inplace_predict(features, validate_features=False)

    def close(self) -> None:
        self._booster = None


class XGBoostFactory:
    format_name = "xgboost"

    def __init__(
        self, context: FactoryContext, *, remembered_passes: int = REMEMBERED_PASSES
    ) -> None:
        self._context = context
        self._checked = CheckedOnce(LOAD_CHECK, context.cache, remembered_passes)

    def load(self, request: LoadRequest) -> Model:
        xgboost = _xgboost()
        where = f"XGBoost model {request.name!r}"
        data = request.artifact.read_bytes()
        check_complete_document(data, where)
        self._checked.ensure(data, where)
        booster = xgboost.Booster(params={"nthread": self._context.threads_per_model})
        try:
            booster.load_model(bytearray(data))
        except ModelLoadError:
            raise
        except Exception as err:
            raise ModelLoadError(
                f"XGBoost model {request.name!r} from "
                f"{request.artifact.describe()} cannot be loaded: {err}"
            ) from err
        return XGBoostModel(booster, request.output, request.name)


LOAD_CHECK = ChildCheck(
    name="xgboost-load",
    script=WITHOUT_OPTIONAL_IMPORTS
    + FEATURE_INDEX_CHECK
    + """
import json, numpy, xgboost
booster = xgboost.Booster(params={"nthread": 1})
booster.load_model(bytearray(sys.stdin.buffer.read()))
width = booster.num_features()
document = json.loads(booster.save_raw(raw_format="json"))
check_feature_indices(document, "split_indices", width)
stack = [document]
while stack:  # each node's children are nodes of its tree
    item = stack.pop()
    if isinstance(item, list):
        stack.extend(item)
    elif isinstance(item, dict):
        nodes = len(item.get("split_indices", ()))
        for side in ("left_children", "right_children"):
            for child in item.get(side, ()):
                if type(child) is not int or not (child == -1 or 0 <= child < nodes):
                    sys.exit(f"Error: a tree node's child {child!r} is not among {nodes} nodes")
        stack.extend(item.values())
for value in (0.0, 1.0, -1.0, 1e9, -1e9, float("nan")):
    booster.inplace_predict(numpy.full((2, max(width, 1)), value), validate_features=False)
""",
    library="XGBoost",
    verb="load",
    marker="Error",
    module="xgboost",
)


def check_complete_document(data: bytes, where: str) -> None:
    """Raises unless ``data`` is exactly one complete JSON or UBJSON document."""
    text = data.lstrip()
    if text[:1] == b"{" and text[1:].lstrip()[:1] in (b'"', b"}"):  # UBJSON's "{" takes a length
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise ModelLoadError(
                f"{where}: the JSON model is incomplete or invalid: {err}"
            ) from err
        return
    try:
        end = _UbjsonWalker(data).value(0)
    except (IndexError, ValueError) as err:
        raise ModelLoadError(f"{where}: not a complete JSON or UBJSON model: {err}") from err
    if end != len(data):
        raise ModelLoadError(f"{where}: {len(data) - end} bytes follow the UBJSON model")


_FIXED_SIZES = {
    b"Z": 0,
    b"N": 0,
    b"T": 0,
    b"F": 0,
    b"i": 1,
    b"U": 1,
    b"C": 1,
    b"I": 2,
    b"l": 4,
    b"d": 4,
    b"L": 8,
    b"D": 8,
}
_INT_FORMATS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}


class _UbjsonWalker:
    """Walks a UBJSON document, checking every length against the data; returns end offsets."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def _byte(self, at: int) -> bytes:
        if at >= len(self._data):
            raise ValueError(f"data ends at byte {len(self._data)}, inside the document")
        return self._data[at : at + 1]

    def _int(self, at: int) -> tuple[int, int]:
        marker = self._byte(at)
        if marker not in _INT_FORMATS:
            raise ValueError(f"expected a length at byte {at}, found {marker!r}")
        size = _FIXED_SIZES[marker]
        self._byte(at + size)
        (number,) = struct.unpack(_INT_FORMATS[marker], self._data[at + 1 : at + 1 + size])
        if number < 0:
            raise ValueError(f"negative length at byte {at}")
        return number, at + 1 + size

    def value(self, at: int, marker: bytes | None = None) -> int:
        if marker is None:
            marker, at = self._byte(at), at + 1
        if marker in _FIXED_SIZES:
            end = at + _FIXED_SIZES[marker]
            if end > len(self._data):
                raise ValueError(f"data ends inside a {marker!r} value at byte {at}")
            return end
        if marker in (b"S", b"H"):
            length, at = self._int(at)
            if at + length > len(self._data):
                raise ValueError(f"data ends inside a string at byte {at}")
            return at + length
        if marker in (b"[", b"{"):
            return self._container(at, is_object=marker == b"{")
        raise ValueError(f"unknown UBJSON marker {marker!r} at byte {at - 1}")

    def _container(self, at: int, *, is_object: bool) -> int:
        item_type: bytes | None = None
        if self._byte(at) == b"$":
            item_type, at = self._byte(at + 1), at + 2
            if self._byte(at) != b"#":
                raise ValueError(f"typed container without a count at byte {at}")
        count: int | None = None
        if self._byte(at) == b"#":
            count, at = self._int(at + 1)
        if item_type is not None and item_type in _FIXED_SIZES and not is_object:
            end = at + count * _FIXED_SIZES[item_type] if count is not None else at
            if end > len(self._data):
                raise ValueError(f"data ends inside a typed array at byte {at}")
            return end
        closing = b"}" if is_object else b"]"
        done = 0
        while count is None or done < count:
            if count is None and self._byte(at) == closing:
                return at + 1
            if is_object:
                length, at = self._int(at)
                at += length
            at = self.value(at, item_type)
            done += 1
        return at
