"""Review of issue 18 (Open Inference Protocol): requests while the key's model changes.

docs/inference-protocol.md: "A request may name [the version]; another version than the one
serving is not found (404, NOT_FOUND)", and an answer names the model that scored it. Contract
1: a staged model becomes current at a batch boundary, so it scores the next request's batch.
These drive a real server on loopback over a real core and real ONNX models; the interleavings
come from the staged model itself, or from a core whose next batch waits at the test's gate
(between the request looking its model up and its batch being scored).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest

from builders import onnx_descriptor, onnx_linear
from streamserve.api.grpc import grpc_server
from streamserve.api.grpc._generated import grpc_predict_v2_pb2 as pb
from streamserve.api.grpc._generated.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from streamserve.api.server import ApiServer
from streamserve.codecs.base import DecodedBatch
from streamserve.serving.core import ServingCore
from streamserve.serving.outcome import BatchOutcome
from streamserve.serving.slot import ModelRole
from streamserve.settings import ApiSettings, ServingSettings

KEY = "pair"
ROW = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}


class GatedCore(ServingCore):
    """A real core whose next batch, once ``hold`` is set, waits for ``gate`` (``waiting`` is
    set while it does): what a request does between its model lookup and its batch."""

    def __init__(self) -> None:
        super().__init__(ServingSettings())
        self.hold, self.waiting, self.gate = threading.Event(), threading.Event(), threading.Event()

    def score(self, batch: DecodedBatch, *, observe: bool = True) -> BatchOutcome:
        if self.hold.is_set():
            self.hold.clear()
            self.waiting.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return super().score(batch, observe=observe)


@dataclass(frozen=True)
class Served:
    core: GatedCore
    http: httpx.Client
    grpc: GRPCInferenceServiceStub


@contextmanager
def serving() -> Iterator[Served]:
    with GatedCore() as core:
        http_api = ApiServer(core, ApiSettings(port=0), lambda: True)
        grpc_api = grpc_server(core, ApiSettings(grpc_port=0), lambda: True)
        http_api.start()
        grpc_api.start()
        try:
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{http_api.port}", timeout=60) as http,
                grpc.insecure_channel(grpc_api.address) as channel,
            ):
                yield Served(core, http, GRPCInferenceServiceStub(channel))
        finally:
            grpc_api.stop()
            http_api.stop()


def publish(served: Served, name: str, weight: float) -> str:
    """Publishes a model y = w a + 10 w b for the key; its version once it waits staged."""
    model = onnx_linear(np.array([weight, 10 * weight]), 0.0)
    served.core.submit_model(onnx_descriptor(name, model, KEY))
    assert served.core.wait_for_models(60)
    slot = served.core.find_slot(KEY)
    assert slot is not None
    return dict(slot.models())[ModelRole.STAGED].identity.version


def make_current(served: Served, name: str, weight: float) -> str:
    version = publish(served, name, weight)
    reply = served.http.post(f"/v2/models/{KEY}/infer", json=ROW)  # a batch: the swap
    assert reply.json()["model_version"] == version
    return version


def grpc_infer(served: Served, version: str) -> pb.ModelInferResponse:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP64", shape=[1, 2])
    request = pb.ModelInferRequest(
        model_name=KEY,
        model_version=version,
        inputs=[tensor],
        raw_input_contents=[np.array([1.0, 2.0], "<f8").tobytes()],
    )
    return served.grpc.ModelInfer(request, timeout=60)


def test_a_request_for_the_current_version_is_not_answered_by_the_staged_one() -> None:
    """With model a current and b staged, the next batch is b's. A request naming a's version
    was answered 200 by b (model_version b's), while one naming b's version, the model that
    answers, was not found, and b's version was not ready."""
    with serving() as served:
        old = make_current(served, "a", 1.0)
        new = publish(served, "b", 2.0)
        reply = served.http.post(f"/v2/models/{KEY}/versions/{old}/infer", json=ROW)
        assert reply.status_code == 404, (
            f"a request for version {old} was answered by {reply.json().get('model_version')}"
        )
        with pytest.raises(grpc.RpcError) as refused:
            grpc_infer(served, old)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        ready = served.http.get(f"/v2/models/{KEY}/versions/{new}/ready")
        assert ready.status_code == 200, "the version that answers the next request is not ready"
        metadata = served.http.get(f"/v2/models/{KEY}").json()
        assert metadata["versions"] == [new]
        answer = served.http.post(f"/v2/models/{KEY}/versions/{new}/infer", json=ROW)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["model_version"], answer.json()["outputs"][0]["data"]) == (
            new,
            [42.0],
        )


def _held_request(served: Served, path: str) -> tuple[ThreadPoolExecutor, object]:
    served.core.hold.set()
    pool = ThreadPoolExecutor(1)
    future = pool.submit(served.http.post, path, json=ROW)
    assert served.core.waiting.wait(60), "the request never reached its batch"
    return pool, future


def test_a_rollback_between_lookup_and_batch_does_not_answer_for_the_version_asked() -> None:
    """A request naming version a, whose batch starts after a rollback to model p: it was
    answered 200 by p, for a request that named a."""
    with serving() as served:
        make_current(served, "p", 3.0)
        asked = make_current(served, "a", 1.0)
        pool, future = _held_request(served, f"/v2/models/{KEY}/versions/{asked}/infer")
        with pool:
            served.core.find_slot(KEY).rollback()  # type: ignore[union-attr]
            served.core.gate.set()
            reply = future.result(60)  # type: ignore[attr-defined]
        assert reply.status_code == 404, (
            f"a request for version {asked} was answered {reply.status_code} by "
            f"{reply.json().get('parameters')}"
        )
        assert asked in reply.json()["error"]


def test_an_unload_between_lookup_and_batch_answers_not_found() -> None:
    """A request whose key is unloaded before its batch: the model is not found (404), as for
    a request that came after the unload; it was answered 400, the request's fault."""
    with serving() as served:
        make_current(served, "a", 1.0)
        pool, future = _held_request(served, f"/v2/models/{KEY}/infer")
        with pool:
            served.core.unload(KEY)
            served.core.gate.set()
            reply = future.result(60)  # type: ignore[attr-defined]
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"].startswith(f"model {KEY!r} not found")
        after = served.http.post(f"/v2/models/{KEY}/infer", json=ROW)
        assert after.status_code == 404
