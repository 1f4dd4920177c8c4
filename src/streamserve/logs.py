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
``py.warnings`` records, one line each. ``DEBUG`` shows everything. Nothing here runs at
import time.

Keys, model names and reasons come from model messages nobody vetted: the text format shows
control and format characters escaped (``\\n``, ``\\x1b``, ``\\u202e``), so that no name can
start a line of its own or send escape sequences to the operator's terminal, and both formats cut
what a model message may make long, so that no line grows past what log shippers take whole.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
import unicodedata
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
WARNINGS_LOG = "py.warnings"
# Model messages may carry names and reasons of megabytes: what a line shows of them. Docker's
# log drivers split lines longer than 16 KiB, which breaks a JSON line in two.
MAX_NAME_CHARS = 256  # a key, a model's name or version, an origin
MAX_REASON_CHARS = 2048
MAX_MESSAGE_CHARS = 4096  # any line's message; a JSON line's other text fields: MAX_REASON_CHARS
# What may not reach the terminal as it is: control characters (a newline starts a forged line,
# escape sequences hide text or set the title) and format characters (a bidi override reorders).
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters marked as cut."""
    return text if len(text) <= limit else f"{text[:limit]}… (cut)"


def printable(text: str) -> str:
    """``text`` with its control and format characters escaped: one line, shown as written."""
    if text.isprintable():  # the common case, in C
        return text
    return "".join(_code(char) if _unprintable(char) else char for char in text)


def _unprintable(char: str) -> bool:
    return unicodedata.category(char) in UNPRINTABLE_CATEGORIES


def _code(char: str) -> str:
    point = ord(char)
    if char == "\n":
        return "\\n"
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


class _TextLines(logging.Formatter):
    """The text format: one line per record (its message escaped and cut; a traceback, the
    process's own, follows on its lines), ``streamserve.runtime.kafka`` shown as
    ``runtime.kafka``."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        message, name = record.message, record.name
        record.message = cut(printable(message), MAX_MESSAGE_CHARS)
        record.name = name.removeprefix("streamserve.")
        try:
            return super().formatMessage(record)
        finally:
            record.message, record.name = message, name


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

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for field, value in log_data.items():
            if isinstance(value, str) and field not in ("exc_info", "stack_info"):
                log_data[field] = cut(
                    value, MAX_MESSAGE_CHARS if field == "message" else MAX_REASON_CHARS
                )
        return log_data


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
        handler.setFormatter(_TextLines(TEXT_FORMAT, TEXT_DATE_FORMAT))
    root.addHandler(handler)
    debug = numeric <= logging.DEBUG
    root.setLevel(numeric if debug else max(numeric, logging.WARNING))
    logging.getLogger("streamserve").setLevel(numeric)
    for name in CHATTY_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else max(numeric, logging.ERROR))
    warnings.showwarning = _log_warning  # warnings are records too: JSON when the logs are
    if not debug and not sys.warnoptions:  # -W and PYTHONWARNINGS win
        for category in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", category=category)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one ``py.warnings`` record (``logging.captureWarnings`` would add the
    warning's source line, a second line); one shown to a file of its own goes there."""
    if file is not None:
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    source = f"{filename}:{lineno}"
    logging.getLogger(WARNINGS_LOG).warning(
        "%s: %s: %s",
        source,
        category.__name__,
        message,
        extra={"event": "warning", "category": category.__name__, "source": source},
    )


def log_listening(what: str, url: str) -> None:
    """A server of this process listens: ``what`` (``HTTP API``) at ``url``."""
    logging.getLogger("streamserve.api").info(
        "%s on %s", what, url, extra={"event": "listening", "service": what, "url": url}
    )


def _label(name: str, version: str) -> str:
    return f"{name} ({version})" if version else name


def log_admin_action(action: str, key: str, name: str = "", version: str = "") -> None:
    """One INFO line for an operator's action through the admin API (a rollback names the
    model it made current): swaps an operator makes are logged as the stream's are."""
    key, name, version = (cut(text, MAX_NAME_CHARS) for text in (key, name, version))
    fields = {"event": f"admin_{action}", "key": key, "model": name, "version": version}
    made_current = f" -> {_label(name, version)}" if name else ""
    logging.getLogger(MODELS_LOG).info(
        "key %r: %s by the admin API%s", key, action, made_current, extra=fields
    )


def log_model_event(event: ModelEvent) -> None:
    """One line for a model event: swaps and unloads at INFO, rejections and quarantines at
    WARNING, staging at DEBUG. Names and reasons are cut (``MAX_NAME_CHARS``,
    ``MAX_REASON_CHARS``): they come from model messages."""
    key, name, version = (
        cut(text, MAX_NAME_CHARS) for text in (event.key, event.name, event.version)
    )
    origin = cut(event.origin, MAX_NAME_CHARS)
    fields: dict[str, Any] = {
        "event": str(event.kind),
        "key": key,
        "model": name,
        "version": version,
    }
    log = logging.getLogger(MODELS_LOG)
    model = _label(name, version)
    kind = event.kind
    if kind is ModelEventKind.SWAPPED:
        previous = cut(event.previous, MAX_NAME_CHARS)
        previous_version = cut(event.previous_version, MAX_NAME_CHARS)
        fields |= {"previous_model": previous, "previous_version": previous_version}
        fields["load_ms"] = round(event.load_duration_s * 1000, 1)
        was = _label(previous, previous_version) if previous else "no model"
        log.info("key %r: %s -> %s", key, was, model, extra=fields)
    elif kind in (ModelEventKind.REJECTED, ModelEventKind.QUARANTINED):
        reason = cut(event.reason, MAX_REASON_CHARS)
        fields |= {"error_kind": event.error_kind, "reason": reason, "origin": origin}
        verb = "rejected" if kind is ModelEventKind.REJECTED else "quarantined"
        subject = (
            f"key {key!r}: model {model}"
            if key
            else f"a model message at {origin or 'an unknown place'}"
        )
        log.warning("%s %s (%s): %s", subject, verb, event.error_kind, reason, extra=fields)
    elif kind is ModelEventKind.SUPERSEDED:
        log.info("key %r: model %s dropped: a newer model arrived first", key, model, extra=fields)
    elif kind is ModelEventKind.UNLOADED:
        fields["origin"] = origin
        log.info("key %r unloaded (%s)", key, origin or "admin action", extra=fields)
    else:
        fields["load_ms"] = round(event.load_duration_s * 1000, 1)
        log.debug("key %r: model %s staged", key, model, extra=fields)


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
        # A staged model serves its key's next record: the key is served (as "models caught
        # up" counts it) before any record came.
        keys = sum(slot.current is not None or slot.staged is not None for slot in slots)
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
