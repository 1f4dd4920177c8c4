"""Stateful properties of one key's :class:`ModelSlot` (contracts 1, 3 and 5).

A hypothesis state machine drives one slot the way the loader, the scoring threads, the admin API
and the live-model budget do, in any order, and checks the slot against a reference model of
current/staged/previous after every step.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from streamserve.errors import NothingToRollBackError
from streamserve.formats.base import FloatMatrix, Model
from streamserve.serving.budget import LiveModels
from streamserve.serving.slot import ModelIdentity, ModelSlot, Rejection, ServedModel
from streamserve.serving.stats import ModelServingInfo
from streamserve.testing import FunctionModel

MAX_LEASES = 3


class TracedModel(FunctionModel):
    """A model whose every score is its own sequence number; it notes being scored closed."""

    def __init__(self, sequence: int) -> None:
        super().__init__(self._score, width=1)
        self.sequence = sequence
        self.closes = 0
        self.scored_closed = 0

    def _score(self, features: FloatMatrix) -> np.ndarray:
        if self.closed:
            self.scored_closed += 1
        return np.full(len(features), float(self.sequence))

    def close(self) -> None:
        self.closes += 1
        super().close()


@dataclass(eq=False)
class Entry:
    """One ServedModel and every instance made of it (the first, and one per reload)."""

    sequence: int
    served: ServedModel
    instances: list[TracedModel]

    @property
    def name(self) -> str:
        return self.served.identity.name


@dataclass(eq=False)
class Lease:
    """A batch held open across steps: another thread's batch inside the model."""

    entry: Entry
    model: Model
    batch: AbstractContextManager[tuple[ServedModel | None, bool]]
    instance: AbstractContextManager[Model]


@dataclass
class Reference:
    """What the slot must hold, kept by the test from the operations alone."""

    current: Entry | None = None
    staged: Entry | None = None
    previous: Entry | None = None
    newest: int = -1
    pinned: bool = False
    closed: bool = False
    history: OrderedDict[int, str] = field(default_factory=OrderedDict)
    rejected_total: int = 0
    quarantined_total: int = 0


def _entry(sequence: int, live: LiveModels, name: str) -> Entry:
    instances = [TracedModel(sequence)]

    def reload() -> Model:
        instances.append(TracedModel(sequence))
        return instances[-1]

    served = ServedModel(
        ModelIdentity(name, "v1", "", "PYTHON", sequence),
        instances[0],
        ModelServingInfo(name, "", "v1", "PYTHON"),
        load_duration_s=0.0,
        reload=reload,
        on_release=live.forget,
    )
    return Entry(sequence, served, instances)


class SlotMachine(RuleBasedStateMachine):
    """One key's slot under the loader (stage, in and out of sequence order, duplicates), batches
    taken at once or held open across other steps (another thread inside the model), rollback,
    pin/unpin, quarantine, rejections, a live-model budget (also used by another key's models)
    and closing the slot. A reference model of current/staged/previous, the history and the
    retired models is kept beside it; every step is checked against it and against the
    contracts: sequence order, no closed instance scored, retired instances closed once no lease
    holds them, the budget bound, bounded history and rejections."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[Entry] = []
        self.foreign: list[Entry] = []  # another key's models sharing the budget
        self.retired: set[int] = set()  # id() of entries that left the slot for good
        self.leases: list[Lease] = []
        self.ref = Reference()
        self.next_sequence = 0
        self.staged_sequences: list[int] = []
        self.ever_current: set[int] = set()  # sequences that were ever current
        self.budget_allowance = 0

    @initialize(
        max_live=st.sampled_from([None, 1, 2]),
        max_history=st.integers(1, 4),
        max_rejections=st.integers(1, 3),
        served=st.integers(0, 3),
    )
    def make_slot(
        self, max_live: int | None, max_history: int, max_rejections: int, served: int
    ) -> None:
        """A slot (and its budget) that already served ``served`` models, one after another."""
        self.live = LiveModels(max_live)
        self.max_history = max_history
        self.max_rejections = max_rejections
        self.slot = ModelSlot("k", max_rejections=max_rejections, max_history=max_history)
        self.budget_allowance = max_live or 0
        for _ in range(served):
            self.stage(fresh=True, gap=0, pick=0)
            self.take_batch()

    # --- loader side -------------------------------------------------------------------------
    @rule(fresh=st.booleans(), gap=st.integers(0, 2), pick=st.integers(0, 1000))
    def stage(self, fresh: bool, gap: int, pick: int) -> None:
        """Stages a model with a fresh sequence number, or a reused older one (a late load)."""
        if fresh or not self.entries:
            sequence = self.next_sequence + gap
            self.next_sequence = sequence + 1
        else:
            sequence = self.entries[pick % len(self.entries)].sequence
        entry = _entry(sequence, self.live, f"m{sequence}-{len(self.entries)}")
        self.entries.append(entry)
        expected = not self.ref.closed and sequence > self.ref.newest
        staged = self.slot.stage(entry.served)
        assert staged == expected, (sequence, self.ref.newest, self.ref.closed)
        if not staged:
            entry.served.close()  # as the loader does with a model that did not stage
            self.retired.add(id(entry))
            return
        if self.ref.staged is not None:
            self.retired.add(id(self.ref.staged))  # superseded before it ever served
        self.ref.staged, self.ref.newest = entry, sequence
        self.staged_sequences.append(sequence)

    # --- scoring side --------------------------------------------------------------------------
    def _expect_batch(self, served: ServedModel | None, swapped: bool) -> Entry | None:
        """Checks the model a batch took against the reference, and advances the reference."""
        ref = self.ref
        promote = ref.staged is not None and (not ref.pinned or ref.current is None)
        assert swapped == promote
        if promote:
            assert ref.staged is not None
            promoted = ref.staged
            assert promoted.sequence == max(self.staged_sequences), (
                "a model became current although a newer one had staged before it"
            )
            assert all(promoted.sequence > seen for seen in self.ever_current), (
                "a model became current after a newer one had been current"
            )
            if ref.previous is not None:
                self.retired.add(id(ref.previous))
            if ref.current is not None:
                self._remember(ref.current)
            ref.previous, ref.current, ref.staged = ref.current, promoted, None
            event("swap")
            self.ever_current.add(promoted.sequence)
        expected = None if ref.current is None else ref.current.served
        assert served is expected
        return ref.current

    def _score(self, entry: Entry, model: Model) -> None:
        assert model is entry.instances[-1], "scored with an instance that is not the model's"
        if len(entry.instances) > 1:
            event("scored an instance made again after its eviction")
        if entry.served.retired:
            event("scored a retired model through a held lease")
        output = model.score_batch(np.zeros((2, 1)))
        assert output.tolist() == [float(entry.sequence)] * 2

    def _touch(self, served: ServedModel) -> None:
        """What the core does after scoring a batch: the budget sees the model used."""
        self.live.touch(served)
        if self.live.max_live is not None:
            leased = {id(lease.entry) for lease in self.leases}
            self.budget_allowance = self.live.max_live + len(leased)

    @rule()
    def take_batch(self) -> None:
        """A batch scored at once: take the model (promoting a staged one), score a row."""
        with self.slot.batch_model() as (served, swapped):
            entry = self._expect_batch(served, swapped)
            if served is None or entry is None:
                return
            with served.instance() as model:
                self._score(entry, model)
            self._touch(served)

    @precondition(lambda self: len(self.leases) < MAX_LEASES)
    @rule()
    def hold_batch(self) -> None:
        """A batch that takes its model and stays inside it while the next steps run."""
        batch = self.slot.batch_model()
        served, swapped = batch.__enter__()
        entry = self._expect_batch(served, swapped)
        if served is None or entry is None:
            batch.__exit__(None, None, None)
            return
        instance = served.instance()
        model = instance.__enter__()
        self._score(entry, model)
        self.leases.append(Lease(entry, model, batch, instance))

    @precondition(lambda self: bool(self.leases))
    @rule(pick=st.integers(0, MAX_LEASES - 1))
    def release_batch(self, pick: int) -> None:
        """A held batch scores its last row with the model it took, then lets it go."""
        lease = self.leases.pop(pick % len(self.leases))
        self._score(lease.entry, lease.model)
        lease.instance.__exit__(None, None, None)
        self._touch(lease.entry.served)
        lease.batch.__exit__(None, None, None)

    @rule(new=st.booleans(), pick=st.integers(0, 1000))
    def another_key_scores(self, new: bool, pick: int) -> None:
        """Another key's model is used (and touched): the budget may evict this key's models."""
        if new or not self.foreign:
            self.foreign.append(_entry(10_000 + len(self.foreign), self.live, "foreign"))
        entry = self.foreign[pick % len(self.foreign)]
        with entry.served.instance() as model:
            self._score(entry, model)
        self._touch(entry.served)

    # --- admin ---------------------------------------------------------------------------------
    @rule()
    def rollback(self) -> None:
        ref = self.ref
        if ref.previous is None or ref.current is None:
            with pytest.raises(NothingToRollBackError):
                self.slot.rollback()
            return
        restored = self.slot.rollback()
        event("rolled back")
        assert restored is ref.previous.served
        if ref.staged is not None:
            self.retired.add(id(ref.staged))  # the operator's choice wins over a waiting model
        ref.staged, ref.current, ref.previous = None, ref.previous, ref.current
        ref.history.pop(ref.current.sequence, None)
        self._remember(ref.previous)

    @rule(pinned=st.booleans())
    def pin(self, pinned: bool) -> None:
        self.slot.pin(pinned)
        self.ref.pinned = pinned

    @rule(current=st.booleans(), pick=st.integers(0, 1000))
    def quarantine(self, current: bool, pick: int) -> None:
        """Takes the current model out (or tries to with one that is not current)."""
        ref = self.ref
        if current and ref.current is not None:
            target = ref.current
        elif self.entries:
            target = self.entries[pick % len(self.entries)]
        else:
            return
        rejection = Rejection("k", target.name, "v1", "quarantined", "kept failing")
        taken, restored = self.slot.quarantine(target.served, rejection)
        if target is not ref.current:
            assert (taken, restored) == (False, None)
            return
        expected = None if ref.previous is None else ref.previous.served
        assert taken
        assert restored is expected
        event("quarantined, previous restored" if expected else "quarantined, none left")
        self._remember(target)
        if ref.previous is not None:
            ref.history.pop(ref.previous.sequence, None)
        self.retired.add(id(target))
        ref.current, ref.previous = ref.previous, None
        ref.rejected_total += 1
        ref.quarantined_total += 1

    @rule()
    def reject(self) -> None:
        """A model of the key failed validation: its rejection is kept (bounded)."""
        self.slot.reject(Rejection("k", "bad", "v1", "model_validation_error", "bad"))
        self.ref.rejected_total += 1

    @precondition(lambda self: not self.ref.closed)
    @rule(now=st.integers(0, 3))
    def close_slot(self, now: int) -> None:
        """Closes the slot (in one draw of four: most runs keep serving)."""
        if now:
            return
        self.slot.close()
        ref = self.ref
        for entry in (ref.current, ref.staged, ref.previous):
            if entry is not None:
                self.retired.add(id(entry))
        ref.current = ref.staged = ref.previous = None
        ref.closed = True

    def _remember(self, entry: Entry) -> None:
        history = self.ref.history
        history.pop(entry.sequence, None)
        history[entry.sequence] = entry.name
        while len(history) > self.max_history:
            history.popitem(last=False)

    # --- invariants ----------------------------------------------------------------------------
    @invariant()
    def roles_match_the_reference(self) -> None:
        ref, slot = self.ref, self.slot
        for actual, expected in (
            (slot.current, ref.current),
            (slot.staged, ref.staged),
            (slot.previous, ref.previous),
        ):
            assert actual is (None if expected is None else expected.served)
        held = [served for _, served in slot.models()]
        assert len({id(served) for served in held}) == len(held), "one model in two roles"
        assert slot.pinned == ref.pinned

    @invariant()
    def retired_models_never_serve_again(self) -> None:
        for _, served in self.slot.models():
            assert not served.retired, f"{served.identity.name} is held but retired"
        held = {id(served) for _, served in self.slot.models()}
        for entry in self.entries:
            if id(entry) in self.retired:
                assert entry.served.retired
                assert id(entry.served) not in held

    @invariant()
    def instances_close_once_and_only_when_unused(self) -> None:
        leased = {id(lease.entry) for lease in self.leases}
        for entry in self.entries + self.foreign:
            assert all(model.closes <= 1 for model in entry.instances), "closed twice"
            assert all(model.scored_closed == 0 for model in entry.instances), "scored closed"
            assert all(model.closed for model in entry.instances[:-1]), "an old instance leaks"
            latest = entry.instances[-1]
            assert entry.served.live == (not latest.closed)
            if id(entry) in leased:
                assert not latest.closed, "closed while a batch was inside it"
            elif entry.served.retired:
                assert latest.closed, "a retired model's instance outlived its last user"

    @invariant()
    def live_budget_is_kept(self) -> None:
        if self.live.max_live is not None:
            assert self.live.live <= self.budget_allowance

    @invariant()
    def history_and_rejections_are_bounded(self) -> None:
        history = [snapshot.name for snapshot in self.slot.served_history()]
        assert len(history) == len(set(history)), history
        assert len(history) <= self.max_history
        assert history == list(self.ref.history.values())
        if self.slot.current is not None:
            assert self.slot.current.identity.name not in history
        assert len(self.slot.rejections) <= self.max_rejections
        assert self.slot.rejected_total == self.ref.rejected_total
        assert self.slot.quarantined_total == self.ref.quarantined_total

    def teardown(self) -> None:
        for lease in self.leases:
            lease.instance.__exit__(None, None, None)
            lease.batch.__exit__(None, None, None)


SlotMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSlotStateMachine = SlotMachine.TestCase
