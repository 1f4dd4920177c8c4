"""Apache Kafka as the test broker (tests/apache_kafka.py): it serves records, isolates aborted
transactions from ``read_committed`` readers (which tansu cannot), keeps its log across a
SIGKILL, and never outlives its fixture."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apache_kafka import ApacheKafka, running_apache_kafka, unique_name
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


@pytest.fixture
def topic(kafka: ApacheKafka, request: pytest.FixtureRequest) -> str:
    name = unique_name(request.node.name)
    kafka.create_topics(name, partitions=1)
    return name


def test_records_produced_are_read_back(kafka: ApacheKafka, topic: str) -> None:
    sent: list[tuple[bytes | None, bytes | None]] = [
        (f"key-{i}".encode(), f"value-{i}".encode()) for i in range(100)
    ]
    kafka.produce(topic, sent)

    received = [(m.key(), m.value()) for m in kafka.read_all(topic)]

    assert received == sent


def test_an_aborted_transaction_is_invisible_to_read_committed(
    kafka: ApacheKafka, topic: str
) -> None:
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap, "transactional.id": unique_name("tx")}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, f"aborted-{i}".encode())
    producer.flush(30)  # the records are in the log before the abort
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)

    assert _values(kafka, topic, "read_committed") == [b"committed"]
    assert _values(kafka, topic, "read_uncommitted") == [
        b"aborted-0",
        b"aborted-1",
        b"aborted-2",
        b"committed",
    ]


class FailingBodyError(Exception):
    """A test body that fails while the broker runs; it carries the broker's work dir."""


def test_the_log_survives_a_sigkill_and_no_java_outlives_the_fixture() -> None:
    with pytest.raises(FailingBodyError) as failure:
        _crash_restart_and_fail()

    workdir = failure.value.args[0]
    assert _processes_naming(workdir) == []
    assert not workdir.exists()


def _crash_restart_and_fail() -> None:
    with running_apache_kafka() as broker:
        name = unique_name("durable")
        broker.create_topics(name, partitions=1)
        broker.produce(name, [(None, b"before the crash")])
        broker.kill()
        broker.restart()
        assert [m.value() for m in broker.read_all(name)] == [b"before the crash"]
        raise FailingBodyError(broker.workdir)  # the fixture must still stop the broker


def _values(kafka: ApacheKafka, topic: str, isolation: str) -> list[bytes | None]:
    """Every value in partition 0 of ``topic`` as a reader with ``isolation`` sees it."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": unique_name("reader"),
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        values: list[bytes | None] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for message in consumer.consume(100, 0.2):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    return values
                assert error is None, error
                values.append(message.value())
        raise AssertionError(f"{topic} was not read to its end")
    finally:
        consumer.close()


def _processes_naming(folder: Path) -> list[int]:
    """The ids of live processes whose command line names ``folder``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # it ended while we looked
            continue
    return found
