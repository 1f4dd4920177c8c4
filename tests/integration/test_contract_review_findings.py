"""Regressions from an outside break-it review: each test reproduced one way the code broke a
contract of ARCHITECTURE.md (with real onnxruntime models or Python models from
``streamserve.testing``) and failed on the code as reviewed. Every record's outcome is counted
here, not by streamserve."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from builders import onnx_constant, onnx_descriptor, onnx_linear, onnx_named_linear
from streamserve.api import v2
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor
from streamserve.errors import RequestError
from streamserve.formats.base import FactoryContext
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.serving.events import ModelEventKind
from streamserve.serving.outcome import BatchOutcome
from streamserve.settings import ServingSettings
from streamserve.testing import FunctionFactory, GatedFactory, records_from

KEY = "k"


# --- helpers -------------------------------------------------------------------------------------
def _registry(**factories: object) -> FactoryRegistry:
    """A registry with Python model factories under the given wire types (``t201=...``)."""
    registry = FactoryRegistry(FactoryContext())
    for name, factory in factories.items():
        registry.register(int(name.removeprefix("t")), lambda context, f=factory: f)
    return registry


def _python(name: str, model_type: int, key: str = KEY, **options: str) -> ModelDescriptor:
    return ModelDescriptor(
        name=name, data_type=key, model_type=model_type, data=b"python", options=options
    )


def _json(*documents: dict[str, object]) -> list[bytes]:
    return [orjson.dumps(document) for document in documents]


def _score(core: ServingCore, payloads: list[bytes]) -> BatchOutcome:
    outcome = core.score(JsonCodec().decode(records_from(payloads)))
    _assert_one_output_each(outcome, len(payloads))
    return outcome


def _assert_one_output_each(outcome: BatchOutcome, count: int) -> None:
    rows = [row for group in outcome.groups for row in group.rows.tolist()]
    rows += [error.row for error in outcome.errors]
    assert sorted(rows) == list(range(count)), "contract 4: one output per record"


def _values(outcome: BatchOutcome) -> list[tuple[str, object]]:
    return [
        (group.model.name, value) for group in outcome.groups for value in group.values.tolist()
    ]


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    event = threading.Event()
    for _ in range(600):
        if condition():
            return
        event.wait(0.1)
    raise AssertionError(f"not within 60 s: {what}")


class BlockingProbe:
    """A Python model function that blocks its first probe call (``rows`` rows) until released."""

    def __init__(self, function: Callable[[np.ndarray], np.ndarray], rows: int = 2) -> None:
        self.function = function
        self.rows = rows
        self.inside = threading.Event()
        self.release = threading.Event()

    def __call__(self, features: np.ndarray) -> np.ndarray:
        if len(features) == self.rows and not self.inside.is_set():
            self.inside.set()
            assert self.release.wait(60)
        return self.function(features)


# --- contract 4: one JSON type per key ----------------------------------------------------------
def test_a_key_whose_only_model_was_quarantined_forgets_its_value_type() -> None:
    """The key's value type lives on its models only: once the key's only (number) model is
    quarantined, an undeclared string model becomes current and the key's values turn from
    numbers into strings, although nobody declared ``value_type=string``."""
    broken = threading.Event()

    def numbers(features: np.ndarray) -> np.ndarray:
        if broken.is_set():
            raise RuntimeError("backend gone")
        return features[:, 0]

    registry = _registry(
        t201=FunctionFactory(numbers, width=2),
        t202=FunctionFactory(lambda x: np.array(["high"] * len(x)), width=2),
    )
    core = ServingCore(ServingSettings(quarantine_after_failures=3), registry)
    record = {"dataType": KEY, "features": [0.5, 0.5]}
    with core:
        core.submit_model(_python("numbers", 201))
        assert core.wait_for_models(60)
        published = [v for _, v in _values(_score(core, _json(record)))]
        broken.set()
        for _ in range(3):  # 3 failures in 3 batches in a row: quarantined
            _score(core, _json(record))
        assert [e.kind for e in core.drain_events() if e.kind is ModelEventKind.QUARANTINED]
        core.submit_model(_python("strings-undeclared", 202))
        assert core.wait_for_models(60)
        published += [v for _, v in _values(_score(core, _json(record)))]
    types = {type(value).__name__ for value in published}
    assert len(types) == 1, (
        f"contract 4 (one JSON type per key): key {KEY!r} published {published}: an undeclared "
        "model of another value type became current after a quarantine left the key empty"
    )


def test_a_model_validated_before_its_key_had_a_slot_skips_the_value_type_rule() -> None:
    """Validation reads the key's slot before the probe and its value type after it: a model
    whose probe was running when the key's first model staged is checked against no type at
    all, then stages after it and changes the key's value type without a declaration."""
    gate = threading.Event()
    strings = GatedFactory(FunctionFactory(lambda x: np.array(["high"] * len(x)), width=2), gate)
    probe = BlockingProbe(lambda x: x[:, 0])
    registry = _registry(t201=strings, t202=FunctionFactory(probe, width=2))
    core = ServingCore(ServingSettings(loader_threads=2), registry)
    record = {"dataType": KEY, "features": [0.5, 0.5]}
    with core:
        try:
            core.submit_model(_python("A-strings", 201))  # older: its load is slow
            assert strings.loading.wait(60)
            core.submit_model(_python("B-numbers-undeclared", 202))  # newer: its probe is slow
            assert probe.inside.wait(60)
            gate.set()
            _wait_until(lambda: core.find_slot(KEY) is not None, "A staged")
            slot = core.find_slot(KEY)
            assert slot is not None
            _wait_until(lambda: slot.staged is not None, "A staged")
            first = _values(_score(core, _json(record)))
            assert first == [("A-strings", "high")]
        finally:
            gate.set()
            probe.release.set()
        assert core.wait_for_models(60)
        second = _values(_score(core, _json(record)))
    published = first + second
    assert len({type(value) for _, value in published}) == 1, (
        f"contract 4 (one JSON type per key): key {KEY!r} published {published}: model "
        "'B-numbers-undeclared' returns numbers where the key published strings, without "
        "declaring value_type, and still became current"
    )


# --- growth with junk ----------------------------------------------------------------------------
def test_a_load_finishing_after_its_keys_unloading_leaves_an_empty_slot_behind() -> None:
    """A models-topic tombstone (unload) read while its key's model is still loading: the load
    ends superseded, but the loader creates the key's slot before staging is refused, so every
    such key keeps a slot that serves nothing (``/keys``, ``footprint()['slots']``)."""
    gate = threading.Event()
    gated = GatedFactory(FunctionFactory(lambda x: x[:, 0], width=2), gate)
    core = ServingCore(ServingSettings(), _registry(t201=gated))
    keys = [f"deleted-{n}" for n in range(50)]
    with core:
        try:
            for key in keys:  # model message, then its tombstone, as a compacted topic replays
                core.submit_model(_python("m", 201, key=key))
                assert not core.unload(key)
        finally:
            gate.set()
        assert core.wait_for_models(60)
        superseded = [e for e in core.drain_events() if e.kind is ModelEventKind.SUPERSEDED]
        assert len(superseded) == len(keys)
        footprint = core.footprint()
        empty = [slot.key for slot in core.slots() if not slot.models()]
    assert not empty, (
        f"contract 5 (bounded per-key state): {len(empty)} keys that were unloaded and serve "
        f"nothing keep a slot; footprint {footprint}"
    )


# --- contract 1: a batch is scored by the model it took ------------------------------------------
class BlockingOrders(Mapping[str, "tuple[str, ...] | None"]):
    """A batch's field orders whose lookup blocks: a gate inside ``score`` after the batch took
    its model (``batch_model``) and before it instantiates it (``instance``)."""

    def __init__(self, orders: Mapping[str, tuple[str, ...] | None]) -> None:
        self._orders = dict(orders)
        self.inside = threading.Event()
        self.release = threading.Event()

    def __getitem__(self, key: str) -> tuple[str, ...] | None:
        return self._orders[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.inside.set()
        assert self.release.wait(60)
        return self._orders.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._orders)

    def __len__(self) -> int:
        return len(self._orders)


def test_an_evicted_model_retired_while_a_batch_holds_it_fails_the_batch() -> None:
    """The stream's batch took model M (evicted by the live-model budget, so not in memory);
    before it makes M's instance again, the operator unloads the key. M is retired with a
    user, and ``instance()`` refuses to make a retired model again: the batch's records fail
    with 'was retired' instead of being scored by M, the model the batch took. (With M in
    memory, the same unload lets the batch finish: test_contract_swap_between_threads.)"""
    registry = _registry(t201=FunctionFactory(lambda x: x[:, 0] + 100.0, width=2))
    core = ServingCore(ServingSettings(max_live_models=1), registry)
    records = _json(*[{"dataType": KEY, "a": 1.0, "b": 2.0}] * 3)
    with core, ThreadPoolExecutor(1) as stream:
        core.submit_model(_python("M", 201))
        core.submit_model(onnx_descriptor("other", onnx_constant(2, 0.0), key="other"))
        assert core.wait_for_models(60)
        # V2-like batches (observe=False) leave the key's positional order unfixed, so each
        # batch looks up its field orders: the gate below.
        core.score(JsonCodec().decode(records_from(records)), observe=False)
        _score(core, _json({"dataType": "other", "a": 1.0, "b": 2.0}))  # evicts M
        slot = core.find_slot(KEY)
        assert slot is not None
        assert slot.current is not None
        assert not slot.current.live, "M was evicted by the budget"
        batch = JsonCodec().decode(records_from(records))
        orders = BlockingOrders(batch.field_orders)
        batch.field_orders = orders
        held = stream.submit(core.score, batch, observe=False)
        try:
            assert orders.inside.wait(60)  # the batch holds M now
            assert core.unload(KEY)  # the admin action, while the batch holds M
        finally:
            orders.release.set()
        outcome = held.result(60)
    _assert_one_output_each(outcome, len(records))
    assert [(e.kind, e.reason) for e in outcome.errors] == [], (
        "contract 1 (a batch is scored by the model it took, to its last record): "
        f"{[(e.kind, e.reason) for e in outcome.errors]}"
    )


# --- contract 3/4: records that fail alone must not take the key's model out of service ----------
def test_a_v2_request_of_overflowing_rows_quarantines_the_keys_good_model() -> None:
    """Rows whose value overflows float32 (3e38 + 3e38) make a good ONNX model return infinity
    for them: those rows fail alone, as they should. But they count as 'the model keeps
    failing': one V2 request of 100 such rows (requests are not even the key's stream records)
    quarantines the key's only, good model, and every stream record after gets no_model."""
    core = ServingCore(ServingSettings())  # quarantine after 100 failures in a row (default)
    model = onnx_named_linear(["alpha", "beta"], np.array([1.0, 1.0]), 0.0)
    with core:
        core.submit_model(onnx_descriptor("good", model, key=KEY))
        assert core.wait_for_models(60)
        normal = _json({"dataType": KEY, "alpha": 1.0, "beta": 2.0})
        assert _values(_score(core, normal)) == [("good", 3.0)]
        request = {
            "inputs": [
                {"name": "alpha", "shape": [100], "datatype": "FP64", "data": [3e38] * 100},
                {"name": "beta", "shape": [100], "datatype": "FP64", "data": [3e38] * 100},
            ]
        }
        with contextlib.suppress(RequestError):  # the rows' own failure: fine
            v2.infer(core, KEY, request)
        after = _score(core, normal)
    assert _values(after) == [("good", 3.0)], (
        "contract 3/4 (a bad record fails alone; a good model is never taken out of service by "
        f"records): after one V2 request of overflowing rows, a normal record got "
        f"{[(e.kind, e.reason[:120]) for e in after.errors]}"
    )


# --- contract 4: one odd record never fails its batch mates --------------------------------------
def test_one_misspelled_record_fails_every_record_of_its_batch_for_a_positional_model() -> None:
    """A positional model's order is fixed from the field order more than half of the batch's
    records carry. 5 records (a, b) and 4 (b, a) have such a majority; add one record with a
    typo (a, bb) and no order has more than half: all 10 records fail, not only the typo."""
    core = ServingCore(ServingSettings())
    ab = {"dataType": KEY, "a": 1.0, "b": 2.0}
    ba = {"dataType": KEY, "b": 2.0, "a": 1.0}
    typo = {"dataType": KEY, "a": 1.0, "bb": 2.0}
    with core:
        core.submit_model(
            onnx_descriptor("positional", onnx_linear(np.array([1.0, 10.0]), 0.0), key=KEY)
        )
        assert core.wait_for_models(60)
        outcome = _score(core, _json(*[ab] * 5, *[ba] * 4, typo))
    failed = sorted(error.row for error in outcome.errors)
    assert failed == [9], (
        "contract 4 (one odd record never fails the other records of its batch): the misspelled "
        f"record 9 made rows {failed} fail: {outcome.errors[0].reason[:160]}"
    )


def test_a_records_outcome_depends_on_its_batch_mates_with_loose_name_matching() -> None:
    """A named model takes 'beta' from a record's 'Beta' (names match ignoring case) when the
    record is alone; in a batch where another record carries 'beta', the exact column wins for
    the whole batch and the 'Beta' record fails as lacking 'beta'."""
    core = ServingCore(ServingSettings())
    model = onnx_named_linear(["alpha", "beta"], np.array([1.0, 1.0]), 0.0)
    capital = {"dataType": KEY, "alpha": 1.0, "Beta": 2.0}
    lower = {"dataType": KEY, "alpha": 1.0, "beta": 2.0}
    with core:
        core.submit_model(onnx_descriptor("named", model, key=KEY))
        assert core.wait_for_models(60)
        alone = _score(core, _json(capital))
        assert _values(alone) == [("named", 3.0)], "alone, 'Beta' feeds 'beta'"
        together = _score(core, _json(lower, capital))
    assert together.error_count == 0, (
        "contract 4 (each record is judged alone): the record scored alone fails next to a "
        f"batch mate: {[(e.row, e.reason) for e in together.errors]}"
    )


def test_a_quarantine_restores_a_previous_model_of_another_value_type() -> None:
    """The publisher moved the key to strings on purpose (``value_type=string``); when that model
    is quarantined, the previous number model comes back without anyone asking, and the key's
    values turn back into numbers. (A rollback is the operator asking; a quarantine is not.)"""
    broken = threading.Event()

    def labels(features: np.ndarray) -> np.ndarray:
        if broken.is_set():
            raise RuntimeError("backend gone")
        return np.array(["high"] * len(features))

    registry = _registry(t201=FunctionFactory(labels, width=2))
    core = ServingCore(ServingSettings(quarantine_after_failures=3), registry)
    record = {"dataType": KEY, "features": [0.5, 0.5]}
    with core:
        core.submit_model(onnx_descriptor("numbers", onnx_constant(2, 5.0), key=KEY))
        assert core.wait_for_models(60)
        published = _values(_score(core, _json(record)))
        core.submit_model(_python("strings", 201, value_type="string"))
        assert core.wait_for_models(60)
        published += _values(_score(core, _json(record)))
        broken.set()
        for _ in range(3):  # 3 failures in 3 batches in a row: quarantined
            _score(core, _json(record))
        after = _score(core, _json(record))
        published += _values(after)
    assert [type(v) for _, v in published[1:]] == [str], (
        f"contract 4 (one JSON type per key unless the operator asks): key {KEY!r} published "
        f"{published}: the quarantine brought back a number model after the key moved to strings"
    )
    assert [e.kind for e in after.errors] == ["no_model"]
    assert "quarantined" in after.errors[0].reason


# --- HTTP API: malformed V2 requests get a 4xx answer --------------------------------------------
def test_v2_requests_with_odd_shapes_get_a_4xx_answer_not_a_server_error() -> None:
    """``_tensor`` checks ``data.size`` against ``np.prod(shape)``, which wraps around in int64
    ([2**32, 2**32] -> 0), and accepts ``true`` as a dimension; the reshape that follows then
    raises outside the checks (ValueError, TypeError): the request gets no 4xx ``{"error": ...}``
    answer but a server error (here the server drops the connection)."""
    import httpx

    from streamserve.api.server import ApiServer
    from streamserve.settings import ApiSettings

    core = ServingCore(ServingSettings())
    with core:
        core.submit_model(onnx_descriptor("m", onnx_constant(2, 1.0), key=KEY))
        assert core.wait_for_models(60)
        server = ApiServer(core, ApiSettings(port=0), lambda: True)
        server.start()
        answers = {}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
                for shape, data in (([2**32, 2**32], []), ([True, 2], [1.0, 2.0])):
                    tensor = {"name": "input", "shape": shape, "datatype": "FP64", "data": data}
                    try:
                        response = http.post(f"/v2/models/{KEY}/infer", json={"inputs": [tensor]})
                    except httpx.TransportError as err:  # the server dropped the connection
                        answers[str(shape)] = (0, f"{type(err).__name__}: {err}")
                    else:
                        answers[str(shape)] = (response.status_code, response.text[:80])
        finally:
            server.stop()
    assert all(400 <= status < 500 for status, _ in answers.values()), (
        f"HTTP API (malformed requests get a 4xx {{'error': ...}} answer): {answers}"
    )
