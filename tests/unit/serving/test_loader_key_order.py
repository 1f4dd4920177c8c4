"""Loads submitted in key order (a restart's catch-up): a key's next model starts only once its
previous one is done, while other keys' models load beside it; closing drops those waiting.
And the loader's threads default to the CPUs the process may use."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import EventLog
from streamserve.serving.loader import LoadJob, ModelLoader
from streamserve.serving.slot import ModelSlot
from streamserve.settings import MAX_DEFAULT_LOADER_THREADS, ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory

GATED, COUNTED = 201, 202
WAIT_S = 60.0  # a bound on waiting for another thread, never a pacing sleep


def _first_column(features: FloatMatrix) -> np.ndarray:
    return features[:, 0]


class StartedFactory:
    """Records the names of the models whose load started."""

    format_name = "recorded function"

    def __init__(self) -> None:
        self._inner = FunctionFactory(_first_column, width=2)
        self.started: list[str] = []

    def load(self, request: LoadRequest) -> Model:
        self.started.append(request.name)
        return self._inner.load(request)


@pytest.fixture
def gate() -> threading.Event:
    return threading.Event()


@pytest.fixture
def factories(gate: threading.Event) -> tuple[GatedFactory, StartedFactory, FactoryRegistry]:
    gated = GatedFactory(FunctionFactory(_first_column, width=2), gate)
    started = StartedFactory()
    registry = FactoryRegistry(FactoryContext())
    registry.register(GATED, lambda context: gated)
    registry.register(COUNTED, lambda context: started)
    return gated, started, registry


def _model(name: str, key: str, model_type: int) -> ModelDescriptor:
    return ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"python")


def test_a_keys_next_model_waits_for_its_previous_one_while_other_keys_load(
    gate: threading.Event, factories: tuple[GatedFactory, StartedFactory, FactoryRegistry]
) -> None:
    gated, started, registry = factories
    with ServingCore(ServingSettings(loader_threads=2), registry) as core:
        try:
            core.submit_model(_model("k-first", "k", GATED), in_key_order=True)
            assert gated.loading.wait(WAIT_S)
            core.submit_model(_model("k-second", "k", COUNTED), in_key_order=True)
            core.submit_model(_model("other", "other", COUNTED), in_key_order=True)
            # the second thread took "other", submitted after "k-second": that one was held back
            other = _wait_for_slot(core, "other")
            assert other.staged is not None
            assert other.staged.identity.name == "other"
            assert started.started == ["other"]
        finally:
            gate.set()
        assert core.wait_for_models(WAIT_S)
        assert started.started == ["other", "k-second"]
        slot = core.find_slot("k")
        assert slot is not None
        assert slot.staged is not None
        assert slot.staged.identity.name == "k-second"


def test_closing_drops_the_models_waiting_for_their_keys_previous_one(
    gate: threading.Event, factories: tuple[GatedFactory, StartedFactory, FactoryRegistry]
) -> None:
    gated, started, registry = factories
    with ServingCore(ServingSettings(loader_threads=1), registry) as core:
        loader = ModelLoader(registry, EventLog(), core, threads=2)
        try:
            loader.submit(LoadJob(_model("k-first", "k", GATED), 0, "", in_key_order=True))
            assert gated.loading.wait(WAIT_S)
            loader.submit(LoadJob(_model("k-second", "k", COUNTED), 1, "", in_key_order=True))
            assert loader.pending == 2
            loader.close(timeout_s=0.0)  # k-first is left loading, k-second is dropped
            assert loader.pending == 1
        finally:
            gate.set()
        assert loader.wait_idle(WAIT_S)
        assert started.started == []


def test_the_loader_threads_default_to_the_cpus_of_the_process() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert ServingSettings().loader_threads == min(cpus, MAX_DEFAULT_LOADER_THREADS)


def _wait_for_slot(core: ServingCore, key: str) -> ModelSlot:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        slot = core.find_slot(key)
        if slot is not None and slot.staged is not None:
            return slot
        done.wait(0.01)
    raise AssertionError(f"key {key!r} never staged a model")
