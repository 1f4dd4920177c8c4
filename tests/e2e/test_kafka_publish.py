"""The original example over Kafka with the CLI only: publish-model, publish-data, serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka_broker import run_streamserve, running_broker

from streamserve.codecs.protobuf import encode_wine_record
from streamserve.runtime.streams import write_length_delimited

pytestmark = pytest.mark.slow


def test_publish_models_and_records_then_serve_them(
    tmp_path: Path, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    records = tmp_path / "wine.bin"
    with records.open("wb") as out:
        write_length_delimited([encode_wine_record(row[:11]) for row in wine_matrix[:100]], out)
    with running_broker() as broker:
        broker.create_topics("data", "results", "errors")
        # As docs/kafka.md says to: the broker refuses a message without a key on it.
        broker.create_topics("models", config={"cleanup.policy": "compact"})
        config = tmp_path / "streamserve.toml"
        config.write_text(f"""
[codec]
format = "wine-protobuf"
[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["data"]
""")
        saved = run_streamserve(
            "publish-model",
            str(wine_dir / "saved" / "1"),
            "--key",
            "wine",
            "--name",
            "wine-savedmodel",
            "--config",
            str(config),
        )
        assert saved.returncode == 0, saved.stderr.decode()
        assert b"published wine-savedmodel (TENSORFLOWSAVED" in saved.stdout
        data = run_streamserve(
            "publish-data",
            str(records),
            "--length-delimited",
            "--rate",
            "2000",
            "--config",
            str(config),
        )
        assert data.returncode == 0, data.stderr.decode()
        assert b"published 100 records to data" in data.stdout

        served = run_streamserve(
            "serve",
            "--runtime",
            "kafka",
            "--config",
            str(config),
            "--count",
            "100",
            "--timeout-s",
            "200",
        )
        assert served.returncode == 0, served.stderr.decode()[-2000:]
        results = [orjson.loads(m.value()) for m in broker.read_all("results")]
    assert len(results) == 100
    assert {r["model"] for r in results} == {"wine-savedmodel"}
    assert {r["value"] for r in results} <= set(range(9))


def test_publish_model_refuses_what_it_cannot_describe(tmp_path: Path) -> None:
    unknown = tmp_path / "model.bin"
    unknown.write_bytes(b"x")
    done = run_streamserve(
        "publish-model", str(unknown), "--key", "k", "--bootstrap-servers", "127.0.0.1:9"
    )
    assert done.returncode == 2
    assert b"cannot tell the model type of model.bin: give --type" in done.stderr
