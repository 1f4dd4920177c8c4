"""Known defect (issue 15 review):
after a broker restart, an exactly-once replica hangs for good, and says it
is ready.

docs/kafka.md (When the broker is away): "If the broker goes away while a replica runs,
librdkafka reconnects with backoff ... the batch in hand waits for its outputs'
acknowledgement and its commit. Outputs not acknowledged within kafka.flush_timeout_s stop the
replica without committing." (Security): "a broker restart is no refusal, and is waited for."

With ``exactly_once = true``, the first batch after the broker restarts blocks in
``Producer.send_offsets_to_transaction`` (``KafkaTransport._commit_transactionally``) and never
returns: not within the ``flush_timeout_s`` passed to it as the call's timeout, not ever
(observed > 250 s with a 30 s timeout). A plain confluent-kafka 2.16 / librdkafka 2.16 loop of
consume, produce, send_offsets_to_transaction, commit_transaction hangs the same way after a
restart of Apache Kafka 4.4, so the call's timeout cannot be relied on; streamserve neither
recovers nor stops, and ``/v2/health/ready`` answers 200 throughout. The at-least-once path
resumes within seconds after the same restart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apache_kafka import ApacheKafka, running_apache_kafka
from kafka_broker import serve_kafka_command
from review_support import Topics, make_topics, positions, wait_until, wine_records

from builders import onnx_constant, onnx_descriptor
from streamserve.descriptor import encode_descriptor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

FLUSH_TIMEOUT_S = 30
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()


@pytest.fixture(scope="module")
def kafka() -> Iterator[ApacheKafka]:
    with running_apache_kafka() as broker:
        yield broker


def _config(path: Path, kafka: ApacheKafka, topics: Topics) -> Path:
    path.write_text(f"""
[codec]
format = "wine-protobuf"

[batch]
max_records = 50
max_delay_ms = 20

[kafka]
bootstrap_servers = "{kafka.bootstrap}"
group_id = "eos-restart"
data_topics = ["{topics.data}"]
models_topic = "{topics.models}"
results_topic = "{topics.results}"
errors_topic = "{topics.errors}"
exactly_once = true
flush_timeout_s = {FLUSH_TIMEOUT_S}
""")
    return path


def _ready(log: Path) -> bool:
    match = re.search(r"HTTP API on (http://\S+)", log.read_text(errors="replace"))
    if match is None:
        return False
    try:
        return httpx.get(f"{match.group(1)}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_exactly_once_replica_serves_on_or_stops_after_a_broker_restart(
    kafka: ApacheKafka, tmp_path: Path
) -> None:
    topics = make_topics(kafka, "eos-restart")
    log = tmp_path / "replica.log"
    # A subprocess has no plug-in mean model: an ONNX constant serves key "wine" (it is
    # published after the mean one, so it is current).
    model = onnx_descriptor("constant", onnx_constant(11, 1.0), key="wine")
    kafka.produce(topics.models, [(b"wine", encode_descriptor(model))])
    config = _config(tmp_path / "streamserve.toml", kafka, topics)
    with log.open("wb") as stderr:
        replica = subprocess.Popen(
            [*DIE_WITH_PARENT, *serve_kafka_command(config, "--http-port", "0")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    try:
        assert wait_until(lambda: _ready(log), 120), log.read_text(errors="replace")[-2000:]
        kafka.produce(topics.data, wine_records(200))
        assert wait_until(lambda: len(positions(kafka, topics.results)) >= 200, 60)
        kafka.restart()
        kafka.produce(topics.data, wine_records(200, seed=1))
        restarted_at = time.monotonic()
        limit_s = FLUSH_TIMEOUT_S + 60
        wait_until(
            lambda: replica.poll() is not None or len(positions(kafka, topics.results)) >= 400,
            limit_s,
            1.0,
        )
        served = len(positions(kafka, topics.results))
        exit_code = replica.poll()
        still_ready = exit_code is None and _ready(log)
    finally:
        if replica.poll() is None:
            replica.send_signal(signal.SIGKILL)
        replica.wait(30)
    waited_s = time.monotonic() - restarted_at
    assert served >= 400 or exit_code is not None, (
        "docs/kafka.md promise broken (a broker restart is waited for; outputs not acknowledged "
        "within flush_timeout_s stop the replica): after a broker restart the exactly-once "
        f"replica scored none of the 200 new records in {waited_s:.0f} s (flush_timeout_s = "
        f"{FLUSH_TIMEOUT_S}), did not stop, and /v2/health/ready answered "
        f"{'200' if still_ready else 'not 200'}; {served} results in all"
    )
