"""One pass over the slots per scrape: the statistics of every model summed per model type, and
the keys whose models scored the most records and errors, from which ``/metrics`` picks the
keys that get series of their own.

The per-type sums are exposed as counters, and a counter must never go down (Prometheus would
read a reset and count the whole value again). Yet a model's statistics leave its slot when it
is replaced twice or its key is unloaded. So :class:`RetiredTotals` remembers the statistics
objects of the last scan (references: a model's statistics outlive it, and hold none of its
bytes) and, at the next scan, adds the final numbers of those whose model left its slot to its
type's retired totals.

A scan runs once per key per scrape, where every microsecond is 0.1 s at 100,000 keys, and
every object it keeps to its end is one more for Python's full garbage collection, which a
scrape that kept one per key set off every few scrapes (0.8 s over a heap of 2 million
objects). So it keeps no per-key object: the top keys live in heaps of N, and latency buckets
are summed a chunk at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import numpy as np

from streamserve.serving.slot import ModelRole, ModelSlot
from streamserve.serving.stats import LATENCY_BUCKETS_S, ModelServingInfo, ServingInfoSnapshot

LATENCY_BOUNDS = [repr(bound) for bound in LATENCY_BUCKETS_S] + ["+Inf"]
LATENCY_CHUNK = 256  # models whose latency buckets are summed at once
HeldModels = dict[ModelServingInfo, ModelSlot]  # the statistics of the models held, their slot
ROLES = (ModelRole.CURRENT, ModelRole.STAGED, ModelRole.PREVIOUS)  # SlotScan.add's order


class FormatTotals:
    """The statistics of the models of one model type, summed."""

    __slots__ = ("_latency", "duration_s", "errors", "held", "results", "swaps")

    def __init__(self) -> None:
        self.results = 0
        self.errors = 0
        self.duration_s = 0.0
        self.swaps = 0
        self.held = [0] * len(ROLES)  # models held now, by role (a list: enums hash slowly)
        self._latency: list[tuple[int, ...]] = []  # buckets not summed yet

    def add(self, stats: ServingInfoSnapshot) -> None:
        """Adds a model's statistics (its role is counted by the caller: held now or not)."""
        self.results += stats.invocations
        self.errors += stats.errors
        self.duration_s += stats.total_duration_s
        if stats.since > 0:  # it became current once: a swap (or its key's first model)
            self.swaps += 1
        if stats.batches:
            self._latency.append(stats.batch_latency_counts)
            if len(self._latency) >= LATENCY_CHUNK:
                self.latency_counts()

    def include(self, other: FormatTotals) -> None:
        """Adds ``other``'s statistics (not its held models: those are a gauge of now)."""
        self.results += other.results
        self.errors += other.errors
        self.duration_s += other.duration_s
        self.swaps += other.swaps
        self._latency.append(tuple(other.latency_counts()))

    def latency_counts(self) -> list[int]:
        """Batches per latency bucket (not cumulative), summed over the models added."""
        if not self._latency:
            return [0] * len(LATENCY_BOUNDS)
        summed: list[int] = np.asarray(self._latency, dtype=np.int64).sum(axis=0).tolist()
        self._latency = [tuple(summed)]
        return summed


class TopKeys:
    """The ``size`` keys with the largest counts offered, in a heap of ``size``: a key that does
    not make it costs a comparison. Among equal counts, the key offered first stays."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._heap: list[tuple[int, int, ModelSlot]] = []  # (count, -order, slot): a min-heap
        self._offered = 0

    def offer(self, count: int, slot: ModelSlot) -> None:
        self._offered += 1
        heap = self._heap
        if len(heap) < self._size:
            heapq.heappush(heap, (count, -self._offered, slot))
        elif heap and count > heap[0][0]:
            heapq.heapreplace(heap, (count, -self._offered, slot))

    def slots(self) -> list[ModelSlot]:
        """The slots, largest count first."""
        return [slot for _, _, slot in sorted(self._heap, reverse=True)]


class SlotScan:
    """The sums of one pass over the slots, and its top keys by records and by errors (keys
    without error records are not offered)."""

    def __init__(self, top_keys: int, top_error_keys: int) -> None:
        self.formats: dict[str, FormatTotals] = {}
        self.by_records = TopKeys(top_keys)
        self.by_errors = TopKeys(top_error_keys)
        self.rejected = 0
        self.held: HeldModels = {}

    def totals(self, model_type: str) -> FormatTotals:
        totals = self.formats.get(model_type)
        if totals is None:
            totals = self.formats[model_type] = FormatTotals()
        return totals

    def add(self, slot: ModelSlot) -> None:
        """Adds the slot's models: read with the slot's readers rather than ``models()``, with
        no enum hashed and no call that can be saved (see the module's docstring)."""
        records = errors = 0
        held, formats = self.held, self.formats
        for role, served in enumerate((slot.current, slot.staged, slot.previous)):
            if served is None or served.stats in held:  # twice: it moved while read
                continue
            held[served.stats] = slot
            stats = served.stats.snapshot()
            totals = formats.get(stats.model_type) or self.totals(stats.model_type)
            totals.add(stats)
            totals.held[role] += 1
            records += stats.invocations
            errors += stats.errors
        self.rejected += slot.rejected_total
        self.by_records.offer(records, slot)
        if errors:
            self.by_errors.offer(errors, slot)


def scan(slots: Iterable[ModelSlot], top_keys: int = 0, top_error_keys: int = 0) -> SlotScan:
    found = SlotScan(top_keys, top_error_keys)
    for slot in slots:
        found.add(slot)
    return found


class RetiredTotals:
    """The statistics of models and slots gone since the first scan, summed per model type:
    with them, the per-type counters never go down. Not thread-safe: one scan at a time."""

    def __init__(self) -> None:
        self.formats: dict[str, FormatTotals] = {}
        self.rejected = 0
        self._held: HeldModels = {}
        self._slots: set[ModelSlot] = set()

    def fold(self, found: SlotScan, slots: list[ModelSlot]) -> None:
        """Adds the models and slots of the previous scan that ``found`` no longer holds."""
        for stats in self._held.keys() - found.held.keys():
            slot = self._held[stats]
            snapshot = stats.snapshot()  # once out of its slot, the model scores no more
            if _holds(slot, stats):
                # it moved between roles while the scan read its slot (a swap, a rollback):
                # still held, so counted as held
                found.held[stats] = slot
                found.totals(snapshot.model_type).add(snapshot)
            else:
                self._totals(snapshot.model_type).add(snapshot)
        self._held = found.held
        now = set(slots)
        self.rejected += sum(slot.rejected_total for slot in self._slots - now)
        self._slots = now

    def _totals(self, model_type: str) -> FormatTotals:
        totals = self.formats.get(model_type)
        if totals is None:
            totals = self.formats[model_type] = FormatTotals()
        return totals


def _holds(slot: ModelSlot, stats: ModelServingInfo) -> bool:
    return any(
        served is not None and served.stats is stats
        for served in (slot.current, slot.staged, slot.previous)
    )
