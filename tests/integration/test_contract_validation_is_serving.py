"""Contract 3, sharpened: validation runs exactly the checks that serving and encoding run, a
model older than one already served never becomes current, and a model that keeps failing
while serving is quarantined. Each test reproduces a defect found in review."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from builders import onnx_constant, onnx_descriptor
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory, records_from

KEY = "wine"
PYTHON_TYPE = 201  # each test registers its own Python model under this type


def _core(
    function: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    gated: threading.Event | None = None,
    **settings: object,
) -> tuple[ServingCore, FunctionFactory | GatedFactory | None]:
    registry = FactoryRegistry(FactoryContext())
    factory: FunctionFactory | GatedFactory | None = None
    if function is not None:
        factory = FunctionFactory(function, width=11)
        if gated is not None:
            factory = GatedFactory(factory, gated)
        registered = factory
        registry.register(PYTHON_TYPE, lambda context: registered)
    return ServingCore(ServingSettings(**settings), registry), factory  # type: ignore[arg-type]


def _python_model(name: str, **options: str) -> ModelDescriptor:
    return ModelDescriptor(
        name=name, data_type=KEY, model_type=PYTHON_TYPE, data=b"python", options=options
    )


def _score(core: ServingCore, count: int = 4) -> list[tuple[str, object]]:
    """Scores ``count`` records of the key: (model or error kind, value or reason) each."""
    payloads = [orjson.dumps({"dataType": KEY, "features": [0.5] * 11}) for _ in range(count)]
    outcome = core.score(JsonCodec().decode(records_from(payloads)))
    scored: list[tuple[str, object]] = [
        (group.model.name, value) for group in outcome.groups for value in group.values.tolist()
    ]
    return scored + [(error.kind, error.reason) for error in outcome.errors]


def _serve_good_model(core: ServingCore, name: str = "good", value: float = 1.0) -> None:
    core.submit_model(onnx_descriptor(name, onnx_constant(11, value), key=KEY))
    assert core.wait_for_models(60)
    assert {model for model, _ in _score(core)} == {name}


def _rejections(core: ServingCore) -> list[str]:
    return [e.reason for e in core.drain_events() if e.kind is ModelEventKind.REJECTED]


UNPUBLISHABLE: dict[str, tuple[Callable[[np.ndarray], object], str]] = {
    "complex numbers": (lambda x: x[:, 0] + 1j, "complex"),
    "objects": (lambda x: np.array([{"a": 1}] * len(x), dtype=object), "objects"),
    "dates": (lambda x: np.array(["2026-01-01"] * len(x), dtype="datetime64[D]"), "datetime64"),
    "NaN": (lambda x: x[:, 0] * np.nan, "not finite"),
    "infinity": (lambda x: x[:, 0] + np.inf, "not finite"),
    "one row short": (lambda x: x[1:, 0], "outputs for"),
    "a scalar": (lambda x: np.float64(1.0), "outputs for"),
    "text with a lone surrogate": (
        lambda x: np.array(["\ud800"] * len(x)),
        "not valid UTF-8",
    ),
    "bytes that are not UTF-8": (lambda x: np.array([b"\xff"] * len(x)), "not UTF-8"),
}


@pytest.mark.parametrize("case", list(UNPUBLISHABLE))
def test_a_model_whose_output_serving_refuses_is_rejected_and_the_good_one_serves(
    case: str,
) -> None:
    function, reason = UNPUBLISHABLE[case]
    core, _ = _core(function)  # type: ignore[arg-type]
    with core:
        _serve_good_model(core)
        core.submit_model(_python_model("bad"))
        assert core.wait_for_models(60)
        rejections = _rejections(core)
        assert len(rejections) == 1, rejections
        assert reason in rejections[0], rejections
        assert {model for model, _ in _score(core)} == {"good"}


def test_byte_string_labels_are_published_as_text_not_a_crash() -> None:
    """A scikit-learn classifier trained on byte-string labels (skops; ``classes_`` of dtype S)
    used to pass validation, then kill the run loop in the JSON encoder."""
    import skops.io
    from sklearn.tree import DecisionTreeClassifier

    features = np.random.default_rng(1).random((40, 11))
    labels = np.where(features[:, 0] > 0.5, b"high", b"low")
    model = DecisionTreeClassifier(random_state=0).fit(features, labels)
    assert model.classes_.dtype.kind == "S"
    core = ServingCore(ServingSettings())
    with core:
        core.submit_model(
            ModelDescriptor(name="bytes", data_type=KEY, model_type=5, data=skops.io.dumps(model))
        )
        assert core.wait_for_models(60)
        scored = _score(core)
    assert scored == [("bytes", model.predict(np.full((1, 11), 0.5))[0].decode())] * 4


def test_a_model_of_another_value_type_is_rejected_unless_it_declares_it() -> None:
    core, _ = _core(lambda x: np.array(["high"] * len(x)))
    with core:
        _serve_good_model(core)  # numbers
        core.submit_model(_python_model("text"))
        assert core.wait_for_models(60)
        (reason,) = _rejections(core)
        assert "returns string values where its key publishes number values" in reason
        assert "value_type=string" in reason

        core.submit_model(_python_model("text-on-purpose", value_type="string"))
        assert core.wait_for_models(60)
        assert _rejections(core) == []
        assert set(_score(core)) == {("text-on-purpose", "high")}


def test_a_late_load_never_beats_a_rollback() -> None:
    """P current; an older S still loading; a newer C swaps in; rollback to P; S finishes:
    S must never become current, and the history holds C once and not P."""
    gate = threading.Event()
    core, factory = _core(lambda x: x[:, 0], gated=gate, loader_threads=2)
    assert isinstance(factory, GatedFactory)
    with core:
        _late_load_after_rollback(core, factory, gate)


def _late_load_after_rollback(
    core: ServingCore, factory: GatedFactory, gate: threading.Event
) -> None:
    try:
        _serve_good_model(core, "P", 1.0)
        core.submit_model(_python_model("S"))
        assert factory.loading.wait(60)
        core.submit_model(onnx_descriptor("C", onnx_constant(11, 3.0), key=KEY))
        slot = core.find_slot(KEY)
        assert slot is not None
        _wait_until(lambda: slot.staged is not None)
        assert {model for model, _ in _score(core)} == {"C"}
        slot.rollback()
        assert {model for model, _ in _score(core)} == {"P"}
        gate.set()
        assert core.wait_for_models(60)
        superseded = [e.name for e in core.drain_events() if e.kind is ModelEventKind.SUPERSEDED]
        assert superseded == ["S"]
        assert {model for model, _ in _score(core)} == {"P"}
        assert [s.name for s in slot.served_history()] == ["C"]
    finally:
        gate.set()  # a load still waiting ends, so the core can close


def test_a_model_that_keeps_failing_is_quarantined_and_the_previous_one_restored() -> None:
    calls = {"n": 0}

    def fails_after_validation(features: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 1:  # its probe passed; then its backend went away, say
            raise RuntimeError("the model's backend is gone")
        return features[:, 0]

    core, _ = _core(fails_after_validation, quarantine_after_failures=10)
    with core:
        _serve_good_model(core, "P")
        core.submit_model(_python_model("flaky"))
        assert core.wait_for_models(60)
        for _ in range(2):  # 8 records in 2 batches: not yet
            assert {kind for kind, _ in _score(core, count=4)} == {"scoring_failed"}
        assert core.find_slot(KEY).current.identity.name == "flaky"  # type: ignore[union-attr]
        third = _score(core, count=4)  # 12 records in 3 batches: quarantined after this one
        assert {kind for kind, _ in third} == {"scoring_failed"}
        assert {model for model, _ in _score(core)} == {"P"}, "the previous model serves again"
        events = [e for e in core.drain_events() if e.kind is ModelEventKind.QUARANTINED]
        assert [e.name for e in events] == ["flaky"]
        assert "12 records in a row failed" in events[0].reason
        assert "the model's backend is gone" in events[0].reason
        slot = core.find_slot(KEY)
        assert slot is not None
        assert slot.quarantined_total == 1
        assert slot.rejections[-1].kind == "quarantined"
        assert core.counts["model_quarantines"] == 1


def test_records_failing_now_and_then_do_not_quarantine_a_good_model() -> None:
    def fails_on_negative(features: np.ndarray) -> np.ndarray:
        if (features[:, 0] < 0).any():
            raise ValueError("negative input")
        return features[:, 0]

    core, _ = _core(fails_on_negative, quarantine_after_failures=3)
    with core:
        core.submit_model(_python_model("picky"))
        assert core.wait_for_models(60)
        for _ in range(5):
            payloads = [orjson.dumps({"dataType": KEY, "features": [-1.0] * 11})] * 2 + [
                orjson.dumps({"dataType": KEY, "features": [1.0] * 11})
            ]
            outcome = core.score(JsonCodec().decode(records_from(payloads)))
            assert outcome.result_count == 1
            assert outcome.error_count == 2
        slot = core.find_slot(KEY)
        assert slot is not None
        assert slot.quarantined_total == 0


def _wait_until(condition: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(600):
        if condition():
            return
        event.wait(0.1)
    raise AssertionError("condition not met within 60 s")
