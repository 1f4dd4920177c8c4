from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from streamserve.codecs.base import DecodedRecords, InputRecord, KeyRule, batch_from_rows
from streamserve.codecs.csv import CsvCodec, wine_csv_codec
from streamserve.codecs.json import JsonCodec
from streamserve.codecs.protobuf import WINE_FEATURES, WineRecordCodec, encode_wine_record
from streamserve.codecs.registry import build_codec
from streamserve.errors import ConfigurationError
from streamserve.settings import CodecSettings


def records(*payloads: bytes, key: bytes | None = None) -> list[InputRecord]:
    return [InputRecord(p, key=key, position=str(i)) for i, p in enumerate(payloads)]


def test_json_named_features_become_columns_in_first_seen_order() -> None:
    batch = JsonCodec().decode(
        records(
            orjson.dumps({"dataType": "a", "x": 1, "y": 2.5, "note": "text", "flag": True}),
            orjson.dumps({"dataType": "b", "y": 3.0, "z": 4.0}),
        )
    )
    assert batch.keys == ["a", "b"]
    assert batch.feature_names == ("x", "y", "z")
    np.testing.assert_array_equal(batch.values, [[1, 2.5, np.nan], [np.nan, 3, 4]])
    assert batch.errors == {}


def test_json_all_numeric_records_decode_as_records_with_other_fields_do() -> None:
    """All-numeric records take a fast path; their values match those decoded field by field."""
    numeric = {"dataType": "a", "x": 1, "y": -2.5, "big": 18446744073709551615}
    batch = JsonCodec().decode(
        records(
            orjson.dumps(numeric),
            orjson.dumps({**numeric, "note": "text"}),
            orjson.dumps({**numeric, "flag": False}),
            orjson.dumps({"dataType": "a", "x": True, "y": 0}),
        )
    )
    assert batch.feature_names == ("x", "y", "big")
    np.testing.assert_array_equal(
        batch.values,
        [[1, -2.5, 2.0**64]] * 3 + [[np.nan, 0, np.nan]],
    )
    assert batch.values.dtype == np.float64
    assert batch.keys == ["a"] * 4


def test_json_features_list_is_positional() -> None:
    batch = JsonCodec().decode(records(orjson.dumps({"dataType": "a", "features": [1, 2, 3]})))
    assert batch.feature_names == ("features[0]", "features[1]", "features[2]")
    np.testing.assert_array_equal(batch.values, [[1, 2, 3]])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{oops", "not valid JSON"),
        (b'"a string"', "JSON str, expected an object"),
        (b'{"x": 1}', "record has no key"),
        (b'{"dataType": "a", "features": [1, null]}', r"features\[1\] is None"),
    ],
)
def test_json_bad_records_get_their_reason_and_the_rest_decode(payload: bytes, reason: str) -> None:
    batch = JsonCodec().decode(records(payload, b'{"dataType": "a", "x": 1}'))
    assert list(batch.errors) == [0]
    assert pytest.approx(batch.values[1, 0]) == 1.0
    assert batch.keys == [None, "a"]
    import re

    assert re.search(reason, str(batch.errors[0]))


def test_key_rules() -> None:
    payload = orjson.dumps({"kind": "from-field", "x": 1})
    assert JsonCodec(KeyRule(field="kind")).decode(records(payload)).keys == ["from-field"]
    assert JsonCodec(KeyRule(constant="fixed")).decode(records(payload)).keys == ["fixed"]
    assert JsonCodec(KeyRule(field="kind", prefer_message_key=True)).decode(
        records(payload, key=b"from-message")
    ).keys == ["from-message"]
    assert JsonCodec().decode(records(b'{"x": 1}', key=b"fallback")).keys == ["fallback"]


def test_wine_record_protobuf_decodes_the_original_fields() -> None:
    features = [7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4]
    batch = WineRecordCodec().decode(records(encode_wine_record(features), b"\xff\xff"))
    assert batch.feature_names == WINE_FEATURES
    assert batch.keys == ["wine", None]
    np.testing.assert_array_equal(batch.values[0], features)
    assert "not a WineRecord protobuf" in str(batch.errors[1])


def test_wine_csv_ignores_the_quality_label() -> None:
    line = b"7.4;0.7;0;1.9;0.076;11;34;0.9978;3.51;0.56;9.4;5"
    batch = wine_csv_codec().decode(records(line, b"1;2;3", b"a;b;c;d;e;f;g;h;i;j;k;l"))
    assert batch.keys == ["wine", None, None]
    assert batch.values.shape == (3, 11)
    assert "has 3 columns, expected 12" in str(batch.errors[1])
    assert "not a number" in str(batch.errors[2])


def test_csv_key_from_a_column() -> None:
    codec = CsvCodec(columns=("dataType", "a", "b"), key_rule=KeyRule(field="dataType"))
    batch = codec.decode(records(b"beer,1,2"))
    assert batch.keys == ["beer"]
    assert batch.feature_names == ("a", "b")


def test_build_codec_from_settings() -> None:
    assert build_codec(CodecSettings(format="json")).name == "json"
    assert build_codec(CodecSettings(format="wine-csv")).name == "csv"
    assert build_codec(CodecSettings(format="wine-protobuf")).name == "wine-protobuf"
    with pytest.raises(ConfigurationError, match="csv_columns"):
        build_codec(CodecSettings(format="csv"))


def test_json_counts_the_field_orders_of_each_key() -> None:
    batch = JsonCodec().decode(
        records(
            orjson.dumps({"dataType": "k", "b": 0, "a": 1, "c": 3}),
            orjson.dumps({"dataType": "k", "a": 1, "b": 2, "c": 3}),
            orjson.dumps({"dataType": "k", "a": 1, "b": 2, "c": 3}),
            orjson.dumps({"dataType": "other", "x": 1}),
            b"not json",
        )
    )
    assert batch.field_orders == {
        "k": {("b", "a", "c"): 1, ("a", "b", "c"): 2},
        "other": {("x",): 1},
    }


def test_a_row_of_the_wrong_width_fails_its_record_alone_and_shifts_no_other_row() -> None:
    # A codec that returns a short row for record 1 and a long one for record 2: the total
    # still fills 4 rows of 2, so without a per-row check record 2's values land in row 1.
    decoded = DecodedRecords[Sequence[float]](
        rows=[[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [7.0, 8.0]],
        keys=["a", "a", "a", "a"],
    )
    batch = batch_from_rows(records(b"", b"", b"", b""), ("x", "y"), decoded)

    assert sorted(batch.errors) == [1, 2]
    assert "decoded to 1 values where its batch has 2 columns" in str(batch.errors[1])
    assert "decoded to 3 values" in str(batch.errors[2])
    assert batch.keys == ["a", None, None, "a"]
    np.testing.assert_array_equal(batch.values[0], [1.0, 2.0])
    np.testing.assert_array_equal(batch.values[3], [7.0, 8.0])
    assert np.isnan(batch.values[1:3]).all()


def test_a_record_carries_its_topic_and_headers_and_defaults_to_none() -> None:
    bare = InputRecord(b"{}")
    assert (bare.key, bare.position, bare.topic, bare.headers) == (None, "", "", ())
    kafka = InputRecord(b"{}", b"k", "data:0:7", "data", (("schema-id", b"\x01"), ("trace", None)))
    assert kafka.topic == "data"
    assert dict(kafka.headers) == {"schema-id": b"\x01", "trace": None}
