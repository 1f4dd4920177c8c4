"""A model that hangs while a Kafka replica serves (real broker: Apache Kafka): its key goes
back to its previous model, the other keys keep being served, every record gets exactly one
output, and the errors topic says which model of which key got stuck."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka
from review_support import kafka_settings, make_topics, wait_until

from streamserve.codecs.protobuf import WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, encode_descriptor
from streamserve.formats.base import FactoryContext, FloatMatrix
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.base import RunSummary
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, ServingSettings
from streamserve.testing import FunctionFactory

pytestmark = pytest.mark.slow

MEAN, HANGING = 102, 103
RECORDS_PER_KEY = 200


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def _mean(features: FloatMatrix) -> np.ndarray:
    return features.mean(axis=1)


def test_a_hung_model_on_kafka_is_quarantined_and_every_record_is_answered_once(
    kafka: ApacheKafka,
) -> None:
    gate = threading.Event()
    calls = Counter[str]()

    def hangs_after_its_probe(features: FloatMatrix) -> np.ndarray:
        calls["hanging"] += 1
        if calls["hanging"] > 1:
            gate.wait(600)
        return features.max(axis=1)

    registry = FactoryRegistry(FactoryContext())
    registry.register(MEAN, FunctionFactory(_mean, width=11))
    registry.register(HANGING, FunctionFactory(hangs_after_its_probe, width=11))
    core = ServingCore(ServingSettings(scoring_deadline_s=1.0), registry)
    topics = make_topics(kafka, "hung")  # key "wine": the mean model

    def red(name: str, model_type: int) -> tuple[bytes, bytes]:
        descriptor = ModelDescriptor(name=name, data_type="red", model_type=model_type, data=b"-")
        return b"red", encode_descriptor(descriptor)

    kafka.produce(topics.models, [red("red-mean", MEAN)])
    rng = np.random.default_rng(7)
    records = [
        (None, encode_wine_record(rng.random(11), data_type=key))
        for _ in range(RECORDS_PER_KEY)
        for key in ("wine", "red")
    ]
    half = len(records) // 2
    kafka.produce(topics.data, records[:half])
    runtime = KafkaRuntime(
        core,
        WineRecordCodec(),
        kafka_settings(kafka.bootstrap, topics),
        BatchSettings(max_records=64, max_delay_ms=20),
    )
    summary: list[RunSummary] = []
    replica = threading.Thread(
        target=lambda: summary.append(runtime.run(count=len(records), timeout_s=240)), daemon=True
    )
    try:
        replica.start()
        assert wait_until(lambda: core.counts.get("records", 0) >= half, 120)
        kafka.produce(topics.models, [red("red-hangs", HANGING)])  # passes its probe, then hangs
        slot = core.find_slot("red")
        assert slot is not None
        assert wait_until(lambda: slot.staged is not None, 60)
        kafka.produce(topics.data, records[half:])
        replica.join(240)
        assert summary, "the replica did not answer every record: a hung model froze it"
    finally:
        runtime.stop()
        gate.set()
        replica.join(60)
        core.close()

    results = [orjson.loads(m.value()) for m in kafka.read_all(topics.results)]
    errors = [orjson.loads(m.value()) for m in kafka.read_all(topics.errors)]
    answered = Counter(r["position"] for r in results + errors if "position" in r)
    assert len(answered) == len(records), "contract 4: a record was lost around the stuck call"
    assert set(answered.values()) == {1}, "contract 4: a record was answered twice"
    models = Counter((r["key"], r["model"]) for r in results)
    assert models == {("wine", "mean"): RECORDS_PER_KEY, ("red", "red-mean"): RECORDS_PER_KEY}, (
        "the stuck key did not go back to its previous model, or another key paid"
    )
    (stuck,) = [e for e in errors if e.get("error_kind") == "scoring_timeout"]
    assert (stuck["kind"], stuck["key"], stuck["model"]) == (
        "model_quarantined",
        "red",
        "red-hangs",
    )
    assert "did not return from scoring" in stuck["reason"]
    assert wait_until(lambda: core.overrunning_calls == 0, 30)
