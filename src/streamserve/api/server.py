"""Runs the HTTP API of a server on a background thread (uvicorn), beside its runtime."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable

import uvicorn

from streamserve.api.app import build_app
from streamserve.api.protocol import ConnectionLimits, limited_protocol
from streamserve.api.tls import tls_context
from streamserve.errors import InfrastructureError
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

STARTUP_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


class ApiServer:
    """The HTTP API of one core, served by uvicorn on a daemon thread beside the runtime.

    The settings' limits hold: open connections (beyond them, 503 and closed), the TLS handshake
    and request heads (arrival time; all three in
    :class:`~streamserve.api.protocol.LimitedProtocol`), request bodies (size and arrival time,
    see :class:`~streamserve.api.limits.BodyLimits`), and with certificate files the API speaks
    HTTPS only. Bad certificate files raise :class:`~streamserve.errors.ConfigurationError` here,
    before anything listens. :meth:`start` returns once the socket listens (port 0 takes a free
    port: read :attr:`port`). The core belongs to the runtime: stopping the server leaves it open.
    """

    def __init__(
        self,
        core: ServingCore,
        settings: ApiSettings,
        is_ready: Callable[[], bool],
        consumer_lag: Callable[[], int | None] | None = None,
    ) -> None:
        tls = tls_context(settings)
        token = settings.admin_token
        app = build_app(
            core,
            admin_token=None if token is None else token.get_secret_value(),
            settings=settings,
            is_ready=is_ready,
            consumer_lag=consumer_lag,
        )
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port or 0,
            log_level="warning",
            log_config=None,  # uvicorn's records go through streamserve's handler (text or JSON)
            lifespan="on",  # the dashboard's history samples while the app runs
            # TLS, the head deadline and the connection limit are the protocol's (uvicorn's own
            # limit_concurrency holds no connection back, and its TLS handshake takes 60 s).
            http=limited_protocol(
                ConnectionLimits(
                    head_timeout_s=settings.header_timeout_s,
                    max_connections=settings.max_connections,
                    tls=tls,
                )
            ),
            ws="none",  # no route takes a WebSocket
        )
        self._settings = settings
        self._scheme = "http" if tls is None else "https"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http-api", daemon=True)
        if token is not None and tls is None and not _is_loopback(settings.host):
            log.warning(
                "admin actions are enabled over plain HTTP on %s: the admin token crosses the "
                "network in clear text; set api.tls_certfile and api.tls_keyfile",
                settings.host,
            )

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

    @property
    def url(self) -> str:
        """The API's base URL, ``https`` when it speaks TLS."""
        host = self._settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{shown}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost is
    taken as reachable from elsewhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
