"""Per-key routing: which key's model scores which of a key's records.

By default every record is scored by the current model of its own key. A :class:`KeyRouter`
changes that per batch: it splits a key's records among target keys, each scored by the current
model of the target's slot: a canary taking a share of a key's records, an A/B split, a tenant
served by a model published under another key. Results name the key and the model that scored
them, so the split shows in the outputs and in each slot's statistics.

An outside package registers a router in the ``streamserve.routers`` entry-point group (a
factory taking ``serving.router_options``) and the operator names it in ``serving.router``; an
application embedding streamserve passes one to :class:`~streamserve.serving.core.ServingCore`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt

from streamserve.codecs.base import DecodedBatch, InputRecord
from streamserve.errors import ConfigurationError, ScoringError, ScoringTimeoutError
from streamserve.plugins import NamedPlugins, reason
from streamserve.serving.deadline import CallWatch
from streamserve.serving.outcome import BatchOutcome

ROUTERS = NamedPlugins(
    kind="router", group="streamserve.routers", builtins={}, setting="serving.router"
)

Rows = npt.NDArray[np.intp]


class KeyRouter(Protocol):
    """Splits the records of one key, in one batch, among the keys whose models score them."""

    def route(self, key: str, records: Sequence[InputRecord], rows: Rows) -> Mapping[str, Rows]:
        """``rows`` index ``records`` (the batch), all keyed ``key``: a map from target key to
        the rows its model scores. Every row must be in exactly one target's rows; a router
        that breaks this, or raises, fails the key's records with the reason."""
        ...


RouterFactory = Callable[[Mapping[str, object]], KeyRouter]


def load_router(name: str, options: Mapping[str, object]) -> KeyRouter:
    """The router ``name`` names, built with ``options``; :class:`ConfigurationError` if it is
    unknown or cannot be built."""
    factory, where = ROUTERS.load(name)
    try:
        router = cast(RouterFactory, factory)(options)
    except Exception as err:  # outside code may fail in any way; say which plug-in
        raise ConfigurationError(f"{where} failed to build its router: {reason(err)}") from err
    if not callable(getattr(router, "route", None)):
        raise ConfigurationError(f"{where} built a {type(router).__name__}, which has no route()")
    return router


class WatchedRouter:
    """A router whose calls a scoring deadline can find (:class:`CallWatch`).

    A key whose routing overran the deadline (:meth:`RouteCall.call_stuck`) is not routed
    again until that call returns: its records fail at once, rather than each batch losing
    another thread to the same stuck call.
    """

    def __init__(self, router: KeyRouter, watch: CallWatch) -> None:
        self._router = router
        self._watch = watch
        self._stuck: Counter[str] = Counter()
        self._lock = threading.Lock()

    def route(self, key: str, records: Sequence[InputRecord], rows: Rows) -> Mapping[str, Rows]:
        if self._stuck[key] > 0:
            raise ScoringTimeoutError(
                f"routing the records of key {key!r} overran the scoring deadline and has not "
                "returned; the key's records are not routed until it does"
            )
        self._watch.enter(RouteCall(self, key))
        try:
            return self._router.route(key, records, rows)
        finally:
            self._watch.leave()

    def _mark(self, key: str, change: int) -> None:
        with self._lock:
            self._stuck[key] += change
            if self._stuck[key] <= 0:
                del self._stuck[key]


@dataclass(frozen=True, slots=True)
class RouteCall:
    """A router routing a key's records, as a deadline sees it when the call overruns."""

    router: WatchedRouter
    key: str

    def describe(self) -> str:
        return f"the router, routing key {self.key!r}"

    def call_stuck(self) -> None:
        self.router._mark(self.key, +1)

    def call_returned(self) -> None:
        self.router._mark(self.key, -1)


def routed_batch(router: KeyRouter, batch: DecodedBatch, outcome: BatchOutcome) -> DecodedBatch:
    """``batch`` with each record's key replaced by the key whose model scores it.

    A target key takes on the field orders of the keys routed to it, so a positional canary
    reads its source key's records in their order. The records of a key whose routing fails
    fail in ``outcome`` (and lose their key here, so nothing scores them).
    """
    keys = list(batch.keys)
    field_orders = {key: Counter(orders) for key, orders in batch.field_orders.items()}
    for key, rows in batch.rows_by_key().items():
        try:
            split = routed_rows(router, key, batch.records, rows)
        except ScoringError as err:
            outcome.fail_rows(rows, err, key, None)
            split = {}
            for row in rows.tolist():
                keys[row] = None
        for target, picked in split.items():
            if target == key:
                continue
            for row in picked.tolist():
                keys[row] = target
            if key in batch.field_orders:
                field_orders.setdefault(target, Counter()).update(batch.field_orders[key])
    return dataclasses.replace(batch, keys=keys, field_orders=field_orders)


def routed_rows(
    router: KeyRouter, key: str, records: Sequence[InputRecord], rows: Rows
) -> Mapping[str, Rows]:
    """``router.route(...)``, checked: raises :class:`ScoringError` unless the targets' rows
    are integer indices covering exactly ``rows``, each once (no record may be lost or scored
    twice). The router gets a read-only copy of ``rows``."""
    given = rows.copy()
    given.flags.writeable = False
    try:
        split = {
            str(t): _indices(picked) for t, picked in router.route(key, records, given).items()
        }
    except ScoringTimeoutError:  # the key's routing is stuck past the deadline: said as such
        raise
    except (Exception, SystemExit) as err:  # a router defect (even sys.exit) fails this key only
        raise ScoringError(f"routing the records of key {key!r} failed: {reason(err)}") from err
    parts = [picked for picked in split.values() if len(picked)]
    joined = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.intp)
    if not np.array_equal(joined, rows):
        raise ScoringError(
            f"the router of key {key!r} did not assign each of its {len(rows)} records to "
            f"exactly one key (it assigned {len(joined)} rows: lost or repeated records)"
        )
    return {target: picked for target, picked in split.items() if len(picked)}


def _indices(picked: object) -> Rows:
    """``picked`` as row indices; anything but integers (floats, booleans) is refused."""
    array = np.asarray(picked)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"row indices must be integers, not {array.dtype}")
    return array.astype(np.intp).ravel() if array.ndim == 1 or not array.size else _one_d(array)


def _one_d(array: np.ndarray) -> Rows:
    raise TypeError(f"row indices must be one-dimensional, not of shape {array.shape}")
