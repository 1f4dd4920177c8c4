"""A codec from an outside package serves records: found through the ``streamserve.codecs``
entry-point group of an installed distribution, built by name from the settings with its own
options, and reading the topic and headers each record arrives with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from codec_plugins import install_packed_floats, packed
from plugins import on_sys_path

from builders import onnx_descriptor, onnx_linear
from streamserve.codecs.base import InputRecord
from streamserve.codecs.registry import build_codec
from streamserve.serving.core import ServingCore
from streamserve.settings import CodecSettings, ServingSettings
from streamserve.testing import serve_records

WEIGHTS = np.array([1.0, 10.0, 100.0])


def test_a_plugin_codec_serves_records_keyed_by_their_headers_and_topic(tmp_path: Path) -> None:
    rows = [[1.0, 2.0, 3.0], [0.5, 0.0, 1.0], [2.0, 1.0, 0.0]]
    payloads = packed(rows)
    records = [
        InputRecord(payloads[0], None, "data:0:0", "data", (("data-type", b"points"),)),
        InputRecord(payloads[1], None, "data:0:1", "points"),  # no header: the topic is the key
        InputRecord(payloads[2][:-1], None, "data:0:2", "data", (("data-type", b"points"),)),
    ]
    settings = CodecSettings(format="packed-floats", options={"width": 3, "scale": 2.0})
    with on_sys_path(install_packed_floats(tmp_path / "site")):
        codec = build_codec(settings)

    with ServingCore(ServingSettings()) as core:
        run = serve_records(
            core,
            codec,
            records,
            models=[onnx_descriptor("linear", onnx_linear(WEIGHTS, 0.0), "points")],
        )

    assert [(r["key"], r["model"], r["position"]) for r in run.results] == [
        ("points", "linear", "data:0:0"),
        ("points", "linear", "data:0:1"),
    ]
    expected = [2.0 * float(np.dot(row, WEIGHTS)) for row in rows[:2]]
    assert [r["value"] for r in run.results] == pytest.approx(expected)
    (error,) = run.errors
    assert (error["kind"], error["position"]) == ("undecodable_record", "data:0:2")
    assert "packed-floats record has 23 bytes, expected 24" in error["reason"]
