"""Regressions from an outside break-it review of the Kafka runtime, against the real broker
(Apache Kafka) and real models. Each test failed on the code it was written against, naming the
contract it showed broken (ARCHITECTURE.md's five, and the README's promises about the Kafka
runtime). Outputs are counted independently of streamserve's counters: by ``position``, with a
plain consumer of the results and errors topics.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from kafka_broker import TEST_CONSUMER_SETTINGS, Broker, running_broker, serve_kafka_command

from builders import onnx_constant
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.errors import InfrastructureError
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory

pytestmark = pytest.mark.slow

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
# librdkafka's default message.max.bytes, and Apache Kafka's default limit for a record batch
# (broker message.max.bytes = 1048588): what a production data topic accepts.
KAFKA_DEFAULT_MAX_BYTES = 1_000_000


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker() as running:
        running.create_topics("data", "models", "results", "errors")
        yield running


def _settings(broker: Broker, **update: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap, data_topics=["data"], consumer=TEST_CONSUMER_SETTINGS
    ).model_copy(update=update)


def _constant_model(key: str, value: float, width: int = 1) -> bytes:
    return encode_descriptor(
        ModelDescriptor(
            name=f"constant-{key}",
            data_type=key,
            model_type=ModelType.ONNX,
            data=onnx_constant(width, value),
        )
    )


def _outputs_by_position(broker: Broker) -> Counter[str]:
    """How many outputs (results and record errors) name each input position."""
    counted: Counter[str] = Counter()
    for topic in ("results", "errors"):
        for message in broker.read_all(topic):
            document = orjson.loads(message.value())
            if document.get("position"):
                counted[document["position"]] += 1
    return counted


def _data_positions(broker: Broker) -> list[str]:
    return [f"data/{m.partition()}@{m.offset()}" for m in broker.read_all("data")]


# --- 1. an error record larger than the record it reports: a poison pill that replays -------


def test_a_record_the_topic_accepted_gets_an_error_record_too_large_to_publish(
    broker: Broker,
) -> None:
    """Contract 4 (a record fails alone; nothing from a topic escapes the run loop).

    A 700 kB JSON record of control characters fits the data topic's 1 MB limit (it was
    produced with the same librdkafka default the replica's producer has on a production
    broker). It is undecodable, and its error record carries the input JSON-escaped (each
    control character becomes six bytes): over 4 MB, which no producer with the topic's limit
    may send. The replica stops without committing; every restart reads the same record and
    stops again: it is never answered, and its partition never moves past it (the records of
    its batch are scored again at every start).
    """
    broker.produce("models", [(b"k", _constant_model("k", 1.0))])
    poison = b"\x01" * 700_000  # neither JSON nor UTF-8 trouble: just control characters
    good = [orjson.dumps({"dataType": "k", "x": float(n)}) for n in range(5)]
    producer_limit = {"message.max.bytes": KAFKA_DEFAULT_MAX_BYTES}
    producer = Producer({"bootstrap.servers": broker.bootstrap, **producer_limit})
    for value in [good[0], poison, *good[1:]]:
        producer.produce("data", value=value, partition=0)
    assert producer.flush(30) == 0, "the data topic refused the record: the test is wrong"
    del producer  # its connections close now, not after the broker stopped

    stops = 0
    for _restart in range(2):  # a stop is followed by a restart, which must not stop again
        core = ServingCore(ServingSettings())
        runtime = KafkaRuntime(
            core,
            JsonCodec(),
            _settings(broker, producer=producer_limit),
            BatchSettings(max_records=64, max_delay_ms=20),
        )
        try:
            runtime.run(count=6, timeout_s=60)
        except InfrastructureError:
            stops += 1
        else:
            break
        finally:
            core.close()
    outputs = _outputs_by_position(broker)
    unanswered = [p for p in _data_positions(broker) if outputs[p] == 0]
    assert (not unanswered) + (not stops) == 2, (
        f"contract 4 broken: a record the data topic accepted stopped the replica on each of "
        f"{stops} starts (its error record, carrying the input JSON-escaped, is over the "
        f"producer's limit: runtime/encoding.py encode_record_error, runtime/kafka.py _produce "
        f"raises InfrastructureError); records never answered: {unanswered}"
    )


# --- 2. a load that never finishes: the replica never exits -------------------------------


def test_a_replica_refuses_a_location_that_would_block_its_loader_and_serves_on(
    broker: Broker, tmp_path: Path
) -> None:
    """README (Kafka): a load that hangs must never stop a replica (contract 3). A location
    that is a FIFO nobody writes to would block its reader forever, like a file on a hung
    network mount: it is refused at once as a special file (a location must be a regular file
    or a folder), the rejection is published with its reason, and the replica serves on and
    stops cleanly when told to. (A load that hangs anyway is bounded by
    serving.load_timeout_s: tests/integration/test_hung_models.py.)
    """
    roots = tmp_path / "models"
    roots.mkdir()
    fifo = roots / "hung.onnx"
    os.mkfifo(fifo)
    wedged = ModelDescriptor(
        name="hung", data_type="k", model_type=ModelType.ONNX, location=str(fifo)
    )
    broker.produce("models", [(b"k", encode_descriptor(wedged))])
    config = tmp_path / "streamserve.toml"
    config.write_text(f"""
[serving]
model_roots = ["{roots}"]

[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["data"]
catch_up_timeout_s = 2
""")
    replica = subprocess.Popen(
        serve_kafka_command(config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 120
        rejections: list[dict[str, object]] = []
        while not rejections and time.monotonic() < deadline and replica.poll() is None:
            rejections = [
                event
                for event in (orjson.loads(m.value()) for m in broker.read_all("errors"))
                if event.get("kind") == "model_rejected"
            ]
            time.sleep(0.5)
        running = replica.poll() is None
        replica.send_signal(signal.SIGTERM)
        status = replica.wait(timeout=60)
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait(30)
        _release(fifo)
    stderr = ""
    if replica.stderr is not None:
        with replica.stderr:
            stderr = replica.stderr.read().decode(errors="replace")
    assert [event["model"] for event in rejections] == ["hung"], stderr[-2000:]
    assert "neither a regular file nor a folder" in str(rejections[0]["reason"])
    assert running, f"contract 3: the replica stopped over a bad model: {stderr[-2000:]}"
    assert status == 0, stderr[-2000:]


def _release(fifo: Path) -> None:
    """Opens the FIFO for writing and closes it: a reader blocked on it sees its end."""
    with contextlib.suppress(OSError):  # no reader left (ENXIO)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# --- 3. tombstones for random keys while one load is slow: unbounded unload floors ---------

GATED_TYPE = 100  # a plug-in model type whose loads wait for the test's gate
TOMBSTONES = 3000


def test_tombstones_for_random_keys_during_one_slow_load_grow_the_footprint_without_bound(
    broker: Broker,
) -> None:
    """Contract 5 (thousands of keys) and BREAK-IT's "growth with junk": ServingCore.footprint()
    is "the per-key state held: what must stay bounded, whatever keys the topics carry".

    One model for key ``slow`` takes long to load (gated here; a SavedModel, a LightGBM check
    or a hung mount in production). Meanwhile the models topic carries tombstones for
    thousands of keys nobody ever served. Each leaves an unload floor behind
    (serving/core.py unload: ``_unloaded_at[key]``), kept while *any* older load is pending
    (``_prune_floors``), although a floor only matters to a pending load of its own key:
    one per tombstone, without bound, for as long as the slow load lasts.
    """
    gate = threading.Event()
    registry = FactoryRegistry(FactoryContext())
    gated = GatedFactory(FunctionFactory(lambda f: np.asarray(f).mean(axis=1), width=1), gate)
    registry.register(GATED_TYPE, lambda context: gated)
    core = ServingCore(ServingSettings(), registry)
    runtime = KafkaRuntime(core, JsonCodec(), _settings(broker), BatchSettings(max_delay_ms=20))
    thread = threading.Thread(target=runtime.run, kwargs={"timeout_s": 90}, daemon=True)
    thread.start()
    try:
        assert runtime.ready.wait(60), "the replica never became ready"
        slow = ModelDescriptor(name="slow", data_type="slow", model_type=GATED_TYPE, data=b"-")
        broker.produce("models", [(b"slow", encode_descriptor(slow))])
        assert gated.loading.wait(30), "the slow load never started"
        broker.produce("models", [(f"junk-{n}".encode(), None) for n in range(TOMBSTONES)])
        broker.produce("models", [(b"marker", _constant_model("marker", 1.0))])
        deadline = time.monotonic() + 60  # the marker follows every tombstone on the topic
        while time.monotonic() < deadline and core.counts.get("model_messages", 0) < 2:
            time.sleep(0.1)
        assert core.counts.get("model_messages", 0) == 2, "the tombstones were not all read"
        footprint = core.footprint()
    finally:
        runtime.stop()
        thread.join(60)
        gate.set()
        core.close()
    assert footprint["unload_floors"] <= footprint["loading"], (
        f"contract 5 / growth with junk: {TOMBSTONES} tombstones for keys never served, read "
        f"while one unrelated load was pending, left {footprint['unload_floors']} unload floors "
        f"behind (serving/core.py:219 unload, :140 _prune_floors keep every floor newer than "
        f"the oldest pending load, of any key): {footprint}"
    )
