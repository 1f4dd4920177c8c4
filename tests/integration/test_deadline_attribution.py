"""The scoring deadline judges each model call by its own time: a batch of many keys whose
healthy calls add up to more than ``serving.scoring_deadline_s`` is slow, not stuck, and no
model of it is taken out of service.
"""

from __future__ import annotations

import time

import numpy as np
import orjson

from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, records_from

SLOW = 501
CALL_S = 1.0  # every call of every model: slow but steady, never hung
DEADLINE_S = 2.5  # 2.5 times the slowest call


def _slow(features: FloatMatrix) -> np.ndarray:
    time.sleep(CALL_S)
    return features[:, 0] * 10


def test_healthy_models_are_not_quarantined_because_their_batch_holds_several_keys() -> None:
    keys = ["a", "b", "c", "d"]
    registry = FactoryRegistry(FactoryContext())
    registry.register(SLOW, FunctionFactory(_slow, width=2))
    settings = ServingSettings(scoring_deadline_s=DEADLINE_S, probe_timeout_s=30)
    core = ServingCore(settings, registry)
    try:
        for key in keys:
            core.submit_model(
                ModelDescriptor(name=f"model-{key}", data_type=key, model_type=SLOW, data=b"x")
            )
        assert core.wait_for_models(120)
        core.drain_events()
        payloads = [
            orjson.dumps({"dataType": key, "features": [float(n), 1.0]})
            for n, key in enumerate(keys)
        ]
        started = time.monotonic()
        outcome = core.score(JsonCodec().decode(records_from(payloads)))
        elapsed = time.monotonic() - started
        quarantined = [
            (event.key, event.reason)
            for event in core.drain_events()
            if event.kind is ModelEventKind.QUARANTINED
        ]
        scored = {group.key: group.model.name for group in outcome.groups}
        failed = {error.key: error.kind for error in outcome.errors}
    finally:
        core.close()
    assert not quarantined, (
        "contract 3 (a good model is never taken out of service): no model call overran the "
        f"{DEADLINE_S} s deadline (each took {CALL_S} s), yet the batch's total time was blamed "
        f"on whichever call was running, and these healthy models were quarantined: "
        f"{quarantined}; the batch took {elapsed:.1f} s; records failed: {failed}"
    )
    assert scored == {key: f"model-{key}" for key in keys}, (
        f"every key's record should be scored by its own model; scored: {scored}, failed: {failed}"
    )
