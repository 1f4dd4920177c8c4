"""The one small ASGI app of a server: state, health, metrics, admin and V2 inference.

Built per server from a core and settings (nothing global), so two servers can share a process.
Admin actions need ``Authorization: Bearer <token>`` and are disabled unless a token is set.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamserve import __version__
from streamserve.api import v2
from streamserve.api.metrics import metrics_registry
from streamserve.api.state import keys_document, models_document, slot_document
from streamserve.errors import ConfigurationError, NothingToRollBackError
from streamserve.serving.core import ServingCore

Handler = Callable[[Request], Awaitable[Response]]


def json_response(document: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY),
        status,
        media_type="application/json",
    )


def error(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def build_app(
    core: ServingCore,
    *,
    admin_token: str | None = None,
    is_ready: Callable[[], bool] = lambda: True,
    consumer_lag: Callable[[], int | None] | None = None,
) -> Starlette:
    if admin_token is not None and not admin_token.strip():
        raise ConfigurationError("the admin token is empty: set a token, or none to disable admin")
    registry = metrics_registry(core, consumer_lag)

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        ok = is_ready() and core.loads_pending == 0
        return json_response({"ready": ok}, 200 if ok else 400)

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": "streamserve", "version": __version__, "extensions": []})

    async def model_metadata(request: Request) -> Response:
        return _v2(lambda: v2.model_metadata(core, request.path_params["name"]))

    async def model_ready(request: Request) -> Response:
        slot = core.find_slot(request.path_params["name"])
        ok = slot is not None and (slot.current or slot.staged) is not None
        return json_response({"name": request.path_params["name"], "ready": ok}, 200 if ok else 400)

    async def infer(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as err:
            return error(f"the request body is not JSON: {err}", 400)
        name = request.path_params["name"]
        return await run_in_threadpool(_v2, lambda: v2.infer(core, name, body))

    async def keys(request: Request) -> Response:
        return json_response(keys_document(core))

    async def key(request: Request) -> Response:
        slot = core.find_slot(request.path_params["key"])
        if slot is None:
            return error(f"no key {request.path_params['key']!r}", 404)
        return json_response(slot_document(slot))

    async def models(request: Request) -> Response:
        return json_response(models_document(core))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    admin = _admin_routes(core, admin_token)
    return Starlette(
        routes=[
            Route("/v2", server_metadata),
            Route("/v2/health/live", live),
            Route("/v2/health/ready", ready),
            Route("/v2/models/{name}", model_metadata),
            Route("/v2/models/{name}/ready", model_ready),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/keys", keys),
            Route("/keys/{key}", key),
            Route("/models", models),
            Route("/metrics", metrics),
            *admin,
        ]
    )


def _v2(call: Callable[[], dict[str, Any]]) -> Response:
    try:
        return json_response(call())
    except v2.V2Error as err:
        return error(str(err), err.status)


def _admin_routes(core: ServingCore, token: str | None) -> list[Route]:
    def guarded(action: Callable[[Any], Response]) -> Handler:
        async def handler(request: Request) -> Response:
            if token is None:
                return error("admin actions are disabled: no admin token is configured", 403)
            scheme, _, offered = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                offered.strip().encode(), token.encode()
            ):
                return error("admin actions need 'Authorization: Bearer <admin token>'", 401)
            slot = core.find_slot(request.path_params["key"])
            if slot is None:
                return error(f"no key {request.path_params['key']!r}", 404)
            return action(slot)

        return handler

    def rollback(slot: Any) -> Response:
        try:
            restored = slot.rollback()
        except NothingToRollBackError as err:
            return error(str(err), 409)
        return json_response(
            {
                "key": slot.key,
                "current": restored.identity.name,
                "version": restored.identity.version,
            }
        )

    def pin(slot: Any) -> Response:
        slot.pin(True)
        return json_response({"key": slot.key, "pinned": True})

    def unpin(slot: Any) -> Response:
        slot.pin(False)
        return json_response({"key": slot.key, "pinned": False})

    def unload(slot: Any) -> Response:
        core.unload(slot.key)
        return json_response({"key": slot.key, "unloaded": True})

    return [
        Route("/admin/keys/{key}/rollback", guarded(rollback), methods=["POST"]),
        Route("/admin/keys/{key}/pin", guarded(pin), methods=["POST"]),
        Route("/admin/keys/{key}/unpin", guarded(unpin), methods=["POST"]),
        Route("/admin/keys/{key}", guarded(unload), methods=["DELETE"]),
    ]
