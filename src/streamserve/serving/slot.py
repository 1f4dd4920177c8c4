"""ModelSlot: the current, staged and previous model of one key (data type).

Loader threads stage models; the scoring thread takes the model for each batch with
:meth:`ModelSlot.model_for_batch`, which promotes a staged model first. So a swap happens only
at a batch boundary: a batch is scored by one model from its first record to its last.

Each submitted model carries a sequence number; a model is staged only if it is newer than the
slot's current and staged ones, so a slow load of an older model can never replace a newer one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from streamserve.errors import ScoringError
from streamserve.formats.base import FloatMatrix, InputSpec, Model
from streamserve.serving.stats import ModelServingInfo, ServingInfoSnapshot


@dataclass(frozen=True)
class ModelIdentity:
    """What results and events say about a model."""

    name: str
    version: str
    description: str
    model_type: str
    sequence: int


class ServedModel:
    """A model of a key with its identity and statistics; its instance may come and go.

    With a live-model budget, an idle instance is evicted (closed) and made again from the
    model's bytes by ``reload`` on its next use; without one, the instance lives until the model
    is retired. Scoring holds the instance through :meth:`instance`, so it is never evicted while
    in use.
    """

    def __init__(
        self,
        identity: ModelIdentity,
        model: Model,
        stats: ModelServingInfo,
        load_duration_s: float,
        *,
        submitted_at: float | None = None,
        output_kind: str = "O",
        reload: Callable[[], Model] | None = None,
        on_release: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.identity = identity
        self.inputs: InputSpec = model.inputs
        self.stats = stats
        self.load_duration_s = load_duration_s
        self.submitted_at = time.monotonic() if submitted_at is None else submitted_at
        self.swap_delay_s: float | None = None  # from submission to serving its first batch
        self.output_kind = output_kind  # numpy dtype kind of its output, seen in validation
        self.reloads = 0
        self._model: Model | None = model
        self._reload = reload
        self._on_release = on_release
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False

    @property
    def live(self) -> bool:
        """Whether the instance is in memory now."""
        return self._model is not None

    @contextmanager
    def instance(self) -> Iterator[Model]:
        """The live instance, made again first if it was evicted; held while the block runs."""
        with self._lock:
            if self._model is None:
                self._model = self._instantiate_again()
            self._users += 1
            model = self._model
        try:
            yield model
        finally:
            with self._lock:
                self._users -= 1

    def _instantiate_again(self) -> Model:
        if self._closed or self._reload is None:
            raise ScoringError(f"model {self.identity.name!r} was retired")
        try:
            model = self._reload()
        except Exception as err:
            raise ScoringError(
                f"model {self.identity.name!r} could not be instantiated again after its "
                f"eviction: {err}"
            ) from err
        self.reloads += 1
        return model

    def evict(self) -> bool:
        """Closes the instance if it is idle and can be made again; returns whether it was."""
        with self._lock:
            if self._users or self._model is None or self._reload is None:
                return False
            model, self._model = self._model, None
        model.close()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            model, self._model = self._model, None
        if model is not None:
            model.close()
        if self._on_release is not None:
            self._on_release(self)


@dataclass(frozen=True)
class Rejection:
    """A model that did not become current, and why."""

    key: str
    name: str
    version: str
    kind: str
    reason: str
    at: float = field(default_factory=time.time)


OBSERVE_REFRESH_S = 1.0


@dataclass(frozen=True)
class ObservedSchema:
    """The feature columns of the key's latest records and a few rows to validate new models."""

    feature_names: tuple[str, ...]
    sample: FloatMatrix


class ModelSlot:
    def __init__(
        self, key: str, max_rejections: int = 20, max_history: int = 20, *, floor: int = -1
    ) -> None:
        self.key = key
        self._floor = floor  # models submitted at or before this sequence never stage here
        self._closed = False
        self._lock = threading.Lock()
        self._history: deque[ServingInfoSnapshot] = deque(maxlen=max_history)
        self._current: ServedModel | None = None
        self._staged: ServedModel | None = None
        self._previous: ServedModel | None = None
        self._rejections: deque[Rejection] = deque(maxlen=max_rejections)
        self._rejected_total = 0
        self._schema: ObservedSchema | None = None
        self._observed_at = 0.0
        self._pinned = False

    # --- loader side -------------------------------------------------------------------------
    def stage(self, served: ServedModel) -> bool:
        """Stages ``served`` unless a newer model is current or staged, or the key was unloaded
        after ``served`` was submitted; returns whether it was staged."""
        with self._lock:
            newest = max(
                (m.identity.sequence for m in (self._current, self._staged) if m is not None),
                default=-1,
            )
            if self._closed or served.identity.sequence <= max(newest, self._floor):
                return False
            superseded, self._staged = self._staged, served
        if superseded is not None:
            superseded.close()  # never served: no thread holds it
        return True

    def reject(self, rejection: Rejection) -> None:
        with self._lock:
            self._rejections.append(rejection)
            self._rejected_total += 1

    def observed_schema(self) -> ObservedSchema | None:
        with self._lock:
            return self._schema

    # --- scoring side (one thread) -----------------------------------------------------------
    def model_for_batch(self) -> tuple[ServedModel | None, bool]:
        """The model to score the next batch with, and whether it was just swapped in."""
        with self._lock:
            if self._staged is None or self._pinned:
                return self._current, False
            staged, self._staged = self._staged, None
            retired, self._previous, self._current = self._previous, self._current, staged
            if self._previous is not None:
                self._history.append(self._previous.stats.snapshot())
        staged.stats.mark_current()
        staged.swap_delay_s = time.monotonic() - staged.submitted_at
        if retired is not None:
            retired.close()
        return staged, True

    def observe(self, feature_names: tuple[str, ...], rows: FloatMatrix, keep: int) -> None:
        """Remembers the latest records' columns and up to ``keep`` of their complete rows.

        Once ``keep`` rows of unchanged columns are held, they are refreshed at most every
        ``OBSERVE_REFRESH_S``: a key scored in many small batches (thousands of keys) pays
        for this once a second, not once a batch."""
        now = time.monotonic()
        previous = self._schema
        if (
            previous is not None
            and previous.feature_names == feature_names
            and len(previous.sample) >= keep
            and now - self._observed_at < OBSERVE_REFRESH_S
        ):
            return
        complete = rows[~np.isnan(rows).any(axis=1)][-keep:]
        with self._lock:
            previous = self._schema
            if previous is not None and previous.feature_names == feature_names:
                if not len(complete):
                    return
                complete = np.concatenate((previous.sample, complete))[-keep:]
            self._schema = ObservedSchema(feature_names, complete.copy())
            self._observed_at = now

    # --- admin -------------------------------------------------------------------------------
    def rollback(self) -> ServedModel:
        """Makes the previous model current again (and the current one previous).

        A staged model that waited for the next batch is dropped: the operator's choice wins
        until the next model arrives. Raises LookupError when there is nothing to roll back to.
        """
        with self._lock:
            if self._previous is None or self._current is None:
                raise LookupError(f"key {self.key!r} has no previous model to roll back to")
            dropped, self._staged = self._staged, None
            self._current, self._previous = self._previous, self._current
            restored = self._current
        restored.stats.mark_current()
        if dropped is not None:
            dropped.close()
        return restored

    def pin(self, pinned: bool) -> None:
        """While pinned, new models load and wait staged; the current model keeps serving."""
        with self._lock:
            self._pinned = pinned

    @property
    def pinned(self) -> bool:
        return self._pinned

    # --- readers -----------------------------------------------------------------------------
    @property
    def current(self) -> ServedModel | None:
        return self._current

    @property
    def staged(self) -> ServedModel | None:
        return self._staged

    @property
    def previous(self) -> ServedModel | None:
        return self._previous

    @property
    def rejections(self) -> list[Rejection]:
        with self._lock:
            return list(self._rejections)

    def served_history(self) -> list[ServingInfoSnapshot]:
        """Final statistics of the models this key served before its current one, oldest first."""
        with self._lock:
            return list(self._history)

    @property
    def rejected_total(self) -> int:
        return self._rejected_total

    def close(self) -> None:
        """Closes the slot's models; nothing stages in it after."""
        with self._lock:
            self._closed = True
            models = [self._current, self._staged, self._previous]
            self._current = self._staged = self._previous = None
        for served in models:
            if served is not None:
                served.close()
