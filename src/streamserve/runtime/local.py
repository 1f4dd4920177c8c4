"""The embedded runtime: one process, sources and sinks in memory, files or standard streams.

Each loop turn takes new model messages, then closes a micro-batch on size or on its deadline,
scores it and writes one output per record. Model events are published to the errors sink
(rejections) and to an optional observer (the demo shows swaps). Before the first batch it waits
for the models already present to load, as a restarted server rebuilds its models before scoring.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from streamserve.codecs.base import Codec, InputRecord
from streamserve.errors import DescriptorError
from streamserve.runtime.batch import process_batch
from streamserve.runtime.encoding import drain_model_events
from streamserve.runtime.heap import freeze_startup_objects
from streamserve.runtime.model_directory import ModelMessage
from streamserve.runtime.streams import Sink, Source
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent
from streamserve.settings import BatchSettings

IDLE_WAIT_S = 0.05


class ModelSource(Protocol):
    def poll(self) -> list[ModelMessage]: ...


@dataclass
class RunSummary:
    records: int = 0
    results: int = 0
    errors: int = 0
    batches: int = 0
    model_events: int = 0
    elapsed_s: float = 0.0


class LocalRuntime:
    def __init__(
        self,
        core: ServingCore,
        codec: Codec,
        data: Source,
        results: Sink,
        errors: Sink,
        batch: BatchSettings,
        *,
        models: ModelSource | None = None,
        model_poll_interval_s: float = 0.2,
        on_event: Callable[[ModelEvent], None] | None = None,
        catch_up_timeout_s: float = 300.0,
    ) -> None:
        self._core = core
        self._codec = codec
        self._data = data
        self._results = results
        self._errors = errors
        self._batch = batch
        self._models = models
        self._model_poll_interval_s = model_poll_interval_s
        self._on_event = on_event
        self._catch_up_timeout_s = catch_up_timeout_s
        self._next_model_poll = 0.0
        self._stop = False
        self.ready = threading.Event()  # set once the models present at start have loaded
        self.consumer_lag: int | None = None  # no consumer group here: never known

    def stop(self) -> None:
        """Asks :meth:`run` to return after the batch in hand (from any thread)."""
        self._stop = True

    def run(self, count: int | None = None, timeout_s: float | None = None) -> RunSummary:
        """Serves until the data is exhausted, ``count`` records are done, or ``timeout_s``."""
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        summary = RunSummary()
        self._take_models(force=True)
        self._core.wait_for_models(self._catch_up_timeout_s)
        freeze_startup_objects()
        self.ready.set()
        while not self._stop and (count is None or summary.records < count):
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._take_models()
            limit = (
                self._batch.max_records
                if count is None
                else min(self._batch.max_records, count - summary.records)
            )
            records = self._collect(limit, deadline)
            if records:
                self._score(records, summary)
            summary.model_events += self._publish_events()
            if not records and self._data.exhausted:
                break
        summary.model_events += self._publish_events()
        self._results.flush()
        self._errors.flush()
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _collect(self, limit: int, deadline: float | None) -> list[InputRecord]:
        wait_s = (
            IDLE_WAIT_S
            if deadline is None
            else max(0.0, min(IDLE_WAIT_S, deadline - time.monotonic()))
        )
        records = self._data.poll(limit, wait_s)
        if not records:
            return records
        closes_at = time.monotonic() + self._batch.max_delay_ms / 1000
        while len(records) < limit and not self._data.exhausted:
            remaining = closes_at - time.monotonic()
            if remaining <= 0:
                break
            records.extend(self._data.poll(limit - len(records), remaining))
        return records

    def _score(self, records: list[InputRecord], summary: RunSummary) -> None:
        encoded = process_batch(self._core, self._codec, records)
        results, errors = encoded.results, encoded.errors
        self._results.write(results)
        self._errors.write(errors)
        summary.records += len(records)
        summary.results += len(results)
        summary.errors += len(errors)
        summary.batches += 1

    def _take_models(self, *, force: bool = False) -> None:
        if self._models is None:
            return
        now = time.monotonic()
        if not force and now < self._next_model_poll:
            return
        self._next_model_poll = now + self._model_poll_interval_s
        for message in self._models.poll():
            if message.payload is None:
                self._core.reject_model_message(DescriptorError(message.problem), message.origin)
            else:
                self._core.submit_model_message(message.payload, message.origin)

    def _publish_events(self) -> int:
        rejected, count = drain_model_events(self._core, self._on_event)
        self._errors.write(rejected)
        return count
