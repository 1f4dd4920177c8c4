"""The per-type sums of ``/metrics`` count each model once: a model that a scan missed while it
moved between roles is still held (not retired, or it would be counted twice), and a model that
left its slot is counted by its final numbers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from streamserve.api.metrics_scan import RetiredTotals, SlotScan, TopKeys, scan
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.slot import ModelSlot
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, records_from


def _first(features: FloatMatrix) -> np.ndarray:
    return features[:, 0]


@pytest.fixture
def core() -> Iterator[ServingCore]:
    registry = FactoryRegistry(FactoryContext(), discover_plugins=False)
    registry.register(ModelType.ONNX, FunctionFactory(_first, width=2))
    with ServingCore(ServingSettings(), registry) as serving:
        yield serving


def _serve(core: ServingCore, key: str, name: str, records: int) -> None:
    core.submit_model(
        ModelDescriptor(name=name, data_type=key, model_type=ModelType.ONNX, data=b"x")
    )
    assert core.wait_for_models(60)
    _score(core, key, records)


def _score(core: ServingCore, key: str, records: int) -> None:
    payload = orjson.dumps({"dataType": key, "features": [1.0, 2.0]})
    core.score(JsonCodec().decode(records_from([payload] * records)))


def test_a_model_missed_by_a_scan_but_still_in_its_slot_is_held_not_retired(
    core: ServingCore,
) -> None:
    _serve(core, "a", "v1", 5)
    _serve(core, "b", "v1", 2)
    retired = RetiredTotals()
    slots = core.slots()
    retired.fold(scan(slots), slots)
    missed = SlotScan(
        top_keys=0, top_error_keys=0
    )  # a scan that read key "a" while its model moved between roles
    slot_b = core.find_slot("b")
    assert slot_b is not None
    missed.add(slot_b)
    retired.fold(missed, slots)
    assert missed.formats["ONNX"].results == 5 + 2
    assert retired.formats == {}
    slots = core.slots()
    again = scan(slots)
    retired.fold(again, slots)
    assert again.formats["ONNX"].results == 5 + 2, "counted once, as held"
    assert retired.formats == {}


def test_a_model_that_left_its_slot_is_counted_by_its_final_numbers(core: ServingCore) -> None:
    _serve(core, "a", "v1", 5)
    retired = RetiredTotals()
    slots = core.slots()
    retired.fold(scan(slots), slots)
    _score(core, "a", 4)  # after the scan that saw v1 last
    _serve(core, "a", "v2", 3)
    _serve(core, "a", "v3", 1)  # v1 leaves the slot
    assert core.unload("a")  # and v2, v3 with it
    slots = core.slots()
    found = scan(slots)
    retired.fold(found, slots)
    assert found.formats == {}
    assert retired.formats["ONNX"].results == 5 + 4, (
        "v1 by its final numbers; v2 and v3 came and went between two scans, unseen"
    )
    assert retired.formats["ONNX"].swaps == 1
    assert sum(retired.formats["ONNX"].latency_counts()) == 2  # v1's two batches


def test_the_top_keys_are_the_largest_counts_and_the_first_offered_among_equals() -> None:
    slots = [ModelSlot(f"k{n}") for n in range(8)]
    counts = [3, 9, 7, 1, 7, 0, 7, 2]
    top = TopKeys(2)
    none = TopKeys(0)
    for count, slot in zip(counts, slots, strict=True):
        top.offer(count, slot)
        none.offer(count, slot)
    assert [slot.key for slot in top.slots()] == ["k1", "k2"]
    assert none.slots() == []
    fewer = TopKeys(20)
    for count, slot in zip(counts, slots, strict=True):
        fewer.offer(count, slot)
    assert {slot.key for slot in fewer.slots()} == {slot.key for slot in slots}
