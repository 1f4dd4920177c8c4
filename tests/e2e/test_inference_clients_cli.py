"""``streamserve serve --http-port --grpc-port`` answers the stock Triton clients while it
streams: the original frozen graph scores the wine records as the stream does, over REST (binary
tensor data, and JSON) and gRPC; and the README's client examples run as written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
import stock_clients

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Server:
    http: str  # host:port
    grpc: str
    rows: np.ndarray  # the wine features, in the order the stream read them
    published: list[int]  # what the stream published for them, in that order


def _announced(stderr: object, *services: str) -> dict[str, str]:
    """Where each service listens, from the server's log lines (read until all are there)."""
    found: dict[str, str] = {}
    while len(found) < len(services):
        line = stderr.readline().decode()  # type: ignore[attr-defined]
        assert line, f"the server ended before announcing {services}: {found}"
        for service in services:
            match = re.search(rf"{service} on (?:https?://)?(\S+)", line)
            if match:
                found[service] = match.group(1)
    return found


def _results(path: Path, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [orjson.loads(line) for line in lines]
        assert time.monotonic() < deadline, f"{len(lines)} of {count} results came"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(wine_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    (folder / "models" / "wine").mkdir(parents=True)
    shutil.copyfile(
        wine_dir / "optimized_WineQuality.pb", folder / "models" / "wine" / "frozen-graph.pb"
    )
    csv = b"".join(line + b"\n" for line in (wine_dir / "winequality_red.csv").read_bytes().split())
    command = [sys.executable, "-m", "streamserve", "serve", "--models", str(folder / "models")]
    command += ["--data", "-", "--codec", "wine-csv", "--results", str(folder / "results.jsonl")]
    command += ["--http-port", "0", "--grpc-port", "0"]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    assert process.stderr is not None
    try:
        where = _announced(process.stderr, "HTTP API", "gRPC API")
        process.stdin.write(csv)
        process.stdin.flush()
        results = _results(folder / "results.jsonl", 1599)
        assert {result["model"] for result in results} == {"frozen-graph"}
        rows = np.loadtxt(wine_dir / "winequality_red.csv", delimiter=";")[:, :11]
        published = [int(result["value"]) for result in results]  # type: ignore[call-overload]
        yield Server(where["HTTP API"], where["gRPC API"], rows, published)
    finally:
        process.stdin.close()
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()[-3000:]
        process.stderr.close()


def _infer(rows: np.ndarray, **extra: object) -> dict[str, object]:
    inputs = [{"name": "input", "datatype": "FP32", "data": rows.astype(np.float32).tolist()}]
    return {"call": "infer", "model": "wine", "inputs": inputs, **extra}


def test_the_frozen_graph_answers_the_clients_what_the_stream_published(server: Server) -> None:
    """Every wine record, in one request per client and encoding: the answers are the values
    the stream published for the same records, with the same model."""
    json_way = _infer(server.rows, binary=False, outputs=[{"name": "value", "binary": False}])
    http_binary, http_json = stock_clients.http(server.http, _infer(server.rows), json_way)
    (over_grpc,) = stock_clients.grpc(server.grpc, _infer(server.rows))
    for answer in (http_binary, http_json, over_grpc):
        assert answer["outputs"]["value"] == {  # type: ignore[index]
            "datatype": "INT64",
            "shape": [len(server.published)],
            "data": server.published,
        }
        assert answer["response"]["parameters"] == {"model": "frozen-graph"}  # type: ignore[index]
    assert server.published[0] == 5  # the original example's known answer for the first row
    assert "parameters" in http_binary["response"]["outputs"][0]  # type: ignore[index]
    assert "data" in http_json["response"]["outputs"][0]  # type: ignore[index]


def test_health_and_metadata_of_the_frozen_graph(server: Server) -> None:
    calls = [
        {"call": "live"},
        {"call": "ready"},
        {"call": "model_ready", "model": "wine"},
        {"call": "model_metadata", "model": "wine"},
    ]
    for answers in (
        stock_clients.http(server.http, *calls),
        stock_clients.grpc(server.grpc, *calls),
    ):
        live, ready, model_ready, metadata = answers
        assert (live, ready, model_ready) == (True, True, True)
        assert metadata["platform"] == "tensorflow"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 11]}]


def _readme_client_examples() -> list[str]:
    """The README's Python examples that use a stock client (under "## HTTP API")."""
    text = README.read_text()
    start = text.index("\n## HTTP API\n")
    section = text[start : text.find("\n## ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return [block for block in blocks if "tritonclient" in block]


def test_the_readme_client_examples_run_as_written(server: Server, tmp_path: Path) -> None:
    examples = _readme_client_examples()
    assert len(examples) == 2
    for number, example in enumerate(examples):
        script = tmp_path / f"example_{number}.py"
        script.write_text(
            example.replace("localhost:8080", server.http).replace("localhost:8081", server.grpc)
        )
        done = subprocess.run(
            [str(stock_clients.CLIENT_PYTHON), str(script)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert done.stdout.decode().split() == ["[5]"], example
