"""Tensors of the Open Inference Protocol: V2 datatypes, and tensor data as JSON, bytes or numpy.

One place for what a datatype means, whatever carries the tensor: JSON values (REST), raw
little-endian bytes (REST's binary tensor data extension, gRPC's ``raw_input_contents`` and
``raw_output_contents``) and gRPC's typed contents all become, or come from, a numpy array
shaped as the tensor. Raw data is row-major, little-endian, without padding; a BOOL element is
one byte (0 or 1); a BYTES element is a 4-byte little-endian length, then that many bytes; BF16
is the upper half of an FP32.

A refused tensor raises :class:`~streamserve.errors.InvalidRequestError` naming the tensor
(``where``) and what is wrong with it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from streamserve.errors import InvalidRequestError

# Fixed-size datatypes: the numpy type of one element, little-endian as the protocol is.
FIXED_SIZE = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # no numpy type: carried as its bits, read as FP32
}
BYTES = "BYTES"
DATATYPES = frozenset({*FIXED_SIZE, BYTES})
# Datatypes a request may give features in: numbers (a model's features are numbers).
INPUT_DATATYPES = frozenset(FIXED_SIZE)
# The datatype of an output, by the kind of its values (widest of the kind, so that a key's
# outputs keep one datatype across models that publish narrower or wider numbers).
OUTPUT_DATATYPES = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64", "U": BYTES}
LENGTH = struct.Struct("<I")  # the length prefix of a BYTES element


def datatype_problem(datatype: object) -> str | None:
    """Why ``datatype`` cannot be an input's, if it cannot."""
    if not isinstance(datatype, str):
        return f"datatype must be a string, not {type(datatype).__name__}"
    if datatype in INPUT_DATATYPES:
        return None
    if datatype == BYTES:
        return (
            "datatype 'BYTES' is not supported for inputs: a model's features are numbers "
            f"(send one of {', '.join(sorted(INPUT_DATATYPES))})"
        )
    return f"datatype {datatype!r} is not a V2 datatype ({', '.join(sorted(DATATYPES))})"


def input_shape(shape: object, where: str) -> tuple[int, ...]:
    """An input's shape: ``[rows]`` or ``[rows, features]`` with at least one feature.

    Checked before its data is read: a shape ``[N, 0]`` is filled by no values at all, yet
    would make ``N`` records to score."""
    if not (
        isinstance(shape, Sequence)
        and not isinstance(shape, str | bytes)
        and 1 <= len(shape) <= 2
        and all(type(d) is int and d >= 0 for d in shape)  # not bool, whatever Python says
    ):
        raise InvalidRequestError(f"{where}: shape must be [rows] or [rows, features]")
    if len(shape) == 2 and shape[1] == 0:
        raise InvalidRequestError(
            f"{where}: shape {list(shape)} has no features; a row needs at least one"
        )
    return tuple(shape)


def from_bytes(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    """The input tensor that ``raw`` holds, of an input datatype, shaped ``shape``; refused
    unless it fills the shape exactly."""
    count = math.prod(shape)  # Python integers: no wrap-around
    dtype = FIXED_SIZE[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"{where}: {len(raw)} bytes of {datatype} data do not fill shape {list(shape)} "
            f"({expected} bytes)"
        )
    values: np.ndarray
    if datatype == "BOOL":
        octets = np.frombuffer(raw, np.uint8)
        if octets.size and int(octets.max()) > 1:
            raise InvalidRequestError(f"{where}: BOOL data must be bytes 0 or 1")
        values = octets != 0
    elif datatype == "BF16":
        values = (np.frombuffer(raw, dtype).astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        # as JSON and typed contents: NaN would read as a missing feature, infinity reach the model
        raise InvalidRequestError(f"{where}: {datatype} data must be finite numbers in range")
    return _shaped(values, shape, where)


def from_values(values: object, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The input tensor of ``values`` (JSON values or gRPC typed contents, flat or nested in
    row-major order), of an input datatype, shaped ``shape``. The values must be of the
    datatype (BOOL: booleans; integer types: integers within their range; floating-point
    types: finite numbers within their range): refused rather than coerced."""
    if datatype == "BF16":
        raise InvalidRequestError(f"{where}: BF16 data must be binary (raw) data")
    try:
        array = np.asarray(values)
    except ValueError as err:  # ragged nesting
        raise InvalidRequestError(f"{where}: data is not a tensor: {err}") from err
    count = math.prod(shape)
    if array.size != count:
        raise InvalidRequestError(f"{where}: {array.size} values do not fill shape {list(shape)}")
    if array.dtype.kind in "fO" and FIXED_SIZE[datatype].kind in "iu":
        # integers beyond int64 beside smaller ones read as float64: read them exactly
        array = np.asarray(values, dtype=object)
    return _shaped(_typed(array.reshape(-1), datatype, where), shape, where)


def _shaped(flat: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """``flat`` shaped ``shape``; a shape of no rows may still be wider than any array."""
    try:
        return flat.reshape(shape)
    except ValueError as err:
        raise InvalidRequestError(f"{where}: shape {list(shape)} is too large: {err}") from err


def _typed(flat: np.ndarray, datatype: str, where: str) -> np.ndarray:
    dtype, kind = FIXED_SIZE[datatype], flat.dtype.kind
    if flat.size == 0:
        return flat.astype(dtype)
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidRequestError(f"{where}: BOOL data must be true or false")
        return flat
    if dtype.kind in "iu":
        if kind == "O":
            return _integers(flat, datatype, where)
        if kind not in "iub":
            raise InvalidRequestError(f"{where}: {datatype} data must be integers")
        info = np.iinfo(dtype.name)
        if int(flat.min()) < info.min or int(flat.max()) > info.max:
            raise InvalidRequestError(
                f"{where}: {datatype} data must lie within [{info.min}, {info.max}]"
            )
        return flat.astype(dtype)
    if kind not in "iuf":
        raise InvalidRequestError(f"{where}: {datatype} data must be numbers")
    with np.errstate(over="ignore"):  # an overflow is refused below, not warned about
        typed = flat.astype(dtype)
    if not np.isfinite(typed).all():  # overflowed, or given so (gRPC's floats may be NaN)
        raise InvalidRequestError(f"{where}: {datatype} data must be finite numbers in range")
    return typed


def _integers(flat: np.ndarray, datatype: str, where: str) -> np.ndarray:
    """Values read as Python objects: integers numpy holds in no one type (``[2**63, 1]``)."""
    items = flat.tolist()
    if not all(isinstance(item, int) for item in items):
        raise InvalidRequestError(f"{where}: {datatype} data must be integers")
    info = np.iinfo(FIXED_SIZE[datatype].name)
    if min(items) < info.min or max(items) > info.max:
        raise InvalidRequestError(
            f"{where}: {datatype} data must lie within [{info.min}, {info.max}]"
        )
    return np.array(items, FIXED_SIZE[datatype])


def output_datatype(values: np.ndarray) -> str:
    """The V2 datatype of an output's values (see ``OUTPUT_DATATYPES``)."""
    return OUTPUT_DATATYPES.get(values.dtype.kind, BYTES)


def as_datatype(values: np.ndarray, datatype: str) -> np.ndarray:
    """``values`` as elements of ``datatype``: little-endian numbers, or BYTES as UTF-8."""
    if datatype == BYTES:
        return np.array([str(v).encode() for v in values.reshape(-1).tolist()], dtype=object)
    return values.astype(FIXED_SIZE[datatype])


def to_bytes(values: np.ndarray, datatype: str) -> bytes:
    """The raw (binary) data of a tensor: its elements row-major, BYTES length-prefixed."""
    typed = as_datatype(values, datatype)
    if datatype == BYTES:
        return b"".join(LENGTH.pack(len(item)) + item for item in typed.tolist())
    return np.ascontiguousarray(typed).tobytes()


def to_json(values: np.ndarray) -> list[object]:
    """The JSON data of a tensor, flattened: numbers, booleans, or text."""
    return list(values.reshape(-1).tolist())


def as_features(values: np.ndarray) -> np.ndarray:
    """A numeric tensor as feature values (float64, what codecs give the core)."""
    return values.astype(np.float64)
