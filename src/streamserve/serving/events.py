"""What happens to models, as events: the runtime publishes rejections and quarantines to the
errors output and the demo shows swaps. Produced by loader and scoring threads; drained by the
runtime.
"""

from __future__ import annotations

import enum
import queue
import time
from dataclasses import dataclass, field


class ModelEventKind(enum.StrEnum):
    STAGED = "model_staged"  # loaded and validated; current at the next batch of its key
    SWAPPED = "model_swapped"  # became current at a batch boundary
    REJECTED = "model_rejected"  # did not become current; ``reason`` says why
    SUPERSEDED = "model_superseded"  # loaded after a newer model of its key: dropped
    UNLOADED = "model_unloaded"  # the key was unloaded (admin action, models-topic tombstone)
    QUARANTINED = "model_quarantined"  # kept failing while serving: taken out, previous restored


@dataclass(frozen=True)
class ModelEvent:
    """One thing that happened to a model of ``key``; ``reason`` says why when it failed."""

    kind: ModelEventKind
    key: str
    name: str
    version: str = ""
    reason: str = ""
    error_kind: str = ""
    load_duration_s: float = 0.0
    origin: str = ""
    at: float = field(default_factory=time.time)
    previous: str = ""  # a swap: the name of the model it replaced ("" for a key's first)
    previous_version: str = ""


class EventLog:
    """A thread-safe queue of model events."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[ModelEvent] = queue.SimpleQueue()

    def put(self, event: ModelEvent) -> None:
        self._queue.put(event)

    def drain(self) -> list[ModelEvent]:
        events: list[ModelEvent] = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events
