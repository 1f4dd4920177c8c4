"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against what it meets
outside the happy path: keys, model names and reasons written as markup by whoever publishes
model messages; a link to the page with a malformed key in its fragment; a browser whose clock
is not the server's (the page is opened from a laptop)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import orjson
import pytest
from dashboard_support import CHROMIUM, WAIT_MS, BrowserWatch, dashboard_page
from playwright.sync_api import BrowserContext, expect

from builders import onnx_constant, onnx_descriptor
from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings
from streamserve.testing import records_from

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package"),
]
TITLE = "streamserve dashboard"
OWNED = "document.title='owned'"
MARKUP_KEY = f'<img src=x onerror="{OWNED}">'
SCRIPT_NAME = f"</script><script>{OWNED}</script>"
MARKUP_REASON_NAME = f'<svg onload="{OWNED}">'
SKEW_S = 3600.0  # the browser's clock an hour ahead of the server's


@contextmanager
def _serving(core: ServingCore, keys: list[str]) -> Iterator[str]:
    """A server whose ``keys`` each have a model and get a record every 0.1 s."""
    for key in keys:
        core.submit_model(onnx_descriptor(SCRIPT_NAME, onnx_constant(11, 1.0), key))
    assert core.wait_for_models(60)
    codec = JsonCodec()
    records = [orjson.dumps({"dataType": key, "features": [1.0] * 11}) for key in keys]
    stop = threading.Event()

    def stream() -> None:
        while not stop.wait(0.1):
            core.score(codec.decode(records_from(records)))

    streamer = threading.Thread(target=stream, name="stream", daemon=True)
    streamer.start()
    server = ApiServer(core, ApiSettings(port=0, dashboard_interval_s=0.25), lambda: True)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        stop.set()
        streamer.join(timeout=30)


def _assert_clean(watch: BrowserWatch) -> None:
    assert watch.console_errors == []
    assert watch.failed_requests == []
    assert watch.off_machine == []


def test_markup_in_keys_names_and_reasons_stays_text(core: ServingCore) -> None:
    with _serving(core, [MARKUP_KEY]) as url:
        core.submit_model(onnx_descriptor(MARKUP_REASON_NAME, b"not onnx", MARKUP_KEY))
        assert core.wait_for_models(60)
        with dashboard_page(url) as (page, watch):
            row = page.locator("#keys-table tbody tr").first
            expect(row.locator("td").first).to_have_text(MARKUP_KEY, timeout=WAIT_MS)
            expect(row.locator("td").nth(1)).to_have_text(SCRIPT_NAME)
            expect(page.locator("#detail-key")).to_have_text(MARKUP_KEY, timeout=WAIT_MS)
            expect(page.locator("#detail-rejections li").first).to_contain_text(
                MARKUP_REASON_NAME, timeout=WAIT_MS
            )
            rejected = page.locator("#timeline li[data-kind=model_rejected]").first
            expect(rejected).to_contain_text(MARKUP_REASON_NAME, timeout=WAIT_MS)
            assert page.title() == TITLE
            assert page.locator("#keys-table img, #timeline svg, #key-detail img").count() == 0
        _assert_clean(watch)


def test_a_malformed_key_in_the_link_leaves_the_page_working(core: ServingCore) -> None:
    with _serving(core, ["wine"]) as url:
        # "%E0%A4%A" is a cut percent-encoding (a link truncated when pasted, say)
        with dashboard_page(f"{url}/#key=%E0%A4%A") as (page, watch):
            try:
                expect(page.locator("#total-keys")).to_have_text("1", timeout=20_000)
            except AssertionError:
                pytest.fail(
                    "a link with a malformed #key= left the dashboard empty: "
                    f"{watch.console_errors}"
                )
            expect(page.locator("#keys-table tbody tr[data-key=wine]")).to_have_count(1)
        _assert_clean(watch)


def test_a_browser_clock_ahead_of_the_server_still_draws_the_history(core: ServingCore) -> None:
    def clock_ahead(context: BrowserContext) -> None:
        context.clock.set_fixed_time(time.time() + SKEW_S)

    with _serving(core, ["wine"]) as url:
        with dashboard_page(url, prepare=clock_ahead) as (page, watch):
            expect(page.locator("#total-keys")).to_have_text("1", timeout=WAIT_MS)
            expect(page.locator("#status")).to_have_attribute("data-state", "live")
            for _ in range(3):  # polls come every 2 s: the history has samples by then
                with page.expect_response(lambda r: "/dashboard/summary" in r.url):
                    pass
            drawn = page.locator("#chart-rate")
            with suppress(AssertionError):  # the chart says how many samples it draws
                expect(drawn).to_have_attribute(
                    "data-points", re.compile(r"^[1-9]"), timeout=20_000
                )
            points = int(drawn.get_attribute("data-points") or 0)
        _assert_clean(watch)
    assert points > 0, (
        "with the browser's clock an hour ahead of the server's, the page dropped every sample "
        "as older than its history: the charts stay empty"
    )
