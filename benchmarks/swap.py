"""Scenario 4: swap latency on the Kafka runtime. Records of two keys flow at a steady rate
(``streamserve publish-data`` in another process); a new model for key ``a`` is published. We
measure, from Kafka's own timestamps: publication -> first result by the new model, against the
model's load time; and the largest gap between consecutive results of key ``b`` around the swap,
against the largest gap between its results outside that window (before it and after it: how
long the flow runs before the swap depends on start-up, so one side alone may hold too few)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import orjson

from benchmarks.broker import BenchBroker, running
from benchmarks.common import Row, Sizes, WineData
from benchmarks.kafka import PARTITIONS, _kafka_settings, _wait_for
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.runtime.kafka import KafkaRuntime
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, ServingSettings

SCENARIO = "4 swap on Kafka"


def _descriptor(name: str, key: str, data: bytes) -> bytes:
    return encode_descriptor(
        ModelDescriptor(name=name, data_type=key, model_type=ModelType.ONNX, data=data)
    )


def run(wine: WineData, mlp_onnx: bytes, sizes: Sizes, broker_kind: str) -> list[Row]:
    seconds = max(sizes.latency_seconds, 3.0)
    count = int(sizes.swap_rate * seconds)
    with running(broker_kind) as broker:
        scenario = f"{SCENARIO}, {broker.label}"
        settings = _kafka_settings(broker, "swap", ["data-swap"])
        broker.create_topics("data-swap", partitions=PARTITIONS)
        broker.create_topics(settings.models_topic, settings.results_topic, settings.errors_topic)
        broker.produce(
            settings.models_topic,
            [(b"a", _descriptor("a-old", "a", mlp_onnx)), (b"b", _descriptor("b", "b", mlp_onnx))],
        )
        core = ServingCore(ServingSettings())
        runtime = KafkaRuntime(core, JsonCodec(), settings, BatchSettings(), freeze_startup=True)
        thread = threading.Thread(target=runtime.run, name="streamserve-swap")
        thread.start()
        if not runtime.ready.wait(120):
            raise RuntimeError("the swap runtime never became ready")
        publisher = _start_publisher(broker, wine, count, sizes.swap_rate)
        _wait_for(lambda: core.counts.get("records", 0) >= count // 3, "records flowing")
        broker.produce(settings.models_topic, [(b"a", _descriptor("a-new", "a", mlp_onnx))])
        publisher.wait(timeout=600)
        _wait_for(lambda: core.counts.get("records", 0) >= count, "every swap record scored")
        runtime.stop()
        thread.join()
        slot = core.find_slot("a")
        load_s = slot.current.load_duration_s if slot and slot.current else float("nan")
        core.close()
        published_ms = broker.read_all(settings.models_topic)[-1].timestamp()[1]
        results = [
            (m.timestamp()[1], orjson.loads(m.value()))
            for m in broker.read_all(settings.results_topic)
        ]
    first_new_ms = min(t for t, r in results if r["model"] == "a-new")
    swap_ms = float(first_new_ms - published_ms)
    b_times = sorted(t for t, r in results if r["key"] == "b")
    window_ms = 1000
    window = (published_ms - window_ms, first_new_ms + window_ms)
    during = _largest_gap(b_times, *window)
    usual = max(
        _largest_gap(b_times, -math.inf, window[0]), _largest_gap(b_times, window[1], math.inf)
    )
    load_ms = load_s * 1000
    return [
        Row(
            scenario,
            "publication → first result of the new model",
            swap_ms,
            "ms",
            "the new model's load time",
            load_ms,
            f"≤ load time + 50 ms ({load_ms + 50:.1f} ms)",
            swap_ms <= load_ms + 50,
            {"records": len(results)},
        ),
        Row(
            scenario,
            "largest gap between results of another key, around the swap",
            during,
            "ms",
            "largest gap outside that window",
            usual,
            "no gap beyond the usual",
            during <= max(usual * 2, usual + 10),
        ),
    ]


def _start_publisher(
    broker: BenchBroker, wine: WineData, count: int, rate: int
) -> subprocess.Popen[bytes]:
    scratch = Path(tempfile.mkdtemp())
    records = scratch / "records.jsonl"
    lines = [
        orjson.dumps({"dataType": "ab"[i % 2], "features": row.tolist()})
        for i, row in enumerate(wine.cycled(count))
    ]
    records.write_bytes(b"\n".join(lines) + b"\n")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamserve",
            "publish-data",
            str(records),
            "--rate",
            str(rate),
            "--bootstrap-servers",
            broker.bootstrap,
            "--topic",
            "data-swap",
        ],
        stdout=subprocess.DEVNULL,
    )


def _largest_gap(times_ms: list[int], start_ms: float, end_ms: float) -> float:
    """The largest gap between consecutive times inside [start_ms, end_ms]; -inf with fewer
    than two, so that ``max`` of two sides picks the side that has results."""
    inside = [t for t in times_ms if start_ms <= t <= end_ms]
    if len(inside) < 2:
        return -math.inf
    return float(max(b - a for a, b in itertools.pairwise(inside)))
