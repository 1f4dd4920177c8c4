"""What each key did between two samples of the serving state, read from the slots as they are:
records and errors per key, the scoring-latency histogram of every model, and the swaps,
rejections and unloads since the previous sample (the dashboard's timeline).

Nothing here runs on the scoring path: a sample reads the statistics that scoring keeps anyway.
It reads the slots instead of draining the core's event log, which belongs to the runtime.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from streamserve.serving.slot import ModelSlot, Rejection
from streamserve.serving.stats import LATENCY_BUCKETS_S

# Time constant of each key's records/s: an exponential moving average over about this long.
KEY_RATE_TAU_S = 10.0
LATENCY_BINS = len(LATENCY_BUCKETS_S) + 1
NO_MODEL = -1  # the sequence number standing for "no current model"
# Names and reasons come from model messages, which may be megabytes: an event keeps this much
# of each (the slot keeps the rejections whole, but only the latest few).
MAX_NAME_CHARS = 200  # a key, a model's name or version
MAX_REASON_CHARS = 300


class EventKind:
    """The timeline's kinds of event (the names of the core's model events where they match)."""

    SWAPPED = "model_swapped"  # a newer model became current
    RESTORED = "model_restored"  # an older model became current again: rollback, quarantine
    REJECTED = "model_rejected"
    QUARANTINED = "model_quarantined"
    UNLOADED = "model_unloaded"


@dataclass(frozen=True)
class TimelineEvent:
    """One swap, rejection or unload, as a sample of the slots found it."""

    seq: int  # shared with the history's samples: one cursor pages both
    at: float  # epoch seconds: when it happened if the slot says, else when it was found
    kind: str
    key: str
    model: str = ""
    version: str = ""
    previous: str = ""  # the model that was current before a swap
    reason: str = ""
    error_kind: str = ""


class KeyState:
    """A key's totals as far as the samples saw them, and what it held at the last sample."""

    __slots__ = ("current", "errors", "quarantined", "rate", "records", "rejected")

    def __init__(self) -> None:
        self.records = 0  # results and errors of its records, over every model it had
        self.errors = 0
        self.rate = 0.0  # records/s, averaged over about KEY_RATE_TAU_S
        self.current = NO_MODEL
        self.rejected = 0
        self.quarantined = 0


# Per model: (invocations, errors, batch latency counts) at the previous sample.
ModelCounts = tuple[int, int, tuple[int, ...]]
NOTHING_SCORED: ModelCounts = (0, 0, (0,) * LATENCY_BINS)


class KeyActivity:
    """Per-key totals and the all-model latency histogram, advanced one sample at a time.

    Each model's statistics are cumulative; a sample adds what grew since the previous one, so
    a model that stops serving (swapped out, quarantined, unloaded) leaves its key's totals as
    they were. Only one thread calls :meth:`advance`; readers get the table of the latest
    completed sample (a new dict each time: they can iterate it while the next one is built).
    """

    def __init__(self, next_seq: Callable[[], int]) -> None:
        self._next_seq = next_seq
        self._keys: dict[str, KeyState] = {}
        self._models: dict[tuple[str, int], ModelCounts] = {}
        self._sampled = False

    def advance(
        self, slots: Iterable[ModelSlot], at: float, elapsed_s: float
    ) -> tuple[list[int], list[TimelineEvent]]:
        """Reads every slot: the latency counts added since the previous sample (all models)
        and the timeline events found. The first sample only takes the state as it is."""
        baseline = not self._sampled
        latency: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        events: list[TimelineEvent] = []
        keys: dict[str, KeyState] = {}
        models: dict[tuple[str, int], ModelCounts] = {}
        weight = 0.0 if baseline or elapsed_s <= 0 else 1.0 - math.exp(-elapsed_s / KEY_RATE_TAU_S)
        for slot in slots:
            state = self._keys.get(slot.key) or KeyState()
            records = self._read_models(slot, state, models, latency)
            if weight:
                state.rate += weight * (records / elapsed_s - state.rate)
            if not baseline:
                events.extend(self._changes(slot, state, at))
            _remember(slot, state)
            keys[slot.key] = state
        if not baseline:
            events.extend(self._event(at, EventKind.UNLOADED, k) for k in self._keys.keys() - keys)
        self._keys, self._models, self._sampled = keys, models, True
        return _grown(latency), events

    def _read_models(
        self,
        slot: ModelSlot,
        state: KeyState,
        models: dict[tuple[str, int], ModelCounts],
        latency: list[tuple[tuple[int, ...], tuple[int, ...]]],
    ) -> int:
        """Adds what the slot's models scored since the previous sample to its key's totals,
        and (after the first sample) their latency counts now and then to ``latency``; returns
        the key's records since then."""
        records = errors = 0
        # read without the slot's lock: a swap meanwhile may show a model in two roles
        for served in (slot.current, slot.staged, slot.previous):
            if served is None:
                continue
            name = (slot.key, served.identity.sequence)
            if name in models:
                continue
            stats = served.stats.snapshot()
            counts = (stats.invocations, stats.errors, stats.batch_latency_counts)
            old = self._models.get(name, NOTHING_SCORED)  # new: everything it did is new
            models[name] = counts
            if counts == old:  # idle since the previous sample, as most of many keys are
                continue
            records += counts[0] - old[0] + counts[1] - old[1]
            errors += counts[1] - old[1]
            if self._sampled and counts[2] != old[2]:
                latency.append((counts[2], old[2]))
        state.records += records
        state.errors += errors
        return records

    def _changes(self, slot: ModelSlot, state: KeyState, at: float) -> list[TimelineEvent]:
        """What became of the key since the previous sample: a model that became current,
        models rejected or quarantined."""
        events: list[TimelineEvent] = []
        current = slot.current
        sequence = NO_MODEL if current is None else current.identity.sequence
        if current is not None and sequence != state.current:
            identity = current.identity
            since = current.stats.snapshot().since
            kind = EventKind.SWAPPED if sequence > state.current else EventKind.RESTORED
            previous = self._name_of(slot, state.current)
            events.append(
                self._event(since or at, kind, slot.key, identity.name, identity.version, previous)
            )
        rejected = slot.rejected_total - state.rejected
        if rejected > 0:
            quarantined = slot.quarantined_total - state.quarantined
            kept = slot.rejections[-rejected:]
            if rejected > len(kept):  # more than the slot keeps came since the previous sample
                reason = f"{rejected - len(kept)} more models rejected; their reasons were not kept"
                events.append(self._event(at, EventKind.REJECTED, slot.key, reason=reason))
            for index, rejection in enumerate(kept):
                is_quarantine = index >= len(kept) - quarantined
                events.append(self._rejection_event(rejection, is_quarantine))
        return sorted(events, key=lambda event: event.at)

    def _name_of(self, slot: ModelSlot, sequence: int) -> str:
        """The name of the key's model of ``sequence``, if the slot still holds it."""
        for _role, served in slot.models():
            if served.identity.sequence == sequence:
                return served.identity.name
        return ""

    def _rejection_event(self, rejection: Rejection, quarantine: bool) -> TimelineEvent:
        kind = EventKind.QUARANTINED if quarantine else EventKind.REJECTED
        return self._event(
            rejection.at,
            kind,
            rejection.key,
            rejection.name,
            rejection.version,
            reason=rejection.reason,
            error_kind=rejection.kind,
        )

    def _event(
        self,
        at: float,
        kind: str,
        key: str,
        model: str = "",
        version: str = "",
        previous: str = "",
        *,
        reason: str = "",
        error_kind: str = "",
    ) -> TimelineEvent:
        return TimelineEvent(
            self._next_seq(),
            at,
            kind,
            key=cut(key, MAX_NAME_CHARS),
            model=cut(model, MAX_NAME_CHARS),
            version=cut(version, MAX_NAME_CHARS),
            previous=cut(previous, MAX_NAME_CHARS),
            reason=cut(reason, MAX_REASON_CHARS),
            error_kind=error_kind,
        )

    def keyless_rejections(self, at: float, count: int, what: str) -> TimelineEvent:
        """An event for model messages rejected that no slot records (undecodable messages, a
        first model of a key that failed): the errors output has each one's reason."""
        reason = f"{what}: {count} (the errors output has each one's reason)"
        return self._event(at, EventKind.REJECTED, "", reason=reason)

    # --- readers -----------------------------------------------------------------------------
    def state_of(self, key: str) -> KeyState | None:
        return self._keys.get(key)

    @property
    def key_count(self) -> int:
        return len(self._keys)

    def top(self, sort: str, text: str, count: int) -> tuple[int, list[tuple[str, KeyState]]]:
        """The ``count`` keys with the most records (or errors) among those whose name holds
        ``text`` (case-insensitive), and how many keys match."""
        needle = text.casefold()
        items = [item for item in self._keys.items() if needle in item[0].casefold()]
        measure = _measure(sort)
        best = heapq.nsmallest(count, items, key=lambda item: (-measure(item[1]), item[0]))
        return len(items), best

    def ranked(self, sort: str) -> list[str]:
        """Every key sampled, most records (or errors) first, ties in key order."""
        measure = _measure(sort)
        return [
            key
            for key, _state in sorted(
                self._keys.items(), key=lambda item: (-measure(item[1]), item[0])
            )
        ]


def cut(text: str, most: int) -> str:
    """``text``, or its first ``most - 1`` characters and an ellipsis."""
    return text if len(text) <= most else text[: most - 1] + "…"


def _grown(latency: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[int]:
    """The batches added to each latency bucket, over every model that scored."""
    if not latency:
        return [0] * LATENCY_BINS
    counts = np.asarray(latency, dtype=np.int64)  # (models, now/then, buckets)
    grown: list[int] = (counts[:, 0].sum(axis=0) - counts[:, 1].sum(axis=0)).tolist()
    return grown


def _measure(sort: str) -> Callable[[KeyState], float]:
    if sort == "errors":
        return lambda state: state.errors
    return lambda state: state.records


def _remember(slot: ModelSlot, state: KeyState) -> None:
    current = slot.current
    state.current = NO_MODEL if current is None else current.identity.sequence
    state.rejected = slot.rejected_total
    state.quarantined = slot.quarantined_total
