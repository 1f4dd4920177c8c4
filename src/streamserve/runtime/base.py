"""What a runtime is, and the one batch loop every runtime runs.

A runtime is a :class:`Transport` (where records and model messages come from, where outputs
go, how progress is acknowledged) driven by :class:`BatchLoop`. Each turn of the loop:

    take models -> next batch -> decode -> score -> encode -> emit -> publish model events
    -> after batch

The loop holds the parts every transport shares: batch limits, the ``count`` and ``timeout_s``
stops, the summary, model events, the collector freeze after startup, and the rule that a
transport that fails is closed as failed (nothing more is acknowledged). A new transport (Redis
Streams, a Flink operator's Python side) is one class of the protocol below plus a registration
in :mod:`streamserve.runtime.registry`.

Threading: the loop runs on the thread that calls :meth:`BatchLoop.run`; :meth:`BatchLoop.stop`
may be called from any thread (a signal handler, the HTTP API). The serving core is
thread-safe, and the HTTP API scores on its own threads while the loop runs.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from streamserve.codecs.base import Codec, InputRecord
from streamserve.runtime.batch import EncodedBatch, process_batch
from streamserve.runtime.encoding import OutputMessage, drain_model_events
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent
from streamserve.settings import BatchSettings

IDLE_WAIT_S = 0.05  # with no records: one wait before model messages are looked at again


@dataclass
class RunSummary:
    """What one :meth:`Runtime.run` did."""

    records: int = 0
    results: int = 0
    errors: int = 0
    batches: int = 0
    model_events: int = 0
    elapsed_s: float = 0.0


class Runtime(Protocol):
    """What the CLI, the HTTP API and embedding applications need of a runtime."""

    @property
    def ready(self) -> threading.Event:
        """Set while the runtime serves: startup models loaded and records flowing in."""
        ...

    @property
    def consumer_lag(self) -> int | None:
        """Records behind the input's end, when the transport knows it."""
        ...

    def run(self, count: int | None = None, timeout_s: float | None = None) -> RunSummary: ...

    def stop(self) -> None: ...


class SourcedBatch(Protocol):
    """A batch as a transport hands it over: its records, plus whatever the transport needs
    to acknowledge it (Kafka: the offsets to commit)."""

    @property
    def records(self) -> Sequence[InputRecord]: ...


BatchT = TypeVar("BatchT", bound=SourcedBatch)


class Transport(Protocol[BatchT]):
    """Where a runtime's records and models come from and where its outputs go."""

    @property
    def ready(self) -> threading.Event: ...

    @property
    def consumer_lag(self) -> int | None: ...

    @property
    def exhausted(self) -> bool:
        """No record will ever come again (a file read to its end); a stream never is."""
        ...

    def start(self, stopping: threading.Event) -> None:
        """Before the first batch: connect, and submit the models present at start and wait
        for them to load. ``stopping`` is set when the run is asked to stop."""
        ...

    def take_models(self) -> None:
        """Hands the model messages that arrived to the core (never waiting for a load)."""
        ...

    def next_batch(self, limit: int, wait_s: float) -> BatchT | None:
        """Up to ``limit`` records, waiting up to ``wait_s`` for the first; ``None`` if none
        came. :func:`collect_batch` implements the usual policy."""
        ...

    def emit(self, batch: BatchT, outputs: EncodedBatch) -> None:
        """Writes a batch's results and errors and acknowledges its records once they are
        written (at once, or later: before :meth:`finish` returns)."""
        ...

    def emit_events(self, events: Sequence[OutputMessage]) -> None:
        """Writes rejected-model events to the errors output."""
        ...

    def after_batch(self) -> None: ...

    def finish(self) -> None:
        """The run ends normally: every output written and every record acknowledged."""
        ...

    def close(self, failed: bool) -> None:
        """Releases the transport; when ``failed``, without acknowledging anything more."""
        ...


class BatchLoop(Generic[BatchT]):
    """The batch loop over a transport: a complete :class:`Runtime`.

    Every record taken from the transport gets exactly one output (a result or an error
    record) through :func:`process_batch`; only an :class:`~streamserve.errors.
    InfrastructureError` from the transport ends the run early, after closing the transport
    as failed.

    ``freeze_startup``: once the startup models are loaded, move every object alive out of the
    cyclic collector's view (:func:`freeze_startup_objects`). For a server process, which runs
    once: its collector pauses shrink. Not for an application that runs loops repeatedly, whose
    objects would never be collected.
    """

    def __init__(
        self,
        core: ServingCore,
        codec: Codec,
        transport: Transport[BatchT],
        batch: BatchSettings,
        *,
        on_event: Callable[[ModelEvent], None] | None = None,
        freeze_startup: bool = False,
    ) -> None:
        self._core = core
        self._freeze_startup = freeze_startup
        self._codec = codec
        self.transport = transport
        self._batch = batch
        self._on_event = on_event
        self._stopping = threading.Event()

    @property
    def ready(self) -> threading.Event:
        return self.transport.ready

    @property
    def consumer_lag(self) -> int | None:
        return self.transport.consumer_lag

    def stop(self) -> None:
        """Asks :meth:`run` to return after the batch in hand (from any thread)."""
        self._stopping.set()

    def run(self, count: int | None = None, timeout_s: float | None = None) -> RunSummary:
        """Serves until stopped, the input is exhausted, ``count`` records are done, or
        ``timeout_s`` passes."""
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        summary = RunSummary()
        failed = True
        try:
            self.transport.start(self._stopping)
            if self._freeze_startup:
                freeze_startup_objects()
            while self._serve_one(summary, count, deadline):
                pass
            summary.model_events += self._publish_events()
            self.transport.finish()
            failed = False
        finally:
            self.transport.close(failed)
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _serve_one(self, summary: RunSummary, count: int | None, deadline: float | None) -> bool:
        """One turn of the loop; whether to go on."""
        if self._stopping.is_set() or (count is not None and summary.records >= count):
            return False
        wait_s = IDLE_WAIT_S
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
            if wait_s <= 0:
                return False
        self.transport.take_models()
        limit = self._batch.max_records
        if count is not None:
            limit = min(limit, count - summary.records)
        batch = self.transport.next_batch(limit, wait_s)
        if batch is not None:
            outputs = process_batch(self._core, self._codec, batch.records)
            self.transport.emit(batch, outputs)
            summary.records += len(batch.records)
            summary.results += len(outputs.results)
            summary.errors += len(outputs.errors)
            summary.batches += 1
        summary.model_events += self._publish_events()
        self.transport.after_batch()
        return batch is not None or not self.transport.exhausted

    def _publish_events(self) -> int:
        rejected, count = drain_model_events(self._core, self._on_event)
        if rejected:
            self.transport.emit_events(rejected)
        return count


ItemT = TypeVar("ItemT")


def collect_batch(
    poll: Callable[[int, float], list[ItemT]],
    limit: int,
    wait_s: float,
    max_delay_s: float,
    *,
    keep: Callable[[list[ItemT]], list[ItemT]] | None = None,
) -> list[ItemT]:
    """A micro-batch from ``poll(max_items, timeout_s)``.

    The items queued already, without waiting (they arrived while the last batch was scored);
    else the first to arrive within ``wait_s`` and those arriving up to ``max_delay_s`` after
    it, up to ``limit``. ``keep``, after each further wait, filters the items held from before
    it: a source whose items can be taken away while it waits (a Kafka rebalance) drops them.
    """
    items = poll(limit, 0.0)
    if items:
        return items
    items = poll(1, wait_s)  # a Kafka consumer waits for as many as asked: ask for one
    closes_at = time.monotonic() + max_delay_s
    while items and len(items) < limit:
        remaining_s = closes_at - time.monotonic()
        if remaining_s <= 0:
            break
        more = poll(limit - len(items), remaining_s)
        if keep is not None:
            items = keep(items)
        if not more:
            break
        items.extend(more)
    return items


def log_caught_up(
    log: logging.Logger, core: ServingCore, source: str, models: int, started: float
) -> None:
    """The lifecycle line of a runtime whose startup models (``models`` of them, read from
    ``source`` since ``started``, a monotonic time) have loaded or been rejected."""
    elapsed_s = time.monotonic() - started
    keys = sum(slot.current is not None or slot.staged is not None for slot in core.slots())
    log.info(
        "models caught up: %s from %s loaded or rejected in %.1f s; %s",
        counted(models, "model"),
        source,
        elapsed_s,
        "1 key has a model" if keys == 1 else f"{keys:,} keys have a model",
        extra={
            "event": "models_caught_up",
            "models": models,
            "keys": keys,
            "source": source,
            "elapsed_s": round(elapsed_s, 3),
        },
    )


def counted(count: int, noun: str) -> str:
    """``1 model``, ``2 models``: for log lines."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def freeze_startup_objects() -> None:
    """Collects once, then moves every object alive now (imported modules, the models loaded at
    startup, a publisher's records) out of the cyclic collector's view.

    Its full passes then scan only what serving allocates afterwards: with TensorFlow loaded,
    a full pass over the startup objects takes tens of milliseconds, and those pauses showed as
    the latency tail. Frozen objects are never collected, so this is done once, after the
    startup models are loaded; models swapped in later stay collectable. Objects in reference
    cycles that are alive now are never freed: a process calls this once, at its start.
    """
    gc.collect()
    gc.freeze()
