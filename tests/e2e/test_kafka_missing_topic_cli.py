"""``streamserve serve --runtime kafka`` with a results topic that was never created (a typo in
the settings): the operator reads, while it waits, which topic is missing and which setting names
it; ``/v2/health/ready`` says not ready; then the replica exits with status 2 and one clear line,
having read no record and committed nothing."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka_broker import running_broker, serve_kafka_command

pytestmark = pytest.mark.slow

WAIT_S = 15


def test_a_missing_results_topic_is_named_with_its_setting(tmp_path: Path) -> None:
    with running_broker() as broker:
        broker.create_topics("data", "models", "errors")
        broker.produce("data", [(None, orjson.dumps({"dataType": "k", "features": [1.0]}))] * 10)
        config = tmp_path / "streamserve.toml"
        config.write_text(f"""
[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["data"]
results_topic = "reslts"
group_id = "missing-results"
catch_up_timeout_s = {WAIT_S}
""")
        log = tmp_path / "replica.log"
        with log.open("wb") as stderr:
            replica = subprocess.Popen(
                serve_kafka_command(config, "--http-port", "0"),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
        readiness = []
        try:
            while replica.poll() is None:
                found = re.search(r"HTTP API on (http://\S+)", log.read_text())
                if found:
                    try:
                        ready = httpx.get(f"{found.group(1)}/v2/health/ready", timeout=5)
                        readiness.append(ready.status_code)
                    except httpx.TransportError:
                        pass  # the API is going away with the replica
                time.sleep(0.5)
            exit_code = replica.wait(timeout=120)
        finally:
            replica.kill()
            replica.wait()
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "missing-results"})
        offsets = consumer.committed([TopicPartition("data", p) for p in range(4)], timeout=30)
        consumer.close()
        errors = broker.read_all("errors")

    stderr = log.read_text()
    assert exit_code == 2, stderr[-3000:]
    missing = "the results topic 'reslts' (kafka.results_topic) does not exist"
    assert f"{missing}; retrying in" in stderr
    assert f"{missing}: gave up after {WAIT_S} s" in stderr
    assert "Traceback" not in stderr
    assert readiness, "the HTTP API never answered while the replica waited"
    assert set(readiness) == {400}
    assert all(offset.offset < 0 for offset in offsets), offsets
    assert errors == []
