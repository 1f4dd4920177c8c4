"""A result document is joined from bytes encoded once per group and each record's own value and
position: it must be exactly what encoding the whole document with orjson gives, for any key,
model name, version, value and position (escapes, unicode, NaN, arrays, strings, booleans)."""

from __future__ import annotations

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamserve.codecs.base import InputRecord
from streamserve.runtime.encoding import encode_outcome
from streamserve.serving.outcome import BatchOutcome, ScoredGroup
from streamserve.serving.slot import ModelIdentity

TEXT = st.text(max_size=20)
VALUES = st.one_of(
    st.lists(st.floats(), min_size=1, max_size=8),
    st.lists(st.integers(-(2**53), 2**53), min_size=1, max_size=8),
    st.lists(st.booleans(), min_size=1, max_size=8),
    st.lists(TEXT, min_size=1, max_size=8),
)


@given(key=TEXT, name=TEXT, version=TEXT, values=VALUES, positions=st.lists(TEXT, max_size=8))
def test_a_result_is_the_whole_document_encoded(
    key: str, name: str, version: str, values: list[object], positions: list[str]
) -> None:
    records = [
        InputRecord(b"", None, positions[i % len(positions)] if positions else f"at {i}")
        for i in range(len(values))
    ]
    model = ModelIdentity(name, version, "", "ONNX", 1)
    group = ScoredGroup(key, model, np.arange(len(values)), np.array(values), 1.25e-6)
    results, errors = encode_outcome(BatchOutcome(records, [group]))
    assert errors == []
    expected = [
        (
            key.encode(),
            orjson.dumps(
                {
                    "key": key,
                    "model": name,
                    "version": version,
                    "value": value,
                    "position": record.position,
                    "scoring_us": 1.25,
                }
            ),
        )
        for record, value in zip(records, np.array(values).tolist(), strict=True)
    ]
    assert results == expected


def test_array_values_and_interleaved_groups_keep_input_order() -> None:
    records = [InputRecord(b"", None, f"t/0@{i}") for i in range(4)]
    model = ModelIdentity("m", "1", "", "ONNX", 1)
    arrays = ScoredGroup("a", model, np.array([0, 2]), np.array([[1.5, 2.0], [3.0, 4.5]]), 0.0)
    texts = ScoredGroup("b", model, np.array([1, 3]), np.array(["x", 'q"uote']), 0.0)
    results, _ = encode_outcome(BatchOutcome(records, [arrays, texts]))
    documents = [orjson.loads(value) for _, value in results]
    assert [d["position"] for d in documents] == [f"t/0@{i}" for i in range(4)]
    assert [d["value"] for d in documents] == [[1.5, 2.0], "x", [3.0, 4.5], 'q"uote']
    assert [key for key, _ in results] == [b"a", b"b", b"a", b"b"]
