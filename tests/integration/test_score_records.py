"""``streamserve.score_records``, the embedding API's one-call scoring: one output per record,
in order, even when the codec returns a malformed batch (records are then scored alone)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from builders import onnx_descriptor, onnx_linear
from streamserve.codecs.base import DecodedBatch, Framing, InputRecord
from streamserve.codecs.json import JsonCodec
from streamserve.runtime.batch import score_records
from streamserve.serving.core import ServingCore
from streamserve.settings import ServingSettings


class ShortCodec:
    """A plug-in codec with a defect: a record it cannot read leaves no row at all (instead of
    an error row). Here: empty payloads."""

    name = "short-json"
    framing = Framing.LINES

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        kept = [record for record in records if record.payload]
        batch = JsonCodec().decode(kept)
        return replace(batch, records=records)  # 3 records, 2 keys, 2 rows of values


RECORDS = [b'{"dataType": "k", "a": 1.0, "b": 0.0}', b"", b'{"dataType": "k", "a": 2.0, "b": 0.0}']


def _core() -> ServingCore:
    core = ServingCore(ServingSettings())
    core.submit_model(onnx_descriptor("m", onnx_linear(np.array([1.0, 0.0]), 0.0), "k"))
    assert core.wait_for_models(60)
    return core


def test_score_records_isolates_a_codec_that_returns_a_short_batch() -> None:
    with _core() as core:
        try:
            outputs = score_records(core, ShortCodec(), RECORDS)
        except ValueError as err:
            raise AssertionError(
                "score_records raised instead of giving one output per record (the stream's "
                f"process_batch isolates the same codec defect): {err}"
            ) from err
    assert [output.ok for output in outputs] == [True, False, True]
