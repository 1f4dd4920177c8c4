"""The OpenAPI document: valid OpenAPI 3.1, the one checked in, served, and covering every route."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson
from openapi_spec_validator import validate
from starlette.routing import BaseRoute, Mount, Route

from streamserve.api import schemas, tensors
from streamserve.api.app import build_app
from streamserve.api.openapi import OPERATIONS, REGENERATE, openapi_document, openapi_json
from streamserve.api.server import ApiServer
from streamserve.api.state import KEY_SORTS
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

CHECKED_IN = Path(__file__).parents[2] / "docs" / "openapi.json"
CONVERTER = re.compile(r"\{(\w+):\w+\}")
HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE"}  # HEAD: with GET


def test_the_checked_in_document_is_the_generated_one() -> None:
    assert CHECKED_IN.read_bytes() == openapi_json(), (
        f"docs/openapi.json is out of date: regenerate it with `{REGENERATE}`"
    )


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises, saying where, if it is not


def served_operations(routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, in the document's path syntax."""
    operations: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Route):
            methods = (route.methods or {"GET"}) & HTTP_METHODS
            path = CONVERTER.sub(r"{\1}", prefix + route.path)  # {key:path} is {key}
            operations |= {(method, path) for method in methods}
        elif isinstance(route, Mount):
            if route.routes:
                operations |= served_operations(list(route.routes), prefix + route.path)
            else:  # an app mounted whole (static files): any path below it
                operations.add(("GET", f"{prefix}{route.path}/{{path}}"))
        else:
            raise AssertionError(f"a route the document cannot describe yet: {route!r}")
    return operations


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
    }


def test_every_route_of_the_app_is_documented_and_nothing_else(core: ServingCore) -> None:
    app = build_app(core, admin_token="s3cret-token-of-the-tests-0123456789")
    served, documented = served_operations(app.routes), documented_operations()
    assert served - documented == set(), (
        "routes not in the document: add them to streamserve/api/openapi.py's OPERATIONS, "
        f"then `{REGENERATE}`"
    )
    assert documented - served == set(), "the document describes routes the app does not serve"


def test_every_error_status_answers_the_error_document() -> None:
    paths = openapi_document()["paths"]
    for operation in OPERATIONS:
        responses = paths[operation.path][operation.method.lower()]["responses"]
        replies = {str(reply.status) for reply in operation.replies}
        errors = {status for status in responses if int(status) >= 400} - replies
        assert {"413", "500", "503"} <= errors, operation.path
        for status in errors:
            assert responses[status]["content"] == {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}
            }, (operation.method, operation.path, status)


def test_admin_routes_need_the_bearer_token_and_say_so() -> None:
    document = openapi_document()
    assert document["components"]["securitySchemes"]["adminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["adminToken"]["description"],
    }
    for path, item in document["paths"].items():
        for operation in item.values():
            admin = path.startswith("/admin/")
            assert ("security" in operation) == admin, path
            if admin:
                assert {"401", "403", "404"} <= operation["responses"].keys(), path


def test_the_document_names_the_datatypes_and_orders_the_server_takes() -> None:
    assert set(schemas.Datatype) == tensors.DATATYPES
    assert tuple(schemas.KeySort) == KEY_SORTS


def test_the_server_serves_the_checked_in_document(core: ServingCore) -> None:
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    server.start()
    try:
        reply = httpx.get(f"{server.url}/openapi.json", timeout=30)
    finally:
        server.stop()
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert orjson.loads(reply.content) == orjson.loads(CHECKED_IN.read_bytes())
