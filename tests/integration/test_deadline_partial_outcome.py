"""A batch that finishes just as its scoring deadline passes still comes back whole: every
record has its outcome (contract 4). The window is a few microseconds, so the test narrows the
interpreter's switch interval to hit it.
"""

from __future__ import annotations

import sys
import time

import orjson

from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.outcome import BatchOutcome
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, records_from

FAST = 521
KEYS = 1500
DEADLINE_S = 0.02
TRIALS = 1000


def _covered(outcome: BatchOutcome) -> set[int]:
    rows = {row for row, _group, _value in outcome.results()}
    return rows | {error.row for error in outcome.errors}


def test_no_record_is_lost_when_a_batch_ends_as_its_deadline_passes() -> None:
    registry = FactoryRegistry(FactoryContext())
    registry.register(FAST, FunctionFactory(lambda x: x[:, 0] * 2, width=2))
    core = ServingCore(ServingSettings(scoring_deadline_s=DEADLINE_S), registry)
    codec = JsonCodec()
    keys = [f"key-{index:04d}" for index in range(KEYS)]
    payloads = [orjson.dumps({"dataType": key, "features": [1.0, 2.0]}) for key in keys]
    interval = sys.getswitchinterval()
    lost: list[tuple[int, int, int]] = []  # (trial, records, records without an outcome)
    try:
        for key in keys:
            core.submit_model(ModelDescriptor(name=key, data_type=key, model_type=FAST, data=b"x"))
        assert core.wait_for_models(300)
        # how many keys take about the deadline to score, measured here
        started = time.perf_counter()
        core.score(codec.decode(records_from(payloads)), observe=False)
        per_key_s = (time.perf_counter() - started) / KEYS
        around = max(2, min(KEYS, round(DEADLINE_S / per_key_s)))
        sizes = [max(1, min(KEYS, around + offset)) for offset in range(-around // 4, around // 4)]
        sys.setswitchinterval(1e-5)
        for trial in range(TRIALS):
            size = sizes[trial % len(sizes)]
            outcome = core.score(codec.decode(records_from(payloads[:size])), observe=False)
            missing = size - len(_covered(outcome))
            if missing:
                lost.append((trial, size, missing))
                break
            while core.overrunning_calls:  # the abandoned attempts end at their next key
                time.sleep(0.001)
    finally:
        sys.setswitchinterval(interval)
        core.close()
    assert not lost, (
        "contract 4 (every input record produces exactly one output): a batch whose scoring "
        "ended as its deadline passed came back with records that have neither a result nor "
        f"an error (trial, batch size, records without an outcome): {lost}"
    )
