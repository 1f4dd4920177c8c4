from __future__ import annotations

import numpy as np
import pytest

from streamserve.errors import ScoringError
from streamserve.serving.budget import LiveModels
from streamserve.serving.slot import ModelIdentity, ModelSlot, Rejection, ServedModel
from streamserve.serving.stats import LATENCY_BUCKETS_S, ModelServingInfo
from streamserve.testing import FunctionModel


def served(name: str, sequence: int) -> ServedModel:
    return ServedModel(
        ModelIdentity(name, "v", "", "ONNX", sequence),
        FunctionModel(lambda x: x[:, 0], width=1),
        ModelServingInfo(name, "", "v", "ONNX"),
        load_duration_s=0.0,
    )


def take(slot: ModelSlot) -> tuple[ServedModel | None, bool]:
    """The model a batch would be scored with (promoting a staged one), released at once."""
    with slot.batch_model() as taken:
        return taken


def test_staged_model_becomes_current_at_the_next_batch_and_the_old_one_is_kept() -> None:
    slot = ModelSlot("k")
    first, second = served("first", 1), served("second", 2)
    assert slot.stage(first)
    assert take(slot) == (first, True)
    assert take(slot) == (first, False)
    assert slot.stage(second)
    assert slot.current is first, "a staged model must wait for the batch boundary"
    assert take(slot) == (second, True)
    assert slot.previous is first
    assert second.stats.snapshot().since > 0


def test_an_older_model_never_replaces_a_newer_one() -> None:
    slot = ModelSlot("k")
    newer, older = served("newer", 5), served("older", 3)
    assert slot.stage(newer)
    assert not slot.stage(older)
    assert take(slot)[0] is newer


def test_a_superseded_staged_model_and_a_retired_model_are_closed() -> None:
    slot = ModelSlot("k")
    models = [served(f"m{i}", i) for i in range(4)]
    slot.stage(models[0])
    take(slot)
    slot.stage(models[1])
    slot.stage(models[2])  # supersedes m1 before it ever served
    assert not models[1].live
    take(slot)
    slot.stage(models[3])
    take(slot)  # m3 current, m2 previous, m0 retired
    assert not models[0].live
    assert models[2].live
    assert [s.name for s in slot.served_history()] == ["m0", "m2"]
    slot.rollback()  # m2 current again: out of the history; m3 in it
    assert [s.name for s in slot.served_history()] == ["m0", "m3"]


def test_rejections_are_kept_boundedly_and_counted() -> None:
    slot = ModelSlot("k", max_rejections=2)
    for i in range(3):
        slot.reject(Rejection("k", f"bad{i}", "", "model_load_failed", "why"))
    assert [r.name for r in slot.rejections] == ["bad1", "bad2"]
    assert slot.rejected_total == 3


def test_observe_keeps_only_complete_recent_rows() -> None:
    slot = ModelSlot("k")
    slot.observe(("a", "b"), np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]]), keep=1)
    schema = slot.observed_schema()
    assert schema is not None
    assert schema.feature_names == ("a", "b")
    assert schema.sample.tolist() == [[4.0, 5.0]]


def test_observe_gathers_rows_over_small_batches_and_follows_a_new_schema_at_once() -> None:
    slot = ModelSlot("k")
    for value in (1.0, 2.0, 3.0):  # one record per batch, as with thousands of keys
        slot.observe(("a",), np.array([[value]]), keep=2)
    gathered = slot.observed_schema()
    assert gathered is not None
    assert gathered.sample.tolist() == [[1.0], [2.0]], "kept until refreshed, not replaced"
    slot.observe(("a", "b"), np.array([[5.0, 6.0]]), keep=2)
    changed = slot.observed_schema()
    assert changed is not None
    assert changed.feature_names == ("a", "b")
    assert changed.sample.tolist() == [[5.0, 6.0]]


def test_serving_info_amortizes_batch_durations_per_record() -> None:
    info = ModelServingInfo("m", "d", "v", "ONNX")
    info.record_batch(100, 0.002)
    info.record_batch(10, 0.001)
    info.record_errors(3)
    snapshot = info.snapshot()
    assert snapshot.invocations == 110
    assert snapshot.batches == 2
    assert snapshot.errors == 3
    assert snapshot.min_duration_s == 0.002 / 100
    assert snapshot.max_duration_s == 0.001 / 10
    assert snapshot.average_duration_s == 0.003 / 110
    assert sum(snapshot.batch_latency_counts) == 2
    assert len(snapshot.batch_latency_counts) == len(LATENCY_BUCKETS_S) + 1


def _evictable(name: str, sequence: int, reloads: list[str]) -> ServedModel:
    def reload() -> FunctionModel:
        reloads.append(name)
        return FunctionModel(lambda x: x[:, 0] + sequence, width=1)

    return ServedModel(
        ModelIdentity(name, "v", "", "ONNX", sequence),
        FunctionModel(lambda x: x[:, 0] + sequence, width=1),
        ModelServingInfo(name, "", "v", "ONNX"),
        load_duration_s=0.0,
        reload=reload,
    )


def test_the_budget_evicts_the_least_recently_used_idle_instance() -> None:
    live = LiveModels(max_live=2)
    reloads: list[str] = []
    a, b, c = (_evictable(name, i, reloads) for i, name in enumerate("abc"))
    live.touch(a)
    live.touch(b)
    live.touch(a)  # b is now the least recently used
    live.touch(c)
    assert (a.live, b.live, c.live) == (True, False, True)
    assert live.evictions == 1
    assert live.live == 2

    with b.instance() as model:  # b's next use makes it again
        assert model.score_batch(np.array([[1.0]])).tolist() == [2.0]
    live.touch(b)
    assert reloads == ["b"]
    assert b.reloads == 1
    assert (a.live, b.live, c.live) == (False, True, True)


def test_an_instance_in_use_is_never_evicted() -> None:
    live = LiveModels(max_live=1)
    reloads: list[str] = []
    a, b = _evictable("a", 0, reloads), _evictable("b", 1, reloads)
    live.touch(a)
    with a.instance():
        live.touch(b)  # over budget, but a is in use
        assert a.live
    live.touch(b)
    assert not a.live
    assert b.live


def test_a_closed_model_is_not_made_again() -> None:
    reloads: list[str] = []
    retired = _evictable("retired", 0, reloads)
    retired.close()
    with pytest.raises(ScoringError, match="was retired"), retired.instance():
        pass
    assert reloads == []
