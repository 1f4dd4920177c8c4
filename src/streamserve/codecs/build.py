"""The codec a configuration asks for."""

from __future__ import annotations

from streamserve.codecs.base import Codec, KeyRule
from streamserve.codecs.csv import CsvCodec, wine_csv_codec
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.protobuf import WineRecordCodec
from streamserve.errors import ConfigurationError
from streamserve.settings import CodecSettings


def build_codec(settings: CodecSettings) -> Codec:
    rule = KeyRule(
        field=settings.key_field,
        constant=settings.key,
        prefer_message_key=settings.prefer_message_key,
    )
    if settings.format == "json":
        return JsonCodec(rule)
    if settings.format == "wine-protobuf":
        return WineRecordCodec(rule)
    if settings.format == "wine-csv":
        return wine_csv_codec(settings.key or "wine")
    if not settings.csv_columns:
        raise ConfigurationError("codec csv needs csv_columns (the name of every column)")
    return CsvCodec(
        columns=tuple(settings.csv_columns),
        delimiter=settings.csv_delimiter,
        ignore=frozenset(settings.csv_ignore),
        key_rule=rule,
    )
