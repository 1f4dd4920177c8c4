"""The original wine example's ``WineRecord`` protobuf: 11 doubles, then ``dataType``."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from google.protobuf.message import DecodeError

from streamserve.codecs.base import (
    DecodedBatch,
    Framing,
    InputRecord,
    KeyRule,
    batch_from_rows,
    decode_each,
)
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


def build_wine_record_codec(settings: CodecSettings) -> WineRecordCodec:
    """The built-in codec ``wine-protobuf``."""
    return WineRecordCodec(KeyRule.from_settings(settings))
