"""The one small ASGI app of a server: state, health, metrics, admin and V2 inference.

Built per server from a core and settings (nothing global), so two servers can share a process.
Routes raise errors of the tree; the exception handlers here are the one place that gives them
HTTP statuses. Every failure answers ``{"error": message}``: a refused request with its 4xx
status, a model that overran the scoring deadline with 504, an unexpected exception with 500
(the server logs it and keeps serving). A body that is too large or too slow is refused by
:class:`~streamserve.api.limits.BodyLimits` around the routes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from http import HTTPStatus

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamserve.api.dashboard import key_pages_and_dashboard
from streamserve.api.endpoints import Endpoints, OrjsonResponse
from streamserve.api.limits import BodyLimits
from streamserve.api.openapi import openapi_endpoint
from streamserve.errors import (
    AccessDeniedError,
    InvalidRequestError,
    NotAuthenticatedError,
    NotFoundError,
    NothingToRollBackError,
    RequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    ScoringTimeoutError,
)
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

# The status of each refused request: its class's nearest ancestor here wins.
REQUEST_ERROR_STATUS: dict[type[RequestError], HTTPStatus] = {
    RequestError: HTTPStatus.BAD_REQUEST,
    InvalidRequestError: HTTPStatus.BAD_REQUEST,
    NotAuthenticatedError: HTTPStatus.UNAUTHORIZED,
    AccessDeniedError: HTTPStatus.FORBIDDEN,
    NotFoundError: HTTPStatus.NOT_FOUND,
    NothingToRollBackError: HTTPStatus.CONFLICT,
    RequestTooLargeError: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    RequestTimeoutError: HTTPStatus.REQUEST_TIMEOUT,
}
# Refusals that leave a request body unread: the connection closes, or uvicorn would go on
# reading (and discarding) whatever the client sends next.
CLOSING_ERRORS = (RequestTooLargeError, RequestTimeoutError)
CLOSE = {"connection": "close"}


def build_app(
    core: ServingCore,
    *,
    admin_token: str | None = None,
    settings: ApiSettings | None = None,
    is_ready: Callable[[], bool] = lambda: True,
    consumer_lag: Callable[[], int | None] | None = None,
) -> Starlette:
    """The HTTP API over ``core``; admin actions need ``admin_token`` (``None``: disabled).
    ``settings`` gives the request limits (default: :class:`ApiSettings`' defaults)."""
    limits = settings or ApiSettings()
    key_pages, dashboard = key_pages_and_dashboard(core, limits, consumer_lag)
    endpoints = Endpoints(
        core,
        admin_token=admin_token,
        is_ready=is_ready,
        consumer_lag=consumer_lag,
        inference_threads=limits.inference_threads,
        metrics=limits.metrics,
        key_pages=key_pages,
    )
    body_limits = Middleware(
        BodyLimits,
        max_body_bytes=limits.max_body_bytes,
        body_timeout_s=limits.body_timeout_s,
        refuse=refusal,
    )
    return Starlette(
        routes=[*_routes(endpoints), *(dashboard.routes() if dashboard else [])],
        middleware=[body_limits],
        lifespan=dashboard.lifespan if dashboard else None,
        exception_handlers={
            RequestError: refused,
            HTTPException: refused,  # Starlette's own: no such route, a method not allowed
            ScoringTimeoutError: timed_out,
            Exception: failed,
        },
    )


# The words a route puts after a key: no segment of a key after its first may be one of them, so
# that "/v2/models/a/b/ready" is key "a/b"'s readiness and never key "a/b/ready"'s metadata.
ROUTE_WORDS = ("ready", "infer", "versions", "rollback", "pin", "unpin")


class KeyConvertor(Convertor[str]):
    """A key in a route's path: it may hold "/" (a client sends it as %2F, which the server
    decodes before routing), but no segment after its first may be a word of ``ROUTE_WORDS``."""

    regex = rf"[^/]+(?:/(?!(?:{'|'.join(ROUTE_WORDS)})(?:/|$))[^/]*)*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def _routes(endpoints: Endpoints) -> list[Route]:
    register_url_convertor("key", KeyConvertor())  # by name, as Starlette's own; idempotent
    return [
        Route("/v2", endpoints.server_metadata),
        Route("/v2/health/live", endpoints.live),
        Route("/v2/health/ready", endpoints.ready),
        # Most specific first: a key may hold "/" (sent as %2F), see KeyConvertor.
        Route("/v2/models/{name:key}/versions/{version}/infer", endpoints.infer, methods=["POST"]),
        Route("/v2/models/{name:key}/versions/{version}/ready", endpoints.model_ready),
        Route("/v2/models/{name:key}/versions/{version}", endpoints.model_metadata),
        Route("/v2/models/{name:key}/infer", endpoints.infer, methods=["POST"]),
        Route("/v2/models/{name:key}/ready", endpoints.model_ready),
        Route("/v2/models/{name:key}", endpoints.model_metadata),
        Route("/keys", endpoints.keys),
        Route("/keys/{key:path}", endpoints.key),  # a key may hold "/" (sent as %2F)
        Route("/models", endpoints.models),
        Route("/metrics", endpoints.metrics),
        Route("/openapi.json", openapi_endpoint),
        Route("/admin/keys/{key:key}/rollback", endpoints.rollback, methods=["POST"]),
        Route("/admin/keys/{key:key}/pin", endpoints.pin, methods=["POST"]),
        Route("/admin/keys/{key:key}/unpin", endpoints.unpin, methods=["POST"]),
        Route("/admin/keys/{key:key}", endpoints.unload, methods=["DELETE"]),
    ]


def status_of(error: RequestError) -> HTTPStatus:
    """The status that answers a refused request (see ``REQUEST_ERROR_STATUS``)."""
    for cls in type(error).__mro__:
        status = REQUEST_ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return HTTPStatus.BAD_REQUEST  # unreachable: RequestError is in the table


def error_response(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return OrjsonResponse({"error": message}, status, headers)


def refusal(error: RequestError) -> Response:
    """The answer to a refused request: its status, and its reason as ``{"error": ...}``."""
    headers = CLOSE if isinstance(error, CLOSING_ERRORS) else None
    return error_response(str(error), status_of(error), headers)


async def refused(request: Request, exc: Exception) -> Response:
    """A request refused by a route (an error of the tree) or by Starlette's routing."""
    if isinstance(exc, HTTPException):
        return error_response(exc.detail, exc.status_code, exc.headers)
    if isinstance(exc, RequestError):
        return refusal(exc)
    return await failed(request, exc)


async def timed_out(request: Request, exc: Exception) -> Response:
    """A model that did not score a request's rows within the scoring deadline: 504, the
    server's own time limit (the request itself may be fine)."""
    return error_response(str(exc), HTTPStatus.GATEWAY_TIMEOUT)


async def failed(request: Request, exc: Exception) -> Response:
    """An exception no route expected: a 500 that says where and what.

    Starlette raises the exception on after this answer, so the ASGI server logs it with its
    traceback and goes on serving; uvicorn also closes the connection then, which the answer
    announces, so that a keep-alive client does not send its next request into a closed socket.
    """
    message = f"internal error in {request.method} {request.url.path}: {type(exc).__name__}: {exc}"
    return error_response(message, HTTPStatus.INTERNAL_SERVER_ERROR, CLOSE)
