"""process_batch's last resort (runtime/batch.py) and the core's counters: when encoding fails
where no step foresaw it (a plug-in codec's key is bytes), each record's outcome is encoded
alone; the batch is not scored or counted again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import orjson

from builders import onnx_descriptor, onnx_linear
from streamserve.codecs.base import DecodedBatch, Framing, InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.runtime.batch import process_batch
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings
from streamserve.testing import records_from


class HeaderKeyCodec:
    """JSON, but a record with a ``data-type`` header takes that header's raw bytes as its key."""

    name = "header-key-json"
    framing = Framing.LINES

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        batch = JsonCodec().decode(records)
        keys = [
            dict(record.headers).get("data-type") or key
            for record, key in zip(records, batch.keys, strict=True)
        ]
        return replace(batch, keys=keys)  # type: ignore[arg-type]


def test_a_batch_retried_record_by_record_is_counted_and_scored_once() -> None:
    payload = orjson.dumps({"dataType": "k", "a": 1.0, "b": 0.0})
    records = [
        *records_from([payload, payload]),
        InputRecord(payload, position="record:3", headers=(("data-type", b"k"),)),
    ]
    with ServingCore(ServingSettings()) as core:
        core.submit_model(onnx_descriptor("m", onnx_linear(np.array([1.0, 0.0]), 0.0), "k"))
        assert core.wait_for_models(60)
        outputs = process_batch(core, HeaderKeyCodec(), records)
        assert len(outputs.results) + len(outputs.errors) == 3  # holds: one output each
        counts = core.counts
        slot = core.find_slot("k")
        assert slot is not None
        assert slot.current is not None
        invocations = slot.current.stats.snapshot().invocations
    assert (counts["records"], counts["results"] + counts["errors"]) == (3, 3), (
        f"3 records were counted as {counts['records']} records, {counts['results']} results and "
        f"{counts['errors']} errors, in {counts['batches']} batches: the last resort counts the "
        "batch again, then once more per failing record"
    )
    assert invocations == 2, (
        f"the model's statistics show {invocations} invocations for the 2 records it scored: "
        "the retried batch was scored again"
    )
