"""The original FLIP-23 wine models, served exactly: known answers and JPMML's predictions."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamserve.codecs.csv import wine_csv_codec
from streamserve.demo.wine import PMML_FILES, wine_descriptors
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.artifact import pack_directory
from streamserve.serving.core import ServingCore
from streamserve.testing import records_from, serve_records

ALL_ZERO_RECORD = b";".join([b"0"] * 12)
PMML_NAMES = [
    "fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides",
    "free sulfur dioxide", "total sulfur dioxide", "density", "pH", "sulphates", "alcohol",
]  # fmt: skip


def frozen_graph(wine_dir: Path) -> ModelDescriptor:
    return ModelDescriptor(
        name="frozen",
        data_type="wine",
        model_type=ModelType.TENSORFLOW,
        data=(wine_dir / "optimized_WineQuality.pb").read_bytes(),
    )


def saved_model_by_location(wine_dir: Path) -> ModelDescriptor:
    return ModelDescriptor(
        name="saved",
        data_type="wine",
        model_type=ModelType.TENSORFLOWSAVED,
        location=str(wine_dir / "saved" / "1"),
    )


def saved_model_as_archive(wine_dir: Path) -> ModelDescriptor:
    return ModelDescriptor(
        name="saved-archive",
        data_type="wine",
        model_type=ModelType.TENSORFLOWSAVED,
        data=pack_directory(wine_dir / "saved" / "1"),
    )


def decision_tree_pmml(wine_dir: Path) -> ModelDescriptor:
    return ModelDescriptor(
        name="dtc",
        data_type="wine",
        model_type=ModelType.PMML,
        data=(wine_dir / "winequalityDecisionTreeClassification.pmml").read_bytes(),
    )


@pytest.mark.parametrize(
    "make_descriptor",
    [frozen_graph, saved_model_by_location, saved_model_as_archive, decision_tree_pmml],
)
def test_all_zero_record_scores_5(make_descriptor, core: ServingCore, wine_dir: Path) -> None:
    descriptor = make_descriptor(wine_dir)
    run = serve_records(
        core, wine_csv_codec(), records_from([ALL_ZERO_RECORD]), models=[descriptor]
    )
    assert run.errors == []
    assert len(run.results) == 1
    assert run.results[0]["value"] == 5, "a JSON number: numeric class labels are numbers"
    assert run.results[0]["model"] == descriptor.name


def test_first_csv_row_scores_5_with_the_frozen_graph(core: ServingCore, wine_dir: Path) -> None:
    first_row = (wine_dir / "winequality_red.csv").read_bytes().splitlines()[0]
    run = serve_records(
        core, wine_csv_codec(), records_from([first_row]), models=[frozen_graph(wine_dir)]
    )
    assert [result["value"] for result in run.results] == [5]


def test_frozen_graph_gives_tensorflows_own_argmax_on_every_row(
    core: ServingCore, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((wine_dir / "optimized_WineQuality.pb").read_bytes())
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
    )
    direct = wrapped.prune(
        wrapped.graph.get_tensor_by_name("dense_1_input:0"),
        wrapped.graph.get_tensor_by_name("dense_3/Sigmoid:0"),
    )
    expected = direct(tf.constant(wine_matrix[:, :11], dtype=tf.float32)).numpy().argmax(axis=1)

    run = serve_records(
        core, wine_csv_codec(), _csv_records(wine_dir), models=[frozen_graph(wine_dir)]
    )
    assert run.errors == []
    assert [result["value"] for result in run.results] == expected.tolist()


def _csv_records(wine_dir: Path):
    lines = [line for line in (wine_dir / "winequality_red.csv").read_bytes().splitlines() if line]
    return records_from(lines, prefix="winequality_red.csv")


@pytest.mark.slow
@pytest.mark.parametrize("pmml_file", PMML_FILES)
def test_every_pmml_model_gives_jpmmls_predictions_on_all_rows(
    pmml_file: str, core: ServingCore, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    from jpmml_evaluator import make_evaluator

    evaluator = make_evaluator(str(wine_dir / pmml_file)).verify()
    target = evaluator.getTargetFields()[0].getName()
    expected = evaluator.evaluateAll(pd.DataFrame(wine_matrix[:, :11], columns=PMML_NAMES))[target]
    expected = pd.to_numeric(expected)  # the classifiers' labels "5", "6" are published as numbers

    descriptor = ModelDescriptor(
        name=pmml_file,
        data_type="wine",
        model_type=ModelType.PMML,
        data=(wine_dir / pmml_file).read_bytes(),
    )
    run = serve_records(core, wine_csv_codec(), _csv_records(wine_dir), models=[descriptor])

    assert run.errors == []
    assert len(run.results) == len(wine_matrix) == 1599
    assert [r["position"] for r in run.results] == [
        f"winequality_red.csv:{n}" for n in range(1, 1600)
    ]
    assert [r["value"] for r in run.results] == expected.tolist()


def test_linear_regression_pmml_matches_its_own_coefficients(
    core: ServingCore, wine_dir: Path, wine_matrix: np.ndarray
) -> None:
    """An independent check: the regression table of the PMML file, computed with numpy."""
    path = wine_dir / "winequalityLinearRegression.pmml"
    namespace = {"p": "http://www.dmg.org/PMML-4_3"}
    table = ET.parse(path).getroot().find(".//p:RegressionTable", namespace)
    assert table is not None
    expected = np.full(len(wine_matrix), float(table.attrib["intercept"]))
    for predictor in table.findall("p:NumericPredictor", namespace):
        column = PMML_NAMES.index(predictor.attrib["name"])
        expected += float(predictor.attrib["coefficient"]) * wine_matrix[:, column]

    descriptor = ModelDescriptor(
        name="lr", data_type="wine", model_type=ModelType.PMML, data=path.read_bytes()
    )
    run = serve_records(core, wine_csv_codec(), _csv_records(wine_dir), models=[descriptor])
    np.testing.assert_allclose([r["value"] for r in run.results], expected, rtol=1e-12)


def test_every_original_model_publishes_json_numbers_on_one_key(
    core: ServingCore, wine_dir: Path
) -> None:
    """Contract 4: a key's value keeps one JSON type across swaps; the wine models' classes,
    regressions and argmax indices are all numbers, so every swap of the demo is accepted."""
    rows = _csv_records(wine_dir)[:3]
    values: dict[str, list[object]] = {}
    for descriptor in wine_descriptors(wine_dir):
        run = serve_records(core, wine_csv_codec(), rows, models=[descriptor])
        assert run.errors == [], run.errors
        assert {r["model"] for r in run.results} == {descriptor.name}
        values[descriptor.name] = [r["value"] for r in run.results]
    assert len(values) == 9
    for name, published in values.items():
        assert all(type(v) in (int, float) for v in published), (name, published)


def test_demo_publishes_the_original_models_in_order(wine_dir: Path) -> None:
    descriptors = wine_descriptors(wine_dir)
    assert [d.model_type for d in descriptors] == (
        [ModelType.TENSORFLOWSAVED] + [ModelType.PMML] * 7 + [ModelType.TENSORFLOW]
    )
    assert {d.data_type for d in descriptors} == {"wine"}
