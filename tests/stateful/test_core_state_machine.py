"""Stateful properties of a :class:`ServingCore` serving several keys (contracts 1 to 5).

A hypothesis state machine submits good and bad Python models for three keys, holds their loads
at gates and lets them finish in any order, scores stream and V2 batches, rolls back, pins and
unloads, under a live-model budget; it checks every outcome and the core's state after each
step.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streamserve.api import v2
from streamserve.codecs.base import DecodedBatch, InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.errors import NothingToRollBackError, RequestError
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import MAX_KEYLESS_REJECTIONS, ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.serving.outcome import BatchOutcome
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, FunctionModel, GatedFactory, records_from

KEYS = ("k0", "k1", "k2")
UNSERVED_KEY = "nobody"  # records and tombstones for a key no model was ever sent for
WIDTH = 2
PYTHON_TYPE = 301
GATED_TYPES = 10_000  # each gated model gets its own type: its own GatedFactory and gate
BUDGET = 2
FLAKY_FROM = 0.5  # a "flaky" model fails the records carrying a value from this one up
VALUES = (0.25, 0.5, 0.75)
BAD_KINDS = frozenset({"raises", "nan", "complex"})  # always refused by validation
KINDS = ("good", "good", "text", "flaky", *sorted(BAD_KINDS))
TERMINAL = frozenset({ModelEventKind.STAGED, ModelEventKind.SUPERSEDED, ModelEventKind.REJECTED})
WAIT_S = 30.0  # a guard against a hang, never a timing assertion
LOADER_THREADS = 3
MAX_HELD = LOADER_THREADS - 1  # held loads occupy loader threads: one stays free for the rest


def _parse(name: str) -> tuple[str, int]:
    kind, _, number = name.partition("-")
    return kind, int(number)


def expected_value(name: str) -> object:
    """What every record scored by model ``name`` must get: the model's own number or name."""
    kind, number = _parse(name)
    return name if kind == "text" else float(number)


class TracedModel(FunctionModel):
    """The model named ``kind-number``: its scores identify it; it notes being scored closed."""

    def __init__(self, name: str) -> None:
        super().__init__(self._score, width=WIDTH)
        self.name = name
        self.kind, self.number = _parse(name)
        self.closes = 0
        self.scored_closed = 0

    def _score(self, features: FloatMatrix) -> np.ndarray:
        if self.closed:
            self.scored_closed += 1
        rows = len(features)
        if self.kind == "raises":
            raise ValueError("this model always fails")
        if self.kind == "nan":
            return np.full(rows, np.nan)
        if self.kind == "complex":
            return np.full(rows, self.number + 1j)
        if self.kind == "flaky" and (features >= FLAKY_FROM).any():
            raise ValueError("this model fails on the flaky value")
        if self.kind == "text":
            return np.array([self.name] * rows)
        return np.full(rows, float(self.number))

    def close(self) -> None:
        self.closes += 1
        super().close()


class NamedModels(FunctionFactory):
    """Makes the model a descriptor names (``good-3``, ``nan-4``...); keeps every instance."""

    def __init__(self) -> None:
        super().__init__(lambda features: features[:, 0], WIDTH)
        self._lock = threading.Lock()
        self.made: dict[str, list[TracedModel]] = defaultdict(list)

    def load(self, request: LoadRequest) -> Model:
        model = TracedModel(request.name)
        with self._lock:
            self.made[request.name].append(model)
        return model


class CountingCore(ServingCore):
    """A ServingCore that lets the test wait until a number of loads finished."""

    def __init__(self, settings: ServingSettings, registry: FactoryRegistry) -> None:
        super().__init__(settings, registry)
        self._finished = threading.Condition()
        self.loads_finished = 0

    def load_done(self, key: str, sequence: int) -> None:
        super().load_done(key, sequence)
        with self._finished:
            self.loads_finished += 1
            self._finished.notify_all()

    def wait_for_loads(self, count: int) -> bool:
        with self._finished:
            return self._finished.wait_for(lambda: self.loads_finished >= count, WAIT_S)


@dataclass(eq=False)
class Submitted:
    name: str
    key: str
    order: int  # the submission's place among submissions and unloads
    gate: threading.Event | None


@dataclass
class KeyHistory:
    """What the test saw of a key: the newest model that served it, explicit restorations."""

    served_order: int = -1
    staged_order: int = -1  # the newest model that staged
    restored: set[str] = field(default_factory=set)  # made current by rollback or quarantine
    unloaded_at: int = -1
    value_type: type | None = None


class CoreMachine(RuleBasedStateMachine):
    """A ServingCore with three keys, Python models loaded on three loader threads (some held at
    gates and released in any order, one at a time or together), good models and bad ones
    (raising, NaN, complex; flaky ones that fail some records; text ones), stream batches, V2
    batches, rollback and pin through the slot, unloads (also of a key nobody serves) and a
    live-model budget of two. Checked after every step: one outcome per record; every result
    names the model that computed it; sequence order (no result from a model older than one that
    served its key, except after an explicit rollback or quarantine; none from a model submitted
    before its key's unloading); rejected models never held; every load ends in exactly one of
    staged/superseded/rejected; the budget; instances closed once and never scored closed; and
    the core's footprint."""

    def __init__(self) -> None:
        super().__init__()
        self.factory = NamedModels()
        registry = FactoryRegistry(FactoryContext())
        registry.register(PYTHON_TYPE, lambda context: self.factory)
        self.registry = registry
        self.core = CountingCore(
            ServingSettings(
                loader_threads=LOADER_THREADS,
                max_live_models=BUDGET,
                quarantine_after_failures=2,
                validation_rows=4,
                max_rejections_kept=3,
            ),
            registry,
        )
        self.order = 0
        self.models: dict[str, Submitted] = {}
        self.held_at_gate: list[Submitted] = []
        self.loads_expected = 0
        self.terminal: dict[str, list[ModelEventKind]] = defaultdict(list)
        self.rejected: set[str] = set()
        self.keys = {key: KeyHistory() for key in (*KEYS, UNSERVED_KEY)}
        self.sequences: dict[str, int] = {}

    @initialize(kinds=st.lists(st.sampled_from(("good", "text")), min_size=3, max_size=3))
    def serve_every_key(self, kinds: list[str]) -> None:
        """Each key starts served by a model of its own (so rollbacks and swaps happen early)."""
        for key, kind in zip(KEYS, kinds, strict=True):
            self.submit(key, kind, gated=False)
        # validation_rows complete rows of each key: their probe, kept for a second after
        self._score_records([(key, 0.25, False) for key in KEYS for _ in range(4)])

    # --- models --------------------------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS), kind=st.sampled_from(KINDS), gated=st.booleans())
    def submit(self, key: str, kind: str, gated: bool) -> None:
        """Sends a model for ``key``; a gated one loads only once its gate opens."""
        self._submit(key, kind, gated and len(self.held_at_gate) < MAX_HELD)
        self._settle()

    @precondition(lambda self: not self.held_at_gate)
    @rule(
        key=st.sampled_from(KEYS),
        kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=LOADER_THREADS),
        picks=st.lists(st.integers(0, 20), min_size=LOADER_THREADS, max_size=LOADER_THREADS),
        together=st.booleans(),
    )
    def submit_several_then_release(
        self, key: str, kinds: list[str], picks: list[int], together: bool
    ) -> None:
        """Several models of one key, all held while loading, then let go in the order picked:
        their loads finish in another order than they were submitted."""
        for kind in kinds:
            self._submit(key, kind, gated=True)
        self.open_gates(picks, together)

    def _submit(self, key: str, kind: str, gated: bool) -> None:
        name = f"{kind}-{len(self.models)}"
        gate = threading.Event() if gated else None
        model_type = PYTHON_TYPE
        if gate is not None:
            model_type = GATED_TYPES + len(self.models)
            factory = GatedFactory(self.factory, gate)
            self.registry.register(model_type, lambda context: factory)
        submitted = Submitted(name, key, self.order, gate)
        self.order += 1
        self.models[name] = submitted
        self.core.submit_model(
            ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"python")
        )
        if gate is None:
            self.loads_expected += 1
        else:
            self.held_at_gate.append(submitted)

    @precondition(lambda self: bool(self.held_at_gate))
    @rule(picks=st.lists(st.integers(0, 20), min_size=1, max_size=4), together=st.booleans())
    def open_gates(self, picks: list[int], together: bool) -> None:
        """Lets held loads finish in the order picked: one at a time (each finishing before the
        next gate opens), or all at once on the loader's three threads."""
        for pick in picks:
            if not self.held_at_gate:
                break
            submitted = self.held_at_gate.pop(pick % len(self.held_at_gate))
            assert submitted.gate is not None
            submitted.gate.set()
            self.loads_expected += 1
            if not together:
                self._settle()
        event("gates opened together" if together and len(picks) > 1 else "gates opened")
        self._settle()

    def _settle(self) -> None:
        assert self.core.wait_for_loads(self.loads_expected), "a load never finished"
        self._absorb_events()

    def _absorb_events(self) -> None:
        for model_event in self.core.drain_events():
            kind, name = model_event.kind, model_event.name
            if kind in TERMINAL:
                self.terminal[name].append(kind)
                event(f"load {kind}")
                if kind is ModelEventKind.REJECTED:
                    self.rejected.add(name)
                elif kind is ModelEventKind.STAGED:
                    history = self.keys[self.models[name].key]
                    history.staged_order = max(history.staged_order, self.models[name].order)
            elif kind is ModelEventKind.SWAPPED:
                self._check_promotion(name)
            elif kind is ModelEventKind.QUARANTINED:
                slot = self.core.find_slot(model_event.key)
                event("quarantined")
                if slot is not None and slot.current is not None:
                    self.keys[model_event.key].restored.add(slot.current.identity.name)

    def _check_promotion(self, name: str) -> None:
        """A model swapped in is newer than every model that served its key before."""
        submitted = self.models[name]
        history = self.keys[submitted.key]
        assert submitted.order > history.served_order, (
            f"{name} became current after a newer model served {submitted.key}"
        )
        assert name not in self.rejected, f"rejected model {name} became current"
        assert submitted.order == history.staged_order, (
            f"{name} became current although a newer model of {submitted.key} staged before"
        )
        history.served_order = submitted.order
        event("swap")

    # --- scoring -------------------------------------------------------------------------------
    @rule(
        records=st.lists(
            st.tuples(
                st.sampled_from((*KEYS, UNSERVED_KEY)), st.sampled_from(VALUES), st.booleans()
            ),
            min_size=1,
            max_size=10,
        )
    )
    def score_stream(self, records: list[tuple[str, float, bool]]) -> None:
        """A stream batch: JSON records of any keys; ``short`` ones lack a feature."""
        self._score_records(records)

    @rule(
        key=st.sampled_from(KEYS),
        values=st.lists(st.sampled_from(VALUES), min_size=1, max_size=3),
    )
    def score_one_key(self, key: str, values: list[float]) -> None:
        """A small stream batch of one key's complete records (a partition that carries one key)."""
        self._score_records([(key, value, False) for value in values])

    def _score_records(self, records: list[tuple[str, float, bool]]) -> None:
        """Scores JSON records; checks the outcome, and that a model that scores every complete
        record did (``serving`` is what each key's batch was bound to use)."""
        payloads = [
            orjson.dumps({"dataType": key, "features": [value] if short else [value, value]})
            for key, value, short in records
        ]
        serving = self._serving_models()
        outcome = self.core.score(JsonCodec().decode(records_from(payloads)))
        self._absorb_events()
        self._check_outcome(outcome, [key for key, _, _ in records])
        scored = {row for row, _, _ in outcome.results()}
        for row, (key, value, short) in enumerate(records):
            model, _ = serving.get(key, (None, False))
            if model is None or short or (_parse(model)[0] == "flaky" and value >= FLAKY_FROM):
                continue
            assert row in scored, f"a complete record of {key} failed under {model}"

    @rule(
        key=st.sampled_from((*KEYS, UNSERVED_KEY)),
        values=st.lists(st.sampled_from(VALUES), min_size=0, max_size=4),
        through_api=st.booleans(),
    )
    def score_v2(self, key: str, values: list[float], through_api: bool) -> None:
        """A V2 request: through the API function, or straight to ``core.score(observe=False)``."""
        matrix = np.array([[value, value] for value in values]).reshape(len(values), WIDTH)
        if through_api:
            self._infer(key, matrix)
            return
        records = [InputRecord(b"", position=f"v2:{row}") for row in range(len(values))]
        names = ("features[0]", "features[1]")
        outcome = self.core.score(
            DecodedBatch(records, [key] * len(records), names, matrix), observe=False
        )
        self._absorb_events()
        self._check_outcome(outcome, [key] * len(records))

    def _infer(self, key: str, matrix: np.ndarray) -> None:
        request: dict[str, Any] = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(matrix.shape),
                    "datatype": "FP64",
                    "data": matrix.ravel().tolist(),
                }
            ]
        }
        try:
            response = v2.infer(self.core, key, request)
        except RequestError:
            event("V2 request refused")
            return
        finally:
            self._absorb_events()
        name = response["parameters"]["model"]
        values = response["outputs"][0]["data"]
        assert len(values) == len(matrix)
        if values:
            self._check_result(key, name, values)

    def _check_outcome(self, outcome: BatchOutcome, keys: list[str]) -> None:
        """One outcome per record; each result from the model it names, of the record's key."""
        rows = [row for group in outcome.groups for row in group.rows.tolist()]
        rows += [error.row for error in outcome.errors]
        assert sorted(rows) == list(range(len(keys))), "a record lost or answered twice"
        for group in outcome.groups:
            assert {keys[row] for row in group.rows.tolist()} == {group.key}
            name = group.model.name
            seen = self.sequences.setdefault(name, group.model.sequence)
            assert seen == group.model.sequence, f"{name} changed its sequence number"
            self._check_result(group.key, name, group.values.tolist())

    def _check_result(self, key: str, name: str, values: list[object]) -> None:
        submitted = self.models[name]
        history = self.keys[key]
        assert submitted.key == key, f"{name}, a model of {submitted.key}, scored {key}"
        assert name not in self.rejected, f"rejected model {name} scored records"
        assert _parse(name)[0] not in BAD_KINDS, f"bad model {name} scored records"
        assert values == [expected_value(name)] * len(values), f"not computed by {name}"
        assert submitted.order > history.unloaded_at, f"{name} served after its key's unloading"
        if submitted.order < history.served_order:
            assert name in history.restored, (
                f"{name} scored {key} after a newer model had served it, with no rollback"
            )
            event("an older model serves after an explicit rollback or quarantine")
        history.served_order = max(history.served_order, submitted.order)
        value_type = type(values[0])
        if history.value_type is None:
            history.value_type = value_type
        assert history.value_type is value_type, f"{key} changed its JSON type"

    def _serving_models(self) -> dict[str, tuple[str, bool]]:
        """The model each key's next batch will use (its staged one unless pinned, else its
        current one), and whether the key's positional order is fixed."""
        serving: dict[str, tuple[str, bool]] = {}
        for slot in self.core.slots():
            served = slot.current if slot.pinned or slot.staged is None else slot.staged
            if served is not None:
                serving[slot.key] = (served.identity.name, slot.positional_order is not None)
        return serving

    # --- admin ---------------------------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS))
    def rollback(self, key: str) -> None:
        slot = self.core.find_slot(key)
        if slot is None:
            return
        try:
            restored = slot.rollback()
        except NothingToRollBackError:
            return
        self.keys[key].restored.add(restored.identity.name)
        event("rolled back")

    @rule(key=st.sampled_from(KEYS), pinned=st.booleans())
    def pin(self, key: str, pinned: bool) -> None:
        slot = self.core.find_slot(key)
        if slot is not None:
            slot.pin(pinned)

    @rule(key=st.sampled_from((*KEYS, UNSERVED_KEY)))
    def unload(self, key: str) -> None:
        """A tombstone or an admin unload; models submitted after it serve the key again."""
        had_slot = self.core.find_slot(key) is not None
        assert self.core.unload(key) == had_slot
        history = self.keys[key]
        history.unloaded_at = self.order
        history.value_type = None  # the key starts afresh
        self.order += 1
        self._absorb_events()

    # --- invariants ----------------------------------------------------------------------------
    @invariant()
    def every_finished_load_has_one_outcome(self) -> None:
        held = {submitted.name for submitted in self.held_at_gate}
        for name in self.models:
            outcomes = self.terminal.get(name, [])
            if name in held:
                assert outcomes == [], f"{name} finished before its gate opened"
                continue
            assert len(outcomes) == 1, f"{name}: {outcomes}"
            if _parse(name)[0] in BAD_KINDS:
                assert outcomes == [ModelEventKind.REJECTED], f"bad model {name}: {outcomes}"

    @invariant()
    def rejected_models_are_never_held(self) -> None:
        for slot in self.core.slots():
            for role, served in slot.models():
                name = served.identity.name
                assert name not in self.rejected, f"rejected {name} is {role} of {slot.key}"
                assert self.models[name].key == slot.key
                assert self.models[name].order > self.keys[slot.key].unloaded_at

    @invariant()
    def sequence_numbers_follow_submission_order(self) -> None:
        seen = sorted(self.sequences.items(), key=lambda item: self.models[item[0]].order)
        numbers = [sequence for _, sequence in seen]
        assert numbers == sorted(numbers)

    @invariant()
    def instances_close_once_and_are_never_scored_closed(self) -> None:
        held = {served.identity.name for slot in self.core.slots() for _, served in slot.models()}
        for name, instances in self.factory.made.items():
            if len(instances) > 1:
                event("an evicted model was made again")
            assert all(model.closes <= 1 for model in instances), f"{name} closed twice"
            assert all(model.scored_closed == 0 for model in instances), f"{name} scored closed"
            assert all(model.closed for model in instances[:-1]), f"{name}: an instance leaks"
            if name not in held:
                assert instances[-1].closed, f"{name} left its slot but stays open"

    @invariant()
    def live_models_stay_within_the_budget(self) -> None:
        assert self.core.live_models.live <= BUDGET  # no batch holds a model between steps

    @invariant()
    def footprint_stays_bounded(self) -> None:
        footprint = self.core.footprint()
        assert footprint["keyless_rejections"] <= MAX_KEYLESS_REJECTIONS
        assert footprint["loading"] == len(self.held_at_gate)
        if footprint["loading"] == 0:
            assert footprint["unload_floors"] == 0, "an unload floor outlived the older loads"
        assert footprint["unload_floors"] <= len(self.keys)
        for slot in self.core.slots():
            assert slot.key in KEYS
            assert slot.models() or slot.quarantined_total, f"an empty slot for {slot.key}"

    def teardown(self) -> None:
        for submitted in self.held_at_gate:
            assert submitted.gate is not None
            submitted.gate.set()
        self.core.close()


CoreMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoreStateMachine = CoreMachine.TestCase


def _python_core() -> ServingCore:
    factory = NamedModels()
    registry = FactoryRegistry(FactoryContext())
    registry.register(PYTHON_TYPE, lambda context: factory)
    return ServingCore(ServingSettings(), registry)


def _score_json(core: ServingCore, documents: list[dict[str, object]]) -> BatchOutcome:
    payloads = [orjson.dumps(document) for document in documents]
    return core.score(JsonCodec().decode(records_from(payloads)))


def test_a_load_that_finishes_after_its_keys_unloading_leaves_no_empty_slot() -> None:
    """Found by the machine: a model submitted before an unload and loaded after it made the
    key's slot again, empty, for good (growth with tombstones)."""
    gate = threading.Event()
    factory = NamedModels()
    registry = FactoryRegistry(FactoryContext())
    registry.register(PYTHON_TYPE, lambda context: factory)
    registry.register(GATED_TYPES, lambda context: GatedFactory(factory, gate))
    with ServingCore(ServingSettings(), registry) as core:
        late = ModelDescriptor(name="good-1", data_type="k", model_type=GATED_TYPES, data=b"x")
        core.submit_model(late)
        assert not core.unload("k")
        gate.set()
        assert core.wait_for_models(WAIT_S)
        assert core.find_slot("k") is None, "the late load made an empty slot"
        assert core.footprint()["unload_floors"] == 0, "the floor outlived the older load"
        assert [error.kind for error in _score_json(core, [{"dataType": "k"}]).errors] == [
            "no_model"
        ]


@pytest.mark.parametrize("short_first", [False, True])
def test_a_short_features_list_fails_alone_before_the_order_is_fixed(short_first: bool) -> None:
    """Found by the machine: while a key's positional order is not fixed, a short 'features'
    list decided the order and failed its complete batch mate with it."""
    complete: dict[str, object] = {"dataType": "k", "features": [0.25, 0.25]}
    short: dict[str, object] = {"dataType": "k", "features": [0.25]}
    with _python_core() as core:
        core.submit_model(
            ModelDescriptor(name="good-1", data_type="k", model_type=PYTHON_TYPE, data=b"x")
        )
        assert core.wait_for_models(WAIT_S)
        outcome = _score_json(core, [short, complete] if short_first else [complete, short])
    complete_row = 1 if short_first else 0
    assert [(row, value) for row, _, value in outcome.results()] == [(complete_row, 1.0)], [
        error.reason for error in outcome.errors
    ]
