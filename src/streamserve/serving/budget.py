"""The live-model budget: at most ``max_live`` model instances held at once, least recently used
evicted first (contract 5). An evicted model keeps its identity, statistics and bytes; it is
instantiated again when its key's next batch arrives, off the scoring thread
(:mod:`streamserve.serving.reloads`). Models in use are never evicted; staged models count.

The budget counts instances, not bytes: no runtime reports a model's memory reliably (sessions
share pools and allocate lazily), and a count is what operators can reason about; the
benchmarks measure RSS per model for each format to convert one into the other.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamserve.serving.slot import ServedModel


class LiveModels:
    """The budget of live model instances (``max_live_models``): least recently used first
    out. An evicted model keeps its slot and statistics and is made again on its next use."""

    def __init__(self, max_live: int | None = None) -> None:
        self.max_live = max_live
        self._lock = threading.Lock()
        self._lru: OrderedDict[int, ServedModel] = OrderedDict()
        self.evictions = 0

    def touch(self, served: ServedModel) -> None:
        """``served`` was just used (or instantiated): it is evicted last; others may go now.

        A retired model is never added: its instance closes with its last user. Checked under
        the lock that :meth:`forget` takes, and models are marked retired before they are
        forgotten, so a touch racing a retirement cannot leave the model here for good.
        A model is touched when it stages, too: one waiting for its first batch is evicted like
        any idle model (its first batch makes it again)."""
        if self.max_live is None:
            return
        with self._lock:
            if served.retired:
                return
            self._lru[id(served)] = served
            self._lru.move_to_end(id(served))
            excess = len(self._lru) - self.max_live
            # The oldest few: some may be in use; those left over go at a later touch.
            candidates = list(islice(self._lru.values(), 2 * excess + 4)) if excess > 0 else []
        for candidate in candidates:
            if excess <= 0:
                return
            if candidate is not served and candidate.evict():
                self.forget(candidate)
                excess -= 1
                with self._lock:
                    self.evictions += 1

    def forget(self, served: ServedModel) -> None:
        """``served`` holds no instance any more (evicted or closed)."""
        with self._lock:
            self._lru.pop(id(served), None)

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._lru)
