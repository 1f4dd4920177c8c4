"""Shared pieces of Kafka reproductions: topics, a mean model loaded at once, replicas on
threads, and output counts read with plain consumers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from apache_kafka import ApacheKafka, unique_name

from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.base import RunSummary
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory

MEAN_TYPE = 102  # a plug-in model type: the mean of the features, loaded at once


@dataclass(frozen=True)
class Topics:
    data: str
    models: str
    results: str
    errors: str


def make_topics(kafka: ApacheKafka, prefix: str, data_partitions: int = 2) -> Topics:
    """Fresh topics (names from ``prefix``), the mean model published for key ``wine``."""
    name = unique_name(prefix)
    topics = Topics(f"{name}-data", f"{name}-models", f"{name}-results", f"{name}-errors")
    kafka.create_topics(topics.data, partitions=data_partitions)
    kafka.create_topics(topics.results, topics.errors, partitions=2)
    kafka.create_topics(topics.models, partitions=1, config={"cleanup.policy": "compact"})
    descriptor = ModelDescriptor(name="mean", data_type="wine", model_type=MEAN_TYPE, data=b"-")
    kafka.produce(topics.models, [(b"wine", encode_descriptor(descriptor))])
    return topics


def _mean(features: FloatMatrix) -> np.ndarray:
    return features.mean(axis=1)


def mean_core() -> ServingCore:
    registry = FactoryRegistry(FactoryContext())
    registry.register(MEAN_TYPE, FunctionFactory(_mean, width=11))
    return ServingCore(ServingSettings(), registry)


def kafka_settings(bootstrap: str, topics: Topics, **update: Any) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "bootstrap_servers": bootstrap,
            "group_id": unique_name("review"),
            "data_topics": [topics.data],
            "models_topic": topics.models,
            "results_topic": topics.results,
            "errors_topic": topics.errors,
            **update,
        }
    )


def wine_records(count: int, seed: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    rng = np.random.default_rng(seed)
    return [(None, encode_wine_record(rng.random(11))) for _ in range(count)]


class Replica:
    """A KafkaRuntime (wine records, the mean model) running on a thread of its own."""

    def __init__(
        self, settings: KafkaSettings, max_records: int = 50, timeout_s: float = 300
    ) -> None:
        self.core = mean_core()
        self.runtime = KafkaRuntime(
            self.core,
            WineRecordCodec(),
            settings,
            BatchSettings(max_records=max_records, max_delay_ms=20),
        )
        self.failure: BaseException | None = None
        self.failed_at: float | None = None
        self.summary: RunSummary | None = None
        self._thread = threading.Thread(target=self._run, args=(timeout_s,), daemon=True)
        self._thread.start()

    def _run(self, timeout_s: float) -> None:
        try:
            self.summary = self.runtime.run(timeout_s=timeout_s)
        except BaseException as err:  # noqa: BLE001 - asserted by the tests
            self.failure = err
            self.failed_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def stop(self, timeout_s: float = 120) -> None:
        self.runtime.stop()
        self._thread.join(timeout_s)
        self.core.close()


def positions(kafka: ApacheKafka, *topics: str) -> list[str]:
    """The input positions the outputs on ``topics`` name (one per output)."""
    return [orjson.loads(m.value())["position"] for t in topics for m in kafka.read_all(t)]


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
