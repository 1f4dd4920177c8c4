"""Scenarios 2 and 3: the Kafka runtime end to end against the local broker, beside a bare
consumer that only reads the same topic (the broker's limit) and the per-record consumer loop a
user would write (consume one, decode, score one row, produce). WineRecord protobuf records, as
the original publisher sent them; the seed's TF frozen graph and the same MLP as ONNX.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.broker import BenchBroker, running
from benchmarks.common import Row, Sizes, WineData, percentiles, rate
from streamserve.codecs.protobuf import WINE_FEATURES, WineRecordCodec, encode_wine_record
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.descriptor._generated import winerecord_pb2
from streamserve.formats.artifact import InlineArtifact
from streamserve.formats.base import FactoryContext, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.runtime.kafka import DATA_CONSUMER_DEFAULTS, KafkaRuntime
from streamserve.runtime.streams import write_length_delimited
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, KafkaSettings, ServingSettings

PARTITIONS = 4
SCENARIO_E2E = "2 Kafka end to end"
SCENARIO_BASELINE = "3 per-record consumer loop"


def run(wine: WineData, mlp_onnx: bytes, sizes: Sizes, broker_kind: str) -> list[Row]:
    frozen = (wine.directory / "optimized_WineQuality.pb").read_bytes()
    models = {
        "tf-frozen-graph": (ModelType.TENSORFLOW, frozen),
        "onnx-mlp": (ModelType.ONNX, mlp_onnx),
    }
    rows: list[Row] = []
    with running(broker_kind) as broker:
        e2e, loop = f"{SCENARIO_E2E}, {broker.label}", f"{SCENARIO_BASELINE}, {broker.label}"
        broker.create_topics("data", partitions=PARTITIONS)
        payloads = [encode_wine_record(row) for row in wine.cycled(sizes.kafka_records)]
        _produce_fast(broker, "data", payloads)
        bare = bare_consumer_rate(broker, "data", len(payloads))
        piped = consume_produce_rate(broker, "data", len(payloads))
        rates: dict[str, float] = {}
        for name, (model_type, data) in models.items():
            rates[name] = streamserve_rate(broker, name, model_type, data, len(payloads))
        baselines = {
            name: per_record_rate(broker, name, model_type, data, sizes.baseline_records)
            for name, (model_type, data) in models.items()
        }
        tf_rate, onnx_rate = rates["tf-frozen-graph"], rates["onnx-mlp"]
        rows += [
            Row(
                e2e,
                "TF frozen graph: records/s, one process",
                tf_rate,
                "rec/s",
                "per-record loop, same model",
                baselines["tf-frozen-graph"],
                "≥ 10x the loop",
                tf_rate >= 10 * baselines["tf-frozen-graph"],
                {"records": len(payloads)},
            ),
            _limit_row(e2e, "TF frozen graph", tf_rate, piped, len(payloads)),
            _limit_row(e2e, "ONNX MLP", onnx_rate, piped, len(payloads)),
            Row(
                e2e,
                "ONNX MLP: records/s, one process",
                onnx_rate,
                "rec/s",
                "bare consumer reading the topic",
                bare,
                details={"records": len(payloads)},
            ),
            Row(
                loop,
                "ONNX MLP: records/s",
                baselines["onnx-mlp"],
                "rec/s",
                "streamserve, same model",
                onnx_rate,
                details={"records": sizes.baseline_records},
            ),
        ]
        half = tf_rate / 2
        p50, p99, count = latency_at_rate(broker, frozen, half, sizes)
        bare_p50, bare_p99 = bare_latency_at_rate(broker, half, sizes)
        rows.append(
            Row(
                e2e,
                f"TF frozen graph: latency p50 / p99 at {half:,.0f} rec/s (half max)",
                p99,
                "ms",
                "p99 of a bare consumer reading the same paced stream",
                bare_p99,
                "p99 ≤ the bare consumer's + 5 ms",
                p99 <= bare_p99 + 5,
                {"p50_ms": p50, "records": count, "bare_p50_ms": bare_p50},
            )
        )
    return rows


def _limit_row(scenario: str, model: str, measured: float, piped: float, records: int) -> Row:
    """``measured`` against the no-work consume → produce loop: the limit of any pipeline that
    publishes one output message per record, on this machine and broker."""
    return Row(
        scenario,
        f"{model}: records/s, one process",
        measured,
        "rec/s",
        "consume → produce, no work (one output per record)",
        piped,
        "≥ 0.7x the no-work loop",
        measured >= 0.7 * piped,
        {"records": records},
    )


def produce_waiting(producer: Producer, topic: str, value: bytes) -> None:
    """``producer.produce``, waiting while the client's local queue is full (the broker acks
    slower than the loop produces), as a well-written producer loop does."""
    while True:
        try:
            producer.produce(topic, value)
            return
        except BufferError:
            producer.poll(0.01)


def _produce_fast(broker: BenchBroker, topic: str, payloads: list[bytes]) -> None:
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    for payload in payloads:
        produce_waiting(producer, topic, payload)
    if producer.flush(120):
        raise RuntimeError("the benchmark records were not all acknowledged")


def _consumer(broker: BenchBroker, group: str, **extra: Any) -> Any:
    """A baseline's consumer, fetching as streamserve's data consumer does (so the baselines
    are not starved by librdkafka's 1 s fetch-queue backoff while streamserve is not)."""
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            **DATA_CONSUMER_DEFAULTS,
            **broker.consumer,
            **extra,
        }
    )


def bare_consumer_rate(broker: BenchBroker, topic: str, count: int) -> float:
    """A consumer that only reads: the broker's and client's limit on the machine it runs on."""
    consumer = _consumer(broker, "bench-bare", **{"enable.auto.commit": False})
    consumer.subscribe([topic])
    seen, started = 0, 0.0
    deadline = time.monotonic() + 300
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(1000, 1.0):
            if message.error() is None:
                if seen == 0:
                    started = time.perf_counter()
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    if seen < count:
        raise RuntimeError(f"the bare consumer read {seen} of {count} records")
    return rate(seen, elapsed)


def consume_produce_rate(broker: BenchBroker, topic: str, count: int) -> float:
    """Consume a batch, produce each record's bytes to an output topic, commit asynchronously:
    what any pipeline publishing one output per record costs the client and the broker."""
    broker.create_topics("piped")
    consumer = _consumer(broker, "bench-piped", **{"enable.auto.commit": False})
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2})
    seen, started = 0, 0.0
    deadline = time.monotonic() + 300
    while seen < count and time.monotonic() < deadline:
        messages = consumer.consume(1024, 1.0)
        if not messages:
            continue
        if seen == 0:
            started = time.perf_counter()
        for message in messages:
            produce_waiting(producer, "piped", message.value() or b"")
        producer.poll(0)
        consumer.commit(asynchronous=True)
        seen += len(messages)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    consumer.close()
    if seen < count:
        raise RuntimeError(f"the consume-produce loop read {seen} of {count} records")
    return rate(seen, elapsed)


def _kafka_settings(broker: BenchBroker, name: str, topics: list[str]) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        group_id=f"bench-{name}",
        data_topics=topics,
        models_topic=f"models-{name}",
        results_topic=f"results-{name}",
        errors_topic=f"errors-{name}",
        consumer=dict(broker.consumer),
    )


def _start_runtime(
    broker: BenchBroker,
    name: str,
    model_type: int,
    data: bytes,
    topics: list[str],
    count: int | None,
) -> tuple[KafkaRuntime, ServingCore, threading.Thread, dict[str, Any]]:
    settings = _kafka_settings(broker, name, topics)
    broker.create_topics(settings.models_topic, settings.results_topic, settings.errors_topic)
    descriptor = ModelDescriptor(name=name, data_type="wine", model_type=model_type, data=data)
    broker.produce(settings.models_topic, [(b"wine", encode_descriptor(descriptor))])
    core = ServingCore(ServingSettings())
    runtime = KafkaRuntime(core, WineRecordCodec(), settings, BatchSettings(), freeze_startup=True)
    outcome: dict[str, Any] = {}

    def serve() -> None:
        outcome["summary"] = runtime.run(count=count)
        outcome["finished"] = time.perf_counter()

    thread = threading.Thread(target=serve, name=f"streamserve-{name}")
    thread.start()
    if not runtime.ready.wait(120):
        raise RuntimeError(f"the {name} runtime never became ready")
    return runtime, core, thread, outcome


def streamserve_rate(
    broker: BenchBroker, name: str, model_type: int, data: bytes, count: int
) -> float:
    _, core, thread, outcome = _start_runtime(broker, name, model_type, data, ["data"], count)
    started = time.perf_counter()
    thread.join()
    core.close()
    summary = outcome["summary"]
    if summary.results != count or summary.errors:
        raise RuntimeError(f"{name}: {summary.results} results, {summary.errors} errors of {count}")
    return rate(count, outcome["finished"] - started)


def per_record_rate(
    broker: BenchBroker, name: str, model_type: int, data: bytes, count: int
) -> float:
    """The loop a user writes: poll one message, decode it, score one row, produce the result."""
    model = _load_model(name, model_type, data)
    consumer = _consumer(broker, f"bench-loop-{name}")
    consumer.subscribe(["data"])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    record = winerecord_pb2.WineRecord()
    seen, started = 0, 0.0
    deadline = time.monotonic() + 300
    while seen < count and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error() is not None:
            continue
        if seen == 0:
            started = time.perf_counter()
        record.ParseFromString(message.value())
        features = np.array([[getattr(record, field) for field in WINE_FEATURES]])
        value = model.score_batch(features)[0]
        produce_waiting(
            producer, f"loop-results-{name}", orjson.dumps({"model": name, "value": value.item()})
        )
        producer.poll(0)
        seen += 1
    elapsed = time.perf_counter() - started
    producer.flush(60)
    consumer.close()
    model.close()
    if seen < count:
        raise RuntimeError(f"the per-record loop read {seen} of {count} records")
    return rate(seen, elapsed)


def _load_model(name: str, model_type: int, data: bytes) -> Model:
    registry = FactoryRegistry(FactoryContext())
    return registry.factory_for(model_type).load(
        LoadRequest(
            name=name,
            artifact=InlineArtifact(data),
            options={},
            output=ModelDescriptor(
                name=name, data_type="wine", model_type=model_type, data=data
            ).output,
            context=registry.context,
        )
    )


def latency_at_rate(
    broker: BenchBroker, frozen: bytes, records_per_s: float, sizes: Sizes
) -> tuple[float, float, int]:
    """Records published at ``records_per_s`` by ``streamserve publish-data`` (another
    process); latency = the result's produce time - the record's produce time."""
    topic = "data-latency"
    broker.create_topics(topic, partitions=PARTITIONS)
    count = max(int(records_per_s * sizes.latency_seconds), 100)
    runtime, core, thread, _ = _start_runtime(
        broker, "latency", ModelType.TENSORFLOW, frozen, [topic], None
    )
    _publish_paced(broker, topic, count, records_per_s)
    _wait_for(lambda: core.counts.get("records", 0) >= count, "every latency record scored")
    runtime.stop()
    thread.join()
    core.close()
    sent_at = {
        f"{m.topic()}/{m.partition()}@{m.offset()}": m.timestamp()[1]
        for m in broker.read_all(topic)
    }
    latencies = [
        message.timestamp()[1] - sent_at[orjson.loads(message.value())["position"]]
        for message in broker.read_all("results-latency")
    ]
    p50, p99 = percentiles(latencies)
    return p50, p99, len(latencies)


def bare_latency_at_rate(
    broker: BenchBroker, records_per_s: float, sizes: Sizes
) -> tuple[float, float]:
    """The transport's own latency at the same rate: record produced -> a bare consumer has it."""
    topic = "data-latency-bare"
    broker.create_topics(topic, partitions=PARTITIONS)
    count = max(int(records_per_s * sizes.latency_seconds), 100)
    consumer = _consumer(broker, "bench-latency-bare", **{"enable.auto.commit": False})
    # assigned, not subscribed: reading from offset 0 at once, with no group to join first
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(PARTITIONS)])
    # array, not list: a list of a million floats costs every full collection ~40 ms, a pause
    # that the measured latencies would show
    latencies = array("d")

    def receive() -> None:
        deadline = time.monotonic() + 600
        while len(latencies) < count and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.1):
                if message.error() is None:
                    latencies.append(time.time() * 1000 - message.timestamp()[1])

    receiver = threading.Thread(target=receive, name="bare-latency")
    receiver.start()
    _publish_paced(broker, topic, count, records_per_s)
    receiver.join()
    consumer.close()
    return percentiles(latencies)


def _publish_paced(broker: BenchBroker, topic: str, count: int, records_per_s: float) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        records = Path(scratch) / "records.bin"
        with records.open("wb") as stream:
            write_length_delimited(
                (encode_wine_record([float(i % 7)] * 11) for i in range(count)), stream
            )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streamserve",
                "publish-data",
                str(records),
                "--length-delimited",
                "--rate",
                str(records_per_s),
                "--bootstrap-servers",
                broker.bootstrap,
                "--topic",
                topic,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
