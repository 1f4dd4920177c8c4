"""Runs the HTTP API of a server on a background thread (uvicorn), beside its runtime."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import uvicorn

from streamserve.api.app import build_app
from streamserve.errors import InfrastructureError
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

STARTUP_TIMEOUT_S = 30.0


class ApiServer:
    """The HTTP API of one core, served by uvicorn on a daemon thread beside the runtime.

    :meth:`start` returns once the socket listens (port 0 takes a free port: read :attr:`port`).
    The core belongs to the runtime: stopping the server leaves it open.
    """

    def __init__(
        self,
        core: ServingCore,
        settings: ApiSettings,
        is_ready: Callable[[], bool],
        consumer_lag: Callable[[], int | None] | None = None,
    ) -> None:
        app = build_app(
            core, admin_token=settings.admin_token, is_ready=is_ready, consumer_lag=consumer_lag
        )
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port or 0, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http-api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise InfrastructureError("the HTTP API did not start (is the port in use?)")
            time.sleep(0.01)

    @property
    def port(self) -> int:
        (server,) = self._server.servers
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
