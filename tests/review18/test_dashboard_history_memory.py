"""What the dashboard's history holds stays bounded whatever the model messages carry: its
timeline keeps the latest 200 events, and each names a key, a model, a version and a reason,
which come from model messages (up to serving.security.max_model_message_bytes: 200 MiB). The
slot keeps ``serving.max_rejections_kept`` rejections; the history must not keep the names of
200 more, whole, after the slot let them go."""

from __future__ import annotations

from pathlib import Path

from builders import onnx_constant, onnx_descriptor
from streamserve.api.history import ServingHistory
from streamserve.descriptor.model_descriptor import MAX_NAME_CHARS as MAX_DESCRIPTOR_NAME
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings

REJECTIONS = 30
NAME_CHARS = MAX_DESCRIPTOR_NAME - 8  # the longest a model message may name, with its prefix
MOST_CHARS_AN_EVENT_NAMES = 2_000  # what the summary sends of one: 200 per name, 300 a reason


def test_the_timeline_keeps_names_no_longer_than_it_sends(tmp_path: Path) -> None:
    with ServingCore(ServingSettings(max_rejections_kept=1, model_roots=[tmp_path])) as core:
        core.submit_model(onnx_descriptor("good", onnx_constant(11, 1.0), "wine"))
        assert core.wait_for_models(60)
        history = ServingHistory(core)
        history.sample()
        for index in range(REJECTIONS):  # each one a rejection the next sample finds
            name = f"{index}-" + "n" * NAME_CHARS
            core.submit_model(onnx_descriptor(name, b"not onnx", "wine", version="v" * NAME_CHARS))
            assert core.wait_for_models(60)
            history.sample()
        _samples, events, _cursor = history.since(0)
    assert len(events) == REJECTIONS
    held = sum(
        len(event.key) + len(event.model) + len(event.version) + len(event.previous)
        for event in events
    ) + sum(len(event.reason) for event in events)
    assert held <= REJECTIONS * MOST_CHARS_AN_EVENT_NAMES, (
        f"the history holds {held:,} characters of names for {REJECTIONS} rejections, whose "
        "slot keeps one: the timeline keeps model messages' names whole"
    )
