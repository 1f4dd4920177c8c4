"""Scenario 8: cold start. A new replica (``streamserve serve --runtime kafka``, a process of its
own) joins with N models on the models topic (1,000 in the full run); we measure from the
process's start to its first result, for a record of the key whose model was published last.

Twice: with an empty artifact cache (cold), then with the cache the first replica left (warm).
Beside them, in the same run, the machine's own limit: the time a bare consumer takes to read
the models topic to its end, and the time a replica takes from its start to its first output with
no model at all (the interpreter, the imports, the connection, the group join and one record).

The models, a mix a fleet of many keys plausibly carries (every one made here by the real
libraries, from the wine data):

* most keys (~89 %) a small ONNX model of their own (one layer, distinct weights): the common
  case of thousands of per-key models, cheap to load one by one;
* gradient-boosted trees, the usual tabular model: LightGBM text models (4 %) and XGBoost JSON
  models (3 %), each trained with its own seed, so each is distinct. Both formats check a new
  model in a child process (their libraries crash on some malformed models), about a second
  each: the expensive loads that the artifact cache remembers;
* a few deep-learning graphs: the original TensorFlow frozen graph (1 %; the first one imports
  TensorFlow) and SavedModels sent inline as archives (0.3 %; unpacked into the cache);
* legacy PMML models (2 %, the seven original wine models): the first one starts the JVM;
* about 3 % of the keys get a second version later in the topic, as a topic not compacted yet
  holds, among them the key probed: its first version near the start, its latest at the end.
  The result must name the latest (Contract 4: a restart rebuilds the models from the topic,
  and no key is scored by an older model than the topic's latest for it).

Timings: the process start is the wall clock just before it is spawned; its first result's time
is the result's Kafka timestamp (set by the replica's producer), so polling adds nothing. The
catch-up time is the replica's own ``models_caught_up`` log line. The details also hold each
replica's CPU time (its child processes' included, to its exit after that one record): on a
shared machine, the figure that other work does not change. The OS file cache is warm for
both runs (the libraries were imported before): "cold" means an empty artifact cache, not a
rebooted machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from benchmarks.broker import BenchBroker, running
from benchmarks.common import Row, Sizes, WineData
from benchmarks.models import lightgbm_regressor_text, tiny_linear_onnx
from streamserve.codecs.protobuf import encode_wine_record
from streamserve.demo.wine import PMML_FILES  # the seven original wine PMML models
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.formats.artifact import pack_directory

SCENARIO = "8 cold start"
TARGET_WARM_S = 10.0
START_TIMEOUT_S = 900.0  # a cold replica on a loaded machine: every check of every model
# Shares of the mix (the rest is ONNX), each format at least one model.
SHARES = {"lightgbm": 0.04, "xgboost": 0.03, "pmml": 0.02, "tf-frozen": 0.01, "tf-saved": 0.003}
SECOND_VERSIONS = 0.03


@dataclass
class ModelsTopic:
    """The model messages to publish, in order, and the key probed."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    mix: dict[str, int] = field(default_factory=dict)
    probe_key: str = ""
    probe_model: str = ""  # the name of the probe key's latest model

    @property
    def size_bytes(self) -> int:
        return sum(len(value) for _, value in self.messages)


@dataclass(frozen=True)
class Startup:
    """One replica's start: to its first output, and to its models caught up (its log line)."""

    first_output_s: float
    caught_up_s: float | None
    output: dict[str, Any]
    cpu_s: float  # the replica's CPU time, its child processes' included, to its exit


def run(wine: WineData, mlp_onnx: bytes, sizes: Sizes, broker_kind: str) -> list[Row]:
    count = sizes.model_counts[0]
    load_before = os.getloadavg()
    topic = build_models_topic(wine, count)
    with running(broker_kind) as broker, tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        scenario = f"{SCENARIO}, {broker.label}"
        broker.create_topics("cold-data", partitions=1)
        record = encode_wine_record(wine.rows[0], data_type=topic.probe_key)
        broker.produce("cold-data", [(topic.probe_key.encode(), record)])
        _publish(broker, "cold-models", topic.messages)
        _publish(broker, "cold-models-empty", [])
        bare_s = bare_read_s(broker, "cold-models", len(topic.messages))
        empty = start_replica(broker, folder, "empty", "cold-models-empty", None)
        cache = folder / "artifact-cache"
        cold = start_replica(broker, folder, "cold", "cold-models", cache)
        warm = start_replica(broker, folder, "warm", "cold-models", cache)
    for startup in (cold, warm):
        _check_result(startup, topic)
    if empty.output.get("kind") != "no_model":
        raise RuntimeError(f"the replica without models answered {empty.output}")
    load_after = os.getloadavg()
    limit = empty.first_output_s + bare_s
    details = {
        "models": len(topic.messages),
        "mix": topic.mix,
        "topic_bytes": topic.size_bytes,
        "bare_read_s": round(bare_s, 3),
        "empty_replica_s": round(empty.first_output_s, 3),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
    }
    baseline = "no-model replica's first output + bare read of the models topic"
    return [
        Row(
            scenario,
            f"{count:,} models, warm artifact cache: start → first result",
            warm.first_output_s,
            "s",
            baseline,
            limit,
            f"≤ {TARGET_WARM_S:.0f} s",
            warm.first_output_s <= TARGET_WARM_S,
            {**details, "caught_up_s": warm.caught_up_s, "cpu_s": round(warm.cpu_s, 2)},
        ),
        Row(
            scenario,
            f"{count:,} models, empty artifact cache: start → first result",
            cold.first_output_s,
            "s",
            baseline,
            limit,
            details={**details, "caught_up_s": cold.caught_up_s, "cpu_s": round(cold.cpu_s, 2)},
        ),
        Row(
            scenario,
            "no model: start → first output (no_model error)",
            empty.first_output_s,
            "s",
            f"bare consumer reading {count:,} models to the end",
            bare_s,
            details={
                "load_average_before": details["load_average_before"],
                "cpu_s": round(empty.cpu_s, 2),
            },
        ),
    ]


def build_models_topic(wine: WineData, count: int) -> ModelsTopic:
    """``count`` model messages over ``count - 3 %`` keys (see the module's docstring)."""
    matrix = np.loadtxt(wine.directory / "winequality_red.csv", delimiter=";")
    features, labels = matrix[:, :11], matrix[:, 11]
    rng = np.random.default_rng(8)
    seconds = max(1, round(count * SECOND_VERSIONS))
    keys = count - seconds
    counts = {name: max(1, round(count * share)) for name, share in SHARES.items()}
    counts["onnx"] = keys - sum(counts.values())
    makers: dict[str, Callable[[int], tuple[int, bytes]]] = {
        "onnx": lambda n: (ModelType.ONNX, tiny_linear_onnx(rng.normal(size=11), float(n % 7))),
        "lightgbm": lambda n: (
            ModelType.LIGHTGBM,
            lightgbm_regressor_text(features, labels, seed=n, rounds=40),
        ),
        "xgboost": lambda n: (ModelType.XGBOOST, xgboost_regressor_json(features, labels, n)),
        "pmml": lambda n: (
            ModelType.PMML,
            (wine.directory / PMML_FILES[n % len(PMML_FILES)]).read_bytes(),
        ),
        "tf-frozen": lambda n: (
            ModelType.TENSORFLOW,
            (wine.directory / "optimized_WineQuality.pb").read_bytes(),
        ),
        "tf-saved": lambda n: (ModelType.TENSORFLOWSAVED, saved_model_archive(wine, n)),
    }
    formats = [name for name, number in counts.items() for _ in range(number)]
    rng.shuffle(formats)
    formats.insert(0, formats.pop(formats.index("onnx")))  # the probed key: first, ONNX
    messages: list[tuple[bytes, bytes]] = []
    for index, name in enumerate(formats):
        model_type, data = makers[name](index)
        key = f"key-{index:04d}"
        messages.append((key.encode(), _message(key, f"{key}-{name}", "v1", model_type, data)))
    probe_key = "key-0000"
    onnx_keys = [index for index, name in enumerate(formats) if name == "onnx" and index > 0]
    later = rng.choice(onnx_keys, size=min(seconds - 1, len(onnx_keys)), replace=False)
    for index in sorted(later.tolist()):
        key = f"key-{index:04d}"
        data = tiny_linear_onnx(rng.normal(size=11), 1.0)
        at = int(rng.integers(index + 1, len(messages) + 1))  # after the key's first version
        messages.insert(
            at, (key.encode(), _message(key, f"{key}-onnx-2", "v2", ModelType.ONNX, data))
        )
    probe_model = f"{probe_key}-onnx-2"
    data = tiny_linear_onnx(rng.normal(size=11), 2.0)
    messages.append(
        (probe_key.encode(), _message(probe_key, probe_model, "v2", ModelType.ONNX, data))
    )
    counts["second versions"] = seconds
    return ModelsTopic(messages, counts, probe_key, probe_model)


def _message(key: str, name: str, version: str, model_type: int, data: bytes) -> bytes:
    descriptor = ModelDescriptor(
        name=name, data_type=key, model_type=model_type, data=data, version=version
    )
    return encode_descriptor(descriptor)


def xgboost_regressor_json(features: np.ndarray, labels: np.ndarray, seed: int) -> bytes:
    """A small XGBoost regressor (its JSON model), trained here with its own seed."""
    import xgboost

    params = {"max_depth": 4, "subsample": 0.8, "seed": seed, "nthread": 1}
    booster = xgboost.train(params, xgboost.DMatrix(features, labels), num_boost_round=30)
    return bytes(booster.save_raw(raw_format="json"))


def saved_model_archive(wine: WineData, variant: int) -> bytes:
    """The original wine SavedModel as an inline tar.gz archive, with a file naming its variant
    (``assets.extra``, which TensorFlow does not read): each variant is a distinct archive."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "saved"
        shutil.copytree(wine.directory / "saved" / "1", folder)
        (folder / "assets.extra").mkdir()
        (folder / "assets.extra" / "variant.txt").write_text(str(variant))
        return pack_directory(folder)


def _publish(broker: BenchBroker, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """A models topic as the documentation advises: one partition, compacted."""
    broker.broker.create_topics(topic, partitions=1, config={"cleanup.policy": "compact"})
    for start in range(0, len(messages), 200):
        broker.produce(topic, [(key, value) for key, value in messages[start : start + 200]])


def bare_read_s(broker: BenchBroker, topic: str, count: int) -> float:
    """A bare consumer reading ``topic`` from its start to its end: from the consumer's creation
    to its end-of-partition event, every message in hand."""
    started = time.perf_counter()
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "bench-cold-bare",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **broker.consumer,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen, ended = 0, False
    deadline = time.monotonic() + 300
    while not ended and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.1):
            error = message.error()
            if error is None:
                seen += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                ended = True
    elapsed = time.perf_counter() - started
    consumer.close()
    if seen != count:
        raise RuntimeError(f"the bare consumer read {seen} of {count} model messages")
    return elapsed


def start_replica(
    broker: BenchBroker, folder: Path, name: str, models_topic: str, cache: Path | None
) -> Startup:
    """Starts a replica, waits for its first output (result or error), stops it."""
    from kafka_broker import (
        CLI_ENV,
        serve_kafka_command,
    )  # tests/ is on the path: benchmarks.broker

    results, errors = f"cold-results-{name}", f"cold-errors-{name}"
    broker.create_topics(results, errors, partitions=1)
    config = folder / f"{name}.toml"
    config.write_text(_config(broker, name, models_topic, results, errors, cache))
    log_path = folder / f"{name}.log"
    reader = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": f"bench-cold-{name}", **broker.consumer}
    )
    reader.assign([TopicPartition(results, 0, 0), TopicPartition(errors, 0, 0)])
    cpu_before = _children_cpu_s()
    with log_path.open("wb") as log:
        started = time.time()
        process = subprocess.Popen(
            serve_kafka_command(config, "--count", "1", "--log-format", "json"),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=CLI_ENV,
        )
        try:
            message = _first_message(reader, process, log_path)
        finally:
            reader.close()
            _stop(process)
    output = orjson.loads(message.value())
    first_output_s = message.timestamp()[1] / 1000 - started
    cpu_s = _children_cpu_s() - cpu_before
    return Startup(first_output_s, _caught_up_s(log_path), output, cpu_s)


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that ended (the replicas, and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _config(
    broker: BenchBroker, name: str, models: str, results: str, errors: str, cache: Path | None
) -> str:
    serving = f'[serving]\nartifact_cache_dir = "{cache}"\n' if cache is not None else ""
    consumer = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in broker.consumer.items())
    return f"""runtime = "kafka"

[codec]
format = "wine-protobuf"

{serving}
[kafka]
bootstrap_servers = "{broker.bootstrap}"
group_id = "bench-cold-{name}"
data_topics = ["cold-data"]
models_topic = "{models}"
results_topic = "{results}"
errors_topic = "{errors}"
consumer = {{ {consumer} }}
"""


def _first_message(reader: Consumer, process: subprocess.Popen[bytes], log_path: Path) -> Any:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for message in reader.consume(1, 0.2):
            if message.error() is None:
                return message
        if process.poll() is not None:
            break
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the replica gave no output (exit {process.poll()}): {tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """It stops by itself after its one record (``--count 1``); else SIGTERM, then SIGKILL."""
    try:
        process.wait(timeout=60)
        return
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _caught_up_s(log_path: Path) -> float | None:
    """The replica's catch-up time, from its ``models_caught_up`` log line."""
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "models_caught_up":
            return float(entry["elapsed_s"])
    return None


def _check_result(startup: Startup, topic: ModelsTopic) -> None:
    """The first output is the probe key's result, by the latest model the topic holds for it."""
    output = startup.output
    if output.get("key") != topic.probe_key or output.get("model") != topic.probe_model:
        raise RuntimeError(
            f"expected a result of {topic.probe_key!r} by {topic.probe_model!r}, got {output}"
        )
