"""The original wine example's ``WineRecord`` protobuf: 11 doubles, then ``dataType``."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from google.protobuf.message import DecodeError

from streamserve.codecs.base import (
    DecodedBatch,
    Framing,
    InputRecord,
    KeyRule,
    batch_from_rows,
    decode_each,
)
from streamserve.codecs.wire_columns import WireSchema, read_columns
from streamserve.descriptor._generated import winerecord_pb2
from streamserve.errors import RecordDecodeError

if TYPE_CHECKING:
    from streamserve.settings import CodecSettings

WINE_FEATURES: tuple[str, ...] = (
    "fixed_acidity",
    "volatile_acidity",
    "citric_acid",
    "residual_sugar",
    "chlorides",
    "free_sulfur_dioxide",
    "total_sulfur_dioxide",
    "density",
    "pH",
    "sulphates",
    "alcohol",
)

# winerecord.proto's field numbers of WINE_FEATURES, in order, and of dataType.
WINE_SCHEMA = WireSchema(doubles=tuple(range(1, 12)), string=12)


def encode_wine_record(features: Sequence[float], data_type: str = "wine", ts: int = 0) -> bytes:
    """A WineRecord as the original publisher wrote it."""
    record = winerecord_pb2.WineRecord(dataType=data_type, ts=ts)
    for name, value in zip(WINE_FEATURES, features, strict=True):
        setattr(record, name, float(value))
    return record.SerializeToString()


@dataclass(frozen=True)
class WineRecordCodec:
    key_rule: KeyRule = field(default_factory=KeyRule)
    name: str = "wine-protobuf"
    framing: ClassVar[Framing] = Framing.LENGTH_DELIMITED  # binary: a byte may be a newline

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        """The records that share a wire layout are read as columns (see
        :mod:`~streamserve.codecs.wire_columns`), the others by the protobuf parser; both give
        the same values, keys and errors."""
        columns = read_columns([record.payload for record in records], WINE_SCHEMA, _parses)
        texts = [_utf8(value) for value in columns.strings]
        readable = np.array([text is not None for text in texts], bool)[columns.string_ids]
        fast_rows, string_ids = columns.rows[readable], columns.string_ids[readable]
        rule = self.key_rule
        # Each distinct string's key, where the rule needs nothing of the record itself.
        key_of: list[str | None]
        if rule.constant is not None:
            key_of = [rule.constant] * len(texts)
        elif rule.prefer_message_key:
            key_of = [None] * len(texts)
        else:
            key_of = [text or None for text in texts]
        all_keys = np.full(len(records), None, object)
        fast_keys = np.array(key_of, object)[string_ids]
        all_keys[fast_rows] = fast_keys
        keys: list[str | None] = all_keys.tolist()
        errors: dict[int, RecordDecodeError] = {}
        for index in np.flatnonzero(fast_keys == None).tolist():  # noqa: E711 - elementwise
            row = int(fast_rows[index])
            try:
                keys[row] = rule.resolve(records[row], texts[string_ids[index]])
            except RecordDecodeError as err:
                errors[row] = err
        values = np.full((len(records), len(WINE_FEATURES)), np.nan)
        values[fast_rows] = columns.values[readable]
        parsed = np.ones(len(records), bool)
        parsed[fast_rows] = False
        slow_rows = np.flatnonzero(parsed)
        if len(slow_rows):
            slow = self._parse_each([records[row] for row in slow_rows.tolist()])
            values[slow_rows] = slow.values
            for index, row in enumerate(slow_rows.tolist()):
                keys[row] = slow.keys[index]
            errors.update({int(slow_rows[index]): err for index, err in slow.errors.items()})
        for row in errors:
            keys[row] = None
            values[row] = np.nan
        return DecodedBatch(records, keys, WINE_FEATURES, values, errors)

    def _parse_each(self, records: Sequence[InputRecord]) -> DecodedBatch:
        """The records decoded one by one by the protobuf parser."""
        message = winerecord_pb2.WineRecord()
        features_of = operator.attrgetter(*WINE_FEATURES)

        def decode_one(record: InputRecord) -> tuple[str, Sequence[float]]:
            try:
                message.ParseFromString(record.payload)
            except DecodeError as err:
                raise RecordDecodeError(
                    f"record ({len(record.payload)} bytes) is not a WineRecord protobuf: {err}"
                ) from err
            key = self.key_rule.resolve(record, message.dataType)
            return key, features_of(message)

        return batch_from_rows(records, WINE_FEATURES, decode_each(records, decode_one))


def _parses(payload: bytes) -> bool:
    try:
        winerecord_pb2.WineRecord.FromString(payload)
    except DecodeError:
        return False
    return True


def _utf8(value: bytes) -> str | None:
    """A string field's text, or ``None`` if it is not UTF-8 (which the parser refuses)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def build_wine_record_codec(settings: CodecSettings) -> WineRecordCodec:
    """The built-in codec ``wine-protobuf``."""
    return WineRecordCodec(KeyRule.from_settings(settings))
