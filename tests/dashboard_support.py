"""The dashboard in a real browser: a live ``streamserve serve`` (the real CLI) fed records
continuously on its stdin, and Debian's Chromium driven by Playwright's sync API (Playwright
cannot download a browser of its own here). Every request that would leave the machine is
blocked and recorded, so a page that works shows that it needs no network.

Run as a script, it makes the README's screenshot:
``PYTHONPATH=tests .venv/bin/python -m dashboard_support docs/images/dashboard.png``
(``bash scripts/dashboard-screenshot.sh`` does this).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from playwright.sync_api import (
    BrowserContext,
    Page,
    Request,
    Response,
    Route,
    sync_playwright,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
ANNOUNCED = re.compile(r"HTTP API on (https?://\S+)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WAIT_MS = 90_000


class RecordFeeder:
    """Writes ``lines`` (cycled) to a stream, ``per_tick`` of them every ``tick_s``, on a thread
    until :meth:`stop`: a stream that keeps flowing while the test looks at the page."""

    def __init__(
        self, stream: object, lines: Sequence[bytes], per_tick: int = 50, tick_s: float = 0.05
    ) -> None:
        self._stream = stream
        self._lines = list(lines)
        self._per_tick = per_tick
        self._tick_s = tick_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="record-feeder", daemon=True)
        self.written = 0

    def start(self) -> RecordFeeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        position = 0
        while not self._stopping.wait(self._tick_s):
            chunk = [self._lines[(position + n) % len(self._lines)] for n in range(self._per_tick)]
            position += self._per_tick
            try:
                self._stream.write(b"\n".join(chunk) + b"\n")  # type: ignore[attr-defined]
                self._stream.flush()  # type: ignore[attr-defined]
            except (BrokenPipeError, ValueError):
                return  # the server ended: the test says why
            self.written += len(chunk)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)


@dataclass
class ServedCli:
    url: str
    process: subprocess.Popen[bytes]
    stderr_lines: list[str]


@contextmanager
def serving_cli(
    models: Path, work: Path, lines: Sequence[bytes], per_tick: int = 50
) -> Iterator[ServedCli]:
    """``streamserve serve --models MODELS --data - --http-port 0`` with ``lines`` fed on its
    stdin until the block ends; then stdin closes and the server must end cleanly."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamserve",
            "serve",
            "--models",
            str(models),
            "--codec",
            "json",
            "--data",
            "-",
            "--http-port",
            "0",
            "--results",
            str(work / "results.jsonl"),
            "--errors",
            str(work / "errors.jsonl"),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert process.stdin is not None
    assert process.stderr is not None
    stderr_lines: list[str] = []
    url = _announced_url(process, stderr_lines)
    drain = threading.Thread(target=_drain, args=(process, stderr_lines), daemon=True)
    drain.start()
    feeder = RecordFeeder(process.stdin, lines, per_tick).start()
    try:
        yield ServedCli(url, process, stderr_lines)
    finally:
        feeder.stop()
        process.stdin.close()
        code = process.wait(timeout=120)
        drain.join(timeout=30)
        process.stderr.close()
        assert code == 0, "".join(stderr_lines[-30:])


def _announced_url(process: subprocess.Popen[bytes], lines: list[str]) -> str:
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode(errors="replace")
        lines.append(line)
        match = ANNOUNCED.search(line)
        if match:
            return match.group(1)
    process.wait(timeout=60)
    raise AssertionError(f"the server never announced its HTTP API: {''.join(lines)}")


def _drain(process: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        lines.append(raw.decode(errors="replace"))


@dataclass
class BrowserWatch:
    """What the page did that a healthy offline page must not do, and what it fetched."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    off_machine: list[str] = field(default_factory=list)
    summaries: list[Response] = field(default_factory=list)

    def route(self, route: Route) -> None:
        """Lets loopback requests through; blocks (and records) every other one."""
        if urlsplit(route.request.url).hostname in LOOPBACK_HOSTS:
            route.continue_()
        else:
            self.off_machine.append(route.request.url)
            route.abort()

    def on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{response.status} {response.url}")
        if "/dashboard/summary" in response.url:
            self.summaries.append(response)

    def on_request_failed(self, request: Request) -> None:
        self.failed_requests.append(f"{request.failure} {request.url}")


@contextmanager
def dashboard_page(
    url: str,
    width: int = 1440,
    height: int = 1200,
    prepare: Callable[[BrowserContext], None] | None = None,
) -> Iterator[tuple[Page, BrowserWatch]]:
    """The dashboard at ``url`` in headless Chromium, with a :class:`BrowserWatch` on it;
    ``prepare`` sets the browser up (its clock, say) before the page loads."""
    watch = BrowserWatch()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.route("**/*", watch.route)
            if prepare is not None:
                prepare(context)
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on(
                "console",
                lambda message: (
                    watch.console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: watch.console_errors.append(str(error)))
            page.on("response", watch.on_response)
            page.on("requestfailed", watch.on_request_failed)
            page.goto(url)
            yield page, watch
            context.close()
        finally:
            browser.close()


def png_size(path: Path) -> tuple[int, int]:
    """The width and height of the PNG at ``path``; fails if it is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def publish_file(folder: Path, name: str, data: bytes) -> Path:
    """Puts a model file into a watched folder whole: written beside it, then renamed in."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{name}.part"
    staging.write_bytes(data)
    target = folder / name
    staging.rename(target)
    return target


# --- the README's screenshot -------------------------------------------------------------------
SCREENSHOT_KEYS = ("wine", "wine-premium", "wine-budget", "vinho-verde")
WINE_TREE = "winequalityDecisionTreeClassification.pmml"
WINE_LINEAR = "winequalityLinearRegression.pmml"


def screenshot_stream(wine_dir: Path) -> list[bytes]:
    """Wine records of several keys, and a few that fail (missing features, not JSON)."""
    from builders import wine_json_lines, wine_rows

    rows = wine_rows(wine_dir)
    lines: list[bytes] = []
    for index, key in enumerate(SCREENSHOT_KEYS):
        lines += wine_json_lines(rows[index * 300 : index * 300 + 300 - index * 60], key)
    lines += [b'{"dataType": "wine", "alcohol": 9.4}'] * 8  # missing features
    lines += [b"not json"] * 3
    order = np.random.default_rng(18).permutation(len(lines))
    return [lines[i] for i in order]


def make_screenshot(target: Path) -> None:
    """Serves the screenshot stream, publishes models while it flows (PMML then the frozen graph
    for ``wine``, ONNX for the others, one corrupt file), and photographs the dashboard."""
    from builders import onnx_linear
    from streamserve.demo.wine import wine_data_dir

    with tempfile.TemporaryDirectory() as temp, wine_data_dir() as wine_dir:
        work = Path(temp)
        models = work / "models"
        publish_file(models / "wine", "tree.pmml", (wine_dir / WINE_TREE).read_bytes())
        for offset, key in enumerate(SCREENSHOT_KEYS[1:]):
            weights = np.linspace(0.05, 0.3, 11) * (offset + 1)
            publish_file(models / key, f"{key}-linear.onnx", onnx_linear(weights, 2.0 + offset))
        lines = screenshot_stream(wine_dir)
        with serving_cli(models, work, lines, per_tick=40) as served:
            with dashboard_page(served.url, height=800) as (page, watch):
                _play_screenshot_story(page, models, wine_dir)
                page.screenshot(path=str(target), full_page=True)
            assert not watch.off_machine, watch.off_machine
    width, height = png_size(target)
    print(f"{target}: {width} x {height} PNG, {target.stat().st_size:,} bytes")


def _play_screenshot_story(page: Page, models: Path, wine_dir: Path) -> None:
    """Lets history gather between publications, so that the charts have something to show."""
    page.locator("#models-table tr[data-role=current] .name").wait_for()
    time.sleep(25)
    publish_file(models / "wine", "linear.pmml", (wine_dir / WINE_LINEAR).read_bytes())
    time.sleep(15)
    publish_file(models / "wine-budget", "broken.onnx", b"not a model")
    graph = (wine_dir / "optimized_WineQuality.pb").read_bytes()
    publish_file(models / "wine", "frozen-graph.pb", graph)
    swap = page.locator("#timeline li[data-kind=model_swapped][data-key=wine]")
    swap.filter(has_text="frozen-graph").wait_for()
    page.locator('#keys-table tbody tr[data-key="wine"]').click()
    page.locator("#models-table tr[data-role=previous] .name").wait_for()
    time.sleep(15)


if __name__ == "__main__":
    make_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/dashboard.png"))
