"""The HTTP API over the Kafka runtime: readiness after catch-up and assignment, a swap from
the models topic visible through the API, V2 inference on the live model, consumer lag."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from kafka_broker import running_broker, serve_kafka_command
from prometheus_client.parser import text_string_to_metric_families

from builders import onnx_constant
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

pytestmark = pytest.mark.slow


def _model(name: str, value: float) -> bytes:
    return encode_descriptor(
        ModelDescriptor(
            name=name,
            data_type="k",
            model_type=ModelType.ONNX,
            data=onnx_constant(1, value),
            version=name,
        )
    )


def _samples(http: httpx.Client) -> dict[str, float]:
    families = text_string_to_metric_families(http.get("/metrics").text)
    return {sample.name: sample.value for family in families for sample in family.samples}


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 90
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_the_api_follows_the_kafka_runtime(tmp_path: Path) -> None:
    with running_broker() as broker:
        broker.create_topics("data", "models", "results", "errors")
        broker.produce("models", [(b"k", _model("first", 1.0))])
        config = tmp_path / "streamserve.toml"
        config.write_text(f"""
[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["data"]
""")
        log = tmp_path / "replica.log"
        with log.open("wb") as stderr:
            replica = subprocess.Popen(
                serve_kafka_command(config, "--http-port", "0"),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
        try:
            _until(lambda: "HTTP API on" in log.read_text(), "the API announced")
            url = re.search(r"HTTP API on (http://\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
            http = httpx.Client(base_url=url, timeout=10)
            _until(lambda: http.get("/v2/health/ready").status_code == 200, "ready")

            record = orjson.dumps({"dataType": "k", "features": [1.0]})
            broker.produce("data", [(None, record)] * 100)
            _until(lambda: http.get("/keys").json()["counts"].get("results") == 100, "scored")
            broker.produce("models", [(b"k", _model("second", 2.0))])
            # Loaded off the scoring path: records arriving meanwhile are scored by "first".
            # Once staged, it becomes current at the key's next batch, and scores all of it.
            _until(
                lambda: (http.get("/keys/k").json()["staged"] or {}).get("name") == "second",
                "staged",
            )
            broker.produce("data", [(None, record)] * 10)
            _until(lambda: http.get("/keys").json()["counts"].get("results") == 110, "scored")

            state = http.get("/keys/k").json()
            assert state["current"]["name"] == "second"
            assert state["previous"]["name"] == "first"
            assert state["previous"]["invocations"] == 100
            assert state["current"]["invocations"] == 10
            inferred = http.post(
                "/v2/models/k/infer",
                json={
                    "inputs": [
                        {"name": "input", "shape": [2, 1], "datatype": "FP32", "data": [5, 6]}
                    ]
                },
            ).json()
            assert (inferred["model_version"], inferred["outputs"][0]["data"]) == (
                "second",
                [2.0, 2.0],
            )
            # Every record read: the high watermarks the broker reports leave no lag.
            _until(lambda: _samples(http).get("streamserve_consumer_lag") == 0, "no lag")
            assert _samples(http)["streamserve_results_total"] == 112  # 110 streamed + 2 by V2
            http.close()
        finally:
            replica.send_signal(signal.SIGTERM)
            assert replica.wait(timeout=60) == 0, log.read_text()[-2000:]
