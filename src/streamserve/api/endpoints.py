"""The routes of the HTTP API over one core, one method each (the app wires them to paths).

A route answers a JSON document, or raises an error of the tree (:mod:`streamserve.errors`);
the app's exception handlers turn the error into its status and ``{"error": message}``, so no
route deals with statuses of failure itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from streamserve.api import v2
from streamserve.api.inference import InferenceService
from streamserve.api.metrics import metrics_registry
from streamserve.api.state import KeyPages, models_document, slot_document
from streamserve.errors import (
    AdminDisabledError,
    ConfigurationError,
    InvalidRequestError,
    KeyNotFoundError,
    NotAuthenticatedError,
)
from streamserve.logs import log_admin_action
from streamserve.serving.core import ServingCore
from streamserve.serving.slot import ModelSlot
from streamserve.settings import MetricsSettings, admin_token_problem


class OrjsonResponse(JSONResponse):
    """A JSON response rendered by orjson, which also serializes numpy values."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Endpoints:
    """The HTTP API's routes over one core: the serving state, health, Prometheus metrics, the
    Open Inference Protocol and admin actions.

    Admin actions need ``Authorization: Bearer <admin token>`` (compared in constant time) and
    are refused to everyone when no token is set; an empty or weak token is a configuration
    error. At most ``inference_threads`` V2 requests are parsed and scored at once: a parsed
    request takes about ten times its body's size in memory, so this bounds what they hold.
    """

    def __init__(
        self,
        core: ServingCore,
        *,
        admin_token: str | None = None,
        is_ready: Callable[[], bool] = lambda: True,
        consumer_lag: Callable[[], int | None] | None = None,
        inference_threads: int = 2,
        metrics: MetricsSettings | None = None,
        key_pages: KeyPages | None = None,
    ) -> None:
        problem = None if admin_token is None else admin_token_problem(admin_token)
        if problem is not None:
            kind = "empty" if not admin_token else "too weak"
            raise ConfigurationError(
                f"the admin token is {kind}: {problem}; or set none to disable admin actions"
            )
        self._core = core
        self._inference = InferenceService(core, is_ready)
        self._admin_token = None if admin_token is None else admin_token.encode()
        self._is_ready = is_ready
        self._registry = metrics_registry(core, consumer_lag, metrics)
        self._scrapes = anyio.CapacityLimiter(1)  # a scrape is one pass over every key
        self._inference_limiter = anyio.CapacityLimiter(inference_threads)
        self._key_pages = key_pages or KeyPages(core)

    # --- Open Inference Protocol -------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        metadata = self._inference.server_metadata()
        return OrjsonResponse(
            {"name": metadata.name, "version": metadata.version, "extensions": metadata.extensions}
        )

    async def live(self, request: Request) -> Response:
        return OrjsonResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        """Ready once the runtime says so: the models present at its start are loaded (a restart
        rebuilds them before serving) and records flow in. Models arriving later load beside
        serving (contract 2), so they never make a serving replica unready."""
        ok = self._is_ready()
        return OrjsonResponse({"ready": ok}, 200 if ok else 400)

    async def model_metadata(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")
        return OrjsonResponse(v2.metadata_document(self._inference.model_metadata(name, version)))

    async def model_ready(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version", "")
        ok = self._inference.model_ready(name, version)
        return OrjsonResponse({"name": name, "ready": ok}, 200 if ok else 400)

    async def infer(self, request: Request) -> Response:
        """Parses and scores on a worker thread, ``inference_threads`` at a time: a batch must
        not hold up the event loop, and parsed requests must not pile up in memory. The body
        is JSON, or JSON and binary tensor data (the binary tensor data extension, see
        :mod:`streamserve.api.v2`); so is the answer."""
        body = await request.body()  # BodyLimits bounds it; read whole, so nothing is left over
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise InvalidRequestError(
                f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
            )
        name, version = request.path_params["name"], request.path_params.get("version", "")
        arguments = (name, version, body, request.headers.get(v2.HEADER_LENGTH))
        content, json_length = await anyio.to_thread.run_sync(
            self._parse_and_score, *arguments, limiter=self._inference_limiter
        )
        if json_length is None:
            return Response(content, media_type="application/json")
        headers = {v2.HEADER_LENGTH: str(json_length)}
        return Response(content, media_type=v2.BINARY_CONTENT_TYPE, headers=headers)

    def _parse_and_score(
        self, name: str, version: str, body: bytes, header_length: str | None
    ) -> tuple[bytes, int | None]:
        document, binary = v2.parse_body(body, header_length)
        request, encoding = v2.decode_request(name, document, binary, version)
        return v2.encode_response(self._inference.infer(request), encoding)

    # --- serving state -----------------------------------------------------------------------
    async def keys(self, request: Request) -> Response:
        """A page of keys (:class:`~streamserve.api.state.KeysQuery` gives the parameters),
        made on a worker thread: ordering many keys must not hold up the event loop."""
        params = dict(request.query_params)
        return OrjsonResponse(await anyio.to_thread.run_sync(self._key_pages.document, params))

    async def key(self, request: Request) -> Response:
        return OrjsonResponse(slot_document(self._slot(request)))

    async def models(self, request: Request) -> Response:
        return OrjsonResponse(models_document(self._core))

    async def metrics(self, request: Request) -> Response:
        """Collected on a worker thread, one scrape at a time: with many keys its pass over
        them must not hold up the event loop (V2 requests, health probes)."""
        body = await anyio.to_thread.run_sync(
            generate_latest, self._registry, limiter=self._scrapes
        )
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # --- admin -------------------------------------------------------------------------------
    async def rollback(self, request: Request) -> Response:
        slot = self._admin_slot(request)
        restored = slot.rollback()
        identity = restored.identity
        log_admin_action("rollback", slot.key, identity.name, identity.version)
        return OrjsonResponse(
            {"key": slot.key, "current": identity.name, "version": identity.version}
        )

    async def pin(self, request: Request) -> Response:
        slot = self._admin_slot(request)
        slot.pin(True)
        log_admin_action("pin", slot.key)
        return OrjsonResponse({"key": slot.key, "pinned": True})

    async def unpin(self, request: Request) -> Response:
        slot = self._admin_slot(request)
        slot.pin(False)
        log_admin_action("unpin", slot.key)
        return OrjsonResponse({"key": slot.key, "pinned": False})

    async def unload(self, request: Request) -> Response:
        slot = self._admin_slot(request)
        self._core.unload(slot.key)
        return OrjsonResponse({"key": slot.key, "unloaded": True})

    def _admin_slot(self, request: Request) -> ModelSlot:
        """The slot an admin action is about, once the caller proved to hold the admin token."""
        if self._admin_token is None:
            raise AdminDisabledError("admin actions are disabled: no admin token is configured")
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            offered.strip().encode(), self._admin_token
        ):
            raise NotAuthenticatedError("admin actions need 'Authorization: Bearer <admin token>'")
        return self._slot(request)

    def _slot(self, request: Request) -> ModelSlot:
        key = request.path_params["key"]
        slot = self._core.find_slot(key)
        if slot is None:
            raise KeyNotFoundError(f"no key {key!r}")
        return slot
