"""ModelSlot: the current, staged and previous model of one key (data type).

Loader threads stage models; every thread that scores (the runtime's, and the API's for V2
requests) takes the model for a batch with :meth:`ModelSlot.batch_model`, which promotes a staged
model first. So a swap happens only at a batch boundary: a batch is scored by one model from its
first record to its last, and that model is not closed while the batch uses it.

Each submitted model carries a sequence number; a model is staged only if it is newer than every
model staged in the slot before, so a slow load of an older model can never replace a newer one.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from streamserve.errors import ModelValidationError, NothingToRollBackError, ScoringError
from streamserve.formats.base import FloatMatrix, InputSpec, Model
from streamserve.serving.output import ValueType, value_type_conflict
from streamserve.serving.stats import ModelServingInfo, ServingInfoSnapshot

log = logging.getLogger(__name__)


class ModelRole(enum.StrEnum):
    """What a model is to its key."""

    CURRENT = "current"
    STAGED = "staged"
    PREVIOUS = "previous"


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

    Several threads may score with it at once (the runtime's, and the API's for V2 requests):
    each holds it through :meth:`acquire`/:meth:`release` or :meth:`instance`. Retiring it (a
    swap, an unload, a quarantine) closes the instance only once its last user releases it, so
    a batch that took a model is scored by that model to its last record.

    With a live-model budget, an idle instance is evicted (closed) and made again from the
    model's bytes by ``reload`` on its next use; without one, the instance lives until the model
    is retired.
    """

    def __init__(
        self,
        identity: ModelIdentity,
        model: Model,
        stats: ModelServingInfo,
        load_duration_s: float,
        *,
        submitted_at: float | None = None,
        value_type: ValueType = ValueType.NUMBER,
        declared_type: bool = False,
        reload: Callable[[], Model] | None = None,
        on_release: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.identity = identity
        self.inputs: InputSpec = model.inputs
        self.stats = stats
        self.load_duration_s = load_duration_s
        self.submitted_at = time.monotonic() if submitted_at is None else submitted_at
        self.swap_delay_s: float | None = None  # from submission to serving its first batch
        self.value_type = value_type  # seen in validation; every batch must publish this type
        self.declared_type = declared_type  # its descriptor declared it: may change the key's
        self.reloads = 0
        self.consecutive_failures = 0  # records it raised on since its last scored record
        self.failing_batches = 0  # batches in a row in which it scored no record
        self._model: Model | None = model
        self._reload = reload
        self._on_release = on_release
        self._lock = threading.Lock()
        self._reloading = threading.Lock()  # one reload at a time, outside ``_lock``
        self._users = 0
        self._retired = False
        self._calls_stuck = 0

    @property
    def calls_stuck(self) -> int:
        """Calls into this model that overran the scoring deadline and still run."""
        return self._calls_stuck

    def call_stuck(self) -> None:
        """A call into this model overran the scoring deadline: it gets no further calls until
        :meth:`call_returned` (each costs a thread that cannot be had back)."""
        with self._lock:
            self._calls_stuck += 1

    def call_returned(self) -> None:
        with self._lock:
            self._calls_stuck -= 1

    @property
    def live(self) -> bool:
        """Whether the instance is in memory now."""
        return self._model is not None

    @property
    def retired(self) -> bool:
        """Whether the model left its slot: it takes no new users and is never made again."""
        return self._retired

    def acquire(self) -> None:
        """Counts a user: the instance is neither evicted nor closed until it releases."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            closing = self._retired and self._users == 0
            model = self._model if closing else None
            if closing:
                self._model = None
        if model is not None:
            self._close_quietly(model)

    @contextmanager
    def instance(self) -> Iterator[Model]:
        """The live instance, made again first if it was evicted; held while the block runs.

        A retired model is made again only for a batch that leased it before its retirement
        (that batch is scored by it to its last record), and closed with its last user."""
        self.acquire()
        try:
            yield self._live_instance()
        finally:
            self.release()

    def leased_instance(self) -> Model:
        """:meth:`instance` for a caller that holds the model already (:meth:`acquire`, or a
        slot's lease) and releases it after using the instance: no ``with`` block, for a
        scoring loop over thousands of keys."""
        model = self._model  # held, a live instance stays: evict() and close() wait for users
        if model is not None:
            return model
        self.acquire()
        try:
            return self._live_instance()
        finally:
            self.release()

    def _live_instance(self) -> Model:
        """The instance, made again if it was evicted. The reload runs outside ``_lock``: it
        may take long or hang, and retiring the model (a quarantine, an unload) must not
        wait for it."""
        with self._lock:
            if self._model is not None:
                return self._model
            leased_before = self._users > 1
        with self._reloading:
            with self._lock:
                if self._model is not None:  # made again by the user before this one
                    return self._model
            model = self._instantiate_again(leased_before)
            with self._lock:
                self._model = model
                return model

    def _instantiate_again(self, leased_before: bool) -> Model:
        if (self._retired and not leased_before) or self._reload is None:
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
            if self._users or self._model is None or self._reload is None or self._retired:
                return False
            model, self._model = self._model, None
        self._close_quietly(model)
        return True

    def close(self) -> None:
        """Retires the model: closed now if nobody uses it, else when its last user releases."""
        with self._lock:
            self._retired = True
            model = self._model if self._users == 0 else None
            if model is not None:
                self._model = None
        if self._on_release is not None:
            self._on_release(self)  # out of the live-model budget at once
        if model is not None:
            self._close_quietly(model)

    def _close_quietly(self, model: Model) -> None:
        """Closes an instance nobody uses any more. Its ``close`` raising is the model's own
        problem: logged, never passed on to whoever closed it (another key's batch evicting it,
        a successor's first batch retiring it)."""
        try:
            model.close()
        except Exception:
            log.exception("model %r raised while being closed; it is closed", self.identity.name)


@dataclass(frozen=True)
class Rejection:
    """A model that did not become current, and why."""

    key: str
    name: str
    version: str
    kind: str
    reason: str
    at: float = field(default_factory=time.time)


# a key's sample of rows is refreshed at most this often once full: with 10,000 keys each is
# scored every few seconds, and a refresh a visit was a tenth of the scoring time
OBSERVE_REFRESH_S = 10.0


@dataclass(frozen=True)
class ObservedSchema:
    """The feature columns of the key's latest records and a few rows to validate new models."""

    feature_names: tuple[str, ...]
    sample: FloatMatrix


class ModelSlot:
    """The models of one key: current, staged (loaded and validated, current at the key's next
    batch) and previous (for rollback), their statistics, recent rejections, and what the key's
    records look like (their columns, a few rows to probe new models, the column order that
    feeds positional models).

    Ordering comes from sequence numbers given at submission, never from when a load finishes:
    a model stages only if it is newer than every model that staged here before (``_newest``), so
    a slow load of an older model never becomes current, rollbacks included.
    """

    def __init__(self, key: str, max_rejections: int = 20, max_history: int = 20) -> None:
        self.key = key
        self._newest = -1  # sequence of the newest model staged here
        self._value_type: ValueType | None = None  # kept while the key exists, even if empty
        self._closed = False
        self._lock = threading.Lock()
        self._max_history = max_history
        self._history: OrderedDict[int, ServingInfoSnapshot] = OrderedDict()
        self._current: ServedModel | None = None
        self._staged: ServedModel | None = None
        self._previous: ServedModel | None = None
        self._rejections: deque[Rejection] = deque(maxlen=max_rejections)
        self._rejected_total = 0
        self._quarantined_total = 0
        self._schema: ObservedSchema | None = None
        self._observed_at = 0.0
        self._positional_order: tuple[str, ...] | None = None
        self._pinned = False

    # --- loader side -------------------------------------------------------------------------
    def stage(self, served: ServedModel) -> bool:
        """Stages ``served`` unless a newer model staged here before or the slot was closed (its
        key unloaded); returns whether it was staged. The core makes no new slot for a model
        submitted before its key's unloading.

        Raises :class:`ModelValidationError` for a model of another value type than the key's
        that does not declare it: checked here, under the lock, because the key's type may have
        been set by a model that staged while this one was validated."""
        with self._lock:
            if self._closed or served.identity.sequence <= self._newest:
                return False
            key_type = self._value_type
            if key_type not in (None, served.value_type) and not served.declared_type:
                raise ModelValidationError(
                    value_type_conflict(served.identity.name, served.value_type, key_type)
                )
            self._newest = served.identity.sequence
            self._value_type = served.value_type
            superseded, self._staged = self._staged, served
        if superseded is not None:
            superseded.close()
        return True

    def reject(self, rejection: Rejection) -> None:
        with self._lock:
            self._rejections.append(rejection)
            self._rejected_total += 1

    def observed_schema(self) -> ObservedSchema | None:
        with self._lock:
            return self._schema

    @property
    def value_type(self) -> ValueType | None:
        """The type of the values the key publishes: its newest staged model's. Kept when the
        key's models are quarantined, until the key is unloaded."""
        return self._value_type

    # --- scoring side --------------------------------------------------------------------------
    @contextmanager
    def batch_model(self) -> Iterator[tuple[ServedModel | None, bool]]:
        """The model to score the next batch with (held until the block ends), and whether it
        was just swapped in. A staged model becomes current here: at a batch boundary."""
        served, swapped = self.lease()
        try:
            yield served, swapped
        finally:
            if served is not None:
                served.release()

    def lease(self) -> tuple[ServedModel | None, bool]:
        """:meth:`batch_model` without a ``with`` block: the model is held (acquired) until
        the caller calls its :meth:`ServedModel.release`."""
        with self._lock:
            served, retired, swapped = self._promote()
            if served is not None:
                served.acquire()
        if retired is not None:
            retired.close()
        if swapped and served is not None:
            served.stats.mark_current()
            served.swap_delay_s = time.monotonic() - served.submitted_at
        return served, swapped

    def _promote(self) -> tuple[ServedModel | None, ServedModel | None, bool]:
        """Under the lock: (current model, model retired by a swap, whether it swapped)."""
        # a pin keeps the current model serving; a key with none yet (pinned right after a
        # start, before its first batch) takes its staged model, or it would serve nothing
        if self._staged is None or (self._pinned and self._current is not None):
            return self._current, None, False
        staged, self._staged = self._staged, None
        retired, self._previous, self._current = self._previous, self._current, staged
        if self._previous is not None:
            self._remember(self._previous)
        return staged, retired, True

    def _remember(self, served: ServedModel) -> None:
        """Keeps the statistics of a model that stopped being current (once, the latest)."""
        sequence = served.identity.sequence
        self._history.pop(sequence, None)
        self._history[sequence] = served.stats.snapshot()
        while len(self._history) > self._max_history:
            self._history.popitem(last=False)

    def quarantine(
        self, served: ServedModel, rejection: Rejection
    ) -> tuple[bool, ServedModel | None]:
        """Takes ``served`` out of service because it keeps failing: the previous model becomes
        current again. Returns whether ``served`` was taken out (only if it was still current)
        and the model that serves now (``None`` if there was no previous one)."""
        with self._lock:
            if self._current is not served:
                return False, None
            self._remember(served)
            restored, dropped = self._previous, None
            if restored is not None and restored.value_type != self._value_type:
                restored, dropped = None, restored  # the publisher moved the key's type on
            self._current, self._previous = restored, None
            if restored is not None:
                self._history.pop(restored.identity.sequence, None)
            self._rejections.append(rejection)
            self._rejected_total += 1
            self._quarantined_total += 1
        served.close()
        if dropped is not None:
            dropped.close()
        if restored is not None:
            restored.stats.mark_current()
        return True, restored

    def observe(
        self,
        feature_names: tuple[str, ...],
        rows: FloatMatrix,
        keep: int,
        *,
        complete: bool = False,
    ) -> None:
        """Remembers the latest records' columns and up to ``keep`` of their complete rows
        (``complete``: the caller knows that every row is).

        Once ``keep`` rows of unchanged columns are held, they are refreshed at most every
        ``OBSERVE_REFRESH_S``: a key scored in many small batches (thousands of keys) pays
        for this once in a while, not once a batch."""
        now = time.monotonic()
        previous = self._schema
        if (
            previous is not None
            and previous.feature_names == feature_names
            and len(previous.sample) >= keep
            and now - self._observed_at < OBSERVE_REFRESH_S
        ):
            return
        kept = rows[-keep:] if complete else rows[~np.isnan(rows).any(axis=1)][-keep:]
        with self._lock:
            previous = self._schema
            if previous is not None and previous.feature_names == feature_names:
                if not len(kept):
                    return
                kept = np.concatenate((previous.sample, kept))[-keep:]
            self._schema = ObservedSchema(feature_names, kept.copy())
            self._observed_at = now

    @property
    def positional_order(self) -> tuple[str, ...] | None:
        """The record fields that feed a positional model, in its input order, once fixed."""
        return self._positional_order

    def fix_positional_order(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Fixes the key's positional order to ``names`` unless one is fixed; returns the order.

        Fixed once for the key (until it is unloaded): records that name their fields feed a
        positional model by name in this order, so another field order scores the same."""
        with self._lock:
            if self._positional_order is None:
                self._positional_order = names
            return self._positional_order

    # --- admin -------------------------------------------------------------------------------
    def rollback(self) -> ServedModel:
        """Makes the previous model current again (and the current one previous).

        A staged model that waited for the next batch is dropped: the operator's choice wins
        until the next model arrives. Raises :class:`NothingToRollBackError` when there is no
        previous model.
        """
        with self._lock:
            if self._previous is None or self._current is None:
                raise NothingToRollBackError(
                    f"key {self.key!r} has no previous model to roll back to"
                )
            dropped, self._staged = self._staged, None
            self._current, self._previous = self._previous, self._current
            self._value_type = self._current.value_type  # the operator's choice
            self._history.pop(self._current.identity.sequence, None)
            self._remember(self._previous)
            restored = self._current
        restored.stats.mark_current()
        if dropped is not None:
            dropped.close()
        return restored

    def pin(self, pinned: bool) -> None:
        """While pinned, new models load and wait staged; the current model keeps serving (a
        key with no current model yet still takes its first)."""
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

    def models(self) -> list[tuple[ModelRole, ServedModel]]:
        """The models held, with their roles: current, staged, previous (those present)."""
        held = ((ModelRole.CURRENT, self._current), (ModelRole.STAGED, self._staged))
        return [
            (role, served)
            for role, served in (*held, (ModelRole.PREVIOUS, self._previous))
            if served is not None
        ]

    @property
    def rejections(self) -> list[Rejection]:
        with self._lock:
            return list(self._rejections)

    def served_history(self) -> list[ServingInfoSnapshot]:
        """Final statistics of the models that served this key and are not current now, each
        once, in the order they stopped serving (oldest first)."""
        with self._lock:
            return list(self._history.values())

    @property
    def rejected_total(self) -> int:
        return self._rejected_total

    @property
    def quarantined_total(self) -> int:
        return self._quarantined_total

    def close(self) -> None:
        """Closes the slot's models (each once its users release it); nothing stages after."""
        with self._lock:
            self._closed = True
            models = [self._current, self._staged, self._previous]
            self._current = self._staged = self._previous = None
        for served in models:
            if served is not None:
                served.close()
