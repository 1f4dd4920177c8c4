"""V2 tensors: each datatype's raw bytes and JSON values read as the numbers they hold."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from streamserve.api import tensors
from streamserve.errors import InvalidRequestError

VALUES = [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    ("datatype", "numpy_type"),
    [
        ("UINT8", "<u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "<i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    ],
)
def test_raw_data_is_little_endian_and_row_major(datatype: str, numpy_type: str) -> None:
    raw = np.array(VALUES, numpy_type).tobytes()
    decoded = tensors.from_bytes(raw, datatype, (2, 2), "x")
    assert tensors.as_features(decoded).tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert tensors.from_values(VALUES, datatype, (2, 2), "x").tolist() == VALUES


def test_bool_is_one_byte_per_element() -> None:
    decoded = tensors.from_bytes(bytes([1, 0, 0, 1]), "BOOL", (2, 2), "x")
    assert decoded.tolist() == [[True, False], [False, True]]


def test_bf16_is_the_upper_half_of_an_fp32() -> None:
    fp32 = np.array([1.5, -2.0, 3.140625], "<f4")
    upper = (fp32.view("<u4") >> 16).astype("<u2").tobytes()
    assert tensors.from_bytes(upper, "BF16", (3,), "x").tolist() == [1.5, -2.0, 3.140625]


def test_raw_data_must_fill_its_shape_exactly() -> None:
    with pytest.raises(InvalidRequestError, match=r"^x: 7 bytes of INT32 data do not fill shape "):
        tensors.from_bytes(b"\0" * 7, "INT32", (2,), "x")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([], "shape must be [rows] or [rows, features]"),
        ([1, 2, 3], "shape must be [rows] or [rows, features]"),
        ([True, 1], "shape must be [rows] or [rows, features]"),
        ([-1, 2], "shape must be [rows] or [rows, features]"),
        ("12", "shape must be [rows] or [rows, features]"),
        ([5, 0], "shape [5, 0] has no features"),
    ],
)
def test_an_input_is_rows_of_features(shape: object, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[")):
        tensors.input_shape(shape, "x")


def test_text_outputs_are_utf8_each_after_its_length() -> None:
    raw = tensors.to_bytes(np.array(["ok", "", "été"]), "BYTES")
    assert raw == b"".join(struct.pack("<I", len(t)) + t for t in (b"ok", b"", "été".encode()))


@pytest.mark.parametrize(
    ("values", "datatype"),
    [
        (np.array([1, 2], np.int32), "INT64"),
        (np.array([1, 2], np.uint8), "UINT64"),
        (np.array([1.5], np.float32), "FP64"),
        (np.array([True]), "BOOL"),
        (np.array(["a"]), "BYTES"),
    ],
)
def test_an_output_takes_the_widest_datatype_of_its_kind(values: np.ndarray, datatype: str) -> None:
    assert tensors.output_datatype(values) == datatype
    raw = tensors.to_bytes(values, datatype)
    if datatype != "BYTES":
        assert np.frombuffer(raw, tensors.FIXED_SIZE[datatype]).tolist() == values.tolist()
