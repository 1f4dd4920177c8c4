"""A replica's topics missing, on Apache Kafka: a results, errors or data topic that does not
exist stops the replica before it reads a record, naming the topic and its setting, with nothing
consumed or committed; one created while the replica starts is waited for. An output topic
deleted while the replica serves stops it on the failed delivery, naming the topic, and no batch
whose outputs were not acknowledged is committed: a replica started once the topic is back scores
those records.

Committed offsets and outputs are read back with stock confluent_kafka clients, independently of
streamserve.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from review_support import (
    Replica,
    Topics,
    kafka_settings,
    make_topics,
    mean_core,
    positions,
    wait_until,
    wine_records,
)

from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.errors import InfrastructureError
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.settings import BatchSettings, KafkaSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SETTINGS = {
    "results": "kafka.results_topic",
    "errors": "kafka.errors_topic",
    "data": "kafka.data_topics",
}


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def committed(kafka: ApacheKafka, settings: KafkaSettings, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of ``topic`` (negative: none)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": settings.group_id})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        done = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        return {tp.partition: tp.offset for tp in done}
    finally:
        consumer.close()


def delete_topic(kafka: ApacheKafka, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)
    assert wait_until(lambda: topic not in admin.list_topics(timeout=30).topics, 30)


def _missing(kafka: ApacheKafka, role: str) -> tuple[Topics, str]:
    """Topics with the ``role`` one never created (a typo in the settings), and its name."""
    topics = make_topics(kafka, f"missing-{role}")
    absent = f"{getattr(topics, role)}-never-created"
    return replace(topics, **{role: absent}), absent


@pytest.mark.parametrize("role", ["results", "errors", "data"])
def test_a_missing_topic_stops_the_replica_before_it_reads_a_record(
    kafka: ApacheKafka, role: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics, absent = _missing(kafka, role)
    if role != "data":
        kafka.produce(topics.data, wine_records(50))
    settings = kafka_settings(kafka.bootstrap, topics, catch_up_timeout_s=3)
    core = mean_core()
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
    try:
        with pytest.raises(InfrastructureError) as failure:
            runtime.run(timeout_s=120)
    finally:
        core.close()

    message = str(failure.value)
    assert f"the {role} topic {absent!r} ({SETTINGS[role]}) does not exist" in message
    assert "gave up after 3 s" in message
    assert "retrying in" in caplog.text  # said while it waited
    assert not runtime.ready.is_set()
    assert core.counts.get("records", 0) == 0
    if role != "data":
        assert all(offset < 0 for offset in committed(kafka, settings, topics.data).values())
        present = topics.errors if role == "results" else topics.results
        assert kafka.read_all(present) == []


def test_an_output_topic_created_while_the_replica_starts_is_waited_for(
    kafka: ApacheKafka,
) -> None:
    topics, absent = _missing(kafka, "results")
    kafka.produce(topics.data, wine_records(50))
    settings = kafka_settings(kafka.bootstrap, topics, catch_up_timeout_s=120)
    replica = Replica(settings, timeout_s=240)
    try:
        time.sleep(2)  # the replica is waiting for the topic (chaos timing, not asserted)
        kafka.create_topics(absent, partitions=2)
        assert wait_until(lambda: len(kafka.read_all(absent)) >= 50, 120)
    finally:
        replica.stop()
    assert replica.failure is None, replica.failure
    assert len(set(positions(kafka, absent))) == 50


def test_an_output_topic_deleted_while_serving_stops_the_replica_and_commits_nothing_unacknowledged(
    kafka: ApacheKafka,
) -> None:
    """The errors topic goes while the replica serves: its next error records fail (librdkafka
    gives up ~30 s later), the replica stops naming the topic, and its committed offsets cover
    exactly the records whose outputs were acknowledged (the first wave, all results). Once the
    topic is back, a new replica scores the second wave (all errors): none was lost."""
    topics = make_topics(kafka, "deleted-output")
    first = wine_records(200)
    kafka.produce(topics.data, first)
    settings = kafka_settings(kafka.bootstrap, topics)
    replica = Replica(settings, timeout_s=240)
    try:
        assert wait_until(lambda: len(kafka.read_all(topics.results)) >= len(first), 120)
        first_wave_ends = _first_wave_ends(kafka, topics)
        delete_topic(kafka, topics.errors)
        second = [(None, b"\xff not a wine record") for _ in range(100)]
        kafka.produce(topics.data, second)
        replica.join(180)
        alive = replica.alive
    finally:
        replica.stop()
    assert not alive, "the replica went on serving without its errors topic"
    assert isinstance(replica.failure, InfrastructureError), replica.failure
    message = str(replica.failure)
    assert f"the errors topic {topics.errors!r} (kafka.errors_topic)" in message
    assert "stopping without committing" in message

    assert committed(kafka, settings, topics.data) == first_wave_ends, (
        "committed offsets must end exactly where acknowledged outputs end"
    )
    assert Counter(positions(kafka, topics.results)) == Counter(
        f"{topics.data}/{p}@{o}" for p, end in first_wave_ends.items() for o in range(end)
    )

    kafka.create_topics(topics.errors, partitions=2)  # the topic is back: a new replica
    again = Replica(settings, timeout_s=240)
    try:
        assert wait_until(lambda: len(kafka.read_all(topics.errors)) >= len(second), 120)
    finally:
        again.stop()
    assert again.failure is None, again.failure
    errors = [orjson.loads(m.value()) for m in kafka.read_all(topics.errors)]
    assert {e["kind"] for e in errors} == {"undecodable_record"}
    assert len({e["position"] for e in errors}) == len(second)
    assert len(kafka.read_all(topics.results)) == len(first), "a record was scored twice"


def _first_wave_ends(kafka: ApacheKafka, topics: Topics) -> dict[int, int]:
    """Each data partition's end offset now (the first wave's records all have results)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "ends"})
    try:
        partitions = consumer.list_topics(topics.data, timeout=30).topics[topics.data].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topics.data, p), timeout=30)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def test_stop_while_waiting_for_a_missing_topic_ends_the_run_promptly(kafka: ApacheKafka) -> None:
    topics, _ = _missing(kafka, "errors")
    settings = kafka_settings(kafka.bootstrap, topics, catch_up_timeout_s=240)
    core = mean_core()
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(max_delay_ms=20))
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            runtime.run(timeout_s=240)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - asserted below
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(2)  # waiting for the topic by now (chaos timing, not asserted)
    runtime.stop()
    thread.join(30)
    core.close()
    assert not thread.is_alive(), "stop() while waiting for a missing topic was ignored"
    assert outcome == [None]


def test_a_data_topic_deleted_while_serving_stops_the_replica_naming_it(
    kafka: ApacheKafka,
) -> None:
    """Left alone, librdkafka keeps the gone partitions assigned until its next metadata
    refresh (5 min): the replica would sit idle and ready. It stops instead, once its consumer
    reports the partitions gone (~30 s), naming the topic and its setting."""
    topics = make_topics(kafka, "deleted-data")
    kafka.produce(topics.data, wine_records(50))
    replica = Replica(kafka_settings(kafka.bootstrap, topics), timeout_s=240)
    try:
        assert wait_until(lambda: len(kafka.read_all(topics.results)) >= 50, 120)
        delete_topic(kafka, topics.data)
        replica.join(180)
        alive = replica.alive
    finally:
        replica.stop()
    assert not alive, "the replica sat idle on a data topic that is gone"
    assert isinstance(replica.failure, InfrastructureError), replica.failure
    assert f"the data topic {topics.data!r} (kafka.data_topics) does not exist any more" in str(
        replica.failure
    )
    assert len(set(positions(kafka, topics.results))) == 50
