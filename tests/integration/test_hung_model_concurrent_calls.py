"""One model that hangs while the stream and inference requests call it at once: each caller
in it loses at most its own thread, and a request gets 504 even when the stream took the model
out of service meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
import pytest

from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory, records_from

HANGS = 511
DEADLINE_S = 3.0
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    opened = threading.Event()
    yield opened
    opened.set()


@dataclass
class Scene:
    """A key ``k`` whose model hangs once ``armed``; ``entered`` counts calls that hung."""

    gate: threading.Event
    armed: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def score(self, features: FloatMatrix) -> np.ndarray:
        if self.armed.is_set():
            self.entered.release()
            self.gate.wait(600)
        return features[:, 0] * 10

    def core(self) -> ServingCore:
        registry = FactoryRegistry(FactoryContext())
        registry.register(HANGS, FunctionFactory(self.score, width=2))
        core = ServingCore(ServingSettings(scoring_deadline_s=DEADLINE_S), registry)
        core.submit_model(ModelDescriptor(name="hangs", data_type="k", model_type=HANGS, data=b"x"))
        assert core.wait_for_models(60)
        stream_batch(core, 1.0)  # the stream has seen the key's records, as in a replica
        self.armed.set()
        return core


def stream_batch(core: ServingCore, value: float) -> None:
    payload = orjson.dumps({"dataType": "k", "features": [value, 2.0]})
    core.score(JsonCodec().decode(records_from([payload])))


def infer(server: ApiServer, answers: list[httpx.Response]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answers.append(http.post("/v2/models/k/infer", json=BODY))


def test_a_hung_model_called_by_the_stream_and_requests_at_once_loses_a_thread_per_caller(
    gate: threading.Event,
) -> None:
    scene = Scene(gate)
    core = scene.core()
    server = ApiServer(core, ApiSettings(port=0), lambda: True)  # inference_threads: 2
    answers: list[httpx.Response] = []
    try:
        server.start()
        callers = [
            threading.Thread(target=stream_batch, args=(core, 3.0), daemon=True),
            *(threading.Thread(target=infer, args=(server, answers), daemon=True) for _ in "ab"),
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
        threads_lost = core.overrunning_calls
        calls_in_model = 0
        while scene.entered.acquire(timeout=0):
            calls_in_model += 1
    finally:
        gate.set()
        server.stop()
        core.close()
    assert len(answers) == 2, answers
    assert all(a.status_code >= 400 for a in answers), answers
    assert threads_lost <= 1 + 2, (
        "operations.md ('Hung and slow models'): at most one thread per caller in the model "
        "when it got stuck (the stream's and api.inference_threads requests); one hung model, "
        f"called by the stream and two inference requests at once, holds {calls_in_model} "
        f"calls and {threads_lost} threads (streamserve_overrunning_model_calls)"
    )


def test_a_request_whose_model_hangs_gets_504_even_if_the_stream_quarantined_it(
    gate: threading.Event,
) -> None:
    scene = Scene(gate)
    core = scene.core()
    server = ApiServer(core, ApiSettings(port=0), lambda: True)
    answers: list[httpx.Response] = []
    try:
        server.start()
        stream = threading.Thread(target=stream_batch, args=(core, 3.0), daemon=True)
        stream.start()
        assert scene.entered.acquire(timeout=30), "setup: the stream's batch is in the model"
        infer(server, answers)  # enters the model too, before the stream's deadline passes
        stream.join(60)
    finally:
        gate.set()
        server.stop()
        core.close()
    (answer,) = answers
    assert answer.status_code == 504, (
        "operations.md ('Hung and slow models'): 'a request whose model overruns gets "
        "scoring_timeout (HTTP 504)'; this request's model call overran, but since the stream "
        "quarantined the model meanwhile, the request was scored again and the client got "
        f"{answer.status_code} {answer.text} (a client error for a request that was fine)"
    )
