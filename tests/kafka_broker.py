"""The tests' Kafka broker: Apache Kafka itself, a single KRaft node (tests/apache_kafka.py).

Every Kafka behaviour streamserve promises is asserted against the broker production runs:
``running_broker()`` starts a fresh Apache Kafka on free loopback ports and removes its log dir
on exit. tansu, the broker the tests used before, starts in ~10 ms but has quirks that hid
what Kafka does (TEST-BROKER.md): wrong high watermarks, aborted transactions visible to
``read_committed`` readers, no compaction, topics created by producing, slow group joins, a
fetch held 500 ms even when it has records. Apache Kafka keeps its log across a SIGKILL, so a
broker crash is ``kill()`` then ``restart()`` on the same log dir. tansu remains an option of
the benchmarks only (benchmarks/broker.py).

Apache Kafka creates no topic by itself here (``auto.create.topics.enable=false``, as on most
production clusters): a test creates every topic it uses, with the partitions it means.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from apache_kafka import ApacheKafka

# Consumer settings every test's clients take. Apache Kafka needs no client workaround: it
# answers a fetch as soon as records arrive and completes a group join at once (the broker's
# group.initial.rebalance.delay.ms=0). Tests that wait for a killed member's partitions to move
# set a short session.timeout.ms themselves, where they kill it.
TEST_CONSUMER_SETTINGS: dict[str, Any] = {}


@dataclass
class Broker:
    """A running broker's address and process, with the helpers tests use on it. ``ApacheKafka``
    extends it (tests/apache_kafka.py); the benchmarks wrap tansu in it."""

    bootstrap: str
    process: Any = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The broker process stopped (SIGSTOP): it holds its connections and answers nothing,
        as a broker behind a black-holed network does."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def create_topics(
        self, *names: str, partitions: int = 4, config: Mapping[str, str] | None = None
    ) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topics = [NewTopic(n, partitions, 1, config=dict(config or {})) for n in names]
        for future in admin.create_topics(topics).values():
            future.result(30)

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
        """Every message acknowledged by the broker, or an AssertionError naming the refusal
        (Kafka refuses e.g. a null key on a compacted topic)."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        refused: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                refused.append(error)

        for key, value in messages:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        assert producer.flush(30) == 0, f"messages to {topic} not acknowledged within 30 s"
        assert not refused, f"{len(refused)} messages to {topic} refused: {refused[0]}"

    def read_all(self, topic: str, timeout_s: float = 30) -> list[Any]:
        """Every committed message of ``topic``, read with assign() until each partition's end
        (``read_committed``, librdkafka's default: records of aborted transactions are
        skipped)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "test-reader",
                "enable.partition.eof": True,
                "enable.auto.commit": False,
            }
        )
        try:
            partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            messages: list[Any] = []
            at_end: set[int | None] = set()
            deadline = time.monotonic() + timeout_s
            while len(at_end) < len(partitions):
                assert time.monotonic() < deadline, f"{topic} was not read to its end"
                for message in consumer.consume(500, 0.2):
                    error = message.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    elif error is None:
                        messages.append(message)
            return messages
        finally:
            consumer.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


CLI_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_streamserve(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``streamserve ARGS...`` run to its end in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streamserve", *args],
        capture_output=True,
        env=CLI_ENV,
        timeout=300,
        check=False,
    )


def serve_kafka_command(config: Path, *extra: str) -> list[str]:
    """``streamserve serve --runtime kafka --config CONFIG EXTRA...`` for a subprocess."""
    return [
        sys.executable,
        "-m",
        "streamserve",
        "serve",
        "--runtime",
        "kafka",
        "--config",
        str(config),
        *extra,
    ]


@contextmanager
def running_broker(properties: Mapping[str, str] | None = None) -> Iterator[ApacheKafka]:
    """A fresh Apache Kafka, stopped and its log dir removed on exit; ``properties`` are
    broker settings added to the test defaults (``apache_kafka.TEST_BROKER_PROPERTIES``)."""
    from apache_kafka import running_apache_kafka  # here: apache_kafka imports this module

    with running_apache_kafka(properties) as broker:
        yield broker
