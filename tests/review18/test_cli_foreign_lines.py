"""With ``--log-format json`` every line on stderr is one JSON object (docs/operations.md,
"Logs"), and in text every line is a log line: native libraries that write to descriptor 2
themselves break that. These are outside the CLI's modules; each test says where the fix goes.
Run as a user runs it: a subprocess, real model files, a real bound port."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders import onnx_constant, wine_json_lines
from streamserve.descriptor import ModelType
from streamserve.descriptor._generated import modeldescriptor_pb2

STREAMSERVE = [sys.executable, "-m", "streamserve"]
USER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}
PATIENCE_S = 180.0


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*STREAMSERVE, *args],
        capture_output=True,
        env=USER_ENV,
        cwd=cwd,
        timeout=PATIENCE_S,
        check=False,
    )


def _not_json(stderr: bytes) -> list[bytes]:
    lines = []
    for line in stderr.splitlines():
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            lines.append(line)
    return lines


def _onnx_with_an_unused_initializer() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.zeros((11, 1), np.float32), "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "left_over"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.xfail(
    strict=True,
    reason="formats/onnx.py: ONNX Runtime writes its warnings about a model (here: an unused "
    "initializer removed) to descriptor 2 itself, in colour even into a pipe, past --log-format "
    "json. Fix: SessionOptions.log_severity_level from the logger's level (3 unless DEBUG), or "
    "the session made under formats/native_logs.native_logs_to with ONNX Runtime's line format "
    "so that the warning about the model stays, as a record of an 'onnxruntime' logger",
)
def test_onnx_runtime_warnings_about_a_model_are_json_lines(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    (tmp_path / "models" / "wine").mkdir(parents=True)
    (tmp_path / "models" / "wine" / "left-over.onnx").write_bytes(
        _onnx_with_an_unused_initializer()
    )
    (tmp_path / "records.jsonl").write_bytes(b"\n".join(wine_json_lines(wine_matrix[:3])) + b"\n")
    done = run(
        *("serve", "--models", "models", "--data", "records.jsonl", "--log-format", "json"),
        *("--results", "results", "--errors", "errors"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _not_json(done.stderr) == [], "lines of plain text among the JSON log lines"


def test_a_grpc_port_in_use_is_said_in_json_lines_only(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run(
            *("serve", "--key", "wine", "--data", os.devnull, "--grpc-port", str(port)),
            *("--log-format", "json"),
            cwd=tmp_path,
        )
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert _not_json(done.stderr) == [], "lines of plain text among the JSON log lines"


def test_publish_data_without_a_broker_says_so_in_json_lines(tmp_path: Path) -> None:
    config = tmp_path / "streamserve.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "127.0.0.1:1"\nproducer = {"message.timeout.ms" = 2000}\n'
    )
    (tmp_path / "records.jsonl").write_bytes(b'{"dataType": "wine"}\n')
    done = run(
        *("publish-data", "records.jsonl", "--config", str(config), "--log-format", "json"),
        cwd=tmp_path,
    )
    assert done.returncode != 0  # nothing was delivered
    assert _not_json(done.stderr) == [], "lines of plain text among the JSON log lines"


def test_an_error_document_for_a_huge_model_name_is_bounded(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    (tmp_path / "models" / "wine").mkdir(parents=True)
    # A publisher's message, made without streamserve's checks: a name of a million characters.
    huge = modeldescriptor_pb2.ModelDescriptor(
        name="n" * 1_000_000, dataType="wine", modeltype=ModelType.ONNX, data=b"not a model"
    )
    (tmp_path / "models" / "wine" / "huge.desc").write_bytes(huge.SerializeToString())
    (tmp_path / "records.jsonl").write_bytes(b"\n".join(wine_json_lines(wine_matrix[:3])) + b"\n")
    done = run(
        *("serve", "--models", "models", "--data", "records.jsonl"),
        *("--results", "results", "--errors", "errors"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    longest = max(len(line) for line in (tmp_path / "errors").read_bytes().splitlines())
    assert longest <= 16 * 1024, f"an error document of {longest:,} bytes"


def test_an_admin_rollback_is_a_log_line(tmp_path: Path, wine_matrix: np.ndarray) -> None:
    token = "0123456789abcdef" * 4
    models = tmp_path / "models" / "wine"
    models.mkdir(parents=True)
    (models / "five.onnx").write_bytes(onnx_constant(11, 5.0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            *(*STREAMSERVE, "serve", "--models", "models", "--data", "-"),
            *("--http-port", str(port), "--results", "results", "--errors", "errors"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**USER_ENV, "STREAMSERVE_API__ADMIN_TOKEN": token},
    )
    assert server.stdin is not None
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    threading.Thread(target=_read_lines, args=(server, lines), daemon=True).start()
    seen: list[str] = []

    def until(text: str, record: bytes | None = None) -> None:
        """Reads lines until one holds ``text``, writing ``record`` while none comes."""
        assert server.stdin is not None
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            if record is not None:
                server.stdin.write(record)
                server.stdin.flush()
            try:
                seen.append(lines.get(timeout=0.2))
            except queue.Empty:
                continue
            if text in seen[-1]:
                return
        pytest.fail(f"no line with {text!r}: {seen}")

    record = wine_json_lines(wine_matrix[:1])[0] + b"\n"
    try:
        until("HTTP API on")
        until("no model -> five", record)
        (models / "seven.onnx").write_bytes(onnx_constant(11, 7.0))
        until("-> seven", record)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/keys/wine/rollback",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=PATIENCE_S) as reply:
            assert orjson.loads(reply.read())["current"] == "five"
        rolled_back_at = len(seen)
    finally:
        server.stdin.close()
        server.wait(timeout=PATIENCE_S)
    until("INFO streamserve: ")  # the last line
    after = seen[rolled_back_at:]
    assert any("'wine'" in line for line in after), (
        f"the admin rollback of key 'wine' (seven back to five) left no log line: {after}"
    )


def _read_lines(server: subprocess.Popen[bytes], lines: queue.SimpleQueue[str]) -> None:
    assert server.stderr is not None
    with server.stderr:
        for line in server.stderr:
            lines.put(line.decode())
