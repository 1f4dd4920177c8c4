"""Junk sent to the HTTP API's port must not flood the operator's log: connections beyond the
limit are logged once a minute with a count (api/protocol.py), and so must be requests whose
head h11 cannot parse (each one answers 400 ``{"error": ...}`` all the same)."""

from __future__ import annotations

import logging
import socket

import orjson
import pytest

from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

JUNK_CONNECTIONS = 50
MALFORMED = "Invalid HTTP request received."


def _send_junk(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"GARBAGE\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    return answer


def test_malformed_requests_are_answered_each_and_logged_once_a_minute(
    core: ServingCore, caplog: pytest.LogCaptureFixture
) -> None:
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        with caplog.at_level(logging.WARNING):
            answers = [_send_junk(server.port) for _ in range(JUNK_CONNECTIONS)]
    finally:
        server.stop()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), answer
        assert orjson.loads(body) == {"error": f"malformed HTTP request: {MALFORMED}"}
    logged = [record for record in caplog.records if MALFORMED in record.getMessage()]
    assert len(logged) <= 1, (
        f"{JUNK_CONNECTIONS} junk connections logged {len(logged)} warnings: anyone who can "
        "reach the port can flood the log"
    )
