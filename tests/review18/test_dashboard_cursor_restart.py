"""A page left open while the server restarts "catches up by itself" (docs/operations.md,
Dashboard): it keeps sending the cursor the previous server gave it. A restarted server numbers
its samples and events from 1 again, so once its numbers pass the old cursor (a restart that
catches up many keys' models, or a page that stayed hidden meanwhile), the page asks for what
comes after the old cursor and never gets the new server's first swaps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings
from streamserve.testing import records_from

KEYS = 12
OLD_CURSOR = 300  # a page that watched the previous server a few seconds
DEADLINE_S = 60.0  # only separates "never" from "answers"


@contextmanager
def _server(core: ServingCore) -> Iterator[httpx.Client]:
    server = ApiServer(core, ApiSettings(port=0, dashboard_interval_s=0.02), lambda: True)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def _summary(http: httpx.Client, since: int) -> dict[str, Any]:
    reply = http.get("/dashboard/summary", params={"since": since})
    assert reply.status_code == 200, reply.text
    document: dict[str, Any] = reply.json()
    return document


def _wait(what: str, done: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_a_cursor_of_the_previous_server_misses_nothing_of_the_new_one(
    core: ServingCore,
) -> None:
    with _server(core) as first:  # the page polls the first server a little while
        _wait("the first server sampled", lambda: _summary(first, 0)["next"] > OLD_CURSOR)
        cursor = _summary(first, 0)["next"]

    with _server(core) as second:  # restarted: its history starts again
        _wait("the second server sampled", lambda: _summary(second, 0)["next"] > 1)
        for index in range(KEYS):  # models caught up after the restart: a swap each
            core.submit_model(onnx_descriptor("m", onnx_constant(11, 1.0), f"key-{index}"))
        assert core.wait_for_models(60)
        records = [{"dataType": f"key-{index}", "features": [1.0] * 11} for index in range(KEYS)]
        core.score(JsonCodec().decode(records_from([orjson.dumps(r) for r in records])))
        swaps: set[str] = set()

        def every_swap_seen() -> bool:
            swaps.update(e["key"] for e in _summary(second, 0)["events"])
            return len(swaps) == KEYS

        _wait("the second server saw every swap", every_swap_seen)
        _wait("the new cursor passed the old one", lambda: _summary(second, 0)["next"] > cursor)
        page = _summary(second, cursor)  # what the open page asks for next

    assert page["next"] >= cursor  # so the page does not take it for a restart and start over
    seen = {event["key"] for event in page["events"]}
    assert seen == swaps, (
        f"the open page missed {len(swaps - seen)} of the {KEYS} swaps after the restart: the "
        "restarted server numbered them below the cursor the previous one gave the page"
    )
