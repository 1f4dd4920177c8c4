"""LightGBM's child-process safety check runs once per distinct model text a factory loads: an
evicted model re-made from the same bytes skips it, a text that failed it is checked again."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamserve.descriptor import OutputRule
from streamserve.errors import ModelLoadError
from streamserve.formats.artifact import InlineArtifact
from streamserve.formats.base import FactoryContext, LoadRequest
from streamserve.formats.lightgbm import LightGBMFactory

lightgbm = pytest.importorskip("lightgbm")
pytestmark = pytest.mark.slow  # each check is a child process of about a second


def _model_text(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(200, 3))
    labels = features @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.1, size=200)
    model = lightgbm.LGBMRegressor(n_estimators=5, num_leaves=4, n_jobs=1, verbose=-1)
    model.fit(features, labels)
    return str(model.booster_.model_to_string()).encode()


def _scores(data: bytes, rows: np.ndarray) -> np.ndarray:
    return np.asarray(lightgbm.Booster(model_str=data.decode()).predict(rows))


def _request(data: bytes) -> LoadRequest:
    context = FactoryContext()
    return LoadRequest("m", InlineArtifact(data), {}, OutputRule.AUTO, context)


@pytest.fixture
def child_processes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines of the subprocesses run meanwhile (each still runs for real)."""
    started: list[list[str]] = []
    real_run: Callable[..., Any] = subprocess.run

    def recording_run(args: list[str], *rest: Any, **options: Any) -> Any:
        started.append(list(args))
        return real_run(args, *rest, **options)

    monkeypatch.setattr(subprocess, "run", recording_run)
    return started


def test_a_second_load_of_the_same_bytes_runs_no_child_process(
    child_processes: list[list[str]],
) -> None:
    factory = LightGBMFactory(FactoryContext())
    data = _model_text(seed=1)
    rows = np.random.default_rng(0).normal(size=(4, 3))

    first = factory.load(_request(data))
    assert len(child_processes) == 1
    first.close()
    again = factory.load(_request(data))  # evicted, then needed again
    assert len(child_processes) == 1
    np.testing.assert_array_equal(again.score_batch(rows), _scores(data, rows))
    factory.load(_request(_model_text(seed=2)))  # other bytes: checked
    assert len(child_processes) == 2


def test_a_text_that_failed_the_check_is_checked_again(child_processes: list[list[str]]) -> None:
    factory = LightGBMFactory(FactoryContext())
    broken = _model_text(seed=1)[:200]
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="LightGBM cannot parse it"):
            factory.load(_request(broken))
    assert len(child_processes) == 2


def test_only_the_most_recent_passes_are_remembered(child_processes: list[list[str]]) -> None:
    factory = LightGBMFactory(FactoryContext(), remembered_passes=1)
    one, two = _model_text(seed=1), _model_text(seed=2)
    for data in (one, two, two, one):
        factory.load(_request(data))
    assert len(child_processes) == 3  # ``two`` once; ``one`` again after ``two`` displaced it
