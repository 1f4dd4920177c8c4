"""The HTTP API under hostile or broken clients: bodies too large or too slow, heads trickled,
connections hoarded, and a model that overruns the scoring deadline.

A real server (uvicorn on a loopback port) over a live core; raw sockets where a stock client
would not misbehave as asked. The memory a huge body costs the server process is measured in
tests/e2e/test_http_body_limit.py, where the server runs alone in its own process.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import orjson
import pytest

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory

INFER = "/v2/models/wine/infer"
GIB = 1 << 30
WAIT_S = 60.0  # how long a test waits for what must happen (never asserted as a duration)


@contextmanager
def running(core: ServingCore, **limits: object) -> Iterator[ApiServer]:
    server = ApiServer(core, ApiSettings(port=0, **limits), lambda: True)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def infer_body(rows: int) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [rows, 11],
                    "datatype": "FP64",
                    "data": [0.5] * (rows * 11),
                }
            ]
        }
    )


def connect(server: ApiServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed:
    the server closed with the client's bytes unread)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def ask_live(sock: socket.socket) -> int:
    """The status of a liveness request on a kept-alive connection."""
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
    raw = b""
    while not raw.endswith(b'{"live":true}'):
        raw += sock.recv(65536)
    return response_of(raw)[0]


def response_of(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def test_a_body_declared_larger_than_the_limit_is_refused_before_it_is_read(
    core: ServingCore,
) -> None:
    core.submit_model(onnx_descriptor("m", onnx_constant(11, 1.0)))
    assert core.wait_for_models(60)
    with running(core, max_body_bytes=1 << 20) as server, connect(server) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {2 * GIB}\r\n\r\n".encode()
        )
        sock.sendall(b"[" * 65536)  # the first bytes of the 2 GiB; the rest never comes
        status, headers, body = response_of(read_until_closed(sock))
        with httpx.Client(base_url=server.url) as http:
            assert http.get("/v2/health/live").status_code == 200  # the server goes on
    assert status == 413
    assert headers["connection"] == "close"
    assert orjson.loads(body) == {
        "error": f"the request body is {2 * GIB} bytes (Content-Length); this server accepts "
        f"at most {1 << 20} (api.max_body_bytes)"
    }


def test_a_declared_oversized_body_is_refused_on_every_route(core: ServingCore) -> None:
    """A route that reads no body still refuses one declared too large (it is never read)."""
    with running(core, max_body_bytes=1000) as server, httpx.Client(base_url=server.url) as http:
        small = http.request("GET", "/keys", content=b"x" * 1000)
        large = http.request("GET", "/keys", content=b"x" * 1001)
        admin = http.post("/admin/keys/wine/pin", content=b"x" * 1001)
    assert small.status_code == 200
    assert (large.status_code, admin.status_code) == (413, 413)
    assert "api.max_body_bytes" in large.json()["error"]


def test_a_chunked_body_is_cut_off_at_the_limit(core: ServingCore) -> None:
    """A body without a Content-Length is counted as it is read and refused once past the
    limit: the client sees the 413, and never gets to send its 2 GiB."""
    sent = 0

    def two_gib() -> Iterator[bytes]:
        nonlocal sent
        chunk = b"0" * (1 << 20)
        for _ in range(2 * GIB // len(chunk)):
            sent += len(chunk)
            yield chunk

    with running(core, max_body_bytes=4 << 20) as server, httpx.Client(timeout=WAIT_S) as http:
        reply = http.post(f"{server.url}{INFER}", content=two_gib())
    assert reply.status_code == 413
    assert reply.headers["connection"] == "close"
    assert reply.json() == {
        "error": f"the request body is larger than {4 << 20} bytes (api.max_body_bytes); "
        "the rest of it was not read"
    }
    assert sent < 2 * GIB  # the server closed the connection: the client stopped sending


def test_a_body_of_exactly_the_limit_is_served(core: ServingCore) -> None:
    core.submit_model(onnx_descriptor("m", onnx_constant(11, 1.0)))
    assert core.wait_for_models(60)
    body = infer_body(100)
    with (
        running(core, max_body_bytes=len(body)) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        fits = http.post(INFER, content=body)
        chunked = http.post(INFER, content=iter([body[:100], body[100:]]))
        over = http.post(INFER, content=body + b" ")
        chunked_over = http.post(INFER, content=iter([body, b" "]))
    assert (fits.status_code, chunked.status_code) == (200, 200), fits.text
    assert fits.json()["outputs"][0]["data"] == [1.0] * 100
    assert (over.status_code, chunked_over.status_code) == (413, 413)


def test_a_trickled_body_is_cut_off_with_408(core: ServingCore) -> None:
    """Slowloris on the body: a byte now and then keeps no connection past api.body_timeout_s."""
    with running(core, body_timeout_s=1.0) as server, connect(server) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        answered = threading.Event()
        trickled = 0

        def trickle() -> None:
            nonlocal trickled
            while not answered.is_set() and trickled < 1000:
                try:
                    sock.sendall(b" ")
                except OSError:
                    return
                trickled += 1
                answered.wait(0.05)

        trickler = threading.Thread(target=trickle)
        trickler.start()
        raw = read_until_closed(sock)
        answered.set()
        trickler.join()
    status, headers, body = response_of(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert orjson.loads(body)["error"].startswith(
        "the request body did not arrive whole within 1 s (api.body_timeout_s)"
    )
    assert trickled < 1000  # cut off while the body was still coming


def test_a_trickled_or_missing_request_head_closes_the_connection(core: ServingCore) -> None:
    """Slowloris on the head: connections that never finish a request's line and headers are
    closed after api.header_timeout_s, so they cannot hoard the connection limit (503)."""
    with running(core, header_timeout_s=5.0, max_connections=2) as server:
        silent, trickling = connect(server), connect(server)
        trickling.sendall(b"GET /keys HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        with connect(server) as third:  # over the limit
            locked_out, _, _ = response_of(read_until_closed(third))
        assert read_until_closed(silent) == b""
        stopped = False
        while not stopped:  # the head never completes, however long the client trickles
            try:
                trickling.sendall(b"a")
                stopped = trickling.recv(1, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                time.sleep(0.05)
            except OSError:
                stopped = True
        silent.close()
        trickling.close()
        reply = _served_once_released(server)
    assert locked_out == 503
    assert reply.status_code == 200


def test_a_kept_alive_connection_serves_request_after_request(core: ServingCore) -> None:
    """The head deadline restarts after each response: a client on one connection is served
    as long as its requests come whole."""
    with (
        running(core, header_timeout_s=1.0) as server,
        connect(server) as sock,
    ):
        replies = []
        for _ in range(3):
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            raw = b""
            while not raw.endswith(b'{"live":true}'):
                raw += sock.recv(65536)
            replies.append(response_of(raw)[0])
    assert replies == [200, 200, 200]


def test_connections_beyond_the_limit_are_answered_503_and_closed(core: ServingCore) -> None:
    """security.md: api.max_connections protects file descriptors against connection floods.
    At most that many connections are held, silent ones included: each one beyond is answered
    503 with the reason and closed at once, and once connections close, new ones are served."""
    limit, flood = 4, 40
    with running(core, max_connections=limit, header_timeout_s=30.0) as server:
        held = [connect(server) for _ in range(limit)]
        assert [ask_live(sock) for sock in held] == [200] * limit  # served, and kept open
        refusals = []
        for _ in range(flood):  # silent: they would be held until the head deadline
            with connect(server) as sock:
                refusals.append(response_of(read_until_closed(sock)))
        for sock in held:
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):  # the connections within the limit stay open
                sock.recv(1)
        with httpx.Client(base_url=server.url) as http:
            refused = http.get("/v2/health/live")
        for sock in held:
            sock.close()
        served = _served_once_released(server)
    assert {status for status, _, _ in refusals} == {503}
    _, headers, body = refusals[0]
    assert headers["connection"] == "close"
    assert orjson.loads(body) == {
        "error": f"this server holds at most {limit} connections (api.max_connections); "
        "try again later"
    }
    assert refused.status_code == 503
    assert served.status_code == 200


def test_the_connection_limit_admits_exactly_that_many(core: ServingCore) -> None:
    """A limit of one serves one connection (its requests are not refused for itself)."""
    with running(core, max_connections=1) as server, connect(server) as sock:
        answers = [ask_live(sock), ask_live(sock)]
        with connect(server) as second:
            status, _, _ = response_of(read_until_closed(second))
    assert answers == [200, 200]
    assert status == 503


def _served_once_released(server: ApiServer) -> httpx.Response:
    """The first answer that is not a refusal (closed connections are released as the server
    notices them)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with httpx.Client(base_url=server.url) as http:
                reply = http.get("/v2/health/live")
            if reply.status_code != 503:
                return reply
        except httpx.TransportError:  # refused before the request was read
            pass
        assert time.monotonic() < deadline, "the closed connections were never released"
        time.sleep(0.05)


def test_a_model_overrunning_the_scoring_deadline_answers_504() -> None:
    """A V2 request whose model does not return within serving.scoring_deadline_s answers 504
    with the reason; the server goes on answering."""
    if "scoring_deadline_s" not in ServingSettings.model_fields:
        pytest.skip("serving.scoring_deadline_s does not exist yet (the scoring deadline)")
    hang, gate = threading.Event(), threading.Event()

    def score(rows: FloatMatrix) -> np.ndarray:
        if hang.is_set():
            gate.wait(600)  # stuck, as a model in native code would be
        return rows.sum(axis=1)

    registry = FactoryRegistry(FactoryContext())
    factory = FunctionFactory(score, width=11)
    registry.register(301, lambda context: factory)
    settings = ServingSettings(scoring_deadline_s=0.5)  # type: ignore[call-arg]
    try:
        with ServingCore(settings, registry) as core, running(core) as server:
            core.submit_model(
                ModelDescriptor(name="stuck", data_type="wine", model_type=301, data=b"x")
            )
            assert core.wait_for_models(60)
            hang.set()
            with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
                reply = http.post(INFER, content=infer_body(2))
                live = http.get("/v2/health/live")
    finally:
        gate.set()
    assert reply.status_code == 504, reply.text
    error = reply.json()["error"]
    assert error.startswith("model 'wine': ")
    assert "did not return within 0.5 s" in error
    assert live.status_code == 200


def test_a_malformed_request_head_is_refused_with_an_error_document(core: ServingCore) -> None:
    with running(core) as server, connect(server) as sock:
        sock.sendall(b"GET /keys HTTP/1.1\r\nHost: test\r\nX-Bad: a\x00b\r\n\r\n")
        status, headers, body = response_of(read_until_closed(sock))
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "malformed HTTP request" in orjson.loads(body)["error"]
