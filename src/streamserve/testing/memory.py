"""In-memory pieces for tests: serving records without a broker, and models made to order.

* :func:`serve_records` runs the embedded runtime over records in memory and returns the decoded
  result and error documents.
* :class:`GatedFactory` wraps a factory so that a load blocks until the test opens a gate (a load
  that "takes seconds" without sleeping).
* :class:`FunctionModel` / :class:`FunctionFactory`: a model from a Python function, for
  behaviour no real format shows on demand (a model that fails on chosen records).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streamserve.codecs.base import Codec, InputRecord
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    ModelFactory,
)
from streamserve.runtime.base import RunSummary
from streamserve.runtime.embedded import EmbeddedRuntime
from streamserve.runtime.streams import MemorySink, MemorySource, ModelQueue
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings


@dataclass
class ServedRun:
    summary: RunSummary
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def records_from(payloads: Iterable[bytes], prefix: str = "record") -> list[InputRecord]:
    """Input records numbered ``prefix:1``, ``prefix:2``, ... by position."""
    return [
        InputRecord(payload, position=f"{prefix}:{number}")
        for number, payload in enumerate(payloads, start=1)
    ]


def serve_records(
    core: ServingCore,
    codec: Codec,
    records: Sequence[InputRecord],
    *,
    models: Sequence[ModelDescriptor | bytes] = (),
    batch: BatchSettings | None = None,
) -> ServedRun:
    """Publishes ``models`` (descriptors or raw model messages), then serves ``records``."""
    queue = ModelQueue()
    for model in models:
        queue.publish(encode_descriptor(model) if isinstance(model, ModelDescriptor) else model)
    results, errors = MemorySink(), MemorySink()
    runtime = EmbeddedRuntime(
        core,
        codec,
        MemorySource(records, closed=True),
        results,
        errors,
        batch or BatchSettings(max_records=1024, max_delay_ms=0),
        models=queue,
    )
    summary = runtime.run(timeout_s=600)
    return ServedRun(
        summary,
        [orjson.loads(value) for _, value in results.messages],
        [orjson.loads(value) for _, value in errors.messages],
    )


class GatedFactory:
    """Delegates to ``inner`` once ``gate`` is set; ``loading`` is set while a load waits."""

    def __init__(self, inner: ModelFactory, gate: threading.Event) -> None:
        self.format_name = f"gated {inner.format_name}"
        self._inner = inner
        self.gate = gate
        self.loading = threading.Event()

    def load(self, request: LoadRequest) -> Model:
        self.loading.set()
        if not self.gate.wait(timeout=600):
            raise TimeoutError("the test never opened the gate")
        return self._inner.load(request)


class FunctionModel:
    """A model whose scores come from ``function(features) -> outputs``."""

    def __init__(
        self,
        function: Callable[[FloatMatrix], np.ndarray],
        width: int,
        names: tuple[str, ...] | None = None,
    ) -> None:
        self._function = function
        self._inputs = InputSpec(width=width, names=names)
        self.closed = False

    @property
    def inputs(self) -> InputSpec:
        return self._inputs

    def score_batch(self, features: FloatMatrix) -> np.ndarray:
        return self._function(features)

    def close(self) -> None:
        self.closed = True


class FunctionFactory:
    """Builds :class:`FunctionModel` s; the model data is ignored, options pick the width."""

    format_name = "function"

    def __init__(self, function: Callable[[FloatMatrix], np.ndarray], width: int) -> None:
        self._function = function
        self._width = width

    def __call__(self, context: FactoryContext) -> FunctionFactory:
        return self  # registries instantiate factory classes with a context

    def load(self, request: LoadRequest) -> Model:
        return FunctionModel(self._function, self._width)
