"""Issue 17 review, many keys: attempts to break the reload of evicted models off the scoring
thread (serving/reloads.py), the live-model budget and the per-batch caches of scoring. Each
test fails on the code it was written against and names the contract it shows broken."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import orjson
import pytest

from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, FunctionModel

CODEC = JsonCodec()
SLOW, OTHER = 601, 602


def _records(keys: list[int], value: float = 1.0) -> list[InputRecord]:
    return [
        InputRecord(
            orjson.dumps({"dataType": f"k{key}", "features": [value, 2.0]}), position=str(i)
        )
        for i, key in enumerate(keys)
    ]


class SlowReloads(FunctionFactory):
    """Its first load of a model returns at once; once ``armed``, a load (a reload after an
    eviction: a model on a slow mount) waits for ``gate``."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(lambda x: x[:, 0] + 100, width=2)
        self.gate = gate
        self.armed = threading.Event()

    def load(self, request: LoadRequest) -> Model:
        if self.armed.is_set() and not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        return super().load(request)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    opened = threading.Event()
    yield opened
    opened.set()


def _slow_and_other(
    gate: threading.Event, settings: ServingSettings
) -> tuple[ServingCore, SlowReloads]:
    slow = SlowReloads(gate)
    registry = FactoryRegistry(FactoryContext())
    registry.register(SLOW, lambda _context: slow)
    registry.register(OTHER, FunctionFactory(lambda x: x[:, 0], width=2))
    core = ServingCore(settings, registry)
    for name, model_type, key in (("slow", SLOW, "k0"), ("other", OTHER, "k1")):
        core.submit_model(
            ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"-")
        )
    assert core.wait_for_models(60)
    for number in (0, 1):  # each serves once; with a budget of 1, k1's model evicts k0's
        assert core.score(CODEC.decode(_records([number]))).error_count == 0
    slot = core.find_slot("k0")
    assert slot is not None
    assert slot.current is not None
    assert not slot.current.live, "setup: the budget of 1 should have evicted k0's model"
    return core, slow


def test_a_slow_reload_does_not_take_the_only_model_out_of_service(
    gate: threading.Event,
) -> None:
    """docs/operations.md: an evicted model's records wait for its reload at most the scoring
    deadline, "then fail with scoring_timeout while the reload goes on (a slow reload does not
    take the model out of service)". But ServingCore._score_waiting hands a reload that overran
    to ModelScoring.fail_unavailable, which counts the records as failures of the model: three
    batches (the 2nd and 3rd fail at once: the same reload's clock) quarantine it, and a key
    with no previous model serves nothing any more once the reload is done. Contract 3 (a good
    model is never replaced, serving never stops) and 5 (an evicted model is made again)."""
    settings = ServingSettings(max_live_models=1, scoring_deadline_s=0.3)
    core, slow = _slow_and_other(gate, settings)
    with core:
        slow.armed.set()
        # three batches of 40 records of k0 while its mount is slow: 120 >= 100 (the default
        # quarantine_after_failures) records "failing" in 3 batches
        for _ in range(3):
            outcome = core.score(CODEC.decode(_records([0] * 40)))
            assert {error.kind for error in outcome.errors} == {"scoring_timeout"}
        gate.set()  # the mount answers again: the reload returns
        assert core.wait_for_reloads(30)

        outcome = core.score(CODEC.decode(_records([0])))

        slot = core.find_slot("k0")
        assert slot is not None
        assert slot.quarantined_total == 0, (
            "contract 3/5 broken: a reload slower than the scoring deadline took key k0's only "
            f"model out of service: {[r.reason for r in slot.rejections]}"
        )
        assert [(e.kind, e.reason) for e in outcome.errors] == []
        assert [(g.model.name, g.values.tolist()) for g in outcome.groups] == [("slow", [101.0])]


def _junk_batch(batch: int, records: int = 50, fields: int = 20) -> list[InputRecord]:
    """Records of a key nobody serves, each with its own field names (a misbehaving producer)."""
    return [
        InputRecord(
            orjson.dumps(
                {
                    "dataType": "nobody",
                    **{f"junk-{batch}-{n}-{f}-{'x' * 48}": 1.0 for f in range(fields)},
                }
            ),
            position=str(n),
        )
        for n in range(records)
    ]


def test_field_names_of_junk_records_are_not_kept_after_their_batch() -> None:
    """ModelScoring.canonical_names keeps every batch's field names (the union over its
    records) in a cache of up to MAX_PLANS (4,096) entries, whatever their size, even for
    records of a key that has no model: each batch of junk field names stays in memory until
    4,096 batches have come. 100 batches of 1,000 junk names (~110 bytes each) hold ~12 MB
    here; at the JSON codec's limits (a batch of thousands of records, each with many fields)
    the cache holds gigabytes. "Growth with junk" (BREAK-IT.md; contract 5's memory bound):
    state that grows with input nobody controls must stay bounded in bytes, not entries."""
    import gc
    import tracemalloc

    with ServingCore(ServingSettings()) as core:
        core.score(CODEC.decode(_junk_batch(-1)))  # warm up: imports, first-call caches
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for batch in range(100):
                outcome = core.score(CODEC.decode(_junk_batch(batch)))
                assert {error.kind for error in outcome.errors} == {"no_model"}
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert retained < 4_000_000, (
        f"growth with junk: {retained / 1e6:.1f} MB stay held after 100 batches of records of "
        "a key nobody serves, each batch with its own field names (the names are cached)"
    )


class CloseRaises(FunctionModel):
    """A plug-in model whose close() raises (a backend that is already gone)."""

    def close(self) -> None:
        raise RuntimeError("the backend of model 'fragile' is already gone")


class CloseRaisesFactory(FunctionFactory):
    def load(self, request: LoadRequest) -> Model:
        return CloseRaises(lambda x: x[:, 0] + 7, width=2)


def test_another_models_failing_close_on_eviction_does_not_fail_a_keys_records() -> None:
    """With a budget of 1, key k0's model, made again for its batch, evicts the idle model of
    key k1, whose close() raises: the exception leaves LiveModels.touch (budget.py: evict() ->
    close() is not guarded) inside k0's reload (reloads.py _reload) or k0's scoring
    (scoring.py _score_rows), and ServingCore fails every record of k0 as a defect, though
    k0's model scored them. Contract 4: a record fails alone, for its own reason; contract 3:
    nothing a model does (here another key's model) stops serving."""
    registry = FactoryRegistry(FactoryContext())
    registry.register(SLOW, FunctionFactory(lambda x: x[:, 0] + 100, width=2))
    registry.register(OTHER, CloseRaisesFactory(lambda x: x[:, 0], width=2))
    with ServingCore(ServingSettings(max_live_models=1), registry) as core:
        for name, model_type, key in (("healthy", SLOW, "k0"), ("fragile", OTHER, "k1")):
            core.submit_model(
                ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"-")
            )
        assert core.wait_for_models(60)
        assert core.score(CODEC.decode(_records([1]))).error_count == 0  # k1 live, k0 not

        outcome = core.score(CODEC.decode(_records([0, 0, 0])))

        assert [(e.kind, e.reason) for e in outcome.errors] == [], (
            "contract 4 broken: key k0's records failed because another key's model could not "
            "be closed when the budget evicted it"
        )
        assert [(g.model.name, g.values.tolist()) for g in outcome.groups] == [
            ("healthy", [101.0, 101.0, 101.0])
        ]
