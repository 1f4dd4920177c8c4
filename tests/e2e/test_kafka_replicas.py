"""Replicas in separate processes share a 4-partition data topic; one is SIGKILLed mid-stream.
Afterwards every input has a result (none lost) and duplicates stay within what the killed
replica had scored but not committed — both measured and asserted. A replica restarted after
SIGKILL rebuilds every model before it scores a record."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from kafka_broker import Broker, running_broker, serve_kafka_command

from builders import onnx_constant
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor
from streamserve.settings import KafkaSettings

pytestmark = pytest.mark.slow

PARTITIONS = 4
MAX_RECORDS = 50
TOTAL = 6000


def _config(tmp_path: Path, broker: Broker) -> Path:
    config = tmp_path / "streamserve.toml"
    config.write_text(f"""
[batch]
max_records = {MAX_RECORDS}
max_delay_ms = 20

[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["data"]
# A SIGKILLed replica leaves no group: its partitions move once its session times out (45 s by
# default), so the survivors take over after 6 s (Apache Kafka's group.min.session.timeout.ms).
consumer = {{ "session.timeout.ms" = 6000, "heartbeat.interval.ms" = 2000 }}
""")
    return config


def _replica(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            serve_kafka_command(config, *extra),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )


def _wait_until_scoring(log: Path) -> None:
    """Until the replica's own HTTP API says it has scored records (bounded)."""
    deadline = time.monotonic() + 120
    url = None
    while True:
        assert time.monotonic() < deadline, "the replica never started scoring"
        if url is None:
            match = re.search(r"HTTP API on (http://\S+)", log.read_text())
            url = match.group(1) if match else None
        elif httpx.get(f"{url}/keys", timeout=10).json()["counts"].get("results", 0) >= 100:
            return
        time.sleep(0.1)


def _url(log: Path) -> str | None:
    match = re.search(r"HTTP API on (http://\S+)", log.read_text())
    return match.group(1) if match else None


def _results_counted(url: str) -> int:
    return int(httpx.get(f"{url}/keys", timeout=10).json()["counts"].get("results", 0))


def _wait_until_delivered(broker: Broker, logs: list[Path]) -> None:
    """Until the first replica's results have reached the results topic (bounded): it has
    counted 100, and the topic holds more than the others have counted, so some are its."""
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the first replica's results never reached the topic"
        urls = [_url(log) for log in logs]
        if all(urls):
            counted = [_results_counted(url) for url in urls if url is not None]
            on_topic = len(broker.read_all("results"))
            if counted[0] >= 100 and on_topic > sum(counted[1:]):
                return
        time.sleep(0.2)


def _records_scored(log: Path) -> int:
    """What a replica reported on its way out: ``streamserve: N records, ...``."""
    match = re.search(r"streamserve: (\d+) records", log.read_text())
    assert match, log.read_text()[-2000:]
    return int(match.group(1))


def _publish_slowly(broker: Broker, done: threading.Event) -> None:
    """TOTAL records over about six seconds, so replicas are mid-stream when one dies."""
    for start in range(0, TOTAL, 200):
        broker.produce(
            "data",
            [
                (None, orjson.dumps({"dataType": "k", "features": [float(i)]}))
                for i in range(start, start + 200)
            ],
        )
        time.sleep(0.2)
    done.set()


@pytest.mark.parametrize("replicas", [2, 3])
def test_a_killed_replica_loses_nothing_and_duplicates_stay_in_its_window(
    replicas: int, tmp_path: Path
) -> None:
    with running_broker() as broker:
        broker.create_topics("data", partitions=PARTITIONS)
        broker.create_topics("models", "results", "errors")
        broker.produce(
            "models",
            [
                (
                    b"k",
                    encode_descriptor(
                        ModelDescriptor(
                            name="constant",
                            data_type="k",
                            model_type=ModelType.ONNX,
                            data=onnx_constant(1, 1.0),
                        )
                    ),
                )
            ],
        )
        config = _config(tmp_path, broker)
        processes = [_replica(config, tmp_path / "replica-0.log", "--http-port", "0")]
        processes += [
            _replica(config, tmp_path / f"replica-{i}.log", "--http-port", "0")
            for i in range(1, replicas)
        ]
        published = threading.Event()
        publisher = threading.Thread(target=_publish_slowly, args=(broker, published))
        publisher.start()
        try:
            _wait_until_delivered(broker, [tmp_path / f"replica-{i}.log" for i in range(replicas)])
            processes[0].send_signal(signal.SIGKILL)
            publisher.join()
            deadline = time.monotonic() + 120
            while len({m.value() for m in broker.read_all("results")}) < TOTAL:
                assert time.monotonic() < deadline, "records were lost: not every one scored"
                time.sleep(1)
        finally:
            for process in processes[1:]:
                process.send_signal(signal.SIGTERM)
            exit_codes = [process.wait(timeout=60) for process in processes]
        results = [orjson.loads(m.value()) for m in broker.read_all("results")]
        inputs = {f"{m.topic()}/{m.partition()}@{m.offset()}" for m in broker.read_all("data")}

    assert exit_codes[0] == -signal.SIGKILL
    assert exit_codes[1:] == [0] * (replicas - 1), "a surviving replica did not drain cleanly"
    scored = Counter(result["position"] for result in results)
    assert set(scored) == inputs, "an input has no result"
    duplicates = sum(count - 1 for count in scored.values())
    # The killed replica's uncommitted batches, at most: those in flight (produced, not yet
    # acknowledged), the one it was scoring, and one whose asynchronous commit was not stored.
    window = (KafkaSettings().max_batches_in_flight + 2) * MAX_RECORDS
    print(
        f"\n{replicas} replicas: {len(inputs)} inputs, {len(results)} results, "
        f"{duplicates} duplicates (bound {window})"
    )
    assert duplicates <= window
    survivors = sum(_records_scored(tmp_path / f"replica-{i}.log") for i in range(1, replicas))
    assert survivors < len(results), "the killed replica had scored nothing: no takeover shown"


def _constant(key: str, value: float, name: str) -> bytes:
    return encode_descriptor(
        ModelDescriptor(
            name=name, data_type=key, model_type=ModelType.ONNX, data=onnx_constant(1, value)
        )
    )


def _records(start: int, count: int) -> list[tuple[bytes | None, bytes]]:
    keys = ("k1", "k2", "k3")
    return [
        (None, orjson.dumps({"dataType": keys[i % 3], "features": [float(i)]}))
        for i in range(start, start + count)
    ]


def test_a_replica_restarted_after_sigkill_rebuilds_every_model_before_scoring(
    tmp_path: Path,
) -> None:
    with running_broker() as broker:
        broker.create_topics("data", partitions=PARTITIONS)
        broker.create_topics("models", "results", "errors")
        broker.produce(
            "models",
            [
                (b"k1", _constant("k1", 1.0, "one")),
                (b"k2", _constant("k2", 2.0, "two")),
                (b"k3", _constant("k3", 3.0, "three")),
                (b"k2", _constant("k2", 5.0, "five")),  # replaces "two"
                (
                    b"k3",
                    encode_descriptor(
                        ModelDescriptor(
                            name="junk", data_type="k3", model_type=ModelType.ONNX, data=b"x"
                        )
                    ),
                ),
            ],
        )
        broker.produce("data", _records(0, 3000))
        config = _config(tmp_path, broker)
        crashed = _replica(config, tmp_path / "crashed.log", "--http-port", "0")
        try:
            _wait_until_scoring(tmp_path / "crashed.log")
        finally:
            crashed.send_signal(signal.SIGKILL)
            crashed.wait(timeout=60)
        broker.produce("data", _records(3000, 300))
        restarted = _replica(config, tmp_path / "restarted.log")
        try:
            inputs = {f"{m.topic()}/{m.partition()}@{m.offset()}" for m in broker.read_all("data")}
            deadline = time.monotonic() + 120
            while {
                orjson.loads(m.value())["position"] for m in broker.read_all("results")
            } < inputs:
                assert time.monotonic() < deadline, "the restarted replica did not finish"
                time.sleep(1)
        finally:
            restarted.send_signal(signal.SIGTERM)
            assert restarted.wait(timeout=60) == 0
        results = [orjson.loads(m.value()) for m in broker.read_all("results")]
        errors = [orjson.loads(m.value()) for m in broker.read_all("errors")]

    assert _records_scored(tmp_path / "restarted.log") > 0
    expected = {"k1": ("one", 1.0), "k2": ("five", 5.0), "k3": ("three", 3.0)}
    assert {(r["key"], r["model"], r["value"]) for r in results} == {
        (key, name, value) for key, (name, value) in expected.items()
    }, "a record was scored by a model other than its key's latest good one"
    assert [(e["kind"], e["model"]) for e in errors] == [("model_rejected", "junk")] * 2, (
        "each replica rejects the junk model once, and no record failed"
    )
