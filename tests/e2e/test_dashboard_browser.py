"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against a live
server: it loads with no console error, no failed request and no request off the machine, shows
a swap as it happens in a live stream, and stays small with 10,000 keys."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from dashboard_support import (
    CHROMIUM,
    WAIT_MS,
    BrowserWatch,
    dashboard_page,
    png_size,
    publish_file,
    serving_cli,
)
from playwright.sync_api import expect

from builders import onnx_constant
from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory, records_from

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package"),
]
MAX_SUMMARY_BYTES = 200_000
MAX_UPDATE_BYTES = 50_000
MANY_KEYS = 10_000
FUNCTION_TYPE = 518


def _wine_lines() -> list[bytes]:
    return [orjson.dumps({"dataType": "wine", "features": [float(n % 7)] * 11}) for n in range(50)]


def _assert_clean(watch: BrowserWatch) -> None:
    assert watch.console_errors == []
    assert watch.failed_requests == []
    assert watch.off_machine == [], "the page tried to reach beyond this machine"


def test_the_dashboard_shows_a_swap_as_it_happens_in_a_live_stream(tmp_path: Path) -> None:
    models = tmp_path / "models"
    publish_file(models / "wine", "first.onnx", onnx_constant(11, 1.0))
    with serving_cli(models, tmp_path, _wine_lines()) as served:
        with dashboard_page(served.url) as (page, watch):
            current = page.locator("#models-table tr[data-role=current]")
            expect(page.locator("#detail-key")).to_have_text("wine", timeout=WAIT_MS)
            expect(current.locator(".name")).to_have_text("first", timeout=WAIT_MS)
            expect(page.locator('#keys-table tbody tr[data-key="wine"]')).to_contain_text("first")
            expect(page.locator("#total-records")).not_to_have_text("0")
            expect(page.locator("#total-lag")).to_have_text("not on Kafka")
            expect(page.locator("#lag-figure")).to_be_hidden()  # no empty chart

            publish_file(models / "wine", "second.onnx", onnx_constant(11, 2.0))
            expect(current.locator(".name")).to_have_text("second", timeout=WAIT_MS)
            swap = page.locator("#timeline li[data-kind=model_swapped][data-key=wine]").filter(
                has_text="second"
            )
            expect(swap).to_contain_text("(was first)", timeout=WAIT_MS)
            previous = page.locator("#models-table tr[data-role=previous] .name")
            expect(previous).to_have_text("first")
            expect(page.locator("#chart-rate canvas")).to_have_count(1)

            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"dashboard screenshot: {screenshot}")
        _assert_clean(watch)
    width, height = png_size(screenshot)
    assert width > 0
    assert height > 0
    assert screenshot.stat().st_size > 10_000


def _key(index: int) -> str:
    return f"k{index:05d}"


@contextmanager
def _many_keys_server(keys: int) -> Iterator[tuple[str, ServingCore]]:
    """An API server over a core with ``keys`` keys, each with its own model, scored
    continuously by a thread (400 keys a batch, cycling over all) while the block runs; the
    records of the cycle not scored yet are its consumer lag."""

    def score(features: FloatMatrix) -> np.ndarray:
        return features[:, 0] * 2

    registry = FactoryRegistry(FactoryContext())
    registry.register(FUNCTION_TYPE, FunctionFactory(score, width=2))
    core = ServingCore(ServingSettings(), registry)
    stop = threading.Event()
    try:
        for index in range(keys):
            core.submit_model(
                ModelDescriptor(
                    name=f"m{index}", data_type=_key(index), model_type=FUNCTION_TYPE, data=b"x"
                )
            )
        assert core.wait_for_models(600)
        codec = JsonCodec()
        payloads = [
            orjson.dumps({"dataType": _key(index), "features": [1.0, 2.0]}) for index in range(keys)
        ]

        position = [0]  # where the stream is in its cycle over every key

        def stream() -> None:
            while not stop.wait(0.05):
                start = position[0]
                core.score(codec.decode(records_from(payloads[start : start + 400])))
                position[0] = (start + 400) % keys

        def behind() -> int:
            """The records of the cycle not scored yet: this stream's consumer lag."""
            return keys - position[0]

        scorer = threading.Thread(target=stream, name="stream", daemon=True)
        scorer.start()
        server = ApiServer(core, ApiSettings(port=0), lambda: True, behind)
        server.start()
        try:
            yield server.url, core
        finally:
            server.stop()
            stop.set()
            scorer.join(timeout=60)
    finally:
        core.close()


def _summary_bytes(watch: BrowserWatch) -> list[int]:
    return [len(response.body()) for response in watch.summaries]


def test_ten_thousand_keys_keep_the_page_small_and_searchable() -> None:
    with _many_keys_server(MANY_KEYS) as (url, _core):
        with dashboard_page(url) as (page, watch):
            rows = page.locator("#keys-table tbody tr")
            expect(rows.first).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#total-keys")).to_have_text(f"{MANY_KEYS:,}", timeout=WAIT_MS)
            assert rows.count() <= 15, "the page lists top keys, never every key"
            expect(page.locator("#lag-figure")).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#chart-lag canvas")).to_have_count(1)
            expect(page.locator("#keys-count")).to_contain_text(f"of {MANY_KEYS:,}")

            page.locator("#search").fill("k0999")
            expect(page.locator("#keys-count")).to_contain_text("10 of 10", timeout=WAIT_MS)
            shown = [rows.nth(n).get_attribute("data-key") for n in range(rows.count())]
            assert sorted(shown) == [_key(9990 + n) for n in range(10)]

            rows.first.click()  # a key of the search becomes the selected key
            expect(page.locator("#detail-key")).to_have_text(shown[0] or "", timeout=WAIT_MS)
            expect(page.locator("#models-table tr[data-role=current] .name")).to_have_text(
                f"m{int((shown[0] or 'k0')[1:])}", timeout=WAIT_MS
            )
            for _ in range(2):  # polls go on: each one asks only for what is new
                with page.expect_response(lambda r: "/dashboard/summary" in r.url):
                    pass
            page.locator("#search").fill("")
            expect(page.locator("#keys-count")).to_contain_text(
                f"of {MANY_KEYS:,}", timeout=WAIT_MS
            )
            elements = page.evaluate("document.getElementsByTagName('*').length")
            sizes = _summary_bytes(watch)
        _assert_clean(watch)
        with httpx.Client(base_url=url, timeout=60) as http:
            first_page = http.get("/keys")
    assert len(sizes) >= 3
    assert max(sizes) < MAX_SUMMARY_BYTES, sizes
    assert max(sizes[1:]) < MAX_UPDATE_BYTES, sizes  # after the first: what is new only
    assert elements < 3000, "the page holds a bounded number of elements, whatever the keys"
    assert first_page.status_code == 200
    document = first_page.json()
    assert len(document["keys"]) == 100
    assert document["total"] == MANY_KEYS
    assert document["next_after"] == _key(99)
