"""Contract 1: a new model becomes current at a batch boundary; each result names its model."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import orjson

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.formats.base import FactoryContext
from streamserve.formats.onnx import OnnxFactory
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.settings import ServingSettings
from streamserve.testing import GatedFactory

CODEC = JsonCodec()
GATED_TYPE = 100  # a plug-in model type number: ONNX bytes behind a gate


def _batch(start: int, size: int) -> list[InputRecord]:
    return [
        InputRecord(
            orjson.dumps({"dataType": "wine", "features": [float(i)] * 11}), position=str(i)
        )
        for i in range(start, start + size)
    ]


def test_records_before_the_swap_use_the_old_model_and_after_it_the_new(
    core: ServingCore,
) -> None:
    core.submit_model(onnx_descriptor("old", onnx_constant(11, 1.0)))
    assert core.wait_for_models(60)
    scored: list[tuple[int, str, float]] = []  # (batch number, model, value) in stream order

    def score_batch(number: int) -> None:
        outcome = core.score(CODEC.decode(_batch(number * 10, 10)))
        assert outcome.error_count == 0
        scored.extend(
            (number, group.model.name, value)
            for group in outcome.groups
            for value in group.values.tolist()
        )

    for number in range(3):
        score_batch(number)
    core.submit_model(onnx_descriptor("new", onnx_constant(11, 2.0)))
    number = 3
    while core.loads_pending:  # serve while the new model loads
        score_batch(number)
        number += 1
    assert core.wait_for_models(60)
    for _ in range(3):
        score_batch(number)
        number += 1

    models = [model for _, model, _ in scored]
    first_new = models.index("new")
    assert set(models[:first_new]) == {"old"}
    assert set(models[first_new:]) == {"new"}
    assert first_new % 10 == 0, "the swap happened inside a batch"
    assert first_new >= 30, "records before the publication were scored by the new model"
    assert all(value == {"old": 1.0, "new": 2.0}[model] for _, model, value in scored), (
        "a result names a model other than the one that scored it"
    )
    assert len(scored) == number * 10


def test_the_swap_is_reported_once_with_the_new_models_identity(core: ServingCore) -> None:
    core.submit_model(onnx_descriptor("first", onnx_constant(11, 1.0), version="v1"))
    core.wait_for_models(60)
    core.score(CODEC.decode(_batch(0, 2)))
    core.submit_model(onnx_descriptor("second", onnx_constant(11, 2.0), version="v2"))
    core.wait_for_models(60)
    core.score(CODEC.decode(_batch(2, 2)))
    core.score(CODEC.decode(_batch(4, 2)))

    swaps = [(e.name, e.version) for e in core.drain_events() if e.kind is ModelEventKind.SWAPPED]
    assert swaps == [("first", "v1"), ("second", "v2")]
    slot = core.find_slot("wine")
    assert slot is not None
    assert slot.current is not None
    assert slot.current.identity.name == "second"
    assert slot.previous is not None
    assert slot.previous.identity.name == "first"
    assert [s.name for s in slot.served_history()] == ["first"]
    assert slot.served_history()[0].invocations == 2


def test_a_slow_older_model_never_replaces_a_newer_one(tmp_path: Path) -> None:
    """Loads may finish out of order: the model published last wins."""
    gate = threading.Event()
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(OnnxFactory(registry.context), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(loader_threads=2), registry)
    try:
        core.submit_model(
            replace(onnx_descriptor("slow-old", onnx_constant(11, 1.0)), model_type=GATED_TYPE)
        )
        assert gated.loading.wait(60)
        core.submit_model(onnx_descriptor("fast-new", onnx_constant(11, 2.0)))
        deadline = time.monotonic() + 60
        served_by: set[str] = set()
        while "fast-new" not in served_by:  # keep serving until the newer model swaps in
            assert time.monotonic() < deadline, "the newer model never became current"
            core.wait_for_models(0.01)
            served_by = {g.model.name for g in core.score(CODEC.decode(_batch(0, 1))).groups}
        gate.set()
        assert core.wait_for_models(60)
        outcome = core.score(CODEC.decode(_batch(0, 3)))

        assert {group.model.name for group in outcome.groups} == {"fast-new"}
        kinds = {e.name: e.kind for e in core.drain_events()}
        assert kinds["slow-old"] is ModelEventKind.SUPERSEDED
    finally:
        gate.set()
        core.close()


def test_an_unloaded_key_stays_unloaded_until_a_newer_model_arrives() -> None:
    """Unloading (admin action, models-topic tombstone) is ordered with model messages: a model
    submitted before it and still loading never resurrects the key; one submitted after it does."""
    gate = threading.Event()
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(OnnxFactory(registry.context), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(loader_threads=2), registry)
    try:
        core.submit_model(onnx_descriptor("served", onnx_constant(11, 1.0)))
        assert core.wait_for_models(60)
        assert core.score(CODEC.decode(_batch(0, 1))).result_count == 1
        core.submit_model(
            replace(onnx_descriptor("in-flight", onnx_constant(11, 2.0)), model_type=GATED_TYPE)
        )
        assert gated.loading.wait(60)
        assert core.unload("wine", origin="models/0@7")
        gate.set()
        assert core.wait_for_models(60)
        outcome = core.score(CODEC.decode(_batch(0, 2)))
        assert outcome.result_count == 0
        assert {error.kind for error in outcome.errors} == {"no_model"}
        events = {(e.kind, e.name) for e in core.drain_events()}
        assert (ModelEventKind.UNLOADED, "") in events
        assert (ModelEventKind.SUPERSEDED, "in-flight") in events

        core.submit_model(onnx_descriptor("after", onnx_constant(11, 3.0)))
        assert core.wait_for_models(60)
        outcome = core.score(CODEC.decode(_batch(0, 2)))
        assert [group.model.name for group in outcome.groups] == ["after"]
        assert outcome.groups[0].values.tolist() == [3.0, 3.0]
    finally:
        gate.set()
        core.close()
