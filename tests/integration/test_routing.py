"""Per-key routing (KeyRouter.route inside ServingCore.score) under hostile routers.

docs/extending.md promises: "Every row must go to exactly one target: a router that loses,
repeats or raises fails that key's records (scoring_failed, with the reason), and other keys go
on", and "results name the key and model that scored them". Contract 4: every input record
produces exactly one output. Contract 1: a swap happens at a batch boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from builders import onnx_descriptor, onnx_linear
from streamserve.api import v2
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.errors import ModelNotFoundError
from streamserve.runtime.batch import process_batch, score_records
from streamserve.serving.core import ServingCore
from streamserve.serving.routing import Rows
from streamserve.settings import ServingSettings
from streamserve.testing import records_from, serve_records

FIRST_FEATURE = np.array([1.0, 0.0])  # linear model: the value is its first positional input


class FunctionRouter:
    def __init__(self, function: Callable[[str, Rows], Mapping[Any, Any]]) -> None:
        self._function = function

    def route(self, key: str, records: Sequence[InputRecord], rows: Rows) -> Mapping[Any, Any]:
        return self._function(key, rows)


@pytest.fixture
def make_core() -> Iterator[Callable[..., ServingCore]]:
    cores: list[ServingCore] = []

    def make(router: object, models: Mapping[str, float]) -> ServingCore:
        core = ServingCore(ServingSettings(), router=router)  # type: ignore[arg-type]
        for key, bias in models.items():
            core.submit_model(
                onnx_descriptor(f"model-{key}", onnx_linear(FIRST_FEATURE, bias), key)
            )
        assert core.wait_for_models(60)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.close()


def _json(key: str, **fields: float) -> bytes:
    return orjson.dumps({"dataType": key, **fields})


def test_a_router_that_mutates_its_rows_cannot_lose_or_repeat_records(
    make_core: Callable[..., ServingCore],
) -> None:
    """A router that writes into the ``rows`` it was given (here: every row becomes the first)
    repeats one record and loses the others; the check compares against the mutated array, so
    nothing fails and the stream emits 4 results for record 1 and none for records 2-4."""

    def overwrite(key: str, rows: Rows) -> Mapping[str, Rows]:
        rows[:] = rows[0]  # a defective router: in-place "normalization" of its input
        return {key: rows}

    core = make_core(FunctionRouter(overwrite), {"k": 0.0})
    records = records_from([_json("k", a=float(i), b=0.0) for i in range(4)])
    run = serve_records(core, JsonCodec(), records)
    outputs = [*run.results, *run.errors]
    positions = sorted(output["position"] for output in outputs)
    assert positions == [record.position for record in records], (
        "contract 4 broken (and extending.md: 'a router that loses, repeats ... fails that "
        f"key's records'): outputs by position {positions}, expected one per record"
    )


def test_score_records_returns_one_output_per_record_even_with_a_mutating_router(
    make_core: Callable[..., ServingCore],
) -> None:
    def overwrite(key: str, rows: Rows) -> Mapping[str, Rows]:
        rows[:] = rows[0]
        return {key: rows}

    core = make_core(FunctionRouter(overwrite), {"k": 0.0})
    outputs = score_records(core, JsonCodec(), [_json("k", a=float(i), b=0.0) for i in range(4)])
    assert len(outputs) == 4, (
        "score_records promises 'one RecordOutput per record, in input order'; it returned "
        f"{len(outputs)} for 4 records (outputs without a record are silently filtered out)"
    )


def test_stream_results_stay_in_input_order_when_a_router_reorders_rows(
    make_core: Callable[..., ServingCore],
) -> None:
    """EncodedBatch: 'A batch's outputs, each list in input order'. A router may hand a target
    its rows in any order (the check sorts them); encode_outcome sorts only with 2+ groups."""
    core = make_core(FunctionRouter(lambda key, rows: {key: rows[::-1]}), {"k": 0.0})
    records = records_from([_json("k", a=float(i), b=0.0) for i in range(4)])
    outputs = process_batch(core, JsonCodec(), records)
    positions = [orjson.loads(value)["position"] for _, value in outputs.results]
    assert positions == [record.position for record in records], (
        f"results are not in input order under a reordering router: {positions}"
    )


def test_a_canary_target_sees_the_features_in_its_source_keys_order(
    make_core: Callable[..., ServingCore],
) -> None:
    """Positional models (no input names) of key k and of its canary k-canary are the same
    linear model (value = first positional input), the canary + 100. Records of k name their
    fields b, a; another key's record, first in the batch, names them a, b. k's model takes k's
    field order (b first); the canary is fed the batch's column order (a first) because the
    field orders are looked up by the *target* key, which has no records of its own. The
    canary then keeps that wrong order for good."""

    def canary(key: str, rows: Rows) -> Mapping[str, Rows]:
        return {"k": rows[:1], "k-canary": rows[1:]} if key == "k" else {key: rows}

    core = make_core(FunctionRouter(canary), {"k": 0.0, "k-canary": 100.0, "o": 0.0})
    batch = [_json("o", a=1.0, b=2.0), *[_json("k", b=20.0, a=10.0)] * 3]
    outputs = score_records(core, JsonCodec(), batch)
    main = [o.value for o in outputs if o.model == "model-k"]
    canaried = [o.value for o in outputs if o.model == "model-k-canary"]
    assert main == [20.0], main  # k's own model reads b first, as k's records order them
    assert canaried == [120.0, 120.0], (
        "a routed record is fed to the canary's positional model in another feature order than "
        f"to its own key's model: the canary scored {canaried} (input a=10) instead of "
        "[120.0, 120.0] (input b=20): wrong results, silently"
    )


def test_one_batch_routed_to_a_slot_twice_is_scored_by_one_model(
    make_core: Callable[..., ServingCore],
) -> None:
    """Batch [T, K, T], K routed to T: T's slot takes a model for the batch twice (its own
    rows, then K's). A new model of T staged between the two (the loader finishes at the worst
    moment, made deterministic here by waiting for it inside the router) becomes current in the
    middle of the batch: record 2 is scored by the new model, record 3 (later) by the old."""
    holder: dict[str, ServingCore] = {}

    def to_t(key: str, rows: Rows) -> Mapping[str, Rows]:
        if key == "K":  # the loader stages T's new model while the batch is being scored
            core = holder["core"]
            core.submit_model(
                onnx_descriptor("model-T-new", onnx_linear(FIRST_FEATURE, 500.0), "T")
            )
            assert core.wait_for_models(60)
        return {"T": rows}

    core = make_core(FunctionRouter(to_t), {"T": 0.0})
    holder["core"] = core
    records = records_from(
        [_json("T", a=1.0, b=0.0), _json("K", a=2.0, b=0.0), _json("T", a=3.0, b=0.0)]
    )
    run = serve_records(core, JsonCodec(), records, models=())
    models = [result["model"] for result in sorted(run.results, key=lambda r: r["position"])]
    assert len(set(models)) == 1, (
        "contract 1 broken under routing: one batch's records of slot T were scored by "
        f"{models} (by record order): a swap inside the batch, and a later record scored by "
        "the older model"
    )


def test_float_indices_from_a_router_are_refused_not_truncated(
    make_core: Callable[..., ServingCore],
) -> None:
    """Garbage from a router (test_routing's 'returns-garbage' case) fails the key's records;
    float 'indices' are silently truncated to integers instead (0.9 -> 0, 2.7 -> 2)."""

    def floats(key: str, rows: Rows) -> Mapping[str, Any]:
        return {key: rows + 0.9}

    core = make_core(FunctionRouter(floats), {"k": 0.0})
    outputs = score_records(core, JsonCodec(), [_json("k", a=float(i), b=0.0) for i in range(3)])
    assert not any(o.ok for o in outputs), (
        "a router returning float row positions is accepted (truncated to ints): "
        f"{[(o.ok, o.value) for o in outputs]}"
    )


class SplitRouter:
    """A canary: the first row of key k stays, the others go to k-canary."""

    def route(self, key: str, records: Sequence[InputRecord], rows: Rows) -> Mapping[str, Rows]:
        return {"k": rows[:1], "k-canary": rows[1:]} if key == "k" else {key: rows}


class TenantRouter:
    """Every tenant served by the model of key k."""

    def route(self, key: str, records: Sequence[InputRecord], rows: Rows) -> Mapping[str, Rows]:
        return {"k": rows} if key.startswith("tenant-") else {key: rows}


V2_BODY = {
    "id": "1",
    "inputs": [{"name": "input", "shape": [3, 2], "datatype": "FP64", "data": [1, 0, 2, 0, 3, 0]}],
}


def test_v2_requests_name_their_model_and_are_never_routed(
    make_core: Callable[..., ServingCore],
) -> None:
    """A V2 request names the model (key) it wants: a canary split of the stream does not apply
    to it, and its rows come back in request order from that key's own model."""
    core = make_core(SplitRouter(), {"k": 0.0, "k-canary": 100.0})
    response = v2.infer(core, "k", V2_BODY)
    assert response["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    assert response["parameters"]["model"] == "model-k"
    stream = score_records(core, JsonCodec(), [_json("k", a=1.0, b=0.0), _json("k", a=2, b=0)])
    assert [(o.key, o.value) for o in stream] == [("k", 1.0), ("k-canary", 102.0)]


def test_v2_for_a_key_served_only_through_the_router_says_it_has_no_model(
    make_core: Callable[..., ServingCore],
) -> None:
    core = make_core(TenantRouter(), {"k": 0.0})
    stream = score_records(core, JsonCodec(), [_json("tenant-a", a=5.0, b=0.0)])
    assert [(o.key, o.value) for o in stream] == [("k", 5.0)]
    with pytest.raises(ModelNotFoundError, match="'tenant-a'"):
        v2.infer(core, "tenant-a", V2_BODY)


def _canary_split(key: str, rows: Rows) -> Mapping[str, Rows]:
    return {"k": rows[:1], "k-canary": rows[1:]} if key == "k" else {key: rows}


def test_a_router_splits_a_keys_records_and_results_name_who_scored(
    make_core: Callable[..., ServingCore],
) -> None:
    core = make_core(FunctionRouter(_canary_split), {"k": 0.0, "k-canary": 100.0, "o": 50.0})
    records = [_json("k", a=1, b=0), _json("o", a=2, b=0), _json("k", a=3, b=0)]
    outputs = score_records(core, JsonCodec(), [*records, _json("k", a=4, b=0)])
    assert [(o.key, o.model, o.value) for o in outputs] == [
        ("k", "model-k", 1.0),
        ("o", "model-o", 52.0),
        ("k-canary", "model-k-canary", 103.0),
        ("k-canary", "model-k-canary", 104.0),
    ]


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (lambda key, rows: {key: rows[1:]}, "did not assign each of its 3 records"),
        (lambda key, rows: {key: rows, "k-canary": rows[:1]}, "(it assigned 4 rows"),
        (lambda key, rows: 1 / 0, "ZeroDivisionError"),
        (lambda key, rows: {key: ["x"]}, "routing the records of key"),
    ],
    ids=["loses", "repeats", "raises", "returns-garbage"],
)
def test_a_broken_router_fails_its_keys_records_alone(
    make_core: Callable[..., ServingCore], route: Callable[[str, Rows], object], reason: str
) -> None:
    def only_k(key: str, rows: Rows) -> object:
        return route(key, rows) if key == "k" else {key: rows}

    core = make_core(FunctionRouter(only_k), {"k": 0.0, "k-canary": 100.0, "o": 50.0})
    records = [_json("k", a=1, b=0), _json("o", a=2, b=0), _json("k", a=3, b=0)]
    outputs = score_records(core, JsonCodec(), [*records, _json("k", a=4, b=0)])
    assert [o.ok for o in outputs] == [False, True, False, False]
    failed = [o for o in outputs if not o.ok]
    assert {o.error_kind for o in failed} == {"scoring_failed"}
    assert all(reason in (o.reason or "") for o in failed), failed[0].reason
    assert outputs[1].value == 52.0
