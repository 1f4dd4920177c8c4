"""The embedded runtime: one process, sources and sinks in memory, files or standard streams.

Model messages come from a :class:`ModelSource` (a watched directory, an in-memory queue),
looked at every ``embedded.poll_interval_ms``. Rejected-model events go to the errors sink, and
every model event to an optional observer (the demo shows swaps). Before the first batch it waits
for the models already present to load, as a restarted server rebuilds its models before
scoring.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from streamserve.codecs.base import Codec, Framing, InputRecord
from streamserve.runtime.base import BatchLoop, RunSummary, collect_batch, log_caught_up
from streamserve.runtime.batch import EncodedBatch
from streamserve.runtime.encoding import OutputMessage
from streamserve.runtime.model_directory import ModelDirectory, ModelMessage
from streamserve.runtime.streams import (
    LineSink,
    Sink,
    Source,
    StreamSource,
    open_input,
    open_output,
)
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEvent
from streamserve.settings import BatchSettings

if TYPE_CHECKING:
    from streamserve.runtime.registry import RuntimeContext

__all__ = ["EmbeddedRuntime", "ModelSource", "RunSummary", "embedded_runtime"]


STARTUP_WAIT_S = 0.1  # one wait for the startup models, between looks at a stop request
log = logging.getLogger(__name__)


class ModelSource(Protocol):
    def poll(self) -> list[ModelMessage]: ...


@dataclass(frozen=True)
class RecordBatch:
    records: Sequence[InputRecord]


class EmbeddedTransport:
    """Records from a :class:`Source`, outputs to two :class:`Sink` s, models from a
    :class:`ModelSource`; a record is acknowledged once it is written."""

    def __init__(
        self,
        core: ServingCore,
        data: Source,
        results: Sink,
        errors: Sink,
        batch: BatchSettings,
        *,
        models: ModelSource | None,
        model_poll_interval_s: float,
        catch_up_timeout_s: float,
    ) -> None:
        self._core = core
        self._data = data
        self._results = results
        self._errors = errors
        self._max_delay_s = batch.max_delay_ms / 1000
        self._models = models
        self._model_poll_interval_s = model_poll_interval_s
        self._catch_up_timeout_s = catch_up_timeout_s
        self._next_model_poll = 0.0
        self.ready = threading.Event()  # set once the models present at start have loaded
        self.consumer_lag: int | None = None  # no consumer group here: never known

    @property
    def exhausted(self) -> bool:
        return self._data.exhausted

    def start(self, stopping: threading.Event) -> None:
        started = time.monotonic()
        submitted = self._take_models(force=True)
        deadline = started + self._catch_up_timeout_s
        while not self._core.wait_for_models(STARTUP_WAIT_S):  # a stop cuts the wait short
            if stopping.is_set():
                return
            if time.monotonic() >= deadline:
                break  # serve with what has loaded: the rest loads beside serving
        if self._models is not None:
            log_caught_up(log, self._core, "the models folder", submitted, started)
        self.ready.set()

    def take_models(self) -> None:
        self._take_models(force=False)

    def _take_models(self, *, force: bool) -> int:
        """Submits the model messages that arrived; how many (rejected ones included: the
        "models caught up" line counts every model loaded or rejected)."""
        if self._models is None:
            return 0
        now = time.monotonic()
        if not force and now < self._next_model_poll:
            return 0
        self._next_model_poll = now + self._model_poll_interval_s
        submitted = 0
        for message in self._models.poll():
            submitted += 1
            if message.payload is None:
                self._core.reject_model_message(message.rejection(), message.origin)
            else:
                self._core.submit_model_message(
                    message.payload, message.origin, message.signature, in_key_order=True
                )
        return submitted

    def next_batch(self, limit: int, wait_s: float) -> RecordBatch | None:
        records = collect_batch(self._data.poll, limit, wait_s, self._max_delay_s)
        return RecordBatch(records) if records else None

    def emit(self, batch: RecordBatch, outputs: EncodedBatch) -> None:
        self._results.write(outputs.results)
        self._errors.write(outputs.errors)

    def emit_events(self, events: Sequence[OutputMessage]) -> None:
        self._errors.write(events)

    def after_batch(self) -> None:
        pass

    def finish(self) -> None:
        self._results.flush()
        self._errors.flush()

    def close(self, failed: bool) -> None:
        pass  # the sinks belong to whoever opened them


class EmbeddedRuntime(BatchLoop[RecordBatch]):
    """The batch loop over in-process sources and sinks: the default runtime."""

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
        freeze_startup: bool = False,
    ) -> None:
        transport = EmbeddedTransport(
            core,
            data,
            results,
            errors,
            batch,
            models=models,
            model_poll_interval_s=model_poll_interval_s,
            catch_up_timeout_s=catch_up_timeout_s,
        )
        super().__init__(
            core, codec, transport, batch, on_event=on_event, freeze_startup=freeze_startup
        )


def embedded_runtime(context: RuntimeContext) -> EmbeddedRuntime:
    """The embedded runtime of the ``[embedded]`` settings: records from a file or stdin,
    results and errors to files or stdout/stderr, models from a watched directory."""
    settings = context.settings.embedded
    resources = context.resources
    data = resources.enter_context(open_input(settings.data))
    results = resources.enter_context(open_output(settings.results, sys.stdout.buffer))
    errors = resources.enter_context(open_output(settings.errors, sys.stderr.buffer))
    framing = context.codec.framing
    source = StreamSource(
        data, Path(settings.data).name, length_delimited=framing is Framing.LENGTH_DELIMITED
    )
    return EmbeddedRuntime(
        context.core,
        context.codec,
        source,
        LineSink(results),
        LineSink(errors),
        context.settings.batch,
        models=(
            ModelDirectory(
                settings.models_dir, context.settings.serving.security.max_model_message_bytes
            )
            if settings.models_dir
            else None
        ),
        model_poll_interval_s=settings.poll_interval_ms / 1000,
        on_event=context.on_event,
        freeze_startup=True,  # a server process: it runs once
    )
