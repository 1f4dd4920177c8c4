"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on each request's head.

uvicorn bounds the idle time between requests (keep-alive) but not the time a request's line
and headers take to arrive: its keep-alive timer stops at the first byte, and no ASGI middleware
sees a request before its head is whole. A client that opens connections and trickles headers
(slowloris) would hold them, and with ``limit_concurrency`` lock every other client out (503).
Here a connection whose next request head is not whole within the deadline is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineProtocol(H11Protocol):
    """h11 protocol closing a connection whose request head (request line and headers) has not
    arrived whole ``head_timeout_s`` after the connection opened or the previous response
    ended. The body's own deadline is :class:`~streamserve.api.limits.BodyLimits`'."""

    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaited_after: object = None  # the request cycle the next head will follow

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._awaited_after:
            self._stop_waiting()  # a new request's head arrived: the app has it now

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()
        if self.cycle is answered and not self.transport.is_closing():
            self._await_head()  # (a pipelined request already parsed needs no deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self._awaited_after = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_overdue)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def head_deadline_protocol(head_timeout_s: float) -> type[HeadDeadlineProtocol]:
    """The protocol class for one server's deadline (uvicorn instantiates it per connection)."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout_s": head_timeout_s})
