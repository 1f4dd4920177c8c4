"""Formats added from outside through the entry-point group, and one process that serves PMML
(a JVM) and PyTorch side by side."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from streamserve.descriptor import ModelDescriptor, encode_descriptor

PLUGIN_MODULE = """
import numpy as np

from streamserve.formats.base import InputSpec


class WeightedSumModel:
    def __init__(self, weight: float, width: int) -> None:
        self.weight = weight
        self.inputs = InputSpec(width)

    def score_batch(self, features):
        return features.sum(axis=1) * self.weight

    def close(self) -> None:
        pass


class WeightedSumFactory:
    format_name = "weighted-sum"

    def __init__(self, context) -> None:
        self.context = context

    def load(self, request):
        return WeightedSumModel(float(request.artifact.read_bytes()),
                                int(request.options.get("width", "3")))
"""


def build_plugin(site: Path) -> None:
    """An installed distribution: a module plus its dist-info with entry_points.txt."""
    site.mkdir()
    (site / "weighted_sum_plugin.py").write_text(PLUGIN_MODULE)
    info = site / "weighted_sum_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: weighted-sum-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[streamserve.model_factories]\n1000 = weighted_sum_plugin:WeightedSumFactory\n"
    )


def test_a_format_from_an_outside_package_serves_through_the_entry_point_group(
    tmp_path: Path,
) -> None:
    build_plugin(tmp_path / "site")
    models = tmp_path / "models"
    models.mkdir()
    (models / "sum.desc").write_bytes(
        encode_descriptor(
            ModelDescriptor(name="weighted-sum", data_type="points", model_type=1000, data=b"2.5")
        )
    )
    data = tmp_path / "points.jsonl"
    data.write_bytes(
        b"\n".join(
            orjson.dumps({"dataType": "points", "features": [i, 1.0, 2.0]}) for i in range(4)
        )
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamserve",
            "serve",
            "--models",
            str(models),
            "--data",
            str(data),
            "--codec",
            "json",
        ],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    results = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [(r["model"], r["value"]) for r in results] == [
        ("weighted-sum", (i + 3.0) * 2.5) for i in range(4)
    ]


@pytest.mark.parametrize(
    ("first_file", "first_type", "torch_import"),
    [
        # The JVM (PMML) starts first: torch must still import and serve.
        ("winequalityLinearRegression.pmml", "PMML", "import torch"),
        # TensorFlow loads first: triton, which torch imports when installed, crashed the
        # process (a segmentation fault); the torch format keeps it out.
        (
            "optimized_WineQuality.pb",
            "TENSORFLOW",
            "from streamserve.formats.torch import import_torch; torch = import_torch()",
        ),
    ],
)
def test_a_pytorch_model_loads_in_a_process_that_serves_another_format_first(
    wine_dir: Path, first_file: str, first_type: str, torch_import: str
) -> None:
    script = textwrap.dedent(f"""
        import io, sys
        from pathlib import Path
        from streamserve.descriptor import ModelDescriptor, ModelType
        from streamserve.serving.core import ServingCore
        from streamserve.settings import ServingSettings

        core = ServingCore(ServingSettings())
        first = Path({str(wine_dir / first_file)!r}).read_bytes()
        core.submit_model(ModelDescriptor(name="first", data_type="a",
                                          model_type=ModelType.{first_type}, data=first))
        assert core.wait_for_models(120)
        {torch_import}  # only now, with the other format's runtime loaded
        program = torch.export.export(torch.nn.Linear(11, 1), (torch.zeros(2, 11),),
                                      dynamic_shapes=({{0: torch.export.Dim("rows")}},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        core.submit_model(ModelDescriptor(name="torch", data_type="b",
                                          model_type=ModelType.PYTORCH, data=buffer.getvalue()))
        assert core.wait_for_models(120)
        events = [(e.name, e.kind.value, e.reason) for e in core.drain_events()]
        core.close()
        print(events)
        sys.exit(0 if [k for _, k, _ in events] == ["model_staged"] * 2 else 1)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-3000:]
