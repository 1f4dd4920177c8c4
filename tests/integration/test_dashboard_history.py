"""The dashboard's history over a live core with real ONNX models: rates, latency quantiles and
errors by kind from the core's counters; a timeline of swaps, rejections, restores and unloads
read from the slots; per-key totals for the top keys; everything bounded."""

from __future__ import annotations

import orjson

from builders import onnx_constant, onnx_descriptor
from streamserve.api.activity import EventKind
from streamserve.api.dashboard import MAX_EVENTS_SENT, Dashboard
from streamserve.api.history import ServingHistory
from streamserve.codecs.json import JsonCodec
from streamserve.serving.core import ServingCore
from streamserve.serving.stats import LATENCY_BUCKETS_S
from streamserve.settings import ServingSettings
from streamserve.testing import records_from

CODEC = JsonCodec()
MAX_SUMMARY_BYTES = 200_000


def _publish(core: ServingCore, *descriptors: object) -> None:
    for descriptor in descriptors:
        core.submit_model(descriptor)  # type: ignore[arg-type]
    assert core.wait_for_models(60)


def _score(core: ServingCore, payloads: list[bytes]) -> None:
    core.score(CODEC.decode(records_from(payloads)))


def _good(key: str = "wine", count: int = 1) -> list[bytes]:
    return [orjson.dumps({"dataType": key, "features": [1.0] * 11})] * count


def _short(key: str = "wine", count: int = 1) -> list[bytes]:
    return [orjson.dumps({"dataType": key, "features": [1.0] * 3})] * count


def test_a_sample_holds_the_rates_latency_and_errors_by_kind_since_the_previous_one(
    core: ServingCore,
) -> None:
    _publish(core, onnx_descriptor("first", onnx_constant(11, 1.0)))
    history = ServingHistory(core)
    history.sample()  # the first sample is the baseline: nothing to take a rate over yet
    assert history.since(0)[0] == []
    before = core.counts
    _score(core, _good(count=30) + _short(count=4) + _good("beer", 3) + [b"not json"] * 2)
    _score(core, _good(count=10))
    history.sample()
    [sample], _events, cursor = history.since(0)
    grown = {name: core.counts.get(name, 0) - before.get(name, 0) for name in core.counts}

    assert round(sample.records_per_s * sample.elapsed_s) == grown["records"] == 49
    assert round(sample.results_per_s * sample.elapsed_s) == grown["results"] == 40
    assert round(sample.errors_per_s * sample.elapsed_s) == grown["errors"] == 9
    by_kind = {
        kind: round(rate * sample.elapsed_s) for kind, rate in sample.errors_per_s_by_kind.items()
    }
    assert by_kind == {"missing_features": 4, "no_model": 3, "undecodable_record": 2}
    assert sample.p50_s is not None
    assert sample.p99_s is not None
    assert 0 < sample.p50_s <= sample.p99_s <= LATENCY_BUCKETS_S[-1]
    assert sample.consumer_lag is None  # no Kafka
    assert sample.keys == 1

    history.sample()  # nothing scored since
    [idle], _events, _cursor = history.since(cursor)
    assert idle.seq >= cursor
    assert (idle.records_per_s, idle.errors_per_s_by_kind, idle.p50_s) == (0.0, {}, None)


def test_the_consumer_lag_is_sampled_from_the_runtime() -> None:
    lag = iter([120, 45, 0])
    with ServingCore(ServingSettings()) as core:
        history = ServingHistory(core, lambda: next(lag))
        for _ in range(3):
            history.sample()
        assert [sample.consumer_lag for sample in history.since(0)[0]] == [45, 0]


def test_the_timeline_shows_swaps_rejections_restores_and_unloads(core: ServingCore) -> None:
    _publish(core, onnx_descriptor("first", onnx_constant(11, 1.0), version="v1"))
    history = ServingHistory(core)
    history.sample()
    _score(core, _good())  # the first model becomes current at the key's first batch
    history.sample()
    _samples, events, cursor = history.since(0)
    assert [(e.kind, e.key, e.model, e.version, e.previous) for e in events] == [
        (EventKind.SWAPPED, "wine", "first", "v1", "")
    ]

    _publish(core, onnx_descriptor("second", onnx_constant(11, 2.0), version="v2"))
    _score(core, _good())
    _publish(core, onnx_descriptor("broken", b"not a model", version="v3"))
    history.sample()
    _samples, events, cursor = history.since(cursor)
    assert [(e.kind, e.model, e.previous) for e in events] == [
        (EventKind.SWAPPED, "second", "first"),
        (EventKind.REJECTED, "broken", ""),
    ]
    rejected = events[1]
    assert rejected.error_kind == "model_load_failed"
    assert "cannot be loaded" in rejected.reason

    slot = core.find_slot("wine")
    assert slot is not None
    slot.rollback()
    history.sample()
    _samples, events, cursor = history.since(cursor)
    assert [(e.kind, e.model, e.previous) for e in events] == [
        (EventKind.RESTORED, "first", "second")
    ]

    core.unload("wine")
    history.sample()
    _samples, events, _cursor = history.since(cursor)
    assert [(e.kind, e.key) for e in events] == [(EventKind.UNLOADED, "wine")]


def test_model_messages_that_name_no_key_show_as_rejections_without_a_key(
    core: ServingCore,
) -> None:
    history = ServingHistory(core)
    history.sample()
    core.submit_model_message(b"\xff\xfe not a model message")
    _publish(core, onnx_descriptor("lonely", b"not a model", key="cider"))
    history.sample()
    _samples, events, _cursor = history.since(0)
    reasons = sorted((e.kind, e.key, e.reason) for e in events)
    each = " (the errors output has each one's reason)"
    assert reasons == [
        (EventKind.REJECTED, "", "model messages refused or undecodable: 1" + each),
        (EventKind.REJECTED, "", "models rejected for keys that have no model: 1" + each),
    ]


def test_keys_are_ranked_by_their_records_or_errors_and_found_by_name(
    core: ServingCore,
) -> None:
    _publish(
        core,
        *(onnx_descriptor(f"m-{key}", onnx_constant(11, 1.0), key=key) for key in ("a", "b", "c")),
    )
    history = ServingHistory(core)
    _score(core, _good("a", 30) + _good("b", 10) + _good("c", 20) + _short("c", 5))
    history.sample()
    activity = history.activity

    matched, top = activity.top("records", "", 2)
    assert matched == 3
    assert [(key, state.records, state.errors) for key, state in top] == [
        ("a", 30, 0),
        ("c", 25, 5),
    ]
    assert [key for key, _state in activity.top("errors", "", 1)[1]] == ["c"]
    assert [key for key, _state in activity.top("records", "B", 5)[1]] == ["b"]
    assert activity.ranked("records") == ["a", "c", "b"]
    assert activity.ranked("errors") == ["c", "a", "b"]

    _score(core, _good("b", 40))  # totals go on from each model's own statistics
    history.sample()
    state = activity.state_of("b")
    assert state is not None
    assert state.records == 50
    assert state.rate > 0


def test_the_history_and_the_timeline_are_bounded(core: ServingCore) -> None:
    _publish(core, onnx_descriptor("first", onnx_constant(11, 1.0)))
    history = ServingHistory(core, interval_s=1.0, history_s=5.0, max_events=3)
    for index in range(12):
        _publish(core, onnx_descriptor(f"model-{index}", onnx_constant(11, float(index))))
        _score(core, _good())
        history.sample()
    samples, events, _cursor = history.since(0)
    assert len(samples) == 5
    assert [e.model for e in events] == ["model-9", "model-10", "model-11"]
    assert [s.seq for s in samples] == sorted(s.seq for s in samples)


def test_a_summary_of_a_full_history_stays_small(core: ServingCore) -> None:
    """The page's first poll gets everything kept: ten minutes of samples with errors of three
    kinds in each, timeline events with long names and reasons, a key with twenty rejections."""
    _publish(core, onnx_descriptor("first", onnx_constant(11, 1.0)))
    history = ServingHistory(core, interval_s=1.0, history_s=600.0)
    history.sample()
    for index in range(40):
        name = f"broken-model-with-a-long-name-{index:03d}-" + "x" * 150
        core.submit_model(onnx_descriptor(name, b"not a model " * 40))
    assert core.wait_for_models(120)
    errors = _short(count=1) + _good("beer") + [b"not json"]
    for index in range(602):
        _score(core, _good(count=5) + errors + [orjson.dumps({"dataType": "wine", "x": index})])
        history.sample()
    samples, events, _cursor = history.since(0)
    assert len(samples) == 600
    # the first model's swap, the twenty rejections the slot keeps, and one for the others
    assert len(events) == 22
    assert "20 more models rejected; their reasons were not kept" in [e.reason for e in events]

    dashboard = Dashboard(core, history)
    document = dashboard.summary_document({"since": "0", "top": "50", "key": "wine"})
    size = len(orjson.dumps(document))
    assert len(document["history"]["t"]) == 600
    assert set(document["history"]["errors_per_s_by_kind"]) == {
        "missing_features",
        "no_model",
        "undecodable_record",
    }
    assert len(document["key"]["recent_rejections"]) == 20
    assert len(document["events"]) <= MAX_EVENTS_SENT
    assert size < MAX_SUMMARY_BYTES, size

    later = dashboard.summary_document({"since": str(document["next"]), "key": "wine"})
    assert len(later["history"]["t"]) == 1  # the sample it took (no thread samples): news only
    assert len(orjson.dumps(later)) < 40_000
