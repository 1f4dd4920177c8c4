"""Fuzz target: every codec's ``decode`` on batches of arbitrary, mutated and odd records.

Every batch is decoded by all four codecs (json, csv, wine-csv, wine-protobuf, built as the CLI
builds them), so each codec also sees the others' records as junk. Invariants:

* ``decode`` never raises; the batch has exactly one row and one key per record;
* each record has a key and a row, or an error (with a reason) and an all-NaN row;
* a record decodes the same (key, error or not, values by column name) alone as amid the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutations import (
    WINE_ROW,
    fuzz_settings,
    json_records,
    mutated,
    shuffled_fields,
)

from streamserve.codecs.base import Codec, DecodedBatch, InputRecord
from streamserve.codecs.protobuf import WINE_FEATURES, encode_wine_record
from streamserve.codecs.registry import build_codec
from streamserve.errors import RecordDecodeError
from streamserve.settings import CodecSettings

CASES = 10_000
CSV_COLUMNS = ["dataType", *WINE_FEATURES, "quality"]

CODECS: dict[str, Codec] = {
    "json": build_codec(CodecSettings(format="json")),
    "json-message-key": build_codec(CodecSettings(format="json", prefer_message_key=True)),
    "csv": build_codec(
        CodecSettings(format="csv", csv_columns=CSV_COLUMNS, csv_ignore=["quality"])
    ),
    "wine-csv": build_codec(CodecSettings(format="wine-csv")),
    "wine-protobuf": build_codec(CodecSettings(format="wine-protobuf")),
}

ODD_CELLS = ("", " ", "nan", "-inf", "Infinity", "1_000", "1e999", '"3.5"', "0x10", "\x00", "٣")


@st.composite
def csv_records(draw: st.DrawFn) -> bytes:
    cells = [repr(value) for value in WINE_ROW] + ["5"]
    if draw(st.booleans()):
        cells.insert(0, draw(st.sampled_from(("wine", "", "other", '"wine"'))))
    for _ in range(draw(st.integers(0, 3))):
        cells[draw(st.integers(0, len(cells) - 1))] = draw(st.sampled_from(ODD_CELLS))
    line = draw(st.sampled_from((";", ",", "\t"))).join(cells).encode()
    return draw(mutated(line)) if draw(st.booleans()) else line


@st.composite
def protobuf_records(draw: st.DrawFn) -> bytes:
    values = draw(st.lists(st.floats(), min_size=11, max_size=11))
    message = encode_wine_record(values, draw(st.sampled_from(("wine", "", "other"))))
    edit = draw(st.integers(0, 2))
    if edit == 1:
        return draw(mutated(message))
    if edit == 2:
        return draw(shuffled_fields(message))
    return message


payloads = st.one_of(json_records(), csv_records(), protobuf_records(), st.binary(max_size=128))
input_records = st.builds(
    InputRecord,
    payloads,
    st.one_of(st.none(), st.sampled_from((b"wine", b"", b"\xff\xfe"))),
    st.just(""),
)


def check_batch(batch: DecodedBatch, records: Sequence[InputRecord]) -> None:
    count = len(records)
    assert len(batch) == count
    assert len(batch.keys) == count
    assert batch.values.shape == (count, len(batch.feature_names))
    assert set(batch.errors) <= set(range(count))
    for index, key in enumerate(batch.keys):
        error = batch.errors.get(index)
        if error is None:
            assert isinstance(key, str)
            assert key, f"record {index} decoded with an empty key"
        else:
            assert isinstance(error, RecordDecodeError)
            assert str(error).strip()
            assert key is None
            assert np.isnan(batch.values[index]).all()


def decoded_alike(alone: DecodedBatch, batch: DecodedBatch, index: int) -> None:
    """Record 0 of ``alone`` decoded as record ``index`` of ``batch`` did."""
    assert (0 in alone.errors) == (index in batch.errors)
    assert alone.keys[0] == batch.keys[index]
    columns = {name: column for column, name in enumerate(batch.feature_names)}
    mine = [columns[name] for name in alone.feature_names]
    np.testing.assert_array_equal(batch.values[index, mine], alone.values[0])
    others = np.delete(batch.values[index], mine)
    assert np.isnan(others).all(), "columns of other records must stay NaN in this record's row"


@pytest.mark.timeout(280)
@fuzz_settings(CASES)
@given(st.lists(input_records, min_size=1, max_size=4))
def test_every_codec_decodes_every_record_alone_and_never_raises(
    records: list[InputRecord],
) -> None:
    for codec in CODECS.values():
        batch = codec.decode(records)
        check_batch(batch, records)
        for index, record in enumerate(records):
            alone = codec.decode([record])
            check_batch(alone, [record])
            decoded_alike(alone, batch, index)


@pytest.mark.parametrize("codec_name", list(CODECS))
def test_an_empty_batch_decodes_to_nothing(codec_name: str) -> None:
    batch = CODECS[codec_name].decode([])
    assert len(batch) == 0
    assert batch.values.shape[0] == 0
