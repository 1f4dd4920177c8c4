"""The JSON codec's column-at-a-time path gives exactly what decoding record by record gives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.codecs.base import DecodedBatch, InputRecord, KeyRule
from streamserve.codecs.json import JsonCodec

VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3),
)
FIELDS = st.sampled_from(["a", "b", "c", "features", "dataType"])
DOCUMENTS = st.dictionaries(FIELDS, VALUES, max_size=4)
PAYLOADS = st.one_of(
    DOCUMENTS.map(orjson.dumps),
    st.sampled_from([b"", b"[]", b"1", b"{", b"null", b'{"a": NaN}', b'"x"', b"\xff"]),
)


def record_by_record(codec: JsonCodec, records: Sequence[InputRecord]) -> DecodedBatch:
    """The codec's other path: every record decoded on its own."""

    class RecordByRecord(JsonCodec):
        def _decode_uniform(
            self, records: Sequence[InputRecord], documents: list[object]
        ) -> DecodedBatch | None:
            return None

    return RecordByRecord(codec.key_rule).decode(records)


def assert_same(batch: DecodedBatch, expected: DecodedBatch) -> None:
    assert batch.keys == expected.keys
    assert batch.feature_names == expected.feature_names
    np.testing.assert_array_equal(batch.values, expected.values)
    assert {row: str(error) for row, error in batch.errors.items()} == {
        row: str(error) for row, error in expected.errors.items()
    }
    assert dict(batch.field_orders) == dict(expected.field_orders)


@settings(max_examples=300, deadline=None)
@given(st.lists(PAYLOADS, min_size=1, max_size=8), st.lists(st.binary(max_size=2), max_size=8))
def test_any_batch_decodes_as_record_by_record(
    payloads: list[bytes], message_keys: list[bytes]
) -> None:
    records = [
        InputRecord(payload, message_keys[i] if i < len(message_keys) else None, str(i))
        for i, payload in enumerate(payloads)
    ]
    codec = JsonCodec()
    assert_same(codec.decode(records), record_by_record(codec, records))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=5),
    st.integers(1, 20),
)
def test_uniform_batches_take_the_column_path_and_agree(values: list[float], count: int) -> None:
    payloads = [
        orjson.dumps({"dataType": f"k{i % 3}", **{f"f{j}": v + i for j, v in enumerate(values)}})
        for i in range(count)
    ]
    records = [InputRecord(p, position=str(i)) for i, p in enumerate(payloads)]
    codec = JsonCodec()
    assert codec._decode_uniform(records, [orjson.loads(p) for p in payloads]) is not None
    assert_same(codec.decode(records), record_by_record(codec, records))


@pytest.mark.parametrize(
    "rule", [KeyRule(constant="wine"), KeyRule(prefer_message_key=True), KeyRule(field="type")]
)
def test_key_rules_agree(rule: KeyRule) -> None:
    payloads = [
        b'{"type": "t", "dataType": "d", "a": 1}',
        b'{"type": "t", "dataType": "d", "a": 2}',
    ]
    records = [InputRecord(p, b"m", str(i)) for i, p in enumerate(payloads)]
    codec = JsonCodec(rule)
    assert_same(codec.decode(records), record_by_record(codec, records))
