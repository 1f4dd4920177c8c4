"""A Kafka replica across rebalances, against a real broker (Apache Kafka): the partitions it
owns are tracked by increments, and records of partitions taken from it are neither scored nor
committed by it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker

from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory

pytestmark = pytest.mark.slow

MEAN_TYPE = 102  # a plug-in model type: the mean of the features, loaded at once
GROUP = "streamserve"
WAIT_S = 60  # generous bounds on waits for the broker: never asserted as durations


def _mean(features: FloatMatrix) -> np.ndarray:
    return features.mean(axis=1)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as running:
        running.create_topics("wine-data", "models", "results", "errors")
        descriptor = ModelDescriptor(name="mean", data_type="wine", model_type=MEAN_TYPE, data=b"-")
        running.produce("models", [(b"wine", encode_descriptor(descriptor))])
        yield running


@pytest.fixture
def core() -> Iterator[ServingCore]:
    registry = FactoryRegistry(FactoryContext())
    registry.register(MEAN_TYPE, FunctionFactory(_mean, width=11))
    serving = ServingCore(ServingSettings(), registry)
    yield serving
    serving.close()


class Replica:
    """A KafkaRuntime running on a thread of its own."""

    def __init__(self, runtime: KafkaRuntime, count: int | None = None) -> None:
        self.runtime = runtime
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(count,), daemon=True)
        self._thread.start()

    def _run(self, count: int | None) -> None:
        try:
            self.runtime.run(count=count, timeout_s=120)
        except BaseException as err:  # noqa: BLE001 - reported by stop()
            self.failure = err

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.runtime.stop()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the replica did not stop"
        if self.failure is not None:
            raise self.failure


def _settings(broker: Broker, **consumer: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap, group_id=GROUP, data_topics=["wine-data"]
    ).model_copy(update={"consumer": {**TEST_CONSUMER_SETTINGS, **consumer}})


def _produce(broker: Broker, partition: int, row: np.ndarray) -> str:
    """One record to ``partition``; its position as results name it."""
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    delivered: list[Any] = []
    producer.produce(
        "wine-data",
        encode_wine_record(row[:11]),
        partition=partition,
        on_delivery=lambda error, message: delivered.append(message),
    )
    assert producer.flush(30) == 0
    message = delivered[0]
    return f"wine-data/{message.partition()}@{message.offset()}"


def _positions(broker: Broker) -> list[str]:
    return [orjson.loads(m.value())["position"] for m in broker.read_all("results")]


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _join(broker: Broker, **settings: Any) -> Consumer:
    """A second member of the group, polled until it owns partitions (it commits nothing)."""
    member = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            **TEST_CONSUMER_SETTINGS,
            **settings,
        }
    )
    member.subscribe(["wine-data"])

    def owns_partitions() -> bool:
        member.poll(0.1)
        return bool(member.assignment())

    _wait_until(owns_partitions, "the second member got partitions")
    return member


def test_a_partial_cooperative_revoke_keeps_the_replica_ready(
    broker: Broker, core: ServingCore
) -> None:
    """With cooperative-sticky, a member joining takes some partitions only: on_revoke gets
    those, on_assign only increments. The replica keeps the others, and stays ready."""
    cooperative = {"partition.assignment.strategy": "cooperative-sticky"}
    runtime = KafkaRuntime(
        core, WineRecordCodec(), _settings(broker, **cooperative), BatchSettings()
    )
    replica = Replica(runtime)
    try:
        assert runtime.ready.wait(WAIT_S)
        member = _join(broker, **cooperative)
        try:
            taken = {p.partition for p in member.assignment()}
            assert 0 < len(taken) < 4
            assert runtime.ready.is_set(), "ready cleared while partitions remain assigned"
        finally:
            member.close()
    finally:
        replica.stop()


def test_records_in_hand_of_a_revoked_partition_are_neither_scored_nor_committed(
    broker: Broker, core: ServingCore, wine_matrix: np.ndarray
) -> None:
    """The replica holds a record of partition 0 and waits for a second to close its batch
    when a member joins (eager protocol: every partition revoked, half given back). The record
    in hand must not be scored by it: if partition 0 moved, its new owner scores it from the
    committed offset; if it came back, the replica reads it again from there. Which half moves
    is the assignor's choice (by the members' random ids): both cases are checked."""
    handed_over = threading.Event()

    def on_stats(report: str) -> None:  # librdkafka's statistics: offsets handed to the app
        partitions = orjson.loads(report).get("topics", {}).get("wine-data", {})
        if partitions.get("partitions", {}).get("0", {}).get("app_offset", -1) >= 1:
            handed_over.set()

    settings = _settings(broker, **{"statistics.interval.ms": 50, "stats_cb": on_stats})
    batch = BatchSettings(max_records=1000, max_delay_ms=60_000)  # closes on the 2nd record
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, batch)
    replica = Replica(runtime, count=2)
    try:
        assert runtime.ready.wait(WAIT_S)
        in_hand = _produce(broker, 0, wine_matrix[0])
        assert handed_over.wait(WAIT_S), "the replica never took the record"
        member = _join(broker)
        try:
            taken = {p.partition for p in member.assignment()}
            kept = sorted({0, 1, 2, 3} - taken)
            last = _produce(broker, kept[0], wine_matrix[1])
            if 0 in taken:  # the record in hand is dropped: a second closes the batch, at once
                _produce(broker, kept[0], wine_matrix[2])  # (not after max_delay_ms)
            _wait_until(
                lambda: not replica.running or last in _positions(broker), "the last record scored"
            )
            committed = member.committed([TopicPartition("wine-data", 0)], timeout=30)[0].offset
        finally:
            member.close()
    finally:
        replica.stop()
    positions = _positions(broker)
    assert len(positions) == len(set(positions)), f"a record was scored twice: {positions}"
    if 0 in taken:
        assert in_hand not in positions, "scored a record of a partition owned by another member"
        assert committed < 0, "committed an offset of a partition owned by another member"
    else:
        assert positions.count(in_hand) == 1
