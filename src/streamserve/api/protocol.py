"""uvicorn's HTTP/1.1 protocol (h11), holding each connection to the API's connection limits.

uvicorn alone bounds the idle time between requests (keep-alive), and nothing else a silent or
slow client can hold:

* The time a request's line and headers take to arrive: its keep-alive timer stops at the first
  byte, and no ASGI middleware sees a request before its head is whole (slowloris).
* The TLS handshake: asyncio gives it 60 s, and uvicorn does not let that be set.
* The number of connections: ``limit_concurrency`` answers *requests* 503, but every connection
  is accepted and held, silent ones included, so a flood still takes the process's file
  descriptors.

Here a connection must finish its TLS handshake and its first request head within the head
deadline of being accepted, and each later head within the deadline of the previous response
ending; a connection accepted while the limit's worth are open (or as many requests are still
being answered) is answered 503 and closed at once. TLS is therefore started here, with
``loop.start_tls`` and its handshake timeout, rather than by uvicorn's listening socket.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_S = 60.0
CONNECTIONS_LOG = "uvicorn.error.connections"
MALFORMED_REQUEST = "Invalid HTTP request received."  # uvicorn's warning, one per request


class MalformedRequests(logging.Filter):
    """Lets uvicorn's warning about a request head h11 cannot parse through once every
    ``interval_s``, saying how many were held back meanwhile: junk sent to the port must not
    flood the log (each such request is still answered 400). Other records pass."""

    def __init__(self, interval_s: float = REFUSAL_LOG_INTERVAL_S) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._held = 0
        self._logged_at: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != MALFORMED_REQUEST:
            return True
        now = time.monotonic()
        if self._logged_at is not None:
            if now - self._logged_at < self._interval_s:
                self._held += 1
                return False
            if self._held:
                record.msg = (
                    f"{MALFORMED_REQUEST} (and {self._held} more in the last "
                    f"{now - self._logged_at:.0f} s, not logged)"
                )
        self._held, self._logged_at = 0, now
        return True


def connections_log() -> logging.Logger:
    """The logger uvicorn's protocol logs a server's connections with: a child of its own,
    malformed requests held to one warning a minute (:class:`MalformedRequests`) for the
    process, whose log they would flood."""
    logger = logging.getLogger(CONNECTIONS_LOG)
    if not any(isinstance(held, MalformedRequests) for held in logger.filters):
        logger.addFilter(MalformedRequests())
    return logger


@dataclass
class ConnectionLimits:
    """One server's connection limits, and what its protocol instances share to keep them."""

    head_timeout_s: float
    max_connections: int
    tls: ssl.SSLContext | None = None
    handshaking: set[LimitedProtocol] = field(default_factory=set)
    refused: int = 0  # since the last warning
    warned_at: float | None = None
    log: logging.Logger = field(default_factory=connections_log)


class LimitedProtocol(H11Protocol):
    """h11 protocol of one server (see :func:`limited_protocol`): refuses a connection beyond
    ``max_connections`` (503 and closed; over TLS closed before its handshake), does the TLS
    handshake itself within the head deadline, and closes a connection whose request head has
    not arrived whole ``head_timeout_s`` after the connection was accepted or the previous
    response ended. The body's own deadline is :class:`~streamserve.api.limits.BodyLimits`'."""

    limits: ConnectionLimits  # the server's: set by limited_protocol()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = self.limits.log
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaited_after: object = None  # the request cycle the next head will follow
        self._accepted_at = self.loop.time()
        self._handshake: asyncio.Task[None] | None = None
        self._serving = False  # h11 has the connection (after the TLS handshake, if any)
        self._early: list[bytes] = []  # what came before h11 had the connection
        self._early_eof = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._accepted_at = self.loop.time()
        if self._full():
            self._refuse(transport)
        elif self.limits.tls is None:
            self._serve(transport)
        else:
            transport.pause_reading()  # start_tls takes the socket over from here
            self.limits.handshaking.add(self)
            self._handshake = self.loop.create_task(self._start_tls(transport, self.limits.tls))

    def data_received(self, data: bytes) -> None:
        if not self._serving:
            # The TLS layer can pass on a request that came with the handshake's last bytes
            # before start_tls returns the transport to _start_tls.
            self._early.append(data)
            return
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._awaited_after:
            self._stop_waiting()  # a new request's head arrived: the app has it now

    def eof_received(self) -> None:
        if not self._serving:
            self._early_eof = True
            return
        super().eof_received()

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()
        if self.cycle is answered and not self.transport.is_closing():
            self._await_head(self.limits.head_timeout_s)  # (a pipelined request needs none)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._serving:  # refused, or lost before start_tls took the socket over
            self.limits.handshaking.discard(self)
            if self._handshake is not None:
                self._handshake.cancel()
            return
        self._stop_waiting()
        super().connection_lost(exc)

    def _full(self) -> bool:
        """Whether the connections open (TLS handshakes included), or the requests still being
        answered (one whose client left runs until its model returns), are at the limit."""
        opened = len(self.connections) + len(self.limits.handshaking)
        return max(opened, len(self.tasks)) >= self.limits.max_connections

    def _refuse(self, transport: asyncio.Transport) -> None:
        if self.limits.tls is None:  # over TLS nothing can be said before a handshake
            transport.write(self._busy_response())
        transport.close()
        limits = self.limits
        limits.refused += 1
        now = self.loop.time()
        if limits.warned_at is None or now - limits.warned_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning(
                "the HTTP API refused %d connection(s) beyond api.max_connections (%d)",
                limits.refused,
                limits.max_connections,
            )
            limits.refused, limits.warned_at = 0, now

    def _busy_response(self) -> bytes:
        body = orjson.dumps(
            {
                "error": f"this server holds at most {self.limits.max_connections} connections "
                "(api.max_connections); try again later"
            }
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        return head.encode() + body

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (a malformed head) answers ``{"error": ...}`` as every
        other refusal does, where uvicorn would answer plain text."""
        body = orjson.dumps({"error": f"malformed HTTP request: {msg}"})
        head = (
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            left = self._left()
            if left <= 0:
                raw.close()
                return
            transport = await self.loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=left
            )
        except OSError:  # refused, overdue or dropped (ssl.SSLError is one): the socket is closed
            return
        finally:
            self.limits.handshaking.discard(self)
        if transport is not None:  # (start_tls returns None only on a closed loop)
            self._serve(transport)

    def _serve(self, transport: asyncio.Transport) -> None:
        self._serving = True
        super().connection_made(transport)
        self._await_head(self._left())
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._early_eof:
            self.eof_received()

    def _left(self) -> float:
        """What is left of the first head's deadline, which runs from the accept."""
        return self.limits.head_timeout_s - (self.loop.time() - self._accepted_at)

    def _await_head(self, within_s: float) -> None:
        self._stop_waiting()
        self._awaited_after = self.cycle
        self._head_timer = self.loop.call_later(within_s, self._head_overdue)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def limited_protocol(limits: ConnectionLimits) -> type[LimitedProtocol]:
    """The protocol class of one server (uvicorn instantiates it per connection)."""
    return type("LimitedProtocol", (LimitedProtocol,), {"limits": limits})
