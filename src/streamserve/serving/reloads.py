"""Models evicted by the live-model budget, made again off the scoring thread.

A batch that finds a key's model evicted hands its reload to a worker here and scores its other
keys meanwhile; the key's records wait for the reload (their batch is not returned without
them, and their results keep their places: outputs follow the input order), then are scored by
that model. So a reload, which may take long (a large model) or hang (a location on a dead
mount), neither holds up the batch's other keys nor counts as a call of the model: a reload that
overruns the scoring deadline fails its key's records with the time limit, and the model stays
in service (its reload goes on; a later batch finds it made).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from streamserve.errors import ScoringError, ScoringTimeoutError
from streamserve.formats.base import FloatMatrix
from streamserve.serving.budget import LiveModels
from streamserve.serving.deadline import CallWatch, TimedCall, TimedCalls, result_of

if TYPE_CHECKING:
    from streamserve.serving.slot import ModelSlot, ServedModel

RELOADS_AHEAD = 2  # reloads of a batch under way at once: one made while the previous scores
WAIT_SLICE_S = 1.0  # how often a wait looks whether its batch was given up


class ModelReloads:
    """Makes evicted models again on workers of their own (:class:`TimedCalls`): one reload per
    model at a time, shared by every batch that needs it; a reload that hangs keeps only its
    worker. A model made again is touched in the budget (used last, evicted last)."""

    def __init__(self, live: LiveModels) -> None:
        self._live = live
        self._calls = TimedCalls("model-reload")
        self._lock = threading.Condition()
        self._running: dict[ServedModel, TimedCall] = {}

    def start(self, served: ServedModel) -> TimedCall:
        """The reload of ``served``: the one under way, or a new one."""
        with self._lock:
            timed = self._running.get(served)
            if timed is None:
                timed = self._calls.start(
                    lambda: self._reload(served),
                    f"making model {served.identity.name!r} again after its eviction",
                )
                self._running[served] = timed
        return timed

    def _reload(self, served: ServedModel) -> None:
        try:
            with served.instance():  # made again here (ScoringError if it cannot be)
                pass
            self._live.touch(served)
        finally:
            with self._lock:
                self._running.pop(served, None)
                self._lock.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Waits until no reload is under way; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._running, timeout_s)

    def close(self) -> None:
        self._calls.close()


@dataclass(eq=False)
class WaitingGroup:
    """A key's records whose model was evicted: the batch holds the model (``served`` is
    acquired) until they are scored or failed, and their reload runs meanwhile."""

    key: str
    rows: npt.NDArray[np.intp]
    columns: tuple[tuple[str, ...], FloatMatrix]
    complete: bool
    slot: ModelSlot
    served: ServedModel
    reload: TimedCall | None = None
    released: bool = False

    def start(self, reloads: ModelReloads) -> None:
        if self.reload is None:
            self.reload = reloads.start(self.served)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.served.release()

    def await_model(
        self,
        reloads: ModelReloads,
        watch: CallWatch,
        deadline_s: float | None,
        cancelled: threading.Event | None,
    ) -> ScoringError | None:
        """Waits for the reload: ``None`` once the model is live, else why it is not (the
        reload failed, or it has run ``deadline_s`` since it was handed over). While waiting,
        the batch is in no call: ``watch`` hears so at every slice, since the reload is judged
        here by its own time."""
        self.start(reloads)
        timed = self.reload
        assert timed is not None
        while not timed.wait(self._slice(timed, deadline_s)):
            watch.leave()
            if cancelled is not None and cancelled.is_set():
                return ScoringTimeoutError("the batch was given up past the scoring deadline")
            if deadline_s is not None and time.monotonic() - timed.handed_at >= deadline_s:
                return ScoringTimeoutError(
                    f"model {self.served.identity.name!r} of key {self.key!r} is being made "
                    f"again after its eviction and was not ready within {deadline_s:g} s "
                    "(serving.scoring_deadline_s); its records fail until it is"
                )
        watch.leave()
        try:
            result_of(timed)
        except ScoringError as err:
            return err
        return None

    @staticmethod
    def _slice(timed: TimedCall, deadline_s: float | None) -> float:
        if deadline_s is None:
            return WAIT_SLICE_S
        left = timed.handed_at + deadline_s - time.monotonic()
        return max(0.0, min(left, deadline_s / 4, WAIT_SLICE_S))
