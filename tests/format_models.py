"""Models of every extra format, trained here on the wine data with the real libraries."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.descriptor import ModelType
from streamserve.formats.torch import import_torch


@dataclass(frozen=True)
class TrainedModel:
    model_type: int
    data: bytes
    predict: Callable[[np.ndarray], np.ndarray]  # the library's own prediction on 11 columns
    options: dict[str, str]
    exact: bool  # labels compare exactly; values to float32 precision


def torch_net(matrix: np.ndarray):
    torch = import_torch()

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(11, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    features = torch.tensor(matrix[:, :11], dtype=torch.float32)
    target = torch.tensor(matrix[:, 11:12], dtype=torch.float32)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(features), target).backward()
        optimizer.step()
    net.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.tensor(x, dtype=torch.float32)).numpy()[:, 0]

    return net, features[:4], predict


def torch_export(matrix: np.ndarray) -> TrainedModel:
    torch = import_torch()

    net, example, predict = torch_net(matrix)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("rows")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return TrainedModel(ModelType.PYTORCH, buffer.getvalue(), predict, {}, exact=False)


def torch_script(matrix: np.ndarray) -> TrainedModel:
    torch = import_torch()

    net, example, predict = torch_net(matrix)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated; users still bring it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(net, example), buffer)
    return TrainedModel(
        ModelType.PYTORCH, buffer.getvalue(), predict, {"format": "torchscript"}, exact=False
    )


def _frame(matrix: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(matrix[:, :11], columns=list(WINE_FEATURES))


def sklearn_forest(matrix: np.ndarray) -> TrainedModel:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0)
    forest.fit(_frame(matrix), matrix[:, 11].astype(int))
    return TrainedModel(
        ModelType.SKLEARN,
        skops.io.dumps(forest),
        lambda x: forest.predict(_frame(x)),
        {},
        exact=True,
    )


def xgboost_softprob(matrix: np.ndarray) -> TrainedModel:
    import xgboost

    labels = matrix[:, 11].astype(int) - 3  # qualities 3..8 -> classes 0..5
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1)
    model.fit(_frame(matrix), labels)
    booster = model.get_booster()
    data = booster.save_raw(raw_format="ubj")
    return TrainedModel(
        ModelType.XGBOOST, bytes(data), lambda x: model.predict(_frame(x)), {}, exact=True
    )


def xgboost_regressor_json(matrix: np.ndarray) -> TrainedModel:
    import xgboost

    model = xgboost.XGBRegressor(n_estimators=20, max_depth=4, n_jobs=1)
    model.fit(matrix[:, :11], matrix[:, 11])
    data = model.get_booster().save_raw(raw_format="json")
    return TrainedModel(ModelType.XGBOOST, bytes(data), model.predict, {}, exact=False)


def lightgbm_multiclass(matrix: np.ndarray) -> TrainedModel:
    import lightgbm

    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=15, n_jobs=1, verbose=-1)
    model.fit(_frame(matrix), matrix[:, 11].astype(int))
    text = model.booster_.model_to_string()
    classes = model.classes_
    return TrainedModel(
        ModelType.LIGHTGBM,
        text.encode(),
        lambda x: classes[model.booster_.predict(_frame(x)).argmax(axis=1)] - 3,
        {},
        exact=True,
    )


def lightgbm_regressor(matrix: np.ndarray) -> TrainedModel:
    import lightgbm

    model = lightgbm.LGBMRegressor(n_estimators=20, num_leaves=15, n_jobs=1, verbose=-1)
    model.fit(matrix[:, :11], matrix[:, 11])
    return TrainedModel(
        ModelType.LIGHTGBM,
        model.booster_.model_to_string().encode(),
        model.predict,
        {},
        exact=False,
    )


TRAINERS: dict[str, Callable[[np.ndarray], TrainedModel]] = {
    "torch-export": torch_export,
    "torch-script": torch_script,
    "sklearn-forest": sklearn_forest,
    "xgboost-softprob-ubj": xgboost_softprob,
    "xgboost-regressor-json": xgboost_regressor_json,
    "lightgbm-multiclass": lightgbm_multiclass,
    "lightgbm-regressor": lightgbm_regressor,
}
