"""Replicas joining and leaving mid-stream, under both consumer-group protocols of Apache Kafka 4:
the classic one with the cooperative-sticky assignor, and the consumer protocol of KIP-848
(``group.protocol=consumer``: the broker assigns, by increments). Nothing is lost (every input
has a result or an error, counted by an independent reader), a replica is ready exactly while it
holds partitions, and its consumer lag comes back to 0 once it has caught up."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka, unique_name
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.errors import InfrastructureError
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory

pytestmark = pytest.mark.slow

MEAN_TYPE = 102  # a plug-in model type: the mean of the features, loaded at once
PARTITIONS = 3  # a 4th replica holds none until another leaves
RECORDS_PER_S = 400
UNDECODABLE_EVERY = 50  # every 50th input is no wine record: it gets an error, not a result
READY_SAMPLE_S = 0.005
WAIT_S = 90  # generous bounds on waits for the broker: never asserted as durations

# Members learn of a rebalance at their next heartbeat: 500 ms instead of 5 s (consumer
# protocol, set by the broker) or 3 s (classic, set by the client).
BROKER_PROPERTIES = {
    "group.consumer.heartbeat.interval.ms": "500",
    "group.consumer.min.heartbeat.interval.ms": "500",
}
PROTOCOLS: dict[str, dict[str, str | int | bool]] = {
    "classic-cooperative-sticky": {
        "partition.assignment.strategy": "cooperative-sticky",
        "heartbeat.interval.ms": 500,
    },
    # KIP-848 refuses session.timeout.ms, heartbeat.interval.ms and partition.assignment.strategy
    # on the client: the broker's group.consumer.* settings rule them.
    "consumer": {"group.protocol": "consumer"},
}


@dataclass(frozen=True)
class Topics:
    data: str
    models: str
    results: str
    errors: str


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka(BROKER_PROPERTIES) as broker:
        yield broker


@pytest.fixture
def topics(kafka: ApacheKafka, request: pytest.FixtureRequest) -> Topics:
    prefix = unique_name(request.node.name)
    topics = Topics(f"{prefix}-data", f"{prefix}-models", f"{prefix}-results", f"{prefix}-errors")
    kafka.create_topics(topics.data, partitions=PARTITIONS)
    kafka.create_topics(topics.results, topics.errors, partitions=2)
    kafka.create_topics(topics.models, partitions=1, config={"cleanup.policy": "compact"})
    descriptor = ModelDescriptor(name="mean", data_type="wine", model_type=MEAN_TYPE, data=b"-")
    kafka.produce(topics.models, [(b"wine", encode_descriptor(descriptor))])
    return topics


def _mean(features: FloatMatrix) -> np.ndarray:
    return features.mean(axis=1)


class Replica:
    """A KafkaRuntime with a serving core of its own, running on a thread of its own; its
    ``client.id`` names it in the group's description."""

    def __init__(self, name: str, settings: KafkaSettings) -> None:
        self.name = name
        registry = FactoryRegistry(FactoryContext())
        registry.register(MEAN_TYPE, FunctionFactory(_mean, width=11))
        self._core = ServingCore(ServingSettings(), registry)
        consumer = {**settings.consumer, "client.id": name}
        self.runtime = KafkaRuntime(
            self._core,
            WineRecordCodec(),
            settings.model_copy(update={"consumer": consumer}),
            BatchSettings(max_records=200, max_delay_ms=20),
        )
        self.failure: BaseException | None = None
        self.readiness = [False]  # runtime.ready as sampled, each change once, until stop()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._watch = threading.Thread(target=self._watch_readiness, daemon=True)
        self._watch.start()

    def _run(self) -> None:
        try:
            self.runtime.run(timeout_s=300)
        except BaseException as err:  # noqa: BLE001 - reported by stop()
            self.failure = err

    def _watch_readiness(self) -> None:
        while not self._stopping.wait(READY_SAMPLE_S):
            ready = self.runtime.ready.is_set()
            if ready != self.readiness[-1]:
                self.readiness.append(ready)

    def stop(self) -> None:
        self._stopping.set()
        self._watch.join(WAIT_S)
        self.runtime.stop()
        self._thread.join(WAIT_S)
        self._core.close()
        assert not self._thread.is_alive(), f"{self.name} did not stop"
        if self.failure is not None:
            raise self.failure


class Inputs:
    """Records produced at a steady rate on a thread, until stopped; their positions."""

    def __init__(self, kafka: ApacheKafka, topic: str, rows: np.ndarray) -> None:
        self.positions: list[str] = []
        self._kafka, self._topic, self._rows = kafka, topic, rows
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="inputs", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        producer = Producer({"bootstrap.servers": self._kafka.bootstrap, "linger.ms": 5})
        sent = 0
        started = time.monotonic()
        while not self._stopping.is_set():
            due = int((time.monotonic() - started) * RECORDS_PER_S)
            for n in range(sent, due):
                value = b"\xff no wine" if n % UNDECODABLE_EVERY == 0 else self._record(n)
                producer.produce(self._topic, value, on_delivery=self._delivered)
            sent = due
            producer.poll(0.02)
        assert producer.flush(30) == 0

    def _record(self, n: int) -> bytes:
        return encode_wine_record(self._rows[n % len(self._rows), :11])

    def _delivered(self, error: Any, message: Any) -> None:
        assert error is None, error
        self.positions.append(f"{message.topic()}/{message.partition()}@{message.offset()}")

    def stop(self) -> list[str]:
        self._stopping.set()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the producer did not stop"
        return self.positions


class Group:
    """The consumer group as the broker describes it, and the replicas in it."""

    def __init__(self, kafka: ApacheKafka, group_id: str) -> None:
        self._admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
        self._group_id = group_id
        self.replicas: dict[str, Replica] = {}
        self.readiness: dict[str, list[bool]] = {}  # of the replicas that left
        self.stages: list[dict[str, list[int]]] = []  # the assignments seen settled, in order
        self.states: list[dict[str, list[int]]] = []  # every assignment described, each once

    def assignments(self) -> dict[str, set[int]]:
        """Each member's partitions, by client.id; none while the broker cannot say yet (the
        group is new, or its coordinator is loading)."""
        future = self._admin.describe_consumer_groups([self._group_id])[self._group_id]
        try:
            members = future.result(10).members
        except KafkaException:
            return {}
        found = {m.client_id: {p.partition for p in m.assignment.topic_partitions} for m in members}
        state = {name: sorted(partitions) for name, partitions in sorted(found.items())}
        if not self.states or self.states[-1] != state:
            self.states.append(state)
        return found

    def settled(self) -> dict[str, set[int]]:
        """Waits until the members are the running replicas, every partition has one owner, the
        partitions are spread evenly, and each replica is ready exactly when it holds
        partitions; that assignment."""
        seen: dict[str, set[int]] = {}

        def matches() -> bool:
            seen.clear()
            seen.update(self.assignments())
            owned = [p for partitions in seen.values() for p in partitions]
            counts = [len(partitions) for partitions in seen.values()] or [0]
            return (
                seen.keys() == self.replicas.keys()
                and sorted(owned) == list(range(PARTITIONS))
                and max(counts) - min(counts) <= 1
                and all(
                    replica.runtime.ready.is_set() == bool(seen[name])
                    for name, replica in self.replicas.items()
                )
            )

        _wait_until(matches, lambda: f"a settled group: {seen}, ready {self._ready()}")
        self.stages.append({name: sorted(partitions) for name, partitions in seen.items()})
        return seen

    def _ready(self) -> dict[str, bool]:
        return {name: r.runtime.ready.is_set() for name, r in self.replicas.items()}

    def join(self, name: str, settings: KafkaSettings) -> Replica:
        replica = Replica(name, settings)
        self.replicas[name] = replica
        return replica

    def leave(self, name: str) -> None:
        replica = self.replicas.pop(name)
        replica.stop()
        self.readiness[name] = replica.readiness

    def stop(self) -> None:
        for name in list(self.replicas):
            self.leave(name)


def _wait_until(condition: Callable[[], bool], what: Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what()}"
        time.sleep(0.1)


def _wait_for_no_lag(replica: Replica) -> None:
    runtime = replica.runtime  # consumer_lag: records behind, or None while unknown
    _wait_until(
        lambda: runtime.consumer_lag == 0,
        lambda: f"{replica.name}'s lag back to 0: {runtime.consumer_lag}",
    )


def _committed(kafka: ApacheKafka, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offsets of ``topic``, by partition."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    request = ConsumerGroupTopicPartitions(
        group_id, [TopicPartition(topic, p) for p in range(PARTITIONS)]
    )
    answer = admin.list_consumer_group_offsets([request])[group_id].result(30)
    return {tp.partition: tp.offset for tp in answer.topic_partitions}


def _wait_for_outputs(kafka: ApacheKafka, topics: Topics, produced: list[str]) -> list[str]:
    """Waits until every input has an output; those that have none (after ``WAIT_S``)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        outputs = _outputs(kafka, topics)
        lost = [position for position in produced if position not in outputs]
        if not lost or time.monotonic() > deadline:
            return lost
        time.sleep(0.5)


def _outputs(kafka: ApacheKafka, topics: Topics) -> Counter[str]:
    """How many outputs (results and errors) name each input position: an independent count."""
    messages = [*kafka.read_all(topics.results), *kafka.read_all(topics.errors)]
    return Counter(orjson.loads(m.value())["position"] for m in messages)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_replicas_join_and_leave_mid_stream_losing_nothing(
    kafka: ApacheKafka, topics: Topics, wine_matrix: np.ndarray, protocol: str
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap,
        group_id=unique_name(f"group-{protocol}"),
        data_topics=[topics.data],
        models_topic=topics.models,
        results_topic=topics.results,
        errors_topic=topics.errors,
        consumer=PROTOCOLS[protocol],
    )
    group = Group(kafka, settings.group_id)
    inputs: Inputs | None = None
    try:
        group.join("a", settings)
        assert group.settled() == {"a": {0, 1, 2}}
        inputs = Inputs(kafka, topics.data, wine_matrix)
        for name in ("b", "c"):  # joining: each takes partitions from those who have them
            group.join(name, settings)
            assert group.settled()[name]
        group.join("d", settings)  # one partition each already: d waits, not ready
        assert group.settled()["d"] == set()
        group.leave("a")  # leaving mid-stream: d takes a's partition, and is ready
        assert group.settled()["d"]
        group.leave("b")
        group.settled()
        produced = inputs.stop()
        lost = _wait_for_outputs(kafka, topics, produced)
        assert lost == [], (
            f"{len(lost)} of {len(produced)} inputs have no output: {lost[:3]}...{lost[-1:]}; "
            f"committed {_committed(kafka, settings.group_id, topics.data)}"
        )
        for replica in group.replicas.values():  # every output is in: nothing left to read
            _wait_for_no_lag(replica)
    finally:
        if inputs is not None:
            inputs.stop()
        group.stop()

    outputs = _outputs(kafka, topics)
    repeated = {position: n for position, n in outputs.items() if n > 1}
    assert len(produced) > 1000
    assert outputs.keys() == set(produced)
    assert repeated == {}, f"scored twice in clean handovers: {list(repeated)[:5]}"
    # Ready once it held partitions, and never unready again while it kept some.
    assert group.readiness == {name: [False, True] for name in "abcd"}
    print(f"\n{protocol}: {len(produced)} inputs; settled {group.stages}; states {group.states}")


@pytest.mark.parametrize(
    "forbidden",
    [
        {"partition.assignment.strategy": "cooperative-sticky"},
        {"session.timeout.ms": 6000},
        {"heartbeat.interval.ms": 500},
    ],
)
def test_the_consumer_protocol_refuses_client_side_group_timing_saying_which(
    forbidden: dict[str, str | int | bool],
) -> None:
    """KIP-848 moves the assignor and the timing to the broker: librdkafka refuses them on the
    client, and the replica stops as it is made, naming the setting (no broker needed)."""
    settings = KafkaSettings(consumer={"group.protocol": "consumer", **forbidden})
    registry = FactoryRegistry(FactoryContext())
    core = ServingCore(ServingSettings(), registry)
    try:
        with pytest.raises(InfrastructureError) as refused:
            KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings())
    finally:
        core.close()
    message = str(refused.value)
    assert "the Kafka consumer refused its settings (kafka.consumer" in message
    assert f"`{next(iter(forbidden))}` is not supported for `group.protocol=consumer`" in message
