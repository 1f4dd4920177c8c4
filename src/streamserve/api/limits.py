"""How large a request body may be, and how long it may take to arrive: an ASGI middleware.

uvicorn reads a body only as fast as the app asks for it (past 64 KiB it stops reading the
socket until the app calls ``receive``), so counting what the app receives bounds what the
server holds. A body declared larger than the limit is refused before a byte of it is read; a
chunked one is cut off as it crosses the limit. Either way the answer closes the connection:
otherwise uvicorn would read the rest of the body (to discard it) for as long as a client sends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamserve.errors import RequestError, RequestTimeoutError, RequestTooLargeError


class BodyLimits:
    """ASGI middleware refusing a request body larger than ``max_body_bytes`` (413) or slower
    to arrive whole than ``body_timeout_s`` from the request's head (408).

    A declared ``Content-Length`` over the limit is answered at once by ``refuse``, without
    calling the app; anything found while the app reads the body is raised from ``receive`` as
    an error of the tree, for the app's exception handlers to answer.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        refuse: Callable[[RequestError], Response],
    ) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self._max_body_bytes:
            error = RequestTooLargeError(
                f"the request body is {declared} bytes (Content-Length); this server accepts "
                f"at most {self._max_body_bytes} (api.max_body_bytes)"
            )
            await self._refuse(error)(scope, receive, send)
            return
        await self._app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Callable[[], Awaitable[Message]]:
        """``receive``, counting the body's bytes and holding it to the body's deadline."""
        deadline = anyio.current_time() + self._body_timeout_s
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # past the body: waiting for a disconnect is no body read
                return await receive()
            try:
                with anyio.fail_after(max(deadline - anyio.current_time(), 0.0)):
                    message = await receive()
            except TimeoutError as err:
                raise RequestTimeoutError(
                    f"the request body did not arrive whole within {self._body_timeout_s:g} s "
                    f"(api.body_timeout_s); {received} bytes came"
                ) from err
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self._max_body_bytes:
                    raise RequestTooLargeError(
                        f"the request body is larger than {self._max_body_bytes} bytes "
                        "(api.max_body_bytes); the rest of it was not read"
                    )
            return message

        return limited_receive


def _content_length(scope: Scope) -> int | None:
    """The declared body size; h11 has already refused a malformed one, chunked has none."""
    value = Headers(scope=scope).get("content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
