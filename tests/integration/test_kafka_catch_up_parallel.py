"""A restart's catch-up loads models of different keys side by side, and those of one key in
their topic order, so every key ends as loading its models one by one does (real broker:
Apache Kafka)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory

pytestmark = pytest.mark.slow

NUMBERS_TYPE, WORDS_TYPE, MEETING_TYPE = 201, 202, 203
# How long the key's first model waits for its second one to start loading: past it, it loads.
# Loading the key's models one by one, the second never starts first; side by side, it does at
# once.
SECOND_LOAD_WAIT_S = 3.0
BARRIER_TIMEOUT_S = 60.0


def _numbers(features: FloatMatrix) -> np.ndarray:
    return features[:, 0]


def _words(features: FloatMatrix) -> np.ndarray:
    return np.array(["high"] * len(features))


class WaitingFactory:
    """Loads after ``wait()`` returns (whatever it returns): a load slower than others."""

    def __init__(self, inner: FunctionFactory, wait: Callable[[], object]) -> None:
        self.format_name = "waiting function"
        self._inner = inner
        self._wait = wait

    def load(self, request: LoadRequest) -> Model:
        self._wait()
        return self._inner.load(request)


class SignallingFactory:
    """Sets ``loading`` as a load starts."""

    def __init__(self, inner: FunctionFactory) -> None:
        self.format_name = "signalling function"
        self._inner = inner
        self.loading = threading.Event()

    def load(self, request: LoadRequest) -> Model:
        self.loading.set()
        return self._inner.load(request)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as running:
        running.create_topics("wine-data", "results", "errors")
        running.create_topics("models", partitions=1)
        yield running


def _publish(broker: Broker, *descriptors: ModelDescriptor) -> None:
    broker.produce(
        "models",
        [(d.data_type.encode(), encode_descriptor(d)) for d in descriptors],
    )


def _model(name: str, key: str, model_type: int) -> ModelDescriptor:
    return ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"python")


@contextmanager
def _caught_up(broker: Broker, core: ServingCore) -> Iterator[int]:
    """A replica's catch-up done: how many models it handed in."""
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        data_topics=["wine-data"],
        consumer=TEST_CONSUMER_SETTINGS,
        catch_up_timeout_s=120,
    )
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
    try:
        yield runtime.catch_up_models()
    finally:
        runtime.run(count=0)  # closes the clients (after a second catch-up)


def test_a_restart_keeps_a_keys_models_in_topic_order_though_a_later_one_loads_faster(
    broker: Broker,
) -> None:
    """A key's first model returns numbers and loads slowly; its second returns words without
    declaring a value type, and loads at once. A running replica staged the first, then
    rejected the second (one JSON type per key, Contract 4). Loading them side by side, a
    restart would stage the second first, supersede the first, and publish words for the key."""
    words = SignallingFactory(FunctionFactory(_words, width=11))
    numbers = WaitingFactory(
        FunctionFactory(_numbers, width=11),
        lambda: words.loading.wait(SECOND_LOAD_WAIT_S),
    )
    registry = FactoryRegistry(FactoryContext())
    registry.register(NUMBERS_TYPE, lambda context: numbers)
    registry.register(WORDS_TYPE, lambda context: words)
    _publish(broker, _model("numbers", "k", NUMBERS_TYPE), _model("words", "k", WORDS_TYPE))
    with (
        ServingCore(ServingSettings(loader_threads=2), registry) as core,
        _caught_up(broker, core) as handed_in,
    ):
        assert handed_in == 2
        slot = core.find_slot("k")
        assert slot is not None
        assert slot.staged is not None
        assert slot.staged.identity.name == "numbers"
        rejected, latest = core.rejections_of("k")
        assert rejected == 1
        assert latest is not None
        assert latest.name == "words"
        assert "returns string values where its key publishes number values" in latest.reason


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: one loader thread")
def test_a_restart_loads_models_of_different_keys_side_by_side_by_default(broker: Broker) -> None:
    """Each of two keys' models loads only once the other's load has started too: loaded one
    at a time (one loader thread), the first would wait for a load that never starts."""
    meeting = threading.Barrier(2, timeout=BARRIER_TIMEOUT_S)
    both = WaitingFactory(FunctionFactory(_numbers, width=11), meeting.wait)
    registry = FactoryRegistry(FactoryContext())
    registry.register(MEETING_TYPE, lambda context: both)
    _publish(broker, _model("a-model", "a", MEETING_TYPE), _model("b-model", "b", MEETING_TYPE))
    with ServingCore(ServingSettings(), registry) as core, _caught_up(broker, core) as handed_in:
        assert handed_in == 2
        staged = {key: core.find_slot(key) for key in ("a", "b")}
        assert all(slot is not None and slot.staged is not None for slot in staged.values()), (
            f"rejected: {[core.rejections_of(key) for key in staged]}"
        )
