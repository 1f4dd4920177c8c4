"""The dashboard's routes on a real server: the page (its own assets only, a strict content
security policy), the summary it polls (a cursor sends only what is new), the history thread
that lives as long as the server, and no dashboard when it is switched off."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings
from streamserve.testing import records_from

HISTORY_THREAD = "dashboard-history"


@contextmanager
def _serving(core: ServingCore, **settings: object) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, **settings), lambda: True)  # type: ignore[arg-type]
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def _stream(core: ServingCore, count: int) -> None:
    payload = orjson.dumps({"dataType": "wine", "features": [1.0] * 11})
    core.score(JsonCodec().decode(records_from([payload] * count)))


def _history_threads() -> int:
    return sum(thread.name == HISTORY_THREAD for thread in threading.enumerate())


def test_the_page_loads_only_its_own_packaged_assets(core: ServingCore) -> None:
    with _serving(core) as http:
        page = http.get("/")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        fetched = {asset: http.get(f"/{asset}") for asset in assets}
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert set(assets) == {
        "dashboard/assets/favicon.svg",
        "dashboard/assets/uplot/uPlot.min.css",
        "dashboard/assets/dashboard.css",
        "dashboard/assets/uplot/uPlot.iife.min.js",
        "dashboard/assets/dashboard.js",
    }
    assert {asset: reply.status_code for asset, reply in fetched.items()} == dict.fromkeys(
        assets, 200
    )
    assert b"uPlot" in fetched["dashboard/assets/uplot/uPlot.iife.min.js"].content
    assert "<script>" not in page.text  # nothing inline: the policy would refuse it


def test_the_summary_sends_what_is_new_since_its_cursor(core: ServingCore) -> None:
    core.submit_model(onnx_descriptor("first", onnx_constant(11, 1.0), version="v1"))
    assert core.wait_for_models(60)
    with _serving(core, dashboard_interval_s=0.05) as http:
        _stream(core, 20)

        def summary(**params: object) -> dict:  # type: ignore[type-arg]
            reply = http.get("/dashboard/summary", params=params)  # type: ignore[arg-type]
            assert reply.status_code == 200, reply.text
            assert reply.headers["cache-control"] == "no-store"
            return reply.json()  # type: ignore[no-any-return]

        first = summary(key="wine")
        deadline = time.monotonic() + 60
        while not first["events"]:  # the history thread samples every 0.05 s
            assert time.monotonic() < deadline, "the history thread never sampled the swap"
            first = summary(key="wine", since=0)
        later = summary(since=first["next"])
        refused = http.get("/dashboard/summary", params={"sort": "latency"})
    assert first["totals"]["records"] == 20
    assert first["totals"]["consumer_lag"] is None
    assert [(e["kind"], e["key"], e["model"]) for e in first["events"]] == [
        ("model_swapped", "wine", "first")
    ]
    assert first["keys"]["rows"][0]["key"] == "wine"
    assert first["keys"]["rows"][0]["model"] == "first"
    assert first["key"]["current"]["invocations"] == 20
    assert later["events"] == []
    assert all(seq >= first["next"] for seq in later["history"]["seq"])
    assert later["key"] is None  # no key asked for
    assert refused.status_code == 400
    assert refused.json() == {"error": "sort must be records or errors, not 'latency'"}


def test_the_history_thread_lives_as_long_as_the_server(core: ServingCore) -> None:
    before = _history_threads()
    with _serving(core) as http:
        assert http.get("/v2/health/live").status_code == 200
        during = _history_threads()
    assert (before, during, _history_threads()) == (0, 1, 0)


def test_a_server_without_the_dashboard_has_no_page_and_no_thread(core: ServingCore) -> None:
    with _serving(core, dashboard=False) as http:
        page = http.get("/")
        summary = http.get("/dashboard/summary")
        keys = http.get("/keys", params={"sort": "records"})
        threads = _history_threads()
    assert (page.status_code, summary.status_code, threads) == (404, 404, 0)
    assert keys.status_code == 200  # /keys orders by records from a sample taken on request
