"""A broker that is down at startup: clear messages while waiting, serving once it is up, one
clear failure (no hang, no crash loop) if it never comes. A broker that crashes mid-run: the
replica waits it out, reconnects and loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka_broker import Broker, free_port, running_broker, serve_kafka_command

from builders import onnx_constant
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _config(tmp_path: Path, bootstrap: str, catch_up_timeout_s: float) -> Path:
    config = tmp_path / "streamserve.toml"
    config.write_text(f"""
[kafka]
bootstrap_servers = "{bootstrap}"
data_topics = ["data"]
catch_up_timeout_s = {catch_up_timeout_s}
""")
    return config


def _constant_model(value: float) -> bytes:
    return encode_descriptor(
        ModelDescriptor(
            name="constant", data_type="k", model_type=ModelType.ONNX, data=onnx_constant(1, value)
        )
    )


def test_a_broker_that_never_comes_gives_one_clear_failure(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        serve_kafka_command(_config(tmp_path, f"127.0.0.1:{port}", 4)),
        capture_output=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr[-2000:]
    assert f"Kafka at 127.0.0.1:{port} is not answering" in stderr
    assert "retrying in" in stderr
    assert "gave up after 4 s" in stderr
    assert "Traceback" not in stderr
    assert time.monotonic() - started < 60


def test_a_replica_started_before_its_broker_waits_then_serves(
    tmp_path: Path, wine_matrix: np.ndarray
) -> None:
    with running_broker() as broker:
        broker.stop()  # down, its address known: started again on the same ports below
        with (tmp_path / "replica.log").open("wb") as log:
            replica = subprocess.Popen(
                serve_kafka_command(_config(tmp_path, broker.bootstrap, 120), "--count", "20"),
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=ENV,
            )
        try:
            time.sleep(3)  # the replica is up and waiting; the broker is not (chaos timing)
            broker.start()
            broker.create_topics("data", "models", "results", "errors")
            broker.produce("models", [(b"k", _constant_model(3.0))])
            broker.produce(
                "data",
                [(None, orjson.dumps({"dataType": "k", "features": [1.0]})) for _ in range(20)],
            )
            assert replica.wait(timeout=120) == 0, (tmp_path / "replica.log").read_text()
            results = [orjson.loads(m.value()) for m in broker.read_all("results")]
        finally:
            replica.kill()
            replica.wait()
    assert [r["value"] for r in results] == [3.0] * 20
    assert "retrying in" in (tmp_path / "replica.log").read_text()


def _publish_in_steps(broker: Broker, total: int, done: threading.Event) -> None:
    """``total`` records, 100 every 0.1 s, retried by the producer while the broker is down."""
    for start in range(0, total, 100):
        broker.produce(
            "data",
            [
                (None, orjson.dumps({"dataType": "k", "features": [float(i)]}))
                for i in range(start, start + 100)
            ],
        )
        time.sleep(0.1)
    done.set()


def _positions(broker: Broker, topic: str) -> set[str]:
    return {orjson.loads(m.value())["position"] for m in broker.read_all(topic)}


def test_a_broker_crash_mid_run_is_waited_out_and_nothing_is_lost(tmp_path: Path) -> None:
    total = 4000
    with running_broker() as broker:
        broker.create_topics("data", "models", "results", "errors")
        broker.produce("models", [(b"k", _constant_model(7.0))])
        config = _config(tmp_path, broker.bootstrap, 120)
        log_path = tmp_path / "replica.log"
        with log_path.open("wb") as log:
            replica = subprocess.Popen(
                serve_kafka_command(config), stdout=subprocess.DEVNULL, stderr=log, env=ENV
            )
        try:
            published = threading.Event()
            publisher = threading.Thread(target=_publish_in_steps, args=(broker, total, published))
            publisher.start()
            _wait_for(lambda: len(_positions(broker, "results")) >= 500, "first results")
            broker.kill()  # SIGKILL mid-stream: batches in flight, outputs unacknowledged
            time.sleep(5)
            assert replica.poll() is None, log_path.read_text()[-3000:]
            broker.restart()  # on the same log dir: what was acknowledged is still there
            publisher.join()
            inputs = {f"{m.topic()}/{m.partition()}@{m.offset()}" for m in broker.read_all("data")}
            _wait_for(lambda: _positions(broker, "results") >= inputs, "every record's result")
            results = [orjson.loads(m.value()) for m in broker.read_all("results")]
        finally:
            replica.send_signal(signal.SIGTERM)
            exit_code = replica.wait(timeout=60)
    stderr = log_path.read_text()
    assert exit_code == 0, stderr[-3000:]
    assert len(inputs) >= total
    assert {r["value"] for r in results} == {7.0}
    assert "reconnecting with backoff" in stderr
    assert "Traceback" not in stderr
    print(f"\nbroker crash: {len(inputs)} inputs, {len(results)} results")


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
