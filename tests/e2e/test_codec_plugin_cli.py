"""``streamserve serve --codec NAME`` with a codec from an outside package: the installed
``streamserve`` command finds it through its entry point, gives it its ``[codec.options]``, and
cuts the data file into records by the framing the codec declares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from codec_plugins import WITH_A_NEWLINE_BYTE, install_packed_floats, packed

from builders import onnx_linear
from streamserve.runtime.streams import write_length_delimited

STREAMSERVE = Path(sys.executable).with_name("streamserve")  # the venv's console script
WEIGHTS = np.array([1.0, 10.0, 100.0])


def serve(site: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(STREAMSERVE), "serve", *args],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=120,
        check=False,
    )


def test_serve_decodes_a_file_with_a_plugin_codec_framed_as_it_declares(tmp_path: Path) -> None:
    site = install_packed_floats(tmp_path / "site")
    (tmp_path / "models" / "points").mkdir(parents=True)
    (tmp_path / "models" / "points" / "linear.onnx").write_bytes(onnx_linear(WEIGHTS, 0.0))
    rows = [[WITH_A_NEWLINE_BYTE, 2.0, 3.0], [0.5, 0.0, 1.0]]
    payloads = [*packed(rows), b"short"]
    assert b"\n" in payloads[0], "line framing would cut this record in two"
    data = tmp_path / "points.bin"
    with data.open("wb") as stream:
        write_length_delimited(payloads, stream)
    config = tmp_path / "streamserve.toml"
    config.write_text("[codec.options]\nwidth = 3\nscale = 2.0\n")
    errors = tmp_path / "errors.jsonl"

    done = serve(
        site,
        *("--config", str(config), "--codec", "packed-floats", "--key", "points"),
        *("--models", str(tmp_path / "models"), "--data", str(data), "--errors", str(errors)),
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    results = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [(r["key"], r["model"], r["position"]) for r in results] == [
        ("points", "linear", "points.bin:1"),
        ("points", "linear", "points.bin:2"),
    ]
    expected = [2.0 * float(np.dot(row, WEIGHTS)) for row in rows]
    assert [r["value"] for r in results] == pytest.approx(expected)
    (error,) = (orjson.loads(line) for line in errors.read_bytes().splitlines())
    assert (error["kind"], error["position"]) == ("undecodable_record", "points.bin:3")
    assert "2 results, 1 errors" in done.stderr.decode()


def test_serve_refuses_an_unknown_codec_naming_the_known_ones(tmp_path: Path) -> None:
    site = install_packed_floats(tmp_path / "site")

    done = serve(site, "--codec", "avro", "--data", "-")

    assert done.returncode == 2
    assert b"unknown codec 'avro'" in done.stderr
    assert b"json, csv, wine-protobuf, wine-csv, packed-floats" in done.stderr
    assert b"Traceback" not in done.stderr
