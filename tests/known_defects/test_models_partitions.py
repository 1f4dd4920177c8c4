"""Known defect (issue 15 review):
a models topic of several partitions serves a restarted replica stale models.

docs/kafka.md (Creating the models topic): "One partition is enough; any number works, since
every replica reads all of them." ARCHITECTURE.md, contract 1: a model for key K becomes current
after it loaded, and every record of K after that point is scored by it; a restart "rebuilds
models from the models topic".

Kafka orders messages within a partition only. A key's versions land in different partitions
whenever publishers partition differently (the Java client's murmur2, as FLIP-23's Flink/Java
publishers use, versus librdkafka's default consistent_random, as ``streamserve publish-model``
uses), or after the topic's partitions are increased. Running replicas follow the topic as it
grows and end with the newest version; a replica that starts later reads the partitions in
whatever order the fetches return them (``ModelsTopicReader.catch_up`` submits in arrival
order, and the core's sequence numbers follow submission), so for some keys the older version
is submitted last and becomes current. Compaction keeps the old version forever (it is the
latest of its key *in its partition*).
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka, unique_name
from confluent_kafka import KafkaError, Message, Producer

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import encode_descriptor
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEYS = [f"k{i}" for i in range(20)]


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def _publish(kafka: ApacheKafka, topic: str, partitioner: str, version: int) -> dict[str, int]:
    """Version ``version`` of every key, keyed by data type, as a publisher with ``partitioner``
    sends it; the partition each went to."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "partitioner": partitioner})
    partition_of: dict[str, int] = {}
    refused: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            refused.append(error)
        partition_of[(message.key() or b"").decode()] = message.partition() or 0

    for key in KEYS:
        model = onnx_descriptor(f"{key}-v{version}", onnx_constant(1, float(version)), key=key)
        producer.produce(topic, encode_descriptor(model), key.encode(), on_delivery=delivered)
    assert producer.flush(30) == 0, f"models to {topic} not acknowledged"
    assert not refused, refused
    return partition_of


def test_a_new_replica_serves_the_newest_version_of_each_key_from_two_partitions(
    kafka: ApacheKafka,
) -> None:
    name = unique_name("models-partitions")
    models, data, results, errors = (f"{name}-{role}" for role in ("m", "d", "r", "e"))
    kafka.create_topics(models, partitions=2, config={"cleanup.policy": "compact"})
    kafka.create_topics(data, results, errors, partitions=1)
    first = _publish(kafka, models, "murmur2_random", 1)  # a Java publisher's partitioner
    second = _publish(kafka, models, "consistent_random", 2)  # librdkafka's default
    split = sorted(key for key in KEYS if first[key] != second[key])
    assert split, "every key's versions went to one partition: nothing to show"
    kafka.produce(data, [(None, orjson.dumps({"dataType": k, "features": [1.0]})) for k in KEYS])

    core = ServingCore(ServingSettings())
    try:
        settings = KafkaSettings(
            bootstrap_servers=kafka.bootstrap,
            group_id=unique_name("models-partitions"),
            data_topics=[data],
            models_topic=models,
            results_topic=results,
            errors_topic=errors,
        )
        runtime = KafkaRuntime(core, JsonCodec(), settings, BatchSettings(max_delay_ms=20))
        runtime.run(count=len(KEYS), timeout_s=120)
    finally:
        core.close()

    served = {
        document["key"]: document["model"]
        for document in (orjson.loads(m.value()) for m in kafka.read_all(results))
    }
    assert sorted(served) == sorted(KEYS)
    stale = {key: model for key, model in served.items() if model != f"{key}-v2"}
    assert stale == {}, (
        "docs/kafka.md promise broken (a models topic of any number of partitions works) and "
        "contract 1 (the newest model is current after a restart): a replica started after "
        f"version 2 of every key was published serves version 1 for {sorted(stale)} (keys "
        f"whose versions are in different partitions: {split})"
    )
