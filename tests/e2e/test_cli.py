"""The ``streamserve`` command, run as a user runs it: a subprocess, real files, real models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from builders import onnx_constant, wine_json_lines, wine_rows
from streamserve.codecs.protobuf import encode_wine_record
from streamserve.demo.wine import PMML_FILES
from streamserve.runtime.streams import write_length_delimited

STREAMSERVE = [sys.executable, "-m", "streamserve"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run(
    *args: str, stdin: bytes | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*STREAMSERVE, *args],
        input=stdin,
        capture_output=True,
        env=ENV,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.slow
def test_demo_shows_every_swap_in_order_and_the_stats_table() -> None:
    done = run("demo", "--seconds-per-model", "0.2", "--rate", "3000")
    output = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    swaps = re.findall(r"swap wine: now served by (\S+) \(sha256:[0-9a-f]{12}\)", output)
    expected = [
        "wine-savedmodel",
        *(f.removesuffix(".pmml") for f in PMML_FILES),
        "wine-frozen-graph",
    ]
    assert swaps == expected
    table = output[output.index("Serving statistics of key 'wine'") :]
    assert all(name in table for name in expected)
    assert re.search(r"[\d,]+ records in [\d.]+ s: [\d,]+ results, 0 errors", output)


def test_serve_scores_a_data_file_with_models_from_a_folder(tmp_path: Path, wine_dir: Path) -> None:
    models = tmp_path / "models"
    (models / "wine").mkdir(parents=True)
    (models / "beer").mkdir()
    (models / "wine" / "tree.pmml").write_bytes(
        (wine_dir / "winequalityDecisionTreeClassification.pmml").read_bytes()
    )
    (models / "beer" / "constant.onnx").write_bytes(onnx_constant(11, 7.0))
    rows = wine_rows(wine_dir)[:50]
    lines = wine_json_lines(rows) + wine_json_lines(rows[:5], key="beer") + [b"{not json"]
    data = tmp_path / "records.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"

    done = run(
        "serve",
        "--models",
        str(models),
        "--data",
        str(data),
        "--codec",
        "json",
        "--results",
        str(results),
        "--errors",
        str(errors),
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    scored = [orjson.loads(line) for line in results.read_bytes().splitlines()]
    failed = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert [(r["key"], r["model"]) for r in scored] == [("wine", "tree")] * 50 + [
        ("beer", "constant")
    ] * 5
    assert {r["value"] for r in scored[:50]} <= {3, 4, 5, 6, 7, 8}
    assert [r["value"] for r in scored[50:]] == [7.0] * 5
    assert [(e["kind"], e["position"], e["input"]) for e in failed] == [
        ("undecodable_record", "records.jsonl:56", "{not json")
    ]
    assert "55 results, 1 errors" in done.stderr.decode()


def test_serve_reads_original_wine_records_from_stdin(tmp_path: Path, wine_dir: Path) -> None:
    (tmp_path / "models" / "wine").mkdir(parents=True)
    (tmp_path / "models" / "wine" / "graph.pb").write_bytes(
        (wine_dir / "optimized_WineQuality.pb").read_bytes()
    )
    rows = wine_rows(wine_dir)
    stream = tmp_path / "records.bin"
    with stream.open("wb") as out:
        write_length_delimited(
            [encode_wine_record(rows[0][:11]), encode_wine_record([0.0] * 11)], out
        )

    done = run(
        "serve",
        "--models",
        str(tmp_path / "models"),
        "--codec",
        "wine-protobuf",
        "--data",
        "-",
        stdin=stream.read_bytes(),
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    values = [orjson.loads(line)["value"] for line in done.stdout.splitlines()]
    assert values == [5, 5]


def test_serve_reports_a_missing_data_file_clearly(tmp_path: Path) -> None:
    done = run("serve", "--data", str(tmp_path / "absent.jsonl"))
    assert done.returncode == 2
    assert b"cannot open data file" in done.stderr
    assert b"Traceback" not in done.stderr


def test_version_prints_the_installed_packages_version() -> None:
    from importlib.metadata import version

    import streamserve

    script = Path(sys.executable).with_name("streamserve")  # the installed console script
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, env=ENV, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"streamserve {streamserve.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", streamserve.__version__)
    # The package's metadata takes its version from the same line (reinstall if this fails).
    assert version("streamserve") == streamserve.__version__
