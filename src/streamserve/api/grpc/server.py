"""Runs the Open Inference Protocol's gRPC service on a background thread, beside the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import grpc

from streamserve.api.grpc._generated.grpc_predict_v2_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from streamserve.api.grpc.service import InferenceServicer
from streamserve.api.inference import InferenceService
from streamserve.api.tls import tls_context
from streamserve.errors import InfrastructureError
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

STARTUP_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0  # RPCs in progress at a stop get this long to finish


class GrpcServer:
    """The gRPC API of one core (``inference.GRPCInferenceService``), served by grpc's asyncio
    server on a daemon thread with its own event loop, on ``api.grpc_port`` of ``api.host``.

    It shares the HTTP API's settings: with ``api.tls_certfile`` and ``api.tls_keyfile`` it
    speaks TLS only (and with ``api.tls_ca_certs`` requires client certificates); a message
    larger than ``api.max_body_bytes`` is refused (``RESOURCE_EXHAUSTED``) before it is read
    whole; ``api.inference_threads`` requests are scored at once; at most
    ``api.max_connections`` RPCs are in progress or waiting (one more: ``RESOURCE_EXHAUSTED``),
    which bounds the memory of received requests. Bad certificate files raise
    :class:`~streamserve.errors.ConfigurationError` here, before anything listens.
    :meth:`start` returns once the port listens (port 0 takes a free port: read :attr:`port`).
    The core belongs to the runtime: stopping the server leaves it open.
    """

    def __init__(
        self, core: ServingCore, settings: ApiSettings, is_ready: Callable[[], bool]
    ) -> None:
        self._credentials = _credentials(settings)
        self._settings = settings
        self._servicer = InferenceServicer(
            InferenceService(core, is_ready), settings.inference_threads
        )
        self._host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self._address = f"{self._host}:{settings.grpc_port or 0}"
        self._port: int | None = None
        self._failure: BaseException | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="grpc-api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(STARTUP_TIMEOUT_S) or self._port is None:
            raise InfrastructureError(
                f"the gRPC API did not start on {self._address}: {self._failure}"
            ) from self._failure

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gRPC API is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` where it listens, as gRPC clients are given it."""
        return f"{self._host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended: nothing to stop
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout=STOP_GRACE_S + 10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as err:  # noqa: BLE001 - reported by start(), which waits for it
            self._failure = err
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._settings.max_body_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is refused, not shared
            ],
            maximum_concurrent_rpcs=self._settings.max_connections,
        )
        add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        if self._credentials is None:
            port = server.add_insecure_port(self._address)
        else:
            port = server.add_secure_port(self._address, self._credentials)
        if not port:  # grpc says 0 for an address it could not bind (in use, not local)
            raise InfrastructureError(f"cannot listen on {self._address} (is the port in use?)")
        await server.start()
        self._port = port
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            await server.stop(STOP_GRACE_S)


def _credentials(settings: ApiSettings) -> Any:
    """The server's TLS credentials (``None`` without a certificate). The files are first
    loaded by :func:`~streamserve.api.tls.tls_context`, which names the setting of one that
    does not load, as it does for the HTTP API."""
    certfile, keyfile, ca = settings.tls_certfile, settings.tls_keyfile, settings.tls_ca_certs
    if tls_context(settings) is None or certfile is None or keyfile is None:
        return None
    return grpc.ssl_server_credentials(
        [(keyfile.read_bytes(), certfile.read_bytes())],
        root_certificates=None if ca is None else ca.read_bytes(),
        require_client_auth=ca is not None,
    )
