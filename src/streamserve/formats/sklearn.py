"""scikit-learn estimators saved with skops (model type SKLEARN). Never pickle.

A skops file is loaded only if every type it would instantiate is trusted: skops' defaults plus
the server's ``sklearn_trusted_types`` setting. The list is the operator's, never the model
message's, so a publisher cannot widen it. Pickle and joblib payloads are refused before any byte
of them is interpreted: unpickling runs arbitrary code.

Inputs are named by ``feature_names_in_`` when the estimator was fitted on named columns, else
positional (``n_features_in_``). Option ``method``: ``predict`` (default), ``predict_proba`` or
``decision_function``.
"""

from __future__ import annotations

import zipfile
from io import BytesIO
from typing import Any

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    RawOutputModel,
    import_optional,
)

METHODS = ("predict", "predict_proba", "decision_function")
PICKLE_PROTOCOL_OPCODE = 0x80


def _skops() -> Any:
    return import_optional("skops.io", "for scikit-learn models", "sklearn")


class SklearnModel(RawOutputModel):
    def __init__(self, estimator: Any, method: str, output: OutputRule, name: str) -> None:
        names = getattr(estimator, "feature_names_in_", None)
        if names is not None:
            spec = InputSpec(len(names), tuple(str(n) for n in names))
        else:
            spec = InputSpec(int(estimator.n_features_in_))
        super().__init__(spec, output, name)
        self._estimator = estimator
        self._predict = getattr(estimator, method)
        self._frame = _frame_builder(names)

    def raw_output(self, features: FloatMatrix) -> Any:
        return self._predict(self._frame(features))

    def close(self) -> None:
        self._estimator = self._predict = None


def _frame_builder(names: Any) -> Any:
    """Estimators fitted on a DataFrame want one back (or they warn about feature names)."""
    if names is None:
        return lambda features: features
    import pandas

    columns = list(names)
    return lambda features: pandas.DataFrame(features, columns=columns)


class SklearnFactory:
    format_name = "scikit-learn"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context

    def load(self, request: LoadRequest) -> Model:
        sio = _skops()
        where = f"scikit-learn model {request.name!r}"
        data = request.artifact.read_bytes()
        _refuse_pickles(data, where)
        method = request.options.get("method", "predict")
        if method not in METHODS:
            raise ModelLoadError(f"{where}: option method={method!r} is not one of {METHODS}")
        try:
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as err:
            raise ModelLoadError(
                f"{where} from {request.artifact.describe()} is not a skops file: {err}"
            ) from err
        refused = sorted(set(untrusted) - set(self._context.sklearn_trusted_types))
        if refused:
            raise ModelLoadError(
                f"{where}: refused types not in the trusted list: "
                f"{', '.join(refused)} (an operator may add them to "
                "serving.sklearn_trusted_types)"
            )
        try:
            estimator = sio.loads(data, trusted=list(untrusted))
        except Exception as err:
            raise ModelLoadError(f"{where} cannot be loaded: {err}") from err
        if not hasattr(estimator, method):
            raise ModelLoadError(f"{where}: {type(estimator).__name__} has no {method}()")
        _set_threads(estimator, self._context.threads_per_model)
        return SklearnModel(estimator, method, request.output, request.name)


def _refuse_pickles(data: bytes, where: str) -> None:
    """Only a skops file (a zip archive) gets past here; a pickle is named as such."""
    if zipfile.is_zipfile(BytesIO(data)):
        return
    if data[:1] == bytes([PICKLE_PROTOCOL_OPCODE]):
        raise ModelLoadError(
            f"{where}: the data is a pickle (or joblib) file; those run code "
            "when loaded and are refused. Save the model with skops.io.dump"
        )
    raise ModelLoadError(
        f"{where}: the data is not a skops file (skops files are zip "
        "archives; pickle and joblib files are refused)"
    )


def _set_threads(estimator: Any, threads: int) -> None:
    if "n_jobs" in getattr(estimator, "get_params", dict)():
        estimator.set_params(n_jobs=threads)
