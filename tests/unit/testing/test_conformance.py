"""check_factory on toy formats: each flaw fails the check that names it, and nothing else runs
after the first failure; every model the suite loads is closed, pass or fail."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.base import FactoryContext, InputSpec, LoadRequest, ModelFactory
from streamserve.formats.registry import FactoryClass
from streamserve.testing import (
    CONFORMANCE_CHECKS,
    ConformanceError,
    ConformanceReport,
    check_factory,
)

MODEL = b"toy model"
Score = Callable[[np.ndarray], np.ndarray]


def row_sums(features: np.ndarray) -> np.ndarray:
    return features.sum(axis=1)


class ToyModel:
    def __init__(self, score: Score, width: int) -> None:
        self._score = score
        self.inputs = InputSpec(width)
        self.closed = 0

    def score_batch(self, features: np.ndarray) -> np.ndarray:
        return self._score(features)

    def close(self) -> None:
        self.closed += 1


class ToyFactory:
    format_name = "toy"

    def __init__(self, score: Score = row_sums, width: int = 3) -> None:
        self.score = score
        self.width = width
        self.models: list[ToyModel] = []

    def load(self, request: LoadRequest) -> ToyModel:
        if request.artifact.read_bytes() != MODEL:
            raise ModelLoadError(f"toy model {request.name!r}: not a toy model")
        self.models.append(ToyModel(self.score, self.width))
        return self.models[-1]


def check(
    factory: ModelFactory | FactoryClass,
    width: int = 3,
    *,
    context: FactoryContext | None = None,
    output: OutputRule = OutputRule.AUTO,
) -> ConformanceReport:
    rows = np.random.default_rng(0).normal(size=(64, width))
    return check_factory(factory, MODEL, b"corrupt", rows, context=context, output=output)


def test_a_sound_format_passes_every_check_and_its_models_are_closed() -> None:
    factory = ToyFactory()

    report = check(factory)

    assert report == ConformanceReport("toy", CONFORMANCE_CHECKS)
    assert len(factory.models) == 4  # the checks' model, two instances, one closed twice
    assert all(model.closed for model in factory.models)


def test_a_factory_class_is_built_with_the_context_like_the_registry_does() -> None:
    contexts: list[FactoryContext] = []

    class Built(ToyFactory):
        def __init__(self, context: FactoryContext) -> None:
            super().__init__()
            contexts.append(context)

    context = FactoryContext(threads_per_model=2)
    assert check(Built, context=context).passed == CONFORMANCE_CHECKS
    assert contexts == [context]


def _nondeterministic() -> Score:
    calls = iter(range(1_000_000))
    return lambda features: features.sum(axis=1) + next(calls)


def _mutating(features: np.ndarray) -> np.ndarray:
    features *= 2
    return features.sum(axis=1)


def _raising(features: np.ndarray) -> np.ndarray:
    raise ValueError("backend gone")


@pytest.mark.parametrize(
    ("score", "failed_check", "reason"),
    [
        (_raising, "scores_one_output_per_row", "raised ValueError: backend gone"),
        (lambda f: f.sum(axis=1)[:1], "scores_one_output_per_row", "7 rows scored into 1"),
        (lambda f: np.stack([f[:, 0]] * 2, axis=1), "scores_one_output_per_row", "shape (1, 2)"),
        (lambda f: np.full(len(f), np.nan), "outputs_are_publishable", "not finite"),
        (lambda f: f.astype(complex).sum(axis=1), "outputs_are_publishable", "complex"),
        (_mutating, "leaves_features_unchanged", "changed the features"),
        (_nondeterministic(), "is_deterministic", "scored twice gave different outputs"),
        (lambda f: f.sum(axis=1) - f.sum(), "batch_scores_equal_single_row_scores", "row 0"),
        (lambda f: np.zeros(max(len(f), 1)), "empty_batch_gives_no_outputs", "empty batch"),
    ],
)
def test_a_model_flaw_fails_the_check_that_names_it(
    score: Score, failed_check: str, reason: str
) -> None:
    factory = ToyFactory(score)

    with pytest.raises(ConformanceError) as failure:
        check(factory)

    assert (failure.value.format_name, failure.value.check) == ("toy", failed_check)
    assert reason in failure.value.reason
    assert all(model.closed for model in factory.models)


def test_output_rule_value_lets_a_model_publish_a_row_per_record() -> None:
    factory = ToyFactory(lambda features: features * 2)

    assert check(factory, output=OutputRule.VALUE).passed == CONFORMANCE_CHECKS


def test_a_model_narrower_than_the_sample_fails_describes_inputs() -> None:
    with pytest.raises(ConformanceError, match="declares 3 inputs; the sample rows have 4"):
        check(ToyFactory(), width=4)


class FragileCloseModel(ToyModel):
    def close(self) -> None:
        super().close()
        if self.closed > 1:
            raise RuntimeError("already closed")


class FragileCloseFactory(ToyFactory):
    def load(self, request: LoadRequest) -> ToyModel:
        super().load(request)
        self.models[-1] = FragileCloseModel(self.score, self.width)
        return self.models[-1]


class AcceptsAnything(ToyFactory):
    def load(self, request: LoadRequest) -> ToyModel:
        self.models.append(ToyModel(self.score, self.width))
        return self.models[-1]


class RaisesValueError(ToyFactory):
    def load(self, request: LoadRequest) -> ToyModel:
        if request.artifact.read_bytes() != MODEL:
            raise ValueError("bad magic number")
        return super().load(request)


class NamesNoModel(ToyFactory):
    def load(self, request: LoadRequest) -> ToyModel:
        if request.artifact.read_bytes() != MODEL:
            raise ModelLoadError("not a toy model")
        return super().load(request)


@pytest.mark.parametrize(
    ("factory", "failed_check", "reason"),
    [
        (FragileCloseFactory(), "close_is_idempotent", "RuntimeError: already closed"),
        (AcceptsAnything(), "rejects_corrupt_bytes", "loaded into a model instead of raising"),
        (RaisesValueError(), "rejects_corrupt_bytes", "raised ValueError, not ModelLoadError"),
        (NamesNoModel(), "rejects_corrupt_bytes", "does not name 'corrupt-model'"),
    ],
)
def test_a_factory_flaw_fails_the_check_that_names_it(
    factory: ToyFactory, failed_check: str, reason: str
) -> None:
    with pytest.raises(ConformanceError) as failure:
        check(factory)

    assert failure.value.check == failed_check
    assert reason in failure.value.reason


def test_valid_bytes_that_do_not_load_fail_the_load_check() -> None:
    with pytest.raises(ConformanceError) as failure:
        check_factory(ToyFactory(), b"other", b"corrupt", np.ones((4, 3)))

    assert failure.value.check == "loads"
    assert "ModelLoadError" in failure.value.reason


def test_a_factory_without_a_format_name_fails_first() -> None:
    factory = ToyFactory()
    factory.format_name = ""

    with pytest.raises(ConformanceError, match="'names_its_format'"):
        check(factory)


@pytest.mark.parametrize("sample", [np.ones(3), np.ones((0, 3)), np.ones((4, 0))])
def test_sample_rows_must_be_a_non_empty_matrix(sample: np.ndarray) -> None:
    with pytest.raises(ValueError, match="non-empty 2-D matrix"):
        check_factory(ToyFactory(), MODEL, b"corrupt", sample)


def _booleans_alone_integers_in_a_batch(features: np.ndarray) -> np.ndarray:
    """A vectorized fast path that returns another dtype: True == 1 to Python, not to JSON."""
    positive = features[:, 0] > 0
    return positive if len(features) == 1 else positive.astype(np.int64)


def _complex_alone_floats_in_a_batch(features: np.ndarray) -> np.ndarray:
    sums = features.sum(axis=1)
    return sums.astype(complex) if len(features) == 1 else sums


@pytest.mark.parametrize(
    ("score", "alone", "batched"),
    [
        (_booleans_alone_integers_in_a_batch, "(boolean) alone", "(number) in the batch"),
        (_complex_alone_floats_in_a_batch, "(unpublishable", "(number) in the batch"),
    ],
    ids=["boolean-vs-integer", "complex-vs-float"],
)
def test_rows_scored_alone_must_publish_the_json_type_of_the_same_rows_in_a_batch(
    score: Score, alone: str, batched: str
) -> None:
    """Serving rescores a failing batch row by row and refuses values of another type than the
    model's, so equal values of another JSON type fail conformance."""
    factory = ToyFactory(score)

    with pytest.raises(ConformanceError) as failure:
        check(factory)

    assert failure.value.check == "batch_scores_equal_single_row_scores"
    assert alone in failure.value.reason
    assert batched in failure.value.reason
