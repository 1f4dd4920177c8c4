"""Records as sources deliver them, the columnar batch codecs decode them into, key rules, and
how a codec's records are framed in a byte stream."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from streamserve.errors import RecordDecodeError
from streamserve.formats.base import FloatMatrix

if TYPE_CHECKING:
    from streamserve.settings import CodecSettings

Headers = tuple[tuple[str, bytes | None], ...]
"""A message's headers in their order, as Kafka carries them: a name may repeat, a value may be
null."""


class InputRecord(NamedTuple):
    """One data message: its bytes, its message key (if any), where it came from, and the topic
    and headers it arrived with (empty when its source has none: files, stdin, HTTP).

    A named tuple: one is made per record on the hot path, at about half a frozen dataclass's
    cost."""

    payload: bytes
    key: bytes | None = None
    position: str = ""
    topic: str = ""
    headers: Headers = ()


class Framing(enum.Enum):
    """How a codec's records are cut out of a byte stream (a file, stdin); message transports
    (Kafka, HTTP) deliver records whole and ignore it."""

    LINES = "lines"
    """One record per line (newline-delimited text: JSON lines, CSV)."""
    LENGTH_DELIMITED = "length-delimited"
    """Each record prefixed by its length as a varint (binary records, e.g. protobuf)."""


FieldOrder = tuple[str, ...]  # a record's field names, in the record's order


@dataclass(frozen=True)
class KeyRule:
    """Where a record's key (its data type) comes from, in this order:

    ``constant`` for every record if set; else the message key when ``prefer_message_key`` and
    the message has one; else the record field ``field``; else the message key.
    """

    field: str = "dataType"
    constant: str | None = None
    prefer_message_key: bool = False

    @classmethod
    def from_settings(cls, settings: CodecSettings) -> KeyRule:
        return cls(settings.key_field, settings.key, settings.prefer_message_key)

    def resolve(self, record: InputRecord, field_value: object) -> str:
        if self.constant is not None:
            return self.constant
        if self.prefer_message_key and record.key:
            return record.key.decode("utf-8", errors="replace")
        if isinstance(field_value, str) and field_value:
            return field_value
        if record.key:
            return record.key.decode("utf-8", errors="replace")
        raise RecordDecodeError(
            f"record has no key: no {self.field!r} field and no message key "
            "(set the codec's key field, or a constant key)"
        )


@dataclass
class DecodedBatch:
    """Columns of features for a batch of records; undecodable records carry their error.

    ``values`` has one row per input record (NaN where a record lacks a column); rows of
    undecodable records are all NaN and their ``keys`` entry is ``None``.

    ``field_orders``, from codecs whose records name their own fields (JSON): per key, how
    many of its records carry each field order. A key whose model is positional takes its input
    order from them once (the serving core decides, knowing the model's width). Codecs with
    fixed columns leave it empty: their ``feature_names`` is every record's order.
    """

    records: Sequence[InputRecord]
    keys: list[str | None]
    feature_names: tuple[str, ...]
    values: FloatMatrix
    errors: Mapping[int, RecordDecodeError] = field(default_factory=dict)
    field_orders: Mapping[str, Mapping[FieldOrder, int]] = field(default_factory=dict)
    positional: bool = False  # the columns are the model's inputs in its order (a V2 tensor)

    def __len__(self) -> int:
        return len(self.records)

    def rows_by_key(self) -> dict[str, npt.NDArray[np.intp]]:
        """Each key's rows, in input order; rows without a key (undecodable) are left out."""
        keys = self.keys
        if keys and keys[0] is not None and keys.count(keys[0]) == len(keys):
            return {keys[0]: np.arange(len(keys), dtype=np.intp)}  # one key: the common case
        groups: dict[str, list[int]] = {}
        for row, key in enumerate(self.keys):
            if key is not None:
                groups.setdefault(key, []).append(row)
        return {key: np.asarray(rows, dtype=np.intp) for key, rows in groups.items()}


class Codec(Protocol):
    """Decodes a batch of records at once (columnar), never raising for one bad record.

    ``framing`` says how its records are cut out of a file or stdin."""

    @property
    def name(self) -> str: ...

    @property
    def framing(self) -> Framing: ...

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch: ...


Row = TypeVar("Row")


@dataclass
class DecodedRecords(Generic[Row]):
    """Per-record decoding results: a row and a key, or ``None`` and an error at that index."""

    rows: list[Row | None] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    errors: dict[int, RecordDecodeError] = field(default_factory=dict)


def decode_each(
    records: Sequence[InputRecord], decode_one: Callable[[InputRecord], tuple[str, Row]]
) -> DecodedRecords[Row]:
    """Runs ``decode_one`` on every record; one that raises RecordDecodeError fails alone."""
    decoded: DecodedRecords[Row] = DecodedRecords()
    for index, record in enumerate(records):
        try:
            key, row = decode_one(record)
        except RecordDecodeError as err:
            decoded.errors[index] = err
            decoded.rows.append(None)
            decoded.keys.append(None)
        else:
            decoded.rows.append(row)
            decoded.keys.append(key)
    return decoded


def batch_from_rows(
    records: Sequence[InputRecord],
    names: tuple[str, ...],
    decoded: DecodedRecords[Sequence[float]],
) -> DecodedBatch:
    """A DecodedBatch from per-record rows of ``len(names)`` floats.

    A row of another length fails its record alone (a codec defect must not shift the values
    of the records after it into the wrong rows)."""
    width = len(names)
    rows: Sequence[Sequence[float] | None] = decoded.rows
    if decoded.errors or not all(map(width.__eq__, map(len, rows))):  # type: ignore[arg-type]
        rows = _rows_of_width(decoded, width)
    flat = itertools.chain.from_iterable(rows)  # type: ignore[arg-type]  # no None left
    matrix = np.fromiter(flat, dtype=np.float64, count=len(records) * width)
    return DecodedBatch(
        records, decoded.keys, names, matrix.reshape(len(records), width), decoded.errors
    )


def _rows_of_width(decoded: DecodedRecords[Sequence[float]], width: int) -> list[Sequence[float]]:
    """Rows with the failed ones (and any of a wrong length, which fail now) all NaN."""
    blank = [np.nan] * width
    rows: list[Sequence[float]] = []
    for index, row in enumerate(decoded.rows):
        if row is not None and len(row) != width:
            decoded.errors[index] = RecordDecodeError(
                f"record decoded to {len(row)} values where its batch has {width} columns "
                "(a defect of its codec, not of the record)"
            )
            decoded.keys[index] = None
            row = None
        rows.append(blank if row is None else row)
    return rows
