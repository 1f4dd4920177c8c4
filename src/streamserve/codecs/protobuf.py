"""The original wine example's ``WineRecord`` protobuf: 11 doubles, then ``dataType``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from streamserve.codecs.base import DecodedBatch, InputRecord, KeyRule, batch_from_rows
from streamserve.descriptor._generated import winerecord_pb2
from streamserve.errors import RecordDecodeError

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

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        rows: list[Sequence[float] | None] = []
        keys: list[str | None] = []
        errors: dict[int, RecordDecodeError] = {}
        message = winerecord_pb2.WineRecord()
        for index, record in enumerate(records):
            try:
                message.ParseFromString(record.payload)
                key = self.key_rule.resolve(record, message.dataType)
            except DecodeError as err:
                errors[index] = RecordDecodeError(
                    f"record ({len(record.payload)} bytes) is not a WineRecord protobuf: {err}"
                )
            except RecordDecodeError as err:
                errors[index] = err
            else:
                rows.append([getattr(message, name) for name in WINE_FEATURES])
                keys.append(key)
                continue
            rows.append(None)
            keys.append(None)
        return batch_from_rows(records, WINE_FEATURES, rows, keys, errors)
