"""The conformance suite every model format passes, built in or from an outside package.

A package that adds a format through the ``streamserve.model_factories`` entry-point group
runs it in its own tests (with pytest or any other runner; the suite needs none)::

    import numpy as np
    from streamserve.testing import check_factory

    from my_format import MyFactory, train_tiny_model  # the package's factory class, a trainer

    def test_my_format_passes_the_streamserve_conformance_suite() -> None:
        data = train_tiny_model()  # the bytes a ModelDescriptor of this format carries
        rows = np.random.default_rng(0).normal(size=(64, 4))  # 4: the model's input width
        report = check_factory(MyFactory, data, data[: len(data) // 2], rows)
        assert report.passed  # a failing check raises ConformanceError, naming the check

:func:`check_factory` runs the checks of :data:`CONFORMANCE_CHECKS` in order: the factory names
its format; a valid model loads into a :class:`~streamserve.formats.base.Model` whose inputs
match the sample's width; batches of 1, 7 and 256 rows score into one value per row, values that
serving publishes; scoring leaves its features alone, repeats itself, and gives every row of a
batch what the row gets alone, of the same JSON type (serving rescores a failing batch row by
row, and refuses values of another type than the model's); an empty batch
never yields outputs (it may raise: serving never scores one); two instances score alike and
close independently; ``close()`` may be called twice; corrupt and empty bytes are rejected with
a :class:`~streamserve.errors.ModelLoadError` naming the model. The first check that fails
raises :class:`ConformanceError` (an ``AssertionError``) naming it and why; when all pass,
:func:`check_factory` returns a :class:`ConformanceReport`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError, ModelValidationError, ScoringError
from streamserve.formats.artifact import Artifact, InlineArtifact
from streamserve.formats.base import (
    FactoryContext,
    FloatMatrix,
    InputSpec,
    LoadRequest,
    Model,
    ModelFactory,
)
from streamserve.formats.registry import FactoryClass
from streamserve.serving.output import VALUE_TYPE_OPTION, check_probe, publishable

MODEL_NAME = "conformance-model"
BATCH_SIZES = (1, 7, 256)
COMPARED_ROWS = 64


class ConformanceError(AssertionError):
    """A format failed the conformance check named ``check``, for ``reason``."""

    def __init__(self, format_name: str, check: str, reason: str) -> None:
        super().__init__(f"format {format_name!r} fails conformance check {check!r}: {reason}")
        self.format_name = format_name
        self.check = check
        self.reason = reason


@dataclass(frozen=True)
class ConformanceReport:
    """The format checked, and the checks it passed: all of them, in the order they ran."""

    format_name: str
    passed: tuple[str, ...]


def check_factory(
    factory: ModelFactory | FactoryClass,
    model: bytes | Artifact,
    corrupt: bytes,
    sample: npt.ArrayLike,
    *,
    context: FactoryContext | None = None,
    options: Mapping[str, str] | None = None,
    output: OutputRule = OutputRule.AUTO,
    rtol: float = 1e-6,
) -> ConformanceReport:
    """Runs the conformance suite on a model format; raises :class:`ConformanceError` naming the
    first check that fails.

    ``factory`` is a factory instance, or a factory class that is built with ``context`` (as the
    registry builds entry points). ``model`` is a valid model's bytes (or an artifact), loaded
    with ``options`` and ``output`` as a descriptor would give them; ``corrupt`` are bytes the
    factory must reject. ``sample`` are feature rows (rows x the model's input width; 64 or more
    distinct rows make the batch checks meaningful). Float outputs of rows scored alone compare
    to the batch's within ``rtol``; everything else compares exactly.
    """
    context = context or FactoryContext()
    subject = _Subject(
        factory=_factory_from(factory, context),
        artifact=InlineArtifact(model) if isinstance(model, bytes) else model,
        corrupt=corrupt,
        sample=_sample_from(sample),
        options=dict(options or {}),
        output=output,
        context=context,
        rtol=rtol,
    )
    return _run_checks(subject)


def _factory_from(factory: ModelFactory | FactoryClass, context: FactoryContext) -> ModelFactory:
    """An instance as it is; a class (or any callable without ``load``) built with ``context``."""
    if isinstance(factory, type) or not hasattr(factory, "load"):
        return cast(FactoryClass, factory)(context)
    return cast(ModelFactory, factory)


def _sample_from(sample: npt.ArrayLike) -> FloatMatrix:
    matrix = np.array(sample, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"sample rows must be a non-empty 2-D matrix, not of shape {matrix.shape}")
    return matrix


@dataclass
class _Subject:
    """The factory under test, what it is tested with, and the model loaded for the checks."""

    factory: ModelFactory
    artifact: Artifact
    corrupt: bytes
    sample: FloatMatrix
    options: Mapping[str, str]
    output: OutputRule
    context: FactoryContext
    rtol: float
    loaded: list[Model] = field(default_factory=list)

    def load(self, artifact: Artifact, name: str = MODEL_NAME) -> Model:
        request = LoadRequest(name, artifact, self.options, self.output, self.context)
        return self.factory.load(request)

    @property
    def model(self) -> Model:
        """The model most checks read, loaded on first use and closed after the last check."""
        if not self.loaded:
            self.loaded.append(self.load(self.artifact))
        return self.loaded[0]

    def rows(self, count: int) -> FloatMatrix:
        """``count`` rows of the sample (a fresh array), repeating it when it has fewer."""
        return np.resize(self.sample, (count, self.sample.shape[1]))

    def score(self, model: Model, features: FloatMatrix) -> np.ndarray:
        return np.asarray(model.score_batch(features))


class _CheckFailedError(Exception):
    """Raised inside a check; the runner turns it into a :class:`ConformanceError`."""


def _require(condition: bool, reason: str) -> None:
    """An ``assert`` that ``python -O`` keeps."""
    if not condition:
        raise _CheckFailedError(reason)


def _run_checks(subject: _Subject) -> ConformanceReport:
    format_name = str(getattr(subject.factory, "format_name", type(subject.factory).__name__))
    passed: list[str] = []
    try:
        for name, check in _CHECKS:
            try:
                check(subject)
            except _CheckFailedError as failure:
                raise ConformanceError(format_name, name, str(failure)) from failure
            except Exception as err:
                reason = f"raised {type(err).__name__}: {err}"
                raise ConformanceError(format_name, name, reason) from err
            passed.append(name)
    finally:
        for model in subject.loaded:
            with contextlib.suppress(Exception):  # a failing close is its checks' to report
                model.close()
    return ConformanceReport(format_name, tuple(passed))


def _same(first: np.ndarray, second: np.ndarray, rtol: float) -> bool:
    """Equal values of one published JSON type: Python's ``True == 1`` and ``1 + 0j == 1.0``
    hold, but serving refuses a batch whose value type is not the model's."""
    if first.shape != second.shape or _published_type(first) != _published_type(second):
        return False
    if first.dtype.kind == "f" and second.dtype.kind == "f":
        return bool(np.allclose(first, second, rtol=rtol, atol=0.0))
    return bool(first.tolist() == second.tolist())


def _published_type(values: np.ndarray) -> str:
    """The JSON type serving publishes ``values`` as, or why it publishes none."""
    try:
        return publishable(values, len(values) if values.ndim else 1).value_type
    except ScoringError as err:
        return f"unpublishable ({err})"


def _shown(values: np.ndarray) -> str:
    return f"{values.tolist()!r} ({_published_type(values)})"


def _names_its_format(subject: _Subject) -> None:
    name = getattr(subject.factory, "format_name", None)
    _require(isinstance(name, str) and bool(name), f"format_name is {name!r}, not a name")


def _loads(subject: _Subject) -> None:
    model = subject.model
    _require(isinstance(model, Model), f"load returned a {type(model).__name__}, not a Model")


def _describes_inputs(subject: _Subject) -> None:
    spec = subject.model.inputs
    _require(isinstance(spec, InputSpec), f"inputs is a {type(spec).__name__}, not an InputSpec")
    _require(spec.width > 0, f"the model declares {spec.width} inputs")
    width = subject.sample.shape[1]
    _require(
        spec.width == width,
        f"the model declares {spec.width} inputs; the sample rows have {width} columns",
    )


def _scores_one_output_per_row(subject: _Subject) -> None:
    for rows in BATCH_SIZES:
        output = subject.score(subject.model, subject.rows(rows))
        _require(output.ndim >= 1, f"{rows} rows scored into a scalar: {output!r}")
        _require(len(output) == rows, f"{rows} rows scored into {len(output)} outputs")
        _require(
            output.ndim == 1 or subject.output is OutputRule.VALUE,
            f"{rows} rows scored into shape {output.shape}: under output rule "
            f"{subject.output.name} a model publishes one value per row (a 1-D array)",
        )


def _outputs_are_publishable(subject: _Subject) -> None:
    rows = BATCH_SIZES[-1]
    output = subject.score(subject.model, subject.rows(rows))
    declared = subject.options.get(VALUE_TYPE_OPTION)
    try:
        check_probe(output, rows, name=MODEL_NAME, declared=declared)
    except ModelValidationError as err:
        raise _CheckFailedError(f"serving would refuse the output: {err}") from err


def _leaves_features_unchanged(subject: _Subject) -> None:
    features = subject.rows(COMPARED_ROWS)
    before = features.copy()
    subject.score(subject.model, features)
    _require(np.array_equal(features, before), "score_batch changed the features it was given")


def _is_deterministic(subject: _Subject) -> None:
    features = subject.rows(COMPARED_ROWS)
    first = subject.score(subject.model, features)
    second = subject.score(subject.model, features)
    _require(_same(first, second, rtol=0.0), "the same batch scored twice gave different outputs")


def _batch_scores_equal_single_row_scores(subject: _Subject) -> None:
    features = subject.rows(COMPARED_ROWS)
    batched = subject.score(subject.model, features)
    alone = [subject.score(subject.model, features[i : i + 1]) for i in range(len(features))]
    differing = [
        row
        for row, single in enumerate(alone)
        if not _same(single, batched[row : row + 1], subject.rtol)
    ]
    if differing:
        row = differing[0]
        raise _CheckFailedError(
            f"{len(differing)} of {len(features)} rows score differently in a batch than alone "
            f"(rtol {subject.rtol}); row {row}: {_shown(batched[row : row + 1])} in the batch, "
            f"{_shown(alone[row])} alone"
        )


def _empty_batch_gives_no_outputs(subject: _Subject) -> None:
    features = np.zeros((0, subject.model.inputs.width))
    try:
        output = subject.score(subject.model, features)
    except Exception:  # noqa: BLE001 - serving never scores an empty batch: raising is allowed
        return
    _require(output.ndim >= 1 and len(output) == 0, f"an empty batch scored into {output!r}")


def _instances_score_alike_and_close_independently(subject: _Subject) -> None:
    features = subject.rows(16)
    second = subject.load(subject.artifact)
    try:
        first = subject.load(subject.artifact)
        try:
            expected = subject.score(first, features)
        finally:
            first.close()
        again = subject.score(second, features)
    finally:
        second.close()
    _require(_same(again, expected, rtol=0.0), "two instances of one model score differently")


def _close_is_idempotent(subject: _Subject) -> None:
    model = subject.load(subject.artifact)
    model.close()
    model.close()


def _rejects(subject: _Subject, data: bytes, name: str, what: str) -> None:
    try:
        model = subject.load(InlineArtifact(data), name=name)
    except ModelLoadError as err:
        _require(repr(name) in str(err), f"the ModelLoadError does not name {name!r}: {err}")
        return
    except Exception as err:
        kind = type(err).__name__
        raise _CheckFailedError(f"{what} raised {kind}, not ModelLoadError: {err}") from err
    model.close()
    raise _CheckFailedError(f"{what} loaded into a model instead of raising ModelLoadError")


def _rejects_corrupt_bytes(subject: _Subject) -> None:
    _rejects(subject, subject.corrupt, "corrupt-model", "corrupt model bytes")


def _rejects_empty_bytes(subject: _Subject) -> None:
    _rejects(subject, b"", "empty-model", "empty model bytes")


_CHECKS: tuple[tuple[str, Callable[[_Subject], None]], ...] = (
    ("names_its_format", _names_its_format),
    ("loads", _loads),
    ("describes_inputs", _describes_inputs),
    ("scores_one_output_per_row", _scores_one_output_per_row),
    ("outputs_are_publishable", _outputs_are_publishable),
    ("leaves_features_unchanged", _leaves_features_unchanged),
    ("is_deterministic", _is_deterministic),
    ("batch_scores_equal_single_row_scores", _batch_scores_equal_single_row_scores),
    ("empty_batch_gives_no_outputs", _empty_batch_gives_no_outputs),
    (
        "instances_score_alike_and_close_independently",
        _instances_score_alike_and_close_independently,
    ),
    ("close_is_idempotent", _close_is_idempotent),
    ("rejects_corrupt_bytes", _rejects_corrupt_bytes),
    ("rejects_empty_bytes", _rejects_empty_bytes),
)

CONFORMANCE_CHECKS: tuple[str, ...] = tuple(name for name, _ in _CHECKS)
"""The names of the checks :func:`check_factory` runs, in the order it runs them."""
