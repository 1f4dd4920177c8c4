"""Models that hang: a probe, a load or a scoring call that does not return.

A call into a model library cannot be interrupted, so each test's model blocks on a gate the
test opens at its end (a model stuck in native code, without burning a core); the contracts
asserted are what the rest of the process does meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import orjson
import pytest

from streamserve.api.server import ApiServer
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.serving.outcome import BatchOutcome
from streamserve.settings import ApiSettings, ServingSettings
from streamserve.testing import FunctionFactory, FunctionModel, GatedFactory, records_from

GOOD, HANGING, GATED = 201, 202, 203
STUCK_KEY, OTHER_KEY = "stuck", "other"


class HangingFactory(FunctionFactory):
    """Models that answer their first ``answers`` calls, then block until ``gate`` opens."""

    def __init__(self, gate: threading.Event, answers: int) -> None:
        super().__init__(self._score, width=2)
        self.gate = gate
        self._answers = answers
        self._calls = 0
        self.blocked = threading.Event()
        self.models: list[FunctionModel] = []

    def _score(self, features: FloatMatrix) -> np.ndarray:
        self._calls += 1
        if self._calls > self._answers:
            self.blocked.set()
            self.gate.wait(600)
        return features[:, 0] * 10

    def load(self, request: LoadRequest) -> Model:
        model = FunctionModel(self._score, width=2)
        self.models.append(model)
        return model


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    opened = threading.Event()
    yield opened
    opened.set()  # every stuck call returns, so no thread outlives the test


def _core(settings: ServingSettings, **factories: object) -> ServingCore:
    registry = FactoryRegistry(FactoryContext())
    registry.register(GOOD, FunctionFactory(lambda x: x[:, 0], width=2))
    for name, factory in factories.items():
        registry.register(int(name.removeprefix("t")), lambda context, f=factory: f)
    return ServingCore(settings, registry)


def _descriptor(name: str, model_type: int, key: str) -> ModelDescriptor:
    return ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"python")


def _batch(*keys: str) -> list[bytes]:
    return [
        orjson.dumps({"dataType": key, "features": [float(n), 1.0]}) for n, key in enumerate(keys)
    ]


def _score(core: ServingCore, payloads: list[bytes], *, observe: bool = True) -> BatchOutcome:
    return core.score(JsonCodec().decode(records_from(payloads)), observe=observe)


def _by_row(outcome: BatchOutcome) -> dict[int, tuple[str, str]]:
    """Row -> (model that scored it, or the error kind) — exactly one entry per record."""
    seen: dict[int, tuple[str, str]] = {}
    for row, group, _value in outcome.results():
        assert row not in seen, f"contract 4: record {row} has two outcomes"
        seen[row] = ("result", group.model.name)
    for error in outcome.errors:
        assert error.row not in seen, f"contract 4: record {error.row} has two outcomes"
        seen[error.row] = ("error", error.kind)
    return seen


def _metrics(core: ServingCore) -> str:
    server = ApiServer(core, ApiSettings(port=0), is_ready=lambda: True)
    server.start()
    try:
        return httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30).text
    finally:
        server.stop()


def _wait(condition: Callable[[], bool], timeout_s: float = 30) -> bool:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return True
        done.wait(0.05)
    return condition()


def test_a_model_that_hangs_while_serving_gives_its_key_back_to_the_previous_model(
    gate: threading.Event,
) -> None:
    """The new model of one key passes its probe, then hangs on its first batch: past the
    deadline it is taken out of service, its key's records are scored by the model before it,
    the other key's records are scored as ever, and every record has one outcome."""
    hanging = HangingFactory(gate, answers=1)  # the probe answers, serving hangs
    core = _core(ServingSettings(scoring_deadline_s=0.5), t202=hanging)
    with core:
        core.submit_model(_descriptor("steady", GOOD, STUCK_KEY))
        core.submit_model(_descriptor("steady-other", GOOD, OTHER_KEY))
        assert core.wait_for_models(60)
        _score(core, _batch(STUCK_KEY, OTHER_KEY))  # both keys served, their fields seen
        core.submit_model(_descriptor("hangs", HANGING, STUCK_KEY))
        assert core.wait_for_models(60)

        outcome = _score(core, _batch(OTHER_KEY, STUCK_KEY, STUCK_KEY, OTHER_KEY))

        assert _by_row(outcome) == {
            0: ("result", "steady-other"),
            1: ("result", "steady"),
            2: ("result", "steady"),
            3: ("result", "steady-other"),
        }
        events = [e for e in core.drain_events() if e.kind is ModelEventKind.QUARANTINED]
        assert [(e.key, e.name, e.error_kind) for e in events] == [
            (STUCK_KEY, "hangs", "scoring_timeout")
        ]
        assert "did not return from scoring 2 records within 0.5 s" in (events[0].reason or "")
        slot = core.find_slot(STUCK_KEY)
        assert slot is not None
        assert slot.current is not None
        assert slot.current.identity.name == "steady"
        assert core.counts["model_calls_overran"] == 1
        assert core.overrunning_calls == 1
        metrics = _metrics(core)
        assert "streamserve_model_calls_overran_total 1.0" in metrics
        assert "streamserve_overrunning_model_calls 1.0" in metrics
        other = core.find_slot(OTHER_KEY)
        assert other is not None
        assert other.current is not None
        assert other.current.stats.snapshot().invocations == 3, (
            "records scored by the abandoned attempt were counted as well"
        )

        gate.set()
        assert _wait(lambda: core.overrunning_calls == 0)
        assert _wait(lambda: hanging.models[0].closed), "the stuck model was never closed"


def test_a_key_with_no_model_before_the_hanging_one_fails_its_records_with_the_reason(
    gate: threading.Event,
) -> None:
    hanging = HangingFactory(gate, answers=1)
    core = _core(ServingSettings(scoring_deadline_s=0.5), t202=hanging)
    with core:
        core.submit_model(_descriptor("hangs", HANGING, STUCK_KEY))
        core.submit_model(_descriptor("steady-other", GOOD, OTHER_KEY))
        assert core.wait_for_models(60)
        outcome = _score(core, _batch(STUCK_KEY, OTHER_KEY))
        assert _by_row(outcome) == {0: ("error", "no_model"), 1: ("result", "steady-other")}
        (error,) = outcome.errors
        assert "did not return from scoring 1 records within 0.5 s" in error.reason
        assert "'hangs'" in error.reason


def test_an_inference_request_that_hangs_fails_with_the_time_limit_and_quarantines_nothing(
    gate: threading.Event,
) -> None:
    """Requests (V2) are not the stream: a client's request can never take a model out of
    service, but it gets its answer (an error) within the deadline."""
    hanging = HangingFactory(gate, answers=1)
    core = _core(ServingSettings(scoring_deadline_s=0.5), t202=hanging)
    with core:
        core.submit_model(_descriptor("hangs", HANGING, STUCK_KEY))
        assert core.wait_for_models(60)
        outcome = _score(core, _batch(STUCK_KEY, STUCK_KEY), observe=False)
        assert _by_row(outcome) == {
            0: ("error", "scoring_timeout"),
            1: ("error", "scoring_timeout"),
        }
        assert (
            "a call in model 'hangs' of key 'stuck' did not return within 0.5 s"
            in outcome.errors[0].reason
        )
        again = _score(core, _batch(STUCK_KEY), observe=False)  # answered at once, no new thread
        assert "has a call running past the scoring deadline (0.5 s)" in again.errors[0].reason
        assert core.overrunning_calls == 1
        slot = core.find_slot(STUCK_KEY)
        assert slot is not None
        assert slot.current is not None
        assert slot.current.identity.name == "hangs"
        assert core.counts["errors.scoring_timeout"] == 3


def test_a_model_whose_probe_hangs_is_rejected_and_closed_once_the_call_returns(
    gate: threading.Event,
) -> None:
    hanging = HangingFactory(gate, answers=0)  # even the probe hangs
    core = _core(ServingSettings(probe_timeout_s=0.5), t202=hanging)
    with core:
        core.submit_model(_descriptor("steady", GOOD, STUCK_KEY))
        assert core.wait_for_models(60)
        core.submit_model(_descriptor("hangs", HANGING, STUCK_KEY))
        assert core.wait_for_models(60), "a hanging probe held the loader"
        _count, rejection = core.rejections_of(STUCK_KEY)
        assert rejection is not None
        assert rejection.name == "hangs"
        assert rejection.kind == "model_validation_failed"
        assert "within 0.5 s (serving.probe_timeout_s)" in rejection.reason
        assert _by_row(_score(core, _batch(STUCK_KEY))) == {0: ("result", "steady")}
        assert not hanging.models[0].closed, "closed while its call still ran"
        gate.set()
        assert _wait(lambda: hanging.models[0].closed)


def test_a_load_that_hangs_is_rejected_and_later_models_still_load(gate: threading.Event) -> None:
    gated = GatedFactory(FunctionFactory(lambda x: x[:, 0], width=2), gate)
    core = _core(ServingSettings(load_timeout_s=0.5), t203=gated)
    with core:
        core.submit_model(_descriptor("steady", GOOD, STUCK_KEY))
        core.submit_model(_descriptor("never-loads", GATED, STUCK_KEY))
        core.submit_model(_descriptor("after-it", GOOD, STUCK_KEY))
        assert core.wait_for_models(60), "a hanging load held the loader"
        (rejection,) = core.find_slot(STUCK_KEY).rejections  # type: ignore[union-attr]
        assert rejection.name == "never-loads"
        assert "within 0.5 s (serving.load_timeout_s)" in rejection.reason
        assert _by_row(_score(core, _batch(STUCK_KEY))) == {0: ("result", "after-it")}
