"""JSON records: one object per message; numeric fields are features, named by their field.

``{"dataType": "wine", "alcohol": 9.4, ...}`` carries named features; a ``features`` list
(``{"dataType": "wine", "features": [7.4, 0.7, ...]}``) carries positional ones, named
``features[0]``, ``features[1]``, ... Booleans, strings and nested values other than the key are
not features.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, cast

import numpy as np
import orjson

from streamserve.codecs.base import (
    DecodedBatch,
    DecodedRecords,
    FieldOrder,
    Framing,
    InputRecord,
    KeyRule,
    batch_from_rows,
    decode_each,
)
from streamserve.errors import RecordDecodeError

if TYPE_CHECKING:
    from streamserve.settings import CodecSettings

FEATURES_FIELD = "features"
NUMBER_TYPES = frozenset((float, int))


@dataclass(frozen=True)
class JsonCodec:
    key_rule: KeyRule = field(default_factory=KeyRule)
    name: str = "json"
    framing: ClassVar[Framing] = Framing.LINES

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        try:
            documents: list[object] = [orjson.loads(record.payload) for record in records]
        except orjson.JSONDecodeError:  # a record that is not JSON: each alone, to say which
            decoded = decode_each(records, self._decode_one)
        else:
            uniform = self._decode_uniform(records, documents)
            if uniform is not None:
                return uniform
            parsed = iter(documents)  # decode_each takes the records in order, once each
            decoded = decode_each(records, lambda record: self._decode_parsed(record, next(parsed)))
        names = _column_names(decoded.rows)
        rows = DecodedRecords[Sequence[float]](
            [None if features is None else _row(features, names) for features in decoded.rows],
            decoded.keys,
            decoded.errors,
        )
        batch = batch_from_rows(records, names, rows)
        batch.field_orders = _FieldOrders(decoded)
        return batch

    def _decode_uniform(
        self, records: Sequence[InputRecord], documents: list[object]
    ) -> DecodedBatch | None:
        """The batch decoded a column at a time, when every record is a JSON object with a
        non-empty string key and the same numeric fields in the same order (a stream from one
        publisher); ``None`` for any other batch, which is decoded a record at a time from the
        same ``documents`` (each record parsed on its own, left as parsed).
        """
        if not documents or self.key_rule.constant is not None or self.key_rule.prefer_message_key:
            return None
        if set(map(type, documents)) != {dict}:
            return None
        objects = cast(list[dict[str, object]], documents)
        field = self.key_rule.field
        keys = [document.get(field) for document in objects]
        if set(map(type, keys)) != {str} or not all(keys):
            return None
        names = tuple(objects[0])
        if len(names) < 2 or not all(map(names.__eq__, map(tuple, objects))):
            return None
        values = list(itertools.chain.from_iterable(map(dict.values, objects)))
        del values[names.index(field) :: len(names)]  # the keys
        if not NUMBER_TYPES.issuperset(map(type, values)):  # bool is not int here
            return None
        features = tuple(name for name in names if name != field)
        matrix = np.fromiter(values, dtype=np.float64, count=len(values))
        str_keys = cast(list[str | None], keys)
        batch = DecodedBatch(records, str_keys, features, matrix.reshape(len(objects), -1))
        # every record carries these fields in this order: one dict stands for each of them
        shape: dict[str, float] | None = dict.fromkeys(features, 0.0)
        batch.field_orders = _FieldOrders(DecodedRecords([shape] * len(objects), str_keys, {}))
        return batch

    def _decode_one(self, record: InputRecord) -> tuple[str, dict[str, float]]:
        try:
            document = orjson.loads(record.payload)
        except orjson.JSONDecodeError as err:
            raise RecordDecodeError(f"record is not valid JSON: {err}") from err
        return self._decode_parsed(record, document)

    def _decode_parsed(self, record: InputRecord, document: object) -> tuple[str, dict[str, float]]:
        if not isinstance(document, dict):
            raise RecordDecodeError(
                f"record is a JSON {type(document).__name__}, expected an object"
            )
        key = self.key_rule.resolve(record, document.get(self.key_rule.field))
        return key, _features(document, self.key_rule.field)


def build_json_codec(settings: CodecSettings) -> JsonCodec:
    """The built-in codec ``json``."""
    return JsonCodec(KeyRule.from_settings(settings))


def _features(document: dict[str, object], key_field: str) -> dict[str, float]:
    """The document's features; the document itself (its key removed) when every other value is
    a number, the common case, checked in C (much faster than the loop below)."""
    document.pop(key_field, None)
    if NUMBER_TYPES.issuperset(map(type, document.values())):  # bool is not int here
        return cast(dict[str, float], document)
    features: dict[str, float] = {}
    for name, value in document.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            features[name] = float(value)
        elif name == FEATURES_FIELD and isinstance(value, list):
            for position, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, int | float):
                    raise RecordDecodeError(f"features[{position}] is {item!r}, not a number")
                features[f"{FEATURES_FIELD}[{position}]"] = float(item)
    return features


class _FieldOrders(Mapping[str, Mapping[FieldOrder, int]]):
    """Per key, how many of its records carry each field order; counted on first use, since
    only a positional model whose key has no fixed order yet asks (once per key)."""

    def __init__(self, decoded: DecodedRecords[dict[str, float]]) -> None:
        self._decoded = decoded
        self._counted: dict[str, Counter[FieldOrder]] | None = None

    def _counts(self) -> dict[str, Counter[FieldOrder]]:
        if self._counted is None:
            counted: dict[str, Counter[FieldOrder]] = {}
            for key, features in zip(self._decoded.keys, self._decoded.rows, strict=True):
                if key is not None and features is not None:
                    counted.setdefault(key, Counter())[tuple(features)] += 1
            self._counted = counted
        return self._counted

    def __getitem__(self, key: str) -> Mapping[FieldOrder, int]:
        return self._counts()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts())

    def __len__(self) -> int:
        return len(self._counts())


def _column_names(parsed: list[dict[str, float] | None]) -> tuple[str, ...]:
    """The union of feature names in first-seen order (one pass when all records agree)."""
    names: dict[str, None] = {}
    previous: tuple[str, ...] | None = None
    for features in parsed:
        if features is None:
            continue
        current = tuple(features)
        if current != previous:
            names.update(dict.fromkeys(current))
            previous = current
    return tuple(names)


def _row(features: dict[str, float], names: tuple[str, ...]) -> Sequence[float]:
    if len(features) == len(names) and tuple(features) == names:
        return list(features.values())
    return [features.get(name, float("nan")) for name in names]
