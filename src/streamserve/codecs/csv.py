"""Delimited text records, one line per record, every column numeric except the key column.

The original wine CSV is ``;``-separated with no header: 11 features in WineRecord order, then
the quality label, which :data:`WINE_CSV` ignores. Columns are named by ``codec.csv_columns``;
a header line is not read (it fails as an undecodable record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from streamserve.codecs.base import (
    DecodedBatch,
    Framing,
    InputRecord,
    KeyRule,
    batch_from_rows,
    decode_each,
)
from streamserve.codecs.protobuf import WINE_FEATURES
from streamserve.errors import ConfigurationError, RecordDecodeError

if TYPE_CHECKING:
    from streamserve.settings import CodecSettings


@dataclass(frozen=True)
class CsvCodec:
    """``columns`` names every column; ``ignore`` lists columns that are not features.

    The key comes from the column named by ``key_rule.field`` when there is one, else from the
    rule's constant (or the message key).
    """

    columns: tuple[str, ...]
    delimiter: str = ","
    ignore: frozenset[str] = frozenset()
    key_rule: KeyRule = field(default_factory=KeyRule)
    name: str = "csv"
    framing: ClassVar[Framing] = Framing.LINES

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a CSV codec needs its column names")

    @property
    def feature_names(self) -> tuple[str, ...]:
        skipped = self.ignore | {self.key_rule.field}
        return tuple(column for column in self.columns if column not in skipped)

    def decode(self, records: Sequence[InputRecord]) -> DecodedBatch:
        names = self.feature_names
        feature_columns = [self.columns.index(name) for name in names]
        key_column = (
            self.columns.index(self.key_rule.field) if self.key_rule.field in self.columns else None
        )

        def decode_one(record: InputRecord) -> tuple[str, Sequence[float]]:
            cells = self._cells(record)
            key = self.key_rule.resolve(record, None if key_column is None else cells[key_column])
            try:
                return key, [float(cells[column]) for column in feature_columns]
            except ValueError as err:
                raise RecordDecodeError(
                    f"CSV record has a value that is not a number: {err}"
                ) from err

        return batch_from_rows(records, names, decode_each(records, decode_one))

    def _cells(self, record: InputRecord) -> list[str]:
        try:
            text = record.payload.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise RecordDecodeError(f"CSV record is not UTF-8 text: {err}") from err
        cells = [cell.strip().strip('"') for cell in text.split(self.delimiter)]
        if len(cells) != len(self.columns):
            raise RecordDecodeError(
                f"CSV record has {len(cells)} columns, expected {len(self.columns)} "
                f"({self.delimiter!r}-separated: {', '.join(self.columns)})"
            )
        return cells


def wine_csv_codec(key: str = "wine") -> CsvCodec:
    """The codec of the original ``winequality_red.csv``; every record gets ``key``."""
    return CsvCodec(
        columns=(*WINE_FEATURES, "quality"),
        delimiter=";",
        ignore=frozenset({"quality"}),
        key_rule=KeyRule(constant=key),
    )


def build_csv_codec(settings: CodecSettings) -> CsvCodec:
    """The built-in codec ``csv``: its columns from ``csv_columns``."""
    if not settings.csv_columns:
        raise ConfigurationError("codec csv needs csv_columns (the name of every column)")
    return CsvCodec(
        columns=tuple(settings.csv_columns),
        delimiter=settings.csv_delimiter,
        ignore=frozenset(settings.csv_ignore),
        key_rule=KeyRule.from_settings(settings),
    )


def build_wine_csv_codec(settings: CodecSettings) -> CsvCodec:
    """The built-in codec ``wine-csv``: every record gets the constant key (default ``wine``)."""
    return wine_csv_codec(settings.key or "wine")
