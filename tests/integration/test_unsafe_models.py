"""Safety of the new formats: pickles never run, skops trusts only the operator's list, and a
corrupt model of any format is rejected while the current model keeps serving."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from format_models import TRAINERS
from sklearn.base import BaseEstimator

from builders import onnx_constant, onnx_descriptor, wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.serving.core import ServingCore
from streamserve.testing import records_from, serve_records


def malicious_pickle(marker: Path) -> bytes:
    """Protocol-2 pickle opcodes that call os.system(f"touch {marker}") when unpickled.

    Written by hand: this test never imports pickle, and neither does streamserve.
    """
    command = f"touch {marker}".encode()
    return (
        b"\x80\x02cos\nsystem\nq\x00X"
        + len(command).to_bytes(4, "little")
        + command
        + b"q\x01\x85q\x02Rq\x03."
    )


def _serve_bad(core: ServingCore, wine_matrix: np.ndarray, bad: ModelDescriptor) -> dict:
    records = records_from(wine_json_lines(wine_matrix[:10]))
    serve_records(
        core, JsonCodec(), records[:5], models=[onnx_descriptor("good", onnx_constant(11, 1.0))]
    )
    after = serve_records(core, JsonCodec(), records[5:], models=[bad])
    assert [r["model"] for r in after.results] == ["good"] * 5, (
        "the bad model replaced the good one"
    )
    (rejection,) = [e for e in after.errors if e["kind"] == "model_rejected"]
    return rejection


def test_a_malicious_pickle_is_refused_and_never_runs(
    core: ServingCore, wine_matrix: np.ndarray, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payload = malicious_pickle(marker)
    bad = ModelDescriptor(name="evil", data_type="wine", model_type=ModelType.SKLEARN, data=payload)
    rejection = _serve_bad(core, wine_matrix, bad)
    assert "is a pickle" in rejection["reason"]
    assert "refused" in rejection["reason"]
    assert not marker.exists(), "the pickle ran"


class ShadyEstimator(BaseEstimator):
    """Any class the operator did not list: loading it would run its code."""

    def fit(self, features: np.ndarray, target: np.ndarray) -> ShadyEstimator:
        self.n_features_in_ = features.shape[1]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return features[:, 0]


def test_a_skops_file_with_an_untrusted_type_is_refused(
    core: ServingCore, wine_matrix: np.ndarray
) -> None:
    import skops.io

    shady = ShadyEstimator().fit(wine_matrix[:, :11], wine_matrix[:, 11])
    bad = ModelDescriptor(
        name="untrusted", data_type="wine", model_type=ModelType.SKLEARN, data=skops.io.dumps(shady)
    )
    rejection = _serve_bad(core, wine_matrix, bad)
    assert "refused types not in the trusted list" in rejection["reason"]
    assert "ShadyEstimator" in rejection["reason"]


@pytest.mark.parametrize(
    "trainer",
    [
        "torch-export",
        "torch-script",
        "sklearn-forest",
        "xgboost-softprob-ubj",
        "xgboost-regressor-json",
        "lightgbm-multiclass",
    ],
)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_model_of_each_format_is_rejected_with_its_reason(
    trainer: str, damage: str, core: ServingCore, wine_matrix: np.ndarray
) -> None:
    trained = TRAINERS[trainer](wine_matrix)
    data = trained.data[: len(trained.data) // 2] if damage == "truncated" else b"\x00garbage" * 9
    bad = ModelDescriptor(
        name=f"broken-{trainer}",
        data_type="wine",
        model_type=trained.model_type,
        data=data,
        options=trained.options,
    )
    rejection = _serve_bad(core, wine_matrix, bad)
    assert rejection["error_kind"] == "model_load_failed"
    assert f"'broken-{trainer}'" in rejection["reason"]


def _with_members(archive: bytes, replace: dict[str, bytes]) -> bytes:
    """``archive`` (a zip) with the members named in ``replace`` swapped for new bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, replace.get(info.filename, source.read(info.filename)))
    return out.getvalue()


def _weights_config_with_pickle(archive: bytes) -> tuple[str, bytes, str]:
    """The weights config member, rewritten so its first weight says ``use_pickle``, and the
    member that weight's bytes are read from."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        name = next(n for n in source.namelist() if n.endswith("weights_config.json"))
        config = json.loads(source.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    weight = f"{name.rsplit('/', 1)[0]}/{first['path_name']}"
    return name, json.dumps(config).encode(), weight


@pytest.mark.parametrize("where", ["sample inputs", "a weight marked use_pickle"])
def test_a_torch_export_archive_carrying_a_pickle_is_refused_and_never_runs(
    core: ServingCore, wine_matrix: np.ndarray, tmp_path: Path, where: str
) -> None:
    """torch.export.load unpickles without restriction what its weights-only load refuses:
    streamserve loads every pickled member weights-only first and refuses the archive."""
    marker = tmp_path / "pwned"
    archive = TRAINERS["torch-export"](wine_matrix).data
    if where == "sample inputs":
        with zipfile.ZipFile(io.BytesIO(archive)) as source:
            member = next(n for n in source.namelist() if n.endswith(".pt"))
        evil = _with_members(archive, {member: malicious_pickle(marker)})
    else:
        config, rewritten, weight = _weights_config_with_pickle(archive)
        evil = _with_members(archive, {config: rewritten, weight: malicious_pickle(marker)})
    bad = ModelDescriptor(name="evil", data_type="wine", model_type=ModelType.PYTORCH, data=evil)
    rejection = _serve_bad(core, wine_matrix, bad)
    assert "is not a weights-only pickle" in rejection["reason"]
    assert not marker.exists(), "the pickle ran"
