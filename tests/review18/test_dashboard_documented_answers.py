"""The dashboard's routes answer as the OpenAPI document says, beyond what schemathesis
generates: with the dashboard switched off, and with the headers a browser sends for files
(Range, If-None-Match). And its files are never run from a stale cache: after an upgrade the
page (no-cache) loads the new version's script, not one the browser kept heuristically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from streamserve.api.openapi import openapi_document
from streamserve.api.server import ApiServer
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings

ASSETS = (
    "dashboard.js",
    "dashboard.css",
    "favicon.svg",
    "uplot/uPlot.iife.min.js",
    "uplot/uPlot.min.css",
)


@contextmanager
def _serving(core: ServingCore, **settings: object) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, **settings), lambda: True)  # type: ignore[arg-type]
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def _assert_documented(reply: httpx.Response, path: str) -> None:
    """``reply`` has a status the document lists for GET ``path``, and an error answers the
    error document."""
    document = openapi_document()
    responses: dict[str, Any] = document["paths"][path]["get"]["responses"]
    status = str(reply.status_code)
    assert status in responses, (
        f"GET {path} answered {status}, which the OpenAPI document does not list "
        f"(it lists {sorted(responses)}): {reply.text[:200]!r}"
    )
    if reply.status_code >= 400:
        assert reply.headers["content-type"] == "application/json", reply.headers
        schema = {**document["components"]["schemas"]["ErrorAnswer"]}
        Draft202012Validator(schema).validate(reply.json())


def test_a_server_without_the_dashboard_answers_as_documented(core: ServingCore) -> None:
    with _serving(core, dashboard=False) as http:
        replies = {
            "/": http.get("/"),
            "/dashboard/summary": http.get("/dashboard/summary"),
            "/dashboard/assets/{path}": http.get("/dashboard/assets/dashboard.js"),
        }
    for path, reply in replies.items():
        assert reply.status_code == 404
        _assert_documented(reply, path)


@pytest.mark.parametrize(
    "headers",
    [
        {"range": "bytes=abc"},  # malformed
        {"range": "bytes=5-1"},
        {"range": "bytes=99999999-"},  # beyond the file
        {"range": "bytes=0-1,3-4"},  # several ranges: multipart/byteranges
        {"range": "bytes=0-9"},
    ],
)
def test_a_file_asked_for_with_a_range_answers_as_documented(
    core: ServingCore, headers: dict[str, str]
) -> None:
    with _serving(core) as http:
        reply = http.get("/dashboard/assets/dashboard.js", headers=headers)
    _assert_documented(reply, "/dashboard/assets/{path}")


def test_a_revalidated_file_answers_as_documented(core: ServingCore) -> None:
    with _serving(core) as http:
        first = http.get("/dashboard/assets/dashboard.js")
        again = http.get(
            "/dashboard/assets/dashboard.js", headers={"if-none-match": first.headers["etag"]}
        )
    assert first.status_code == 200
    _assert_documented(again, "/dashboard/assets/{path}")


def test_the_page_never_runs_a_stale_script_after_an_upgrade(core: ServingCore) -> None:
    # Without Cache-Control a browser may keep a file for a tenth of its age (its
    # Last-Modified: when the package was built) without asking: after an upgrade the new
    # page would run the old script against the new summary.
    with _serving(core) as http:
        replies = {asset: http.get(f"/dashboard/assets/{asset}") for asset in ASSETS}
    for asset, reply in replies.items():
        assert reply.status_code == 200, asset
        cache = reply.headers.get("cache-control", "")
        assert "no-cache" in cache, (
            f"{asset} has no 'Cache-Control: no-cache' ({cache!r}): a browser may run a stale "
            "copy after an upgrade"
        )
        assert reply.headers.get("x-content-type-options") == "nosniff", asset


def test_every_file_of_the_dashboard_has_the_page_s_content_security_policy(
    core: ServingCore,
) -> None:
    # The page is also a file of the assets (dashboard.html), and an SVG is a document that
    # may hold script: opened directly, either must be held to the page's policy.
    with _serving(core) as http:
        page = http.get("/")
        files = {
            asset: http.get(f"/dashboard/assets/{asset}") for asset in (*ASSETS, "dashboard.html")
        }
    policy = page.headers["content-security-policy"]
    for asset, reply in files.items():
        assert reply.status_code == 200, asset
        assert reply.headers.get("content-security-policy") == policy, (
            f"/dashboard/assets/{asset} is served without the page's content security policy"
        )
