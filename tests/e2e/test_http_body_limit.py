"""A 2 GiB request body sent to ``streamserve serve --http-port``: refused with 413, and the
server process's memory (its resident set, from /proc) does not grow by anything like it.

The body streams from a generator, chunked or with its Content-Length declared; the generator
reads the server's RSS as it goes, so a server that buffers the body fails the test after a few
hundred MiB instead of taking 2 GiB (or 4: a body is joined into one bytes object at the end).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from server_lines import wait_for_line

from builders import onnx_constant

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
GIB, MIB = 1 << 30, 1 << 20
BODY_BYTES = 2 * GIB
# The default limit, 16 MiB, is held at most while read; parsing never starts. A server that
# buffered the body would pass this within the first few hundred MiB sent.
MAX_RSS_GROWTH = 256 * MIB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``streamserve serve`` with a model and the HTTP API on a free port, default limits."""
    (tmp_path / "models" / "wine").mkdir(parents=True)
    (tmp_path / "models" / "wine" / "constant.onnx").write_bytes(onnx_constant(11, 4.0))
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "streamserve", "serve", "--codec", "json"),
            *("--models", str(tmp_path / "models"), "--http-port", "0"),
            *("--results", str(tmp_path / "results.jsonl")),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert server.stdin is not None
    assert server.stderr is not None
    try:
        match = wait_for_line(server.stderr, r"HTTP API on (http://\S+)")
        yield match.group(1), server.pid
    finally:
        server.stdin.close()  # the end of the data: the server stops
        assert server.wait(timeout=60) == 0
        server.stderr.close()


class WatchedBody:
    """2 GiB of body in 1 MiB chunks, checking the server's RSS every 16 MiB sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid)
        self.peak = self.baseline
        self.sent = 0

    def chunks(self) -> Iterator[bytes]:
        chunk = b"1" * MIB
        while self.sent < BODY_BYTES:
            if self.sent % (16 * MIB) == 0:
                self.check()
            self.sent += len(chunk)
            yield chunk

    def check(self) -> None:
        self.peak = max(self.peak, rss_bytes(self.pid))
        growth = self.peak - self.baseline
        assert growth < MAX_RSS_GROWTH, (
            f"the server grew by {growth / MIB:.0f} MiB after {self.sent / MIB:.0f} MiB of body"
        )


@pytest.mark.slow
def test_a_2_gib_chunked_body_is_refused_without_being_held(tmp_path: Path) -> None:
    with serving(tmp_path) as (url, pid), httpx.Client(base_url=url, timeout=60) as http:
        assert http.get("/v2/models/wine/ready").status_code == 200
        body = WatchedBody(pid)
        reply = http.post("/v2/models/wine/infer", content=body.chunks())
        body.check()
        after = http.post(
            "/v2/models/wine/infer",
            json={
                "inputs": [{"name": "in", "shape": [1, 11], "datatype": "FP64", "data": [1] * 11}]
            },
        )
    assert reply.status_code == 413
    assert "larger than 16777216 bytes (api.max_body_bytes)" in reply.json()["error"]
    assert body.sent < BODY_BYTES
    assert body.peak - body.baseline < MAX_RSS_GROWTH
    assert after.json()["outputs"][0]["data"] == [4.0]  # and the server goes on serving


@pytest.mark.slow
def test_a_2_gib_declared_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with serving(tmp_path) as (url, pid):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = WatchedBody(pid)
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(
                b"POST /v2/models/wine/infer HTTP/1.1\r\nHost: streamserve\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % BODY_BYTES
            )
            try:
                for chunk in body.chunks():
                    sock.sendall(chunk)  # until the server closes the connection
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = b""
            try:
                while data := sock.recv(65536):
                    reply += data
            except ConnectionResetError:
                pass
        body.check()
    head, _, answer = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert orjson.loads(answer)["error"].startswith(f"the request body is {BODY_BYTES} bytes")
    assert body.sent < BODY_BYTES
