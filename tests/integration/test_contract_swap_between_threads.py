"""Contract 1 with two scoring threads (the runtime's and the API's) and admin actions: a batch
is scored by the model it took, to its last record, even if that model is retired meanwhile;
the instance is closed once, after its last user, and never counted in the live budget again.
The V2 API scores without changing what the key's stream records look like."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from builders import onnx_constant, onnx_descriptor, onnx_named_linear
from streamserve.api import v2
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.serving.outcome import BatchOutcome
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, FunctionModel, records_from

BLOCKING_TYPE = 401


class BlockingModels:
    """Python models that hold their first scoring call until ``release`` is set."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.made: list[FunctionModel] = []

    def score(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 3:  # the stream's batch, not the probe
            self.inside.set()
            assert self.release.wait(60)
        return features[:, 0]

    def factory(self) -> FunctionFactory:
        models = self

        class Recording(FunctionFactory):
            def load(self, request):  # type: ignore[no-untyped-def]
                model = super().load(request)
                models.made.append(model)  # type: ignore[arg-type]
                return model

        return Recording(self.score, width=11)


def _core(blocking: BlockingModels, **settings: object) -> ServingCore:
    registry = FactoryRegistry(FactoryContext())
    factory = blocking.factory()
    registry.register(BLOCKING_TYPE, lambda context: factory)
    return ServingCore(ServingSettings(**settings), registry)  # type: ignore[arg-type]


def _records(count: int, key: str = "k") -> list[bytes]:
    return [orjson.dumps({"dataType": key, "features": [1.0] * 11}) for _ in range(count)]


def _score(core: ServingCore, count: int) -> BatchOutcome:
    return core.score(JsonCodec().decode(records_from(_records(count))))


def test_an_unload_during_a_batch_lets_the_batch_finish_with_its_model() -> None:
    blocking = BlockingModels()
    core = _core(blocking, max_live_models=5)
    with core, ThreadPoolExecutor(1) as stream:
        core.submit_model(
            ModelDescriptor(name="m", data_type="k", model_type=BLOCKING_TYPE, data=b"x")
        )
        assert core.wait_for_models(60)
        batch = stream.submit(_score, core, 3)
        assert blocking.inside.wait(60)
        assert core.unload("k")  # the admin action, while the batch is inside the model
        (model,) = blocking.made
        assert not model.closed, "closed while a batch was using it"
        blocking.release.set()
        outcome = batch.result(60)
        assert outcome.error_count == 0
        assert [g.model.name for g in outcome.groups] == ["m"]
        assert model.closed, "closed once its last user released it"
        assert core.live_models.live == 0, "a retired model stays out of the live budget"


def test_swaps_promoted_by_another_thread_never_close_the_model_a_batch_holds() -> None:
    blocking = BlockingModels()
    core = _core(blocking, max_live_models=5)
    with core, ThreadPoolExecutor(1) as stream:
        core.submit_model(
            ModelDescriptor(name="P", data_type="k", model_type=BLOCKING_TYPE, data=b"x")
        )
        assert core.wait_for_models(60)
        batch = stream.submit(_score, core, 3)  # the stream's batch holds P
        assert blocking.inside.wait(60)
        for name, value in (("C", 2.0), ("D", 3.0)):  # the API thread promotes two swaps:
            core.submit_model(onnx_descriptor(name, onnx_constant(11, value), key="k"))
            assert core.wait_for_models(60)
            assert {g.model.name for g in _score(core, 1).groups} == {name}  # P is retired
        (held,) = blocking.made
        assert not held.closed
        blocking.release.set()
        outcome = batch.result(60)
        assert outcome.error_count == 0, [e.reason for e in outcome.errors]
        assert {g.model.name for g in outcome.groups} == {"P"}
        assert held.closed
        assert core.live_models.live <= 2


def test_v2_requests_do_not_change_the_records_a_new_model_is_validated_against() -> None:
    """A V2 call with a positional tensor used to overwrite the key's observed columns, so a
    valid named model for the key was then rejected."""
    names = ["alpha", "beta"]
    core = ServingCore(ServingSettings())
    with core:
        core.submit_model(onnx_descriptor("positional", onnx_constant(2, 1.0), key="k"))
        assert core.wait_for_models(60)
        stream = [orjson.dumps({"dataType": "k", "alpha": 1.0, "beta": 2.0})] * 4
        assert core.score(JsonCodec().decode(records_from(stream))).error_count == 0
        request = {
            "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]
        }
        assert v2.infer(core, "k", request)["outputs"][0]["data"] == [1.0]
        core.submit_model(
            onnx_descriptor("named", onnx_named_linear(names, np.array([1.0, 1.0]), 0.0), key="k")
        )
        assert core.wait_for_models(60)
        rejected = [e.reason for e in core.drain_events() if e.kind is ModelEventKind.REJECTED]
        assert rejected == []
        assert {
            g.model.name for g in core.score(JsonCodec().decode(records_from(stream))).groups
        } == {"named"}


def test_v2_inference_with_zero_rows_answers_with_zero_outputs() -> None:
    core = ServingCore(ServingSettings())
    with core:
        core.submit_model(onnx_descriptor("m", onnx_constant(11, 1.0), key="k"))
        assert core.wait_for_models(60)
        request = {"inputs": [{"name": "input", "shape": [0, 11], "datatype": "FP32", "data": []}]}
        response = v2.infer(core, "k", request)
    assert response["outputs"][0]["data"] == []
    assert response["outputs"][0]["shape"] == [0]
    assert response["outputs"][0]["datatype"] == "FP64"
    assert response["parameters"] == {"model": "m"}


def test_a_v2_request_before_any_stream_record_does_not_fix_the_positional_order() -> None:
    core = ServingCore(ServingSettings())
    with core:
        core.submit_model(onnx_descriptor("positional", onnx_constant(2, 1.0), key="k"))
        assert core.wait_for_models(60)
        request = {
            "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]
        }
        assert v2.infer(core, "k", request)["outputs"][0]["data"] == [1.0]
        slot = core.find_slot("k")
        assert slot is not None
        assert slot.positional_order is None
        stream = [orjson.dumps({"dataType": "k", "alpha": 1.0, "beta": 2.0})] * 2
        assert core.score(JsonCodec().decode(records_from(stream))).error_count == 0
        assert slot.positional_order == ("alpha", "beta")
