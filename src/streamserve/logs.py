"""What a server tells its operator on stderr: logging set up for the CLI, model events as log
lines, and a periodic one-line summary of serving.

Lines go through the standard :mod:`logging` under ``streamserve.*`` loggers: the runtimes log
their lifecycle (connected, models caught up, partitions assigned and revoked), the CLI hands
the core's model events to :func:`log_model_event` and runs a :class:`ServingSummary`. Each
lifecycle line carries an ``event`` field and its details (``key``, ``model``, ``partitions``,
...) as record attributes, which ``--log-format json`` writes as fields of one JSON object per
line.

Library chatter is kept out (:func:`configure_logging`): the loggers of libraries that speak at
length about themselves (TensorFlow, absl) show errors only, Python's deprecation warnings are
ignored (they concern library APIs, not the operator's models), and other warnings are logged as
``py.warnings`` records. ``DEBUG`` shows everything. Nothing here runs at import time.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent, ModelEventKind

# Libraries whose own loggers speak about the library, not the models: errors only, unless
# DEBUG. (TensorFlow's native lines join its logger: formats/native_logs.py.)
CHATTY_LIBRARY_LOGGERS = ("tensorflow", "absl", "h5py", "jax", "numexpr")
# Warnings about library APIs changing, not about the models served.
LIBRARY_WARNINGS: tuple[type[Warning], ...] = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MODELS_LOG = "streamserve.models"
SUMMARY_LOG = "streamserve.summary"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _ShortNames(logging.Formatter):
    """The text format: ``streamserve.runtime.kafka`` shows as ``runtime.kafka``."""

    def format(self, record: logging.LogRecord) -> str:
        full = record.name
        record.name = full.removeprefix("streamserve.")
        try:
            return super().format(record)
        finally:
            record.name = full


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs (and replaces when called again)."""


class _JsonLines(JsonFormatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, then the record's own fields (``event``, ``key``, ``model``, ...)."""

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return datetime.fromtimestamp(record.created, UTC).isoformat()


def configure_logging(
    level: str, log_format: LogFormat | str = LogFormat.TEXT, stream: TextIO | None = None
) -> None:
    """Sends log records to ``stream`` (stderr) in ``log_format``; streamserve's own loggers
    at ``level``, other libraries at WARNING or above (the chatty ones at ERROR), unless
    ``level`` is DEBUG, which shows everything. Called again, it replaces its handler."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler(stream or sys.stderr)
    if LogFormat(log_format) is LogFormat.JSON:
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(_ShortNames(TEXT_FORMAT, TEXT_DATE_FORMAT))
    root.addHandler(handler)
    debug = numeric <= logging.DEBUG
    root.setLevel(numeric if debug else max(numeric, logging.WARNING))
    logging.getLogger("streamserve").setLevel(numeric)
    for name in CHATTY_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else max(numeric, logging.ERROR))
    logging.captureWarnings(True)  # warnings are records too: JSON when the logs are
    if not debug and not sys.warnoptions:  # -W and PYTHONWARNINGS win
        for category in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", category=category)


def log_listening(what: str, url: str) -> None:
    """A server of this process listens: ``what`` (``HTTP API``) at ``url``."""
    logging.getLogger("streamserve.api").info(
        "%s on %s", what, url, extra={"event": "listening", "service": what, "url": url}
    )


def _label(name: str, version: str) -> str:
    return f"{name} ({version})" if version else name


def log_model_event(event: ModelEvent) -> None:
    """One line for a model event: swaps and unloads at INFO, rejections and quarantines at
    WARNING, staging at DEBUG."""
    fields: dict[str, Any] = {
        "event": str(event.kind),
        "key": event.key,
        "model": event.name,
        "version": event.version,
    }
    log = logging.getLogger(MODELS_LOG)
    model = _label(event.name, event.version)
    kind = event.kind
    if kind is ModelEventKind.SWAPPED:
        fields |= {"previous_model": event.previous, "previous_version": event.previous_version}
        fields["load_ms"] = round(event.load_duration_s * 1000, 1)
        was = _label(event.previous, event.previous_version) if event.previous else "no model"
        log.info("key %r: %s -> %s", event.key, was, model, extra=fields)
    elif kind in (ModelEventKind.REJECTED, ModelEventKind.QUARANTINED):
        fields |= {"error_kind": event.error_kind, "reason": event.reason, "origin": event.origin}
        verb = "rejected" if kind is ModelEventKind.REJECTED else "quarantined"
        subject = (
            f"key {event.key!r}: model {model}"
            if event.key
            else f"a model message at {event.origin or 'an unknown place'}"
        )
        log.warning("%s %s (%s): %s", subject, verb, event.error_kind, event.reason, extra=fields)
    elif kind is ModelEventKind.SUPERSEDED:
        log.info(
            "key %r: model %s dropped: a newer model arrived first", event.key, model, extra=fields
        )
    elif kind is ModelEventKind.UNLOADED:
        fields["origin"] = event.origin
        log.info("key %r unloaded (%s)", event.key, event.origin or "admin action", extra=fields)
    else:
        fields["load_ms"] = round(event.load_duration_s * 1000, 1)
        log.debug("key %r: model %s staged", event.key, model, extra=fields)


class ServingSummary:
    """Logs one line every ``interval_s`` on a daemon thread: records/s and errors (by kind)
    since the last line, the consumer lag when the runtime knows it, the keys served and the
    model instances held in memory."""

    def __init__(
        self,
        core: ServingCore,
        interval_s: float,
        consumer_lag: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._core = core
        self._interval_s = interval_s
        self._consumer_lag = consumer_lag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-summary", daemon=True)
        self._last = self._totals()
        self._last_at = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.log_once()

    def _totals(self) -> dict[str, int]:
        return {
            name: value
            for name, value in self._core.counts.items()
            if name in ("records", "errors") or name.startswith("errors.")
        }

    def log_once(self) -> None:
        """Logs the line for the time since the last one."""
        now, totals = time.monotonic(), self._totals()
        elapsed_s = max(now - self._last_at, 1e-9)
        delta = {name: value - self._last.get(name, 0) for name, value in totals.items()}
        self._last, self._last_at = totals, now
        records = delta.get("records", 0)
        by_kind = {
            name.removeprefix("errors."): count
            for name, count in sorted(delta.items())
            if name.startswith("errors.") and count
        }
        slots = self._core.slots()
        keys = sum(slot.current is not None for slot in slots)
        live = sum(served.live for slot in slots for _, served in slot.models())
        lag = self._consumer_lag()
        fields = {
            "event": "summary",
            "interval_s": round(elapsed_s, 1),
            "records": records,
            "records_per_s": round(records / elapsed_s, 1),
            "errors": delta.get("errors", 0),
            "errors_by_kind": by_kind,
            "consumer_lag": lag,
            "keys_served": keys,
            "live_models": live,
        }
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in by_kind.items())
        logging.getLogger(SUMMARY_LOG).info(
            "last %.0f s: %s records/s, records %s, errors %s%s,%s keys served %s, live models %s",
            elapsed_s,
            f"{records / elapsed_s:,.1f}",
            f"{records:,}",
            f"{fields['errors']:,}",
            f" ({kinds})" if kinds else "",
            "" if lag is None else f" consumer lag {lag:,},",  # None: not known (embedded)
            f"{keys:,}",
            f"{live:,}",
            extra=fields,
        )
