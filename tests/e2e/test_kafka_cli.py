"""``streamserve serve --runtime kafka`` configured by a TOML file, against a real broker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka_broker import running_broker, serve_kafka_command

from streamserve.codecs.protobuf import encode_wine_record
from streamserve.descriptor import ModelDescriptor, ModelType, encode_descriptor

pytestmark = pytest.mark.slow


def test_serve_with_the_kafka_runtime(
    tmp_path: Path, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    with running_broker() as broker:
        broker.create_topics("wine-data", "models", "results", "errors")
        broker.produce(
            "models",
            [
                (
                    None,
                    encode_descriptor(
                        ModelDescriptor(
                            name="tree",
                            data_type="wine",
                            model_type=ModelType.PMML,
                            data=(
                                wine_dir / "winequalityDecisionTreeClassification.pmml"
                            ).read_bytes(),
                        )
                    ),
                )
            ],
        )
        broker.produce("wine-data", [(None, encode_wine_record(r[:11])) for r in wine_matrix[:50]])
        config = tmp_path / "streamserve.toml"
        config.write_text(f"""
[codec]
format = "wine-protobuf"

[kafka]
bootstrap_servers = "{broker.bootstrap}"
data_topics = ["wine-data"]
""")
        done = subprocess.run(
            serve_kafka_command(config, "--count", "50", "--timeout-s", "120"),
            capture_output=True,
            timeout=300,
            check=False,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        results = [orjson.loads(m.value()) for m in broker.read_all("results")]
    assert len(results) == 50
    assert {r["model"] for r in results} == {"tree"}
    assert {r["value"] for r in results} <= {3, 4, 5, 6, 7, 8}
    assert "50 records, 50 results, 0 errors" in done.stderr.decode()
