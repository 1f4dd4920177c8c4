"""Safety of the new formats: pickles never run, skops trusts only the operator's list, and a
corrupt model of any format is rejected while the current model keeps serving."""

from __future__ import annotations

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
