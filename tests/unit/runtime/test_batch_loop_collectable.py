"""The batch loop as an embedding application uses it: running a loop leaves the application's
objects collectable (only a server process, which runs once, freezes its startup objects)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import orjson

from builders import onnx_descriptor, onnx_linear
from streamserve.codecs.json import JsonCodec
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.streams import MemorySink, MemorySource
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, ServingSettings
from streamserve.testing import records_from


class Node:
    """An application object in a reference cycle (most object graphs have some)."""

    def __init__(self) -> None:
        self.me = self


def _run_once(core: ServingCore) -> None:
    records = records_from([orjson.dumps({"dataType": "k", "a": 1.0, "b": 0.0})])
    runtime = EmbeddedRuntime(
        core,
        JsonCodec(),
        MemorySource(records, closed=True),
        MemorySink(),
        MemorySink(),
        BatchSettings(max_delay_ms=0),
    )
    assert runtime.run(timeout_s=60).records == 1


def test_running_the_loop_leaves_the_applications_garbage_collectable() -> None:
    try:
        application_state = Node()
        watched = weakref.ref(application_state)
        with ServingCore(ServingSettings()) as core:
            core.submit_model(onnx_descriptor("m", onnx_linear(np.array([1.0, 0.0]), 0.0), "k"))
            assert core.wait_for_models(60)
            _run_once(core)
        del application_state
        gc.collect()
        assert watched() is None, (
            "after EmbeddedRuntime.run() an embedding application's object in a reference cycle "
            "is never collected: run() calls gc.freeze() on every run, freezing everything alive "
            "in the process, the application's objects included"
        )
    finally:
        gc.unfreeze()


def test_a_closed_core_that_served_a_run_is_freed() -> None:
    """An application making a core per tenant, per job or per test leaks each one."""
    try:
        core = ServingCore(ServingSettings())
        core.submit_model(onnx_descriptor("m", onnx_linear(np.array([1.0, 0.0]), 0.0), "k"))
        assert core.wait_for_models(60)
        _run_once(core)  # the core and its model are alive during the run: frozen
        core.close()
        watched = weakref.ref(core)
        del core
        gc.collect()
        assert watched() is None, (
            "a ServingCore that was alive during a BatchLoop.run() is never freed after close(): "
            "gc.freeze() at every run() makes it (and what it holds) permanent"
        )
    finally:
        gc.unfreeze()
