"""What each route of the HTTP API takes and answers: the table the OpenAPI document is built from
(:mod:`streamserve.api.openapi`), one :class:`Operation` per route and method of the app.

Bodies and query parameters are the pydantic models of :mod:`streamserve.api.schemas`; a test
holds this table to the app's routes, both ways.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from streamserve.api import schemas

JSON = "application/json"
BINARY = "application/octet-stream"
V2 = "Open Inference Protocol"
STATE = "Serving state"
ADMIN = "Admin"
DASHBOARD = "Dashboard"
OPERATIONS_TAG = "Operations"
HEADER_LENGTH = "Inference-Header-Content-Length"

# What each error status means, wherever a route can answer it.
ERROR_MEANINGS = {
    400: "The request is malformed, or its rows cannot be scored by the model.",
    401: "No admin token, or the wrong one ('Authorization: Bearer <admin token>').",
    403: "Admin actions are disabled: the server has no admin token.",
    404: "No such key, model, version or file.",
    408: "The request body did not arrive whole within api.body_timeout_s.",
    409: "The key has no previous model to roll back to.",
    413: "The request body is larger than api.max_body_bytes.",
    500: "An unexpected failure in the server, which goes on serving.",
    503: "The server holds api.max_connections connections already; try again later.",
    504: "The model did not score the rows within serving.scoring_deadline_s.",
}
# Every route can answer these: the body limit holds for every request (a GET with a large
# Content-Length included), the connection limit for every connection.
EVERY_ROUTE_ERRORS = (413, 500, 503)

PATH_PARAMETERS = {
    "name": "The model name: the key (data type) whose current model answers.",
    "version": "The model version; another than the answering model's is not found (404).",
    "key": "The key (data type).",
    "path": "A file of the dashboard's assets.",
}


@dataclass(frozen=True)
class Reply:
    """An answer that is not an error: its status and body, a model's JSON or ``content``
    (media type to schema) for anything else, and the headers that come with it."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    content: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """One route and method of the API: what it takes, what it answers, the error statuses it
    can answer (those of every route added), and whether it needs the admin token."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    body_content: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    admin: bool = False
    description: str = ""


def _admin(path: str, method: str, operation_id: str, summary: str, reply: Reply) -> Operation:
    errors = (401, 403, 404, 409) if operation_id == "rollback" else (401, 403, 404)
    return Operation(method, path, operation_id, summary, ADMIN, (reply,), errors, admin=True)


def _versioned(operation: Operation) -> Operation:
    """The same operation on one version of the model: ``/v2/models/{name}/versions/{version}``."""
    head, _, tail = operation.path.partition("{name}")
    return replace(
        operation,
        path=f"{head}{{name}}/versions/{{version}}{tail}",
        operation_id=f"{operation.operation_id}_version",
        summary=f"{operation.summary}, of a version",
    )


DASHBOARD_OFF = Reply(
    404, "The dashboard is switched off (api.dashboard = false).", schemas.ErrorAnswer
)
BINARY_BODY = (
    "The binary tensor data extension: the JSON request (its length in the "
    f"{HEADER_LENGTH} header), then the binary data of each input whose "
    "parameters.binary_data_size gives its size, in the inputs' order: little-endian, "
    "row-major, without padding."
)
MODEL_METADATA = Operation(
    "GET",
    "/v2/models/{name}",
    "model_metadata",
    "Model metadata",
    V2,
    (Reply(200, "The key's answering model.", schemas.ModelMetadata),),
    (404,),
)
MODEL_READY = Operation(
    "GET",
    "/v2/models/{name}/ready",
    "model_ready",
    "Model ready",
    V2,
    (
        Reply(200, "The key has a model to answer with.", schemas.ModelReadyAnswer),
        Reply(400, "The key has no model to answer with.", schemas.ModelReadyAnswer),
    ),
)
MODEL_INFER = Operation(
    "POST",
    "/v2/models/{name}/infer",
    "model_infer",
    "Inference",
    V2,
    (
        Reply(
            200,
            "One output tensor 'value', one value per row: JSON, or with the binary tensor data "
            "extension (binary_data_output, or an output's binary_data) the JSON answer (its "
            f"length in {HEADER_LENGTH}) followed by the outputs' binary data.",
            schemas.InferenceResponse,
            content={BINARY: {"schema": {"type": "string", "contentMediaType": BINARY}}},
            headers={
                HEADER_LENGTH: {
                    "description": "The length of the JSON part of a binary answer.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        ),
    ),
    (400, 404, 408, 504),
    body=schemas.InferenceRequest,
    body_content={
        BINARY: {
            "schema": {"type": "string", "contentMediaType": BINARY, "description": BINARY_BODY}
        }
    },
    headers={
        HEADER_LENGTH: {
            "description": "The length of the body's JSON part, when binary tensor data follows.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    description="Scores the request's rows with the key's current model, as one batch "
    "(the stream's model: a swap changes both). A row the model cannot score refuses the "
    "whole request (400, naming the first such row).",
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/v2",
        "server_metadata",
        "Server metadata",
        V2,
        (Reply(200, "The server's name, version and extensions.", schemas.ServerMetadata),),
    ),
    Operation(
        "GET",
        "/v2/health/live",
        "server_live",
        "Server live",
        V2,
        (Reply(200, "The server runs.", schemas.LiveAnswer),),
    ),
    Operation(
        "GET",
        "/v2/health/ready",
        "server_ready",
        "Server ready",
        V2,
        (
            Reply(200, "The runtime serves.", schemas.ReadyAnswer),
            Reply(400, "The runtime does not serve yet.", schemas.ReadyAnswer),
        ),
        description="Ready once the models present at the runtime's start are loaded and "
        "records flow in; models arriving later load beside serving.",
    ),
    MODEL_METADATA,
    MODEL_READY,
    MODEL_INFER,
    _versioned(MODEL_METADATA),
    _versioned(MODEL_READY),
    _versioned(MODEL_INFER),
    Operation(
        "GET",
        "/keys",
        "list_keys",
        "A page of keys' state",
        STATE,
        (Reply(200, "A page of keys' models and statistics, and totals.", schemas.KeysState),),
        (400,),
        query=schemas.KeysQuery,
    ),
    Operation(
        "GET",
        "/keys/{key}",
        "get_key",
        "A key's state",
        STATE,
        (Reply(200, "The key's models, statistics and rejections.", schemas.SlotState),),
        (404,),
    ),
    Operation(
        "GET",
        "/models",
        "list_models",
        "Every model held",
        STATE,
        (Reply(200, "One entry per key and role.", schemas.ModelsList),),
    ),
    Operation(
        "GET",
        "/metrics",
        "metrics",
        "Prometheus metrics",
        OPERATIONS_TAG,
        (
            Reply(
                200,
                "The Prometheus text format.",
                content={"text/plain": {"schema": {"type": "string"}}},
            ),
        ),
    ),
    Operation(
        "GET",
        "/openapi.json",
        "openapi",
        "This document",
        OPERATIONS_TAG,
        (
            Reply(
                200,
                "The OpenAPI 3.1 document of this API.",
                content={JSON: {"schema": {"type": "object"}}},
            ),
        ),
    ),
    _admin(
        "/admin/keys/{key}/rollback",
        "POST",
        "rollback",
        "Make the previous model current again",
        Reply(200, "The model current again.", schemas.RollbackAnswer),
    ),
    _admin(
        "/admin/keys/{key}/pin",
        "POST",
        "pin",
        "Keep the current model serving; new models wait staged",
        Reply(200, "The key is pinned.", schemas.PinAnswer),
    ),
    _admin(
        "/admin/keys/{key}/unpin",
        "POST",
        "unpin",
        "Let a staged model become current at the next batch",
        Reply(200, "The key is not pinned.", schemas.PinAnswer),
    ),
    _admin(
        "/admin/keys/{key}",
        "DELETE",
        "unload",
        "Unload the key: its models, value type and positional order",
        Reply(200, "The key is unloaded.", schemas.UnloadAnswer),
    ),
    Operation(
        "GET",
        "/",
        "dashboard",
        "The dashboard page",
        DASHBOARD,
        (Reply(200, "The dashboard (api.dashboard).", content={"text/html": {}}), DASHBOARD_OFF),
    ),
    Operation(
        "GET",
        "/dashboard/summary",
        "dashboard_summary",
        "What the dashboard shows",
        DASHBOARD,
        (
            Reply(200, "Totals, history, timeline and top keys.", schemas.DashboardSummary),
            DASHBOARD_OFF,
        ),
        (400,),
        query=schemas.SummaryQuery,
    ),
    Operation(
        "GET",
        "/dashboard/assets/{path}",
        "dashboard_asset",
        "A file of the dashboard",
        DASHBOARD,
        (
            Reply(200, "The file, whole (a Range header is ignored).", content={"*/*": {}}),
            Reply(304, "The file has not changed since the ETag sent in If-None-Match."),
        ),
        (404,),
        description="Answered with 'Cache-Control: no-cache': a browser revalidates the file "
        "at every load, so that a page never runs a script older than itself.",
    ),
)
