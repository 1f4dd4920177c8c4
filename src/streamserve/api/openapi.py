"""The HTTP API's OpenAPI 3.1 document, built from the operations table
(:mod:`streamserve.api.operations`) and the body models (:mod:`streamserve.api.schemas`); served
at ``/openapi.json`` and checked in as docs/openapi.json.

After changing a route or a body model, regenerate the checked-in copy (a test compares them)::

    python -m streamserve.api.openapi > docs/openapi.json
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema
from starlette.requests import Request
from starlette.responses import Response

from streamserve import __version__
from streamserve.api import schemas
from streamserve.api.operations import (
    ERROR_MEANINGS,
    EVERY_ROUTE_ERRORS,
    JSON,
    OPERATIONS,
    PATH_PARAMETERS,
    Operation,
)

REGENERATE = "python -m streamserve.api.openapi > docs/openapi.json"
ADMIN_SCHEME = "adminToken"
REF = "#/components/schemas/{model}"
DESCRIPTION = (
    "streamserve serves machine-learning models on streams; this API reads the live serving "
    "state, scores requests in the Open Inference Protocol (KServe V2) with the stream's models, "
    "and takes admin actions. Every refused or failed request answers "
    '`{"error": "<reason>"}` with its status. Admin actions need '
    "`Authorization: Bearer <admin token>` (`api.admin_token`)."
)


class ComponentSchema(GenerateJsonSchema):
    """pydantic's JSON Schema without what a reader of the document does not need: the titles
    pydantic derives from field names, and ``default: null`` of fields a body may leave out."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> dict[str, Any]:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) is None:
            del json_schema["default"]
        return json_schema


def openapi_document(operations: Iterable[Operation] = OPERATIONS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``, their body models as components."""
    operations = tuple(operations)
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamserve HTTP API",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": {
            "schemas": _component_schemas(operations),
            "securitySchemes": {
                ADMIN_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (api.admin_token); without one configured, "
                    "admin actions answer 403.",
                }
            },
        },
    }


@functools.cache
def openapi_json() -> bytes:
    """The document as served and checked in: indented, one trailing newline."""
    return orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2) + b"\n"


async def openapi_endpoint(request: Request) -> Response:
    """``GET /openapi.json``."""
    return Response(openapi_json(), media_type=JSON)


def _component_schemas(operations: tuple[Operation, ...]) -> dict[str, Any]:
    """The body models' JSON Schemas: requests as validated, answers as serialized. One
    generation per mode, so that a model both use (tensor data) keeps one name."""
    asked = {op.body for op in operations if op.body is not None}
    answered = {reply.model for op in operations for reply in op.replies if reply.model}
    modes: list[tuple[set[type[BaseModel]], JsonSchemaMode]] = [
        (asked, "validation"),
        ({schemas.ErrorAnswer, *answered}, "serialization"),
    ]
    definitions: dict[str, Any] = {}
    for models, mode in modes:
        for name, definition in _definitions(models, mode).items():
            if definitions.setdefault(name, definition) != definition:
                raise ValueError(f"the component {name!r} differs between requests and answers")
    return dict(sorted(definitions.items()))


def _definitions(models: set[type[BaseModel]], mode: JsonSchemaMode) -> dict[str, Any]:
    ordered = sorted(models, key=lambda model: model.__name__)
    _, top = models_json_schema(
        [(model, mode) for model in ordered], ref_template=REF, schema_generator=ComponentSchema
    )
    definitions: dict[str, Any] = top.get("$defs", {})
    for definition in definitions.values():
        definition.pop("title", None)  # the component's name says it
    return definitions


def _operation(operation: Operation) -> dict[str, Any]:
    described: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    if operation.description:
        described["description"] = operation.description
    parameters = [_path_parameter(name) for name in _path_parameter_names(operation.path)]
    if operation.query is not None:
        parameters += _query_parameters(operation.query)
    parameters += [
        {"name": name, "in": "header", **header} for name, header in operation.headers.items()
    ]
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        content = {JSON: {"schema": _ref(operation.body)}, **operation.body_content}
        described["requestBody"] = {"required": True, "content": content}
    if operation.admin:
        described["security"] = [{ADMIN_SCHEME: []}]
    described["responses"] = _responses(operation)
    return described


def _responses(operation: Operation) -> dict[str, Any]:
    responses: dict[int, Any] = {}
    for reply in operation.replies:
        content = {JSON: {"schema": _ref(reply.model)}} if reply.model is not None else {}
        responses[reply.status] = {
            "description": reply.description,
            "content": {**content, **reply.content},
        }
        if reply.headers:
            responses[reply.status]["headers"] = dict(reply.headers)
    for status in sorted({*operation.errors, *EVERY_ROUTE_ERRORS} - responses.keys()):
        responses[status] = {
            "description": ERROR_MEANINGS[status],
            "content": {JSON: {"schema": _ref(schemas.ErrorAnswer)}},
        }
    return {str(status): responses[status] for status in sorted(responses)}


def _path_parameter_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _path_parameter(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": PATH_PARAMETERS[name],
        "schema": {"type": "string", "minLength": 1},
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One query parameter per field of ``model``, its schema the field's."""
    schema = model.model_json_schema(ref_template=REF, schema_generator=ComponentSchema)
    required = set(schema.get("required", []))
    parameters = []
    for name, field_schema in schema["properties"].items():
        field_schema = dict(field_schema)
        description = field_schema.pop("description", None)
        if "$ref" in field_schema:  # an enum: inline it, a query parameter is a plain value
            named = schema["$defs"][field_schema.pop("$ref").rsplit("/", 1)[1]]
            field_schema = {**named, **field_schema}
            field_schema.pop("title", None)
            field_schema.pop("description", None)
        parameter = {"name": name, "in": "query", "required": name in required}
        if description:
            parameter["description"] = description
        parameters.append({**parameter, "schema": field_schema})
    return parameters


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def main() -> None:
    """Writes the document to stdout: ``python -m streamserve.api.openapi > docs/openapi.json``."""
    sys.stdout.buffer.write(openapi_json())


if __name__ == "__main__":
    main()
