"""The models catch-up of a Kafka replica: nothing is scored before every model read from the
topic is loaded or rejected, and the loader's queue stays bounded (real broker: Apache Kafka)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker

from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.errors import InfrastructureError
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import MAX_LOADS_PENDING, KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory

pytestmark = pytest.mark.slow

GATED_TYPE = 100  # a plug-in model type whose loads wait for the test's gate


def _mean(features: FloatMatrix) -> np.ndarray:
    return features.mean(axis=1)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as running:
        running.create_topics("wine-data", "models", "results", "errors")
        yield running


@pytest.fixture
def gate() -> threading.Event:
    return threading.Event()


@pytest.fixture
def gated_core(gate: threading.Event) -> Iterator[ServingCore]:
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(FunctionFactory(_mean, width=11), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(), registry)
    yield core
    gate.set()  # a load still waiting ends, so the core can close
    core.close()


def _models(broker: Broker, count: int) -> None:
    broker.produce(
        "models",
        [
            (
                f"key-{n}".encode(),
                encode_descriptor(
                    ModelDescriptor(
                        name=f"model-{n}", data_type=f"key-{n}", model_type=GATED_TYPE, data=b"-"
                    )
                ),
            )
            for n in range(count)
        ],
    )


def _runtime(broker: Broker, core: ServingCore, catch_up_timeout_s: float) -> KafkaRuntime:
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        data_topics=["wine-data"],
        consumer=TEST_CONSUMER_SETTINGS,
        catch_up_timeout_s=catch_up_timeout_s,
    )
    return KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))


def test_a_replica_whose_models_still_load_past_the_limit_stops_before_scoring(
    broker: Broker, gated_core: ServingCore, wine_matrix: np.ndarray
) -> None:
    """The catch-up read the model, its load hangs: scoring then would give records of its key
    no_model errors the model would have scored. The replica stops, saying what it waited
    for, with nothing published and nothing committed."""
    _models(broker, 1)
    broker.produce("wine-data", [(b"key-0", encode_wine_record(r[:11])) for r in wine_matrix[:5]])
    runtime = _runtime(broker, gated_core, catch_up_timeout_s=2)
    with pytest.raises(InfrastructureError, match=r"1 models of the models topic .* still loading"):
        runtime.run(count=5, timeout_s=60)
    assert broker.read_all("results") == []
    assert broker.read_all("errors") == [], "records were scored before their model loaded"
    assert not runtime.ready.is_set()


def test_the_catch_up_holds_at_most_max_loads_pending_models_in_the_loader_queue(
    broker: Broker, gated_core: ServingCore
) -> None:
    """Loads hang (the gate stays shut): the catch-up reads no further than the loader's queue
    has room for, so the queue never holds the bytes of the whole topic."""
    _models(broker, MAX_LOADS_PENDING + 10)
    runtime = _runtime(broker, gated_core, catch_up_timeout_s=2)
    with pytest.raises(InfrastructureError, match="still loading"):
        runtime.run(count=1, timeout_s=60)
    assert gated_core.loads_pending == MAX_LOADS_PENDING
    assert gated_core.counts["model_messages"] == MAX_LOADS_PENDING


def test_a_topic_longer_than_the_loader_queue_is_caught_up_in_full(
    broker: Broker, gate: threading.Event, gated_core: ServingCore
) -> None:
    """Back-pressure delays model messages, never drops one: every key gets its model."""
    gate.set()
    count = 3 * MAX_LOADS_PENDING + 5
    _models(broker, count)
    runtime = _runtime(broker, gated_core, catch_up_timeout_s=30)
    assert runtime.catch_up_models() == count
    assert gated_core.loads_pending == 0
    staged = [gated_core.find_slot(f"key-{n}") for n in range(count)]
    assert all(slot is not None and slot.staged is not None for slot in staged)
    runtime.run(count=0)  # closes the clients
