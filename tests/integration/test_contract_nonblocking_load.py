"""Contract 2: loading and validating a model stalls neither other keys nor the old model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.formats.base import FactoryContext
from streamserve.formats.onnx import OnnxFactory
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import GatedFactory

GATED_TYPE = 100
CODEC = JsonCodec()


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _mixed_batch(number: int) -> list[InputRecord]:
    return [
        InputRecord(
            orjson.dumps({"dataType": key, "features": [1.0] * 11}), position=f"{number}:{key}:{i}"
        )
        for i in range(8)
        for key in ("wine", "beer")
    ]


def test_a_load_held_for_seconds_stalls_neither_the_key_nor_other_keys(
    gate: threading.Event,
) -> None:
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(OnnxFactory(registry.context), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(), registry)
    try:
        core.submit_model(onnx_descriptor("wine-old", onnx_constant(11, 1.0), key="wine"))
        core.submit_model(onnx_descriptor("beer", onnx_constant(11, 3.0), key="beer"))
        assert core.wait_for_models(60)
        core.submit_model(
            replace(onnx_descriptor("wine-new", onnx_constant(11, 2.0)), model_type=GATED_TYPE)
        )
        assert gated.loading.wait(60)

        served_during_load: list[tuple[str, str]] = []
        batches = 20  # all scored while the load is held: it never returns until the gate opens
        for number in range(batches):
            outcome = core.score(CODEC.decode(_mixed_batch(number)))
            assert outcome.error_count == 0
            served_during_load += [(g.key, g.model.name) for g in outcome.groups]
        assert not gate.is_set()
        assert core.loads_pending == 1, "the load finished early: the test proves nothing"
        gate.set()

        assert set(served_during_load) == {("wine", "wine-old"), ("beer", "beer")}
        assert core.wait_for_models(60)
        outcome = core.score(CODEC.decode(_mixed_batch(batches)))
        assert {(g.key, g.model.name) for g in outcome.groups} == {
            ("wine", "wine-new"),
            ("beer", "beer"),
        }
    finally:
        core.close()
