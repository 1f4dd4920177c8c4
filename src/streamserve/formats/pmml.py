"""PMML models through JPMML, the reference evaluator (model type PMML).

One JVM per process, started by the first PMML model (JPype backend: in-process, no orphan
``java`` processes). Inputs are the model's input fields, by name; the published value is the
first target field: a number for regression; for classification the label, published as a
number when every category of the target is a numeral (the wine models' quality ``"5"`` is 5,
as the other formats publish it), else as text. Rows are evaluated in one JVM call per batch.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Any

import numpy as np

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError, ScoringError
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    import_optional,
)

_backend_lock = threading.Lock()
_backend: Any = None


def _jpmml() -> tuple[Any, Any]:
    """``(jpmml_evaluator module, the process's JPype backend)``, starting the JVM once."""
    global _backend
    jpmml_evaluator = import_optional("jpmml_evaluator", "for PMML models", "pmml")
    jpype = import_optional("jpype", "for PMML models", "pmml")
    backends = import_optional("jpmml_evaluator.jpype", "for PMML models", "pmml")
    with _backend_lock:
        if _backend is None:
            _backend = backends.JPypeBackend()
            # The JVM counts the thread that created it as its non-daemon "main" thread and waits
            # for it at exit, even after that (loader) thread has ended: the process would hang.
            jpype.java.lang.Thread.detach()
            _confine_java_imports()
    attach_as_daemon()
    return jpmml_evaluator, _backend


class _JavaDomainFinder(importlib.abc.MetaPathFinder):
    """JPype's import finder, answering only for the Java domains it registered (``org``, ...).

    Unconfined, it claims every top-level name that is also a Java package: after the JVM
    starts, ``import dill`` (which torch tries) returns a Java package and ``import torch`` fails.
    """

    def __init__(self, finder: Any, domains: Any) -> None:
        self._finder = finder
        self._domains = domains

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.partition(".")[0] not in self._domains:
            return None
        return self._finder.find_spec(fullname, path, target)


def _confine_java_imports() -> None:
    import jpype.imports

    for index, finder in enumerate(sys.meta_path):
        if type(finder).__name__ == "_JImportLoader":
            sys.meta_path[index] = _JavaDomainFinder(finder, jpype.imports._JDOMAINS)


def attach_as_daemon() -> None:
    """Attaches the calling thread to the JVM as a daemon, so exit never waits for it.

    JPype attaches a thread on its first Java call as a non-daemon thread; a scoring or loader
    thread that ends without detaching would keep the JVM, and so the process, from exiting.
    """
    import jpype

    if not jpype.java.lang.Thread.isAttached():
        jpype.java.lang.Thread.attachAsDaemon()


class PmmlModel:
    def __init__(self, evaluator: Any, pandas: Any, name: str) -> None:
        self._evaluator = evaluator
        self._pandas = pandas
        self._name = name
        names = tuple(str(field.getName()) for field in evaluator.getInputFields())
        self._inputs = InputSpec(width=len(names), names=names)
        targets = evaluator.getTargetFields()
        if not targets:
            raise ModelLoadError(f"PMML model {name!r} declares no target field")
        self._target = str(targets[0].getName())
        self._numeric_labels = _all_numerals(pandas, targets[0].javaModelField.getCategories())

    @property
    def inputs(self) -> InputSpec:
        return self._inputs

    def score_batch(self, features: FloatMatrix) -> np.ndarray:
        attach_as_daemon()
        frame = self._pandas.DataFrame(features, columns=list(self._inputs.names or ()))
        results = self._evaluator.evaluateAll(frame)
        if "errors" in results.columns:
            failed = results["errors"].dropna()
            if len(failed):
                raise ScoringError(
                    f"PMML model {self._name!r}: {len(failed)} of {len(frame)} "
                    f"rows failed, first: {failed.iloc[0]}"
                )
        values = results[self._target].to_numpy()
        if self._numeric_labels:
            return np.asarray(self._pandas.to_numeric(values))
        return np.asarray(values)

    def close(self) -> None:
        self._evaluator = None


def _all_numerals(pandas: Any, categories: Any) -> bool:
    """Whether a target has categories and every one reads as a finite number, read as serving
    reads them (pandas)."""
    if categories is None:
        return False
    labels = [str(category) for category in categories]
    try:
        return bool(labels) and bool(np.isfinite(pandas.to_numeric(labels)).all())
    except (TypeError, ValueError):
        return False


class PmmlFactory:
    format_name = "pmml"

    def __init__(self, context: FactoryContext) -> None:
        self._context = context

    def load(self, request: LoadRequest) -> Model:
        jpmml_evaluator, backend = _jpmml()
        import pandas  # a dependency of jpmml-evaluator

        if request.output is OutputRule.ARGMAX:
            raise ModelLoadError(
                f"PMML model {request.name!r}: output rule ARGMAX does not "
                "apply; PMML models publish their target field"
            )
        try:
            evaluator = jpmml_evaluator.make_evaluator(
                request.artifact.read_bytes(), backend=backend
            )
            evaluator.verify()
            # The fields are resolved lazily: a model whose schema misses one fails here.
            return PmmlModel(evaluator, pandas, request.name)
        except ModelLoadError:
            raise
        except Exception as err:  # JPMML's Java exceptions arrive as JavaError
            raise ModelLoadError(
                f"PMML model {request.name!r} from {request.artifact.describe()} "
                f"cannot be loaded: {err}"
            ) from err
