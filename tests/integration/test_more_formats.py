"""PyTorch, scikit-learn (skops), XGBoost and LightGBM models, trained here on the wine data,
published as descriptors and served: each gives the library's own predictions."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from format_models import TRAINERS, TrainedModel

from builders import wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.serving.core import ServingCore
from streamserve.testing import records_from, serve_records

NAMED_INPUT_TYPES = {ModelType.SKLEARN, ModelType.XGBOOST, ModelType.LIGHTGBM}
NAMED_TRAINERS = {"sklearn-forest", "xgboost-softprob-ubj", "lightgbm-multiclass"}


def _shuffled_json(rows: np.ndarray) -> list[bytes]:
    """Named records with their fields in a different order each: names, not positions, count."""
    order = random.Random(1)
    lines = []
    for row in rows:
        fields = list(zip(WINE_FEATURES, map(float, row[:11]), strict=True))
        order.shuffle(fields)
        lines.append(orjson.dumps({"dataType": "wine", **dict(fields)}))
    return lines


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_served_predictions_are_the_librarys_own(
    trainer: str, core: ServingCore, wine_matrix: np.ndarray
) -> None:
    trained: TrainedModel = TRAINERS[trainer](wine_matrix)
    descriptor = ModelDescriptor(
        name=trainer,
        data_type="wine",
        model_type=trained.model_type,
        data=trained.data,
        options=trained.options,
    )
    named = trained.model_type in NAMED_INPUT_TYPES and trainer in NAMED_TRAINERS
    lines = _shuffled_json(wine_matrix) if named else wine_json_lines(wine_matrix)

    run = serve_records(core, JsonCodec(), records_from(lines), models=[descriptor])

    assert run.errors == []
    served = [r["value"] for r in run.results]
    expected = trained.predict(wine_matrix[:, :11])
    assert len(served) == len(wine_matrix)
    if trained.exact:
        assert served == np.asarray(expected).tolist()
    else:
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
    assert {r["model"] for r in run.results} == {trainer}


def test_a_positional_model_refuses_named_fields_in_differing_orders(
    core: ServingCore, wine_matrix: np.ndarray
) -> None:
    trained = TRAINERS["lightgbm-regressor"](wine_matrix)
    descriptor = ModelDescriptor(
        name="positional", data_type="wine", model_type=trained.model_type, data=trained.data
    )
    run = serve_records(
        core, JsonCodec(), records_from(_shuffled_json(wine_matrix[:20])), models=[descriptor]
    )
    assert run.results == []
    assert {e["kind"] for e in run.errors} == {"missing_features"}
    assert "name their fields in differing orders, none carried by most" in run.errors[0]["reason"]
