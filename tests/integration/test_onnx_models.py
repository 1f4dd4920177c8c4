"""ONNX models exported in the test from models trained in the test give the library's answers."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression

from builders import onnx_descriptor, onnx_named_linear, wine_json_lines
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.serving.core import ServingCore
from streamserve.testing import records_from, serve_records


def _export(estimator, width: int, **options) -> bytes:
    onnx_model = convert_sklearn(
        estimator, initial_types=[("input", FloatTensorType([None, width]))], **options
    )
    return onnx_model.SerializeToString()


def test_classifier_labels_match_scikit_learn(core: ServingCore, wine_matrix: np.ndarray) -> None:
    features, quality = wine_matrix[:, :11], wine_matrix[:, 11].astype(int)
    classifier = RandomForestClassifier(n_estimators=25, max_depth=8, random_state=0)
    classifier.fit(features, quality)
    descriptor = onnx_descriptor("rf-classifier", _export(classifier, 11))

    run = serve_records(
        core, JsonCodec(), records_from(wine_json_lines(wine_matrix)), models=[descriptor]
    )

    assert run.errors == []
    assert [r["value"] for r in run.results] == classifier.predict(features).tolist()


def test_regressor_values_match_scikit_learn(core: ServingCore, wine_matrix: np.ndarray) -> None:
    features, quality = wine_matrix[:, :11], wine_matrix[:, 11]
    regressor = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0)
    regressor.fit(features, quality)
    descriptor = onnx_descriptor("rf-regressor", _export(regressor, 11))

    run = serve_records(
        core, JsonCodec(), records_from(wine_json_lines(wine_matrix)), models=[descriptor]
    )

    assert run.errors == []
    np.testing.assert_allclose(
        [r["value"] for r in run.results], regressor.predict(features), rtol=1e-5
    )


def test_named_inputs_take_features_by_name_in_any_field_order(
    core: ServingCore, wine_matrix: np.ndarray
) -> None:
    features, quality = wine_matrix[:200, :11], wine_matrix[:200, 11]
    regressor = LinearRegression().fit(features, quality)
    onnx_bytes = onnx_named_linear(list(WINE_FEATURES), regressor.coef_, regressor.intercept_)
    shuffled = random.Random(0)
    lines = []
    for row in features:
        fields = list(zip(WINE_FEATURES, map(float, row), strict=True))
        shuffled.shuffle(fields)
        lines.append(orjson.dumps({"dataType": "wine", **dict(fields)}))

    run = serve_records(
        core,
        JsonCodec(),
        records_from(lines),
        models=[onnx_descriptor("named-lr", onnx_bytes)],
    )

    assert run.errors == []
    np.testing.assert_allclose(
        [r["value"] for r in run.results], regressor.predict(features), rtol=1e-4
    )


@pytest.mark.parametrize("rule", ["VALUE", "ARGMAX"])
def test_output_rules_apply_to_class_scores(
    core: ServingCore, wine_matrix: np.ndarray, rule: str
) -> None:
    from streamserve.descriptor import OutputRule

    features, quality = wine_matrix[:, :11], wine_matrix[:, 11].astype(int)
    classifier = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0)
    classifier.fit(features, quality)
    onnx_bytes = _export(classifier, 11, options={id(classifier): {"zipmap": False}})
    descriptor = onnx_descriptor(
        "scores", onnx_bytes, output=OutputRule[rule], options={"output": "probabilities"}
    )

    run = serve_records(
        core, JsonCodec(), records_from(wine_json_lines(wine_matrix[:50])), models=[descriptor]
    )

    probabilities = classifier.predict_proba(features[:50])
    values = [r["value"] for r in run.results]
    if rule == "VALUE":
        np.testing.assert_allclose(values, probabilities, atol=1e-5)
    else:
        assert values == probabilities.argmax(axis=1).tolist()
