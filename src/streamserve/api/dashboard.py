"""The dashboard at ``/``: one page and its assets (shipped in the package: it works offline),
and the summary it polls (``/dashboard/summary``), small whatever the number of keys.

The page polls rather than holding a server-sent event stream open: a poll is one short request
that any proxy passes as it is, it holds no connection (``api.max_connections``) between
updates, and the server computes a summary only when someone looks. Each poll sends the cursor of
the previous answer and gets only the samples and events after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from streamserve import __version__
from streamserve.api.activity import (
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    KeyState,
    TimelineEvent,
    cut,
)
from streamserve.api.endpoints import OrjsonResponse
from streamserve.api.history import HistorySample, ServingHistory
from streamserve.api.state import KeyPages, int_param, slot_document, text_param
from streamserve.errors import InvalidRequestError
from streamserve.serving.core import ServingCore
from streamserve.serving.slot import ModelSlot
from streamserve.settings import ApiSettings

ASSETS_PACKAGE = ("streamserve.api", "static")
DEFAULT_TOP_KEYS = 15
MAX_TOP_KEYS = 50
MAX_EVENTS_SENT = 100  # the newest, when more came since the cursor
# Names, versions, descriptions and reasons come from model messages, which may be megabytes:
# the summary cuts them (the page shows less; /keys/{key} has them whole).
MAX_KEY_CHARS = 1000  # a key in the top rows: whole up to this, as the page selects keys by it
# MAX_NAME_CHARS: model names and versions in rows (and the events' names: activity.py).
# MAX_REASON_CHARS: every text of the selected key (and the events' reasons).
MAX_ITEMS_SENT = 50  # of each list of the selected key (input names, rejections: the newest)
MIN_POLL_S = 2.0
# Everything from this server, nothing inline, nothing from elsewhere: the page works offline
# and a key or model name can never become markup or script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The page's headers, and every file's: dashboard.html and the SVG served as assets too.
ASSET_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "content-security-policy": CONTENT_SECURITY_POLICY,
}
RANGES = (b"range", b"if-range")


class DashboardAssets(StaticFiles):
    """The dashboard's files: whole (they are small; a Range header is ignored), and revalidated
    at every load (``no-cache``: 304 while the ETag holds), so that a browser never runs a copy
    of a script older than the page, which it would keep unasked for a tenth of the file's age
    (from its Last-Modified, when the package was built) without a ``Cache-Control``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(name, value) for name, value in scope["headers"] if name not in RANGES]
            scope = {**scope, "headers": headers}
        await super().__call__(scope, receive, send)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(ASSET_HEADERS)
        return response


def key_pages_and_dashboard(
    core: ServingCore,
    settings: ApiSettings,
    consumer_lag: Callable[[], int | None] | None = None,
) -> tuple[KeyPages, Dashboard | None]:
    """The pages of ``/keys`` and the dashboard (``None`` when ``api.dashboard`` is off), over
    one history: the dashboard's samples give ``/keys`` its orders by records and errors."""
    history = ServingHistory(
        core,
        consumer_lag,
        interval_s=settings.dashboard_interval_s,
        history_s=settings.dashboard_history_s,
    )
    key_pages = KeyPages(
        core,
        page_size=settings.keys_page_size,
        max_page_size=settings.keys_page_max,
        history=history,
    )
    return key_pages, Dashboard(core, history) if settings.dashboard else None


class Dashboard:
    """The dashboard of one core: its page, assets and summary, over a :class:`ServingHistory`
    that samples while the app runs (:meth:`lifespan`)."""

    def __init__(self, core: ServingCore, history: ServingHistory) -> None:
        self._core = core
        self._history = history
        page = resources.files(ASSETS_PACKAGE[0]) / ASSETS_PACKAGE[1] / "dashboard.html"
        self._page = page.read_text(encoding="utf-8")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page),
            Route("/dashboard/summary", self.summary),
            Mount("/dashboard/assets", DashboardAssets(packages=[ASSETS_PACKAGE])),
        ]

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Samples the history while the app serves."""
        self._history.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self._history.stop)

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self._page, headers=ASSET_HEADERS)

    async def summary(self, request: Request) -> Response:
        """The summary since the cursor ``since``: see :meth:`summary_document`."""
        params = dict(request.query_params)
        document = await anyio.to_thread.run_sync(self.summary_document, params)
        return OrjsonResponse(document, headers={"cache-control": "no-store"})

    def summary_document(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Totals; the samples and timeline events numbered ``since`` or later; the ``top``
        keys with the most ``sort`` (records or errors) whose name holds ``q``; the slot of
        ``key``. Raises :class:`InvalidRequestError` for a malformed parameter."""
        since = int_param(params, "since", 0, 0, None)
        top = int_param(params, "top", DEFAULT_TOP_KEYS, 1, MAX_TOP_KEYS)
        sort = params.get("sort", "records")
        if sort not in ("records", "errors"):
            raise InvalidRequestError(f"sort must be records or errors, not {sort!r}")
        text = text_param(params, "q")
        self._history.refresh()
        samples, events, cursor = self._history.since(since)
        matched, rows = self._history.activity.top(sort, text, top)
        return {
            "now": time.time(),
            "version": __version__,
            "interval_s": self._history.interval_s,
            "history_s": self._history.history_s,
            "poll_s": max(MIN_POLL_S, self._history.interval_s),
            "next": cursor,
            "totals": self._totals(),
            "history": history_columns(samples),
            "events": [event_document(event) for event in events[-MAX_EVENTS_SENT:]],
            "keys": {
                "sort": sort,
                "q": text,
                "total": matched,
                "rows": [self._row(key, state) for key, state in rows],
            },
            "key": self._key_document(params.get("key")),
        }

    def _totals(self) -> dict[str, Any]:
        counts = self._core.counts
        return {
            "records": counts.get("records", 0),
            "results": counts.get("results", 0),
            "errors": counts.get("errors", 0),
            "keys": self._core.footprint()["slots"],
            "loads_pending": self._core.loads_pending,
            "model_messages": counts.get("model_messages", 0)
            + counts.get("model_messages_rejected", 0),
            "consumer_lag": self._history.consumer_lag(),
        }

    def _row(self, key: str, state: KeyState) -> dict[str, Any]:
        slot = self._core.find_slot(key)
        current = None if slot is None else slot.current
        staged = None if slot is None else slot.staged
        return {
            "key": cut(key, MAX_KEY_CHARS),
            "model": None if current is None else cut(current.identity.name, MAX_NAME_CHARS),
            "version": None if current is None else cut(current.identity.version, MAX_NAME_CHARS),
            "staged": None if staged is None else cut(staged.identity.name, MAX_NAME_CHARS),
            "records": state.records,
            "errors": state.errors,
            "records_per_s": round(state.rate, 2),
            "rejected": state.rejected,
            "pinned": False if slot is None else slot.pinned,
        }

    def _key_document(self, key: str | None) -> dict[str, Any] | None:
        slot = None if not key else self._core.find_slot(key)
        return None if slot is None else key_summary(slot)


def key_summary(slot: ModelSlot) -> dict[str, Any]:
    """The slot's document (as ``/keys/{key}``), every text but the key cut to
    ``MAX_REASON_CHARS`` and every list to its ``MAX_ITEMS_SENT`` first items (rejections: the
    newest)."""
    document = slot_document(slot)
    document["recent_rejections"] = document["recent_rejections"][-MAX_ITEMS_SENT:]
    bounded: dict[str, Any] = _bounded(document)
    bounded["key"] = cut(slot.key, MAX_KEY_CHARS)
    return bounded


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return cut(value, MAX_REASON_CHARS)
    if isinstance(value, dict):
        return {name: _bounded(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_bounded(item) for item in value[:MAX_ITEMS_SENT]]
    return value


def history_columns(samples: list[HistorySample]) -> dict[str, Any]:
    """Samples as columns (what a chart takes), rounded to what a chart can show."""
    kinds = sorted({kind for sample in samples for kind in sample.errors_per_s_by_kind})
    return {
        "seq": [sample.seq for sample in samples],
        "t": [round(sample.at, 3) for sample in samples],
        "records_per_s": [round(sample.records_per_s, 2) for sample in samples],
        "results_per_s": [round(sample.results_per_s, 2) for sample in samples],
        "errors_per_s": [round(sample.errors_per_s, 2) for sample in samples],
        "errors_per_s_by_kind": {
            kind: [round(sample.errors_per_s_by_kind.get(kind, 0.0), 2) for sample in samples]
            for kind in kinds
        },
        "p50_s": [_seconds(sample.p50_s) for sample in samples],
        "p99_s": [_seconds(sample.p99_s) for sample in samples],
        "consumer_lag": [sample.consumer_lag for sample in samples],
        "keys": [sample.keys for sample in samples],
    }


def event_document(event: TimelineEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": round(event.at, 3),
        "kind": event.kind,
        "key": event.key,  # names and reasons cut as the event was made
        "model": event.model,
        "version": event.version,
        "previous": event.previous,
        "reason": event.reason,
        "error_kind": event.error_kind,
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 7)
