"""The WineRecord codec reads records that share a wire layout as columns, and parses the others
one by one: for any batch, including records that are odd, hostile or only almost alike, the two
must give the same values, keys and errors as parsing every record with protobuf."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamserve.codecs.base import InputRecord, KeyRule
from streamserve.codecs.protobuf import WINE_FEATURES, WINE_SCHEMA, WineRecordCodec
from streamserve.codecs.wire_columns import MIN_MATCHED, read_layout
from streamserve.descriptor._generated import winerecord_pb2

FEATURE = st.one_of(st.just(0.0), st.floats(allow_nan=True), st.sampled_from([-0.0, 1e308]))
DATA_TYPE = st.one_of(st.sampled_from(["wine", "beer", "", "wïne"]), st.text(max_size=3))


@st.composite
def wine_payloads(draw: st.DrawFn) -> bytes:
    record = winerecord_pb2.WineRecord(
        dataType=draw(DATA_TYPE), ts=draw(st.sampled_from([0, 1, 1_700_000_000_000, -1]))
    )
    for name in WINE_FEATURES:
        setattr(record, name, draw(FEATURE))
    payload = record.SerializeToString()
    damage = draw(st.sampled_from(["none", "none", "none", "flip", "cut", "append", "utf8"]))
    if damage == "flip" and payload:
        at = draw(st.integers(0, len(payload) - 1))
        payload = (
            payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1 :]
        )
    elif damage == "cut" and payload:
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif damage == "append":  # a repeated double, unknown fields, a field number too large, junk
        payload += draw(
            st.sampled_from(
                [
                    b"\x09" + struct.pack("<d", 2.5),
                    b"\x78\x01",
                    b"\xa2\x01\x00",
                    b"\xf8\xff\xff\xff\x1f\x01",  # field 2**30 - 1: protobuf refuses it
                    b"\xff",
                ]
            )
        )
    elif damage == "utf8":
        payload += b"\x62\x02\xc3\x28"  # dataType again: two bytes that are not UTF-8
    return payload


def by_protobuf(records: Sequence[InputRecord], rule: KeyRule) -> tuple[list, np.ndarray, set]:
    keys: list[str | None] = []
    values = np.full((len(records), len(WINE_FEATURES)), np.nan)
    errors = set()
    for row, record in enumerate(records):
        message = winerecord_pb2.WineRecord()
        try:
            message.ParseFromString(record.payload)
            key = rule.resolve(record, message.dataType)
        except Exception:  # noqa: BLE001 - any refusal is an error row
            errors.add(row)
            keys.append(None)
            continue
        keys.append(key)
        values[row] = [getattr(message, name) for name in WINE_FEATURES]
    return keys, values, errors


def assert_same_as_protobuf(records: list[InputRecord], rule: KeyRule) -> None:
    batch = WineRecordCodec(rule).decode(records)
    keys, values, errors = by_protobuf(records, rule)
    assert set(batch.errors) == errors
    assert batch.keys == keys
    same = (batch.values == values) | (np.isnan(batch.values) & np.isnan(values))
    assert same.all(), np.argwhere(~same)
    # -0.0 and 0.0 compare equal: their signs must match too
    assert (np.signbit(batch.values) == np.signbit(values)).all()


RULES = st.sampled_from([KeyRule(), KeyRule(constant="fixed"), KeyRule(prefer_message_key=True)])


@settings(max_examples=300, deadline=None)
@given(
    template=wine_payloads(),
    others=st.lists(wine_payloads(), max_size=12),
    copies=st.integers(0, 3 * MIN_MATCHED),
    message_key=st.sampled_from([None, b"", b"from-key"]),
    rule=RULES,
)
def test_columns_decode_what_protobuf_parses(
    template: bytes, others: list[bytes], copies: int, message_key: bytes | None, rule: KeyRule
) -> None:
    # Many records alike (the columnar path), the others mixed in among them.
    payloads = [template] * copies + others
    rng = np.random.default_rng(len(payloads))
    order = rng.permutation(len(payloads)).tolist()
    records = [InputRecord(payloads[i], message_key, f"t/0@{n}") for n, i in enumerate(order)]
    assert_same_as_protobuf(records, rule)


@settings(max_examples=100, deadline=None)
@given(
    features=st.lists(st.lists(FEATURE, min_size=11, max_size=11), min_size=1, max_size=40),
    data_types=st.lists(DATA_TYPE, min_size=1, max_size=3),
)
def test_records_of_one_layout_with_other_values_and_keys(
    features: list[list[float]], data_types: list[str]
) -> None:
    payloads = []
    for index, row in enumerate(features * MIN_MATCHED):
        record = winerecord_pb2.WineRecord(dataType=data_types[index % len(data_types)])
        for name, value in zip(WINE_FEATURES, row, strict=True):
            setattr(record, name, value)
        payloads.append(record.SerializeToString())
    assert_same_as_protobuf([InputRecord(p) for p in payloads], KeyRule())


def test_the_schema_is_winerecord_proto() -> None:
    fields = winerecord_pb2.WineRecord.DESCRIPTOR.fields_by_name
    assert WINE_SCHEMA.doubles == tuple(fields[name].number for name in WINE_FEATURES)
    assert WINE_SCHEMA.string == fields["dataType"].number


def test_a_layout_the_scanner_cannot_vouch_for_is_refused() -> None:
    double = b"\x09" + struct.pack("<d", 1.0)
    assert read_layout(double, WINE_SCHEMA) is not None
    assert read_layout(double + double, WINE_SCHEMA) is None  # a field twice: the last wins
    assert read_layout(b"\x0a\x00", WINE_SCHEMA) is None  # a double field of another type
    assert read_layout(b"\x68" + b"\xff" * 9 + b"\x01", WINE_SCHEMA) is None  # a 10-byte varint
    assert read_layout(b"\x62\x05abc", WINE_SCHEMA) is None  # a string past the end
    assert read_layout(b"\x0b", WINE_SCHEMA) is None  # a group


def test_the_original_data_is_read_as_columns() -> None:
    rows = np.random.default_rng(1).random((64, 11))
    rows[::7, 2] = 0.0  # citric acid 0: the publisher leaves the field out, another layout
    payloads = []
    for row in rows:
        record = winerecord_pb2.WineRecord(dataType="wine")
        for name, value in zip(WINE_FEATURES, row, strict=True):
            setattr(record, name, value)
        payloads.append(record.SerializeToString())
    batch = WineRecordCodec().decode([InputRecord(p) for p in payloads])
    assert batch.keys == ["wine"] * 64
    assert np.array_equal(batch.values, rows)
    assert not math.isnan(batch.values.sum())
