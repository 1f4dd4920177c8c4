"""Contract 5: thousands of keys, each with its own model, under a live-model budget: idle
instances are evicted and made again from their bytes on next use; every key is served by its
own model, and a model whose file changed after eviction fails clearly instead of serving
something else."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import orjson

from builders import onnx_linear
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.formats.base import FactoryContext, FloatMatrix, LoadRequest, Model
from streamserve.formats.registry import FactoryRegistry
from streamserve.serving.core import ServingCore
from streamserve.settings import BatchSettings, ServingSettings
from streamserve.testing import FunctionFactory, records_from, serve_records

KEYS = 400
BUDGET = 50
CODEC = JsonCodec()


def _records(keys: list[int], value: float = 1.0) -> list[InputRecord]:
    return [
        InputRecord(
            orjson.dumps({"dataType": f"k{key}", "features": [value, 2.0]}), position=str(i)
        )
        for i, key in enumerate(keys)
    ]


def test_every_key_is_served_by_its_own_model_within_the_budget() -> None:
    core = ServingCore(ServingSettings(max_live_models=BUDGET))
    try:
        _onnx_models(core, KEYS, timeout_s=300)
        assert core.live_models.live <= BUDGET
        order = np.random.default_rng(7).permutation(np.repeat(np.arange(KEYS), 3)).tolist()
        values: dict[str, set[float]] = {}
        for start in range(0, len(order), 256):
            outcome = core.score(CODEC.decode(_records(order[start : start + 256])))
            assert outcome.error_count == 0, [e.reason for e in outcome.errors][:3]
            for group in outcome.groups:
                assert group.model.name == f"m{group.key[1:]}"
                values.setdefault(group.key, set()).update(group.values.tolist())
            assert core.live_models.live <= BUDGET
        assert len(values) == KEYS
        assert all(found == {1.0 + int(key[1:])} for key, found in values.items())
        reloads = sum(slot.current.reloads for slot in core.slots() if slot.current is not None)
        assert reloads >= KEYS - BUDGET, "evicted models were not made again"
        assert core.live_models.evictions >= KEYS - BUDGET
    finally:
        core.close()


def test_a_location_model_changed_after_eviction_fails_instead_of_serving(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    first.write_bytes(onnx_linear(np.array([1.0, 0.0]), 10.0))
    second.write_bytes(onnx_linear(np.array([1.0, 0.0]), 20.0))
    core = ServingCore(ServingSettings(max_live_models=1, model_roots=[tmp_path]))
    try:
        for key, path in (("k0", first), ("k1", second)):
            core.submit_model(
                ModelDescriptor(
                    name=path.stem, data_type=key, model_type=ModelType.ONNX, location=str(path)
                )
            )
        assert core.wait_for_models(60)
        assert core.score(CODEC.decode(_records([0]))).groups[0].values.tolist() == [11.0]
        assert core.score(CODEC.decode(_records([1]))).groups[0].values.tolist() == [21.0]
        first.write_bytes(onnx_linear(np.array([1.0, 0.0]), 99.0))  # k0 is evicted by now

        outcome = core.score(CODEC.decode(_records([0, 1])))
        assert [group.key for group in outcome.groups] == ["k1"]
        [error] = outcome.errors
        assert error.kind == "scoring_failed"
        assert "could not be instantiated again after its eviction" in error.reason
        assert "does not match its sha256" in error.reason
    finally:
        core.close()


def test_keys_seen_only_on_the_models_topic_leave_bounded_state() -> None:
    """Rejected models and tombstones for keys nobody serves used to leave a slot (and an unload
    floor) each, forever: memory that grew with whatever keys a publisher sent."""
    core = ServingCore(ServingSettings())
    with core:
        for number in range(3000):
            core.submit_model(
                ModelDescriptor(
                    name="junk", data_type=f"junk-{number}", model_type=ModelType.ONNX, data=b"x"
                )
            )
            core.unload(f"gone-{number}")
        assert core.wait_for_models(120)
        core.unload("one-more")  # floors are pruned once no older load is pending
        footprint = core.footprint()
        assert footprint["slots"] == 0
        assert footprint["unload_floors"] == 0
        assert footprint["keyless_rejections"] <= 1000
        outcome = core.score(CODEC.decode(_records([0])))
        assert "no model for key 'k0' yet" in outcome.errors[0].reason
        rejected = core.score(
            CODEC.decode([InputRecord(orjson.dumps({"dataType": "junk-2999", "features": [1]}))])
        )
        assert "1 rejected, latest 'junk'" in rejected.errors[0].reason


def _onnx_models(core: ServingCore, keys: int, timeout_s: float = 120) -> None:
    for key in range(keys):
        core.submit_model(
            ModelDescriptor(
                name=f"m{key}",
                data_type=f"k{key}",
                model_type=ModelType.ONNX,
                data=onnx_linear(np.array([1.0, 0.0]), float(key)),
            )
        )
    assert core.wait_for_models(timeout_s)


def _live_instances(core: ServingCore) -> int:
    return sum(served.live for slot in core.slots() for _, served in slot.models())


def test_models_waiting_for_their_first_batch_count_against_the_budget() -> None:
    """A staged model stayed out of the budget until its first batch: keys that had no record
    yet (100,000 keys loading) held an instance each, whatever serving.max_live_models said."""
    with ServingCore(ServingSettings(max_live_models=5)) as core:
        _onnx_models(core, 40)
        assert _live_instances(core) <= 5

        outcome = core.score(CODEC.decode(_records(list(range(40)))))

        assert outcome.error_count == 0, [error.reason for error in outcome.errors][:3]
        assert {group.key: group.values.tolist() for group in outcome.groups} == {
            f"k{key}": [1.0 + key] for key in range(40)
        }
        assert all(group.model.name == f"m{group.key[1:]}" for group in outcome.groups)
        assert _live_instances(core) <= 5
        assert core.live_models.live <= 5


GATED, OPENS = 501, 502


class GatedReloads(FunctionFactory):
    """Its first load of a model returns at once; once ``armed``, a load (a reload after an
    eviction) waits for ``gate``."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(lambda x: x[:, 0] + 100, width=2)
        self.gate = gate
        self.armed = threading.Event()

    def load(self, request: LoadRequest) -> Model:
        if self.armed.is_set() and not self.gate.wait(120):
            raise TimeoutError("the test never opened the gate")
        return super().load(request)


def test_a_batch_scores_its_other_keys_while_an_evicted_model_is_made_again() -> None:
    """An evicted model was made again on the scoring thread, ahead of the batch's other keys:
    a slow reload held them all, and counted as a call of the model, so a reload slower than
    the scoring deadline took the model out of service. Here key b's model opens the gate
    that a's reload waits for: only a reload off the scoring thread lets both be scored."""
    gate = threading.Event()
    gated = GatedReloads(gate)

    def opens(features: FloatMatrix) -> np.ndarray:
        if gated.armed.is_set():  # not in validation's probe
            gate.set()
        return features[:, 0]

    registry = FactoryRegistry(FactoryContext())
    registry.register(GATED, lambda _context: gated)
    registry.register(OPENS, FunctionFactory(opens, width=2))
    settings = ServingSettings(max_live_models=1, scoring_deadline_s=10.0)
    try:
        with ServingCore(settings, registry) as core:
            for name, model_type, key in (("slow", GATED, "k0"), ("opens", OPENS, "k1")):
                core.submit_model(
                    ModelDescriptor(name=name, data_type=key, model_type=model_type, data=b"-")
                )
            assert core.wait_for_models(60)
            for key in (0, 1):  # each serves once; with a budget of 1, k1's evicts k0's
                assert core.score(CODEC.decode(_records([key]))).error_count == 0
            slot = core.find_slot("k0")
            assert slot is not None
            assert slot.current is not None
            assert not slot.current.live, "setup: the budget of 1 should have evicted k0's model"
            reloads = slot.current.reloads
            gated.armed.set()

            outcome = core.score(CODEC.decode(_records([0, 1])))

            assert [(e.kind, e.reason) for e in outcome.errors] == []
            assert sorted((g.key, g.model.name, g.values.tolist()) for g in outcome.groups) == [
                ("k0", "slow", [101.0]),
                ("k1", "opens", [1.0]),
            ]
            assert slot.current.reloads == reloads + 1
    finally:
        gate.set()


def test_records_of_evicted_and_live_keys_keep_their_order_and_count() -> None:
    """Keys whose models are made again are scored after the batch's other keys; their results
    still come out in input order, each record once (the embedded runtime end to end)."""
    order = np.random.default_rng(3).permutation(np.repeat(np.arange(30), 4)).tolist()
    payloads = [
        orjson.dumps({"dataType": f"k{key}", "features": [float(n), 2.0]})
        for n, key in enumerate(order)
    ]
    models = [
        ModelDescriptor(
            name=f"m{key}",
            data_type=f"k{key}",
            model_type=ModelType.ONNX,
            data=onnx_linear(np.array([1.0, 0.0]), 1000.0 * key),
        )
        for key in range(30)
    ]
    with ServingCore(ServingSettings(max_live_models=3)) as core:
        run = serve_records(
            core,
            CODEC,
            records_from(payloads),
            models=models,
            batch=BatchSettings(max_records=16, max_delay_ms=0),
        )
        evictions = core.live_models.evictions
    assert run.errors == []
    assert [result["position"] for result in run.results] == [
        f"record:{n}" for n in range(1, len(order) + 1)
    ]
    assert [(r["key"], r["model"], r["value"]) for r in run.results] == [
        (f"k{key}", f"m{key}", n + 1000.0 * key) for n, key in enumerate(order)
    ]
    assert evictions >= 30, "setup: the budget should have made models again"


def test_a_model_that_can_no_longer_be_made_again_is_quarantined(tmp_path: Path) -> None:
    """Reloads made off the scoring thread still count their failures against the model: one
    whose file changed after its eviction fails its records, batch after batch, until it is
    taken out of service and the key's previous model serves again."""
    path = tmp_path / "second.onnx"
    path.write_bytes(onnx_linear(np.array([1.0, 0.0]), 20.0))
    settings = ServingSettings(
        max_live_models=1, model_roots=[tmp_path], quarantine_after_failures=2
    )
    with ServingCore(settings) as core:
        versions = (
            ModelDescriptor(
                name="first",
                data_type="k0",
                model_type=ModelType.ONNX,
                data=onnx_linear(np.array([1.0, 0.0]), 10.0),
            ),
            ModelDescriptor(
                name="second", data_type="k0", model_type=ModelType.ONNX, location=str(path)
            ),
        )
        for descriptor, value in zip(versions, (11.0, 21.0), strict=True):
            core.submit_model(descriptor)
            assert core.wait_for_models(60)
            assert core.score(CODEC.decode(_records([0]))).groups[0].values.tolist() == [value]
        core.submit_model(
            ModelDescriptor(
                name="m1",
                data_type="k1",
                model_type=ModelType.ONNX,
                data=onnx_linear(np.array([1.0, 0.0]), 1.0),
            )
        )
        assert core.wait_for_models(60)
        assert core.score(CODEC.decode(_records([1]))).error_count == 0  # evicts k0's models
        path.write_bytes(onnx_linear(np.array([1.0, 0.0]), 99.0))

        failed = [core.score(CODEC.decode(_records([0]))) for _ in range(3)]
        recovered = core.score(CODEC.decode(_records([0])))

        assert all(
            [error.kind for error in outcome.errors] == ["scoring_failed"] for outcome in failed
        )
        assert "does not match its sha256" in failed[0].errors[0].reason
        assert [(g.model.name, g.values.tolist()) for g in recovered.groups] == [("first", [11.0])]
        slot = core.find_slot("k0")
        assert slot is not None
        assert slot.quarantined_total == 1
