"""Evicted models made again off the scoring thread (serving/reloads.py): one reload per model
however many batches wait for it, its failure handed to them, and a reload judged by its own
time against the scoring deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from streamserve.errors import ScoringError, ScoringTimeoutError
from streamserve.formats.base import Model
from streamserve.serving.budget import LiveModels
from streamserve.serving.deadline import CallWatch
from streamserve.serving.reloads import ModelReloads, WaitingGroup
from streamserve.serving.slot import ModelIdentity, ModelSlot, ServedModel
from streamserve.serving.stats import ModelServingInfo
from streamserve.testing import FunctionModel


def _model() -> Model:
    return FunctionModel(lambda x: x[:, 0], width=1)


def _served(reload: Callable[[], Model]) -> ServedModel:
    served = ServedModel(
        ModelIdentity("m", "", "", "test", 1),
        _model(),
        ModelServingInfo("m", "", "", "test"),
        0.0,
        reload=reload,
    )
    assert served.evict()
    return served


def _waiting(served: ServedModel) -> WaitingGroup:
    served.acquire()  # as a batch's lease holds it
    rows = np.zeros(1, dtype=np.intp)
    return WaitingGroup("k", rows, (("x",), np.ones((1, 1))), True, ModelSlot("k"), served)


@pytest.fixture
def reloads() -> Iterator[ModelReloads]:
    made = ModelReloads(LiveModels(max_live=4))
    yield made
    made.close()


def test_batches_waiting_for_one_model_share_its_reload(reloads: ModelReloads) -> None:
    gate = threading.Event()
    made: list[Model] = []

    def reload() -> Model:
        gate.wait(60)
        made.append(_model())
        return made[-1]

    served = _served(reload)
    first, second = _waiting(served), _waiting(served)
    first.start(reloads)
    second.start(reloads)
    assert first.reload is second.reload
    gate.set()

    assert first.await_model(reloads, CallWatch(), 30.0, None) is None
    assert second.await_model(reloads, CallWatch(), 30.0, None) is None
    assert len(made) == 1
    assert served.live
    assert reloads.wait_idle(30)
    assert served.reloads == 1


def test_a_failing_reload_gives_its_reason_to_the_waiting_batch(reloads: ModelReloads) -> None:
    def reload() -> Model:
        raise OSError("the model's file is gone")

    waiting = _waiting(_served(reload))
    error = waiting.await_model(reloads, CallWatch(), 30.0, None)
    assert isinstance(error, ScoringError)
    assert "could not be instantiated again after its eviction: the model's file is gone" in str(
        error
    )


def test_a_reload_past_the_deadline_fails_its_records_and_goes_on(reloads: ModelReloads) -> None:
    """A batch gives up on a reload that has run the scoring deadline since it was handed over;
    a later batch does not wait for it again, and once it returns the model is live."""
    gate = threading.Event()

    def reload() -> Model:
        gate.wait(60)
        return _model()

    served = _served(reload)
    first = _waiting(served)
    error = first.await_model(reloads, CallWatch(), 0.2, None)
    assert isinstance(error, ScoringTimeoutError)
    assert "is being made again after its eviction and was not ready within 0.2 s" in str(error)
    later = _waiting(served)
    assert isinstance(later.await_model(reloads, CallWatch(), 0.2, None), ScoringTimeoutError)
    assert later.reload is first.reload, "a second reload was started beside the first"

    gate.set()
    assert reloads.wait_idle(30)
    assert served.live
