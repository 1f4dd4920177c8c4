"""A broker that is down at startup: clear messages while waiting, serving once it is up, one
clear failure (no hang, no crash loop) if it never comes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka_broker import free_port, running_broker, serve_kafka_command

from builders import onnx_constant
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _config(tmp_path: Path, port: int, catch_up_timeout_s: float) -> Path:
    config = tmp_path / "streamserve.toml"
    config.write_text(f"""
[kafka]
bootstrap_servers = "127.0.0.1:{port}"
data_topics = ["data"]
catch_up_timeout_s = {catch_up_timeout_s}
consumer = {{ "session.timeout.ms" = 6000, "heartbeat.interval.ms" = 2000 }}
""")
    return config


def test_a_broker_that_never_comes_gives_one_clear_failure(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        serve_kafka_command(_config(tmp_path, port, 4)),
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
    port = free_port()
    with (tmp_path / "replica.log").open("wb") as log:
        replica = subprocess.Popen(
            serve_kafka_command(_config(tmp_path, port, 120), "--count", "20"),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=ENV,
        )
    try:
        time.sleep(3)  # the replica is up and waiting; the broker is not (chaos timing)
        with running_broker(port) as broker:
            broker.create_topics("data", "models", "results", "errors")
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
                                data=onnx_constant(1, 3.0),
                            )
                        ),
                    )
                ],
            )
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
