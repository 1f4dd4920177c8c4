"""PMML models through JPMML, the reference evaluator (model type PMML).

Inputs are the model's input fields, by name; the published value is the first target field: a
number for regression; for classification the label, published as a number when every category
of the target is a numeral (the wine models' quality ``"5"`` is 5, as the other formats publish
it), else as text. Rows are evaluated in one JVM call per batch.

One JVM per process, started by the first PMML model (JPype backend: in-process, no orphan
``java`` processes). A JVM that cannot start (no Java installed, options it refuses, too little
memory) fails every PMML model with the reason, and the other formats serve on. The failure is
remembered for the process, not retried: HotSpot refuses to create a second JVM in a process
whose first creation failed. HotSpot also *exits the process* on some start failures (an
impossible ``-Xmx``): the start is first tried in a child process, once, which costs ~0.5 s.
"""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
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
_jvm: JvmStart | None = None  # the process's JvmStart, made by the first PMML model

JVM_PROBE_TIMEOUT_S = 120.0
# -Xrs: the JVM leaves the process's signal handlers alone. Without it, HotSpot takes SIGTERM
# and SIGINT over and exits the process at once: a replica told to stop would skip its last
# commit and flush, and its outputs' acknowledgements would be lost.
JVM_OPTIONS = ("-Xrs",)
# A child that starts the JVM as this process would, with the same library, options, class path
# and environment (JAVA_TOOL_OPTIONS included), then exits.
_JVM_PROBE = (
    "import jpype; from jpmml_evaluator import _classpath; "
    f"jpype.startJVM(*{JVM_OPTIONS!r}, classpath=_classpath(user_classpath=[]))"
)
_FIX_INSTALL = (
    "install Java 17, or set JAVA_HOME to a Java home holding lib/server/libjvm.so, then "
    "restart streamserve"
)
_FIX_OPTIONS = (
    "check the JVM options in JAVA_TOOL_OPTIONS{set} and the memory the process may use, then "
    "restart streamserve"
)


@dataclass(frozen=True)
class JvmState:
    """Whether this process's JVM for PMML models is up, and if it could not start, why."""

    attempts: int  # starts tried: at most one per process
    started: bool
    failure: str | None


class JvmStart:
    """The one attempt of a process to start its JVM, and its outcome, kept for every later
    PMML model: a JVM that failed to start cannot start again in this process."""

    def __init__(self) -> None:
        self.attempts = 0
        self.failure: str | None = None

    def backend(self, jpype: Any, backends: Any) -> Any:
        """The JPype backend, starting the JVM if it is not running; raises
        :class:`ModelLoadError` with the reason if it cannot start (now, or when first tried)."""
        if self.failure is None and not jpype.isJVMStarted():
            self.attempts += 1
            self.failure = _start_failure(jpype)
        if self.failure is not None:
            raise ModelLoadError(self.failure)
        try:
            if not jpype.isJVMStarted():
                # started here rather than by JPypeBackend(), which takes no JVM options; the
                # class path is jpmml_evaluator's own
                jpype.startJVM(*JVM_OPTIONS, classpath=backends._classpath(user_classpath=[]))
            return backends.JPypeBackend()
        except Exception as err:  # the child started it: this process should, too
            self.failure = _unavailable(f"{type(err).__name__}: {err}", _options_fix())
            raise ModelLoadError(self.failure) from err


def jvm_state() -> JvmState:
    """This process's JVM for PMML models: not tried yet, started, or failed (and why)."""
    jvm = _jvm or JvmStart()
    return JvmState(jvm.attempts, _backend is not None, jvm.failure)


def _jpmml() -> tuple[Any, Any]:
    """``(jpmml_evaluator module, the process's JPype backend)``, starting the JVM once."""
    global _backend, _jvm
    jpmml_evaluator = import_optional("jpmml_evaluator", "for PMML models", "pmml")
    jpype = import_optional("jpype", "for PMML models", "pmml")
    backends = import_optional("jpmml_evaluator.jpype", "for PMML models", "pmml")
    with _backend_lock:
        if _backend is None:
            _jvm = _jvm or JvmStart()
            _backend = _jvm.backend(jpype, backends)
            # The JVM counts the thread that created it as its non-daemon "main" thread and waits
            # for it at exit, even after that (loader) thread has ended: the process would hang.
            jpype.java.lang.Thread.detach()
            _confine_java_imports()
    attach_as_daemon()
    return jpmml_evaluator, _backend


def _start_failure(jpype: Any) -> str | None:
    """Why the JVM would not start in this process, found without risking it; ``None`` if it
    started in a child process."""
    try:
        jpype.getDefaultJVMPath()
    except (jpype.JVMNotFoundException, jpype.JVMNotSupportedException) as err:
        return _unavailable(f"no Java installation found ({err})", _FIX_INSTALL)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _JVM_PROBE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # HotSpot writes its start errors to stdout
            timeout=JVM_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _unavailable(f"it did not start within {JVM_PROBE_TIMEOUT_S:.0f} s", _options_fix())
    except OSError as err:
        return _unavailable(f"a child process to try it in failed: {err}", _options_fix())
    if child.returncode == 0:
        return None
    why = _jvm_complaint(child.stdout.decode("utf-8", "replace"))
    return _unavailable(why or f"it exited with status {child.returncode}", _options_fix())


def _jvm_complaint(output: str) -> str:
    """The JVM's own words from a failed start's output: its lines before Python's traceback,
    and the traceback's last line (the exception)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Picked up JAVA_TOOL_OPTIONS")]
    if "Traceback (most recent call last):" in lines:
        before = lines[: lines.index("Traceback (most recent call last):")]
        lines = [*before, lines[-1]]
    return ": ".join(lines)[:1000]


def _options_fix() -> str:
    return _FIX_OPTIONS.format(set=" (set)" if os.environ.get("JAVA_TOOL_OPTIONS") else "")


def _unavailable(cause: str, fix: str) -> str:
    return (
        f"the Java VM that runs PMML models cannot start in this process: {cause}; {fix}. "
        "PMML models are refused until then; models of other formats are served"
    )


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
        try:
            jpmml_evaluator, backend = _jpmml()
        except ModelLoadError as err:
            raise ModelLoadError(f"PMML model {request.name!r} rejected: {err}") from err
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
