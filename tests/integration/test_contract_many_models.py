"""Contract 5: thousands of keys, each with its own model, under a live-model budget: idle
instances are evicted and made again from their bytes on next use; every key is served by its
own model, and a model whose file changed after eviction fails clearly instead of serving
something else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from builders import onnx_linear
from streamserve.codecs.base import InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.descriptor import ModelDescriptor, ModelType
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings

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
        for key in range(KEYS):
            core.submit_model(
                ModelDescriptor(
                    name=f"m{key}",
                    data_type=f"k{key}",
                    model_type=ModelType.ONNX,
                    data=onnx_linear(np.array([1.0, 0.0]), float(key)),
                )
            )
        assert core.wait_for_models(300)
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


def test_a_staged_model_is_never_evicted_before_it_serves() -> None:
    """Under a budget, a staged model used to be evicted by other keys' batches before its
    first batch, which then made it again on the scoring thread."""
    core = ServingCore(ServingSettings(max_live_models=1))
    with core:
        for key in ("k0", "k1"):
            core.submit_model(
                ModelDescriptor(
                    name=key,
                    data_type=key,
                    model_type=ModelType.ONNX,
                    data=onnx_linear(np.array([1.0, 0.0]), 0.0),
                )
            )
        assert core.wait_for_models(60)
        for _ in range(3):
            assert core.score(CODEC.decode(_records([0]))).error_count == 0  # only k0 is used
        slot = core.find_slot("k1")
        assert slot is not None
        assert slot.staged is not None
        assert slot.staged.live, "evicted before it ever served"
        assert core.score(CODEC.decode(_records([1]))).error_count == 0
        assert slot.current is not None
        assert slot.current.reloads == 0
